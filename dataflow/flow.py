"""The Bytewax dataflow: Kafka in, decode, merge, key, ``stateful_map(advance)``, outbox out.

Role: wiring only. Decisions are the domain's (``dataflow.domain.machine``); the
``session`` step is a few lines that call ``advance``. Run it with::

    python -m bytewax.run "dataflow.flow:get_flow()" -r recovery -s 5 -b 30

Shape::

    instructions ─ decode ┐                                ┌ commands ─ factory_commands
    reports ────── decode ┼ merge ─ key ─ session ─ outbox ┼ syncs ──── enginesync
    ticks ──── fan out ───┘  (dead letters) ──────┘        ├ deadline markers ─ factory_reports
                                                           └ dead letters ─ controller_dead_letters

The report topic carries the factory's reports and the controller's own deadline
markers (``MARKER_HEADER``), read back to decide timeouts. The outbox
(``dataflow.adapters.outbox``) writes every output once, whatever Bytewax replays.

Step ids are a persisted schema (Bytewax recovery keys them as
``<flow>.<step>``): renaming the stateful step drops every session, renaming an
input re-reads its topic from the start, renaming the outbox drops where it
wrote. They are named in ``dataflow.adapters.recovery`` (``FLOW_ID``,
``*_STEP``) and frozen by ``test_the_persisted_step_ids_are_frozen``.
"""

from __future__ import annotations

import dataclasses
import logging
import signal
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import timedelta
from functools import partial
from typing import Any, TypeAlias

import bytewax.operators as op
import msgspec
from bytewax.connectors.kafka import KafkaError, KafkaSourceMessage
from bytewax.dataflow import Dataflow, Stream
from bytewax.inputs import Source
from bytewax.outputs import Sink
from threadpoolctl import threadpool_limits

from dataflow.adapters import observability, runtime
from dataflow.adapters.clock import now_ms
from dataflow.adapters.config import Settings, SettingsError
from dataflow.adapters.kafka import (
    DEADLINE_MARKER,
    MARKER_HEADER,
    SESSION_HEADER,
    DeliveryError,
    OutMessage,
    StartupError,
    dead_letter,
    preflight,
    source_config,
    stop_if_refused,
)
from dataflow.adapters.kafka_log import KafkaLog, fenced_at_start, kafka_outbox
from dataflow.adapters.origin import Origin as RecordedOrigin
from dataflow.adapters.origin import establish
from dataflow.adapters.outbox import PARTITION
from dataflow.adapters.recovery import (
    FLOW_ID,
    INSTRUCTIONS_STEP,
    OUTPUTS_STEP,
    REPORTS_STEP,
    SESSION_STEP,
    TICKS_STEP,
    Claim,
)
from dataflow.adapters.runtime import bytewax_epoch_interval, bytewax_recovery
from dataflow.adapters.sources import EpochClock, PacedKafkaSource, TickSource
from dataflow.domain import machine
from dataflow.domain import messages as msg

log = logging.getLogger(__name__)


RawInput: TypeAlias = KafkaSourceMessage[bytes | None, bytes | None] | KafkaError[Any, Any]
#: What the outbox receives: its partition key (one partition) and a message.
Keyed: TypeAlias = tuple[str, OutMessage]


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
class FlowIO:
    """The flow's sources and its sink: Kafka in production, testing ones in the flow tier."""

    instructions: Source[Any]
    reports: Source[Any]
    ticks: Source[int]
    #: Every output (commands, syncs, deadline markers, dead letters), each naming its
    #: topic, in the order the sessions produced them (``dataflow.adapters.outbox``).
    outputs: Sink[Keyed]


