"""Moving recovery partitions between per-pod volumes when the process count changes."""

from __future__ import annotations

import shutil
import sqlite3
import subprocess
import sys
from contextlib import closing
from pathlib import Path

import pytest

from dataflow.adapters import recovery
from dataflow.adapters.recovery import MOVED_MARKER, Move, RebalanceError
from dataflow.tools import recovery as recovery_tool


def volumes(root: Path, count: int) -> list[Path]:
    """``count`` pod volumes; pod k holds partition k of ``count``, as the init container makes."""
    made = [root / f"pod-{k}" for k in range(count)]
    for k, volume in enumerate(made):
        recovery.ensure(volume, count, pod=k)
    return made


def held(volume: Path) -> list[str]:
    return sorted(p.name for p in volume.iterdir() if not p.name.startswith("."))


def crash_after_writing(database: Path) -> None:
    """Write a row in WAL mode and die without closing: the row is only in the ``-wal``."""
    script = ("import os, sqlite3, sys; c = sqlite3.connect(sys.argv[1]); "
              "c.execute('PRAGMA journal_mode=WAL'); c.execute('CREATE TABLE t (x)'); "
              "c.execute('INSERT INTO t VALUES (42)'); c.commit(); os._exit(0)")  # fmt: skip
    subprocess.run([sys.executable, "-c", script, str(database)], check=True)


def rows(database: Path) -> list[tuple[int]]:
    with closing(sqlite3.connect(database)) as connection:
        return connection.execute("SELECT x FROM t").fetchall()


def test_going_from_three_processes_to_two_moves_the_third_partition_its_log_folded_in(
    tmp_path: Path,
) -> None:
    pods = volumes(tmp_path, 3)
    crash_after_writing(pods[2] / "part-2.sqlite3")
    assert (pods[2] / "part-2.sqlite3-wal").stat().st_size > 0

    moves = recovery.rebalance(pods, partitions=3, processes=2)

    assert moves == [Move(2, pods[2], pods[0])]
    assert held(pods[0]) == ["part-0.sqlite3", "part-2.sqlite3"]
    assert held(pods[1]) == ["part-1.sqlite3"]
    assert held(pods[2]) == []
    assert rows(pods[0] / "part-2.sqlite3") == [(42,)]
    assert all((pod / MOVED_MARKER).exists() for pod in pods)


def test_going_on_to_four_spreads_them_again_and_the_new_pod_holds_none(tmp_path: Path) -> None:
    pods = volumes(tmp_path, 3)
    recovery.rebalance(pods, partitions=3, processes=2)
    pods.append(tmp_path / "pod-3")

    moves = recovery.rebalance(pods, partitions=3, processes=4)

    assert moves == [Move(2, pods[0], pods[2])]
    assert [held(pod) for pod in pods] == [
        ["part-0.sqlite3"], ["part-1.sqlite3"], ["part-2.sqlite3"], []
    ]  # fmt: skip


def test_a_balanced_set_moves_nothing_but_marks_every_volume(tmp_path: Path) -> None:
    pods = volumes(tmp_path, 3)

    assert recovery.rebalance(pods, partitions=3, processes=3) == []
    assert all((pod / MOVED_MARKER).exists() for pod in pods)


def test_a_missing_or_conflicting_partition_is_refused_and_nothing_moves(tmp_path: Path) -> None:
    pods = volumes(tmp_path, 3)
    (pods[1] / "part-1.sqlite3").unlink()
    shutil.copyfile(pods[0] / "part-0.sqlite3", pods[2] / "part-0.sqlite3")
    crash_after_writing(pods[2] / "part-0.sqlite3")  # a second copy that went its own way

    with pytest.raises(RebalanceError) as refused:
        recovery.rebalance(pods, partitions=3, processes=2)

    assert str(refused.value) == (
        f"partitions [1] are on none of the volumes; part-0.sqlite3 differs between "
        f"{[str(pods[0]), str(pods[2])]}"
    )
    assert [held(pod) for pod in pods] == [
        ["part-0.sqlite3"], [], ["part-0.sqlite3", "part-2.sqlite3"]
    ]  # fmt: skip


