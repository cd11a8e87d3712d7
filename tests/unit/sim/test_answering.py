"""``answering``: a factory stand-in as ``serve``'s handler, telling each answer."""

from __future__ import annotations

from dataflow.domain import messages as msg
from dataflow.domain.dialects import PROFILES
from dataflow.sim.factory import Behaviour, FactorySimulator
from dataflow.sim.runner import answering
from dataflow.sim.surfaces import bowl

RTCEF = PROFILES["rtcef"]
TRAIN = msg.FactoryCommand(0, -1, 0, 5, "train", '{"params": {"pmin": 0.1}}', -1)


def test_each_answer_is_told_with_its_report_count_and_a_non_command_is_rejected() -> None:
    told: list[tuple[int | str, int]] = []
    rejected: list[msg.Rejection] = []
    doubled = FactorySimulator("rtcef", RTCEF, bowl(RTCEF), Behaviour(duplicate_rate=1.0))
    handle = answering(doubled, "reports", rejected=rejected.append,
                       answered=lambda command, n: told.append((command.id, n)))  # fmt: skip
    _, value = doubled.codec.encode_command(TRAIN)

    produced = list(handle(value, []))
    assert [topic for topic, _, _ in produced] == ["reports", "reports"]
    assert told == [(0, 2)]

    assert list(handle(b"not a command", [])) == []
    assert told == [(0, 2)]
    assert len(rejected) == 1


def test_a_silent_answer_is_told_too() -> None:
    told: list[int] = []
    silent = FactorySimulator("rtcef", RTCEF, bowl(RTCEF), Behaviour(silence_rate=1.0))
    handle = answering(silent, "reports", answered=lambda command, count: told.append(count))

    assert list(handle(silent.codec.encode_command(TRAIN)[1], [])) == []
    assert told == [0]
