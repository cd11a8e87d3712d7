"""Every environment variable the controller reads, each defined once (``Setting``).

Role: the catalogue. Each variable's default, parser (with its validation) and
README row are one ``Setting`` here; the defaults the domain owns
(``MachineConfig``'s, ``Profile``'s, a dialect's) are referred to, not copied.
``dataflow.adapters.config`` reads them into ``Settings``; the README's
configuration table and an empty environment are checked against ``VARIABLES``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any, Final

import msgspec

from dataflow.adapters.settings import (
    Derived,
    Setting,
    choice,
    flag,
    integer,
    json_as,
    names,
    real,
    secret,
    shown,
    text,
)
from dataflow.adapters.wire import ENCODINGS
from dataflow.domain import dialects, optimizer
from dataflow.domain.config import PAUSE_ENGINE, MachineConfig
from dataflow.domain.messages import DEFAULT_MAX_MESSAGE_BYTES, Params
from dataflow.domain.strategy import STRATEGIES


def machine_default(name: str) -> Any:
    """``MachineConfig``'s own default for a field: the domain defines it, once."""
    return next(f.default for f in msgspec.structs.fields(MachineConfig) if f.name == name)


def _profile_default(name: str) -> Any:
    return next(f.default for f in msgspec.structs.fields(optimizer.Profile) if f.name == name)


def _per_dialect(what: Callable[[dialects.Dialect], object]) -> str:
    """A default that each dialect sets, as the README's table shows it."""
    found: dict[str, list[str]] = {}
    for dialect in dialects.REGISTRY.values():
        found.setdefault(str(what(dialect)), []).append(dialect.name)
    if len(found) == 1:
        return next(iter(found))
    return " / ".join(f"{value} ({', '.join(each)})" for value, each in found.items())


def _topic(role: dialects.TopicRole) -> Derived[str]:
    return Derived(_per_dialect(lambda d: d.topics[role]), lambda d: d.topics[role])


def _of_profile(attribute: str) -> Derived[Any]:
    shown = f"the profile's: {_per_dialect(lambda d: getattr(d.profile, attribute))}"
    return Derived(shown, lambda profile: getattr(profile, attribute))


def _of_profile_as_default(attribute: str) -> Derived[Any]:
    """The profile's value, documented as ``Profile``'s default (no dialect's profile sets it)."""
    return Derived(shown(_profile_default(attribute)), lambda profile: getattr(profile, attribute))


def _input_start(raw: str) -> str | int:
    if raw in ("end", "beginning"):
        return raw
    try:
        return int(raw)
    except ValueError:
        pass
    try:
        when = datetime.fromisoformat(raw)
    except ValueError:
        raise ValueError(f"{raw!r} is not `end`, `beginning`, an ISO 8601 time or "
                         "milliseconds since the epoch") from None  # fmt: skip
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return int(when.timestamp() * 1000)


def _params(raw: str) -> Params:
    """A JSON object of numbers, in its order."""
    try:
        return tuple(json_as(dict[str, int | float])(raw).items())
    except ValueError as error:
        if str(error).startswith("not valid JSON"):
            raise
        raise ValueError("must be a JSON object of numbers") from None


def _initial_params(profile: optimizer.Profile) -> Params:
    """The starting point of the profile's own dialect; of a custom space, its middle."""
    for dialect in dialects.REGISTRY.values():
        default = dialect.initial_params
        if dialect.profile.name == profile.name and sorted(n for n, _ in default) == sorted(
            profile.names
        ):
            return default
    return tuple((d.name, _middle(d)) for d in profile.dimensions)


def _middle(dimension: optimizer.Dimension) -> float | int:
    if dimension.kind == "Integer":
        return (int(dimension.low) + int(dimension.high)) // 2
    return (float(dimension.low) + float(dimension.high)) / 2


def _avro_speakers() -> str:
    return ", ".join(d.name for d in dialects.REGISTRY.values() if "avro" in d.encodings)


def _security(name: str, help_: str) -> Setting[str]:
    return Setting(name, text, None, help_)


# --------------------------------------------------------------------------- the settings

# fmt: off
BOOTSTRAP = Setting("KAFKA_BOOTSTRAP_SERVERS", text, "kafka:29092",
                    "Kafka bootstrap servers, comma-separated.")