def test_a_partition_still_open_is_refused_and_nothing_moves(tmp_path: Path) -> None:
    pods = volumes(tmp_path, 3)
    crash_after_writing(pods[2] / "part-2.sqlite3")
    with closing(sqlite3.connect(pods[2] / "part-2.sqlite3")) as running:
        running.execute("BEGIN")
        running.execute("SELECT * FROM t").fetchall()  # a reader holding the log

        with pytest.raises(RebalanceError, match=r"part-2\.sqlite3 is in use: stop every pod"):
            recovery.rebalance(pods, partitions=3, processes=2)

    assert held(pods[2])[0] == "part-2.sqlite3"
    assert not (pods[0] / "part-2.sqlite3").exists()


def test_a_move_interrupted_after_its_copy_is_finished_by_running_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pods = volumes(tmp_path, 3)

    def crash(self: Path, missing_ok: bool = False) -> None:
        raise OSError("node lost")

    with monkeypatch.context() as patched:
        patched.setattr(Path, "unlink", crash)
        with pytest.raises(OSError, match="node lost"):
            recovery.rebalance(pods, partitions=3, processes=2)
    assert held(pods[0]) == ["part-0.sqlite3", "part-2.sqlite3"]
    assert held(pods[2]) == ["part-2.sqlite3"]
    assert all((pod / MOVED_MARKER).exists() for pod in pods)  # marked before any move

    assert recovery.rebalance(pods, partitions=3, processes=2) == [Move(2, pods[2], pods[0])]
    assert [held(pod) for pod in pods] == [["part-0.sqlite3", "part-2.sqlite3"],
                                           ["part-1.sqlite3"], []]  # fmt: skip


def test_a_log_without_its_database_is_refused(tmp_path: Path) -> None:
    pods = volumes(tmp_path, 3)
    (pods[1] / "part-4.sqlite3-wal").write_bytes(b"left behind")

    with pytest.raises(RebalanceError, match=r"part-4\.sqlite3-wal has no database beside it"):
        recovery.rebalance(pods, partitions=3, processes=2)


def test_identical_copies_left_by_an_interrupted_move_are_resolved(tmp_path: Path) -> None:
    pods = volumes(tmp_path, 3)
    (pods[0] / "part-2.sqlite3").write_bytes((pods[2] / "part-2.sqlite3").read_bytes())

    moves = recovery.rebalance(pods, partitions=3, processes=2)

    assert moves == [Move(2, pods[2], pods[0])]
    assert [held(pod) for pod in pods] == [["part-0.sqlite3", "part-2.sqlite3"],
                                           ["part-1.sqlite3"], []]  # fmt: skip


def test_partitions_beyond_the_count_or_too_few_volumes_are_refused(tmp_path: Path) -> None:
    pods = volumes(tmp_path, 3)

    with pytest.raises(RebalanceError, match=r"partitions \[2\] are beyond the count 2"):
        recovery.plan_rebalance(pods, partitions=2, processes=2)
    with pytest.raises(RebalanceError, match="4 processes need 4 volumes, got 3"):
        recovery.plan_rebalance(pods, partitions=3, processes=4)


def test_a_pod_beyond_the_partition_count_or_on_a_moved_volume_creates_no_partition(
    tmp_path: Path,
) -> None:
    pods = volumes(tmp_path, 3)
    recovery.rebalance(pods, partitions=3, processes=2)

    assert recovery.ensure(tmp_path / "pod-3", 3, pod=3) == []
    assert recovery.ensure(pods[2], 3, pod=2) == []
    assert held(tmp_path / "pod-3") == []
    assert held(pods[2]) == []
    assert recovery.ensure(tmp_path / "fresh", 3, pod=1) == ["part-1.sqlite3"]


def test_a_directory_once_initialised_never_gets_a_partition_recreated(tmp_path: Path) -> None:
    assert recovery.ensure(tmp_path, 3) == [f"part-{i}.sqlite3" for i in range(3)]
    (tmp_path / "part-1.sqlite3").unlink()  # lost: Bytewax must say so, not resume without it

    assert recovery.ensure(tmp_path, 3) == []
    assert held(tmp_path) == ["part-0.sqlite3", "part-2.sqlite3"]
    assert (tmp_path / recovery.CREATED_MARKER).exists()


def test_the_command_line_dry_run_prints_the_moves_and_moves_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pods = volumes(tmp_path, 3)

    code = recovery_tool.main(["rebalance", "--partitions", "3", "--processes", "2", "--dry-run",
                          *map(str, pods)])  # fmt: skip

    assert code == 0
    assert capsys.readouterr().out == f"part-2: {pods[2]} -> {pods[0]}\n"
    assert held(pods[2]) == ["part-2.sqlite3"]
