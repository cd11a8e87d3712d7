"""Structured log lines and Prometheus metrics for what the controller decides.

Role: turns the domain's ``Note`` and ``Reject`` effects into one log line each
(key, round, step, what happened) and into counters served on Bytewax's
``/metrics`` endpoint (``BYTEWAX_DATAFLOW_API_ENABLED=1``, port 3030), which
exposes prometheus_client's default registry.
"""

from __future__ import annotations

import json
import logging
import math
import sys
from typing import Any, Final

from prometheus_client import Counter, Gauge

from dataflow.domain.machine import Note

ROUNDS_STARTED: Final = Counter(
    "controller_rounds_started", "Rounds started (pause sent).", ["key", "kind"]
)
ROUNDS_COMPLETED: Final = Counter(
    "controller_rounds_completed", "Rounds that ended with the factory's model played.", ["key"]
)
ROUNDS_ABORTED: Final = Counter(
    "controller_rounds_aborted", "Rounds given up after retries (old model played).", ["key"]
)
STEPS: Final = Counter("controller_steps", "opt_step commands sent (first attempts).", ["key"])
RETRIES: Final = Counter(
    "controller_retries", "Commands resent after an error or timeout.", ["key"]
)
TIMEOUTS: Final = Counter("controller_timeouts", "Deadlines passed without a report.", ["key"])
DEAD_LETTERS: Final = Counter(
    "controller_dead_letters", "Input messages sent to the dead-letter topic.", ["stage"]
)
BEST_SCORE: Final = Gauge(
    "controller_round_best_score", "Lowest f_val seen in the current round.", ["key"]
)
INPUT_EPOCH_LAG: Final = Gauge(
    "controller_input_epoch_lag_seconds",
    "How far apart this process's input partitions began the last epoch they all began: "
    "Bytewax reads nothing from one that has until all have.",
)

_COUNTERS: Final = {
    "round_completed": ROUNDS_COMPLETED,
    "round_aborted": ROUNDS_ABORTED,
    "step": STEPS,
    "retry": RETRIES,
    "timeout": TIMEOUTS,
}

log = logging.getLogger("dataflow.controller")


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, message and the record's ``fields``."""

    def format(self, record: logging.LogRecord) -> str:
        """Render the record as JSON."""
        line: dict[str, Any] = {
            "ts": f"{self.formatTime(record, '%Y-%m-%dT%H:%M:%S')}.{int(record.msecs):03d}",
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        line.update(getattr(record, "fields", {}))
        if record.exc_info:
            line["exc"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str)


class TextFormatter(logging.Formatter):
    """Human-readable: message then ``key=value`` fields."""

    def format(self, record: logging.LogRecord) -> str:
        """Render the record as text."""
        fields = " ".join(f"{k}={v}" for k, v in getattr(record, "fields", {}).items())
        when = self.formatTime(record, "%H:%M:%S")
        return f"{when} {record.levelname:<7} {record.getMessage()} {fields}"


def configure_logging(level: str, fmt: str) -> None:
    """Send the project's logs to stderr in the chosen format (idempotent)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger("dataflow")
    root.handlers[:] = [handler]
    root.setLevel(level)
    root.propagate = False


def record_note(note: Note) -> None:
    """Log a ``Note`` and count it."""
    fields: dict[str, Any] = {"key": note.key, "round": note.round, "event": note.kind}
    if note.step is not None:
        fields["step"] = note.step
    if note.detail:
        fields["detail"] = note.detail
    if note.value is not None:
        fields["value"] = note.value
    warned = ("overdue", "retry", "timeout", "round_aborted", "over_budget")
    level = logging.WARNING if note.kind in warned else logging.INFO
    log.log(level, note.kind.replace("_", " "), extra={"fields": fields})
    if note.kind == "round_started":
        ROUNDS_STARTED.labels(note.key, note.detail).inc()
        _BEST[note.key] = math.nan
        BEST_SCORE.labels(note.key).set(math.nan)
    elif note.kind == "score" and note.value is not None:
        if not _BEST.get(note.key, math.nan) <= note.value:  # NaN-safe: a round starts at NaN
            _BEST[note.key] = note.value
            BEST_SCORE.labels(note.key).set(note.value)
    elif note.kind in _COUNTERS:
        _COUNTERS[note.kind].labels(note.key).inc()


#: The best score of each session's round so far, as ``BEST_SCORE`` shows it (the client
#: library offers no public read of a gauge's value).
_BEST: dict[str, float] = {}


def record_dead_letter(stage: str, reason: str, fields: dict[str, Any]) -> None:
    """Log a dead letter and count it."""
    DEAD_LETTERS.labels(stage).inc()
    log.warning("dead letter", extra={"fields": {"stage": stage, "reason": reason, **fields}})
