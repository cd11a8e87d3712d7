"""Read a Bytewax recovery directory and show each session: what an operator needs after a crash.

Role: an offline tool. It opens the recovery partitions (SQLite) read-only,
takes each session's newest snapshot of the ``session`` step and prints its key,
phase, round, step, best score, queued instructions, held reports and the command
it awaits.

The snapshots are pickles written by Bytewax: load only a recovery directory
your own controller wrote.

Command line: ``python -m dataflow.tools.inspection RECOVERY_DIR [--json]``.
"""

from __future__ import annotations

import argparse
import json
import pickle
import sqlite3
import sys
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

from dataflow.adapters.recovery import session_snapshots
from dataflow.domain.machine import Session, upgrade


@dataclass(frozen=True)
class SessionView:
    """One session as an operator reads it."""

    key: str
    epoch: int
    phase: str
    round: int
    round_kind: str | None
    step: str | None
    best_score: float | None
    pending: str | None
    outstanding: str | None
    next_command: int
    held_reports: int
    model_id: int | str
    best_params: dict[str, float | int]


def sessions(directory: Path) -> Iterator[SessionView]:
    """The newest snapshot of every live session in ``directory``'s partitions."""
    for key, epoch, blob in session_snapshots(directory):
        state = pickle.loads(blob)  # noqa: S301 - our own recovery store, see the docstring
        if isinstance(state, Session):
            yield view(key, epoch, state)


def view(key: str, epoch: int, state: Session) -> SessionView:
    """Summarise a session (a version-1 one as this controller will read it)."""
    state = upgrade(state)
    round_ = state.round
    step = best = None
    if round_ is not None and round_.optimiser is not None:
        snapshot = round_.optimiser
        step = f"{len(snapshot.observations)}/{snapshot.profile.budget}"
        best = min((o.y for o in snapshot.observations), default=None)
    pending = ", ".join(f"{i.kind.value} (timestamp {i.timestamp})" for i in state.queue) or None
    outstanding = None
    if state.outstanding is not None:
        command = state.outstanding.command
        outstanding = f"{command.type} {command.id!r} attempt {state.outstanding.attempt + 1}"
    return SessionView(
        key=key,
        epoch=epoch,
        phase=state.phase.value,
        round=state.rounds,
        round_kind=round_.kind if round_ else None,
        step=step,
        best_score=best,
        pending=pending,
        outstanding=outstanding,
        next_command=state.next_command,
        held_reports=len(state.held),
        model_id=state.model_id,
        best_params=dict(state.best_params),
    )


def main(argv: list[str] | None = None) -> int:
    """Print every session of a recovery directory."""
    parser = argparse.ArgumentParser(
        prog="python -m dataflow.tools.inspection",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("directory", type=Path, help="the controller's recovery directory")
    parser.add_argument("--json", action="store_true", help="one JSON object per session")
    args = parser.parse_args(argv)
    try:
        found = list(sessions(args.directory))
    except (FileNotFoundError, sqlite3.Error) as error:
        print(f"inspection: {error}", file=sys.stderr)
        return 1
    if args.json:
        for item in found:
            print(json.dumps(asdict(item)))
        return 0
    if not found:
        print("no sessions yet")
        return 0
    for item in found:
        print(f"session {item.key!r} (snapshot epoch {item.epoch})")
        print(f"  phase        {item.phase}")
        kind = f" ({item.round_kind})" if item.round_kind else " (ended)"
        print(f"  round        {item.round}{kind}")
        print(f"  step         {item.step or '-'}")
        best = f"{item.best_score:.6g}" if item.best_score is not None else "-"
        print(f"  best score   {best}")
        print(f"  queued       {item.pending or '-'}")
        print(f"  awaiting     {item.outstanding or '-'}")
        print(f"  engine model {item.model_id}")
        print(f"  next command {item.next_command}")
        print(f"  held reports {item.held_reports}")
        print(f"  best params  {json.dumps(item.best_params)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
