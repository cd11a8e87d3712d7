"""Deployment artefacts checked offline: manifests, Dockerfile, entrypoints (no cluster needed)."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from dataflow.adapters.config import VARIABLES, Settings
from tests.kafka import client
from tests.kafka.broker import free_port
from tests.support import ROOT, wait_for_snapshots

K8S = ROOT / "k8s"
BIN = Path(sys.executable).parent
OVERLAYS = ["single-process", "multi-process", "secured"]
# Bytewax's own variables, and the three the entrypoints add (README, "Deploying").
BYTEWAX = {
    "BYTEWAX_POD_NAME", "BYTEWAX_STATEFULSET_NAME", "BYTEWAX_REPLICAS",
    "BYTEWAX_WORKERS_PER_PROCESS", "BYTEWAX_RECOVERY_DIRECTORY", "BYTEWAX_SNAPSHOT_INTERVAL",
    "BYTEWAX_RECOVERY_BACKUP_INTERVAL", "BYTEWAX_DATAFLOW_API_ENABLED",
    "BYTEWAX_DATAFLOW_API_CACHE_PATH", "BYTEWAX_ADDRESSES", "BYTEWAX_HOSTFILE_PATH",
    "BYTEWAX_RECOVERY_PARTITIONS", "BYTEWAX_PROCESS_PORT", "BYTEWAX_IMPORT_STR",
}  # fmt: skip
KNOWN = {v.name for v in VARIABLES} | BYTEWAX | {"POD_NAMESPACE"}


def render(overlay: str) -> list[dict]:
    out = subprocess.run([BIN / "kubectl", "kustomize", K8S / "overlays" / overlay],
                         capture_output=True, text=True, check=True).stdout  # fmt: skip
    return [doc for doc in yaml.safe_load_all(out) if doc]


def config_maps(docs: list[dict]) -> dict[str, str]:
    data: dict[str, str] = {}
    for doc in docs:
        if doc["kind"] == "ConfigMap":
            data.update(doc["data"])
    return data


def statefulset(docs: list[dict]) -> dict:
    (found,) = [d for d in docs if d["kind"] == "StatefulSet"]
    return found


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_each_overlay_renders_and_passes_strict_schema_validation(
    overlay: str, tmp_path: Path
) -> None:
    rendered = tmp_path / f"{overlay}.yaml"
    rendered.write_text(subprocess.run(
        [BIN / "kubectl", "kustomize", K8S / "overlays" / overlay],
        capture_output=True, text=True, check=True).stdout)  # fmt: skip
    check = subprocess.run([BIN / "kubernetes-validate", "--strict", rendered],
                           capture_output=True, text=True, check=False)  # fmt: skip
    assert check.returncode == 0, check.stdout + check.stderr
    assert {d["kind"] for d in render(overlay)} == {
        "ConfigMap", "Service", "StatefulSet", "PodDisruptionBudget",
    }  # fmt: skip


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_disruption_budget_selects_the_pods_and_lets_a_drain_evict_one_at_a_time(
    overlay: str,
) -> None:
    docs = render(overlay)
    (budget,) = [d for d in docs if d["kind"] == "PodDisruptionBudget"]
    sts = statefulset(docs)

    assert budget["spec"]["maxUnavailable"] == 1
    assert budget["spec"]["selector"] == sts["spec"]["selector"]
    selected = budget["spec"]["selector"]["matchLabels"]
    assert selected
    assert selected.items() <= sts["spec"]["template"]["metadata"]["labels"].items()


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_pods_mount_no_token_bound_tmp_and_need_the_kafka_secret(overlay: str) -> None:
    pod = statefulset(render(overlay))["spec"]["template"]["spec"]
    (controller,) = pod["containers"]

    assert pod["automountServiceAccountToken"] is False
    assert {v["name"]: v for v in pod["volumes"]}["tmp"] == {
        "name": "tmp", "emptyDir": {"sizeLimit": "256Mi"},
    }  # fmt: skip
    assert [e for e in controller["envFrom"] if "secretRef" in e] == [
        {"secretRef": {"name": "rtcef-controller-kafka", "optional": False}}
    ]


def test_the_secured_overlay_mounts_the_brokers_ca_where_kafka_ssl_ca_location_points() -> None:
    docs = render("secured")
    ca = config_maps(docs)["KAFKA_SSL_CA_LOCATION"]
    pod = statefulset(docs)["spec"]["template"]["spec"]
    (controller,) = pod["containers"]
    [mount] = [m for m in controller["volumeMounts"] if m["name"] == "kafka-ca"]
    assert mount == {"name": "kafka-ca", "mountPath": str(Path(ca).parent), "readOnly": True}
    [volume] = [v for v in pod["volumes"] if v["name"] == "kafka-ca"]
    assert volume["secret"]["secretName"] == "rtcef-controller-kafka-ca"
    assert volume["secret"]["optional"] is False
    assert volume["secret"]["items"] == [{"key": "ca.crt", "path": Path(ca).name}]
    # The init container reads no Kafka: it gets neither the CA nor the credentials.
    assert all(m["name"] != "kafka-ca" for m in pod["initContainers"][0]["volumeMounts"])
    # Everything else is single-process's.
    plain = render("single-process")
    assert config_maps(plain) == {k: v for k, v in config_maps(docs).items()
                                  if k != "KAFKA_SSL_CA_LOCATION"}  # fmt: skip


def test_the_secured_secret_example_makes_valid_sasl_ssl_settings_with_the_overlays_ca() -> None:
    example = (K8S / "secured" / "secret.example.yaml").read_text()
    secrets = {doc["metadata"]["name"]: doc["stringData"] for doc in yaml.safe_load_all(example)}
    assert set(secrets) == {"rtcef-controller-kafka", "rtcef-controller-kafka-ca"}
    assert set(secrets["rtcef-controller-kafka-ca"]) == {"ca.crt"}
    credentials = secrets["rtcef-controller-kafka"]
    assert set(credentials) <= KNOWN
    settings = Settings.from_env({**config_maps(render("secured")), **credentials})
    assert settings.kafka_config()["security.protocol"] == "SASL_SSL"
    assert settings.kafka_config()["ssl.ca.location"] == "/etc/rtcef/kafka-ca/ca.crt"
    assert "change-me" not in repr(settings)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_probe_asks_whether_the_dataflow_progresses_not_only_whether_http_answers(
    overlay: str,
) -> None:
    (controller,) = statefulset(render(overlay))["spec"]["template"]["spec"]["containers"]

    for kind in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert controller[kind]["exec"] == {"command": ["python", "-m", "dataflow.tools.probe"]}, (
            kind
        )


@pytest.mark.parametrize(
    ("overlay", "strategy"), [("single-process", None), ("multi-process", {"type": "OnDelete"})]
)
def test_a_cluster_of_processes_is_replaced_together_not_rolled_one_pod_at_a_time(
    overlay: str, strategy: dict[str, str] | None
) -> None:
    assert statefulset(render(overlay))["spec"].get("updateStrategy") == strategy


def test_the_docker_build_context_holds_what_the_image_copies_and_nothing_else() -> None:
    lines = [line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()]
    allowed = [line[1:].rstrip("/") for line in lines if line.startswith("!")]
    copied = [
        source
        for line in (ROOT / "Dockerfile").read_text().splitlines()
        if line.startswith("COPY") and "--from=" not in line
        for source in [w for w in line.split()[1:] if not w.startswith("--")][:-1]
    ]

    assert "*" in lines  # everything else is left out
    assert copied  # the Dockerfile was read
    for source in copied:
        assert any(source == a or source.startswith(f"{a}/") for a in allowed), source
    for entry in allowed:
        assert any(s == entry or s.startswith(f"{entry}/") for s in copied), entry


def test_the_dockerfile_passes_hadolint() -> None:
    check = subprocess.run([BIN / "hadolint", ROOT / "Dockerfile"],
                           capture_output=True, text=True, check=False)  # fmt: skip
    assert check.returncode == 0, check.stdout + check.stderr


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_manifest_variables_are_known_and_make_valid_settings(overlay: str) -> None:
    docs = render(overlay)
    data = config_maps(docs)
    pod = statefulset(docs)["spec"]["template"]["spec"]
    env_names = {e["name"] for c in pod["containers"] + pod["initContainers"]
                 for e in c.get("env", [])}  # fmt: skip
    secret = yaml.safe_load((K8S / "secret.example.yaml").read_text())["stringData"]
    waxctl = yaml.safe_load((K8S / "waxctl" / "values.yaml").read_text())["env"]

    assert (set(data) | env_names | set(secret) | set(waxctl)) - KNOWN == set()
    assert "KAFKA_BOOTSTRAP_SERVERS" in data  # the one setting every deployment must give
    controller_only = {k: v for k, v in data.items() if not k.startswith("BYTEWAX_")}
    Settings.from_env({**controller_only, **secret})  # raises, listing problems, if invalid
    Settings.from_env(waxctl)


@pytest.mark.parametrize(("overlay", "replicas"), [("single-process", 1), ("multi-process", 3)])
def test_processes_and_recovery_partitions_agree_with_the_replicas(overlay, replicas) -> None:
    docs = render(overlay)
    data, sts = config_maps(docs), statefulset(docs)

    assert sts["spec"].get("replicas", 1) == replicas
    assert data["BYTEWAX_REPLICAS"] == data["BYTEWAX_RECOVERY_PARTITIONS"] == str(replicas)
    assert [t["metadata"]["name"] for t in sts["spec"]["volumeClaimTemplates"]] == ["recovery"]
    security = sts["spec"]["template"]["spec"]["securityContext"]
    assert (security["runAsUser"], security["runAsNonRoot"]) == (65532, True)
    for container in sts["spec"]["template"]["spec"]["containers"]:
        assert container["securityContext"]["readOnlyRootFilesystem"] is True


def _snapshot_rows(path: Path) -> list[tuple]:
    with sqlite3.connect(path) as connection:
        return connection.execute("SELECT part_index, part_count FROM parts").fetchall()


def test_the_recovery_entrypoint_is_idempotent_and_keeps_each_pods_partition(
    tmp_path: Path,
) -> None:
    env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}",
           "BYTEWAX_RECOVERY_DIRECTORY": str(tmp_path), "BYTEWAX_RECOVERY_PARTITIONS": "3",
           "BYTEWAX_REPLICAS": "3", "BYTEWAX_POD_NAME": "rtcef-controller-2"}  # fmt: skip
    script = K8S / "image" / "entrypoint-recovery.sh"

    first = subprocess.run(["sh", script], env=env, cwd=ROOT, capture_output=True, text=True,
                           check=True)  # fmt: skip
    before = (tmp_path / "part-2.sqlite3").read_bytes()
    second = subprocess.run(["sh", script], env=env, cwd=ROOT, capture_output=True, text=True,
                            check=True)  # fmt: skip

    assert sorted(p.name for p in tmp_path.iterdir()) == [".partitions-created", "part-2.sqlite3"]
    assert (tmp_path / "part-2.sqlite3").read_bytes() == before
    assert _snapshot_rows(tmp_path / "part-2.sqlite3") == [(2, 3)]
    assert "created part-2.sqlite3" in first.stderr
    assert "nothing to create" in second.stderr


@pytest.mark.integration
def _start_pod(
    bootstrap: str, topic_factory: Callable[..., str], tmp_path: Path, prefix: list[str]
) -> tuple[subprocess.Popen[bytes], dict[str, str]]:
    """The entrypoint with the single-process manifests' variables, up and serving metrics."""
    data = config_maps(render("single-process"))
    topics = {name: topic_factory(name.lower()) for name in
              ("INSTRUCTION_TOPIC", "REPORT_TOPIC", "COMMAND_TOPIC", "SYNC_TOPIC",
               "DEAD_LETTER_TOPIC")}  # fmt: skip
    port = free_port()
    env = {**os.environ, **data, **topics, "PATH": f"{BIN}:{os.environ['PATH']}",
           "KAFKA_BOOTSTRAP_SERVERS": bootstrap, "BYTEWAX_RECOVERY_DIRECTORY": str(tmp_path),
           "BYTEWAX_DATAFLOW_API_PORT": str(port), "BYTEWAX_DATAFLOW_API_CACHE_PATH": str(tmp_path),
           "BYTEWAX_POD_NAME": "rtcef-controller-0"}  # fmt: skip
    # Its own process group: a kill reaches unshare's child (the namespace's PID 1) too.
    process = subprocess.Popen([*prefix, "sh", "./entrypoint.sh"], cwd=K8S / "image", env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               start_new_session=True)  # fmt: skip
    metrics = ""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and "controller_" not in metrics:
        assert process.poll() is None, process.stdout.read().decode()  # type: ignore[union-attr]
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as page:
                metrics = page.read().decode()
        except OSError:
            time.sleep(0.5)
    return process, topics