DIALECT = Setting("CONTROLLER_DIALECT", choice(lambda: dialects.DIALECTS), dialects.DIALECTS[0],
                  "Wire dialect of the other services: "
                  + ", ".join(f"`{d.name}` ({d.summary})" for d in dialects.REGISTRY.values())
                  + ".")
ENCODING = Setting("WIRE_ENCODING", choice(lambda: ENCODINGS), "json",
                   "`json`, or `avro`: schemaless Avro with the original RTCEF schemas and keys "
                   f"(dialects that speak it: {_avro_speakers()}).")
INSTRUCTION_TOPIC = Setting("INSTRUCTION_TOPIC", text, _topic("instructions"),
                            "Observer instructions (input).")
REPORT_TOPIC = Setting("REPORT_TOPIC", text, _topic("reports"), "ModelFactory reports (input).")
COMMAND_TOPIC = Setting("COMMAND_TOPIC", text, _topic("commands"),
                        "ModelFactory commands (output).")
SYNC_TOPIC = Setting("SYNC_TOPIC", text, _topic("sync"), "Engine pause/play messages (output).")
DEAD_LETTER_TOPIC = Setting("DEAD_LETTER_TOPIC", text, "controller_dead_letters",
                            "Undecodable or rejected input, with the reason in headers (output).")
INPUT_START: Setting[str | int] = Setting("INPUT_START", _input_start, "end",
    "Where a controller without recovery state starts reading its two input topics: "
    "`end` (only what is sent from now on, as a new production consumer), "
    "`beginning`, or a time (ISO 8601, or milliseconds since the epoch). Recorded "
    "in the recovery directory at its first start; ignored once it holds state.")
TRANSACTIONAL_ID = Setting("KAFKA_TRANSACTIONAL_ID", text,
    Derived("rtcef-controller.<COMMAND_TOPIC>.<SYNC_TOPIC>",
            lambda topics: f"rtcef-controller.{topics.commands}.{topics.sync}"),
    "Transactional id of the output producer: a controller started with it fences "
    "every earlier process that had it (one per deployment; ACLs name it).")
PROFILE: Setting[str] = Setting("OPTIMISER_PROFILE", choice(lambda: tuple(dialects.PROFILES)),
    Derived("the dialect's profile (of the same name)", lambda dialect: dialect.profile.name),
    "Search space, budget and acquisition: "
    + "; ".join(f"`{p.name}` ({', '.join(p.names)}; {p.budget} steps, {p.acquisition}"
                f"{f', keeps {p.keep}' if p.keep else ''})"
                for p in dialects.PROFILES.values()) + ".")
STRATEGY = Setting("OPTIMISER_STRATEGY", choice(lambda: tuple(STRATEGIES)),
    Derived(f"the profile's ({_profile_default('strategy')})", lambda p: p.strategy),
    "How the next point is chosen: "
    + ", ".join(f"`{s.name}` ({s.summary})" for s in STRATEGIES.values()) + ".")
SPACE = Setting("OPTIMISER_SPACE", json_as(tuple[optimizer.Dimension, ...]),
    Derived("the profile's", lambda profile: profile.dimensions),
    'JSON list replacing the space: [{"name": "pMin", "kind": "Real", "low": 0.001, '
    '"high": 0.1}, ...].')
BUDGET = Setting("OPTIMISER_BUDGET", integer(1), _of_profile("budget"),
                 "opt_step commands per round.")
INITIAL_POINTS = Setting("OPTIMISER_INITIAL_POINTS", integer(1),
    Derived(_per_dialect(lambda d: d.profile.n_initial), lambda p: p.n_initial),
    "Random proposals before the GP takes over.")
KEEP = Setting("OPTIMISER_KEEP", integer(0), _of_profile("keep"),
               "Observations of a round carried into the next round.")
ROUND_BUDGET_S = Setting("ROUND_BUDGET_S", real(0.001), _of_profile_as_default("round_budget_s"),
    "Factory seconds an OPTIMIZE round may spend on its steps and finalised model, "
    "learned from the records' timestamps; a round chooses among the points it can "
    "afford and finalises before a step it expects to overrun. Empty: no time limit "
    "(only OPTIMISER_BUDGET).")
SEED = Setting("OPTIMISER_SEED", integer(0, below=2**32), _of_profile_as_default("seed"),
    "Mixed into every proposal's random state (with the session key, round and "
    "observation count): replays stay exact whatever it is; another value, another "
    "sequence of proposals (for repeated experiments).")
