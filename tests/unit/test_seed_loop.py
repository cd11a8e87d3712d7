"""The seed loop's reading of the jobs' logs and topics (no broker, no JVM)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.rtcef.traffic import Record
from tests.seed import loop

ENGINE = "[Co-Process-Broadcast-Keyed (1/1)#0] INFO  e.i.streams.rtcef_flink.WayebEngine - "


def test_the_log_patterns_read_the_jobs_own_lines() -> None:
    report = ("08:19:04.064 [TriggerWindow(...) (1/1)#0] INFO  e.i.streams.rtcef_flink.InferenceJob"
              " - GLOBAL_REPORT: Report{ts=1444630921, key='GLOBAL', runtime MCC=0.6166103577895309"
              "', batch MCC=0.6356417261637282}")  # fmt: skip
    scheduled = (f"08:19:17.485 {ENGINE}Key=227592820 Scheduling model swap to "
                 "/opt/flink/data/saved_models/wayeb_model_11.spst at T=1447052881")  # fmt: skip
    swap = f"08:19:17.485 {ENGINE}Key=227592820 Sync reached (1447052881 >= 1447052881). Swapping."
    heartbeat = f"08:18:43.342 {ENGINE}Engine Heartbeat: Key=227592820 count=10 lastTS=1444405141"

    assert loop.GLOBAL_REPORT.search(report).groups() == (  # type: ignore[union-attr]
        "1444630921", "0.6166103577895309", "0.6356417261637282"
    )  # fmt: skip
    assert loop.SCHEDULED.search(scheduled).groups() == (  # type: ignore[union-attr]
        "/opt/flink/data/saved_models/wayeb_model_11.spst", "1447052881"
    )  # fmt: skip
    assert loop.SWAP.search(swap).groups() == ("1447052881",)  # type: ignore[union-attr]
    assert loop.HEARTBEAT.search(heartbeat).groups() == ("10", "1444405141")  # type: ignore[union-attr]


def record(topic: str, broker_ms: int, **value: Any) -> Record:
    return Record(topic, 0, broker_ms, value)


def test_rounds_pair_each_pause_with_its_play_and_count_what_happened_between() -> None:
    sync, commands, reports = loop.TOPICS.sync, loop.TOPICS.commands, loop.TOPICS.reports
    syncs = [
        record(sync, 1000, type="pause", model_id=-1),
        record(sync, 4500, type="play", model_id=2),
        record(sync, 6000, type="pause", model_id=-1),
        record(sync, 6200, type="play", model_id=2),
    ]
    sent = [
        record(commands, 1001, id="cmd-0", type="opt_initialise"),
        record(commands, 1002, id="cmd-1", type="opt_step"),
        record(commands, 2000, id="cmd-2", type="opt_step"),
        record(commands, 3000, id="cmd-3", type="opt_finalise"),
        record(commands, 6001, id="cmd-4", type="train"),
    ]
    answers = [
        record(reports, 1900, reply_id="cmd-1", status="success"),
        record(reports, 2900, reply_id="cmd-2", status="error", error="too few events"),
        record(reports, 4400, reply_id="cmd-3", status="success", model_id=2,
               model_path="/opt/flink/data/saved_models/wayeb_model_2.spst"),
        record(reports, 6100, reply_id="cmd-4", status="error", error="boom"),
    ]  # fmt: skip

    assert loop.rounds(syncs, sent, answers) == [
        {"kind": "OPTIMIZE", "paused_s": 3.5, "steps": 2, "errors": 1, "model_id": 2,
         "completed": True},
        {"kind": "RETRAIN", "paused_s": 0.2, "steps": 0, "errors": 1, "model_id": 2,
         "completed": False},
    ]  # fmt: skip


def test_a_seed_topic_value_is_a_json_object() -> None:
    assert loop.json_value("t", b'{"type": "pause"}') == {"type": "pause"}


@pytest.mark.parametrize(
    ("data", "reason"),
    [(b"[1, 2]", "not a JSON object"), (b'"text"', "not a JSON object"),
     (b"{not json", "Expecting property name")],
)  # fmt: skip
def test_any_other_seed_topic_value_is_undecodable(data: bytes, reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        loop.json_value("t", data)


def test_the_logs_give_each_swap_and_whether_it_took_and_why_the_task_failed(
    tmp_path: Path,
) -> None:
    lines = [
        f"{ENGINE}Key=1 Scheduling model swap to /opt/flink/data/saved_models/m3.spst at T=10",
        f"{ENGINE}Key=1 Sync reached (10 >= 10). Swapping.",
        f"{ENGINE}Swapping running engines to new model...",
        f"{ENGINE}Engine swapped successfully.",
        f"{ENGINE}Engine Heartbeat: Key=1 count=40 lastTS=20",
        f"{ENGINE}Key=1 Scheduling model swap to /opt/flink/data/saved_models/m7.spst at T=30",
        f"{ENGINE}Key=1 Sync reached (31 >= 30). Swapping.",
        "... switched from RUNNING to FAILED with failure cause:",
        "java.util.NoSuchElementException: key not found: 113",
        "Caused by: java.util.NoSuchElementException: key not found: 113",
    ]
    (tmp_path / "inference.out").write_text("\n".join(lines) + "\n")
    (tmp_path / "factory.out").write_text("")
    result = loop.RunResult("ours", 1.0)

    loop.read_logs(result, tmp_path)

    assert result.swaps == [
        {"timestamp": 10, "model_path": "/opt/flink/data/saved_models/m3.spst", "ok": True},
        {"timestamp": 31, "model_path": "/opt/flink/data/saved_models/m7.spst", "ok": False},
    ]
    assert result.engine_records == 40
    assert result.task_failures == ["java.util.NoSuchElementException: key not found: 113"]
