"""Valid-looking bad input (issue #30): implausible instruction timestamps and forged reports.

Two rules, each decided from the records alone so that a replay decides the same:

* an instruction whose timestamp is no plausible stream time (negative, later than
  the dialect's latest, or further past the newest admitted one than
  ``INSTRUCTION_MAX_JUMP``) is refused: its round's commands would carry it, and the
  original factory holds every command stamped past its newest data set;
* a report or deadline marker appended to the report topic before its command was
  sent (before the record that made the controller send it, ``Outstanding.sent_ms``)
  is forged: it is dead-lettered instead of being taken as the answer.
"""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any
from unittest.mock import ANY

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dataflow.domain import dialects
from dataflow.domain import machine as m
from dataflow.domain.messages import (
    YEAR_2100_MS,
    Deadline,
    FactoryCommand,
    Instruction,
    InstructionKind,
    Report,
    SyncMessage,
    params_text,
)
from tests.support import ROOT, SEED_PARAMS, jsonl, recorded_runs, seed_config
from tests.unit.test_replay_interleavings import (
    Outputs,
    assert_same_decisions,
    feed,
    overdue,
    run_with_crashes,
)

KEY = m.DEFAULT_KEY
OPTIMIZE, RETRAIN, UPDATE = (
    InstructionKind.OPTIMIZE, InstructionKind.RETRAIN, InstructionKind.UPDATE_PARAMS,
)  # fmt: skip
#: The factory's and the Observer's records, stamped by the broker (ms).
T0 = 1_780_000_000_000
CONFIG = seed_config(report_clock_skew_ms=0)
#: The timestamps the attack of issue #30 turned into rounds.
ABSURD = (2**63 - 1, 2**64 - 1, 2**70, 10**30)


def step(state: m.Session | None, event: m.Event, config: m.MachineConfig = CONFIG):
    return m.advance(state, event, key=KEY, config=config)


def arrived(kind: InstructionKind, timestamp: int, logged_ms: int | None = None) -> m.Event:
    parameters = SEED_PARAMS if kind is UPDATE else None
    return m.InstructionArrived(Instruction(kind, timestamp, parameters=parameters,
                                            logged_ms=logged_ms), 0)  # fmt: skip


def answer(reply_id: str, logged_ms: int | None, **fields: object) -> m.Event:
    fields.setdefault("ok", True)
    return m.ReportArrived(Report(reply_id, logged_ms=logged_ms, **fields), 0)  # type: ignore[arg-type]


def train(number: int, train_id: int, ts: int = 1000) -> FactoryCommand:
    return FactoryCommand(train_id, -1, f"cmd-{number}", ts, "train",
                          params_text(SEED_PARAMS, named=True), -1)  # fmt: skip


def rejects(effects: list[m.Effect]) -> list[str]:
    return [e.reason for e in effects if isinstance(e, m.Reject)]


# --------------------------------------------------------------------------- instructions


@pytest.mark.parametrize("kind", [OPTIMIZE, RETRAIN, UPDATE])
def test_an_instruction_stamped_before_zero_is_refused_as_implausible_and_creates_nothing(
    kind: InstructionKind,
) -> None:
    state, effects = step(None, arrived(kind, -1))

    assert state is None
    assert effects == [m.Reject(KEY, f"instruction: {kind.value} at -1 implausible: a stream "
                                     "time is never negative")]  # fmt: skip


@pytest.mark.parametrize("dialect", dialects.DIALECTS)
@pytest.mark.parametrize("timestamp", ABSURD)
def test_the_absurd_timestamps_of_the_attack_are_refused_in_both_dialects(
    dialect: str, timestamp: int
) -> None:
    config = msgspec.structs.replace(CONFIG, dialect=dialect)
    wire = dialects.get(dialect).encode_instruction(Instruction(OPTIMIZE, 0))
    data = msgspec.json.encode(msgspec.structs.replace(wire, timestamp=timestamp))
    decoded = dialects.decode_instruction(data, dialect)
    assert isinstance(decoded, Instruction)
    assert decoded.timestamp == timestamp  # the wire carries it: admission must refuse it
    busy, _ = step(None, arrived(RETRAIN, 1000), config)

    for before in (None, busy):  # a new session, and one in a round
        state, effects = step(before, m.InstructionArrived(decoded, 0), config)

        assert state == before
        digits = (
            str(timestamp)
            if len(str(timestamp)) <= 24
            else (f"{str(timestamp)[:12]}...({len(str(timestamp))} digits)")
        )
        reason = f"implausible: later than INSTRUCTION_MAX_TIMESTAMP {YEAR_2100_MS}"
        assert effects == [m.Reject(KEY, f"instruction: OPTIMIZE at {digits} {reason}")]


