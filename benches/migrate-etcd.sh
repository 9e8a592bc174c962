#!/usr/bin/env bash
# `kvtool migrate from-etcd` against `etcdctl snapshot restore` on the same
# etcd snapshot: wall time and peak RSS of each.
#
#   benches/migrate-etcd.sh [size-MiB]     (default 1024; MIGRATE_MIB works too)
#
# Fills a fresh etcd 3.4 member with about size-MiB of values (64 KiB each,
# over a quarter as many keys, so every key has several revisions), saves a
# snapshot with etcdctl, then migrates it with kvtool and restores it with
# etcdctl (each into a new data directory, alternating, twice) and prints
# the figures. Needs etcd (installed when missing) and builds kvtool in
# release mode unless KVSERVER and KVTOOL name binaries already built.
set -euo pipefail

mib=${1:-${MIGRATE_MIB:-1024}}
# shellcheck source=benches/common.sh
. "$(dirname "${BASH_SOURCE[0]}")/common.sh"
work=$(mktemp -d -p "$root/target")
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

# measure CMD...: runs CMD, prints "seconds peak-RSS-MiB".
measure() {
  python3 - "$@" <<'PY'
import resource, subprocess, sys, time
t = time.monotonic()
subprocess.run(sys.argv[1:], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
print("%.2f %.0f" % (time.monotonic() - t, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024))
PY
}

start_member etcd
etcdctl --endpoints "$ep" compact 1 >/dev/null 2>&1 || true
values=$((mib * 16))
keys=$(( (values + 3) / 4 ))
echo "filling etcd with $values values of 64 KiB over $keys keys" >&2
"$kvtool" bench put --total "$values" --key-space-size "$keys" --key-size 16 --val-size 65536 \
  --conns 4 --clients 16 --endpoints "$ep" >/dev/null
snap="$work/etcd.snapshot"
etcdctl --endpoints "$ep" snapshot save "$snap" >/dev/null
stop_last
size=$(stat -c %s "$snap")
echo "snapshot: $((size / 1048576)) MiB" >&2

for round in 1 2; do
  m=$(measure "$kvtool" migrate from-etcd "$snap" --data-dir "$work/kv-$round")
  r=$(measure etcdctl snapshot restore "$snap" --data-dir "$work/etcd-$round")
  echo "round $round: kvtool migrate $m, etcdctl snapshot restore $r (seconds, peak MiB)" >&2
  echo "$m $r" >>"$work/results"
  rm -rf "$work/kv-$round" "$work/etcd-$round"
done
python3 - "$work/results" "$size" <<'PY'
import statistics, sys
rows = [list(map(float, l.split())) for l in open(sys.argv[1])]
med = lambda i: statistics.median(r[i] for r in rows)
size = int(sys.argv[2]) / 1048576
print(f"snapshot of {size:.0f} MiB")
print(f"| | wall time | peak RSS |")
print(f"|---|---:|---:|")
print(f"| kvtool migrate from-etcd | {med(0):.1f} s | {med(1):.0f} MiB |")
print(f"| etcdctl snapshot restore | {med(2):.1f} s | {med(3):.0f} MiB |")
print(f"| ratio | {med(0)/med(2):.2f}x | {med(1)/med(3):.2f}x |")
PY
