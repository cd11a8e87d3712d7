"""Recorded runs, crashed and replayed in any merge order, send the commands of the uncrashed run.

What Bytewax does after a crash, in pure form: the state rolls back to the last
snapshot (taken at any earlier moment), each input topic is re-read from that
snapshot's offset in its own order, and the two topics are merged in a new,
arbitrary interleaving. Everything sent after the snapshot is sent again.

For each of the 21 recorded runs in ``shared/``, Hypothesis draws the
interleavings (random, all reports first, all instructions first), up to three
crashes, their snapshot points and restart delays (up to three report timeouts,
with a tick after every event); every command and sync sent by every
incarnation is collected, as a factory and an engine would receive them. A
messier factory (errors, duplicates, silence, late answers) adds deadline
markers to the report topic: the timeouts, resends and aborts they cause must
replay too.
"""

from __future__ import annotations

import functools
import pickle
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dataflow.domain import dialects, strategy
from dataflow.domain import machine as m
from dataflow.domain import messages as msg
from tests.support import SEED_PARAMS, Card, command_fields, load_card, recorded_runs

KEY = m.DEFAULT_KEY
RUNS = recorded_runs()
MODES = ("random", "reports_first", "instructions_first")


@pytest.fixture(autouse=True, scope="module")
def memoised_proposals() -> Iterator[None]:
    """Proposals are a pure function of the snapshot: compute each one once per module."""
    original = strategy.propose
    strategy.propose = functools.lru_cache(maxsize=None)(original)  # type: ignore[assignment]
    try:
        yield
    finally:
        strategy.propose = original  # type: ignore[assignment]


@functools.cache
def card(run: Path) -> Card:
    return load_card(run)


def inputs(card: Card) -> tuple[list[m.Event], list[m.Event]]:
    instructions: list[m.Event] = []
    for line in card.instructions:
        decoded = dialects.decode_instruction(line, "rtcef")
        assert isinstance(decoded, msg.Instruction), decoded
        instructions.append(m.InstructionArrived(decoded, 0))
    reports: list[m.Event] = []
    for line in card.reports:
        report = dialects.decode_report(line, "rtcef")
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
        self.markers: list[m.MarkDeadline] = []
        self.rejects: list[str] = []
        self.timeouts: list[m.Note] = []

    def take(self, effects: list[m.Effect]) -> None:
        for effect in effects:
            if isinstance(effect, m.SendCommand):
                self.commands.append(effect.command)
            elif isinstance(effect, m.SendSync):
                self.syncs.append((effect.message_id, effect.sync))
            elif isinstance(effect, m.MarkDeadline):
                self.markers.append(effect)
            elif isinstance(effect, m.Reject):
                self.rejects.append(effect.reason)
            elif effect.kind == "timeout":  # a deadline passed (error retries are data)
                self.timeouts.append(effect)


Sessions = dict[str, m.Session | None]


def feed(config: m.MachineConfig, sessions: Sessions, event: m.Event) -> list[m.Effect]:
    """Route an event to its session, as the flow's ``key_on`` does, and advance it."""
    if isinstance(event, m.Tick):
        return [e for key in config.keys for e in _advance(config, sessions, key, event)]
    if isinstance(event, m.InstructionArrived):
        key = m.route_instruction(event.instruction, config)
    elif isinstance(event, m.DeadlinePassed):
        key = m.route_deadline(event.deadline, config)
    else:
        key = m.route_report(event.report, config)
    if isinstance(key, msg.Rejection):
        return [m.Reject("-", key.reason)]
    return _advance(config, sessions, key, event)


def _advance(config: m.MachineConfig, sessions: Sessions, key: str, event: m.Event) -> list[Any]:
    sessions[key], effects = m.advance(sessions.get(key), event, key=key, config=config)
    return effects