def test_the_latest_plausible_timestamp_is_2100_in_milliseconds_in_every_dialect() -> None:
    assert {d.name: d.latest_timestamp for d in dialects.REGISTRY.values()} == {
        "seed": 4_102_444_800_000, "rtcef": 4_102_444_800_000,
    }  # fmt: skip
    config = seed_config(instruction_max_jump=0)

    admitted, effects = step(None, arrived(RETRAIN, YEAR_2100_MS), config)

    assert admitted is not None
    assert admitted.round == m.Round("train", 1, YEAR_2100_MS, 0, -1, 0)
    assert rejects(effects) == []
    assert rejects(step(None, arrived(RETRAIN, YEAR_2100_MS + 1), config)[1]) == [
        f"instruction: RETRAIN at {YEAR_2100_MS + 1} implausible: later than "
        f"INSTRUCTION_MAX_TIMESTAMP {YEAR_2100_MS}"
    ]


def test_instruction_max_timestamp_replaces_the_dialects_latest() -> None:
    seconds = seed_config(instruction_max_timestamp=4_102_444_800)  # 2100 in seconds

    assert step(None, arrived(OPTIMIZE, 1_446_880_981), seconds)[0] is not None
    assert rejects(step(None, arrived(OPTIMIZE, 1_446_880_981_000), seconds)[1]) == [
        "instruction: OPTIMIZE at 1446880981000 implausible: later than "
        "INSTRUCTION_MAX_TIMESTAMP 4102444800"
    ]


def test_an_instruction_too_far_past_the_newest_admitted_is_refused_and_later_ones_are_not() -> (
    None
):
    config = seed_config(instruction_max_jump=500)
    first, _ = step(None, arrived(RETRAIN, 1000), config)
    assert first is not None

    same, effects = step(first, arrived(OPTIMIZE, 1501), config)

    assert same == first
    assert effects == [m.Reject(KEY, "instruction: OPTIMIZE at 1501 implausible: 501 past the "
                                     "newest admitted instruction (at 1000), more than "
                                     "INSTRUCTION_MAX_JUMP 500")]  # fmt: skip
    queued, effects = step(first, arrived(OPTIMIZE, 1500), config)
    assert rejects(effects) == []
    assert queued == msgspec.structs.replace(
        first, queue=(Instruction(OPTIMIZE, 1500),), last_admitted=1500, last_optimize=1500
    )
    # An UPDATE_PARAMS is bounded the same way (it moves no reference itself).
    assert rejects(step(first, arrived(UPDATE, 1501), config)[1]) == [
        "instruction: UPDATE_PARAMS at 1501 implausible: 501 past the newest admitted "
        "instruction (at 1000), more than INSTRUCTION_MAX_JUMP 500"
    ]


def test_a_jump_of_zero_is_no_limit_and_the_first_instruction_is_bounded_by_the_latest_alone() -> (
    None
):
    unlimited = seed_config(instruction_max_jump=0)
    first, _ = step(None, arrived(RETRAIN, 0), unlimited)

    far, effects = step(first, arrived(RETRAIN, YEAR_2100_MS), unlimited)

    assert rejects(effects) == []
    assert far is not None
    assert far.last_admitted == YEAR_2100_MS
    # With the default jump the first instruction may be anywhere up to the latest.
    assert step(None, arrived(OPTIMIZE, YEAR_2100_MS))[0] is not None