PAUSE = Setting("PAUSE_ENGINE", choice(lambda: PAUSE_ENGINE), machine_default("pause_engine"),
    "When an OPTIMIZE round pauses the engine: `round` (from its start, as both "
    "originals) or `finalise` (only while the finalised model is built: the engine "
    "forecasts on with the old model during the steps). RETRAIN always pauses at once.")
INITIAL_PARAMS = Setting("INITIAL_PARAMS", _params, Derived("the profile's", _initial_params),
    'JSON object: the current best parameters before any round, e.g. '
    '{"pMin": 0.05, "gamma": 0.001}.')
WARM_START_FILE = Setting("WARM_START_FILE", text, None,
    "Offline optimisation JSON (dimensions, x_iters, func_vals) whose newest observations "
    "warm-start the first round.")
SESSION_KEYS = Setting("SESSION_KEYS", names, None,
    "Comma-separated model ids for multi-model mode (one session per model_id); empty: one "
    "session for everything. Never reorder a running set.")
REPORT_TIMEOUT_S = Setting("REPORT_TIMEOUT_S", real(0.001),
                           machine_default("report_timeout_ms") / 1000,
                           "Seconds to wait for a report before resending.")
MAX_RETRIES = Setting("MAX_RETRIES", integer(0), machine_default("max_retries"),
                      "Resends of a failed or unanswered command before aborting.")
TICK_INTERVAL_S = Setting("TICK_INTERVAL_S", real(0.01), 5.0,
    "Seconds between deadline checks: how late a missed deadline can be noticed. "
    "No message waits for it.")
INPUT_IDLE_WAIT_MS = Setting("INPUT_IDLE_WAIT_MS", real(0.1), 10.0,
    "How long an input that found nothing sleeps before it looks again: the most an "
    "idle controller adds to a hop, and what keeps it near 0 % CPU.")
MIN_GAP = Setting("INSTRUCTION_MIN_GAP", integer(0), machine_default("instruction_min_gap"),
    "An OPTIMIZE or RETRAIN less than this after an admitted instruction of at least its "
    "rank (OPTIMIZE > RETRAIN), in the instructions' own timestamp units, is coalesced "
    "(dead-lettered); 0: only instructions no newer than that one are.")
MAX_JUMP = Setting("INSTRUCTION_MAX_JUMP", integer(0), machine_default("instruction_max_jump"),
    "An instruction stamped more than this past the newest admitted OPTIMIZE or RETRAIN, in "
    "the instructions' own timestamp units, is implausible (dead-lettered): its round's "
    "commands would carry that stream time, and the original factory holds every command "
    "stamped past its newest data set. The default is two years in milliseconds (twice the "
    "largest gap of the recorded runs); for a stream stamped in seconds, e.g. 63072000. 0: "
    "no limit.")
MAX_TIMESTAMP: Setting[int] = Setting("INSTRUCTION_MAX_TIMESTAMP", integer(0),
    Derived(f"the dialect's: {_per_dialect(lambda d: d.latest_timestamp)} (2100 in ms)",
            lambda dialect: dialect.latest_timestamp),
    "An instruction stamped later than this (or below 0) is implausible (dead-lettered); "
    "for a stream stamped in seconds, e.g. 4102444800 (2100).")
CLOCK_SKEW = Setting("REPORT_CLOCK_SKEW_MS", integer(0), machine_default("report_clock_skew_ms"),
    "A report or deadline marker stamped in the report topic more than this many ms "
    "before the record that made the controller send its command is forged "
    "(dead-lettered, not taken as the answer): the most the producers' clocks may "
    "disagree (none with LogAppendTime topics).")
MAX_QUEUED = Setting("MAX_QUEUED_INSTRUCTIONS", integer(1), machine_default("max_queued"),
    "Admitted instructions waiting for their round; more are dead-lettered (a safety "
    "valve outside the replay guarantee: keep it unreached with INSTRUCTION_MIN_GAP).")
MAX_MESSAGE_BYTES = Setting("MAX_MESSAGE_BYTES", integer(1), DEFAULT_MAX_MESSAGE_BYTES,
                            "Larger input messages go to the dead-letter topic.")
CREATE_TOPICS = Setting("CREATE_TOPICS", flag, True,
                        "Create missing topics at start (else: exit with an error).")
PARTITIONS = Setting("TOPIC_PARTITIONS", integer(1), 1,
                     "Partitions of topics the controller creates.")
