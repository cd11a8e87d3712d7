#!/bin/sh
# Initialises this pod's recovery partition(s). Idempotent: run it on every
# start (an init container); it creates partitions only on a new volume and
# never touches existing state.
#
# One volume per pod (volumeClaimTemplates), several processes: pod k gets
# partition k of BYTEWAX_RECOVERY_PARTITIONS (default: the Helm chart's
# BYTEWAX_RECOVERY_PARTS, then BYTEWAX_REPLICAS, else 1), none if k is at or
# beyond that count (a pod added later). One process: every partition. Only a
# volume never initialised gets any: one holding a partition or a marker (of its
# creation, or of `python -m dataflow.tools.recovery rebalance`) is left as it is.
set -eu
directory="${BYTEWAX_RECOVERY_DIRECTORY:-${BYTEWAX_SQLITE_DIRECTORY:?set BYTEWAX_RECOVERY_DIRECTORY}}"
partitions="${BYTEWAX_RECOVERY_PARTITIONS:-${BYTEWAX_RECOVERY_PARTS:-${BYTEWAX_REPLICAS:-1}}}"
pod="${BYTEWAX_POD_NAME:-}"
ordinal="${pod##*-}"
if [ "${BYTEWAX_REPLICAS:-1}" -gt 1 ] && [ -n "$pod" ]; then
    case "$ordinal" in
        ''|*[!0-9]*) ;;
        *) exec python -m dataflow.tools.recovery "$directory" "$partitions" --pod "$ordinal" ;;
    esac
fi
exec python -m dataflow.tools.recovery "$directory" "$partitions"