def test_the_entrypoint_starts_the_flow_with_the_manifest_variables(
    kafka_bootstrap: str, topic_factory: Callable[..., str], tmp_path: Path
) -> None:
    process, topics = _start_pod(kafka_bootstrap, topic_factory, tmp_path, [])
    try:
        client.produce(kafka_bootstrap, topics["INSTRUCTION_TOPIC"],
                       [b'{"instruction_type": "retrain", "timestamp": 9}'])  # fmt: skip
        (pause,) = client.read_messages(kafka_bootstrap, topics["SYNC_TOPIC"], count=1, timeout=60)
        # The manifests snapshot every 5 s: the round (paused, training) reaches the volume.
        wait_for_snapshots(tmp_path, lambda views: any(v.phase == "TRAINING" for v in views))
        probe = subprocess.run(
            [sys.executable, "-m", "dataflow.tools.probe", "--max-age", "6"], cwd=ROOT,
            env={"BYTEWAX_RECOVERY_DIRECTORY": str(tmp_path), "BYTEWAX_REPLICAS": "1"},
            capture_output=True, text=True, check=False,
        )  # fmt: skip
    finally:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(10)

    assert pause.value() == b'{"type":"pause","timestamp":9,"model_id":-1}'
    assert (tmp_path / "part-0.sqlite3").exists()
    assert (probe.returncode, probe.stderr) == (0, "")


