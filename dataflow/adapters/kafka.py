"""Kafka at the edges: broker preflight, topic set-up, client settings, output messages.

Role: the I/O adapters of the flow. Each works around a Bytewax 0.21.1 Kafka
connector behaviour, each found by running it (and pinned by the integration tier):

* ``KafkaSource`` hangs forever in ``list_topics()`` when the brokers are
  unreachable: ``preflight`` checks reachability first, with a deadline.
* The stock ``KafkaSink`` flushes without delivery callbacks and so loses
  messages (and exits 0) when delivery fails, and repeats itself after a crash:
  the flow writes through ``dataflow.adapters.outbox`` instead, which checks every
  delivery (a failure crashes the flow, to replay) and never writes a message id
  twice.
* Offsets live only in Bytewax's recovery store; ``auto.offset.reset`` is set
  explicitly so that an offset removed by retention does not skip data silently.
* On a secured broker librdkafka retries a refused login or an untrusted certificate
  forever, and an unauthorised topic looks missing: ``preflight`` stops at the first
  such refusal with one line naming the setting or the ACL to fix (``refusal``,
  ``not_authorised``), and never shows a secret's value.
"""

from __future__ import annotations

import concurrent.futures
import logging
import os
import sys
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from confluent_kafka import Consumer, KafkaException, Message, TopicCollection
from confluent_kafka import KafkaError as ConfluentKafkaError
from confluent_kafka.admin import AdminClient
from confluent_kafka.cimpl import NewTopic, TopicPartition

from dataflow.adapters.config import Settings

log = logging.getLogger(__name__)

#: Header names on output messages: a stable id and a digest of the payload (on everything
#: but dead letters, see ``dataflow.adapters.outbox``), and the session that sent it.
MESSAGE_ID_HEADER: Final = "message-id"
DIGEST_HEADER: Final = "message-digest"
SESSION_HEADER: Final = "session-key"
#: On the deadline markers the controller writes to the report topic (``Codec.encode_deadline``).
MARKER_HEADER: Final = "controller-marker"
DEADLINE_MARKER: Final = b"deadline"
#: Headers on dead letters (besides the original message's own headers).
DLQ_REASON: Final = "dlq-reason"
DLQ_SOURCE_TOPIC: Final = "dlq-source-topic"
DLQ_SOURCE_PARTITION: Final = "dlq-source-partition"
DLQ_SOURCE_OFFSET: Final = "dlq-source-offset"
DLQ_STAGE: Final = "dlq-stage"


class StartupError(RuntimeError):
    """The controller cannot start: broker unreachable or refusing, topics missing or not made."""


class DeliveryError(RuntimeError):
    """The broker did not acknowledge every output message: crash, so Bytewax replays."""


@dataclass(frozen=True)
class OutMessage:
    """One output message; ``topic`` overrides the sink's own topic."""

    key: bytes | None
    value: bytes
    headers: list[tuple[str, bytes]] = field(default_factory=list)
    topic: str | None = None
    #: Everything after this message waits until the broker has acknowledged it.
    barrier: bool = False
    #: Stable across replays: a message whose id is on its topic already is not written
    #: again (``dataflow.adapters.outbox``). ``None``: not deduplicated (dead letters).
    message_id: str | None = None


#: librdkafka's own log lines (connection failures, broker errors) go through this logger,
#: so they come out in LOG_FORMAT like every other line, not as raw ``%3|...|FAIL|`` text.
#: Its name predates ``dataflow.adapters``; kept, since log filters and dashboards use it.
CLIENT_LOG: Final = logging.getLogger("dataflow.kafka.client")


def client_config(settings: Settings) -> dict[str, Any]:
    """Settings every Kafka client of the controller starts from: brokers, security, logger.

    librdkafka hands its log lines to ``CLIENT_LOG`` (served when the client polls).
    """
    return {**settings.kafka_config(), "logger": CLIENT_LOG}


def source_config(settings: Settings) -> dict[str, Any]:
    """Extra librdkafka settings for the Kafka sources."""
    config = client_config(settings)
    config.pop("bootstrap.servers")
    # Bytewax keeps offsets in its recovery store; if one was removed by retention,
    # read what is left rather than jumping to the end (librdkafka's default).
    config["auto.offset.reset"] = "earliest"
    # As the services read (Java's and kafka-python's default): a deadline marker whose
    # transaction a crash left open is read like the copy the outbox reads back.
    config["isolation.level"] = "read_uncommitted"
    config["fetch.message.max.bytes"] = str(max(1_048_576, settings.max_message_bytes * 2))
    # Bytewax keeps the offsets; the group is for a secured broker's ACLs (consumer_group).
    config["group.id"] = consumer_group(settings.transactional_id, "input")
    return config


