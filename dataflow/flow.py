"""The Bytewax dataflow: Kafka in, decode, merge, key, ``stateful_map(advance)``, branch, Kafka out.

Role: wiring only. Decisions are the domain's (``dataflow.domain.machine``); the
``session`` step is a few lines that call ``advance``. Run it with::

    python -m bytewax.run "dataflow.flow:get_flow()" -r recovery -s 5 -b 30

Shape::

    instructions ─ decode ┐                      ┌ commands ─ factory_commands
    reports ────── decode ┼ merge ─ key ─ session ┼ syncs ──── enginesync
    ticks ──── fan out ───┘   (dead letters) ────┴ dead letters ─ controller_dead_letters

Step ids are a persisted schema (Bytewax recovery keys them as
``<flow>.<step>``): renaming the stateful step drops every session, renaming an
input re-reads its topic from the start. They are named in ``dataflow.adapters.recovery``
(``FLOW_ID``, ``*_STEP``) and frozen by ``test_the_persisted_step_ids_are_frozen``.
"""

from __future__ import annotations

import dataclasses
import logging
import signal
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import timedelta
from functools import partial
from typing import Any, Final, TypeAlias

import bytewax.operators as op
from bytewax.connectors.kafka import KafkaError, KafkaSourceMessage
from bytewax.dataflow import Dataflow, Stream
from bytewax.inputs import Source
from bytewax.outputs import Sink
from threadpoolctl import threadpool_limits

from dataflow.adapters import observability
from dataflow.adapters.clock import now_ms
from dataflow.adapters.config import Settings, SettingsError, Topics
from dataflow.adapters.kafka import (
    MESSAGE_ID_HEADER,
    SESSION_HEADER,
    OutMessage,
    SafeKafkaSink,
    StartupError,
    dead_letter,
    preflight,
    source_config,
)
from dataflow.adapters.recovery import (
    FLOW_ID,
    INSTRUCTIONS_STEP,
    REPORTS_STEP,
    SESSION_STEP,
    TICKS_STEP,
)
from dataflow.adapters.sources import EpochClock, PacedKafkaSource, TickSource
from dataflow.adapters.wire import Codec
from dataflow.domain import machine
from dataflow.domain import messages as msg

log = logging.getLogger(__name__)


RawInput: TypeAlias = KafkaSourceMessage[bytes | None, bytes | None] | KafkaError[Any, Any]


@dataclass(frozen=True)
class Origin:
    """Where an input came from: what a dead letter must carry."""

    topic: str | None
    partition: int | None
    offset: int | None
    key: bytes | None
    value: bytes | None
    headers: tuple[tuple[str, bytes], ...] = ()


@dataclass(frozen=True)
class Envelope:
    """A decoded event on its way to a session."""

    key: str
    event: machine.Event
    origin: Origin | None


@dataclass(frozen=True)
class Outcome:
    """What a session's step produced, with the input's origin (for dead letters)."""

    origin: Origin | None
    effects: list[machine.Effect]


@dataclass(frozen=True)
class Routed:
    """An output message and the sink it goes to."""

    sink: str
    message: OutMessage


@dataclass(frozen=True)
class FlowIO:
    """The flow's sources and sinks: Kafka in production, testing ones in the flow tier."""

    instructions: Source[Any]
    reports: Source[Any]
    ticks: Source[int]
    #: Commands and syncs, in the order the sessions produced them, each naming its topic.
    conversation: Sink[OutMessage]
    dead_letters: Sink[OutMessage]


def kafka_io(settings: Settings) -> FlowIO:
    """Kafka sources (errors kept as values, not raised) and safe sinks for every topic."""
    brokers = [settings.brokers]
    extra = source_config(settings)

    idle_wait = timedelta(milliseconds=settings.input_idle_wait_ms)
    clock = EpochClock(bytewax_epoch_interval())  # the inputs end each epoch together

    def source(topic: str) -> PacedKafkaSource:
        return PacedKafkaSource(
            brokers, [topic], tail=True, add_config=extra, raise_on_errors=False,
            batch_size=100, idle_wait=idle_wait, clock=clock,
        )  # fmt: skip

    return FlowIO(
        instructions=source(settings.topics.instructions),
        reports=source(settings.topics.reports),
        # The tick input only has to keep epochs moving, and the clock wakes it at each
        # epoch's end: it can sleep five times longer than the Kafka inputs.
        ticks=TickSource(timedelta(seconds=settings.tick_interval_s), idle_wait * 5, clock),
        conversation=SafeKafkaSink(settings, settings.topics.commands),
        dead_letters=SafeKafkaSink(settings, settings.topics.dead_letters),
    )


