"""Settings: every environment variable the controller reads, named once, validated at start.

Role: the only place that reads the environment. ``Settings.from_env()`` collects
*every* problem before raising one ``SettingsError`` that lists them all, so an
operator fixes a deployment in one go. Secrets are ``Secret`` values whose
``repr`` is redacted. Bytewax's own ``BYTEWAX_*`` variables (recovery directory,
snapshot interval, workers...) stay Bytewax's and are not read here.

The table ``VARIABLES`` is the documentation: the README's configuration table
is checked against it by a test.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import cached_property
from pathlib import Path
from typing import Any, Final

import msgspec

from dataflow.adapters.wire import ENCODINGS, Codec, Encoding
from dataflow.domain import dialects, machine, optimizer
from dataflow.domain.config import PAUSE_ENGINE, Baseline
from dataflow.domain.errors import ConfigError
from dataflow.domain.messages import DEFAULT_MAX_MESSAGE_BYTES, Params
from dataflow.domain.strategy import STRATEGIES


class SettingsError(ValueError):
    """The environment does not describe a runnable controller; ``problems`` lists why."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("invalid settings:\n  - " + "\n  - ".join(problems))
        self.problems = problems


class Secret:
    """A string that never shows itself in logs, reprs or tracebacks."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        """The secret itself, for the Kafka client configuration only."""
        return self._value

    def __repr__(self) -> str:
        return "Secret('********')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


@dataclass(frozen=True)
class Variable:
    """One environment variable: its name, default (as text) and meaning."""

    name: str
    default: str | None
    help: str
    secret: bool = False


#: The variable naming each of a dialect's topics.
TOPIC_VARIABLES: Final[Mapping[dialects.TopicRole, str]] = {
    "instructions": "INSTRUCTION_TOPIC",
    "reports": "REPORT_TOPIC",
    "commands": "COMMAND_TOPIC",
    "sync": "SYNC_TOPIC",
}


def _per_dialect(what: Callable[[dialects.Dialect], object]) -> str:
    """A default that each dialect sets, as the README's table shows it."""
    names: dict[str, list[str]] = {}
    for dialect in dialects.REGISTRY.values():
        names.setdefault(str(what(dialect)), []).append(dialect.name)
    if len(names) == 1:
        return next(iter(names))
    return " / ".join(f"{value} ({', '.join(each)})" for value, each in names.items())


def _avro_speakers() -> str:
    return ", ".join(d.name for d in dialects.REGISTRY.values() if "avro" in d.encodings)