def consumer_group(transactional_id: str, reader: str) -> str:
    """The group id of one of the controller's readers (``input``, ``origin``, ``read-back``).

    None commits an offset, but librdkafka looks the group's coordinator up, which a
    secured broker authorises (Describe on the group): every group is named after the
    transactional id, so one prefixed ACL covers them.
    """
    return f"{transactional_id}.{reader}"


#: The controller's readers' groups (``consumer_group``).
READERS: Final = ("input", "origin", "read-back")


def principal(config: Mapping[str, Any]) -> str:
    """Whom the broker sees: ``User:<KAFKA_SASL_USERNAME>``, or a description without SASL."""
    user = config.get("sasl.username")
    return f"User:{user}" if user else "the controller's principal"


def refusal(error: ConfluentKafkaError, config: Mapping[str, Any]) -> str | None:
    """What a client error means for the settings, if no retry can cure it; else ``None``.

    Names the setting to fix; shows the user name and the CA file, never a password.
    """
    code = error.code()
    detail = error.str()
    if code == ConfluentKafkaError._AUTHENTICATION:
        mechanism = config.get("sasl.mechanism", "(unset)")
        return (f"Kafka refused authentication for KAFKA_SASL_USERNAME="
                f"{config.get('sasl.username', '(unset)')}: check KAFKA_SASL_PASSWORD and "
                f"KAFKA_SASL_MECHANISM={mechanism} ({detail})")  # fmt: skip
    if code == ConfluentKafkaError._SSL and "verif" in detail:
        return (f"TLS handshake failed: the broker's certificate is not trusted by "
                f"KAFKA_SSL_CA_LOCATION={config.get('ssl.ca.location', '(unset)')} "
                f"or does not name the host in KAFKA_BOOTSTRAP_SERVERS ({detail})")  # fmt: skip
    return None  # other TLS failures may pass (a broker restarting): retried


#: What librdkafka names when it cannot use a file, and the settings to check for it.
_FILES: Final = (
    ("ssl.key.location", "KAFKA_SSL_KEY_LOCATION={ssl.key.location} and KAFKA_SSL_KEY_PASSWORD"),
    ("ssl.certificate.location", "KAFKA_SSL_CERTIFICATE_LOCATION={ssl.certificate.location}"),
    ("ssl.ca.location", "KAFKA_SSL_CA_LOCATION={ssl.ca.location}"),
)


def unusable(error: ConfluentKafkaError, config: Mapping[str, Any]) -> str:
    """Why a client could not even be made (a file, a key's password), and what to check."""
    for name, settings in _FILES:
        if name in error.str():
            check = settings.replace(f"{{{name}}}", str(config.get(name, "(unset)")))
            return f"cannot set up a Kafka client ({error.str()}): check {check}"
    return (f"cannot set up a Kafka client ({error.str()}): check KAFKA_SECURITY_PROTOCOL and "
            "the KAFKA_SSL_* settings")  # fmt: skip


def not_authorised(what: str, operations: list[str], resource: str, config: Mapping[str, Any],
                   setting: str | None = None) -> str:  # fmt: skip
    """The one line for a missing ACL: what is refused and which ACL to grant to whom."""
    verbs = " and ".join(op.lower() for op in operations)
    named = f" ({setting})" if setting else ""
    return (f"not authorised to {verbs} {what}{named}: grant {' and '.join(operations)} on "
            f"{resource} to {principal(config)} (README, Secured Kafka)")  # fmt: skip


#: Exit status of a controller the broker refuses (at start-up, or an input at first use).
EXIT_REFUSED: Final = 3


def stop_if_refused(error: ConfluentKafkaError, topic: str, setting: str | None,
                    config: Mapping[str, Any]) -> None:  # fmt: skip
    """End the process at once, with one line, if an input's error is a refusal.

    Not a dead letter: it is no message, and the input's offsets stay at the last
    snapshot, so the next start reads from there. At once, as ``recovery.stop_stale``:
    nothing more is written.
    """
    line = refusal(error, config)
    if error.code() == ConfluentKafkaError.TOPIC_AUTHORIZATION_FAILED:
        line = not_authorised(f"topic {topic!r}", ["Read"], f"Topic:{topic}", config, setting)
    elif error.code() == ConfluentKafkaError.GROUP_AUTHORIZATION_FAILED:
        group = config.get("group.id", "(unset)")
        line = not_authorised(f"consumer group {group!r}", ["Describe"], f"Group:{group}", config)
    if line is None:
        return
    logging.getLogger("dataflow.controller").error(f"controller stops: {line}")
    for handler in logging.getLogger("dataflow").handlers:
        handler.flush()
    sys.stderr.flush()
    os._exit(EXIT_REFUSED)


