"""The image, built with buildah and run as the StatefulSet runs its pod, serves an instruction.

Twice: as the ``single-process`` overlay's pod against the plaintext test broker,
and as the ``secured`` overlay's pod (its ConfigMaps, the Secret's credentials,
the broker's CA where the overlay mounts it) against a secured broker generated
for the test (TLS, SCRAM-SHA-512, the controller granted exactly the README's
ACLs, as ``tests/integration/test_secured.py`` grants them).

Slow the first time (the base assembled from Debian packages, then a ``vfs``
build: about 4 minutes), about a minute once buildah's storage in the user cache
holds the base and the unchanged layers. ``tests/deploy/image.py`` says how.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import pytest
import yaml
from confluent_kafka import Message

from tests.deploy import image
from tests.deploy.test_deploy import K8S, config_maps, render, statefulset
from tests.integration import secured
from tests.integration.harness import Wiring
from tests.kafka import broker, client

pytestmark = [pytest.mark.integration, pytest.mark.timeout(1800)]

TOPICS = ("INSTRUCTION_TOPIC", "REPORT_TOPIC", "COMMAND_TOPIC", "SYNC_TOPIC", "DEAD_LETTER_TOPIC")


@dataclass
class Served:
    """What one pod did with one instruction, and how it stopped."""

    syncs: list[Message]
    commands: list[Message]
    shipped: set[str]
    stopped_in: float
    status: int | None
    volume: Path
    log: str


@pytest.fixture(scope="module")
def built() -> None:
    """The image, built once for the module's pods."""
    image.check_tools()
    image.ensure_base(quiet=True)
    image.build()


def serve_one_instruction(
    bootstrap: str,
    topics: Mapping[str, str],
    env: Mapping[str, str],
    tmp_path: Path,
    files: Mapping[str, bytes] | None = None,
) -> Served:
    """Run the pod, send it one instruction, read the pause and two commands, SIGTERM it."""
    volume = tmp_path / "volume"
    pod = image.Pod(env, volume, tmp_path / "pod.log", files=files)
    try:
        shipped = image.shipped_package(pod.root)
        deadline = time.monotonic() + 120
        while "controller starting" not in pod.log_text():
            assert pod.running(), pod.log_text()[-3000:]
            assert time.monotonic() < deadline, pod.log_text()[-3000:]
            time.sleep(0.5)
        instruction = {"id": 0, "timestamp": 1700, "instruction_type": "optimize",
                       "model_id": "dynamic_v0", "instruction": "optimize"}  # fmt: skip
        client.produce(bootstrap, topics["INSTRUCTION_TOPIC"], [json.dumps(instruction)])
        syncs = client.read_messages(bootstrap, topics["SYNC_TOPIC"], count=1, timeout=90)
        commands = client.read_messages(bootstrap, topics["COMMAND_TOPIC"], count=2,
                                        timeout=60)  # fmt: skip
        assert pod.running(), pod.log_text()[-3000:]
        stopped_in, status = pod.stop()
    finally:
        pod.close()
    return Served(syncs, commands, shipped, stopped_in, status, volume, pod.log_text())


def assert_served_and_stopped(served: Served) -> None:
    """The pause and first two commands; the image's contents; a clean stop on SIGTERM."""
    assert [json.loads(m.value()) for m in served.syncs] == [
        {"type": "pause", "timestamp": 1700, "model_id": -1}
    ]
    sent = [json.loads(m.value()) for m in served.commands]
    assert [(c["id"], c["type"], c["optimisation_id"], c["timestamp"]) for c in sent] == [
        ("cmd-0", "opt_initialise", 0, 1700), ("cmd-1", "opt_step", 0, 1700),
    ]  # fmt: skip
    # What production runs is in the image; the stand-ins and the demo are not.
    assert {"flow.py", "tools/probe.py", "tools/recovery.py", "tools/inspection.py",
            "tools/warmstart.py", "adapters/schemas/rtcef/factory_reports-value.avsc",
            "domain/dialects/rtcef.py"} <= served.shipped  # fmt: skip
    assert [name for name in served.shipped if name.startswith("sim/")] == []
    assert served.stopped_in < 5, served.log[-2000:]
    # A requested stop (SIGTERM): the dataflow finished, status 0, not killed (-9/137).
    assert served.status == 0, (served.status, served.log[-2000:])
    assert "controller stopping: SIGTERM received" in served.log
    assert "Traceback" not in served.log
    partition = served.volume / "part-0.sqlite3"
    assert partition.stat().st_uid == image.UID
    lines = [line for line in served.log.splitlines() if line.startswith("{")]
    assert any(json.loads(line)["msg"] == "controller starting" for line in lines)


