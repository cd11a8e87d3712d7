"""A real Prometheus server beside a controller: the operator's kit, run as an operator would.

Role: starts the ``prometheus`` binary (Debian's ``prometheus`` package; ``.ci/run``
installs it) with the project's own alert rules (``k8s/monitoring/rules.yaml``), scraping
the controllers' ``/metrics`` endpoints, and reads its HTTP API: instant and range
queries, and the alerts' states. Used by ``just monitor`` (``dataflow.sim.monitor``)
and by the integration test that proves the rules and the dashboard against a running
controller. Not shipped in the image (``dataflow.sim``).
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import yaml

#: The project's alert rules and Grafana dashboard, as shipped for Kubernetes.
MONITORING = Path(__file__).resolve().parents[2] / "k8s" / "monitoring"
RULES = MONITORING / "rules.yaml"
DASHBOARD = MONITORING / "dashboard.yaml"


def free_port() -> int:
    """A TCP port free on the loopback interface now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class PrometheusError(RuntimeError):
    """Prometheus is missing, did not start, or refused a query."""


class Prometheus:
    """One Prometheus server with its own storage in ``folder``, on a free local port.

    ``targets``: ``host:port`` of each controller process's metrics endpoint, scraped
    as job ``controller`` every ``scrape_s``; the rules are evaluated as often.
    """

    def __init__(
        self, folder: Path, targets: list[str], *, scrape_s: float = 1.0, rules: Path = RULES
    ) -> None:
        self.folder = folder
        self.targets = list(targets)
        self.scrape_s = scrape_s
        self.rules = rules
        self.port = 0
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """Where its web UI and API are served."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def log_path(self) -> Path:
        """Prometheus's own log."""
        return self.folder / "prometheus.log"

    def start(self, timeout: float = 60.0) -> Prometheus:
        """Write the configuration, start the server and wait until it is ready."""
        binary = shutil.which("prometheus")
        if binary is None:
            raise PrometheusError("prometheus is not on PATH: install Debian's prometheus package")
        self.folder.mkdir(parents=True, exist_ok=True)
        interval = f"{max(int(self.scrape_s * 1000), 100)}ms"
        config = {  # JSON is YAML: no YAML writer needed
            "global": {"scrape_interval": interval, "evaluation_interval": interval},
            "rule_files": [str(self.rules)],
            "scrape_configs": [{"job_name": "controller",
                                "static_configs": [{"targets": self.targets}]}],
        }  # fmt: skip
        (self.folder / "prometheus.yml").write_text(json.dumps(config, indent=1))
        self.port = free_port()
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(  # noqa: S603 - the prometheus on PATH, our flags
                [binary, f"--config.file={self.folder / 'prometheus.yml'}",
                 f"--storage.tsdb.path={self.folder / 'data'}",
                 f"--web.listen-address=127.0.0.1:{self.port}", "--log.level=warn"],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                start_new_session=True,
            )  # fmt: skip
        deadline = time.monotonic() + timeout
        while not self._ready():
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                tail = self.log_path.read_text(errors="replace")[-2000:]
                raise PrometheusError(f"prometheus did not become ready:\n{tail}")
            time.sleep(0.2)
        return self

    def _ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}/-/ready", timeout=2) as page:  # noqa: S310
                return bool(page.status == 200)
        except OSError:
            return False

    def stop(self) -> None:
        """Stop the server (SIGTERM, then SIGKILL)."""
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(15)

    def __enter__(self) -> Prometheus:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ------------------------------------------------------------------ the HTTP API

    def api(self, path: str, **params: str | float) -> Any:
        """GET ``/api/v1/<path>``; its ``data``, or ``PrometheusError`` with its error."""
        query = urllib.parse.urlencode({k: str(v) for k, v in params.items()})
        try:
            url = f"{self.url}/api/v1/{path}?{query}"  # http on loopback, built here
            with urllib.request.urlopen(url, timeout=10) as page:  # noqa: S310
                body = json.loads(page.read())
        except urllib.error.HTTPError as error:
            body = json.loads(error.read() or b"{}")
        if body.get("status") != "success":
            raise PrometheusError(f"{path} {params}: {body.get('error', body)}")
        return body["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        """An instant query's series (label sets and values), now."""
        return list(self.api("query", query=expr)["result"])

    def query_range(self, expr: str, start: float, end: float) -> list[dict[str, Any]]:
        """A range query's series between two Unix times, one point per scrape interval."""
        step = max(self.scrape_s, 1.0)
        return list(self.api("query_range", query=expr, start=start, end=end, step=step)["result"])

    def alerts(self) -> dict[str, str]:
        """Each active alert's name and state (``pending`` or ``firing``)."""
        states: dict[str, str] = {}
        for alert in self.api("alerts")["alerts"]:
            name = alert["labels"]["alertname"]
            if states.get(name) != "firing":  # one firing series makes the alert firing
                states[name] = alert["state"]
        return states

    def targets_up(self) -> int:
        """How many of its targets answered their last scrape."""
        return sum(1 for series in self.query('up{job="controller"} == 1'))


def dashboard_queries(key: str) -> list[str]:
    """Every query of the shipped Grafana dashboard, for session ``key``."""
    config_map = yaml.safe_load(DASHBOARD.read_text())
    (text,) = config_map["data"].values()
    panels = json.loads(text)["panels"]
    return [target["expr"].replace("$key", key)
            for panel in panels for target in panel.get("targets", [])]  # fmt: skip
