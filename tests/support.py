"""Shared test data: where ``shared/`` is, the recorded runs, and small domain builders."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec

from dataflow.domain import machine as m
from dataflow.domain import optimizer
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
    profile = msgspec.structs.replace(optimizer.PROFILES["seed"], budget=2)
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
