"""Settings: every environment variable the controller reads, defined once, validated at start.

Role: the only place that reads the environment. Each variable is one ``Setting``
in ``dataflow.adapters.variables`` (the machinery: ``dataflow.adapters.settings``):
its default, its parser and validation, and its README row. The defaults the
domain owns (``MachineConfig``'s, ``Profile``'s, a dialect's) are referred to, not
copied. ``Settings.from_env()`` collects *every* problem before raising one
``SettingsError`` that lists them all, so an operator fixes a deployment in one go.
Secrets are ``Secret`` values whose ``repr`` is redacted. Bytewax's own
``BYTEWAX_*`` variables (recovery directory, snapshot interval, workers...) stay
Bytewax's and are not read here.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import cast

import msgspec

from dataflow.adapters import variables as v
from dataflow.adapters.settings import Reader, Secret
from dataflow.adapters.variables import TOPIC_VARIABLES, VARIABLES
from dataflow.adapters.wire import Codec, Encoding
from dataflow.domain import dialects, machine, optimizer
from dataflow.domain.config import Baseline, PauseEngine
from dataflow.domain.errors import ConfigError

__all__ = ["TOPIC_VARIABLES", "VARIABLES", "Secret", "Settings", "SettingsError", "Topics"]


class SettingsError(ValueError):
    """The environment does not describe a runnable controller; ``problems`` lists why."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("invalid settings:\n  - " + "\n  - ".join(problems))
        self.problems = problems


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
    """The controller's whole configuration, validated (defaults: ``adapters.variables``)."""

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
        reader = Reader(os.environ if environ is None else environ)
        known = {v.name for v in v.VARIABLES}
        reader.problems += [f"{name}: unknown variable (misspelt?)" for name in sorted(reader.env)
                            if name.startswith(("OPTIMISER_", "CONTROLLER_"))
                            and name not in known]  # fmt: skip
        settings = _read(reader)
        if reader.problems:
            raise SettingsError(reader.problems)
        return settings


def _read(reader: Reader) -> Settings:
    dialect = dialects.get(reader.get(v.DIALECT))
    encoding = cast(Encoding, reader.get(v.ENCODING))
    if encoding not in dialect.encodings:
        speakers = [d.name for d in dialects.REGISTRY.values() if encoding in d.encodings]
        reader.problems.append(f"WIRE_ENCODING: {encoding} is not spoken by the {dialect.name} "
                               f"dialect; set CONTROLLER_DIALECT to one of {speakers}")  # fmt: skip
    topics = Topics(
        instructions=reader.get(v.INSTRUCTION_TOPIC, dialect),
        reports=reader.get(v.REPORT_TOPIC, dialect),
        commands=reader.get(v.COMMAND_TOPIC, dialect),
        sync=reader.get(v.SYNC_TOPIC, dialect),
        dead_letters=reader.get(v.DEAD_LETTER_TOPIC),
    )
    if len(set(topics.all())) != len(topics.all()):
        reader.problems.append(f"topics must be five distinct names, got {list(topics.all())}")
    profile = _profile(reader, dialect)
    config = machine.MachineConfig(
        dialect=dialect.name,
        profile=profile,
        initial_params=reader.get(v.INITIAL_PARAMS, profile),
        keys=reader.get(v.SESSION_KEYS) or v.machine_default("keys"),
        report_timeout_ms=int(reader.get(v.REPORT_TIMEOUT_S) * 1000),
        max_retries=reader.get(v.MAX_RETRIES),
        warm_start=_warm_start(reader, profile),
        instruction_min_gap=reader.get(v.MIN_GAP),
        max_queued=reader.get(v.MAX_QUEUED),
        instruction_max_jump=reader.get(v.MAX_JUMP),
        instruction_max_timestamp=reader.get(v.MAX_TIMESTAMP, dialect),
        report_clock_skew_ms=reader.get(v.CLOCK_SKEW),
        pause_engine=cast(PauseEngine, reader.get(v.PAUSE)),
    )
    # The profile's problems were listed by ``_profile``, under OPTIMISER_*: not twice.
    reader.problems += [f"controller: {problem}" for problem in config.problems()]
    return Settings(
        brokers=reader.get(v.BOOTSTRAP),
        topics=topics,
        machine=config,
        encoding=encoding,
        tick_interval_s=reader.get(v.TICK_INTERVAL_S),
        input_idle_wait_ms=reader.get(v.INPUT_IDLE_WAIT_MS),
        max_message_bytes=reader.get(v.MAX_MESSAGE_BYTES),
        create_topics=reader.get(v.CREATE_TOPICS),
        topic_partitions=reader.get(v.PARTITIONS),
        topic_replication=reader.get(v.REPLICATION),
        startup_timeout_s=reader.get(v.STARTUP_TIMEOUT_S),
        delivery_timeout_s=reader.get(v.DELIVERY_TIMEOUT_S),
        log_level=reader.get(v.LOG_LEVEL),
        log_format=reader.get(v.LOG_FORMAT),
        security={
            key: value
            for setting, key in v.SECURITY.items()
            if (value := reader.get(setting)) is not None
        },
        input_start=reader.get(v.INPUT_START),
        transactional_id=reader.get(v.TRANSACTIONAL_ID, topics),
    )


def _profile(reader: Reader, dialect: dialects.Dialect) -> optimizer.Profile:
    name = reader.get(v.PROFILE, dialect)
    profile = dialects.PROFILES.get(name, dialect.profile)
    changed = {
        "dimensions": reader.get(v.SPACE, profile),
        "budget": reader.get(v.BUDGET, profile),
        "n_initial": reader.get(v.INITIAL_POINTS, profile),
        "keep": reader.get(v.KEEP, profile),
        "seed": reader.get(v.SEED, profile),
        "round_budget_s": reader.get(v.ROUND_BUDGET_S, profile),
        "strategy": reader.get(v.STRATEGY, profile),
    }  # fmt: skip
    profile = msgspec.structs.replace(profile, **changed)
    try:
        profile.validate()
    except ConfigError as error:
        reader.problems.append(f"OPTIMISER_*: {error}")
    return profile


def _warm_start(reader: Reader, profile: optimizer.Profile) -> tuple[optimizer.Observation, ...]:
    path = reader.get(v.WARM_START_FILE)
    if not path:
        return ()
    try:
        document = json.loads(Path(path).read_text())
        return optimizer.observations_from_warm_start(profile, document)
    except (OSError, ValueError) as error:
        reader.problems.append(f"WARM_START_FILE: cannot read {path!r} ({error})")
    except ConfigError as error:
        reader.problems.append(f"WARM_START_FILE: {error}")
    return ()
