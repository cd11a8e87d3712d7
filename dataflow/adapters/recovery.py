"""Bytewax recovery directories: idempotent initialisation, and moving partitions.

Role: start-up and operations plumbing. ``python -m bytewax.recovery DIR N``
panics when run twice on the same directory, so every entry point (``just run``,
the container's ``entrypoint-recovery.sh``) calls ``ensure`` instead: it creates
partitions only in a directory never initialised and leaves any other (and its
state) alone. The partition count is fixed forever once a directory is in use.

Changing the process count. Bytewax resumes when every partition ``0..N-1`` is
in the recovery directory of some process (a process may hold several, or
none). With one volume per pod, pod *k* starts with partition *k*; a new pod
(ordinal at or beyond the partition count) holds none and resumes as it is, but
the partitions on the volumes of pods that go away must be moved first.
``rebalance`` does that, with every process stopped: given the volumes of the
old and new pods (as directories), it folds each partition's write-ahead log
into it and puts partition *p* on volume ``p % processes``, refusing when a
partition is missing, still open, or held twice with different contents. It
marks every volume it was given, and ``ensure`` never creates a partition in a
marked directory, so a moved partition is never re-created empty where it was.

The command line is ``dataflow.tools.recovery``.
"""

from __future__ import annotations

import filecmp
import logging
import os
import re
import shutil
import sqlite3
import sys
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final, NoReturn

#: Persisted names: Bytewax's recovery store keys state and input offsets by
#: ``<flow id>.<step id>``. Renaming the session step drops every session;
#: renaming an input re-reads its topic from the start; renaming the output step
#: drops the outbox's offsets (it then reads back from the directory's origin). Frozen
#: by a test.
FLOW_ID: Final = "rtcef_controller"
INSTRUCTIONS_STEP: Final = "instructions"
REPORTS_STEP: Final = "reports"
TICKS_STEP: Final = "ticks"
SESSION_STEP: Final = "session"
OUTPUTS_STEP: Final = "outputs"

#: Left in a directory whose partitions were created: none is ever created there again.
CREATED_MARKER = ".partitions-created"
#: Left in every volume ``rebalance`` was given: partitions are never created there.
MOVED_MARKER = ".partitions-moved"
_PART = re.compile(r"part-(0|[1-9][0-9]*)\.sqlite3")


class RebalanceError(ValueError):
    """The partitions cannot be moved as asked; nothing was moved."""


class StaleProcessError(RuntimeError):
    """Another controller process has taken over this recovery directory: this one must stop."""


#: The exit status of a controller that found another one had taken over (``stop_stale``).
EXIT_STALE: Final = 4


def stop_stale(error: BaseException) -> NoReturn:
    """Log why, then end the process at once, with ``EXIT_STALE``.

    At once: no flush, no snapshot, no close, nothing a stale process could still write
    (Bytewax's own unwinding may panic and abort before printing the cause).
    """
    log = logging.getLogger("dataflow.controller")
    log.error(f"controller stops: {error}")
    for handler in logging.getLogger("dataflow").handlers:
        handler.flush()
    sys.stderr.flush()
    os._exit(EXIT_STALE)


class Claim:
    """This process's claim on its recovery directory, checked at every epoch's end.

    A process thought dead (stopped, partitioned) may wake after its replacement
    started on the same directory. The outbox fences it out of the topics; this
    keeps it out of the recovery store: each start writes a new token to
    ``controller-owner-<process>``, and the inputs check, at every epoch's end
    (before Bytewax writes the epoch), that the token is still theirs. The process
    that finds another one's raises ``StaleProcessError`` and writes nothing more.
    """

    def __init__(self, directory: Path, process: int) -> None:
        self.path = directory / f"controller-owner-{process}"
        self.token = f"{os.getpid()}-{os.urandom(8).hex()}"
        partial = directory / f".{self.path.name}.partial"
        partial.write_text(self.token)
        os.replace(partial, self.path)

    def stop_if_stale(self) -> None:
        """``check``, and stop the process (``stop_stale``) if it is stale."""
        try:
            self.check()
        except StaleProcessError as error:
            stop_stale(error)

    def check(self) -> None:
        """Raise ``StaleProcessError`` unless the directory is still this process's."""
        try:
            current = self.path.read_text()
        except OSError:
            current = ""
        if current != self.token:
            raise StaleProcessError(
                f"another controller process took over {self.path.parent} (owner {current!r},"
                f" this one {self.token!r}): this process is stale and stops without writing"
            )