def test_the_default_jump_is_twice_the_largest_gap_of_the_recorded_runs() -> None:
    gaps = []
    for run in recorded_runs():
        stamps = [dialects.decode_instruction(line, "rtcef").timestamp  # type: ignore[union-attr]
                  for line in jsonl(run / "optimiser_instructions.jsonl")]  # fmt: skip
        gaps += [b - a for a, b in itertools.pairwise(stamps)]

    assert max(gaps) == 31_451_335_274  # 364 days, in milliseconds
    assert m.MachineConfig("seed", CONFIG.profile, SEED_PARAMS).instruction_max_jump == (
        2 * 365 * 86_400_000
    )


TRAFFIC = sorted([
    *(ROOT / "tests" / "rtcef" / "traffic").glob("*/optimiser_instructions.jsonl"),
    *(ROOT / "tests" / "seed" / "traffic").glob("*/observer_instructions.jsonl"),
])  # fmt: skip


@pytest.mark.parametrize("path", TRAFFIC, ids=lambda p: f"{p.parts[-4]}/{p.parts[-2]}")
def test_no_instruction_of_the_real_loops_traffic_is_implausible(path: Path) -> None:
    dialect = "rtcef" if "rtcef" in path.parts else "seed"
    config = m.MachineConfig(dialect, dialects.get(dialect).profile,
                             dialects.get(dialect).initial_params)  # fmt: skip
    state: m.Session | None = None
    refused = []
    lines = list(jsonl(path))
    for line in lines:
        decoded = dialects.decode_instruction(line, dialect)
        assert isinstance(decoded, Instruction)
        state, effects = m.advance(state, m.InstructionArrived(decoded, 0), key=KEY, config=config)
        refused += [r for r in rejects(effects) if "implausible" in r]

    assert lines
    assert refused == []


# --------------------------------------------------------------------------- forged reports


def test_a_report_forged_ahead_for_a_command_not_sent_yet_is_dead_lettered_when_it_is_sent() -> (
    None
):
    # Round 1 trains (cmd-0) and ends; then a report for cmd-1, not sent yet, is appended.
    state, _ = step(None, arrived(RETRAIN, 1000, logged_ms=T0))
    state, _ = step(state, answer("cmd-0", T0 + 5000, model_id=7))
    forgery = answer("cmd-1", T0 + 5100, model_id=666)
    state, effects = step(state, forgery)
    assert effects == [m.Note(KEY, "held", 1, detail="report 'cmd-1' held until its command is "
                                                     "sent")]  # fmt: skip

    # Round 2 sends cmd-1 on an instruction appended after the forgery: it is no answer.
    state, effects = step(state, arrived(RETRAIN, 2000, logged_ms=T0 + 6000))

    assert effects == [
        m.Note(KEY, "round_started", 2, detail="RETRAIN"),
        m.SendSync(KEY, f"{KEY}/sync/2/pause", SyncMessage("pause", 2000, -1)),
        m.SendCommand(KEY, f"{KEY}/cmd/cmd-1/0", train(1, 1, 2000)),
        m.Reject(KEY, "report 'cmd-1': forged (appended at 1780000005100 ms, before its command "
                      "was sent: it followed a record appended at 1780000006000 ms; "
                      "REPORT_CLOCK_SKEW_MS 0)"),
    ]  # fmt: skip
    assert state == m.Session(
        KEY, m.Phase.TRAINING, SEED_PARAMS, 7, next_command=2, trains=2, rounds=2,
        round=m.Round("train", 2, 2000, 1, -1, 1),
        outstanding=m.Outstanding(train(1, 1, 2000), 1, 0, 1000, sent_ms=T0 + 6000),
        last_admitted=2000, ended_ms=T0 + 5000,
    )  # fmt: skip
    # The factory's own answer comes later and is taken: not a duplicate.
    state, effects = step(state, answer("cmd-1", T0 + 9000, model_id=8))
    assert rejects(effects) == []
    assert effects[-1] == m.SendSync(KEY, f"{KEY}/sync/2/play", SyncMessage("play", 2000, 8))
    assert state is not None
    assert (state.phase, state.model_id) == (m.Phase.IDLE, 8)


