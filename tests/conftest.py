"""Shared fixtures: the real Kafka broker for the integration tier, and unique topics.

``KAFKA_BOOTSTRAP_SERVERS`` set: the tests use that broker. Unset: the session
starts one broker from the harness in ``tests/kafka`` and stops it at the end.
A broker that cannot start is an error, never a skip.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator

import pytest

from tests.kafka import broker as harness
from tests.kafka import client

_REPORT: list[str] = []


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """Print the broker's start-up time: a figure the project reports."""
    for line in _REPORT:
        terminalreporter.write_line(line)


def pytest_sessionfinish(session: pytest.Session) -> None:
    """A skipped test is not a pass: this suite has no optional tier."""
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    skipped = len(reporter.stats.get("skipped", [])) if reporter else 0
    if skipped and session.exitstatus == 0:
        sys.stderr.write(f"\n{skipped} test(s) skipped: every test must run here\n")
        session.exitstatus = 1


@pytest.fixture(scope="session")
def kafka_bootstrap(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The bootstrap address of a real broker for this test session."""
    configured = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    if configured:
        yield configured
        return
    running = harness.start(tmp_path_factory.mktemp("kafka"))
    _REPORT.append(
        f"kafka-harness: broker ready on {running.bootstrap} in {running.startup_seconds:.2f}s"
    )
    try:
        yield running.bootstrap
    finally:
        running.stop()


@pytest.fixture
def topic_factory(kafka_bootstrap: str) -> Iterator[Callable[..., str]]:
    """Make unique topics for one test; all are deleted afterwards."""
    made: list[str] = []

    def make(prefix: str = "t", partitions: int = 1) -> str:
        name = client.unique_topic(prefix)
        client.create_topics(kafka_bootstrap, [name], partitions=partitions)
        made.append(name)
        return name

    yield make
    client.delete_topics(kafka_bootstrap, made)


@pytest.fixture(scope="module")
def secured_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[harness.Broker]:
    """A secured broker (TLS, SCRAM-SHA-512, ACLs enforced) generated for one test module.

    While it runs, ``tests.kafka.client``'s helpers act on it as its ``admin`` user.
    """
    security = harness.Security.generate(tmp_path_factory.mktemp("certificates"))
    running = harness.start(tmp_path_factory.mktemp("secured-kafka"), secured=security)
    client.SECURITY[running.bootstrap] = security.client_config("admin")
    try:
        yield running
    finally:
        client.SECURITY.pop(running.bootstrap, None)
        running.stop()
