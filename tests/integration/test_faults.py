"""What production does to the controller: bad input, a silent factory, no broker at all."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time

import msgspec
import pytest

from dataflow.adapters.kafka import (
    DLQ_REASON,
    DLQ_SOURCE_OFFSET,
    DLQ_SOURCE_PARTITION,
    DLQ_SOURCE_TOPIC,
    DLQ_STAGE,
    MARKER_HEADER,
    MESSAGE_ID_HEADER,
)
from dataflow.adapters.wire import Codec
from dataflow.domain import dialects
from dataflow.domain import messages as msg
from dataflow.domain.messages import Instruction, InstructionKind
from dataflow.sim import process
from dataflow.sim.factory import Behaviour
from tests.integration.harness import ROOT, factory
from tests.kafka import client

pytestmark = pytest.mark.integration

HOSTILE_INSTRUCTIONS = [
    (b"not json at all", "instruction: JSON is malformed: invalid character (byte 4)"),
    (b'{"id": "seven", "instruction_type": "optimize", "timestamp": "soon"}',
     "instruction: Expected `int | null`, got `str` - at `$.timestamp`"),
    (b'{"id": 8, "instruction_type": "self_destruct", "timestamp": 5}',
     "instruction: `$.instruction_type` has unknown instruction 'self_destruct'"),
    (b'{"id": 9, "instruction_type": "optimize", "timestamp": 5, "pad": "' + b"x" * 20_000 + b'"}',
     "instruction: message of 20068 bytes exceeds the 10000 limit"),
]  # fmt: skip


def _headers(message) -> dict[str, bytes]:
    return dict(message.headers() or [])


def test_malformed_and_hostile_input_is_dead_lettered_and_the_round_completes(
    wiring_factory, controller_factory
) -> None:
    wiring = wiring_factory("seed", OPTIMISER_BUDGET="3", MAX_MESSAGE_BYTES="10000")
    controller = controller_factory(wiring)
    with factory(wiring):
        controller.start()
        wiring.send_instruction(Instruction(InstructionKind.OPTIMIZE, 1000, 1))
        client.produce(wiring.bootstrap, wiring.instructions, [m for m, _ in HOSTILE_INSTRUCTIONS])
        client.produce(wiring.bootstrap, wiring.reports, [
            # Ids of commands not sent yet are held (a replay may deliver a report early),
            # up to 1024 commands ahead: these are beyond.
            b'{"reply_id": "cmd-9999", "status": "success", "model_id": 1, "metrics": ""}',
            b'{"reply_id": "nobody", "status": "success", "model_id": 1, "metrics": ""}',
            b'{"reply_id": 5000}',
        ])  # fmt: skip
        syncs = wiring.wait_for_plays(1)
    controller.stop()

    assert [s.type for s in syncs] == ["pause", "play"]
    letters = wiring.read(wiring.dead_letters, count=7, timeout=30)
    by_reason = {_headers(m)[DLQ_REASON].decode(): m for m in letters}
    for payload, reason in HOSTILE_INSTRUCTIONS:
        letter = by_reason[reason]
        assert letter.value() == payload
        assert _headers(letter)[DLQ_SOURCE_TOPIC] == wiring.instructions.encode()
        assert _headers(letter)[DLQ_SOURCE_PARTITION] == b"0"
        assert _headers(letter)[DLQ_STAGE] == b"decode"
    assert {r: _headers(m)[DLQ_STAGE] for r, m in by_reason.items() if "report" in r} == {
        "report 'cmd-9999': foreign reply_id (no such command was sent, nor within 1024 of the "
        "next)": b"session",
        "report: `$.reply_id` 'nobody' is not a command id": b"route",
        "report 5000: foreign reply_id (no such command was sent, nor within 1024 of the next)": (
            b"session"
        ),
    }
    offsets = sorted(int(_headers(m)[DLQ_SOURCE_OFFSET]) for m in letters
                     if _headers(m)[DLQ_SOURCE_TOPIC] == wiring.instructions.encode())  # fmt: skip
    assert offsets == [1, 2, 3, 4]


#: Instructions that decode but carry no plausible stream time (issue #30): each would
#: become a round whose commands the original factory holds for ever, FIFO.
ABSURD_INSTRUCTIONS = [
    (b'{"id": %d, "instruction_type": "optimize", "timestamp": %d}' % (n, ts), ts)
    for n, ts in enumerate((2**63 - 1, 2**64 - 1, 2**70, 10**30, -1), start=100)
]


def test_absurd_timestamps_and_reports_forged_ahead_are_dead_lettered_and_the_round_takes_the_genuine_answers(  # noqa: E501
    wiring_factory, controller_factory
) -> None:
    wiring = wiring_factory("seed", OPTIMISER_BUDGET="3")
    controller = controller_factory(wiring)
    # Written before the round: a winning score for each of its steps (cmd-1..3) and a
    # model for its finalise (cmd-4), for commands not sent yet. Held, then refused.
    forged = [b'{"reply_id": "cmd-%d", "status": "success", "model_id": 666, '
              b'"metrics": "{\\"f_val\\": -99.0}", "params_dict": "{}"}' % n
              for n in range(1, 5)]  # fmt: skip
    with factory(wiring):
        controller.start()
        client.produce(wiring.bootstrap, wiring.reports, forged)
        client.produce(wiring.bootstrap, wiring.instructions, [m for m, _ in ABSURD_INSTRUCTIONS])
        time.sleep(1.5)  # past REPORT_CLOCK_SKEW_MS (1000): the Observer writes later
        wiring.send_instruction(Instruction(InstructionKind.OPTIMIZE, 1000, 1))
        syncs = wiring.wait_for_plays(1)
        commands = wiring.commands_sent(idle=1.0, timeout=10)
    controller.stop()

    # One round, of the plausible instruction only; every command stamped with its time.
    assert [c.type for c in commands] == ["opt_initialise", *["opt_step"] * 3, "opt_finalise"]
    assert {c.timestamp for c in commands} | {s.timestamp for s in syncs} == {1000}
    # The genuine answers were taken: the factory's best step finalised, its model played.
    answers = [Codec("seed").decode_report(m.value()) for m in wiring.read(
        wiring.reports, idle=1.0, timeout=10) if MARKER_HEADER not in _headers(m)]  # fmt: skip
    genuine = {a.reply_id: a for a in answers if isinstance(a, msg.Report) and a.model_id != 666}
    scores = [genuine[f"cmd-{n}"].f_val for n in (1, 2, 3)]
    assert commands[-1].best_i == scores.index(min(scores))  # type: ignore[type-var]
    assert syncs == [msg.SyncMessage("pause", 1000, -1),
                     msg.SyncMessage("play", 1000, genuine["cmd-4"].model_id)]  # type: ignore[arg-type]  # fmt: skip
    letters = wiring.read(wiring.dead_letters, count=9, idle=2.0, timeout=30)
    reasons = sorted(_headers(m)[DLQ_REASON].decode() for m in letters)
    latest = dialects.get("seed").latest_timestamp
    later = f"implausible: later than INSTRUCTION_MAX_TIMESTAMP {latest}"
    assert [r for r in reasons if "implausible" in r] == sorted([
        "instruction: OPTIMIZE at -1 implausible: a stream time is never negative",
        f"instruction: OPTIMIZE at 9223372036854775807 {later}",
        f"instruction: OPTIMIZE at 18446744073709551615 {later}",
        f"instruction: OPTIMIZE at 1180591620717411303424 {later}",
        f"instruction: OPTIMIZE at 100000000000...(31 digits) {later}",
    ])  # fmt: skip
    forgeries = [r for r in reasons if "forged" in r]
    assert sorted(r.split(":")[0] for r in forgeries) == [f"report 'cmd-{n}'" for n in range(1, 5)]
    assert all("REPORT_CLOCK_SKEW_MS 1000" in r for r in forgeries)
    assert len(reasons) == 9  # nothing else: the genuine answers were no duplicates
    assert {_headers(m)[DLQ_STAGE] for m in letters} == {b"session"}
    # Each dead letter names its own record, a held forgery too (whatever released it).
    places = sorted((_headers(m)[DLQ_SOURCE_TOPIC].decode(), int(_headers(m)[DLQ_SOURCE_OFFSET]))
                    for m in letters)  # fmt: skip
    assert places == sorted([*((wiring.instructions, n) for n in range(5)),
                             *((wiring.reports, n) for n in range(4))])  # fmt: skip


def test_a_silent_factory_gets_retries_then_the_engine_plays_its_old_model(
    wiring_factory, controller_factory
) -> None:
    wiring = wiring_factory("seed", REPORT_TIMEOUT_S="1", MAX_RETRIES="2")
    controller = controller_factory(wiring)
    with factory(wiring, Behaviour(silence_rate=1.0)):
        controller.start()
        wiring.send_instruction(Instruction(InstructionKind.RETRAIN, 1000, 1))
        syncs = wiring.wait_for_plays(1, timeout=60)
    controller.stop()

    assert syncs == [msg.SyncMessage("pause", 1000, -1), msg.SyncMessage("play", 1000, -1)]
    # Three attempts of the same train, each under an id of its own: no id twice.
    sent = wiring.commands_sent(idle=1.0, timeout=10)
    assert sent == [msgspec.structs.replace(sent[0], id=f"cmd-{n}") for n in range(3)]
    assert [_headers(m)[MESSAGE_ID_HEADER] for m in wiring.read(wiring.commands, count=3)] == [
        b"controller/cmd/cmd-0/0", b"controller/cmd/cmd-1/1", b"controller/cmd/cmd-2/2",
    ]  # fmt: skip
    # Each timeout was decided by a deadline marker read back from the report topic.
    markers = wiring.read(wiring.reports, idle=1.0, timeout=10)
    assert [(_headers(m)[MARKER_HEADER], _headers(m)[MESSAGE_ID_HEADER]) for m in markers] == [
        (b"deadline", f"controller/deadline/cmd-{n}".encode()) for n in range(3)
    ]
    assert [Codec("seed").decode_deadline(m.value()) for m in markers] == [
        msg.Deadline(f"cmd-{n}") for n in range(3)
    ]
    events = [line.get("event") for line in controller.log_lines()]
    assert (events.count("overdue"), events.count("timeout")) == (3, 3)
    assert events.count("round_aborted") == 1


def test_a_factory_error_is_retried_and_the_round_still_completes(
    wiring_factory, controller_factory
) -> None:
    wiring = wiring_factory("seed", OPTIMISER_BUDGET="2")
    controller = controller_factory(wiring)
    # The first step and the finalise fail once; each is resent under the next id.
    with factory(wiring, Behaviour(failing_once=frozenset({"cmd-1", "cmd-4"}))):
        controller.start()
        wiring.send_instruction(Instruction(InstructionKind.OPTIMIZE, 7, 1))
        syncs = wiring.wait_for_plays(1)
    controller.stop()

    sent = wiring.commands_sent(count=6, timeout=10)
    assert [(c.id, c.type) for c in sent] == [
        ("cmd-0", "opt_initialise"), ("cmd-1", "opt_step"), ("cmd-2", "opt_step"),
        ("cmd-3", "opt_step"), ("cmd-4", "opt_finalise"), ("cmd-5", "opt_finalise"),
    ]  # fmt: skip
    assert sent[2] == msgspec.structs.replace(sent[1], id="cmd-2")  # the same step again
    # The play names the model of the finalise's successful answer, not of its failed one.
    reports = [dialects.decode_report(m.value(), "seed")
               for m in wiring.read(wiring.reports, count=5, timeout=10)]  # fmt: skip
    finalised = [(r.reply_id, r.ok, r.model_id, r.error) for r in reports
                 if isinstance(r, msg.Report) and r.reply_id in ("cmd-4", "cmd-5")]  # fmt: skip
    # Models: steps cmd-2 0 and cmd-3 1, the finalise 2 (a failed answer takes no id).
    assert finalised == [
        ("cmd-4", False, None, "simulated factory failure"), ("cmd-5", True, 2, None),
    ]  # fmt: skip
    assert syncs == [msg.SyncMessage("pause", 7, -1), msg.SyncMessage("play", 7, 2)]


def test_an_unreachable_broker_makes_the_controller_exit_non_zero_within_its_bound() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        dead = f"127.0.0.1:{sock.getsockname()[1]}"  # bound, never listening: refused
    env = {**os.environ, "KAFKA_BOOTSTRAP_SERVERS": dead, "STARTUP_TIMEOUT_S": "3"}
    began = time.monotonic()

    run = subprocess.run(process.command(), cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=60, check=False)  # fmt: skip

    assert run.returncode == 3
    assert time.monotonic() - began < 30
    lines = [json.loads(line) for line in run.stderr.splitlines() if line.strip()]
    assert lines[-1]["msg"].startswith(f"controller cannot start: Kafka brokers {dead} "
                                       "unreachable for 3s")  # fmt: skip
    # librdkafka's own lines come through the log, in LOG_FORMAT (json by default).
    client = [line for line in lines if line["logger"] == "dataflow.kafka.client"]
    assert client, run.stderr
    assert all("Connection refused" in line["msg"] for line in client)


def test_invalid_settings_exit_with_every_problem_listed() -> None:
    env = {**os.environ, "CONTROLLER_DIALECT": "klingon", "MAX_RETRIES": "-1",
           "REPORT_TIMEOUT_S": "soon"}  # fmt: skip
    run = subprocess.run(process.command(), cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=60, check=False)  # fmt: skip

    assert run.returncode == 2
    assert "CONTROLLER_DIALECT: 'klingon' is not one of ['seed', 'rtcef']" in run.stderr
    assert "MAX_RETRIES: -1 must be at least 0" in run.stderr
    assert "REPORT_TIMEOUT_S: 'soon' is not a valid float" in run.stderr
