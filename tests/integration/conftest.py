"""Integration fixtures: per-test topics wired into a controller process."""

from __future__ import annotations

from collections.abc import Callable, Generator, Iterator
from pathlib import Path

import pytest

from dataflow.sim.process import ControllerProcess
from tests.integration import harness
from tests.integration.harness import Controller, Wiring

#: Where this test's controllers begin in ``harness.MADE``.
FIRST = pytest.StashKey[int]()
#: How much of each controller's log a failure's report shows.
LOG_TAIL_LINES = 80


@pytest.fixture(autouse=True)
def _controllers_shown_on_failure(request: pytest.FixtureRequest) -> Iterator[None]:
    """Mark where this test's controllers begin; forget them after it."""
    request.node.stash[FIRST] = first = len(harness.MADE)
    yield
    del harness.MADE[first:]


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """A failed test's report carries the state and log tail of each controller it made.

    The logs live in ``tmp_path``, which pytest rotates away after a few sessions:
    a failure seen once in CI must be readable from CI's output alone.
    """
    report = yield
    if report.failed and FIRST in item.stash:
        for number, controller in enumerate(harness.MADE[item.stash[FIRST] :]):
            report.sections.append((f"controller {number}", controller_state(controller)))
    return report


def controller_state(controller: ControllerProcess) -> str:
    """Whether ``controller`` runs (or how it exited) and its log's last lines."""
    state = "running" if controller.running() else f"exit status {controller.returncode}"
    lines = controller.log_text().splitlines()[-LOG_TAIL_LINES:]
    return "\n".join([f"{state}; the last {len(lines)} lines of {controller.log_path}:", *lines])


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