def _topic_needs(settings: Settings) -> list[tuple[str, str, tuple[str, ...]]]:
    """Each topic, the variable naming it, and what the controller does with it (ACL operations)."""
    topics = settings.topics
    read, write = "Read", "Write"
    return [("INSTRUCTION_TOPIC", topics.instructions, (read,)),
            ("REPORT_TOPIC", topics.reports, (read, write)),  # deadline markers
            ("COMMAND_TOPIC", topics.commands, (read, write)),  # read back
            ("SYNC_TOPIC", topics.sync, (read, write)),  # read back
            ("DEAD_LETTER_TOPIC", topics.dead_letters, (write,))]  # fmt: skip


def preflight(settings: Settings) -> None:
    """Fail fast, with a clear message, unless the broker answers and the topics exist.

    Missing topics are created when ``CREATE_TOPICS`` is on; otherwise listed in
    the error. Never hangs: every call has a deadline of ``STARTUP_TIMEOUT_S``. A
    refused login or an untrusted certificate stops it at once (``refusal``), and so
    does a missing ACL on a topic or a reader's group (``not_authorised``).
    """
    config = client_config(settings)
    deadline = time.monotonic() + settings.startup_timeout_s
    errors: list[ConfluentKafkaError] = []
    admin_config = {**config, "socket.connection.setup.timeout.ms": "5000",
                    "error_cb": errors.append}  # fmt: skip
    try:
        admin = AdminClient(admin_config)
    except KafkaException as error:  # a file that cannot be read, a key that cannot be decrypted
        raise StartupError(unusable(error.args[0], config)) from None
    metadata = None
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        try:
            metadata = admin.list_topics(timeout=max(0.5, min(1.0, deadline - time.monotonic())))
            break
        except KafkaException as error:
            last_error = error
            time.sleep(0.2)
        finally:
            admin.poll(0)  # serves librdkafka's queued log lines to CLIENT_LOG, and errors
        for refused in filter(None, (refusal(error, config) for error in errors)):
            raise StartupError(refused)
    if metadata is None:
        raise StartupError(
            f"Kafka brokers {settings.brokers} unreachable for {settings.startup_timeout_s:g}s"
            f" (KAFKA_BOOTSTRAP_SERVERS); last error: {errors[-1].str() if errors else last_error}"
        )
    _check_authorised(settings, admin, config)
    missing = [t for t in settings.topics.all() if t not in metadata.topics]
    if not missing:
        return
    if not settings.create_topics:
        raise StartupError(f"topics missing and CREATE_TOPICS is off: {missing}")
    new = [NewTopic(t, settings.topic_partitions, settings.topic_replication) for t in missing]
    futures = admin.create_topics(new, operation_timeout=settings.startup_timeout_s)
    for topic, future in futures.items():
        try:
            future.result(timeout=settings.startup_timeout_s)
            log.info("created topic", extra={"fields": {"topic": topic}})
        except KafkaException as error:
            if error.args[0].code() != ConfluentKafkaError.TOPIC_ALREADY_EXISTS:
                raise StartupError(f"cannot create topic {topic!r}: {error}") from error


def _check_authorised(settings: Settings, admin: AdminClient, config: Mapping[str, Any]) -> None:
    """Raise ``StartupError`` for the first topic or group the controller may not use.

    Every topic is described by name: that tells a missing topic from a refused one (a
    broker lists only what its client may describe) and, unlike a metadata lookup by
    name, never makes a broker that creates topics on first use create one with its
    defaults before ``CREATE_TOPICS`` could. A topic's authorised operations must
    include the controller's. Only a refusal stops the start: other errors of a broker
    still settling are left to the first use; a broker that does not answer within
    ``STARTUP_TIMEOUT_S`` is a ``StartupError`` (not a traceback).
    """
    try:
        _check_topics(settings, admin, config)
        _check_groups(settings, admin, config)
    except (KafkaException, concurrent.futures.TimeoutError) as error:
        raise StartupError(f"cannot check what the broker lets the controller do: "
                           f"{error!r}") from None  # fmt: skip