def test_sigterm_stops_the_controller_cleanly_within_5_s_even_as_pid_1(
    kafka_bootstrap: str, topic_factory: Callable[..., str], tmp_path: Path
) -> None:
    # A new PID namespace makes the entrypoint (which execs Python) PID 1, as in a container.
    pid_1 = ["unshare", "--pid", "--fork", "--mount-proc"]
    process, _ = _start_pod(kafka_bootstrap, topic_factory, tmp_path, pid_1)
    try:
        (init,) = Path(f"/proc/{process.pid}/task/{process.pid}/children").read_text().split()
        status = Path(f"/proc/{init}/status").read_text().splitlines()
        (ns_pids,) = [line.split()[1:] for line in status if line.startswith("NSpid:")]
        assert ns_pids[-1] == "1"  # PID 1 in its namespace
        began = time.monotonic()
        os.kill(int(init), signal.SIGTERM)
        process.wait(5)
        stopped = time.monotonic() - began
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(10)

    assert stopped < 5
    # A requested stop, not a crash: the inputs ended, the dataflow finished, status 0,
    # one log line saying so, and no traceback or Rust panic.
    out = process.stdout.read().decode()  # type: ignore[union-attr]
    assert process.returncode == 0, out[-3000:]
    assert out.count("controller stopping: SIGTERM received") == 1, out[-3000:]
    for crash in ("Traceback", "KeyboardInterrupt", "panicked", "PanicException"):
        assert crash not in out, out[-3000:]


