"""Kubernetes probe: is this process's dataflow really running, not only its HTTP server?

Role: an operations tool, run by the kubelet (``exec`` probe) inside the pod.
Bytewax serves ``/metrics`` as soon as the process starts, also while it waits
for the other members of its cluster or when its worker is stuck, so an HTTP
probe cannot see a stuck dataflow. What can: with recovery on, every worker
records its progress in its recovery partition at the end of every epoch
(every ``BYTEWAX_SNAPSHOT_INTERVAL`` seconds, idle or not). So the process is
alive while the partition files in its recovery directory (``part-<k>.sqlite3``
and their ``-wal``) keep being written. With one volume per pod those are the
partitions this pod holds: its own at first, any number after the process count
changed (``python -m dataflow.tools.recovery rebalance``), each written by the process
that holds it.

Without a recovery directory, or on a pod that holds no partition (added beyond
the partition count), it falls back to ``GET /metrics`` on the Dataflow API port:
such a pod's stall shows in the other pods' probes, since a Bytewax cluster
advances together. Standard library only, and cheap: it runs every few seconds.

Command line: ``python -m dataflow.tools.probe [--max-age SECONDS]`` (exit 0: alive;
1: stale or unanswered, with the reason on stderr).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path

#: A live worker writes at every snapshot; allow this many intervals without a write.
MISSED_SNAPSHOTS = 3
#: ... and never less than this (seconds), so a busy epoch is not mistaken for a stall.
MIN_MAX_AGE_S = 30.0


def partition_files(directory: Path) -> list[Path]:
    """The recovery partitions this process holds: every one in its directory."""
    return sorted(directory.glob("part-*.sqlite3*"))


def default_max_age(env: Mapping[str, str]) -> float:
    """``MISSED_SNAPSHOTS`` snapshot intervals, at least ``MIN_MAX_AGE_S``."""
    interval = float(env.get("BYTEWAX_SNAPSHOT_INTERVAL", "5") or 5)
    return max(MIN_MAX_AGE_S, MISSED_SNAPSHOTS * interval)


def check(env: Mapping[str, str], max_age: float | None = None, now: float | None = None) -> str:
    """Why the dataflow looks stuck, or ``""`` when it is alive."""
    directory = env.get("BYTEWAX_RECOVERY_DIRECTORY", "")
    if not directory:
        return _check_http(env)
    files = partition_files(Path(directory))
    if not files:
        return _check_http(env)  # a pod beyond the partition count holds none
    limit = default_max_age(env) if max_age is None else max_age
    newest = max(f.stat().st_mtime for f in files)
    age = (time.time() if now is None else now) - newest
    if age > limit:
        return (
            f"no progress for {age:.0f}s (limit {limit:.0f}s): no recovery partition in "
            f"{directory} is being written; the dataflow is stuck or its cluster has not formed"
        )
    return ""


def _check_http(env: Mapping[str, str]) -> str:
    port = env.get("BYTEWAX_DATAFLOW_API_PORT", "3030") or "3030"
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=3) as page:
            return "" if page.status == 200 else f"/metrics answered {page.status}"
    except OSError as error:
        return f"/metrics on port {port} did not answer ({error})"


def main(argv: Sequence[str] | None = None) -> int:
    """Exit 0 when the dataflow is alive, 1 (saying why) when it is not."""
    parser = argparse.ArgumentParser(prog="python -m dataflow.tools.probe", description=__doc__)
    parser.add_argument(
        "--max-age", type=float, help="seconds without a recovery write that count as stuck"
    )
    args = parser.parse_args(argv)
    problem = check(os.environ, args.max_age)
    if problem:
        print(f"probe: {problem}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
