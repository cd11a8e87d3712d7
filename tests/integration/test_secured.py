"""Secured Kafka, for real: TLS, SCRAM-SHA-512 and least-privilege ACLs on a real broker.

One broker for the module (``broker.start(secured=...)``): a SASL_SSL listener with a
CA and certificate made for this run (hostname verification on), SCRAM users, the
standard authorizer and no ACL meaning no access. The harness's helpers act as its
``admin``; the controller runs as ``controller`` with exactly the ACLs of the README's
table (``tests.integration.secured.controller_acls``), the factory stand-in as
``factory``.

* With those ACLs a round completes, and a SIGKILL mid-round then a restart
  completes it with no command twice.
* Without any one of them the controller stops at start-up with one line naming the
  ACL to grant (so each is needed: the set is minimal), as it does for a wrong
  password and an untrusted CA: non-zero, at once, without spinning, the input left
  unread and nothing dead-lettered.
* No password, of the SASL user or the client key, appears in any output.
"""

from __future__ import annotations

import resource
import signal
import socket
import subprocess
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import yaml

from dataflow.domain import messages as msg
from dataflow.domain.messages import Instruction, InstructionKind
from tests.integration import secured
from tests.integration.harness import ROOT, Controller, Wiring, factory
from tests.kafka import broker, client

pytestmark = pytest.mark.integration

TIMESTAMP = 1_600_000_000_000
#: CPU seconds a refused start may cost: Python, Bytewax and the optimiser's imports
#: (measured: 2.7-3.4 s of CPU in 5-8.6 s of wall time, on 2 loaded cores).
CPU_BUDGET_S = 6.0


@pytest.fixture
def security(secured_broker: broker.Broker) -> broker.Security:
    assert secured_broker.security is not None
    return secured_broker.security


@pytest.fixture
def secured_wiring(
    secured_broker: broker.Broker, security: broker.Security
) -> Iterator[Callable[..., Wiring]]:
    """Make a wiring on five new topics (made by admin), the controller as ``controller``."""
    made: list[str] = []

    def make(**extra: str) -> Wiring:
        names = {role: client.unique_topic(role) for role in
                 ("instructions", "reports", "commands", "sync", "dlq")}  # fmt: skip
        client.create_topics(secured_broker.bootstrap, names.values())
        made.extend(names.values())
        return Wiring(
            secured_broker.bootstrap, "rtcef", names["instructions"], names["reports"],
            names["commands"], names["sync"], names["dlq"],
            extra={**security.controller_env(), "OPTIMISER_BUDGET": "3", **extra},
        )  # fmt: skip

    yield make
    for user in ("controller", "factory"):
        secured.revoke_all(secured_broker.bootstrap, user)
    client.delete_topics(secured_broker.bootstrap, made)


def secrets_of(security: broker.Security) -> list[str]:
    return [*security.passwords.values(), security.key_password]


def assert_no_secret_in(text: str, security: broker.Security) -> None:
    for secret in secrets_of(security):
        assert secret not in text


def error_lines(controller: Controller) -> list[str]:
    return [line["msg"] for line in controller.log_lines()
            if line.get("level") == "ERROR" and line.get("logger") == "dataflow.flow"]  # fmt: skip


