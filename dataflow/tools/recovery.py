"""Recovery directories from the command line: create partitions, move them, the Kubernetes Job.

Role: operator tool over ``dataflow.adapters.recovery`` (what the commands do and
why is explained there)::

    python -m dataflow.tools.recovery DIR N [--only K ... | --pod K]
    python -m dataflow.tools.recovery rebalance --partitions N --processes P DIR0 DIR1 ...
    python -m dataflow.tools.recovery rebalance-job --volumes M --processes P --partitions N
        --image IMAGE [--statefulset NAME] [--namespace NS]   # | kubectl apply -f -
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from dataflow.adapters.recovery import RebalanceError, ensure, plan_rebalance, rebalance


def rebalance_job(
    statefulset: str, volumes: int, processes: int, partitions: int, image: str,
    namespace: str | None = None,
) -> dict[str, Any]:  # fmt: skip
    """A Kubernetes Job running ``rebalance`` over the StatefulSet's recovery volumes.

    It mounts the claims ``recovery-<statefulset>-0 .. volumes-1`` (the
    ``volumeClaimTemplates`` name ``recovery``) at ``/volumes/<k>``; run it with the
    StatefulSet at 0 replicas. It runs as the pods do (uid 65532, read-only root).
    ``ReadWriteOnce`` claims must be attachable to one node together (one zone).
    """
    if volumes < processes:
        raise RebalanceError(f"{processes} processes need {processes} volumes, got {volumes}")
    labels = {"app.kubernetes.io/name": "rtcef-controller"}
    metadata: dict[str, Any] = {"name": f"{statefulset}-rebalance", "labels": labels}
    if namespace:
        metadata["namespace"] = namespace
    mounts = [f"/volumes/{k}" for k in range(volumes)]
    command = ["python", "-m", "dataflow.tools.recovery", "rebalance", "--partitions",
               str(partitions), "--processes", str(processes), *mounts]  # fmt: skip
    container = {
        "name": "rebalance", "image": image, "command": command,
        "securityContext": {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
                            "capabilities": {"drop": ["ALL"]}},
        "volumeMounts": [{"name": f"volume-{k}", "mountPath": mount}
                         for k, mount in enumerate(mounts)],
    }  # fmt: skip
    pod_spec = {
        "restartPolicy": "Never", "automountServiceAccountToken": False,
        "securityContext": {"runAsNonRoot": True, "runAsUser": 65532, "runAsGroup": 65532,
                            "fsGroup": 65532, "seccompProfile": {"type": "RuntimeDefault"}},
        "containers": [container],
        "volumes": [{"name": f"volume-{k}",
                     "persistentVolumeClaim": {"claimName": f"recovery-{statefulset}-{k}"}}
                    for k in range(volumes)],
    }  # fmt: skip
    return {"apiVersion": "batch/v1", "kind": "Job", "metadata": metadata,
            "spec": {"backoffLimit": 0, "template": {"spec": pod_spec}}}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point: ``DIR N [--only K | --pod K]`` or ``rebalance ...``."""
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["rebalance"]:
        return _rebalance_main(argv[1:])
    if argv[:1] == ["rebalance-job"]:
        return _rebalance_job_main(argv[1:])
    parser = argparse.ArgumentParser(
        prog="python -m dataflow.tools.recovery",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("directory", type=Path)
    parser.add_argument("partitions", type=int, help="total partition count (fixed forever)")
    which = parser.add_mutually_exclusive_group()
    which.add_argument(
        "--only",
        type=int,
        action="append",
        default=None,
        help="create only this partition index (repeatable)",
    )
    which.add_argument(
        "--pod", type=int, help="this pod's ordinal: per-pod volumes (see the module docstring)"
    )
    args = parser.parse_args(argv)  # fmt: skip
    created = ensure(args.directory, args.partitions, args.only, pod=args.pod)
    state = f"created {', '.join(created)}" if created else "nothing to create"
    print(f"recovery: {args.directory}: {state}", file=sys.stderr)
    return 0


def _rebalance_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m dataflow.tools.recovery rebalance",
        description="Move recovery partitions so that P processes resume: partition p to "
        "volume p %% P. Stop every process first.",
    )
    parser.add_argument("--partitions", type=int, required=True, help="the partition count")
    parser.add_argument("--processes", type=int, required=True, help="the new process count")
    parser.add_argument("--dry-run", action="store_true", help="print the moves only")
    parser.add_argument("volumes", type=Path, nargs="+", help="every pod's volume, in pod order")
    args = parser.parse_args(argv)
    try:
        if args.dry_run:
            moves = plan_rebalance(args.volumes, args.partitions, args.processes)
        else:
            moves = rebalance(args.volumes, args.partitions, args.processes)
    except RebalanceError as error:
        print(f"recovery: nothing moved: {error}", file=sys.stderr)
        return 2
    for move in moves:
        print(f"part-{move.partition}: {move.source} -> {move.target}")
    verb = "would move" if args.dry_run else "moved"
    print(f"recovery: {verb} {len(moves)} partition(s) for {args.processes} process(es)",
          file=sys.stderr)  # fmt: skip
    return 0


def _rebalance_job_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m dataflow.tools.recovery rebalance-job",
        description="Print (JSON, which kubectl reads) a Job that rebalances the StatefulSet's "
        "recovery volumes for a new process count: `... | kubectl apply -f -`.",
    )
    parser.add_argument("--statefulset", default="rtcef-controller")
    parser.add_argument(
        "--volumes",
        type=int,
        required=True,
        help="volumes that may hold partitions: the largest pod count run so far",
    )
    parser.add_argument("--processes", type=int, required=True, help="the new process count")
    parser.add_argument(
        "--partitions", type=int, required=True, help="BYTEWAX_RECOVERY_PARTITIONS (fixed)"
    )
    parser.add_argument("--image", required=True, help="the controller's image")
    parser.add_argument("--namespace")
    args = parser.parse_args(argv)  # fmt: skip
    try:
        job = rebalance_job(args.statefulset, args.volumes, args.processes, args.partitions,
                            args.image, args.namespace)  # fmt: skip
    except RebalanceError as error:
        print(f"recovery: {error}", file=sys.stderr)
        return 2
    print(json.dumps(job, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