VARIABLES: Final[tuple[Variable, ...]] = (
    Variable("KAFKA_BOOTSTRAP_SERVERS", "kafka:29092", "Kafka bootstrap servers, comma-separated."),
    Variable("CONTROLLER_DIALECT", dialects.DIALECTS[0],
             "Wire dialect of the other services: "
             + ", ".join(f"`{d.name}` ({d.summary})" for d in dialects.REGISTRY.values()) + "."),
    Variable("WIRE_ENCODING", "json",
             "`json`, or `avro`: schemaless Avro with the original RTCEF schemas and keys "
             f"(dialects that speak it: {_avro_speakers()})."),
    Variable("INSTRUCTION_TOPIC", _per_dialect(lambda d: d.topics["instructions"]),
             "Observer instructions (input)."),
    Variable("REPORT_TOPIC", _per_dialect(lambda d: d.topics["reports"]),
             "ModelFactory reports (input)."),
    Variable("COMMAND_TOPIC", _per_dialect(lambda d: d.topics["commands"]),
             "ModelFactory commands (output)."),
    Variable("SYNC_TOPIC", _per_dialect(lambda d: d.topics["sync"]),
             "Engine pause/play messages (output)."),
    Variable("DEAD_LETTER_TOPIC", "controller_dead_letters",
             "Undecodable or rejected input, with the reason in headers (output)."),
    Variable("INPUT_START", "end",
             "Where a controller without recovery state starts reading its two input topics: "
             "`end` (only what is sent from now on, as a new production consumer), "
             "`beginning`, or a time (ISO 8601, or milliseconds since the epoch). Recorded "
             "in the recovery directory at its first start; ignored once it holds state."),
    Variable("KAFKA_TRANSACTIONAL_ID", "rtcef-controller.<COMMAND_TOPIC>.<SYNC_TOPIC>",
             "Transactional id of the output producer: a controller started with it fences "
             "every earlier process that had it (one per deployment; ACLs name it)."),
    Variable("OPTIMISER_PROFILE", "the dialect's profile (of the same name)",
             "Search space, budget and acquisition: "
             + "; ".join(f"`{p.name}` ({', '.join(p.names)}; {p.budget} steps, {p.acquisition}"
                         f"{f', keeps {p.keep}' if p.keep else ''})"
                         for p in dialects.PROFILES.values()) + "."),
    Variable("OPTIMISER_STRATEGY", "the profile's (gp)",
             "How the next point is chosen: "
             + ", ".join(f"`{s.name}` ({s.summary})" for s in STRATEGIES.values()) + "."),
    Variable("OPTIMISER_SPACE", "the profile's",
             'JSON list replacing the space: [{"name": "pMin", "kind": "Real", "low": 0.001, '
             '"high": 0.1}, ...].'),
    Variable("OPTIMISER_BUDGET", f"the profile's: {_per_dialect(lambda d: d.profile.budget)}",
             "opt_step commands per round."),
    Variable("OPTIMISER_INITIAL_POINTS", _per_dialect(lambda d: d.profile.n_initial),
             "Random proposals before the GP takes over."),
    Variable("OPTIMISER_KEEP", f"the profile's: {_per_dialect(lambda d: d.profile.keep)}",
             "Observations of a round carried into the next round."),
    Variable("ROUND_BUDGET_S", "",
             "Factory seconds an OPTIMIZE round may spend on its steps and finalised model, "
             "learned from the records' timestamps; a round chooses among the points it can "
             "afford and finalises before a step it expects to overrun. Empty: no time limit "
             "(only OPTIMISER_BUDGET)."),
    Variable("OPTIMISER_SEED", "0",
             "Mixed into every proposal's random state (with the session key, round and "
             "observation count): replays stay exact whatever it is; another value, another "
             "sequence of proposals (for repeated experiments)."),
    Variable("PAUSE_ENGINE", "round",
             "When an OPTIMIZE round pauses the engine: `round` (from its start, as both "
             "originals) or `finalise` (only while the finalised model is built: the engine "
             "forecasts on with the old model during the steps). RETRAIN always pauses at once."),
    Variable("INITIAL_PARAMS", "the profile's",
             'JSON object: the current best parameters before any round, e.g. '
             '{"pMin": 0.05, "gamma": 0.001}.'),
    Variable("WARM_START_FILE", "", "Offline optimisation JSON (dimensions, x_iters, func_vals) "
             "whose newest observations warm-start the first round."),
    Variable("SESSION_KEYS", "", "Comma-separated model ids for multi-model mode (one session "
             "per model_id); empty: one session for everything. Never reorder a running set."),
    Variable("REPORT_TIMEOUT_S", "600", "Seconds to wait for a report before resending."),
    Variable("MAX_RETRIES", "2", "Resends of a failed or unanswered command before aborting."),
    Variable("TICK_INTERVAL_S", "5",
             "Seconds between deadline checks: how late a missed deadline can be noticed. "
             "No message waits for it."),
    Variable("INPUT_IDLE_WAIT_MS", "10",
             "How long an input that found nothing sleeps before it looks again: the most an "
             "idle controller adds to a hop, and what keeps it near 0 % CPU."),
    Variable("INSTRUCTION_MIN_GAP", "0",
             "An OPTIMIZE or RETRAIN less than this after an admitted instruction of at least its "
             "rank (OPTIMIZE > RETRAIN), in the instructions' own timestamp units, is coalesced "
             "(dead-lettered); 0: only instructions no newer than that one are."),
    Variable("MAX_QUEUED_INSTRUCTIONS", "1000",
             "Admitted instructions waiting for their round; more are dead-lettered (a safety "
             "valve outside the replay guarantee: keep it unreached with INSTRUCTION_MIN_GAP)."),
    Variable("MAX_MESSAGE_BYTES", str(DEFAULT_MAX_MESSAGE_BYTES),
             "Larger input messages go to the dead-letter topic."),
    Variable("CREATE_TOPICS", "true", "Create missing topics at start (else: exit with an error)."),
    Variable("TOPIC_PARTITIONS", "1", "Partitions of topics the controller creates."),
    Variable("TOPIC_REPLICATION", "1", "Replication factor of topics the controller creates."),
    Variable("STARTUP_TIMEOUT_S", "30", "Exit non-zero if the broker is unreachable this long."),
    Variable("DELIVERY_TIMEOUT_S", "30",
             "Seconds to wait for the broker to acknowledge output before crashing (to replay)."),
    Variable("KAFKA_SECURITY_PROTOCOL", "", "librdkafka security.protocol (e.g. SASL_SSL)."),
    Variable("KAFKA_SASL_MECHANISM", "", "librdkafka sasl.mechanism (e.g. SCRAM-SHA-512)."),
    Variable("KAFKA_SASL_USERNAME", "", "SASL user name."),
    Variable("KAFKA_SASL_PASSWORD", "", "SASL password (never logged).", secret=True),
    Variable("KAFKA_SSL_CA_LOCATION", "", "CA certificate file."),
    Variable("KAFKA_SSL_CERTIFICATE_LOCATION", "", "Client certificate file."),
    Variable("KAFKA_SSL_KEY_LOCATION", "", "Client key file."),
    Variable("KAFKA_SSL_KEY_PASSWORD", "", "Client key password (never logged).", secret=True),
    Variable("LOG_LEVEL", "INFO", "DEBUG, INFO, WARNING or ERROR."),
    Variable("LOG_FORMAT", "json", "`json` (one object per line) or `text`."),
)  # fmt: skip

