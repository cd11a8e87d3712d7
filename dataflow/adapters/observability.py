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
from collections.abc import Iterable
from typing import Any, Final

from prometheus_client import Counter, Gauge, Histogram

from dataflow.domain.machine import Note, Phase

# Names follow Prometheus's conventions: base units in the name (``_seconds``), counters
# exposed with ``_total``, Unix times as ``_timestamp_seconds``. Labels are bounded: the
# configured session keys, the instruction kinds, the dead-letter stages and reasons below.
ROUNDS_STARTED: Final = Counter(
    "controller_rounds_started", "Rounds started, by instruction kind.", ["key", "kind"]
)
ROUNDS_COMPLETED: Final = Counter(
    "controller_rounds_completed", "Rounds that ended with the factory's new model played.",
    ["key", "kind"],
)  # fmt: skip
ROUNDS_ABORTED: Final = Counter(
    "controller_rounds_aborted", "Rounds given up (retries spent, or opt_initialise refused); "
    "the old model played.", ["key", "kind"],
)  # fmt: skip
STEPS: Final = Counter("controller_steps", "opt_step commands sent (first attempts).", ["key"])
RETRIES: Final = Counter(
    "controller_retries", "Commands resent after an error or timeout.", ["key"]
)
TIMEOUTS: Final = Counter("controller_timeouts", "Deadlines passed without a report.", ["key"])
DEAD_LETTERS: Final = Counter(
    "controller_dead_letters", "Input messages sent to the dead-letter topic, by where they were "
    "refused and why (a bounded class of the reason; the log line has the whole text).",
    ["stage", "reason"],
)  # fmt: skip
BEST_SCORE: Final = Gauge(
    "controller_round_best_score", "Lowest f_val seen in the current round.", ["key"]
)
ENGINE_PAUSED_SINCE: Final = Gauge(
    "controller_engine_paused_since_timestamp_seconds",
    "When this controller paused the engine (Unix time); 0 while it plays.", ["key"],
)  # fmt: skip
ROUND_LIMIT: Final = Gauge(
    "controller_round_limit_seconds",
    "The longest a round can keep the engine paused under this process's settings: every "
    "awaited command of the longest round (OPTIMISER_BUDGET steps and the finalise) waiting "
    "out REPORT_TIMEOUT_S on each of its MAX_RETRIES + 1 attempts.",
)
PHASE: Final = Gauge(
    "controller_session_phase", "1 for the phase the session rests in, 0 for the others.",
    ["key", "phase"],
)  # fmt: skip
INSTRUCTIONS_QUEUED: Final = Gauge(
    "controller_instructions_queued", "Admitted instructions waiting for their round.", ["key"]
)
REPORTS_HELD: Final = Gauge(
    "controller_reports_held", "Reports and deadline markers read before their command was "
    "sent (a replay), held until it is.", ["key"],
)  # fmt: skip
LAST_SNAPSHOT: Final = Gauge(
    "controller_last_snapshot_timestamp_seconds",
    "When this process last snapshotted its outputs' progress (the outbox, at the end of "
    "every epoch Bytewax snapshots; before the first, when it started; Unix time). Only "
    "the process holding the outbox's partition stamps it: the cluster's is the max.",
)
SNAPSHOT_INTERVAL: Final = Gauge(
    "controller_snapshot_interval_seconds", "Bytewax's snapshot interval (-s); 0: unknown."
)
EVALUATION: Final = Histogram(
    "controller_factory_evaluation_seconds",
    "Factory seconds per opt_step: from what made the controller send it to its report, "
    "both from the records' own timestamps.", ["key"],
    buckets=(1, 2, 5, 10, 20, 30, 60, 120, 300, 600, 1800),
)  # fmt: skip
HOP: Final = Histogram(
    "controller_hop_seconds",
    "From an input's arrival in the flow to the commands and syncs it caused leaving the "
    "session step (the controller's own share of a step).",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
)
INPUT_EPOCH_LAG: Final = Gauge(
    "controller_input_epoch_lag_seconds",
    "How far apart this process's input partitions began the last epoch they all began: "
    "Bytewax reads nothing from one that has until all have.",
)

