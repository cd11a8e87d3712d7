"""The operator's kit against a real Prometheus server scraping a running controller.

Prometheus is Debian's ``prometheus`` package (``.ci/run`` installs it), loaded with the
shipped rules (``k8s/monitoring/rules.yaml``); it scrapes the controller's ``/metrics``
every second and evaluates the rules as often. A round completes with the factory
answering; then the factory goes silent and the broker goes down in the next round, so
the engine stays paused past the round limit; the broker comes back, the round is
aborted and the engine plays. Everything is read through Prometheus's HTTP API.
"""

from __future__ import annotations

import os
import signal
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest

from dataflow.domain import messages as msg
from dataflow.domain.messages import Instruction, InstructionKind
from dataflow.sim.prometheus import Prometheus, dashboard_queries
from tests.integration.harness import Wiring, factory
from tests.kafka import broker as harness
from tests.kafka import client
from tests.kafka.broker import free_port

pytestmark = pytest.mark.integration

#: Two steps, one attempt each, 6 s a report: no round can keep the engine paused
#: longer than 3 * 6 = 18 s (controller_round_limit_seconds).
SETTINGS = {"OPTIMISER_BUDGET": "2", "MAX_RETRIES": "0", "REPORT_TIMEOUT_S": "6",
            # The broker is down for over a minute: the outbox waits for it, as an operator
            # riding out a broker restart would set it.
            "DELIVERY_TIMEOUT_S": "600"}  # fmt: skip


def wait_for(what: str, check: Callable[[], object], timeout: float) -> object:
    """Poll ``check`` until it returns something true; fail with ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        time.sleep(0.5)
    raise AssertionError(f"{what}: not within {timeout:.0f}s")


def paused_now(port: int) -> bool:
    """Whether the controller's own endpoint says the engine is paused."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as page:
        lines = page.read().decode().splitlines()
    prefix = 'controller_engine_paused_since_timestamp_seconds{key="controller"} '
    return any(line.startswith(prefix) and float(line.split()[1]) > 0 for line in lines)


def test_prometheus_sees_a_stuck_round_page_then_its_abort_and_data_for_every_dashboard_query(
    tmp_path: Path, controller_factory
) -> None:
    began = time.time()
    own = harness.start(tmp_path / "broker")  # this test stops it: not the shared one
    port = free_port()
    (tmp_path / "api").mkdir()
    try:
        names = [client.unique_topic(p) for p in ("i", "r", "c", "s", "d")]
        client.create_topics(own.bootstrap, names)
        wiring = Wiring(own.bootstrap, "seed", *names, extra={
            **SETTINGS, "BYTEWAX_DATAFLOW_API_ENABLED": "1",
            "BYTEWAX_DATAFLOW_API_PORT": str(port),
            "BYTEWAX_DATAFLOW_API_CACHE_PATH": str(tmp_path / "api")})  # fmt: skip
        controller = controller_factory(wiring)
        with Prometheus(tmp_path / "prometheus", [f"127.0.0.1:{port}"]) as prometheus:
            # A round the factory answers, and one input the controller cannot read.
            with factory(wiring):
                controller.start()
                wiring.send_instruction(Instruction(InstructionKind.OPTIMIZE, 1000, 1))
                wiring.wait_for_plays(1)
            client.produce(own.bootstrap, wiring.instructions, [b"not an instruction"])
            wait_for("the controller scraped", prometheus.targets_up, 60)
            assert prometheus.query("controller_round_limit_seconds")[0]["value"][1] == "18"
            # A healthy round pages nobody (ControllerAbsent may have gone pending before
            # the first scrape: it clears).
            wait_for("no alert", lambda: prometheus.alerts() == {}, 30)

            # The factory is silent now; the broker dies as the next round begins.
            wiring.send_instruction(Instruction(InstructionKind.OPTIMIZE, 2000, 2))
            wait_for("the engine paused", lambda: paused_now(port), 60)
            os.kill(own.pid, signal.SIGKILL)  # before the 6 s deadline: its marker is stuck
            harness.stop_pid(own.pid)
            wait_for(
                "ControllerEnginePausedTooLong pending",
                lambda: "ControllerEnginePausedTooLong" in prometheus.alerts(),
                90,
            )
            assert controller.running()  # the controller is up and scraped: only stuck
            wait_for("ControllerEnginePausedTooLong firing",  # its `for: 1m`
                     lambda: prometheus.alerts().get("ControllerEnginePausedTooLong") == "firing",
                     120)  # fmt: skip
            down = prometheus.alerts()

            # The broker is back: the deadline passes, the round is aborted, the engine plays.
            own = harness.start(own.workdir)  # same data and ports
            syncs = wiring.wait_for_plays(2, timeout=180)
            wait_for(
                "ControllerRoundAborted firing",
                lambda: prometheus.alerts().get("ControllerRoundAborted") == "firing",
                60,
            )
            wait_for(
                "the paused alert resolved",
                lambda: "ControllerEnginePausedTooLong" not in prometheus.alerts(),
                60,
            )
            after = prometheus.alerts()

            # Every panel of the dashboard had something to show over the test.
            empty = [expr for expr in dashboard_queries("controller")
                     if not prometheus.query_range(expr, began, time.time())]  # fmt: skip

            # The controller stops: its absence is noticed (pending: `for: 5m`).
            controller.stop(signal.SIGTERM)
            wait_for("ControllerAbsent pending",
                     lambda: "ControllerAbsent" in prometheus.alerts(), 60)  # fmt: skip
    finally:
        own.stop()

    # Stuck: paused past the round limit for a minute, and no epoch snapshotted for over
    # three intervals and a minute (its `for: 2m` not yet run out); nothing aborted yet.
    assert down == {"ControllerEnginePausedTooLong": "firing",
                    "ControllerNoSnapshotProgress": "pending"}  # fmt: skip
    assert after == {"ControllerRoundAborted": "firing"}
    assert empty == []
    first = syncs[1]
    assert first.type == "play"
    old_model = msg.SyncMessage("play", 2000, first.model_id)  # the aborted round plays it
    assert syncs == [msg.SyncMessage("pause", 1000, -1), first,
                     msg.SyncMessage("pause", 2000, -1), old_model]  # fmt: skip
    assert controller.returncode == 0  # a requested stop, after riding out the outage