def run_with_crashes(
    config: m.MachineConfig, instructions: list[m.Event], reports: list[m.Event], data: Any,
    crashes: int,
) -> tuple[Outputs, Sessions]:  # fmt: skip
    """Feed the two sequences through ``advance`` with ``crashes`` crash-and-replay cycles."""
    outputs = Outputs()
    sessions: Sessions = {}
    done_i = done_r = 0  # the snapshot's input offsets
    clock = 0
    for incarnation in range(crashes + 1):
        mode = data.draw(st.sampled_from(MODES), label=f"merge {incarnation}")
        seed = data.draw(st.integers(0, 2**32 - 1), label=f"seed {incarnation}")
        order = interleave(instructions[done_i:], reports[done_r:], mode, seed)
        last = incarnation == crashes
        crash_at = len(order) if last else data.draw(st.integers(0, len(order)), label="crash")
        snap_at = crash_at if last else data.draw(st.integers(0, crash_at), label="snapshot")
        snapshot = (pickle.dumps(sessions), done_i, done_r)
        since = clock
        for position, event in enumerate(order[:crash_at], start=1):
            clock += 10
            for each in (_at(event, clock), m.Tick(clock, since)):
                outputs.take(feed(config, sessions, each))
            done_i += isinstance(event, m.InstructionArrived)
            done_r += not isinstance(event, m.InstructionArrived)
            if position == snap_at:
                snapshot = (pickle.dumps(sessions), done_i, done_r)
        if not last:  # the crash: state and offsets roll back to the snapshot
            blob, done_i, done_r = snapshot
            sessions = pickle.loads(blob)  # our own state, pickled as Bytewax stores it
            # The restart takes a while, even longer than the report timeout: a deadline is
            # decided by its marker in the report topic, never by the clock.
            timeout = config.report_timeout_ms
            delays = st.one_of(st.just(timeout), st.integers(0, 3 * timeout))
            clock += data.draw(delays, label="downtime")
    return outputs, sessions


def _at(event: m.Event, at_ms: int) -> m.Event:
    if isinstance(event, m.InstructionArrived):
        return m.InstructionArrived(event.instruction, at_ms)
    if isinstance(event, m.ReportArrived):
        return m.ReportArrived(event.report, at_ms)
    if isinstance(event, m.DeadlinePassed):
        return m.DeadlinePassed(event.deadline, at_ms)
    return event


def run_card(card: Card, data: Any, crashes: int) -> tuple[Outputs, Sessions]:
    return run_with_crashes(card.config, *inputs(card), data, crashes)


@functools.cache
def canonical(run: Path) -> tuple[tuple[msg.FactoryCommand, ...], tuple[msg.SyncMessage, ...]]:
    """The run without a crash, each instruction read before the reports (no hold needed)."""
    outputs, _ = run_card(card(run), _Fixed(), 0)
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
    outputs, sessions = run_card(card(run), data, crashes)
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
    state = sessions[KEY]
    assert state is not None
    assert (state.held, state.queue) == ((), ())


# --------------------------------------------------------------------------- a messier factory

KINDS = (msg.InstructionKind.OPTIMIZE, msg.InstructionKind.RETRAIN, msg.InstructionKind.RETRAIN,
         msg.InstructionKind.UPDATE_PARAMS)  # fmt: skip


@st.composite
def observer(draw: Any, keys: tuple[str, ...]) -> list[msg.Instruction]:
    """Instructions with repeated, equal and decreasing timestamps, some UPDATE_PARAMS."""
    out, ts = [], 1000
    for _ in range(draw(st.integers(1, 8))):
        ts += draw(st.sampled_from([0, 1, 5, 10, -3]))
        kind = draw(st.sampled_from(KINDS))
        params = None
        if kind is msg.InstructionKind.UPDATE_PARAMS:
            params = (("pMin", draw(st.sampled_from([0.01, 0.05, 0.5]))), ("gamma", 0.001))
        model = draw(st.sampled_from(keys)) if len(keys) > 1 else None
        out.append(msg.Instruction(kind, ts, model_id=model, parameters=params))
    return out


