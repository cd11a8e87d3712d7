#!/bin/sh
# Starts the controller. The Bytewax Helm chart (and so waxctl) runs
# `sh ./entrypoint.sh` in the image's working directory; the kustomize manifests
# in k8s/ do the same.
#
# Bytewax itself reads BYTEWAX_RECOVERY_DIRECTORY, BYTEWAX_SNAPSHOT_INTERVAL,
# BYTEWAX_RECOVERY_BACKUP_INTERVAL, BYTEWAX_WORKERS_PER_PROCESS, and on Kubernetes
# BYTEWAX_POD_NAME + BYTEWAX_STATEFULSET_NAME (process id) and BYTEWAX_ADDRESSES
# or BYTEWAX_HOSTFILE_PATH (the cluster). This script only fills the gaps.
set -eu

# The Helm chart names the recovery mount BYTEWAX_SQLITE_DIRECTORY.
if [ -z "${BYTEWAX_RECOVERY_DIRECTORY:-}" ] && [ -n "${BYTEWAX_SQLITE_DIRECTORY:-}" ]; then
    export BYTEWAX_RECOVERY_DIRECTORY="$BYTEWAX_SQLITE_DIRECTORY"
fi
# `-r` without both intervals is an error in Bytewax 0.21: give defaults.
if [ -n "${BYTEWAX_RECOVERY_DIRECTORY:-}" ]; then
    export BYTEWAX_SNAPSHOT_INTERVAL="${BYTEWAX_SNAPSHOT_INTERVAL:-5}"
    export BYTEWAX_RECOVERY_BACKUP_INTERVAL="${BYTEWAX_RECOVERY_BACKUP_INTERVAL:-30}"
fi
replicas="${BYTEWAX_REPLICAS:-1}"
# A StatefulSet's pods are named <statefulset>-<ordinal>: take the StatefulSet's
# name from this pod's, so a renamed set (kustomize namePrefix, a Helm release
# name) still gives Bytewax the right process id and addresses.
pod="${BYTEWAX_POD_NAME:-}"
case "$pod" in
    *-*) case "${pod##*-}" in
             ''|*[!0-9]*) ;;
             *) export BYTEWAX_STATEFULSET_NAME="${pod%-*}" ;;
         esac ;;
esac
# Idempotent: creates only missing partitions, so a deployment without the init
# container (waxctl) starts too.
if [ -n "${BYTEWAX_RECOVERY_DIRECTORY:-}" ]; then
    sh "$(dirname "$0")/entrypoint-recovery.sh"
fi
# One process: no cluster. Bytewax derives a process id from the pod name and
# would then demand the addresses of a cluster that does not exist.
if [ "$replicas" -le 1 ]; then
    unset BYTEWAX_POD_NAME BYTEWAX_STATEFULSET_NAME
fi
# Several processes: every pod's address, from the StatefulSet's headless service.
if [ "$replicas" -gt 1 ] && [ -z "${BYTEWAX_ADDRESSES:-}" ] && [ -z "${BYTEWAX_HOSTFILE_PATH:-}" ]; then
    name="${BYTEWAX_STATEFULSET_NAME:?BYTEWAX_STATEFULSET_NAME is needed with BYTEWAX_REPLICAS > 1}"
    domain="${name}.${POD_NAMESPACE:-default}.svc.cluster.local"
    addresses=""
    i=0
    while [ "$i" -lt "$replicas" ]; do
        addresses="${addresses:+$addresses;}${name}-${i}.${domain}:${BYTEWAX_PROCESS_PORT:-9999}"
        i=$((i + 1))
    done
    export BYTEWAX_ADDRESSES="$addresses"
fi
# The Dataflow API writes dataflow.json here; the root filesystem is read-only.
export BYTEWAX_DATAFLOW_API_CACHE_PATH="${BYTEWAX_DATAFLOW_API_CACHE_PATH:-/tmp}"

exec python -m bytewax.run "${BYTEWAX_IMPORT_STR:-dataflow.flow:get_flow()}"
