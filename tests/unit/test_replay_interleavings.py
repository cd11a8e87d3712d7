"""Recorded runs, crashed and replayed in any merge order, send the commands of the uncrashed run.

What Bytewax does after a crash, in pure form: the state rolls back to the last
snapshot (taken at any earlier moment), each input topic is re-read from that
snapshot's offset in its own order, and the two topics are merged in a new,
arbitrary interleaving. Everything sent after the snapshot is sent again.

For each of the 21 recorded runs in ``shared/``, Hypothesis draws the
interleavings (random, all reports first, all instructions first), up to three
crashes, their snapshot points and restart delays (up to the report timeout,
with a tick after every event); every command and sync sent by every
incarnation is collected, as a factory and an engine would receive them.
"""

from __future__ import annotations

import functools
import pickle
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dataflow.domain import machine as m
from dataflow.domain import messages as msg
from dataflow.domain import optimizer
from tests.support import Card, command_fields, load_card, recorded_runs

KEY = m.DEFAULT_KEY
RUNS = recorded_runs()
MODES = ("random", "reports_first", "instructions_first")


@pytest.fixture(autouse=True, scope="module")
def memoised_proposals() -> Iterator[None]:
    """Proposals are a pure function of the snapshot: compute each one once per module."""
    original = optimizer.propose
    optimizer.propose = functools.lru_cache(maxsize=None)(original)  # type: ignore[assignment]
    try:
        yield
    finally:
        optimizer.propose = original  # type: ignore[assignment]


@functools.cache
def card(run: Path) -> Card:
    return load_card(run)


def inputs(card: Card) -> tuple[list[m.Event], list[m.Event]]:
    instructions: list[m.Event] = []
    for line in card.instructions:
        decoded = msg.decode_instruction(line, "rtcef")
        assert isinstance(decoded, msg.Instruction), decoded
        instructions.append(m.InstructionArrived(decoded, 0))
    reports: list[m.Event] = []
    for line in card.reports:
        report = msg.decode_report(line, "rtcef")
        assert isinstance(report, msg.Report), report
        reports.append(m.ReportArrived(report, 0))
    return instructions, reports


def interleave(first: list[m.Event], second: list[m.Event], mode: str, seed: int) -> list[m.Event]:
    """A merge of two sequences that keeps each one's own order."""
    if mode == "reports_first":
        return [*second, *first]
    if mode == "instructions_first":
        return [*first, *second]
    picks = [True] * len(first) + [False] * len(second)
    random.Random(seed).shuffle(picks)  # noqa: S311 - a test's reproducible shuffle
    a, b = iter(first), iter(second)
    return [next(a) if pick else next(b) for pick in picks]


class Outputs:
    """Everything the factory and the engine received, across incarnations."""

    def __init__(self) -> None:
        self.commands: list[msg.FactoryCommand] = []
        self.syncs: list[tuple[str, msg.SyncMessage]] = []
        self.rejects: list[str] = []
        self.timeouts: list[m.Note] = []

    def take(self, effects: list[m.Effect]) -> None:
        for effect in effects:
            if isinstance(effect, m.SendCommand):
                self.commands.append(effect.command)
            elif isinstance(effect, m.SendSync):
                self.syncs.append((effect.message_id, effect.sync))
            elif isinstance(effect, m.Reject):
                self.rejects.append(effect.reason)
            elif effect.kind in ("timeout", "retry", "round_aborted"):
                self.timeouts.append(effect)