def live_run(
    config: m.MachineConfig, instructions: list[msg.Instruction], data: Any
) -> tuple[Outputs, list[m.Event]]:
    """The first run: a factory answers each command as it is sent, and misbehaves.

    It fails some commands (error reports, so resends), answers some twice, some
    never, and some only after their deadline marker, and acknowledges or refuses
    some ``opt_initialise`` (a refusal ends the round). When nothing is left to read,
    time passes: a tick past the deadlines makes the overdue sessions write their
    markers. The report topic is the factory's answers and those markers, in the
    order they were written.
    """
    outputs, sessions = Outputs(), {}
    reports: list[m.Event] = []
    outbox: list[m.Event] = []  # written to the report topic, not read yet
    late: list[m.Event] = []  # answers the factory writes after the next deadline marker
    pending = list(instructions)
    model, clock = 100, 0
    while pending or outbox or late or overdue(sessions):
        if pending and (not outbox or data.draw(st.booleans(), label="instruction next")):
            event: m.Event = m.InstructionArrived(pending.pop(0), clock)
        elif outbox:
            event = outbox.pop(0)
            reports.append(event)
        else:  # nothing to read: the deadlines pass, and then the late answers come
            clock += config.report_timeout_ms
            event = m.Tick(clock)
        effects = feed(config, sessions, event)
        outputs.take(effects)
        outbox += [m.DeadlinePassed(e.deadline, 0) for e in effects
                   if isinstance(e, m.MarkDeadline)]  # fmt: skip
        if isinstance(event, m.Tick):
            outbox, late = outbox + late, []
        for command in (e.command for e in effects if isinstance(e, m.SendCommand)):
            answer = data.draw(st.sampled_from(["ok", "ok", "error", "twice", "none", "late"]))
            if command.type == "opt_initialise" and answer in ("ok", "late"):
                continue  # the factory normally says nothing to it (the seed's may refuse it)
            model += 1
            if answer == "error":
                outbox.append(m.ReportArrived(msg.Report(command.id, ok=False, error="boom"), 0))
            elif answer != "none" or command.type != "opt_initialise":
                report = msg.Report(command.id, ok=True, model_id=model, f_val=-model / 1000)
                (late if answer == "late" else outbox).append(m.ReportArrived(report, 0))
            if answer == "twice":
                again = msg.Report(command.id, ok=True, model_id=model + 1, f_val=-0.1)
                outbox.append(m.ReportArrived(again, 0))
    return outputs, reports


def assert_same_decisions(replayed: Outputs, first: Outputs) -> None:
    """A replay sent the first run's commands, syncs and timeouts, one payload per id.

    Replayed timeouts are logged again, decided by the same markers.
    """
    by_id = distinct(replayed.commands, lambda c: c.id)
    assert {i: p for i, p in by_id.items() if len(p) > 1} == {}
    assert by_id == distinct(first.commands, lambda c: c.id)
    by_sync = distinct(replayed.syncs, lambda s: s[0])
    assert {i: p for i, p in by_sync.items() if len(p) > 1} == {}
    assert by_sync == distinct(first.syncs, lambda s: s[0])
    assert set(replayed.timeouts) == set(first.timeouts)


def overdue(sessions: Sessions) -> bool:
    """Whether a session awaits a report and has not asked for its deadline marker yet."""
    return any(s is not None and s.outstanding is not None and not s.outstanding.marked
               for s in sessions.values())  # fmt: skip


@pytest.mark.parametrize("keys", [("controller",), ("a", "b", "c")], ids=["one key", "three keys"])
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow,
          HealthCheck.data_too_large])  # fmt: skip
@given(data=st.data())
def test_a_misbehaving_factory_and_any_instructions_replay_to_the_same_commands(
    keys: tuple[str, ...], data: Any
) -> None:
    config = m.MachineConfig("seed", msgspec.structs.replace(dialects.PROFILES["seed"], budget=2),
                             SEED_PARAMS, keys=keys, max_retries=1)  # fmt: skip
    instructions = data.draw(observer(keys), label="instructions")
    first, reports = live_run(config, instructions, data)

    crashes = data.draw(st.integers(1, 3), label="crashes")
    events = [m.InstructionArrived(i, 0) for i in instructions]
    outputs, _ = run_with_crashes(config, events, reports, data, crashes)

    assert_same_decisions(outputs, first)
    markers = distinct(outputs.markers, lambda e: e.message_id)
    assert {i: p for i, p in markers.items() if len(p) > 1} == {}
    # A replay asks for no marker the first run did not write: no clock decides anything.
    assert set(markers) <= set(distinct(first.markers, lambda e: e.message_id))
