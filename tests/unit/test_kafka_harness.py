"""The broker harness itself: what it hands the Kafka tools must always parse."""

from __future__ import annotations

from tests.kafka import broker


def test_a_cluster_id_never_starts_with_a_dash_the_storage_tool_would_read_as_an_option() -> None:
    ids = {broker._cluster_id() for _ in range(5000)}

    assert len(ids) == 5000
    assert all(len(i) == 22 and not i.startswith("-") for i in ids)