REPLICATION = Setting("TOPIC_REPLICATION", integer(1), 1,
                      "Replication factor of topics the controller creates.")
STARTUP_TIMEOUT_S = Setting("STARTUP_TIMEOUT_S", real(0.1), 30.0,
                            "Exit non-zero if the broker is unreachable this long.")
#: The longest ``DELIVERY_TIMEOUT_S``: the output transaction's timeout follows it (plus
#: the outbox's 10 s commit period, ``kafka_log.transaction_timeout_ms``) and must stay
#: within a broker's default ``transaction.max.timeout.ms`` (15 minutes).
MAX_DELIVERY_TIMEOUT_S: Final = 890.0
DELIVERY_TIMEOUT_S = Setting("DELIVERY_TIMEOUT_S", real(0.1, MAX_DELIVERY_TIMEOUT_S), 30.0,
    "Seconds to wait for the broker to acknowledge output before crashing (to replay): "
    "how long a broker outage is ridden out. At most "
    f"{MAX_DELIVERY_TIMEOUT_S:g}: the output transaction's timeout follows it (10 s more, "
    "and at least 60), and brokers refuse one over 15 minutes (their "
    "transaction.max.timeout.ms). A process that dies and is not restarted leaves its "
    "open transaction holding up read_committed readers for as long.")
#: librdkafka's name for each security setting.
SECURITY: Final[Mapping[Setting[Any], str]] = {
    _security("KAFKA_SECURITY_PROTOCOL", "librdkafka security.protocol (e.g. SASL_SSL)."):
        "security.protocol",
    _security("KAFKA_SASL_MECHANISM", "librdkafka sasl.mechanism (e.g. SCRAM-SHA-512)."):
        "sasl.mechanism",
    _security("KAFKA_SASL_USERNAME", "SASL user name."): "sasl.username",
    Setting("KAFKA_SASL_PASSWORD", secret, None, "SASL password (never logged).", secret=True):
        "sasl.password",
    _security("KAFKA_SSL_CA_LOCATION", "CA certificate file."): "ssl.ca.location",
    _security("KAFKA_SSL_CERTIFICATE_LOCATION", "Client certificate file."):
        "ssl.certificate.location",
    _security("KAFKA_SSL_KEY_LOCATION", "Client key file."): "ssl.key.location",
    Setting("KAFKA_SSL_KEY_PASSWORD", secret, None, "Client key password (never logged).",
            secret=True): "ssl.key.password",
}
LOG_LEVEL = Setting("LOG_LEVEL", choice(lambda: ("DEBUG", "INFO", "WARNING", "ERROR")), "INFO",
                    "DEBUG, INFO, WARNING or ERROR.")
LOG_FORMAT = Setting("LOG_FORMAT", choice(lambda: ("json", "text")), "json",
                     "`json` (one object per line) or `text`.")

#: Every variable, in the README's order: the README's configuration table is checked
#: against it, and an empty environment against each one's documented default.
VARIABLES: Final[tuple[Setting[Any], ...]] = (
    BOOTSTRAP, DIALECT, ENCODING, INSTRUCTION_TOPIC, REPORT_TOPIC, COMMAND_TOPIC, SYNC_TOPIC,
    DEAD_LETTER_TOPIC, INPUT_START, TRANSACTIONAL_ID, PROFILE, STRATEGY, SPACE, BUDGET,
    INITIAL_POINTS, KEEP, ROUND_BUDGET_S, SEED, PAUSE, INITIAL_PARAMS, WARM_START_FILE,
    SESSION_KEYS, REPORT_TIMEOUT_S, MAX_RETRIES, TICK_INTERVAL_S, INPUT_IDLE_WAIT_MS, MIN_GAP,
    MAX_JUMP, MAX_TIMESTAMP, CLOCK_SKEW, MAX_QUEUED, MAX_MESSAGE_BYTES, CREATE_TOPICS,
    PARTITIONS, REPLICATION, STARTUP_TIMEOUT_S, DELIVERY_TIMEOUT_S, *SECURITY, LOG_LEVEL,
    LOG_FORMAT,
)
#: The variable naming each of a dialect's topics.
TOPIC_VARIABLES: Final[Mapping[dialects.TopicRole, str]] = {
    "instructions": INSTRUCTION_TOPIC.name, "reports": REPORT_TOPIC.name,
    "commands": COMMAND_TOPIC.name, "sync": SYNC_TOPIC.name,
}
# fmt: on
