"""Integration fixtures: per-test topics wired into a controller process."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.integration.harness import Controller, Wiring


@pytest.fixture
def wiring_factory(
    kafka_bootstrap: str, topic_factory: Callable[..., str]
) -> Callable[..., Wiring]:
    """Make a ``Wiring`` with five fresh topics for a dialect (and extra settings)."""

    def make(dialect: str = "seed", partitions: int = 1, **extra: str) -> Wiring:
        return Wiring(
            kafka_bootstrap, dialect,  # type: ignore[arg-type]
            instructions=topic_factory("instructions", partitions),
            reports=topic_factory("reports", partitions),
            commands=topic_factory("commands", partitions),
            sync=topic_factory("sync", partitions),
            dead_letters=topic_factory("dlq", partitions),
            extra=dict(extra), partitions=partitions,
        )  # fmt: skip

    return make


@pytest.fixture
def controller_factory(tmp_path: Path) -> Iterator[Callable[..., Controller]]:
    """Make controllers (each with its own recovery directory); all are stopped at the end."""
    made: list[Controller] = []

    def make(wiring: Wiring, name: str = "c", partitions: int = 1) -> Controller:
        controller = Controller(wiring, tmp_path / name, partitions)
        made.append(controller)
        return controller

    yield make
    for controller in made:
        controller.kill()