def test_a_held_report_refused_when_released_names_its_own_place_in_the_report_topic() -> None:
    # Its dead letter must point at it, not at the input that released it.
    held = m.ReportArrived(Report("cmd-0", True, 666, logged_ms=T0, source=(0, 3)), 0)
    state, _ = step(None, held)

    _, effects = step(state, arrived(RETRAIN, 1000, logged_ms=T0 + 5000))

    assert effects[-1] == m.Reject(
        KEY, "report 'cmd-0': forged (appended at 1780000000000 ms, before its command was "
             "sent: it followed a record appended at 1780000005000 ms; REPORT_CLOCK_SKEW_MS 0)",
        source=(0, 3),
    )  # fmt: skip
    # One refused as it arrives is the input itself: no source.
    sent, _ = step(None, arrived(RETRAIN, 1000, logged_ms=T0 + 5000))
    assert step(sent, held)[1] == [m.Reject(KEY, effects[-1].reason)]  # type: ignore[union-attr]


def test_a_forged_score_held_for_a_later_step_does_not_steer_the_optimisation() -> None:
    state, effects = step(None, arrived(OPTIMIZE, 1000, logged_ms=T0))  # cmd-0 init, cmd-1 step
    state, _ = step(state, answer("cmd-2", T0 + 10, f_val=-99.0))  # the next step, forged
    state, effects = step(state, answer("cmd-1", T0 + 3000, f_val=-0.5))  # sends cmd-2

    sent = [e.command for e in effects if isinstance(e, m.SendCommand)]
    assert [c.id for c in sent] == ["cmd-2"]
    assert rejects(effects) == [
        "report 'cmd-2': forged (appended at 1780000000010 ms, before its command was sent: it "
        "followed a record appended at 1780000003000 ms; REPORT_CLOCK_SKEW_MS 0)"
    ]
    assert state is not None
    assert state.outstanding is not None
    assert (state.outstanding.number, state.outstanding.sent_ms) == (2, T0 + 3000)
    # The genuine score is the one learned, and the round finalises on it.
    state, effects = step(state, answer("cmd-2", T0 + 6000, f_val=-0.7))
    assert rejects(effects) == []
    assert state is not None
    assert state.round is not None
    assert state.round.optimiser is not None
    assert [o.y for o in state.round.optimiser.observations] == [-0.5, -0.7]
    finalise = [e.command for e in effects if isinstance(e, m.SendCommand)]
    assert [(c.type, c.best_i) for c in finalise] == [("opt_finalise", 1)]


def test_a_forged_opt_initialise_refusal_does_not_end_the_round() -> None:
    state, _ = step(None, answer("cmd-0", T0, ok=False, error="No dataset available to lock"))

    state, effects = step(state, arrived(OPTIMIZE, 1000, logged_ms=T0 + 50))

    assert [e.command.type for e in effects if isinstance(e, m.SendCommand)] == [
        "opt_initialise", "opt_step"
    ]  # fmt: skip
    assert rejects(effects) == [
        "report 'cmd-0': forged (appended at 1780000000000 ms, before its command was sent: it "
        "followed a record appended at 1780000000050 ms; REPORT_CLOCK_SKEW_MS 0)"
    ]
    assert state is not None
    assert state.phase is m.Phase.WAITING_FOR_REPORT


def test_a_forged_deadline_marker_is_dead_lettered_and_the_command_still_awaited() -> None:
    state, _ = step(None, m.DeadlinePassed(Deadline("cmd-0", logged_ms=T0 - 1), 0))

    state, effects = step(state, arrived(RETRAIN, 1000, logged_ms=T0))

    assert effects[-1] == m.Reject(
        KEY, "deadline marker 'cmd-0': forged (appended at 1779999999999 ms, before its command "
             "was sent: it followed a record appended at 1780000000000 ms; REPORT_CLOCK_SKEW_MS 0)"
    )  # fmt: skip
    assert state is not None
    assert state.outstanding == m.Outstanding(train(0, 0), 0, 0, 1000, sent_ms=T0)
    assert state.held == ()


