"""The stack works together: a real broker, confluent-kafka and a Bytewax flow run as a process."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable

import pytest

from tests.kafka import client

pytestmark = pytest.mark.integration


def test_a_produced_message_is_consumed_back_with_its_key_and_headers(
    kafka_bootstrap: str, topic_factory: Callable[..., str]
) -> None:
    topic = topic_factory("stack")
    client.produce(kafka_bootstrap, topic, [b"one", b"two"], key=b"k", headers=[("h", b"v")])

    got = client.read_messages(kafka_bootstrap, topic, count=2, timeout=30)

    assert [(m.key(), m.value(), m.headers()) for m in got] == [
        (b"k", b"one", [("h", b"v")]),
        (b"k", b"two", [("h", b"v")]),
    ]


def test_a_bytewax_flow_run_as_a_process_reads_one_topic_and_writes_another(
    kafka_bootstrap: str, topic_factory: Callable[..., str]
) -> None:
    source, sink = topic_factory("echo-in"), topic_factory("echo-out")
    client.produce(kafka_bootstrap, source, [b"alpha", b"beta", b"gamma"])
    env = {**os.environ, "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap,
           "ECHO_IN": source, "ECHO_OUT": sink}  # fmt: skip

    run = subprocess.run(
        [sys.executable, "-m", "bytewax.run", "tests.integration.echo_flow:get_flow()"],
        env=env, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip

    assert run.returncode == 0, run.stderr
    got = client.read_messages(kafka_bootstrap, sink, count=3, timeout=30)
    assert [m.value() for m in got] == [b"ALPHA", b"BETA", b"GAMMA"]