# --------------------------------------------------------------------------- steps


def _origin(item: RawInput) -> Origin:
    message = item.msg if isinstance(item, KafkaError) else item
    return Origin(message.topic, message.partition, message.offset, message.key, message.value,
                  tuple(message.headers or ()))  # fmt: skip


def decode_input(kind: str, settings: Settings, item: RawInput) -> Envelope | Routed:
    """Bytes from an input topic (``kind``: instruction or report) to an event, or a dead letter."""
    origin = _origin(item)
    if isinstance(item, KafkaError):
        return _dead(origin, f"kafka: {item.err}", "consume")
    decode, route, arrived = _INPUTS[kind]
    decoded = decode(settings.codec, item.value or b"", settings.max_message_bytes)
    if isinstance(decoded, msg.Rejection):
        return _dead(origin, decoded.reason, "decode")
    key = route(decoded, settings.machine)
    if isinstance(key, msg.Rejection):
        return _dead(origin, key.reason, "route")
    return Envelope(key, arrived(decoded, now_ms()), origin)


#: Per input: its decoder, its router, and the event it becomes.
_INPUTS: Final[dict[str, tuple[Any, Any, Any]]] = {
    "instruction": (
        Codec.decode_instruction,
        machine.route_instruction,
        machine.InstructionArrived,
    ),
    "report": (Codec.decode_report, machine.route_report, machine.ReportArrived),
}


def fan_out_tick(keys: tuple[str, ...], since_ms: int, now_ms: int) -> list[Envelope]:
    """One tick for every configured session key; ``since_ms``: when this process started."""
    return [Envelope(key, machine.Tick(now_ms, since_ms), None) for key in keys]


def session_step(
    config: machine.MachineConfig, state: machine.Session | None, envelope: Envelope
) -> tuple[machine.Session | None, Outcome]:
    """The ``stateful_map`` mapper: the whole controller is ``advance``."""
    state, effects = machine.advance(state, envelope.event, key=envelope.key, config=config)
    return state, Outcome(envelope.origin, effects)


def to_outputs(codec: Codec, keyed: tuple[str, Outcome]) -> Iterable[Routed]:
    """Effects to output messages; notes become log lines and metrics on the way.

    JSON messages are keyed by session; Avro ones as the originals key them.
    """
    key, outcome = keyed
    session = [(SESSION_HEADER, key.encode())]
    for effect in outcome.effects:
        if isinstance(effect, machine.SendCommand):
            headers = [(MESSAGE_ID_HEADER, effect.message_id.encode()), *session]
            record_key, value = codec.encode_command(effect.command)
            yield Routed("commands", OutMessage(record_key or key.encode(), value, headers))
        elif isinstance(effect, machine.SendSync):
            headers = [(MESSAGE_ID_HEADER, effect.message_id.encode()), *session]
            record_key, value = codec.encode_sync(effect.sync)
            yield Routed("syncs", OutMessage(record_key or key.encode(), value, headers))
        elif isinstance(effect, machine.Reject):
            origin = outcome.origin or Origin(None, None, None, None, None)
            yield _dead(origin, effect.reason, "session", key)
        else:
            observability.record_note(effect)


def _dead(origin: Origin, reason: str, stage: str, key: str | None = None) -> Routed:
    fields = {"topic": origin.topic, "partition": origin.partition, "offset": origin.offset}
    if key is not None:
        fields["key"] = key
    observability.record_dead_letter(stage, reason, fields)
    letter = dead_letter(origin.value, origin.key, reason, stage, origin.topic, origin.partition,
                         origin.offset, origin.headers)  # fmt: skip
    return Routed("dead_letters", letter)


def _only(sink: str, routed: Routed) -> OutMessage | None:
    return routed.message if routed.sink == sink else None


def _addressed(topics: Topics, routed: Routed) -> OutMessage | None:
    """A command or sync message for the one ordered sink, with its topic; a sync is a barrier."""
    if routed.sink == "commands":
        return dataclasses.replace(routed.message, topic=topics.commands)
    if routed.sink == "syncs":
        return dataclasses.replace(routed.message, topic=topics.sync, barrier=True)
    return None


# --------------------------------------------------------------------------- the flow


