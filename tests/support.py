"""Shared test data: where ``shared/`` is, the recorded runs, and small domain builders."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec

from dataflow.domain import dialects, optimizer
from dataflow.domain import machine as m
from dataflow.domain.messages import Instruction, InstructionKind, Report

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("RTCEF_SHARED_DIR", ROOT.parent / "shared"))
RECORDINGS = SHARED / "data" / "rtcef-recordings" / "cards"
SCHEMAS = SHARED / "data" / "rtcef-schemas"


def recorded_runs() -> list[Path]:
    """Every recorded run folder (``month_N``), in a stable order."""
    runs = sorted(RECORDINGS.glob("month_*"), key=lambda p: int(p.name.split("_")[1]))
    if not runs:
        raise FileNotFoundError(f"no recordings under {RECORDINGS}: is shared/ beside the repo?")
    return runs


def jsonl(path: Path) -> Iterator[bytes]:
    """The non-empty lines of a JSON-lines file, as bytes."""
    with path.open("rb") as handle:
        for line in handle:
            if line.strip():
                yield line.rstrip(b"\n")


def loads(data: bytes | str) -> Any:
    """Parse JSON text (for comparing whole JSON objects)."""
    return json.loads(data)


SEED_PARAMS = (("pMin", 0.05), ("gamma", 0.001))


def seed_config(**changes: Any) -> m.MachineConfig:
    """The seed dialect and profile with a two-step budget: short rounds, random proposals."""
    profile = msgspec.structs.replace(dialects.PROFILES["seed"], budget=2)
    config = m.MachineConfig(dialect="seed", profile=profile, initial_params=SEED_PARAMS,
                             report_timeout_ms=1000, max_retries=1)  # fmt: skip
    return msgspec.structs.replace(config, **changes)


def instruction(
    kind: InstructionKind, timestamp: int = 1000, at_ms: int = 0
) -> m.InstructionArrived:
    """An instruction event."""
    return m.InstructionArrived(Instruction(kind, timestamp), at_ms)


def report(reply_id: int | str, at_ms: int = 0, **fields: Any) -> m.ReportArrived:
    """A successful report event (``ok=True`` unless given)."""
    fields.setdefault("ok", True)
    return m.ReportArrived(Report(reply_id, **fields), at_ms)


CHECKED_FIELDS = ("id", "train_id", "optimisation_id", "type", "timestamp", "best_i")


class Card(msgspec.Struct, frozen=True):
    """One recorded run: its configuration, its two input sequences, what it sent."""

    name: str
    config: m.MachineConfig
    #: The Observer's instructions and the factory's reports, each in topic order.
    instructions: tuple[bytes, ...]
    reports: tuple[bytes, ...]
    #: The original controller's commands (JSON objects) and the finalise/train reports'
    #: model ids in order: the plays a replay must send.
    commands: tuple[dict[str, Any], ...]
    plays: tuple[int | str, ...]


def load_card(run: Path) -> Card:
    """A recorded run, configured as its original controller was (first ``train``, warm start)."""
    commands = tuple(loads(line) for line in jsonl(run / "factory_commands.jsonl"))
    first_train = next(c for c in commands if c["type"] == "train")
    initial = tuple(json.loads(first_train["params"])["params"].items())
    document = json.loads((run / "offline_optimisation.json").read_text())
    profile = dialects.PROFILES["rtcef"]
    warm = optimizer.observations_from_warm_start(profile, document)
    config = m.MachineConfig("rtcef", profile, initial, warm_start=warm)
    reports = tuple(jsonl(run / "factory_reports.jsonl"))
    by_id = {loads(r)["reply_id"]: loads(r) for r in reports}
    plays = tuple(by_id[c["id"]]["model_id"] for c in commands
                  if c["type"] in ("train", "opt_finalise") and c["id"] in by_id)  # fmt: skip
    instructions = tuple(jsonl(run / "optimiser_instructions.jsonl"))
    return Card(run.name, config, instructions, reports, commands, plays)


def command_fields(command: Any) -> dict[str, Any]:
    """What a replay must reproduce of a command: the checked fields, and ``train`` params."""
    get = command.get if isinstance(command, dict) else lambda f: getattr(command, f)
    fields = {f: get(f) for f in CHECKED_FIELDS}
    if fields["type"] == "train":
        fields["params"] = get("params")
    return fields


def wait_for_snapshots(
    directories: Path | list[Path], holds: Any, timeout: float = 60.0
) -> list[Any]:
    """The sessions' newest snapshots, once they satisfy ``holds``; read as the inspector does.

    ``holds`` takes the ``SessionView``s of every session in ``directories``; a
    partition not written yet (or locked by the writer for a moment) reads as none.
    Raises ``AssertionError`` with the last views if the condition never holds.
    """
    import sqlite3
    import time

    from dataflow.tools import inspection

    paths = [directories] if isinstance(directories, Path) else directories
    deadline, views = time.monotonic() + timeout, []
    while True:
        views = []
        for path in paths:
            try:
                views += inspection.sessions(path)
            except (FileNotFoundError, sqlite3.Error):
                continue  # no partition here (yet), or the writer holds it a moment
        if holds(views):
            return views
        if time.monotonic() > deadline:
            raise AssertionError(f"no snapshot in {timeout} s satisfied the condition: {views}")
        time.sleep(0.1)
