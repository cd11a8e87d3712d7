"""A coarse guard: at the shipped defaults no hop of an idle controller waits for the tick.

Not a benchmark (``just bench`` measures the hops): it fails only if a hop takes
more than a second, as every hop did when messages waited for the 5 s tick.
"""

from __future__ import annotations

import time

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition

from dataflow.domain import messages as msg
from tests.integration.harness import Controller

pytestmark = pytest.mark.integration


def _next(consumer: Consumer, timeout: float = 30.0) -> tuple[float, bytes]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        message = consumer.poll(0.005)
        if message is not None and message.error() is None:
            return time.perf_counter(), message.value()
    raise AssertionError(f"nothing within {timeout}s")


def test_idle_hops_at_the_shipped_defaults_take_well_under_a_second(
    wiring_factory, tmp_path
) -> None:
    wiring = wiring_factory("seed")
    shipped = {k: v for k, v in wiring.env().items() if k != "TICK_INTERVAL_S"}  # default: 5
    wiring.env = lambda: shipped  # type: ignore[method-assign]
    controller = Controller(wiring, tmp_path / "c", snapshot_s=5)  # the README's -s 5 -b 30
    watch = {}
    for topic in (wiring.commands, wiring.sync):
        watch[topic] = Consumer({"bootstrap.servers": wiring.bootstrap, "group.id": "latency",
                                 "fetch.wait.max.ms": 5,
                                 "isolation.level": "read_uncommitted"})  # fmt: skip
        watch[topic].assign([TopicPartition(topic, 0, 0)])
    hops: dict[str, list[float]] = {"instruction -> pause": [], "instruction -> train": [],
                                    "report -> play": []}  # fmt: skip
    # One producer, started before any hop: starting one takes ~0.5 s, not the controller's time.
    producer = Producer({"bootstrap.servers": wiring.bootstrap, "linger.ms": 0})
    producer.produce(wiring.dead_letters, b"warm-up")
    producer.flush(30)

    def send(topic: str, value: bytes) -> float:
        sent = time.perf_counter()
        producer.produce(topic, value)
        producer.flush(10)
        return sent

    try:
        controller.start()
        time.sleep(8)  # started, idle, past its first epochs
        for number in range(1, 4):
            time.sleep(1.7)  # land anywhere in the 5 s epochs and ticks
            _, value = wiring.codec.encode_instruction(
                msg.Instruction(msg.InstructionKind.RETRAIN, number)
            )
            sent = send(wiring.instructions, value)
            paused, _ = _next(watch[wiring.sync])
            commanded, value = _next(watch[wiring.commands])
            command = wiring.codec.decode_command(value)
            assert isinstance(command, msg.FactoryCommand)
            answered = send(wiring.reports, b'{"reply_id": "%s", "status": "success", '
                            b'"model_id": %d}' % (command.id.encode(), number))  # type: ignore[union-attr]  # fmt: skip
            played, _ = _next(watch[wiring.sync])
            hops["instruction -> pause"].append(paused - sent)
            hops["instruction -> train"].append(commanded - sent)
            hops["report -> play"].append(played - answered)
    finally:
        controller.stop()
        for consumer in watch.values():
            consumer.close()

    assert {hop: [t for t in times if t > 1.0] for hop, times in hops.items()} == {
        hop: [] for hop in hops
    }