def refused_at_start(
    controller: Controller, timeout: float = 30
) -> tuple[int | None, float, float]:
    """Start it and wait for it to exit: its status, how long it ran, its CPU seconds."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    began = time.monotonic()
    controller.start()
    assert controller.wait(timeout), f"still running after {timeout}s:\n{controller.log_text()}"
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return controller.returncode, time.monotonic() - began, cpu


def assert_stopped_without_spinning(seconds: float, cpu: float, within: float) -> None:
    """It stopped well before its STARTUP_TIMEOUT_S, and was mostly idle while it ran.

    Its start-up alone (imports, the flow) costs a few CPU seconds; a retry loop at full
    speed would cost as much as it ran, on every core it found.
    """
    assert seconds < within
    assert cpu < CPU_BUDGET_S, f"{cpu:.1f} CPU seconds in {seconds:.1f}s"


def assert_input_untouched(wiring: Wiring, sent: list[bytes]) -> None:
    """The instruction is still on its topic, no group of the controller committed, no DLQ."""
    assert [m.value() for m in wiring.read(wiring.instructions, idle=1.0, timeout=15)] == sent
    assert wiring.read(wiring.dead_letters, idle=1.0, timeout=5) == []
    admin = client.admin(wiring.bootstrap)
    groups = {g.group_id for g in admin.list_consumer_groups().result(timeout=30).valid}
    assert not {g for g in groups if g.startswith(secured.transactional_id(wiring))}


def send_instruction(wiring: Wiring) -> list[bytes]:
    key, value = wiring.codec.encode_instruction(
        Instruction(InstructionKind.OPTIMIZE, TIMESTAMP, 1)
    )
    client.produce(wiring.bootstrap, wiring.instructions, [value], key=key)
    return [value]


def expected_commands() -> list[str]:
    return ["opt_initialise", "opt_step", "opt_step", "opt_step", "opt_finalise"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_the_controller_completes_a_round_with_exactly_the_acls_of_the_readme_and_logs_no_secret(
    secured_wiring: Callable[..., Wiring], security: broker.Security, tmp_path: Path
) -> None:
    port = free_port()
    wiring = secured_wiring(BYTEWAX_DATAFLOW_API_ENABLED="1", BYTEWAX_DATAFLOW_API_PORT=str(port),
                            BYTEWAX_DATAFLOW_API_CACHE_PATH=str(tmp_path))  # fmt: skip
    secured.grant(wiring.bootstrap, "controller", secured.controller_acls(wiring))
    secured.grant(wiring.bootstrap, "factory", secured.factory_acls(wiring))
    controller = Controller(wiring, tmp_path / "c")
    with factory(wiring, security=security.client_config("factory")):
        controller.start()
        controller.wait_ready()
        send_instruction(wiring)
        syncs = wiring.wait_for_plays(1, timeout=90)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as page:
            metrics = page.read().decode()
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/dataflow", timeout=10) as page:
            dataflow = page.read().decode()
    controller.stop()

    commands = wiring.commands_sent(idle=1.0, timeout=30)
    assert [c.type for c in commands] == expected_commands()
    assert [s.type for s in syncs] == ["pause", "play"]
    assert wiring.read(wiring.dead_letters, idle=1.0, timeout=5) == []
    assert wiring.duplicates(wiring.commands) == wiring.duplicates(wiring.sync) == {}
    assert "controller_" in metrics
    for text in (controller.log_text(), metrics, dataflow):
        assert_no_secret_in(text, security)


def test_a_controller_killed_mid_round_restarts_and_completes_it_with_no_command_twice(
    secured_wiring: Callable[..., Wiring], security: broker.Security, tmp_path: Path
) -> None:
    wiring = secured_wiring()
    secured.grant(wiring.bootstrap, "controller", secured.controller_acls(wiring))
    secured.grant(wiring.bootstrap, "factory", secured.factory_acls(wiring))
    controller = Controller(wiring, tmp_path / "c")
    second_step = threading.Event()
    released = threading.Event()

    def hold_second_step(command: msg.FactoryCommand) -> None:
        if command.type == "opt_step" and not second_step.is_set():
            second_step.set()  # the round is under way: one step answered, this one held
            released.wait(60)

    with factory(wiring, before=hold_second_step, security=security.client_config("factory")):
        controller.start()
        controller.wait_ready()
        send_instruction(wiring)
        assert second_step.wait(60), controller.log_text()[-3000:]
        time.sleep(1.5)  # a snapshot of the round under way (every second)
        controller.send_signal(signal.SIGKILL)
        assert controller.wait(30)
        controller.start()
        released.set()
        wiring.wait_for_plays(1, timeout=120)
        time.sleep(2)  # whatever a replay would send twice comes now
    controller.stop()

    assert [c.type for c in wiring.commands_sent(idle=1.0, timeout=30)] == expected_commands()
    assert wiring.duplicates(wiring.commands) == wiring.duplicates(wiring.sync) == {}
    assert wiring.read(wiring.dead_letters, idle=1.0, timeout=5) == []
    assert_no_secret_in(controller.log_text(), security)


def test_a_read_acl_revoked_while_it_runs_stops_the_controller_with_one_line_and_no_dead_letter(
    secured_wiring: Callable[..., Wiring], security: broker.Security, tmp_path: Path
) -> None:
    wiring = secured_wiring()
    acls = secured.controller_acls(wiring)
    secured.grant(wiring.bootstrap, "controller", acls)
    controller = Controller(wiring, tmp_path / "c")
    controller.start()
    controller.wait_ready()

    read = secured.Acl("Topic", wiring.instructions, "Read")
    secured.revoke(wiring.bootstrap, "controller", read)
    sent = send_instruction(wiring)

    assert controller.wait(60), controller.log_text()[-3000:]
    assert controller.returncode == 3
    stops = [line["msg"] for line in controller.log_lines() if line.get("level") == "ERROR"
             and line.get("logger") == "dataflow.controller"]  # fmt: skip
    assert stops == [f"controller stops: not authorised to read topic '{wiring.instructions}' "
                     f"(INSTRUCTION_TOPIC): grant Read on Topic:{wiring.instructions} to "
                     "User:controller (README, Secured Kafka)"]  # fmt: skip
    assert_input_untouched(wiring, sent)
    assert wiring.commands_sent(idle=1.0, timeout=10) == []
    assert_no_secret_in(controller.log_text(), security)


def _missing(wiring: Wiring, index: int) -> tuple[secured.Acl, str]:
    """The ``index``-th ACL of the controller and the line its absence must produce."""
    acl = secured.controller_acls(wiring)[index]
    if acl.resource == "TransactionalId":
        return acl, (f"controller cannot start: not authorised to write transactional id "
                     f"'{acl.name}' (KAFKA_TRANSACTIONAL_ID): grant Write on "
                     f"TransactionalId:{acl.name} to User:controller "
                     "(README, Secured Kafka)")  # fmt: skip
    if acl.resource == "Group":
        group = f"{acl.name}input"  # the first reader's group (kafka.READERS)
        return acl, (f"controller cannot start: not authorised to describe consumer group "
                     f"'{group}': grant Describe on Group:{group} (or the prefix {acl.name}) "
                     "to User:controller (README, Secured Kafka)")  # fmt: skip
    setting = {wiring.instructions: "INSTRUCTION_TOPIC", wiring.reports: "REPORT_TOPIC",
               wiring.commands: "COMMAND_TOPIC", wiring.sync: "SYNC_TOPIC",
               wiring.dead_letters: "DEAD_LETTER_TOPIC"}[acl.name]  # fmt: skip
    return acl, (f"controller cannot start: not authorised to {acl.operation.lower()} topic "
                 f"'{acl.name}' ({setting}): grant {acl.operation} on Topic:{acl.name} to "
                 "User:controller (README, Secured Kafka)")  # fmt: skip


@pytest.mark.parametrize("index", range(10), ids=lambda i: f"acl{i}")
def test_without_any_one_of_its_acls_the_controller_stops_at_start_naming_the_acl_to_grant(
    secured_wiring: Callable[..., Wiring], security: broker.Security, tmp_path: Path, index: int
) -> None:
    wiring = secured_wiring(STARTUP_TIMEOUT_S="30")
    acls = secured.controller_acls(wiring)
    assert len(acls) == 10  # the parametrisation covers each
    missing, line = _missing(wiring, index)
    secured.grant(wiring.bootstrap, "controller", [acl for acl in acls if acl != missing])
    sent = send_instruction(wiring)
    controller = Controller(wiring, tmp_path / "c")

    status, seconds, cpu = refused_at_start(controller)

    assert status == 3
    assert error_lines(controller) == [line]
    assert_stopped_without_spinning(seconds, cpu, within=25)
    assert_input_untouched(wiring, sent)
    assert_no_secret_in(controller.log_text(), security)


def test_a_wrong_password_stops_the_controller_at_once_naming_the_setting_and_not_the_password(
    secured_wiring: Callable[..., Wiring], security: broker.Security, tmp_path: Path
) -> None:
    wiring = secured_wiring(KAFKA_SASL_PASSWORD="not-" + security.passwords["controller"],
                            STARTUP_TIMEOUT_S="60")  # fmt: skip
    secured.grant(wiring.bootstrap, "controller", secured.controller_acls(wiring))
    sent = send_instruction(wiring)
    controller = Controller(wiring, tmp_path / "c")

    status, seconds, cpu = refused_at_start(controller)

    assert status == 3
    [line] = error_lines(controller)
    assert line.startswith("controller cannot start: Kafka refused authentication for "
                           "KAFKA_SASL_USERNAME=controller: check KAFKA_SASL_PASSWORD and "
                           "KAFKA_SASL_MECHANISM=SCRAM-SHA-512 (")  # fmt: skip
    assert_stopped_without_spinning(seconds, cpu, within=30)
    assert_input_untouched(wiring, sent)
    assert_no_secret_in(controller.log_text(), security)
    assert wiring.extra["KAFKA_SASL_PASSWORD"] not in controller.log_text()


def test_an_untrusted_broker_certificate_stops_the_controller_at_once_naming_the_ca_setting(
    secured_wiring: Callable[..., Wiring], security: broker.Security, tmp_path: Path
) -> None:
    wiring = secured_wiring(KAFKA_SSL_CA_LOCATION=security.other_ca_location,
                            STARTUP_TIMEOUT_S="60")  # fmt: skip
    secured.grant(wiring.bootstrap, "controller", secured.controller_acls(wiring))
    sent = send_instruction(wiring)
    controller = Controller(wiring, tmp_path / "c")

    status, seconds, cpu = refused_at_start(controller)

    assert status == 3
    [line] = error_lines(controller)
    assert line.startswith("controller cannot start: TLS handshake failed: the broker's "
                           "certificate is not trusted by KAFKA_SSL_CA_LOCATION="
                           f"{security.other_ca_location} or does not name the host in "
                           "KAFKA_BOOTSTRAP_SERVERS (")  # fmt: skip
    assert_stopped_without_spinning(seconds, cpu, within=30)
    assert_input_untouched(wiring, sent)
    assert_no_secret_in(controller.log_text(), security)


def test_a_wrong_key_password_stops_the_controller_naming_the_key_settings_not_the_password(
    secured_wiring: Callable[..., Wiring], security: broker.Security, tmp_path: Path
) -> None:
    wiring = secured_wiring(KAFKA_SSL_KEY_PASSWORD="not-" + security.key_password)
    secured.grant(wiring.bootstrap, "controller", secured.controller_acls(wiring))
    sent = send_instruction(wiring)
    controller = Controller(wiring, tmp_path / "c")

    status, seconds, cpu = refused_at_start(controller)

    assert status == 3
    key = wiring.extra["KAFKA_SSL_KEY_LOCATION"]
    [line] = error_lines(controller)  # OpenSSL's reason between: "...::PEM lib" (bundled)
    assert line.startswith("controller cannot start: cannot set up a Kafka client (Failed to "
                           "create admin client: ssl.key.location failed: ")  # fmt: skip
    assert line.endswith(f"): check KAFKA_SSL_KEY_LOCATION={key} and KAFKA_SSL_KEY_PASSWORD")
    assert_stopped_without_spinning(seconds, cpu, within=30)
    assert_input_untouched(wiring, sent)
    assert_no_secret_in(controller.log_text(), security)
    assert wiring.extra["KAFKA_SSL_KEY_PASSWORD"] not in controller.log_text()


def test_the_operators_acl_script_and_the_readme_grant_the_controller_exactly_the_tested_acls() -> (
    None
):
    """``k8s/secured/acls.sh`` (run with ``KAFKA_ACLS=echo``) and the README's table."""
    wiring = Wiring("b:9093", "rtcef", "in", "reports", "commands", "sync", "dlq")
    env = {"PATH": "/usr/bin:/bin", "KAFKA_ACLS": "echo", "BOOTSTRAP": "b:9093",
           "COMMAND_CONFIG": "admin.properties", "INSTRUCTION_TOPIC": "in",
           "REPORT_TOPIC": "reports", "COMMAND_TOPIC": "commands", "SYNC_TOPIC": "sync",
           "DEAD_LETTER_TOPIC": "dlq"}  # fmt: skip
    printed = subprocess.run(["sh", str(ROOT / "k8s" / "secured" / "acls.sh")], env=env,
                             capture_output=True, text=True, check=True).stdout  # fmt: skip
    kinds = {"--topic": "Topic", "--group": "Group", "--transactional-id": "TransactionalId"}
    granted = []
    for line in printed.splitlines():
        words = line.split()
        assert words[:5] == ["--bootstrap-server", "b:9093", "--command-config",
                             "admin.properties", "--add"], line  # fmt: skip
        if words[words.index("--allow-principal") + 1] != "User:controller":
            continue
        [flag] = [w for w in words if w in kinds]
        granted.append(secured.Acl(kinds[flag], words[words.index(flag) + 1],
                                   words[words.index("--operation") + 1],
                                   "--resource-pattern-type" in words))  # fmt: skip
    assert sorted(map(str, granted)) == sorted(map(str, secured.controller_acls(wiring)))

    readme = (ROOT / "README.md").read_text()
    names = {"in": "<INSTRUCTION_TOPIC>", "reports": "<REPORT_TOPIC>",
             "commands": "<COMMAND_TOPIC>", "sync": "<SYNC_TOPIC>", "dlq": "<DEAD_LETTER_TOPIC>",
             secured.transactional_id(wiring): "<KAFKA_TRANSACTIONAL_ID>",
             f"{secured.transactional_id(wiring)}.": "<KAFKA_TRANSACTIONAL_ID>."}  # fmt: skip
    for acl in secured.controller_acls(wiring):
        pattern = " (prefixed)" if acl.prefixed else ""
        row = f"| `{acl.resource}:{names[acl.name]}`{pattern} | {acl.operation} |"
        assert row in readme, row


