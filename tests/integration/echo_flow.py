"""A minimal Bytewax flow (Kafka in, upper-cased, Kafka out) proving the stack works together.

Configured by environment variables so that it runs under ``python -m bytewax.run``.
"""

from __future__ import annotations

import os

import bytewax.operators as op
from bytewax.connectors.kafka import KafkaSinkMessage, KafkaSource
from bytewax.connectors.kafka import operators as kop
from bytewax.dataflow import Dataflow


def get_flow() -> Dataflow:
    """Read ``ECHO_IN`` to its end (``tail=False``) and write upper-cased values to ``ECHO_OUT``."""
    brokers = [os.environ["KAFKA_BOOTSTRAP_SERVERS"]]
    flow = Dataflow("echo")
    source = KafkaSource(brokers, [os.environ["ECHO_IN"]], tail=False)
    messages = op.input("in", flow, source)
    upper = op.map("upper", messages, lambda m: KafkaSinkMessage(key=m.key, value=m.value.upper()))
    kop.output("out", upper, brokers=brokers, topic=os.environ["ECHO_OUT"])
    return flow