def test_a_genuine_report_read_before_its_command_in_a_replay_is_still_taken() -> None:
    # A replay read the factory's answer (appended after the instruction) first.
    state, effects = step(None, answer("cmd-0", T0 + 4000, model_id=7))
    assert state is not None
    assert len(state.held) == 1

    state, effects = step(state, arrived(RETRAIN, 1000, logged_ms=T0))

    assert rejects(effects) == []
    assert state == m.Session(KEY, m.Phase.IDLE, SEED_PARAMS, 7, next_command=1, trains=1,
                              rounds=1, last_admitted=1000, ended_ms=T0 + 4000)  # fmt: skip


@pytest.mark.parametrize(("early_ms", "forged"), [(0, False), (1000, False), (1001, True)])
def test_reports_stamped_up_to_the_clock_skew_before_their_cause_are_taken(
    early_ms: int, forged: bool
) -> None:
    config = seed_config()  # REPORT_CLOCK_SKEW_MS 1000, the default
    assert config.report_clock_skew_ms == 1000
    state, _ = step(None, answer("cmd-0", T0 - early_ms, model_id=7), config)

    state, effects = step(state, arrived(RETRAIN, 1000, logged_ms=T0), config)

    assert state is not None
    assert (state.phase is m.Phase.TRAINING) is forged
    assert len(rejects(effects)) == int(forged)


@pytest.mark.parametrize(("report_ms", "cause_ms"), [(None, T0), (T0 - 10**6, None)])
def test_a_record_without_a_log_time_is_never_judged_forged(
    report_ms: int | None, cause_ms: int | None
) -> None:
    state, _ = step(None, answer("cmd-0", report_ms, model_id=7))

    state, effects = step(state, arrived(RETRAIN, 1000, logged_ms=cause_ms))

    assert rejects(effects) == []
    assert state is not None
    assert (state.phase, state.model_id) == (m.Phase.IDLE, 7)


def test_a_late_success_of_an_earlier_attempt_is_judged_against_the_resend() -> None:
    state, _ = step(None, arrived(RETRAIN, 1000, logged_ms=T0))
    state, _ = step(state, answer("cmd-0", T0 + 100, ok=False, error="busy"))  # resent as cmd-1
    assert state is not None
    assert state.outstanding is not None
    assert (state.outstanding.number, state.outstanding.sent_ms) == (1, T0 + 100)

    late, effects = step(state, answer("cmd-0", T0 + 200, model_id=7))

    assert rejects(effects) == []
    assert late is not None
    assert (late.phase, late.model_id) == (m.Phase.IDLE, 7)


def test_a_late_success_stamped_before_the_deadline_marker_that_resent_is_taken() -> None:
    # The first attempt's answer was appended after the marker but stamped before it (a
    # producer retrying through a leader election, a factory clock behind): genuine.
    state, _ = step(None, arrived(RETRAIN, 1000, logged_ms=T0))
    marker = m.DeadlinePassed(Deadline("cmd-0", logged_ms=T0 + 60_000), 0)
    state, _ = step(state, marker)  # timed out: resent as cmd-1, caused by the marker
    assert state is not None
    assert state.outstanding is not None
    assert (state.outstanding.number, state.outstanding.sent_ms) == (1, T0 + 60_000)

    late, effects = step(state, answer("cmd-0", T0 + 30_000, model_id=7))

    assert rejects(effects) == []
    assert late is not None
    assert (late.phase, late.model_id) == (m.Phase.IDLE, 7)


def test_a_report_for_a_later_command_appended_before_the_last_round_ended_is_refused_at_once() -> (
    None
):
    state, _ = step(None, arrived(RETRAIN, 1000, logged_ms=T0))
    idle, _ = step(state, answer("cmd-0", T0 + 5000, model_id=7))
    late = m.ReportArrived(Report("cmd-1", True, 666, logged_ms=T0 + 100, source=(0, 9)), 0)

    state, effects = step(idle, late)

    assert state == idle
    assert effects == [
        m.Note(KEY, "held", 1, detail="report 'cmd-1' held until its command is sent"),
        m.Reject(KEY, "report 'cmd-1': forged (appended at 1780000000100 ms, before its command "
                      "was sent: the last round ended on a record appended at 1780000005000 ms; "
                      "REPORT_CLOCK_SKEW_MS 0)", source=(0, 9)),
    ]  # fmt: skip


