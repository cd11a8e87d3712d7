"""Invariants that recovery and replay depend on, over generated event sequences."""

from __future__ import annotations

import copy
import json
import pickle

import msgspec
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dataflow.adapters.wire import Codec
from dataflow.domain import dialects
from dataflow.domain import machine as m
from dataflow.domain import messages as msg
from dataflow.domain.errors import DomainError
from dataflow.domain.messages import (
    Instruction,
    InstructionKind,
    Report,
    encode_command,
)
from tests.support import seed_config

KEY = m.DEFAULT_KEY
# Random proposals only (budget below n_initial): fast enough for hundreds of sequences.
RANDOM = seed_config(max_retries=1)
# One model-based proposal per round, so the GP path is exercised too.
MODEL = seed_config(profile=msgspec.structs.replace(dialects.PROFILES["seed"], budget=2,
                                                    n_initial=1, n_candidates=200))  # fmt: skip

reply_ids = st.one_of(
    st.integers(0, 12).map(lambda n: f"cmd-{n}"), st.integers(-2, 12), st.text(max_size=5)
)
reports = st.builds(
    lambda reply, ok, f_val, model, error: m.ReportArrived(
        Report(reply, ok, model, f_val if ok else None, None, None if ok else error), 0
    ),
    reply_ids, st.booleans(),
    st.one_of(st.none(), st.floats(-1, 1), st.floats(allow_nan=False, allow_infinity=False)),
    st.one_of(st.none(), st.integers(0, 99)), st.just("boom"),
)  # fmt: skip
params = st.one_of(
    st.just((("pMin", 0.02), ("gamma", 0.001))),
    st.just((("pMin", 5.0), ("gamma", 0.001))),
    st.just((("other", 1.0),)),
)
instructions = st.builds(
    lambda kind, ts, p: m.InstructionArrived(
        Instruction(kind, ts, parameters=p if kind is InstructionKind.UPDATE_PARAMS else None), 0
    ),
    st.sampled_from(InstructionKind), st.integers(0, 10**13), params,
)  # fmt: skip
ticks = st.integers(0, 5000).map(m.Tick)
deadlines = reply_ids.map(lambda reply: m.DeadlinePassed(m.Deadline(reply), 0))
events = st.lists(st.one_of(instructions, reports, ticks, reports, deadlines), max_size=40)


def with_time(sequence: list[m.Event]) -> list[m.Event]:
    """Give events non-decreasing arrival times, as a flow would."""
    out: list[m.Event] = []
    now = 0
    for event in sequence:
        now += event.at_ms if isinstance(event, m.Tick) else 10
        out.append(msgspec.structs.replace(event, at_ms=now))
    return out


def run(config: m.MachineConfig, sequence: list[m.Event], state: m.Session | None = None):
    states, effects = [state], []
    for event in sequence:
        state, out = m.advance(state, event, key=KEY, config=config)
        states.append(state)
        effects.append(out)
    return states, effects


FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FAST
@given(events, st.sampled_from([RANDOM, MODEL]))
def test_no_event_sequence_makes_advance_raise(sequence, config) -> None:
    try:
        run(config, with_time(sequence))
    except DomainError as error:  # pragma: no cover - reported by Hypothesis
        raise AssertionError(f"advance raised {error!r}") from error


@FAST
@given(events)
def test_every_round_that_pauses_the_engine_ends_with_exactly_one_play(sequence) -> None:
    states, effects = run(RANDOM, with_time(sequence))
    syncs = [e.sync.type for out in effects for e in out if isinstance(e, m.SendSync)]

    assert syncs[0::2] == ["pause"] * len(syncs[0::2])
    assert syncs[1::2] == ["play"] * len(syncs[1::2])
    final = states[-1]
    in_round = final is not None and final.phase is not m.Phase.IDLE
    assert syncs.count("pause") - syncs.count("play") == (1 if in_round else 0)


@FAST
@given(events)
def test_a_rejected_event_leaves_the_state_unchanged(sequence) -> None:
    states, effects = run(RANDOM, with_time(sequence))
    for before, after, out in zip(states[:-1], states[1:], effects, strict=True):
        # A used event may release held reports, some of them duplicates (rejected then).
        if out and all(isinstance(e, m.Reject) for e in out):
            assert after == before
            assert len(out) == 1


