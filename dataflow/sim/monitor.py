"""``just monitor``: the demo with a real Prometheus beside it, loaded with the shipped alerts.

Role: an operator's first look at the kit. Starts Prometheus (``dataflow.sim.prometheus``)
scraping the demo controller's ``/metrics`` every 2 s with ``k8s/monitoring/rules.yaml``
loaded, prints where to look, then runs the demo (``dataflow.sim.demo``) with ``--hold``:
its two rounds, then everything keeps running until Ctrl-C. Demo options pass through
(``just monitor --budget 20``). Needs ``KAFKA_BOOTSTRAP_SERVERS`` (the recipe starts a
broker) and the ``prometheus`` binary (Debian's ``prometheus`` package).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from dataflow.sim import demo
from dataflow.sim.prometheus import DASHBOARD, RULES, Prometheus, PrometheusError, free_port


def where_to_look(prometheus: Prometheus, metrics: str) -> list[str]:
    """The lines that tell the operator where each part of the kit is."""
    return [
        f"monitor: Prometheus   {prometheus.url}  (its log: {prometheus.log_path})",
        f"monitor:   alerts     {prometheus.url}/alerts   rules: {RULES}",
        f"monitor:   a query    {prometheus.url}/graph?g0.expr=controller_session_phase%3D%3D1",
        f"monitor: controller   {metrics}",
        f"monitor: dashboard    {DASHBOARD} (import its JSON into Grafana, "
        "datasource: this Prometheus)",
    ]


def main(argv: list[str] | None = None) -> int:
    """Start Prometheus, run the demo held open beside it, stop both; the demo's status."""
    parser = argparse.ArgumentParser(prog="python -m dataflow.sim.monitor", add_help=False)
    parser.add_argument("--output", type=Path, default=Path("demo-output"))
    known, rest = parser.parse_known_args(argv)
    port = free_port()
    folder = known.output / f"prometheus-{time.strftime('%Y%m%d-%H%M%S')}"
    try:
        prometheus = Prometheus(folder, [f"127.0.0.1:{port}"], scrape_s=2.0).start()
    except PrometheusError as error:
        print(f"monitor: {error}", file=sys.stderr)
        return 1
    try:
        for line in where_to_look(prometheus, f"http://127.0.0.1:{port}/metrics"):
            print(line)
        return demo.main([*rest, "--output", str(known.output), "--metrics-port", str(port),
                          "--hold"])  # fmt: skip
    finally:
        prometheus.stop()


if __name__ == "__main__":
    sys.exit(main())
