#!/usr/bin/env bash
# What TLS costs, measured as Go clients see it: real etcd beside kvserver,
# one member each, plaintext and then TLS on the client URL (--auto-tls,
# the client skipping verification), loads from benches/clientv3 (etcd's
# own Go client), alternating over several rounds. Prints the median
# throughput and the server's CPU time per request (from /proc) for each.
#
#   benches/compare-etcd-tls.sh [rounds]      (default 2; ROUNDS=... works too)
#
# Needs etcd (apt-get install -y etcd-server); builds kvserver in release
# mode and the Go load generator. Every server it starts is stopped on exit.
set -euo pipefail

rounds=${1:-${ROUNDS:-2}}
# shellcheck source=benches/common.sh
. "$(dirname "${BASH_SOURCE[0]}")/common.sh"
clientv3_bench

work=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

loads=(
  "put-10conns-100clients|-op put -conns 10 -clients 100 -total 30000"
  "range-serializable-10conns-100clients|-op range -consistency s -conns 10 -clients 100 -total 60000"
  "put-1client|-op put -conns 1 -clients 1 -total 2000"
)

results="$work/results"
: >"$results"
for round in $(seq 1 "$rounds"); do
  for scheme in http https; do
    for server in etcd kvserver; do
      start_member "$server" "$scheme"
      for load in "${loads[@]}"; do
        name=${load%%|*}
        before=$(cpu "$pid")
        # shellcheck disable=SC2086
        line=$("$clientv3" ${load#*|} "${tls[@]}" -endpoints "$ep" | tail -1)
        after=$(cpu "$pid")
        echo "$round $server $scheme $name $before $after $line" >>"$results"
        echo "round $round $server $scheme $name: $(echo "$line" | python3 -c 'import json,sys; j=json.load(sys.stdin); print("%.0f/s errors %d" % (j["per_second"], j["errors"]))')" >&2
      done
      stop_last
    done
  done
done

python3 - "$results" <<'PY'
import json, statistics, sys
rows = {}
for line in open(sys.argv[1]):
    rnd, server, scheme, name, before, after, js = line.split(" ", 6)
    j = json.loads(js)
    n = j["requests"] if "requests" in j else j["total"]
    rows.setdefault((name, server, scheme), []).append((j["per_second"], (float(after) - float(before)) / max(n, 1) * 1e6))
names = []
for (n, _, _) in rows:
    if n not in names:
        names.append(n)
med = lambda xs: statistics.median(xs) if xs else float("nan")
print()
print("| load | server | plain req/s | TLS req/s | TLS/plain | plain CPU µs/req | TLS CPU µs/req |")
print("|---|---|---:|---:|---:|---:|---:|")
for n in names:
    for s in ("etcd", "kvserver"):
        p = rows.get((n, s, "http"), [])
        t = rows.get((n, s, "https"), [])
        pr, tr = med([r for r, _ in p]), med([r for r, _ in t])
        pc, tc = med([c for _, c in p]), med([c for _, c in t])
        print(f"| {n} | {s} | {pr:.0f} | {tr:.0f} | {tr / pr:.2f} | {pc:.0f} | {tc:.0f} |")
for n in names:
    e = med([r for r, _ in rows.get((n, "etcd", "https"), [])])
    k = med([r for r, _ in rows.get((n, "kvserver", "https"), [])])
    print(f"\nwith TLS, {n}: kvserver/etcd = {k / e:.2f}x")
PY
