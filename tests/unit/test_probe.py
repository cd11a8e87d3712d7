"""The Kubernetes probe: alive while this process's recovery partitions keep being written."""

from __future__ import annotations

import os
from pathlib import Path

from dataflow.tools import probe

NOW = 1_800_000_000.0


def touch(path: Path, at: float) -> Path:
    path.write_bytes(b"")
    os.utime(path, (at, at))
    return path


def test_a_partition_written_within_three_snapshot_intervals_is_alive(tmp_path: Path) -> None:
    touch(tmp_path / "part-0.sqlite3", NOW - 300)
    touch(tmp_path / "part-0.sqlite3-wal", NOW - 29)
    env = {"BYTEWAX_RECOVERY_DIRECTORY": str(tmp_path), "BYTEWAX_SNAPSHOT_INTERVAL": "5"}

    assert probe.check(env, now=NOW) == ""


def test_a_partition_not_written_for_longer_is_reported_stuck_with_the_reason(
    tmp_path: Path,
) -> None:
    touch(tmp_path / "part-0.sqlite3", NOW - 300)
    touch(tmp_path / "part-0.sqlite3-wal", NOW - 61)
    env = {"BYTEWAX_RECOVERY_DIRECTORY": str(tmp_path), "BYTEWAX_SNAPSHOT_INTERVAL": "20"}

    assert probe.check(env, now=NOW) == (
        f"no progress for 61s (limit 60s): no recovery partition in {tmp_path} is being"
        " written; the dataflow is stuck or its cluster has not formed"
    )


def test_a_pod_holding_several_partitions_is_judged_by_the_newest_write(tmp_path: Path) -> None:
    touch(tmp_path / "part-0.sqlite3", NOW - 100)
    touch(tmp_path / "part-2.sqlite3", NOW - 100)
    touch(tmp_path / "part-2.sqlite3-wal", NOW - 2)  # moved here by a rebalance, written
    env = {"BYTEWAX_RECOVERY_DIRECTORY": str(tmp_path), "BYTEWAX_REPLICAS": "2",
           "BYTEWAX_POD_NAME": "prod-rtcef-controller-0"}  # fmt: skip

    assert [p.name for p in probe.partition_files(tmp_path)] == [
        "part-0.sqlite3", "part-2.sqlite3", "part-2.sqlite3-wal",
    ]  # fmt: skip
    assert probe.check(env, now=NOW) == ""


def test_a_pod_holding_no_partition_asks_the_metrics_endpoint(tmp_path: Path) -> None:
    env = {"BYTEWAX_RECOVERY_DIRECTORY": str(tmp_path), "BYTEWAX_DATAFLOW_API_PORT": "9",
           "BYTEWAX_REPLICAS": "4", "BYTEWAX_POD_NAME": "rtcef-controller-3"}  # fmt: skip

    assert probe.check(env, now=NOW).startswith("/metrics on port 9 did not answer")


def test_without_recovery_it_asks_the_metrics_endpoint() -> None:
    env = {"BYTEWAX_DATAFLOW_API_PORT": "9"}  # discard port: nothing answers

    assert probe.check(env).startswith("/metrics on port 9 did not answer")