@FAST
@given(events, st.sampled_from([RANDOM, MODEL]))
def test_state_round_trips_through_pickle_and_deepcopy(sequence, config) -> None:
    states, _ = run(config, with_time(sequence))
    for state in states:
        assert pickle.loads(pickle.dumps(state)) == state
        assert copy.deepcopy(state) == state


@FAST
@given(events, st.data(), st.sampled_from([RANDOM, MODEL]))
def test_resuming_from_a_snapshot_after_any_prefix_gives_the_same_effects(
    sequence, data, config
) -> None:
    sequence = with_time(sequence)
    states, effects = run(config, sequence)
    cut = data.draw(st.integers(0, len(sequence)))

    restored = pickle.loads(pickle.dumps(states[cut]))
    _, resumed = run(config, sequence[cut:], restored)

    assert resumed == effects[cut:]


@FAST
@given(events)
def test_a_command_id_is_sent_once_and_a_deadline_marker_asked_for_once(sequence) -> None:
    _, effects = run(RANDOM, with_time(sequence))
    sent = [encode_command(e.command) for out in effects for e in out
            if isinstance(e, m.SendCommand)]  # fmt: skip
    marked = [e.message_id for out in effects for e in out if isinstance(e, m.MarkDeadline)]

    assert len({json.loads(c)["id"] for c in sent}) == len(sent)  # a resend has its own id
    assert len(set(marked)) == len(marked)


@settings(max_examples=400, deadline=None)
@given(st.one_of(st.binary(max_size=300), st.text(max_size=200).map(str.encode)))
def test_no_bytes_make_a_decoder_raise(data: bytes) -> None:
    for codec in (Codec("seed"), Codec("rtcef"), Codec("rtcef", "avro")):
        for decode in (codec.decode_instruction, codec.decode_report, codec.decode_command,
                       codec.decode_sync, codec.decode_deadline):  # fmt: skip
            _check_decoded(decode.__name__, decode(data))


#: What each decoder returns when it accepts, and how its rejections begin.
DECODED = {
    "decode_instruction": (msg.Instruction, "instruction: "),
    "decode_report": (msg.Report, "report: "),
    "decode_command": (msg.FactoryCommand, "command: "),
    "decode_sync": (msg.SyncMessage, "sync: "),
    "decode_deadline": (msg.Deadline, "deadline marker: "),
}


def _check_decoded(decoder: str, result: object) -> None:
    """A well-formed value of the decoder's type, or a rejection that says what it refused."""
    kind, prefix = DECODED[decoder]
    if isinstance(result, msg.Rejection):
        assert result.reason.startswith(prefix), (decoder, result.reason)
        assert len(result.reason) > len(prefix), (decoder, result.reason)
        return
    assert isinstance(result, kind), (decoder, result)
    if isinstance(result, msg.Instruction):
        assert result.kind in set(msg.InstructionKind)
        assert isinstance(result.timestamp, int)
        assert not isinstance(result.timestamp, bool)
    elif isinstance(result, msg.Report):
        assert isinstance(result.reply_id, int | str)
        assert isinstance(result.ok, bool)
        assert result.f_val is None or isinstance(result.f_val, float)
        assert result.params is None or all(isinstance(n, str) for n, _ in result.params)
    elif isinstance(result, msg.FactoryCommand):
        assert result.type in set(msg.CommandType)
    elif isinstance(result, msg.SyncMessage):
        assert result.type in set(msg.SyncType)
    else:
        assert isinstance(result, msg.Deadline)
        assert isinstance(result.command_id, int | str)
        assert not isinstance(result.command_id, bool)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner,
                                                                max_size=6),
    max_leaves=12,
)  # fmt: skip
FIELDS = ["id", "instruction", "instruction_type", "timestamp", "model_id", "parameters",
          "reply_id", "params_dict", "metrics", "status", "error"]  # fmt: skip


@settings(max_examples=400, deadline=None)
@given(st.dictionaries(st.sampled_from(FIELDS), json_values, max_size=8))
def test_no_json_object_makes_a_decoder_raise(fields: dict[str, object]) -> None:
    data = json.dumps(fields).encode()
    for dialect in ("seed", "rtcef"):
        _check_decoded("decode_instruction", dialects.decode_instruction(data, dialect))
        _check_decoded("decode_report", dialects.decode_report(data, dialect))
