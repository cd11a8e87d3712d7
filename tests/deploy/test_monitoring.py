"""The operator's kit: alert rules proven by promtool, and read against the metrics they name.

``promtool`` comes from Debian's ``prometheus`` package (``.ci/run`` installs it).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import bytewax.connectors.kafka  # noqa: F401 - registers its consumer-lag gauge
import yaml
from prometheus_client import REGISTRY

from dataflow.adapters import observability  # noqa: F401 - registers the metrics
from tests.support import ROOT

MONITORING = ROOT / "k8s" / "monitoring"
RULES = MONITORING / "rules.yaml"
RULE_TESTS = Path(__file__).parent / "monitoring" / "rules_test.yaml"
BIN = Path(sys.executable).parent


def promtool(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    tool = shutil.which("promtool")
    assert tool, "promtool is missing: install Debian's prometheus package (.ci/run does)"
    return subprocess.run([tool, *args], cwd=cwd, capture_output=True, text=True, check=False)


def alerts() -> list[dict]:
    return [rule for group in yaml.safe_load(RULES.read_text())["groups"]
            for rule in group["rules"]]  # fmt: skip


def test_the_rules_pass_promtool_check_rules() -> None:
    checked = promtool("check", "rules", str(RULES))
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "SUCCESS: 6 rules found" in checked.stdout


def test_every_alert_fires_and_stays_quiet_as_its_promtool_unit_tests_say() -> None:
    tested = promtool("test", "rules", RULE_TESTS.name, cwd=RULE_TESTS.parent)
    assert tested.returncode == 0, tested.stdout + tested.stderr
    named = set(re.findall(r"alertname: (\w+)", RULE_TESTS.read_text()))
    assert named == {rule["alert"] for rule in alerts()}  # each alert has its unit tests


def test_the_prometheus_rule_holds_exactly_the_rules_file() -> None:
    operator = yaml.safe_load((MONITORING / "prometheusrule.yaml").read_text())
    assert operator["kind"] == "PrometheusRule"
    assert operator["spec"] == yaml.safe_load(RULES.read_text())


def test_every_alert_names_only_metrics_the_controller_serves() -> None:
    served = {metric.name for metric in REGISTRY.collect() if metric.name.startswith("controller_")}
    for rule in alerts():
        named = set(re.findall(r"\bcontroller_\w+", rule["expr"]))
        assert named, rule["alert"]
        for name in named:
            # Counters are exposed with ``_total``; the registry names them without it.
            assert name.removesuffix("_total") in served, (rule["alert"], name)


def test_every_alert_has_a_summary_a_description_and_a_runbook_in_the_readme() -> None:
    readme = (ROOT / "README.md").read_text()
    for rule in alerts():
        notes = rule["annotations"]
        assert notes["summary"], rule["alert"]
        assert notes["description"], rule["alert"]
        assert notes["runbook_url"] == f"README.md#{rule['alert'].lower()}"
        assert f"\n#### {rule['alert']}\n" in readme, f"no runbook section for {rule['alert']}"


def test_the_monitoring_kustomization_renders_the_rule_the_pod_monitor_and_the_dashboard() -> None:
    out = subprocess.run([BIN / "kubectl", "kustomize", MONITORING], capture_output=True,
                         text=True, check=True).stdout  # fmt: skip
    kinds = [doc["kind"] for doc in yaml.safe_load_all(out)]
    assert sorted(kinds) == ["ConfigMap", "PodMonitor", "PrometheusRule"]
    statefulset = (ROOT / "k8s" / "base" / "statefulset.yaml").read_text()
    assert "name: api" in statefulset  # the port the PodMonitor scrapes


def test_metric_names_follow_prometheus_conventions() -> None:
    for metric in REGISTRY.collect():
        if not metric.name.startswith("controller_"):
            continue
        assert not metric.name.endswith("_total"), metric.name  # the client adds it
        if metric.type == "histogram":
            assert metric.name.endswith("_seconds"), metric.name
        if "timestamp" in metric.name:
            assert metric.name.endswith("_timestamp_seconds"), metric.name


def test_the_dashboard_repeats_a_row_per_session_and_queries_only_served_metrics() -> None:
    config_map = yaml.safe_load((MONITORING / "dashboard.yaml").read_text())
    assert config_map["metadata"]["labels"]["grafana_dashboard"] == "1"  # the sidecar's label
    (text,) = config_map["data"].values()
    dashboard = json.loads(text)
    rows = [p for p in dashboard["panels"] if p["type"] == "row"]
    assert rows[0]["repeat"] == "key"  # one row per session
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert "controller_session_phase" in variables["key"]["definition"]
    served = {metric.name for metric in REGISTRY.collect()}  # ours, Bytewax's, the process's
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    assert len(exprs) >= 17
    named = {
        name for expr in exprs for name in re.findall(r"\b(?:controller|bytewax|process)_\w+", expr)
    }
    # Input lag per topic partition is Bytewax's own gauge; restarts, the process's start time.
    assert {"bytewax_kafka_consumer_lag", "process_start_time_seconds"} <= named
    for name in named:
        assert re.sub(r"_(total|bucket|count|sum)$", "", name) in served, name