def kafka_io(
    settings: Settings, origin: RecordedOrigin, claim: Claim | None = None,
    fenced: KafkaLog | None = None,
) -> FlowIO:  # fmt: skip
    """Kafka sources (errors kept as values, not raised) and the outbox for every topic.

    ``origin``: where inputs and the outbox start without recovery state; ``claim``:
    checked at every epoch's end (a stale process stops before writing the epoch);
    ``fenced``: the outbox's writer, if this process fenced at start.
    """
    brokers = [settings.brokers]
    extra = source_config(settings)

    idle_wait = timedelta(milliseconds=settings.input_idle_wait_ms)
    # The inputs end each epoch together.
    clock = EpochClock(
        bytewax_epoch_interval(), on_epoch_end=None if claim is None else claim.stop_if_stale
    )

    def source(topic: str, setting: str) -> PacedKafkaSource:
        return PacedKafkaSource(
            brokers, [topic], tail=True, add_config=extra, raise_on_errors=False,
            batch_size=100, idle_wait=idle_wait, clock=clock, start=origin.input_offsets(topic),
            setting=setting,
        )  # fmt: skip

    return FlowIO(
        instructions=source(settings.topics.instructions, "INSTRUCTION_TOPIC"),
        reports=source(settings.topics.reports, "REPORT_TOPIC"),
        # The tick input only has to keep epochs moving, and the clock wakes it at each
        # epoch's end: it can sleep five times longer than the Kafka inputs.
        ticks=TickSource(timedelta(seconds=settings.tick_interval_s), idle_wait * 5, clock),
        outputs=kafka_outbox(settings, origin.output_offsets(), fenced),
    )


# --------------------------------------------------------------------------- steps


def _origin(item: RawInput) -> Origin:
    message = item.msg if isinstance(item, KafkaError) else item
    return Origin(message.topic, message.partition, message.offset, message.key, message.value,
                  tuple(message.headers or ()))  # fmt: skip


def decode_instruction(settings: Settings, item: RawInput) -> Envelope | OutMessage:
    """Bytes from the instruction topic to an event for its session, or a dead letter."""
    origin = _origin(item)
    if isinstance(item, KafkaError):
        stop_if_refused(item.err, settings.topics.instructions, "INSTRUCTION_TOPIC",
                        source_config(settings))  # fmt: skip
        return _dead(settings, origin, f"kafka: {item.err}", "consume")
    decoded = settings.codec.decode_instruction(item.value or b"", settings.max_message_bytes)
    if isinstance(decoded, msg.Rejection):
        return _dead(settings, origin, decoded.reason, "decode")
    key = machine.route_instruction(decoded, settings.machine)
    if isinstance(key, msg.Rejection):
        return _dead(settings, origin, key.reason, "route")
    decoded = msgspec.structs.replace(decoded, logged_ms=_logged_ms(item))
    return Envelope(key, machine.InstructionArrived(decoded, now_ms()), origin)


def _logged_ms(message: KafkaSourceMessage[Any, Any]) -> int | None:
    """The record's timestamp in its topic (create or log-append time), if it has one.

    Costs are measured between records' own timestamps, so a replay measures the same.
    """
    kind, ms = message.timestamp or (0, -1)
    return ms if kind != 0 and ms >= 0 else None


def decode_report(settings: Settings, item: RawInput) -> Envelope | OutMessage:
    """Bytes from the report topic to an event (a report, or one of our deadline markers)."""
    origin = _origin(item)
    if isinstance(item, KafkaError):
        stop_if_refused(item.err, settings.topics.reports, "REPORT_TOPIC", source_config(settings))
        return _dead(settings, origin, f"kafka: {item.err}", "consume")
    data, codec = item.value or b"", settings.codec
    event: machine.Event
    if dict(origin.headers).get(MARKER_HEADER) == DEADLINE_MARKER:
        deadline = codec.decode_deadline(data, settings.max_message_bytes)
        if isinstance(deadline, msg.Rejection):
            return _dead(settings, origin, deadline.reason, "decode")
        key = machine.route_deadline(deadline, settings.machine)
        deadline = msgspec.structs.replace(deadline, logged_ms=_logged_ms(item),
                                           source=(item.partition, item.offset))  # fmt: skip
        event = machine.DeadlinePassed(deadline, now_ms())
    else:
        report = codec.decode_report(data, settings.max_message_bytes)
        if isinstance(report, msg.Rejection):
            return _dead(settings, origin, report.reason, "decode")
        key = machine.route_report(report, settings.machine)
        report = msgspec.structs.replace(report, logged_ms=_logged_ms(item),
                                         source=(item.partition, item.offset))  # fmt: skip
        event = machine.ReportArrived(report, now_ms())
    if isinstance(key, msg.Rejection):
        return _dead(settings, origin, key.reason, "route")
    return Envelope(key, event, origin)


