#!/usr/bin/env bash
# A soak of one kvserver member: `kvtool bench soak` (puts, ranges, txns,
# leases, watchers and compaction, mixed) for a while, one report line per
# window with the member's memory and CPU time per request, and a verdict:
# no failed request, every watcher saw every put, memory flat.
#
#   benches/soak.sh [duration]     default 10m; 12h, 3d work too
#
# SOAK_CONNS and SOAK_CLIENTS set the load's shape (4 connections, 32
# clients), SOAK_ARGS adds `kvtool bench soak` options (--rate 2000 holds
# a fixed rate; see `kvtool bench soak --help`). KVSERVER and KVTOOL name
# prebuilt binaries (the test command uses its own build); otherwise both
# are built in release mode. Reports go to stdout, the member's log stays
# in a temporary directory that is removed on exit unless the soak fails.
set -euo pipefail

duration=${1:-${SOAK_DURATION:-10m}}
NEED_ETCD=0
# shellcheck source=benches/common.sh
. "$(dirname "${BASH_SOURCE[0]}")/common.sh"

work=$(mktemp -d)
pids=()
status=1
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  if [ "$status" = 0 ]; then
    rm -rf "$work"
  else
    echo "soak failed; the member's data and log are in $work" >&2
  fi
}
trap cleanup EXIT

start_member kvserver
# shellcheck disable=SC2086
"$kvtool" bench soak --endpoints "$ep" --pid "$pid" --duration "$duration" \
  --conns "${SOAK_CONNS:-4}" --clients "${SOAK_CLIENTS:-32}" \
  --key-space-size 10000 --val-size 256 ${SOAK_ARGS:-}
status=0