_COUNTERS: Final = {
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
        _KIND[note.key] = note.detail
        ROUNDS_STARTED.labels(note.key, note.detail).inc()
        _BEST[note.key] = math.nan
        BEST_SCORE.labels(note.key).set(math.nan)
    elif note.kind in ("round_completed", "round_aborted"):
        ended = ROUNDS_COMPLETED if note.kind == "round_completed" else ROUNDS_ABORTED
        ended.labels(note.key, _KIND.get(note.key, "unknown")).inc()
    elif note.kind == "score" and note.value is not None:
        if note.seconds is not None:
            EVALUATION.labels(note.key).observe(note.seconds)
        if not _BEST.get(note.key, math.nan) <= note.value:  # NaN-safe: a round starts at NaN
            _BEST[note.key] = note.value
            BEST_SCORE.labels(note.key).set(note.value)
    elif note.kind in _COUNTERS:
        _COUNTERS[note.kind].labels(note.key).inc()


#: The best score of each session's round so far, as ``BEST_SCORE`` shows it (the client
#: library offers no public read of a gauge's value).
_BEST: dict[str, float] = {}
#: The kind of each session's round in progress ("unknown": started before this process).
_KIND: dict[str, str] = {}
#: A dead letter's reason, as a bounded class: the first phrase of this table found in it.
_REASONS: Final = (
    ("kafka:", "kafka"), ("implausible", "implausible"), ("forged", "forged"),
    ("exceeds the", "too_large"), ("duplicate", "duplicate"),
    ("stale", "stale"), ("foreign", "foreign"), ("coalesced", "coalesced"),
    ("already queued", "queue_full"), ("acknowledges", "acknowledgement"),
    ("not one of the configured", "unroutable"), ("is not a command id", "unroutable"),
    ("not valid JSON", "malformed"), ("JSON is malformed", "malformed"),
    ("not an Avro", "malformed"), ("Expected", "malformed"), ("must", "invalid"),
    ("unknown", "invalid"),
)  # fmt: skip


def reason_class(reason: str) -> str:
    """The dead letter's reason as one of a few classes (a label must stay bounded)."""
    return next((label for phrase, label in _REASONS if phrase in reason), "other")


#: Where an input can be dead-lettered (``flow._dead``'s stages).
STAGES: Final = ("consume", "decode", "route", "session")
#: What a round's ``kind`` label can be.
KINDS: Final = ("OPTIMIZE", "RETRAIN", "unknown")


def declare(keys: Iterable[str]) -> None:
    """Create every counter's bounded label sets at zero, before anything happens.

    A counter series that first appears at 1 hides its first increase from
    Prometheus's ``increase()`` (it has no earlier sample): the first aborted round
    or dead letter would not alert. So each session's and each stage's series exist
    from the start, as Prometheus's guidance on labelled counters asks.
    """
    for key in keys:
        for kind in KINDS:
            for counter in (ROUNDS_STARTED, ROUNDS_COMPLETED, ROUNDS_ABORTED):
                counter.labels(key, kind)
        for counter in _COUNTERS.values():
            counter.labels(key)
    for stage in STAGES:
        for reason in dict.fromkeys(label for _, label in _REASONS):
            DEAD_LETTERS.labels(stage, reason)
        DEAD_LETTERS.labels(stage, "other")


def record_sync(key: str, sync_type: str, now_s: float) -> None:
    """The engine's state as this controller last set it (pause: since ``now_s``)."""
    ENGINE_PAUSED_SINCE.labels(key).set(now_s if sync_type == "pause" else 0)


def record_session(key: str, phase: str, queued: int, held: int) -> None:
    """The session's phase, waiting instructions and held reports after a step."""
    for each in Phase:
        PHASE.labels(key, each.value).set(1 if each.value == phase else 0)
    INSTRUCTIONS_QUEUED.labels(key).set(queued)
    REPORTS_HELD.labels(key).set(held)


def record_dead_letter(stage: str, reason: str, fields: dict[str, Any]) -> None:
    """Log a dead letter and count it."""
    DEAD_LETTERS.labels(stage, reason_class(reason)).inc()
    log.warning("dead letter", extra={"fields": {"stage": stage, "reason": reason, **fields}})
