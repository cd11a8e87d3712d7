"""Settings: read once, validated, every problem listed, secrets never shown."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import msgspec
import pytest

from dataflow.adapters import kafka_log
from dataflow.adapters import variables as config
from dataflow.adapters.config import VARIABLES, Secret, Settings, SettingsError, Topics
from dataflow.adapters.settings import Derived, shown
from dataflow.adapters.variables import MAX_DELIVERY_TIMEOUT_S
from dataflow.domain import dialects, optimizer
from dataflow.domain.dialects import seed
from tests.support import RECORDINGS, ROOT


def test_defaults_follow_the_seed_services() -> None:
    settings = Settings.from_env({})

    assert settings.brokers == "kafka:29092"
    assert settings.topics == Topics("instructions", "factory_reports", "factory_commands",
                                     "enginesync", "controller_dead_letters")  # fmt: skip
    assert settings.machine.profile == dialects.PROFILES["seed"]
    assert settings.machine.keys == ("controller",)
    assert settings.machine.report_timeout_ms == 600_000


def test_the_rtcef_dialect_defaults_to_the_original_topic_names_and_profile() -> None:
    settings = Settings.from_env({"CONTROLLER_DIALECT": "rtcef"})

    assert settings.topics.instructions == "optimiser_instructions"
    assert settings.topics.sync == "engine_sync"
    assert settings.machine.profile.name == "rtcef"


def test_every_problem_is_listed_at_once() -> None:
    with pytest.raises(SettingsError) as raised:
        Settings.from_env({
            "CONTROLLER_DIALECT": "klingon", "MAX_RETRIES": "-2", "TICK_INTERVAL_S": "often",
            "INITIAL_PARAMS": "{", "CREATE_TOPICS": "perhaps", "OPTIMISER_BUGDET": "3",
            "SYNC_TOPIC": "factory_commands",
        })  # fmt: skip

    assert raised.value.problems == [
        "OPTIMISER_BUGDET: unknown variable (misspelt?)",
        "CONTROLLER_DIALECT: 'klingon' is not one of ['seed', 'rtcef']",
        "topics must be five distinct names, got ['instructions', 'factory_reports',"
        " 'factory_commands', 'factory_commands', 'controller_dead_letters']",
        "INITIAL_PARAMS: not valid JSON (Expecting property name enclosed in double quotes:"
        " line 1 column 2 (char 1))",
        "MAX_RETRIES: -2 must be at least 0",
        "TICK_INTERVAL_S: 'often' is not a valid float",
        "CREATE_TOPICS: 'perhaps' is not a boolean (true/false)",
    ]


def test_a_third_dialect_is_one_record_in_the_registry(monkeypatch: pytest.MonkeyPatch) -> None:
    # Its profile is named otherwise than the dialect: the settings use the dialect's own.
    profile = msgspec.structs.replace(dialects.PROFILES["seed"], name="third-gp", budget=4)
    third = dataclasses.replace(
        seed.DIALECT, name="third", profile=profile, command_id=lambda n: f"third-{n}",
        topics={"instructions": "i3", "reports": "r3", "commands": "c3", "sync": "s3"},
    )  # fmt: skip
    registry = {**dialects.REGISTRY, "third": third}
    monkeypatch.setattr(dialects, "REGISTRY", registry)
    monkeypatch.setattr(dialects, "DIALECTS", tuple(registry))
    monkeypatch.setattr(
        dialects, "PROFILES", {d.profile.name: d.profile for d in registry.values()}
    )

    settings = Settings.from_env({"CONTROLLER_DIALECT": "third"})

    assert settings.topics == Topics("i3", "r3", "c3", "s3", "controller_dead_letters")
    assert settings.machine.profile == profile
    assert settings.machine.initial_params == seed.DIALECT.initial_params
    assert settings.machine.command_id("controller", 7) == "third-7"


def test_a_profile_that_no_dialect_has_is_a_listed_problem() -> None:
    with pytest.raises(SettingsError) as raised:
        Settings.from_env({"CONTROLLER_DIALECT": "rtcef", "OPTIMISER_PROFILE": "neither"})

    assert raised.value.problems == ["OPTIMISER_PROFILE: 'neither' is not one of ['seed', 'rtcef']"]


def test_initial_params_must_name_the_search_space() -> None:
    with pytest.raises(SettingsError) as raised:
        Settings.from_env({"INITIAL_PARAMS": '{"pmin": 0.1}'})
    assert raised.value.problems == [
        "controller: initial params ['pmin'] must name exactly ['pMin', 'gamma']"
    ]


def test_a_custom_space_budget_and_session_keys_are_read() -> None:
    space = [{"name": "x", "kind": "Real", "low": 0, "high": 2}]
    settings = Settings.from_env({"OPTIMISER_SPACE": json.dumps(space), "OPTIMISER_BUDGET": "7",
                                  "SESSION_KEYS": "m1, m2"})  # fmt: skip

    assert settings.machine.profile.dimensions == (optimizer.Dimension("x", "Real", 0, 2),)
    assert settings.machine.profile.budget == 7
    assert settings.machine.initial_params == (("x", 1.0),)
    assert settings.machine.keys == ("m1", "m2")


def test_a_warm_start_file_seeds_the_first_round(tmp_path: Path) -> None:
    path = RECORDINGS / "month_3" / "offline_optimisation.json"
    settings = Settings.from_env({"CONTROLLER_DIALECT": "rtcef", "WARM_START_FILE": str(path)})
    assert len(settings.machine.warm_start) == 32

    with pytest.raises(SettingsError, match="WARM_START_FILE: cannot read"):
        Settings.from_env({"WARM_START_FILE": str(tmp_path / "missing.json")})


def test_secrets_are_passed_to_kafka_but_never_shown() -> None:
    settings = Settings.from_env({
        "KAFKA_SECURITY_PROTOCOL": "SASL_SSL", "KAFKA_SASL_MECHANISM": "SCRAM-SHA-512",
        "KAFKA_SASL_USERNAME": "controller", "KAFKA_SASL_PASSWORD": "hunter2",
    })  # fmt: skip

    assert settings.kafka_config() == {
        "bootstrap.servers": "kafka:29092", "security.protocol": "SASL_SSL",
        "sasl.mechanism": "SCRAM-SHA-512", "sasl.username": "controller",
        "sasl.password": "hunter2",
    }  # fmt: skip
    assert "hunter2" not in repr(settings)
    assert "hunter2" not in str(Secret("hunter2"))


@pytest.mark.parametrize(("text", "start"), [
    ("", "end"), ("end", "end"), ("beginning", "beginning"), ("1700000000000", 1700000000000),
    ("2023-11-14T22:13:20+00:00", 1700000000000), ("2023-11-14T22:13:20", 1700000000000),
])  # fmt: skip
def test_input_start_is_the_end_by_default_or_the_beginning_or_a_time(
    text: str, start: str | int
) -> None:
    settings = Settings.from_env({"INPUT_START": text})

    assert settings.input_start == start


def test_input_start_that_is_no_place_nor_time_is_refused() -> None:
    with pytest.raises(SettingsError, match="INPUT_START: 'yesterday' is not `end`, `beginning`"):
        Settings.from_env({"INPUT_START": "yesterday"})


def test_the_transactional_id_defaults_to_one_per_pair_of_output_topics() -> None:
    assert Settings.from_env({}).transactional_id == "rtcef-controller.factory_commands.enginesync"
    assert Settings.from_env({"KAFKA_TRANSACTIONAL_ID": "prod-7"}).transactional_id == "prod-7"


def test_the_readme_documents_every_variable_with_its_default() -> None:
    text = (ROOT / "README.md").read_text()
    readme = text[text.index("## Configuration") :].split("\n## ", 1)[0]
    for variable in VARIABLES:
        row = next((line for line in readme.splitlines()
                    if line.startswith(f"| `{variable.name}` |")), None)  # fmt: skip
        assert row is not None, f"{variable.name} missing from the README's table"
        assert f"| {variable.documented or '(unset)'} |" in row, row


def test_every_documented_default_reads_back_as_the_default() -> None:
    for variable in VARIABLES:
        if variable.documented and not isinstance(variable.default, Derived):
            assert variable.parse(variable.documented) == variable.default, variable.name


#: Where each setting's value lands in ``Settings`` (derived ones: per dialect, below).
LANDS = {
    config.BOOTSTRAP: lambda s: s.brokers,
    config.ENCODING: lambda s: s.encoding,
    config.DEAD_LETTER_TOPIC: lambda s: s.topics.dead_letters,
    config.INPUT_START: lambda s: s.input_start,
    config.PAUSE: lambda s: s.machine.pause_engine,
    config.WARM_START_FILE: lambda s: s.machine.warm_start or None,
    config.SESSION_KEYS: lambda s: None if s.machine.keys == ("controller",) else s.machine.keys,
    config.REPORT_TIMEOUT_S: lambda s: s.machine.report_timeout_ms / 1000,
    config.MAX_RETRIES: lambda s: s.machine.max_retries,
    config.TICK_INTERVAL_S: lambda s: s.tick_interval_s,
    config.INPUT_IDLE_WAIT_MS: lambda s: s.input_idle_wait_ms,
    config.MIN_GAP: lambda s: s.machine.instruction_min_gap,
    config.MAX_JUMP: lambda s: s.machine.instruction_max_jump,
    config.CLOCK_SKEW: lambda s: s.machine.report_clock_skew_ms,
    config.MAX_QUEUED: lambda s: s.machine.max_queued,
    config.MAX_MESSAGE_BYTES: lambda s: s.max_message_bytes,
    config.CREATE_TOPICS: lambda s: s.create_topics,
    config.PARTITIONS: lambda s: s.topic_partitions,
    config.REPLICATION: lambda s: s.topic_replication,
    config.STARTUP_TIMEOUT_S: lambda s: s.startup_timeout_s,
    config.DELIVERY_TIMEOUT_S: lambda s: s.delivery_timeout_s,
    config.LOG_LEVEL: lambda s: s.log_level,
    config.LOG_FORMAT: lambda s: s.log_format,
    **{variable: (lambda s, key=key: s.security.get(key))
       for variable, key in config.SECURITY.items()},
}  # fmt: skip


def test_settings_read_from_an_empty_environment_are_the_documented_defaults() -> None:
    settings = Settings.from_env({})

    assert set(VARIABLES) == {*LANDS, config.DIALECT, *DERIVED}, "a setting nobody checks"
    for variable, where in LANDS.items():
        assert where(settings) == variable.default, variable.name
    assert settings.dialect == config.DIALECT.default == config.DIALECT.documented


DERIVED = {
    config.INSTRUCTION_TOPIC: (lambda s: s.topics.instructions,
                               lambda d: d.topics["instructions"]),
    config.REPORT_TOPIC: (lambda s: s.topics.reports, lambda d: d.topics["reports"]),
    config.COMMAND_TOPIC: (lambda s: s.topics.commands, lambda d: d.topics["commands"]),
    config.SYNC_TOPIC: (lambda s: s.topics.sync, lambda d: d.topics["sync"]),
    config.TRANSACTIONAL_ID: (lambda s: s.transactional_id,
                              lambda d: f"rtcef-controller.{d.topics['commands']}."
                                        f"{d.topics['sync']}"),
    config.PROFILE: (lambda s: s.machine.profile.name, lambda d: d.profile.name),
    config.STRATEGY: (lambda s: s.machine.profile.strategy, lambda d: d.profile.strategy),
    config.SPACE: (lambda s: s.machine.profile.dimensions, lambda d: d.profile.dimensions),
    config.BUDGET: (lambda s: s.machine.profile.budget, lambda d: d.profile.budget),
    config.INITIAL_POINTS: (lambda s: s.machine.profile.n_initial, lambda d: d.profile.n_initial),
    config.KEEP: (lambda s: s.machine.profile.keep, lambda d: d.profile.keep),
    config.ROUND_BUDGET_S: (lambda s: s.machine.profile.round_budget_s,
                            lambda d: d.profile.round_budget_s),
    config.SEED: (lambda s: s.machine.profile.seed, lambda d: d.profile.seed),
    config.INITIAL_PARAMS: (lambda s: s.machine.initial_params, lambda d: d.initial_params),
    config.MAX_TIMESTAMP: (lambda s: s.machine.latest_timestamp(), lambda d: d.latest_timestamp),
}  # fmt: skip


@pytest.mark.parametrize("dialect", list(dialects.REGISTRY.values()), ids=lambda d: d.name)
def test_derived_defaults_follow_the_dialect_as_documented(dialect: dialects.Dialect) -> None:
    settings = Settings.from_env({"CONTROLLER_DIALECT": dialect.name})

    for variable, (where, expected) in DERIVED.items():
        assert where(settings) == expected(dialect), variable.name
        value = expected(dialect)
        if variable.documented.startswith("the ") or "<" in variable.documented:
            continue  # documented in words ("the profile's"), or as a pattern
        assert shown(value) in variable.documented, variable.name
    assert settings.machine.profile == dialect.profile


def test_a_round_budget_in_seconds_and_when_to_pause_are_read_and_checked() -> None:
    default = Settings.from_env({})
    assert default.machine.profile.round_budget_s is None
    assert default.machine.pause_engine == "round"

    read = Settings.from_env({"ROUND_BUDGET_S": "75.5", "PAUSE_ENGINE": "finalise"})
    assert read.machine.profile.round_budget_s == 75.5
    assert read.machine.pause_engine == "finalise"

    with pytest.raises(SettingsError) as refused:
        Settings.from_env({"ROUND_BUDGET_S": "0", "PAUSE_ENGINE": "never"})
    assert refused.value.problems == [
        "ROUND_BUDGET_S: 0.0 must be at least 0.001",
        "PAUSE_ENGINE: 'never' is not one of ['round', 'finalise']",
    ]


def test_the_plausibility_settings_are_read_into_the_machine_and_checked() -> None:
    read = Settings.from_env({"INSTRUCTION_MAX_JUMP": "0", "INSTRUCTION_MAX_TIMESTAMP":
                              "4102444800", "REPORT_CLOCK_SKEW_MS": "250"})  # fmt: skip
    assert (read.machine.instruction_max_jump, read.machine.latest_timestamp(),
            read.machine.report_clock_skew_ms) == (0, 4_102_444_800, 250)  # fmt: skip

    with pytest.raises(SettingsError) as refused:
        Settings.from_env({"INSTRUCTION_MAX_JUMP": "-1", "INSTRUCTION_MAX_TIMESTAMP": "soon",
                           "REPORT_CLOCK_SKEW_MS": "-5"})  # fmt: skip
    assert refused.value.problems == [
        "INSTRUCTION_MAX_JUMP: -1 must be at least 0",
        "INSTRUCTION_MAX_TIMESTAMP: 'soon' is not a valid int",
        "REPORT_CLOCK_SKEW_MS: -5 must be at least 0",
    ]


def test_an_optimiser_seed_is_read_into_the_profile_and_checked() -> None:
    assert Settings.from_env({}).machine.profile.seed == 0
    assert Settings.from_env({"OPTIMISER_SEED": "3"}).machine.profile.seed == 3

    with pytest.raises(SettingsError) as refused:
        Settings.from_env({"OPTIMISER_SEED": "-1"})
    assert refused.value.problems == ["OPTIMISER_SEED: -1 must be at least 0"]
    with pytest.raises(SettingsError) as too_big:
        Settings.from_env({"OPTIMISER_SEED": str(2**32)})
    assert too_big.value.problems == [f"OPTIMISER_SEED: {2**32} must be below 2**32"]


def test_an_unknown_strategy_is_refused_once_under_its_name_with_the_profiles_problems() -> None:
    with pytest.raises(SettingsError) as refused:
        Settings.from_env({"OPTIMISER_STRATEGY": "random", "OPTIMISER_SPACE": "[]"})
    assert refused.value.problems == [
        "OPTIMISER_STRATEGY: 'random' is not one of ['gp']",
        "OPTIMISER_*: optimiser profile 'seed': no dimensions",
    ]


@pytest.mark.parametrize("name", ["ROUND_BUDGET_S", "REPORT_TIMEOUT_S", "TICK_INTERVAL_S"])
@pytest.mark.parametrize("text", ["nan", "inf", "-inf"])
def test_a_number_that_is_not_finite_is_refused(name: str, text: str) -> None:
    with pytest.raises(SettingsError) as refused:
        Settings.from_env({name: text})
    assert refused.value.problems == [f"{name}: {text!r} is not a finite number"]


def test_initial_params_that_are_not_an_object_of_numbers_are_refused_as_such() -> None:
    for text in ("[1]", '{"pMin": true, "gamma": 0.001}', '{"pMin": "0.05"}'):
        with pytest.raises(SettingsError) as refused:
            Settings.from_env({"INITIAL_PARAMS": text})
        assert refused.value.problems == ["INITIAL_PARAMS: must be a JSON object of numbers"]


def test_the_output_transaction_lasts_the_delivery_timeout_up_to_the_brokers_limit() -> None:
    # librdkafka cuts a transactional producer's message timeout to the transaction's: a
    # minute's transaction would have crashed the flow at 60 s whatever was set.
    assert kafka_log.transaction_timeout_ms(30.0, kafka_log.COMMIT_EVERY_S) == 60_000
    assert kafka_log.transaction_timeout_ms(600.0, kafka_log.COMMIT_EVERY_S) == 610_000
    longest = kafka_log.transaction_timeout_ms(MAX_DELIVERY_TIMEOUT_S, kafka_log.COMMIT_EVERY_S)
    assert longest == 900_000  # a broker's default transaction.max.timeout.ms
    assert Settings.from_env({"DELIVERY_TIMEOUT_S": "890"}).delivery_timeout_s == 890.0
    with pytest.raises(SettingsError, match="DELIVERY_TIMEOUT_S"):
        Settings.from_env({"DELIVERY_TIMEOUT_S": "891"})
