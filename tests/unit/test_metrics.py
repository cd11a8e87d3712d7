"""What the metrics record: rounds by kind, the engine's pause, bounded dead-letter reasons."""

from __future__ import annotations

from prometheus_client import REGISTRY

from dataflow.adapters import observability
from dataflow.domain.effects import Note


def sample(name: str, **labels: str) -> float | None:
    return REGISTRY.get_sample_value(name, labels)


def test_rounds_are_counted_by_outcome_and_by_the_kind_they_started_as() -> None:
    key = "metrics-rounds"
    observability.record_note(Note(key, "round_started", 1, detail="OPTIMIZE"))
    observability.record_note(Note(key, "round_aborted", 1, detail="opt_step failed 3 times"))
    observability.record_note(Note(key, "round_started", 2, detail="RETRAIN"))
    observability.record_note(Note(key, "round_completed", 2, detail="7"))

    assert sample("controller_rounds_aborted_total", key=key, kind="OPTIMIZE") == 1
    assert sample("controller_rounds_completed_total", key=key, kind="RETRAIN") == 1
    assert sample("controller_rounds_completed_total", key=key, kind="OPTIMIZE") is None


def test_a_scored_step_records_its_factory_seconds() -> None:
    key = "metrics-evaluation"
    observability.record_note(Note(key, "score", 1, step=0, value=-0.5, seconds=12.5))
    observability.record_note(Note(key, "score", 1, step=1, value=-0.6))  # not measured

    assert sample("controller_factory_evaluation_seconds_count", key=key) == 1
    assert sample("controller_factory_evaluation_seconds_sum", key=key) == 12.5


def test_the_engine_is_paused_since_the_pause_and_not_after_the_play() -> None:
    observability.record_sync("metrics-sync", "pause", 1_700_000_000.0)
    assert sample("controller_engine_paused_since_timestamp_seconds", key="metrics-sync") == (
        1_700_000_000.0
    )
    observability.record_sync("metrics-sync", "play", 1_700_000_100.0)
    assert sample("controller_engine_paused_since_timestamp_seconds", key="metrics-sync") == 0


def test_dead_letter_reasons_fall_into_a_few_classes() -> None:
    reasons = {
        "instruction: message of 9000 bytes exceeds the 8192 limit": "too_large",
        "report 'cmd-3': duplicate (already answered; awaiting 'cmd-4')": "duplicate",
        "report 'cmd-1': stale (its round is over)": "stale",
        "report 'x': foreign reply_id (not a command of session 'controller')": "foreign",
        "instruction: OPTIMIZE at 5 coalesced: an OPTIMIZE was admitted at 5": "coalesced",
        "report: Expected `int`, got `str` - at `$.reply_id`": "malformed",
        "kafka: Broker: Unknown topic or partition": "kafka",
        "instruction: `$.model_id` 'm9' is not one of the configured models ['m1']": "unroutable",
        "instruction: OPTIMIZE at 1180591620717411303424 implausible: later than "
        "INSTRUCTION_MAX_TIMESTAMP 4102444800000": "implausible",
        "report 'cmd-4': forged (appended at 10 ms, before its command was sent: it followed a "
        "record appended at 20 ms; REPORT_CLOCK_SKEW_MS 1000)": "forged",
        "something nobody wrote yet": "other",
    }
    assert {reason: observability.reason_class(reason) for reason in reasons} == reasons
