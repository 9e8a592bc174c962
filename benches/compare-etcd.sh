#!/usr/bin/env bash
# Real etcd against kvserver on this machine, one member each, same
# settings, the same `kvtool bench` loads, alternating between the two over
# several rounds; prints the median of each figure and the ratio.
#
#   benches/compare-etcd.sh [rounds]      (default 3; ROUNDS=... works too)
#
# Needs etcd (apt-get install -y etcd-server) and builds kvserver and kvtool
# in release mode. Every server it starts is stopped on exit.
set -euo pipefail

rounds=${1:-${ROUNDS:-3}}
# shellcheck source=benches/common.sh
. "$(dirname "${BASH_SOURCE[0]}")/common.sh"

work=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

# The loads: name and kvtool bench arguments.
loads=(
  "put-100conns-1000clients|put --conns 100 --clients 1000 --total 100000 --key-size 8 --val-size 256 --key-space-size 100000"
  "range-serializable-1000clients|range foo --consistency s --conns 100 --clients 1000 --total 200000"
  "range-linearizable-1000clients|range foo --consistency l --conns 100 --clients 1000 --total 200000"
  "put-1client|put --conns 1 --clients 1 --total 3000 --key-size 8 --val-size 256 --key-space-size 100000"
)

results="$work/results"
: >"$results"
for round in $(seq 1 "$rounds"); do
  for server in etcd kvserver; do
    start_member "$server"
    ETCDCTL_API=3 etcdctl --endpoints "$ep" put foo bar >/dev/null
    for load in "${loads[@]}"; do
      name=${load%%|*}
      # shellcheck disable=SC2086
      line=$("$kvtool" -w json bench ${load#*|} --endpoints "$ep" | tail -1)
      echo "$round $server $name $line" >>"$results"
      echo "round $round $server $name: $(echo "$line" | python3 -c 'import json,sys; j=json.load(sys.stdin); print("%.0f/s p99 %.2f ms errors %d" % (j["per_second"], j["latency_ms"]["p99"], j["errors"]))')" >&2
    done
    stop_last
  done
done

python3 - "$results" <<'EOF'
import json, statistics, sys
rows = {}
for line in open(sys.argv[1]):
    rnd, server, name, js = line.split(" ", 3)
    j = json.loads(js)
    rows.setdefault((name, server), []).append(j)
names = []
for (n, _) in rows:
    if n not in names:
        names.append(n)
print()
print("| load | etcd req/s | kvserver req/s | ratio | etcd p99 ms | kvserver p99 ms |")
print("|---|---:|---:|---:|---:|---:|")
for n in names:
    e = rows.get((n, "etcd"), [])
    k = rows.get((n, "kvserver"), [])
    med = lambda rs, f: statistics.median(f(r) for r in rs) if rs else float("nan")
    et, kt = med(e, lambda r: r["per_second"]), med(k, lambda r: r["per_second"])
    ep, kp = med(e, lambda r: r["latency_ms"]["p99"]), med(k, lambda r: r["latency_ms"]["p99"])
    print(f"| {n} | {et:.0f} | {kt:.0f} | {kt / et:.2f}x | {ep:.2f} | {kp:.2f} |")
print(f"\n(medians of {len(e)} rounds each; errors: etcd {sum(r['errors'] for (n2, s), rs in rows.items() if s == 'etcd' for r in rs)}, kvserver {sum(r['errors'] for (n2, s), rs in rows.items() if s == 'kvserver' for r in rs)})")
EOF
