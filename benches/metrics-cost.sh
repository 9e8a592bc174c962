#!/usr/bin/env bash
# What kvserver's instrumentation costs: the put load of Go clients
# (benches/clientv3, etcd's own client) against this tree's kvserver and
# against one built from BASE (a revision without it, by default the last
# one before /metrics), alternating over several rounds. Prints the median
# throughput and the server's CPU time per request (from /proc) for each,
# and their ratio.
#
#   benches/metrics-cost.sh [rounds] [base]   (defaults: 3, e309176)
#
# Builds both in release mode (the base in a git worktree under target/).
set -euo pipefail

rounds=${1:-${ROUNDS:-3}}
base=${2:-${BASE:-e309176}}
# shellcheck source=benches/common.sh
. "$(dirname "${BASH_SOURCE[0]}")/common.sh"
clientv3_bench

tree="$root/target/metrics-cost-base"
if [ ! -d "$tree" ]; then
  git -C "$root" worktree add --detach "$tree" "$base" >/dev/null
fi
git -C "$tree" checkout -q --detach "$base"
(cd "$tree" && CARGO_TARGET_DIR="$root/target/metrics-cost-target" cargo build --release -q -p server)
base_bin="$root/target/metrics-cost-target/release/kvserver"

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
  "put-1client|-op put -conns 1 -clients 1 -total 2000"
)

results="$work/results"
: >"$results"
for round in $(seq 1 "$rounds"); do
  for which in base metrics; do
    if [ "$which" = base ]; then start_member "$base_bin"; else start_member kvserver; fi
    for load in "${loads[@]}"; do
      name=${load%%|*}
      before=$(cpu "$pid")
      # shellcheck disable=SC2086
      line=$("$clientv3" ${load#*|} -endpoints "$ep" | tail -1)
      after=$(cpu "$pid")
      echo "$round $which $name $before $after $line" >>"$results"
      echo "round $round $which $name: $(echo "$line" | python3 -c 'import json,sys; j=json.load(sys.stdin); print("%.0f/s errors %d" % (j["per_second"], j["errors"]))')" >&2
    done
    stop_last
  done
done

python3 - "$results" "$base" <<'PY'
import json, statistics, sys
rows = {}
for line in open(sys.argv[1]):
    rnd, which, name, before, after, js = line.split(" ", 5)
    j = json.loads(js)
    n = j["requests"] if "requests" in j else j["total"]
    rows.setdefault((name, which), []).append((j["per_second"], (float(after) - float(before)) / max(n, 1) * 1e6))
med = lambda xs: statistics.median(xs) if xs else float("nan")
print()
print(f"| load | base {sys.argv[2]} req/s | with metrics req/s | ratio | base CPU µs/req | with metrics CPU µs/req |")
print("|---|---:|---:|---:|---:|---:|")
for name in dict.fromkeys(n for n, _ in rows):
    b, m = rows.get((name, "base"), []), rows.get((name, "metrics"), [])
    br, mr = med([r for r, _ in b]), med([r for r, _ in m])
    bc, mc = med([c for _, c in b]), med([c for _, c in m])
    print(f"| {name} | {br:.0f} | {mr:.0f} | {mr / br:.3f} | {bc:.1f} | {mc:.1f} |")
PY
