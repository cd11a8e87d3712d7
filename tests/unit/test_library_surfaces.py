"""What the controller relies on in its libraries that they do not promise: pinned here.

Each test fails loudly when a library changes under it (``bytewax.run``'s options
are pinned by ``tests/flow/test_flow.py``, which runs it for real).
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from bytewax.connectors.kafka import KafkaSource

from dataflow.adapters.sources import partition_names


class _Admin:
    """An admin client that knows two partitions of one topic."""

    def list_topics(self, topic: str) -> Any:
        partitions = {0: None, 1: None} if topic == "reports" else {}
        return SimpleNamespace(topics={topic: SimpleNamespace(error=None, partitions=partitions)})


def test_the_partition_names_are_the_ones_bytewaxs_kafka_source_builds_from() -> None:
    names = partition_names(_Admin(), ["reports"])  # type: ignore[arg-type]
    assert names == ["0-reports", "1-reports"]

    # The names are the input's recovery keys: KafkaSource must read each back as its
    # partition of its topic. (Its consumer is private; nothing connects here.)
    part = KafkaSource(["127.0.0.1:1"], ["reports"]).build_part("step", names[1], None)
    try:
        assignment = part._consumer.assignment()
        assert [(tp.topic, tp.partition) for tp in assignment] == [("reports", 1)]
    finally:
        part.close()


def test_the_best_score_gauge_is_the_rounds_lowest_score_without_reading_the_gauge() -> None:
    import math

    from prometheus_client import REGISTRY

    from dataflow.adapters import observability
    from dataflow.domain.effects import Note

    def best() -> float | None:
        return REGISTRY.get_sample_value("controller_round_best_score", {"key": "surfaces"})

    observability.record_note(Note("surfaces", "round_started", 1, detail="OPTIMIZE"))
    assert math.isnan(best() or 0.0)
    for score in (-0.5, -0.7, -0.6):
        observability.record_note(Note("surfaces", "score", 1, step=0, value=score))
    assert best() == -0.7
    observability.record_note(Note("surfaces", "round_started", 2, detail="OPTIMIZE"))
    observability.record_note(Note("surfaces", "score", 2, step=0, value=-0.1))
    assert best() == -0.1