def test_the_strimzi_kafkauser_grants_the_controller_exactly_the_tested_acls() -> None:
    """``k8s/secured/kafkauser.yaml``, for the base ConfigMap's topics and the default id."""
    [config] = [doc["data"] for doc in
                yaml.safe_load_all((ROOT / "k8s" / "base" / "configmap.yaml").read_text())
                if doc["metadata"]["name"] == "rtcef-controller"]  # fmt: skip
    wiring = Wiring("b:9093", "seed", config["INSTRUCTION_TOPIC"], config["REPORT_TOPIC"],
                    config["COMMAND_TOPIC"], config["SYNC_TOPIC"],
                    config["DEAD_LETTER_TOPIC"])  # fmt: skip
    users = {doc["metadata"]["name"]: doc for doc in
             yaml.safe_load_all((ROOT / "k8s" / "secured" / "kafkauser.yaml").read_text())
             if doc}  # fmt: skip
    controller = users["controller"]["spec"]
    assert controller["authentication"] == {"type": "scram-sha-512"}
    kinds = {"topic": "Topic", "group": "Group", "transactionalId": "TransactionalId"}
    granted = [
        secured.Acl(kinds[rule["resource"]["type"]], rule["resource"]["name"], operation,
                    rule["resource"]["patternType"] == "prefix")
        for rule in controller["authorization"]["acls"] for operation in rule["operations"]
    ]  # fmt: skip
    assert sorted(map(str, granted)) == sorted(map(str, secured.controller_acls(wiring)))
    assert set(users) == {"controller", "factory", "engine", "observer"}