@pytest.mark.parametrize(
    ("replicas", "expected"),
    [
        ("1", "||-m bytewax.run dataflow.flow:get_flow()"),
        ("3", "c-0.c.prod.svc.cluster.local:9999;c-1.c.prod.svc.cluster.local:9999;"
              "c-2.c.prod.svc.cluster.local:9999|c-1|-m bytewax.run dataflow.flow:get_flow()"),
    ],
)  # fmt: skip
def test_the_entrypoint_gives_bytewax_the_cluster_only_when_there_is_one(
    replicas: str, expected: str, tmp_path: Path
) -> None:
    fake = tmp_path / "python"  # stands in for the interpreter: prints what it was given
    fake.write_text('#!/bin/sh\necho "${BYTEWAX_ADDRESSES:-}|${BYTEWAX_POD_NAME:-}|$*"\n')
    fake.chmod(0o755)
    env = {"PATH": f"{tmp_path}:/usr/bin:/bin", "BYTEWAX_REPLICAS": replicas,
           "BYTEWAX_STATEFULSET_NAME": "c", "BYTEWAX_POD_NAME": "c-1",
           "POD_NAMESPACE": "prod"}  # fmt: skip

    out = subprocess.run(["sh", K8S / "image" / "entrypoint.sh"], env=env, capture_output=True,
                         text=True, check=True).stdout  # fmt: skip

    assert out.strip() == expected