def test_a_flood_of_reports_forged_ahead_is_refused_once_a_later_cause_is_read() -> None:
    # In a live run no genuine report is ever early (the factory answers a command it
    # has read), so a full hold only refuses forgeries. The next cause read (here the
    # report that ends the round) shows every held one appended before it to be forged:
    # they are refused then, all at once, and the hold is empty again.
    config = seed_config(report_clock_skew_ms=0, max_held=8)
    state, _ = step(None, arrived(RETRAIN, 1000, logged_ms=T0), config)
    refused = []
    for n in range(20):
        state, effects = step(state, answer(f"cmd-{1 + n % 4}", T0 + 1 + n, model_id=666), config)
        refused += rejects(effects)
    assert state is not None
    assert len(state.held) == 8
    assert refused == ["report 'cmd-1': foreign reply_id (no such command was sent; 8 held "
                       "already)", *[ANY] * 11]  # fmt: skip
    assert len({r.split(":")[0] for r in refused}) == 4  # cmd-1..4 alike
    # cmd-0's cause (T0) is older than the flood: all are kept while it is awaited.

    state, effects = step(state, answer("cmd-0", T0 + 1000, model_id=10), config)

    assert [e.sync.model_id for e in effects if isinstance(e, m.SendSync)] == [10]
    assert rejects(effects) == [
        f"report 'cmd-{1 + n % 4}': forged (appended at {T0 + 1 + n} ms, before its command "
        f"was sent: the last round ended on a record appended at {T0 + 1000} ms; "
        f"REPORT_CLOCK_SKEW_MS 0)" for n in range(8)
    ]  # fmt: skip
    assert state is not None
    assert state.held == ()
    played = []
    for number in (1, 2):
        state, effects = step(state, arrived(RETRAIN, 1000 + number, logged_ms=T0 + 3000 * number),
                              config)  # fmt: skip
        assert [e.command.id for e in effects if isinstance(e, m.SendCommand)] == [f"cmd-{number}"]
        reply = answer(f"cmd-{number}", T0 + 3000 * number + 1, model_id=10 + number)
        state, effects = step(state, reply, config)
        played += [e.sync.model_id for e in effects if isinstance(e, m.SendSync)]
        assert rejects(effects) == []
    assert played == [11, 12]
    assert state is not None
    assert (state.phase, state.held, state.model_id) == (m.Phase.IDLE, (), 12)


# --------------------------------------------------------------------------- any merge order


class Seen(Outputs):
    """What the factory and the engine received, and every score the sessions learned."""

    def __init__(self) -> None:
        super().__init__()
        self.scores: list[float | None] = []

    def take(self, effects: list[m.Effect]) -> None:
        super().take(effects)
        self.scores += [e.value for e in effects if isinstance(e, m.Note) and e.kind == "score"]


FORGED_F_VAL, FORGED_MODEL = -99.0, 666


@st.composite
def hostile_observer(draw: Any) -> list[Instruction]:
    """The Observer's instructions, with absurd timestamps written in among them."""
    out, ts = [], 1000
    for _ in range(draw(st.integers(1, 6))):
        if draw(st.booleans()):
            absurd = draw(st.sampled_from([*ABSURD, -1, YEAR_2100_MS + 1]))
            out.append(Instruction(OPTIMIZE, absurd))
        ts += draw(st.sampled_from([0, 1, 5, 10]))
        out.append(Instruction(draw(st.sampled_from([OPTIMIZE, RETRAIN])), ts))
    return out


