#!/bin/sh
# Initialises this pod's recovery partition(s). Idempotent: run it on every
# start (an init container); it only creates partitions that are missing and
# never touches existing state.
#
# One volume per pod (volumeClaimTemplates): pod k starts with partition k of
# BYTEWAX_RECOVERY_PARTITIONS (default: the Helm chart's BYTEWAX_RECOVERY_PARTS,
# then BYTEWAX_REPLICAS, else 1). A pod added later (k at or beyond the count)
# holds none, and a volume whose partitions were moved by
# `python -m dataflow.recovery rebalance` gets none re-created.
set -eu
directory="${BYTEWAX_RECOVERY_DIRECTORY:-${BYTEWAX_SQLITE_DIRECTORY:?set BYTEWAX_RECOVERY_DIRECTORY}}"
partitions="${BYTEWAX_RECOVERY_PARTITIONS:-${BYTEWAX_RECOVERY_PARTS:-${BYTEWAX_REPLICAS:-1}}}"
if [ -n "${BYTEWAX_POD_NAME:-}" ] && [ "$partitions" -gt 1 ]; then
    ordinal="${BYTEWAX_POD_NAME##*-}"
    exec python -m dataflow.recovery "$directory" "$partitions" --pod "$ordinal"
fi
exec python -m dataflow.recovery "$directory" "$partitions"
