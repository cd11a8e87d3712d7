"""The image, built with buildah and run as the StatefulSet runs its pod, serves an instruction.

Slow the first time (the base assembled from Debian packages, then a ``vfs``
build: about 4 minutes), about a minute once buildah's storage in the user cache
holds the base and the unchanged layers. ``tests/deploy/image.py`` says how.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.deploy import image
from tests.deploy.test_deploy import config_maps, render
from tests.kafka import client

pytestmark = [pytest.mark.integration, pytest.mark.timeout(1800)]

TOPICS = ("INSTRUCTION_TOPIC", "REPORT_TOPIC", "COMMAND_TOPIC", "SYNC_TOPIC", "DEAD_LETTER_TOPIC")


def test_the_image_runs_as_the_statefulsets_pod_answers_an_instruction_and_stops_on_sigterm(
    kafka_bootstrap: str, topic_factory: Callable[..., str], tmp_path: Path
) -> None:
    image.check_tools()
    image.ensure_base(quiet=True)
    image.build()
    topics = {name: topic_factory(name.split("_")[0].lower()) for name in TOPICS}
    env = image.pod_env(config_maps(render("single-process")), kafka_bootstrap, topics)
    volume = tmp_path / "volume"
    pod = image.Pod(env, volume, tmp_path / "pod.log")
    try:
        shipped = image.shipped_package(pod.root)
        deadline = time.monotonic() + 120
        while "controller starting" not in pod.log_text():
            assert pod.running(), pod.log_text()[-3000:]
            assert time.monotonic() < deadline, pod.log_text()[-3000:]
            time.sleep(0.5)
        instruction = {"id": 0, "timestamp": 1700, "instruction_type": "optimize",
                       "model_id": "dynamic_v0", "instruction": "optimize"}  # fmt: skip
        client.produce(kafka_bootstrap, topics["INSTRUCTION_TOPIC"], [json.dumps(instruction)])
        syncs = client.read_messages(kafka_bootstrap, topics["SYNC_TOPIC"], count=1, timeout=90)
        commands = client.read_messages(kafka_bootstrap, topics["COMMAND_TOPIC"], count=2,
                                        timeout=60)  # fmt: skip
        assert pod.running(), pod.log_text()[-3000:]
        stopped_in, status = pod.stop()
    finally:
        pod.close()

    assert [json.loads(m.value()) for m in syncs] == [
        {"type": "pause", "timestamp": 1700, "model_id": -1}
    ]
    sent = [json.loads(m.value()) for m in commands]
    assert [(c["id"], c["type"], c["optimisation_id"], c["timestamp"]) for c in sent] == [
        ("cmd-0", "opt_initialise", 0, 1700), ("cmd-1", "opt_step", 0, 1700),
    ]  # fmt: skip
    # What production runs is in the image; the stand-ins and the demo are not.
    assert {"flow.py", "tools/probe.py", "tools/recovery.py", "tools/inspection.py",
            "tools/warmstart.py", "adapters/schemas/rtcef/factory_reports-value.avsc",
            "domain/dialects/rtcef.py"} <= shipped  # fmt: skip
    assert [name for name in shipped if name.startswith("sim/")] == []
    assert stopped_in < 5, pod.log_text()[-2000:]
    # A requested stop (SIGTERM): the dataflow finished, status 0, not killed (-9/137).
    assert status == 0, (status, pod.log_text()[-2000:])
    assert "controller stopping: SIGTERM received" in pod.log_text()
    assert "Traceback" not in pod.log_text()
    partition = volume / "part-0.sqlite3"
    assert partition.stat().st_uid == image.UID
    lines = [line for line in pod.log_text().splitlines() if line.startswith("{")]
    assert any(json.loads(line)["msg"] == "controller starting" for line in lines)