def build_flow(settings: Settings, io: FlowIO | None = None) -> Dataflow:
    """Wire the controller. ``io`` defaults to Kafka; the flow tier passes testing IO."""
    io = io or kafka_io(settings)
    started = now_ms()  # deadlines are never due sooner than the report timeout after this
    flow = Dataflow(FLOW_ID)
    instructions = op.input(INSTRUCTIONS_STEP, flow, io.instructions)
    reports = op.input(REPORTS_STEP, flow, io.reports)
    ticks = op.input(TICKS_STEP, flow, io.ticks)

    decoded = op.merge(
        "merge_inputs",
        op.map("decode_instructions", instructions, partial(decode_input, "instruction", settings)),
        op.map("decode_reports", reports, partial(decode_input, "report", settings)),
    )
    accepted = op.branch("accepted", decoded, lambda x: isinstance(x, Envelope))
    events: Stream[Envelope] = op.merge(
        "merge_ticks",
        accepted.trues,
        op.flat_map("fan_out_ticks", ticks, partial(fan_out_tick, settings.machine.keys, started)),
    )
    keyed = op.key_on("key_by_session", events, lambda envelope: envelope.key)
    outcomes = op.stateful_map(SESSION_STEP, keyed, partial(session_step, settings.machine))
    routed = op.merge(
        "merge_outputs",
        op.flat_map("effects_to_messages", outcomes, partial(to_outputs, settings.codec)),
        accepted.falses,
    )
    op.output("conversation_out",
              op.filter_map("conversation", routed, partial(_addressed, settings.topics)),
              io.conversation)  # fmt: skip
    op.output("dead_letters_out",
              op.filter_map("dead_letters", routed, partial(_only, "dead_letters")),
              io.dead_letters)  # fmt: skip
    return flow


def bytewax_epoch_interval() -> timedelta | None:
    """The epoch interval of the ``python -m bytewax.run`` this process is, if it is one.

    ``bytewax.run`` works it out (``-s`` or ``BYTEWAX_SNAPSHOT_INTERVAL``; 10 s without
    recovery) into its module's ``kwargs`` before it imports the flow; ``python -m
    bytewax.testing -p N`` runs N of those. Elsewhere (``bytewax.testing.run_main``,
    ``cluster_main``) ``None``: the inputs' epochs are left unaligned.
    """
    main = sys.modules.get("__main__")
    spec = getattr(main, "__spec__", None)
    if spec is None or spec.name != "bytewax.run":
        return None
    interval = getattr(main, "kwargs", {}).get("epoch_interval")
    return interval if isinstance(interval, timedelta) and interval > timedelta(0) else None


def single_threaded_numerics() -> threadpool_limits:
    """One thread for NumPy's and SciPy's OpenBLAS, process-wide (pthreads builds).

    threadpoolctl limits the libraries already loaded: this module imports the
    optimiser (NumPy, SciPy) before ``get_flow`` calls this.

    The optimiser's matrices are tiny (tens of points), so extra threads never pay;
    but OpenBLAS starts one per core and spins them, and on a shared node (another
    worker, the engine, a pod's CPU limit) they fight for cores: with two busy
    processes on two cores a proposal went from ~10 ms to a p99 of ~950 ms.
    Returns the limiter (``restore_original_limits()`` undoes it).
    """
    return threadpool_limits(limits=1)


def get_flow() -> Dataflow:
    """Entry point for ``python -m bytewax.run "dataflow.flow:get_flow()"``.

    Reads the settings, checks the broker (bounded), creates missing topics, and
    exits non-zero with a clear message instead of hanging or tracing back.
    """
    # Stop on SIGTERM as on Ctrl-C (Bytewax installs nothing for it). As PID 1 of a
    # container the default action is ignored by the kernel: every delete would wait out
    # its grace period and end in SIGKILL, without the sinks' last flush.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    single_threaded_numerics()
    try:
        settings = Settings.from_env()
    except SettingsError as error:
        print(f"controller: {error}", file=sys.stderr)
        raise SystemExit(2) from None
    observability.configure_logging(settings.log_level, settings.log_format)
    try:
        preflight(settings)
    except StartupError as error:
        log.error(f"controller cannot start: {error}")
        raise SystemExit(3) from None
    log.info("controller starting", extra={"fields": {
        "brokers": settings.brokers, "dialect": settings.dialect,
        "profile": settings.machine.profile.name, "keys": list(settings.machine.keys),
        "topics": list(settings.topics.all()),
        "epoch_interval_s": (interval := bytewax_epoch_interval()) and interval.total_seconds(),
    }})  # fmt: skip
    return build_flow(settings)