def test_the_image_runs_as_the_statefulsets_pod_answers_an_instruction_and_stops_on_sigterm(
    built: None, kafka_bootstrap: str, topic_factory: Callable[..., str], tmp_path: Path
) -> None:
    topics = {name: topic_factory(name.split("_")[0].lower()) for name in TOPICS}
    env = image.pod_env(config_maps(render("single-process")), kafka_bootstrap, topics)

    served = serve_one_instruction(kafka_bootstrap, topics, env, tmp_path)

    assert_served_and_stopped(served)


def secret_variables() -> set[str]:
    """The variables of the Secret ``rtcef-controller-kafka`` (``secret.example.yaml``)."""
    example = yaml.safe_load_all((K8S / "secured" / "secret.example.yaml").read_text())
    (credentials,) = [d["stringData"] for d in example
                      if d["metadata"]["name"] == "rtcef-controller-kafka"]  # fmt: skip
    return set(credentials)


def ca_mount(docs: list[dict]) -> str:
    """Where the StatefulSet's controller finds the CA: the kafka-ca mount's file."""
    pod = statefulset(docs)["spec"]["template"]["spec"]
    (controller,) = pod["containers"]
    (mount,) = [m for m in controller["volumeMounts"] if m["name"] == "kafka-ca"]
    (volume,) = [v for v in pod["volumes"] if v["name"] == "kafka-ca"]
    (item,) = [i for i in volume["secret"]["items"] if i["key"] == "ca.crt"]
    return str(PurePosixPath(mount["mountPath"], item["path"]))


def test_the_image_runs_as_the_secured_overlays_pod_against_a_secured_broker_with_the_readmes_acls(
    built: None, secured_broker: broker.Broker, tmp_path: Path
) -> None:
    security = secured_broker.security
    assert security is not None
    bootstrap = secured_broker.bootstrap
    topics = {name: client.unique_topic(name.split("_")[0].lower()) for name in TOPICS}
    client.create_topics(bootstrap, topics.values())
    docs = render("secured")
    settings = config_maps(docs)
    wiring = Wiring(bootstrap, settings["CONTROLLER_DIALECT"], topics["INSTRUCTION_TOPIC"],
                    topics["REPORT_TOPIC"], topics["COMMAND_TOPIC"], topics["SYNC_TOPIC"],
                    topics["DEAD_LETTER_TOPIC"])  # fmt: skip
    secured.grant(bootstrap, "controller", secured.controller_acls(wiring))
    credentials = security.controller_env("controller")
    secret = {name: credentials[name] for name in secret_variables()}
    env = image.pod_env(settings, bootstrap, topics, secret=secret)
    ca = {ca_mount(docs): Path(security.ca_location).read_bytes()}

    served = serve_one_instruction(bootstrap, topics, env, tmp_path, files=ca)

    assert secret["KAFKA_SECURITY_PROTOCOL"] == "SASL_SSL"
    assert env["KAFKA_SSL_CA_LOCATION"] in ca
    assert not {"KAFKA_SSL_CERTIFICATE_LOCATION", "KAFKA_SSL_KEY_LOCATION"} & env.keys()
    assert_served_and_stopped(served)
    for password in (*security.passwords.values(), security.key_password):
        assert password not in served.log