def fan_out_tick(keys: tuple[str, ...], since_ms: int, now_ms: int) -> list[Envelope]:
    """One tick for every configured session key; ``since_ms``: when this process started."""
    return [Envelope(key, machine.Tick(now_ms, since_ms), None) for key in keys]


def session_step(
    config: machine.MachineConfig, state: machine.Session | None, envelope: Envelope
) -> tuple[machine.Session | None, Outcome]:
    """The ``stateful_map`` mapper: the whole controller is ``advance``."""
    state, effects = machine.advance(state, envelope.event, key=envelope.key, config=config)
    event = envelope.event
    if not isinstance(event, machine.Tick) and any(
        isinstance(e, machine.SendCommand | machine.SendSync) for e in effects
    ):
        observability.HOP.observe(max(now_ms() - event.at_ms, 0) / 1000)
    if state is not None:
        observability.record_session(envelope.key, state.phase.value, len(state.queue),
                                     len(state.held))  # fmt: skip
    return state, Outcome(envelope.origin, effects)


def to_outputs(settings: Settings, keyed: tuple[str, Outcome]) -> Iterable[OutMessage]:
    """Effects to output messages; notes become log lines and metrics on the way.

    JSON messages are keyed by session; Avro ones as the originals key them. A sync
    is a barrier: the round's first command waits until the engine's topic has its
    pause. Every message but a dead letter carries its effect's stable message id.
    """
    key, outcome = keyed
    codec, topics = settings.codec, settings.topics
    session = [(SESSION_HEADER, key.encode())]
    for effect in outcome.effects:
        if isinstance(effect, machine.SendCommand):
            record_key, value = codec.encode_command(effect.command)
            yield OutMessage(record_key or key.encode(), value, session, topics.commands,
                             message_id=effect.message_id)  # fmt: skip
        elif isinstance(effect, machine.SendSync):
            observability.record_sync(key, effect.sync.type, now_ms() / 1000)
            record_key, value = codec.encode_sync(effect.sync)
            yield OutMessage(record_key or key.encode(), value, session, topics.sync,
                             barrier=True, message_id=effect.message_id)  # fmt: skip
        elif isinstance(effect, machine.MarkDeadline):
            record_key, value = codec.encode_deadline(effect.deadline)
            marker = [(MARKER_HEADER, DEADLINE_MARKER), *session]
            yield OutMessage(record_key or key.encode(), value, marker, topics.reports,
                             message_id=effect.message_id)  # fmt: skip
        elif isinstance(effect, machine.Reject):
            origin = outcome.origin or Origin(None, None, None, None, None)
            if effect.source is not None:  # a held report, released by this input: its bytes
                origin = Origin(topics.reports, *effect.source, None, None)  # are not kept
            yield _dead(settings, origin, effect.reason, "session", key)
        else:
            observability.record_note(effect)


def _dead(
    settings: Settings, origin: Origin, reason: str, stage: str, key: str | None = None
) -> OutMessage:
    fields = {"topic": origin.topic, "partition": origin.partition, "offset": origin.offset}
    if key is not None:
        fields["key"] = key
    observability.record_dead_letter(stage, reason, fields)
    letter = dead_letter(origin.value, origin.key, reason, stage, origin.topic, origin.partition,
                         origin.offset, origin.headers)  # fmt: skip
    return dataclasses.replace(letter, topic=settings.topics.dead_letters)