@pytest.mark.parametrize(
    ("pod", "expected"),
    [
        # A kustomize namePrefix renames the StatefulSet and its pods, not the ConfigMap's value.
        ("prod-c-1", "prod-c|prod-c-0.prod-c.prod.svc.cluster.local:9999;"
                     "prod-c-1.prod-c.prod.svc.cluster.local:9999"),
        ("c-1", "c|c-0.c.prod.svc.cluster.local:9999;c-1.c.prod.svc.cluster.local:9999"),
    ],
)  # fmt: skip
def test_the_entrypoint_takes_the_statefulset_name_from_the_pods_own_name(
    pod: str, expected: str, tmp_path: Path
) -> None:
    fake = tmp_path / "python"
    fake.write_text('#!/bin/sh\necho "${BYTEWAX_STATEFULSET_NAME:-}|${BYTEWAX_ADDRESSES:-}"\n')
    fake.chmod(0o755)
    env = {"PATH": f"{tmp_path}:/usr/bin:/bin", "BYTEWAX_REPLICAS": "2",
           "BYTEWAX_STATEFULSET_NAME": "c", "BYTEWAX_POD_NAME": pod,
           "POD_NAMESPACE": "prod"}  # fmt: skip

    out = subprocess.run(["sh", K8S / "image" / "entrypoint.sh"], env=env, capture_output=True,
                         text=True, check=True).stdout  # fmt: skip

    assert out.strip() == expected


@pytest.mark.parametrize(
    ("partitions", "replicas", "pod"),
    [("3", "4", "rtcef-controller-3"), ("1", "2", "rtcef-controller-1")],
    ids=["3 partitions, pod 3 of 4", "the base's 1 partition, pod 1 of 2"],
)
def test_a_pod_added_beyond_the_partition_count_starts_with_no_partition(
    tmp_path: Path, partitions: str, replicas: str, pod: str
) -> None:
    env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}",
           "BYTEWAX_RECOVERY_DIRECTORY": str(tmp_path), "BYTEWAX_RECOVERY_PARTITIONS": partitions,
           "BYTEWAX_REPLICAS": replicas, "BYTEWAX_POD_NAME": pod}  # fmt: skip

    done = subprocess.run(["sh", K8S / "image" / "entrypoint-recovery.sh"], env=env, cwd=ROOT,
                          capture_output=True, text=True, check=False)  # fmt: skip

    assert done.returncode == 0, done.stderr
    assert not list(tmp_path.glob("part-*"))


def test_the_rebalance_job_mounts_the_statefulsets_claims_and_passes_strict_validation(
    tmp_path: Path,
) -> None:
    sts = statefulset(render("multi-process"))
    claim = sts["spec"]["volumeClaimTemplates"][0]["metadata"]["name"]
    out = subprocess.run(
        [sys.executable, "-m", "dataflow.tools.recovery", "rebalance-job", "--volumes", "3",
         "--processes", "2", "--partitions", "3", "--image", "registry.example/rtcef:1.2",
         "--statefulset", sts["metadata"]["name"], "--namespace", "prod"],
        capture_output=True, text=True, check=True, cwd=ROOT,
    ).stdout  # fmt: skip
    (tmp_path / "job.json").write_text(out)
    check = subprocess.run([BIN / "kubernetes-validate", "--strict", tmp_path / "job.json"],
                           capture_output=True, text=True, check=False)  # fmt: skip
    job = yaml.safe_load(out)
    pod = job["spec"]["template"]["spec"]
    (container,) = pod["containers"]

    assert check.returncode == 0, check.stdout + check.stderr
    assert [v["persistentVolumeClaim"]["claimName"] for v in pod["volumes"]] == [
        f"{claim}-rtcef-controller-{k}" for k in range(3)
    ]
    assert container["command"] == [
        "python", "-m", "dataflow.tools.recovery", "rebalance", "--partitions", "3", "--processes",
        "2", "/volumes/0", "/volumes/1", "/volumes/2",
    ]  # fmt: skip
    assert [m["mountPath"] for m in container["volumeMounts"]] == container["command"][-3:]
    assert pod["securityContext"] == sts["spec"]["template"]["spec"]["securityContext"]
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert job["metadata"]["namespace"] == "prod"


def test_the_recovery_entrypoint_honours_the_helm_charts_partition_count(
    tmp_path: Path,
) -> None:
    env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}",
           "BYTEWAX_RECOVERY_DIRECTORY": str(tmp_path), "BYTEWAX_RECOVERY_PARTS": "4"}  # fmt: skip

    subprocess.run(["sh", K8S / "image" / "entrypoint-recovery.sh"], env=env, cwd=ROOT,
                   capture_output=True, text=True, check=True)  # fmt: skip

    assert sorted(p.name for p in tmp_path.glob("part-*")) == [
        f"part-{i}.sqlite3" for i in range(4)
    ]