def _check_topics(settings: Settings, admin: AdminClient, config: Mapping[str, Any]) -> None:
    timeout = settings.startup_timeout_s
    needs = _topic_needs(settings)
    names = list(dict.fromkeys(topic for _, topic, _ in needs))
    described = admin.describe_topics(TopicCollection(names), include_authorized_operations=True)
    for setting, topic, operations in needs:
        try:
            allowed = described[topic].result(timeout=timeout).authorized_operations
        except KafkaException as error:
            code = error.args[0].code()
            if code == ConfluentKafkaError.UNKNOWN_TOPIC_OR_PART:
                continue  # missing: created, or reported missing, by ``preflight``
            if code == ConfluentKafkaError.TOPIC_AUTHORIZATION_FAILED:  # not even visible
                raise StartupError(not_authorised(
                    f"topic {topic!r}", list(operations), f"Topic:{topic}",
                    config, setting)) from None  # fmt: skip
            continue  # a broker still settling (a leader, a coordinator): its use will tell
        names_allowed = {op.name.title() for op in allowed or []}
        lacking = [op for op in operations if allowed is not None and op not in names_allowed]
        if lacking:
            raise StartupError(not_authorised(f"topic {topic!r}", lacking,
                                              f"Topic:{topic}", config, setting))  # fmt: skip


def _check_groups(settings: Settings, admin: AdminClient, config: Mapping[str, Any]) -> None:
    groups = [consumer_group(settings.transactional_id, reader) for reader in READERS]
    for group, future in admin.describe_consumer_groups(groups).items():
        try:
            future.result(timeout=settings.startup_timeout_s)
        except KafkaException as error:
            if error.args[0].code() == ConfluentKafkaError.GROUP_AUTHORIZATION_FAILED:
                raise StartupError(not_authorised(
                    f"consumer group {group!r}", ["Describe"],
                    f"Group:{group} (or the prefix {settings.transactional_id}.)", config,
                )) from None  # fmt: skip
            # Anything else (NOT_COORDINATOR, COORDINATOR_LOAD_IN_PROGRESS: a broker that
            # just started) is no refusal: the readers look the coordinator up again.


def end_offset(
    consumer: Consumer, tp: tuple[str, int], timeout: float, failure: type[Exception]
) -> int:
    """The high watermark of ``tp``.

    Retried for ``timeout`` s while a new topic elects its leader, then ``failure`` is raised.
    """
    deadline = time.monotonic() + timeout
    while True:
        try:
            return int(consumer.get_watermark_offsets(TopicPartition(*tp), timeout,
                                                      cached=False)[1])  # fmt: skip
        except KafkaException as error:
            if time.monotonic() > deadline:
                raise failure(
                    f"cannot find the end of {tp} within {timeout:g}s: {error}"
                ) from error
            time.sleep(0.2)


def read_to_ends(
    consumer: Consumer, start: Mapping[tuple[str, int], int], ends: Mapping[tuple[str, int], int],
    timeout: float, failure: type[Exception],
) -> Iterator[Message]:  # fmt: skip
    """Every message of each partition from ``start`` up to its ``ends`` (exclusive).

    ``consumer`` has ``enable.partition.eof``; it is assigned here. A partition is done at
    its end; ``failure`` is raised on a consumer error or after ``timeout`` s.
    """
    todo = {tp for tp, end in ends.items() if start[tp] < end or start[tp] < 0}
    consumer.assign([TopicPartition(t, p, start[(t, p)]) for t, p in sorted(todo)])
    deadline = time.monotonic() + timeout
    try:
        while todo:
            if time.monotonic() > deadline:
                raise failure(f"reading {sorted(todo)} to the end took over {timeout:g}s")
            message = consumer.poll(0.1)
            if message is None:
                continue
            tp = (str(message.topic()), int(message.partition() or 0))
            error = message.error()
            if error is not None and error.code() != ConfluentKafkaError._PARTITION_EOF:
                raise failure(f"reading {tp}: {error}")
            offset = int(message.offset() or 0)
            if error is None and offset < ends[tp]:
                yield message
            if offset + (error is None) >= ends[tp]:
                todo.discard(tp)
    finally:
        consumer.unassign()


def dead_letter(
    value: bytes | None,
    key: bytes | None,
    reason: str,
    stage: str,
    topic: str | None,
    partition: int | None,
    offset: int | None,
    headers: Iterable[tuple[str, bytes]] = (),
) -> OutMessage:
    """A dead letter: the original bytes and key, the reason and origin in headers."""
    return OutMessage(
        key=key,
        value=value or b"",
        headers=[
            *headers,
            (DLQ_REASON, reason.encode()),
            (DLQ_STAGE, stage.encode()),
            (DLQ_SOURCE_TOPIC, (topic or "").encode()),
            (DLQ_SOURCE_PARTITION, str(-1 if partition is None else partition).encode()),
            (DLQ_SOURCE_OFFSET, str(-1 if offset is None else offset).encode()),
        ],
    )