_SECURITY: Final = {
    "KAFKA_SECURITY_PROTOCOL": "security.protocol",
    "KAFKA_SASL_MECHANISM": "sasl.mechanism",
    "KAFKA_SASL_USERNAME": "sasl.username",
    "KAFKA_SASL_PASSWORD": "sasl.password",
    "KAFKA_SSL_CA_LOCATION": "ssl.ca.location",
    "KAFKA_SSL_CERTIFICATE_LOCATION": "ssl.certificate.location",
    "KAFKA_SSL_KEY_LOCATION": "ssl.key.location",
    "KAFKA_SSL_KEY_PASSWORD": "ssl.key.password",
}


@dataclass(frozen=True)
class Topics:
    """The five topics the controller reads and writes."""

    instructions: str
    reports: str
    commands: str
    sync: str
    dead_letters: str

    def all(self) -> tuple[str, ...]:
        """Every topic, inputs first."""
        return (self.instructions, self.reports, self.commands, self.sync, self.dead_letters)


@dataclass(frozen=True)
class Settings:
    """The controller's whole configuration, validated."""

    brokers: str
    topics: Topics
    machine: machine.MachineConfig
    encoding: Encoding
    tick_interval_s: float
    input_idle_wait_ms: float
    max_message_bytes: int
    create_topics: bool
    topic_partitions: int
    topic_replication: int
    startup_timeout_s: float
    delivery_timeout_s: float
    log_level: str
    log_format: str
    security: Mapping[str, str | Secret] = field(default_factory=dict)
    #: ``"end"``, ``"beginning"`` or a time in milliseconds since the epoch.
    input_start: str | int = "end"
    transactional_id: str = ""

    @property
    def dialect(self) -> str:
        """The wire dialect."""
        return self.machine.dialect

    @cached_property
    def codec(self) -> Codec:
        """Encoder and decoder of every topic's messages (built once)."""
        return Codec(self.dialect, self.encoding)

    def with_baseline(self, baseline: Baseline) -> Settings:
        """These settings, new sessions' counters starting at ``baseline``."""
        config = msgspec.structs.replace(self.machine, baseline=baseline)
        return dataclasses.replace(self, machine=config)

    def kafka_config(self) -> dict[str, str]:
        """Librdkafka settings shared by every client: brokers and security, secrets revealed."""
        config = {"bootstrap.servers": self.brokers}
        for key, value in self.security.items():
            config[key] = value.reveal() if isinstance(value, Secret) else value
        return config

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Read and validate every variable; raise ``SettingsError`` listing all problems."""
        env = os.environ if environ is None else environ
        return _Reader(env).settings()


class _Reader:
    """Collects problems while reading, so that all of them are reported at once."""

    def __init__(self, env: Mapping[str, str]) -> None:
        self.env = env
        self.problems: list[str] = []
        unknown = sorted(k for k in env if k.startswith(("OPTIMISER_", "CONTROLLER_"))
                         and k not in {v.name for v in VARIABLES})  # fmt: skip
        self.problems += [f"{name}: unknown variable (misspelt?)" for name in unknown]

    def text(self, name: str, default: str) -> str:
        return self.env.get(name, "").strip() or default

    def number(self, name: str, default: float, kind: Callable[[str], Any], low: float) -> Any:
        raw = self.env.get(name, "").strip()
        if not raw:
            return kind(str(default))
        try:
            value = kind(raw)
        except ValueError:
            self.problems.append(f"{name}: {raw!r} is not a valid {kind.__name__}")
            return kind(str(default))
        if value < low:
            self.problems.append(f"{name}: {value} must be at least {low}")
            return kind(str(default))
        return value

    def flag(self, name: str, default: bool) -> bool:
        raw = self.env.get(name, "").strip().lower()
        if not raw:
            return default
        if raw in ("1", "true", "yes", "on"):
            return True
        if raw in ("0", "false", "no", "off"):
            return False
        self.problems.append(f"{name}: {raw!r} is not a boolean (true/false)")
        return default

    def choice(self, name: str, default: str, options: tuple[str, ...]) -> str:
        """The variable's value if it is one of ``options``.

        Otherwise the problem is recorded and a valid option returned (the default,
        if it is one), so that reading the other variables goes on.
        """
        value = self.text(name, default)
        if value not in options:
            self.problems.append(f"{name}: {value!r} is not one of {list(options)}")
            return default if default in options else options[0]
        return value

    def json_value(self, name: str) -> Any:
        raw = self.env.get(name, "").strip()
        if not raw:
            return None
        try:
            return json.loads(raw)
        except ValueError as error:
            self.problems.append(f"{name}: not valid JSON ({error})")
            return None

    def profile(self, dialect: dialects.Dialect) -> optimizer.Profile:
        name = self.choice("OPTIMISER_PROFILE", dialect.profile.name, tuple(dialects.PROFILES))
        profile = dialects.PROFILES.get(name, dialect.profile)
        changes: dict[str, Any] = {}
        space = self.json_value("OPTIMISER_SPACE")
        if space is not None:
            try:
                changes["dimensions"] = msgspec.convert(space, tuple[optimizer.Dimension, ...])
            except msgspec.ValidationError as error:
                self.problems.append(f"OPTIMISER_SPACE: {error}")
        for variable, attribute in (("OPTIMISER_BUDGET", "budget"),
                                    ("OPTIMISER_INITIAL_POINTS", "n_initial"),
                                    ("OPTIMISER_KEEP", "keep")):  # fmt: skip
            if self.env.get(variable, "").strip():
                low = 0 if attribute == "keep" else 1
                changes[attribute] = self.number(variable, getattr(profile, attribute), int, low)
        if self.env.get("OPTIMISER_SEED", "").strip():
            seed = self.number("OPTIMISER_SEED", 0, int, 0)
            if seed >= 2**32:
                self.problems.append(f"OPTIMISER_SEED: {seed} must be below 2**32")
            else:
                changes["seed"] = seed
        if self.env.get("ROUND_BUDGET_S", "").strip():
            budget = self.number("ROUND_BUDGET_S", -1.0, float, 0.001)
            changes["round_budget_s"] = budget if budget > 0 else None
        if self.env.get("OPTIMISER_STRATEGY", "").strip():
            changes["strategy"] = self.choice("OPTIMISER_STRATEGY", profile.strategy,
                                              tuple(STRATEGIES))  # fmt: skip
        profile = msgspec.structs.replace(profile, **changes)
        try:
            profile.validate()
        except ConfigError as error:
            self.problems.append(f"OPTIMISER_*: {error}")
        return profile

    def initial_params(self, profile: optimizer.Profile) -> Params:
        value = self.json_value("INITIAL_PARAMS")
        if value is None:
            for dialect in dialects.REGISTRY.values():  # the starting point of its own profile
                default = dialect.initial_params
                if dialect.profile.name == profile.name and sorted(n for n, _ in default) == sorted(
                    profile.names
                ):
                    return default
            # A custom space: start from the middle of every axis.
            return tuple((d.name, _middle(d)) for d in profile.dimensions)
        if not isinstance(value, dict) or not all(
            isinstance(v, int | float) and not isinstance(v, bool) for v in value.values()
        ):
            self.problems.append("INITIAL_PARAMS: must be a JSON object of numbers")
            return ()
        return tuple(value.items())

    def warm_start(self, profile: optimizer.Profile) -> tuple[optimizer.Observation, ...]:
        path = self.text("WARM_START_FILE", "")
        if not path:
            return ()
        try:
            document = json.loads(Path(path).read_text())
            return optimizer.observations_from_warm_start(profile, document)
        except (OSError, ValueError) as error:
            self.problems.append(f"WARM_START_FILE: cannot read {path!r} ({error})")
        except ConfigError as error:
            self.problems.append(f"WARM_START_FILE: {error}")
        return ()

    def security(self) -> dict[str, str | Secret]:
        found: dict[str, str | Secret] = {}
        secret_names = {v.name for v in VARIABLES if v.secret}
        for variable, key in _SECURITY.items():
            value = self.env.get(variable, "").strip()
            if value:
                found[key] = Secret(value) if variable in secret_names else value
        return found

    def settings(self) -> Settings:
        dialect = dialects.get(
            self.choice("CONTROLLER_DIALECT", dialects.DIALECTS[0], dialects.DIALECTS)
        )
        encoding: Encoding = self.choice("WIRE_ENCODING", "json", ENCODINGS)  # type: ignore[assignment]
        if encoding not in dialect.encodings:
            speakers = [d.name for d in dialects.REGISTRY.values() if encoding in d.encodings]
            self.problems.append(f"WIRE_ENCODING: {encoding} is not spoken by the "
                                 f"{dialect.name} dialect; set CONTROLLER_DIALECT to one of "
                                 f"{speakers}")  # fmt: skip
        named = {role: self.text(variable, dialect.topics[role])
                 for role, variable in TOPIC_VARIABLES.items()}  # fmt: skip
        topics = Topics(
            instructions=named["instructions"],
            reports=named["reports"],
            commands=named["commands"],
            sync=named["sync"],
            dead_letters=self.text("DEAD_LETTER_TOPIC", "controller_dead_letters"),
        )
        if len(set(topics.all())) != len(topics.all()):
            self.problems.append(f"topics must be five distinct names, got {list(topics.all())}")
        profile = self.profile(dialect)
        keys_text = self.text("SESSION_KEYS", "")
        keys = tuple(k.strip() for k in keys_text.split(",") if k.strip()) or (machine.DEFAULT_KEY,)
        config = machine.MachineConfig(
            dialect=dialect.name,
            profile=profile,
            initial_params=self.initial_params(profile),
            keys=keys,
            report_timeout_ms=int(self.number("REPORT_TIMEOUT_S", 600, float, 0.001) * 1000),
            max_retries=self.number("MAX_RETRIES", 2, int, 0),
            warm_start=self.warm_start(profile),
            instruction_min_gap=self.number("INSTRUCTION_MIN_GAP", 0, int, 0),
            max_queued=self.number("MAX_QUEUED_INSTRUCTIONS", 1000, int, 1),
            pause_engine=self.choice("PAUSE_ENGINE", "round", PAUSE_ENGINE),  # type: ignore[arg-type]
        )
        try:
            config.validate()
        except ConfigError as error:
            self.problems.append(f"controller: {error}")
        settings = Settings(
            brokers=self.text("KAFKA_BOOTSTRAP_SERVERS", "kafka:29092"),
            topics=topics,
            machine=config,
            encoding=encoding,
            tick_interval_s=self.number("TICK_INTERVAL_S", 5, float, 0.01),
            input_idle_wait_ms=self.number("INPUT_IDLE_WAIT_MS", 10, float, 0.1),
            max_message_bytes=self.number("MAX_MESSAGE_BYTES", DEFAULT_MAX_MESSAGE_BYTES, int, 1),
            create_topics=self.flag("CREATE_TOPICS", True),
            topic_partitions=self.number("TOPIC_PARTITIONS", 1, int, 1),
            topic_replication=self.number("TOPIC_REPLICATION", 1, int, 1),
            startup_timeout_s=self.number("STARTUP_TIMEOUT_S", 30, float, 0.1),
            delivery_timeout_s=self.number("DELIVERY_TIMEOUT_S", 30, float, 0.1),
            log_level=self.choice("LOG_LEVEL", "INFO", ("DEBUG", "INFO", "WARNING", "ERROR")),
            log_format=self.choice("LOG_FORMAT", "json", ("json", "text")),
            security=self.security(),
            input_start=self.input_start(),
            transactional_id=self.text(
                "KAFKA_TRANSACTIONAL_ID", f"rtcef-controller.{topics.commands}.{topics.sync}"
            ),
        )
        if self.problems:
            raise SettingsError(self.problems)
        return settings

    def input_start(self) -> str | int:
        raw = self.text("INPUT_START", "end")
        if raw in ("end", "beginning"):
            return raw
        try:
            return int(raw)
        except ValueError:
            pass
        try:
            when = datetime.fromisoformat(raw)
        except ValueError:
            self.problems.append(f"INPUT_START: {raw!r} is not `end`, `beginning`, an ISO 8601 "
                                 "time or milliseconds since the epoch")  # fmt: skip
            return "end"
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        return int(when.timestamp() * 1000)


def _middle(dimension: optimizer.Dimension) -> float | int:
    if dimension.kind == "Integer":
        return (int(dimension.low) + int(dimension.high)) // 2
    return (float(dimension.low) + float(dimension.high)) / 2