def run_with_crashes(card: Card, data: Any, crashes: int) -> tuple[Outputs, m.Session | None]:
    """Feed a card through ``advance`` with ``crashes`` crash-and-replay cycles."""
    instructions, reports = inputs(card)
    outputs = Outputs()
    state: m.Session | None = None
    done_i = done_r = 0  # the snapshot's input offsets
    clock = 0
    for incarnation in range(crashes + 1):
        mode = data.draw(st.sampled_from(MODES), label=f"merge {incarnation}")
        seed = data.draw(st.integers(0, 2**32 - 1), label=f"seed {incarnation}")
        order = interleave(instructions[done_i:], reports[done_r:], mode, seed)
        last = incarnation == crashes
        crash_at = len(order) if last else data.draw(st.integers(0, len(order)), label="crash")
        snap_at = crash_at if last else data.draw(st.integers(0, crash_at), label="snapshot")
        snapshot = (pickle.dumps(state), done_i, done_r)
        since = clock
        for position, event in enumerate(order[:crash_at], start=1):
            clock += 10
            for each in (_at(event, clock), m.Tick(clock, since)):
                state, effects = m.advance(state, each, key=KEY, config=card.config)
                outputs.take(effects)
            done_i += isinstance(event, m.InstructionArrived)
            done_r += isinstance(event, m.ReportArrived)
            if position == snap_at:
                snapshot = (pickle.dumps(state), done_i, done_r)
        if not last:  # the crash: state and offsets roll back to the snapshot
            blob, done_i, done_r = snapshot
            state = pickle.loads(blob)  # our own state, pickled as Bytewax stores it
            # The restart takes a while, up to the report timeout: no deadline may pass for it.
            timeout = card.config.report_timeout_ms
            delays = st.one_of(st.just(timeout), st.integers(0, timeout))
            clock += data.draw(delays, label="downtime")
    return outputs, state


def _at(event: m.Event, at_ms: int) -> m.Event:
    if isinstance(event, m.InstructionArrived):
        return m.InstructionArrived(event.instruction, at_ms)
    if isinstance(event, m.ReportArrived):
        return m.ReportArrived(event.report, at_ms)
    return event


@functools.cache
def canonical(run: Path) -> tuple[tuple[msg.FactoryCommand, ...], tuple[msg.SyncMessage, ...]]:
    """The run without a crash, each instruction read before the reports (no hold needed)."""
    outputs, _ = run_with_crashes(card(run), _Fixed(), 0)
    return tuple(outputs.commands), tuple(s for _, s in outputs.syncs)


class _Fixed:
    """A stand-in for Hypothesis' ``data`` that always picks instructions first."""

    def draw(self, strategy: Any, label: str = "") -> Any:
        return "instructions_first" if label.startswith("merge") else 0


def distinct(items: list[Any], key: Any) -> dict[Any, list[Any]]:
    seen: dict[Any, list[Any]] = {}
    for item in items:
        payloads = seen.setdefault(key(item), [])
        if item not in payloads:
            payloads.append(item)
    return seen


@pytest.mark.parametrize("run", RUNS, ids=lambda p: p.name)
def test_the_run_without_a_crash_sends_the_recorded_commands_and_plays(run: Path) -> None:
    commands, syncs = canonical(run)

    assert [command_fields(c) for c in commands] == [command_fields(c) for c in card(run).commands]
    assert [s.model_id for s in syncs if s.type == "play"] == list(card(run).plays)


@pytest.mark.parametrize("run", RUNS, ids=lambda p: p.name)
@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow,
          HealthCheck.function_scoped_fixture, HealthCheck.data_too_large])  # fmt: skip
@given(data=st.data())
def test_crashes_and_any_merge_order_on_replay_send_the_commands_of_the_run_without_a_crash(
    run: Path, data: Any
) -> None:
    crashes = data.draw(st.integers(1, 3), label="crashes")
    outputs, state = run_with_crashes(card(run), data, crashes)
    commands, syncs = canonical(run)

    by_id = distinct(outputs.commands, lambda c: c.id)
    assert {i: len(p) for i, p in by_id.items() if len(p) > 1} == {}  # one payload per id
    assert tuple(p[0] for p in by_id.values()) == commands
    by_sync = distinct(outputs.syncs, lambda s: s[0])
    assert {i: p for i, p in by_sync.items() if len(p) > 1} == {}
    assert tuple(p[0][1] for p in by_sync.values()) == syncs
    # No instruction is lost; the only rejects are replayed duplicates of answered reports.
    assert [r for r in outputs.rejects if "duplicate" not in r and "stale" not in r] == []
    assert outputs.timeouts == []  # no restart delay made a deadline pass: nothing resent
    assert state is not None
    assert (state.held, state.queue) == ((), ())
