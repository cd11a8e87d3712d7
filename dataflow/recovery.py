"""Bytewax recovery directories: idempotent initialisation.

Role: start-up plumbing. ``python -m bytewax.recovery DIR N`` panics when run
twice on the same directory, so every entry point (``just run``, the container's
``entrypoint-recovery.sh``) calls ``ensure`` instead: it creates only the
partitions that are missing and leaves existing ones (and their state) alone.
The partition count is fixed forever once a directory is in use.

Command line: ``python -m dataflow.recovery DIR N [--only K]``.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

from bytewax.recovery import init_db_dir


def partition_files(directory: Path) -> list[Path]:
    """The recovery partitions present in ``directory``."""
    return sorted(directory.glob("part-*.sqlite3"))


def ensure(directory: Path, partitions: int, only: list[int] | None = None) -> list[str]:
    """Make sure partitions ``0..partitions-1`` (or just ``only`` of them) exist.

    ``only`` serves per-pod volumes: pod *k* of a StatefulSet keeps partition *k*
    of ``partitions`` on its own volume. Returns the names it created.
    """
    if partitions < 1:
        raise ValueError("a recovery directory needs at least one partition")
    indices = range(partitions) if only is None else only
    if any(not 0 <= i < partitions for i in indices):
        raise ValueError(f"partition indices {list(indices)} must be below {partitions}")
    directory.mkdir(parents=True, exist_ok=True)
    wanted = [f"part-{i}.sqlite3" for i in indices]
    missing = [name for name in wanted if not (directory / name).exists()]
    if not missing:
        return []
    with tempfile.TemporaryDirectory(dir=directory, prefix=".init-") as scratch:
        init_db_dir(Path(scratch), partitions)  # type: ignore[no-untyped-call]
        for name in missing:
            shutil.move(str(Path(scratch) / name), str(directory / name))
    return missing


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(prog="python -m dataflow.recovery", description=__doc__)
    parser.add_argument("directory", type=Path)
    parser.add_argument("partitions", type=int, help="total partition count (fixed forever)")
    parser.add_argument(
        "--only",
        type=int,
        action="append",
        default=None,
        help="create only this partition index (repeatable): per-pod volumes",
    )
    args = parser.parse_args(argv)
    created = ensure(args.directory, args.partitions, args.only)
    state = f"created {', '.join(created)}" if created else "all partitions present"
    print(f"recovery: {args.directory}: {state}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