def partition_files(directory: Path) -> list[Path]:
    """The recovery partitions present in ``directory``."""
    return sorted(path for path in directory.glob("part-*.sqlite3") if _PART.fullmatch(path.name))


def session_snapshots(directory: Path) -> Iterator[tuple[str, int, bytes]]:
    """``(key, epoch, pickled state)`` of every live session, newest snapshot, read-only.

    The session step's state lives under a step id that Bytewax derives from
    ``<FLOW_ID>.<SESSION_STEP>`` (its operators nest inner steps below it), so it is
    found by that prefix rather than by Bytewax's internal suffix.
    """
    parts = partition_files(directory)
    if not parts:
        raise FileNotFoundError(f"no recovery partitions (part-*.sqlite3) in {directory}")
    prefix = f"{FLOW_ID}.{SESSION_STEP}."
    for part in parts:
        connection = sqlite3.connect(f"file:{part}?mode=ro", uri=True)
        try:
            steps = [step for (step,) in connection.execute("SELECT DISTINCT step_id FROM snaps")
                     if step.startswith(prefix)]  # fmt: skip
            rows = [row for step in steps for row in connection.execute(
                "SELECT state_key, snap_epoch, ser_change FROM snaps AS s WHERE step_id = ?"
                " AND snap_epoch = (SELECT MAX(snap_epoch) FROM snaps"
                " WHERE step_id = s.step_id AND state_key = s.state_key) ORDER BY state_key",
                (step,),
            )]  # fmt: skip
        finally:
            connection.close()
        for key, epoch, blob in rows:
            if blob is not None:  # None: a discarded state
                yield key, epoch, blob


def ensure(
    directory: Path, partitions: int, only: list[int] | None = None, *, pod: int | None = None
) -> list[str]:
    """Create the partitions of a new recovery directory: ``0..partitions-1``, or ``only``.

    Only a directory never initialised gets any: one that holds a partition or a
    marker (``CREATED_MARKER``, written here; ``MOVED_MARKER``, by ``rebalance``) is
    left as it is, so a partition that is missing or was moved away is never
    re-created empty (Bytewax would resume without that state, silently, or hold
    two diverging copies); Bytewax then refuses to resume, naming it. ``pod``
    serves per-pod volumes: pod *k* of a StatefulSet gets partition *k*, none if
    *k* is at or beyond the partition count (a pod added later). Returns the names
    it created.
    """
    if partitions < 1:
        raise ValueError("a recovery directory needs at least one partition")
    if pod is not None:
        only = [pod] if pod < partitions else []
    indices = list(range(partitions) if only is None else only)
    if any(not 0 <= i < partitions for i in indices):
        raise ValueError(f"partition indices {indices} must be below {partitions}")
    directory.mkdir(parents=True, exist_ok=True)
    marked = any((directory / m).exists() for m in (CREATED_MARKER, MOVED_MARKER))
    if marked or partition_files(directory):
        return []
    created = [f"part-{i}.sqlite3" for i in indices]
    with tempfile.TemporaryDirectory(dir=directory, prefix=".init-") as scratch:
        from bytewax.recovery import init_db_dir  # only here: readers need no Bytewax

        init_db_dir(Path(scratch), partitions)  # type: ignore[no-untyped-call]
        for name in created:
            shutil.move(str(Path(scratch) / name), str(directory / name))
    _write_marker(directory, CREATED_MARKER, f"created {created or 'no partition'}")
    return created


@dataclass(frozen=True)
class Move:
    """One partition's file going from one volume to another."""

    partition: int
    source: Path
    target: Path


