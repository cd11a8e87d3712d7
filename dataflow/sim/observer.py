"""An Observer stand-in: send one instruction (OPTIMIZE, RETRAIN or UPDATE_PARAMS) to Kafka.

Examples::

    python -m dataflow.sim.observer optimize
    python -m dataflow.sim.observer retrain --dialect rtcef --id 7
    python -m dataflow.sim.observer update-params --param pMin=0.02 --param gamma=0.001
    python -m dataflow.sim.observer optimize --model-id m2 --bootstrap broker:9092
"""

from __future__ import annotations

import argparse
import sys
import time

from confluent_kafka import Producer

from dataflow.adapters.wire import Codec
from dataflow.domain import dialects
from dataflow.domain import messages as msg
from dataflow.sim.runner import add_wire_arguments, client
from dataflow.sim.services import SERVICES

KINDS = {
    "optimize": msg.InstructionKind.OPTIMIZE,
    "retrain": msg.InstructionKind.RETRAIN,
    "update-params": msg.InstructionKind.UPDATE_PARAMS,
}


def _param(text: str) -> tuple[str, float | int]:
    name, _, raw = text.partition("=")
    if not name or not raw:
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE, got {text!r}")
    try:
        return name, int(raw) if raw.lstrip("-").isdigit() else float(raw)
    except ValueError as error:
        raise argparse.ArgumentTypeError(f"{name}: {raw!r} is not a number") from error


def parser() -> argparse.ArgumentParser:
    """The command line, with every option explained."""
    p = argparse.ArgumentParser(
        prog="python -m dataflow.sim.observer",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "instruction",
        choices=sorted(KINDS),
        help="optimize: a Bayesian-optimisation round; retrain: train with the current "
        "best parameters; update-params: replace them (seed dialect only)",
    )
    add_wire_arguments(p, "instruction")
    p.add_argument("--topic", help="instruction topic (default: the dialect's, e.g. instructions)")
    p.add_argument("--id", type=int, default=0, help="the instruction's id field (default 0)")
    p.add_argument(
        "--timestamp",
        type=int,
        default=None,
        help="stream time copied into every command (default: now, in seconds, the unit of "
        "the real services' stream time: their factory holds a command stamped more than 600 "
        "past its newest data set)",
    )
    p.add_argument(
        "--model-id",
        default=None,
        help="seed only: the model the instruction is about (the session key in multi-model mode)",
    )
    p.add_argument(
        "--param",
        type=_param,
        action="append",
        default=[],
        help="update-params only: NAME=VALUE, repeat for each parameter",
    )
    return p


def stream_time_now() -> int:
    """Now, as the real services stamp stream time: whole seconds since the epoch."""
    return int(time.time())


def main(argv: list[str] | None = None) -> int:
    """Send the instruction and wait for the broker's acknowledgement."""
    args = parser().parse_args(argv)
    kind = KINDS[args.instruction]
    dialect = dialects.get(args.dialect)
    services = SERVICES[dialect.name]
    if kind not in services.instruction_kinds or (args.model_id and not services.model_ids):
        print(f"observer: the {dialect.name} dialect's Observer sends no {kind.value.lower()}"
              f"{'' if services.model_ids else ' and no model_id'}", file=sys.stderr)  # fmt: skip
        return 2
    if args.encoding not in dialect.encodings:
        print(f"observer: the {dialect.name} dialect is not spoken in {args.encoding} "
              f"(only {', '.join(dialect.encodings)})", file=sys.stderr)  # fmt: skip
        return 2
    if kind is msg.InstructionKind.UPDATE_PARAMS and not args.param:
        print("observer: update-params needs at least one --param NAME=VALUE", file=sys.stderr)
        return 2
    instruction = msg.Instruction(
        kind,
        args.timestamp if args.timestamp is not None else stream_time_now(),
        args.id,
        args.model_id,
        tuple(args.param) or None,
    )
    topic = args.topic or dialect.topics["instructions"]
    failures: list[str] = []
    producer = Producer(client({"bootstrap.servers": args.bootstrap, "acks": "all"}))
    key, payload = Codec(args.dialect, args.encoding).encode_instruction(instruction)
    producer.produce(
        topic, payload, key, on_delivery=lambda e, _m: failures.append(str(e)) if e else None
    )
    if producer.flush(15) or failures:
        print(
            f"observer: not delivered to {topic} at {args.bootstrap}: {failures}", file=sys.stderr
        )
        return 1
    print(f"observer: sent {instruction} to {topic}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
