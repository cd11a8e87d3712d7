"""Wayeb's own test of a saved model, over py4j: the client half of ``tests/rtcef/rescore.py``.

Run by the original services' Python 3.9 environment (it has ``py4j``), against the
Wayeb JVM ``rescore.py`` starts (``service`` mode: the same gateway object the
factory's ``server`` exposes). Arguments: the gateway's Java port and the stream
domain (``maritimejson``, as the factory's configuration says).
Standard input: a JSON list of jobs ``{"test": path, "model": path, "confidence": c}``.
Standard output: a JSON list of ``[tp, tn, fp, fn]``, one per job, in order, as
``WrappedMethods4Python.loadAndTest`` counts them (the call the factory makes to score
a step, with the distances of the loop's configuration, -1 and -1).

No import from the project: this file must run on Python 3.9 with that environment only.
"""

import json
import sys

from py4j.java_gateway import GatewayParameters, JavaGateway


def main() -> int:
    java_port, domain = int(sys.argv[1]), sys.argv[2]
    jobs = json.load(sys.stdin)
    gateway = JavaGateway(gateway_parameters=GatewayParameters(port=java_port))
    try:
        counts = [
            [
                float(v)
                for v in gateway.entry_point.loadAndTest(
                    job["test"], job["model"], domain, -1.0, -1.0, float(job["confidence"])
                )
            ]
            for job in jobs
        ]
    finally:
        gateway.close()
    json.dump(counts, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