def plan_rebalance(volumes: Sequence[Path], partitions: int, processes: int) -> list[Move]:
    """Where each partition goes: ``volumes[p % processes]``. Raises ``RebalanceError``.

    ``volumes`` are the directories of every pod, old and new (at least
    ``processes`` of them, in pod order). A partition found on two volumes is
    refused unless the copies are identical (a move interrupted after its copy);
    so is a ``-wal``/``-shm`` file without its database.
    """
    if partitions < 1 or processes < 1:
        raise RebalanceError("partitions and processes must be at least 1")
    if len(volumes) < processes:
        raise RebalanceError(f"{processes} processes need {processes} volumes, got {len(volumes)}")
    found: dict[int, list[Path]] = {}
    problems = []
    for volume in volumes:
        for path in partition_files(volume) if volume.is_dir() else []:
            index = int(path.name[len("part-") : -len(".sqlite3")])
            found.setdefault(index, []).append(volume)
        for companion in sorted(volume.glob("part-*.sqlite3-*")) if volume.is_dir() else []:
            if not (volume / companion.name.rsplit("-", 1)[0]).exists():
                problems.append(f"{companion} has no database beside it: remove it")
    beyond = sorted(i for i in found if i >= partitions)
    if beyond:
        problems.append(f"partitions {beyond} are beyond the count {partitions}")
    missing = [i for i in range(partitions) if i not in found]
    if missing:
        problems.append(f"partitions {missing} are on none of the volumes")
    for index, holders in sorted(found.items()):
        name = f"part-{index}.sqlite3"
        if len(holders) > 1 and not _identical([holder / name for holder in holders]):
            problems.append(f"{name} differs between {[str(h) for h in holders]}")
    if problems:
        raise RebalanceError("; ".join(problems))
    moves = []
    for index, holders in sorted(found.items()):
        target = volumes[index % processes]
        for holder in holders:
            if holder != target:
                moves.append(Move(index, holder, target))
    return moves


def rebalance(volumes: Sequence[Path], partitions: int, processes: int) -> list[Move]:
    """Move every partition to ``volumes[p % processes]`` (every process stopped).

    First each partition's write-ahead log is checkpointed into its database
    (refused while a process still has it open), so a partition is one file.
    Then every volume given is marked (``MOVED_MARKER``: no partition is ever
    created on it), and each move copies the file under a temporary name, syncs
    it, renames it into place and only then deletes the source: an interrupted
    rebalance leaves at worst identical copies, which running it again resolves.
    Returns the moves made.
    """
    for volume in volumes:
        for path in partition_files(volume) if volume.is_dir() else []:
            _checkpoint(path)
    moves = plan_rebalance(volumes, partitions, processes)
    for volume in volumes:
        if volume.is_dir() or volume in volumes[:processes]:
            volume.mkdir(parents=True, exist_ok=True)
            _write_marker(
                volume, MOVED_MARKER, "partitions were moved by dataflow.tools.recovery rebalance"
            )
    for move in moves:
        name = f"part-{move.partition}.sqlite3"
        source, target = move.source / name, move.target / name
        if not target.exists():
            partial = move.target / f".{name}.moving"
            shutil.copyfile(source, partial)
            sync(partial)
            os.replace(partial, target)
            sync(move.target)
        source.unlink()
        sync(move.source)
    return moves


def _checkpoint(path: Path) -> None:
    """Fold ``path``'s write-ahead log into it; refuse if a process has it open."""
    try:
        connection = sqlite3.connect(path, timeout=1.0)
        try:
            busy, _, _ = connection.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
        finally:
            connection.close()
    except sqlite3.Error as error:
        raise RebalanceError(f"{path}: {error} (is a controller still running on it?)") from error
    leftovers = [c for c in (Path(f"{path}-wal"), Path(f"{path}-shm")) if c.exists()]
    if busy or leftovers:
        raise RebalanceError(f"{path} is in use: stop every pod of the dataflow first")


def sync(path: Path) -> None:
    """Flush a file or a directory to disk, so a move survives a crash of the node."""
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def _write_marker(directory: Path, name: str, text: str) -> None:
    marker = directory / name
    if not marker.exists():
        marker.write_text(text + "\n")
        sync(marker)
        sync(directory)


def _identical(paths: Sequence[Path]) -> bool:
    return all(filecmp.cmp(paths[0], path, shallow=False) for path in paths[1:])