def hostile_live_run(
    config: m.MachineConfig, instructions: list[Instruction], data: Any
) -> tuple[Seen, list[m.Event], list[m.Event]]:
    """The first run: a factory answers (or fails, or stays silent), a forger writes ahead.

    Every record is stamped by the broker (``logged_ms``) when it is appended, and read
    at once. Between reads the forger may append a report (a winning score, a model)
    or a deadline marker naming a command not sent yet. Returns what was received and
    the two topics as they were written.
    """
    seen, sessions = Seen(), {}
    instruction_topic: list[m.Event] = []
    report_topic: list[m.Event] = []
    outbox: list[m.Event] = []  # the factory's answers and our markers, not appended yet
    pending = list(instructions)
    model, clock = 100, T0
    while pending or outbox or overdue(sessions):
        clock += 10
        state = sessions.get(KEY)
        ahead = (state.next_command if state else 0) + data.draw(st.integers(0, 3), label="ahead")
        forge = data.draw(st.sampled_from(["none", "none", "report", "marker"]), label="forge")
        event: m.Event
        if forge == "report":
            forged = Report(f"cmd-{ahead}", True, FORGED_MODEL, FORGED_F_VAL, logged_ms=clock)
            event = m.ReportArrived(forged, 0)
            report_topic.append(event)
        elif forge == "marker":
            event = m.DeadlinePassed(Deadline(f"cmd-{ahead}", logged_ms=clock), 0)
            report_topic.append(event)
        elif pending and (not outbox or data.draw(st.booleans(), label="instruction next")):
            instruction = msgspec.structs.replace(pending.pop(0), logged_ms=clock)
            event = m.InstructionArrived(instruction, 0)
            instruction_topic.append(event)
        elif outbox:
            event = _stamped(outbox.pop(0), clock)
            report_topic.append(event)
        else:  # nothing to read: the deadline passes
            clock += config.report_timeout_ms
            event = m.Tick(clock)
        effects = feed(config, sessions, event)
        seen.take(effects)
        outbox += [m.DeadlinePassed(e.deadline, 0) for e in effects
                   if isinstance(e, m.MarkDeadline)]  # fmt: skip
        for command in (e.command for e in effects if isinstance(e, m.SendCommand)):
            reply = data.draw(st.sampled_from(["ok", "ok", "error", "none"]), label="factory")
            if command.type == "opt_initialise" or reply == "none":
                continue
            model += 1
            ok = reply == "ok"
            score, error = (-model / 1000, None) if ok else (None, "boom")
            outbox.append(m.ReportArrived(Report(command.id, ok, model, score, error=error), 0))
    return seen, instruction_topic, report_topic


def _stamped(event: m.Event, logged_ms: int) -> m.Event:
    if isinstance(event, m.ReportArrived):
        return m.ReportArrived(msgspec.structs.replace(event.report, logged_ms=logged_ms), 0)
    assert isinstance(event, m.DeadlinePassed)
    return m.DeadlinePassed(msgspec.structs.replace(event.deadline, logged_ms=logged_ms), 0)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow,
          HealthCheck.data_too_large])  # fmt: skip
@given(data=st.data())
def test_forgeries_and_absurd_instructions_are_refused_alike_in_any_merge_order_and_replay(
    data: Any,
) -> None:
    config = seed_config(report_clock_skew_ms=0)
    instructions = data.draw(hostile_observer(), label="instructions")
    first, instruction_topic, report_topic = hostile_live_run(config, instructions, data)

    # No forgery was taken: no forged score learned, no forged model played, no command or
    # sync stamped with an implausible time; every absurd instruction was dead-lettered.
    assert FORGED_F_VAL not in first.scores
    assert FORGED_MODEL not in [s.model_id for _, s in first.syncs]
    stamps = {c.timestamp for c in first.commands} | {s.timestamp for _, s in first.syncs}
    assert all(0 <= ts <= YEAR_2100_MS for ts in stamps)
    absurd = [i for i in instructions if not 0 <= i.timestamp <= YEAR_2100_MS]
    assert len([r for r in first.rejects if "implausible" in r]) == len(absurd)

    # Crashes and replays in any merge order of the two topics decide the same.
    crashes = data.draw(st.integers(1, 3), label="crashes")
    replayed, _ = run_with_crashes(config, instruction_topic, report_topic, data, crashes)

    assert_same_decisions(replayed, first)