def _envelope(item: Envelope | OutMessage) -> Envelope | None:
    """A decoded input on its way to its session (None: a dead letter)."""
    return item if isinstance(item, Envelope) else None


def _dead_letter(item: Envelope | OutMessage) -> OutMessage | None:
    """A dead letter made by a decoder (None: an input on its way to its session)."""
    return item if isinstance(item, OutMessage) else None


def _keyed(message: OutMessage) -> Keyed:
    """Every message to the outbox's one partition."""
    return PARTITION, message


# --------------------------------------------------------------------------- the flow


def build_flow(settings: Settings, io: FlowIO) -> Dataflow:
    """Wire the controller to ``io``: Kafka (``kafka_io``), or the flow tier's testing IO."""
    started = now_ms()  # no deadline marker is asked for sooner than the timeout after this
    flow = Dataflow(FLOW_ID)
    instructions = op.map("decode_instructions", op.input(INSTRUCTIONS_STEP, flow, io.instructions),
                          partial(decode_instruction, settings))  # fmt: skip
    reports = op.map("decode_reports", op.input(REPORTS_STEP, flow, io.reports),
                     partial(decode_report, settings))  # fmt: skip
    decoded = op.merge("merge_inputs", instructions, reports)
    ticks = op.input(TICKS_STEP, flow, io.ticks)
    events: Stream[Envelope] = op.merge(
        "merge_ticks",
        op.filter_map("accepted", decoded, _envelope),
        op.flat_map("fan_out_ticks", ticks, partial(fan_out_tick, settings.machine.keys, started)),
    )
    keyed = op.key_on("key_by_session", events, lambda envelope: envelope.key)
    outcomes = op.stateful_map(SESSION_STEP, keyed, partial(session_step, settings.machine))
    messages: Stream[OutMessage] = op.merge(
        "merge_outputs",
        op.flat_map("effects_to_messages", outcomes, partial(to_outputs, settings)),
        op.filter_map("dead_letters", decoded, _dead_letter),
    )
    op.output(OUTPUTS_STEP, op.map("to_outbox", messages, _keyed), io.outputs)
    return flow


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
    # Bytewax installs nothing for SIGTERM, and as PID 1 of a container the kernel ignores
    # it: every delete would wait out its grace period and end in SIGKILL.
    signal.signal(signal.SIGTERM, runtime.stop_on_sigterm)
    single_threaded_numerics()
    try:
        settings = Settings.from_env()
    except SettingsError as error:
        print(f"controller: {error}", file=sys.stderr)
        raise SystemExit(2) from None
    observability.configure_logging(settings.log_level, settings.log_format)
    directory, process = bytewax_recovery()
    try:
        preflight(settings)
        origin = establish(settings, directory, process)
        began = time.monotonic()
        fenced = fenced_at_start(settings, origin.output_offsets()) if process == 0 else None
        fenced_s = time.monotonic() - began
    except (StartupError, DeliveryError) as error:
        log.error(f"controller cannot start: {error}")
        raise SystemExit(3) from None
    settings = settings.with_baseline(origin.baseline)
    interval = bytewax_epoch_interval()
    observability.declare(settings.machine.keys)
    observability.ROUND_LIMIT.set(settings.machine.longest_round_ms() / 1000)
    observability.SNAPSHOT_INTERVAL.set(interval.total_seconds() if interval else 0)
    observability.LAST_SNAPSHOT.set_to_current_time()  # no snapshot is overdue at start
    claim = None if directory is None else Claim(directory, process)
    log.info("controller starting", extra={"fields": {
        "brokers": settings.brokers, "dialect": settings.dialect,
        "profile": settings.machine.profile.name, "keys": list(settings.machine.keys),
        "topics": list(settings.topics.all()), "transactional_id": settings.transactional_id,
        "recovery_directory": str(directory), "process": process,
        "fence_s": round(fenced_s, 3) if fenced else None,
        "epoch_interval_s": interval and interval.total_seconds(),
    }})  # fmt: skip
    return build_flow(settings, kafka_io(settings, origin, claim, fenced))
