#!/usr/bin/env bash
# Real etcd against kvserver on this machine, one member each, same
# settings, alternating between the two over several rounds (each round
# starts both afresh); prints the median of each figure and the ratio.
#
#   benches/compare-etcd.sh [rounds]      (default 3; ROUNDS=... works too)
#
# Each load runs twice: with benches/clientv3 (etcd's Go client, what
# Kubernetes uses; the headline figures) and with `kvtool bench` (names
# ending in -kvtool). Beside every throughput: the server's CPU time per
# request (user + system, from /proc/<pid>/stat) and the load generator's
# own (its whole process, from getrusage), since the two share the
# machine's cores. "ceiling" is the ratio kvserver would reach if it used
# no CPU at all while both runs were CPU-bound: (etcd's CPU + the
# generator's against etcd) / the generator's against kvserver.
#
# Then the restart: RESTART_KEYS (default 200,000) keys of 256 B are put,
# the member's RSS is read, it is SIGKILLed and started again on the same
# data, and the time from its start to /health answering healthy and its
# RSS then are recorded.
#
# Needs etcd (installed when missing), Go and Debian's etcd sources
# (likewise), and builds kvserver and kvtool in release mode. Every server
# it starts is stopped on exit.
set -euo pipefail

rounds=${1:-${ROUNDS:-3}}
restart_keys=${RESTART_KEYS:-200000}
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
hz=$(getconf CLK_TCK)
ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }

# The loads: name, generator, its arguments.
loads=(
  "put-1client|go|-op put -conns 1 -clients 1 -total 3000 -key-size 8 -val-size 256 -key-space 100000"
  "put-100conns-1000clients|go|-op put -conns 100 -clients 1000 -total 100000 -key-size 8 -val-size 256 -key-space 100000"
  "range-serializable-1000clients|go|-op range -key foo -consistency s -conns 100 -clients 1000 -total 200000"
  "range-linearizable-1000clients|go|-op range -key foo -consistency l -conns 100 -clients 1000 -total 200000"
  "put-1client-kvtool|kvtool|put --conns 1 --clients 1 --total 3000 --key-size 8 --val-size 256 --key-space-size 100000"
  "put-100conns-1000clients-kvtool|kvtool|put --conns 100 --clients 1000 --total 100000 --key-size 8 --val-size 256 --key-space-size 100000"
  "range-serializable-1000clients-kvtool|kvtool|range foo --consistency s --conns 100 --clients 1000 --total 200000"
  "range-linearizable-1000clients-kvtool|kvtool|range foo --consistency l --conns 100 --clients 1000 --total 200000"
)

results="$work/results"
: >"$results"
for round in $(seq 1 "$rounds"); do
  for server in etcd kvserver; do
    start_member "$server"
    etcdctl --endpoints "$ep" put foo bar >/dev/null
    for load in "${loads[@]}"; do
      IFS='|' read -r name tool args <<<"$load"
      before=$(ticks "$pid")
      if [ "$tool" = go ]; then
        # shellcheck disable=SC2086
        line=$("$clientv3" $args -endpoints "$ep" | tail -1)
      else
        # shellcheck disable=SC2086
        line=$("$kvtool" -w json bench $args --endpoints "$ep" | tail -1)
      fi
      after=$(ticks "$pid")
      cpu_us=$(python3 -c "import json,sys; j=json.loads(sys.argv[1]); print(($after-$before)*1e6/$hz/max(j['total'],1))" "$line")
      echo "$round $server $name $cpu_us $line" >>"$results"
      echo "round $round $server $name: $(echo "$line" | python3 -c 'import json,sys; j=json.load(sys.stdin); print("%.0f/s p99 %.2f ms errors %d" % (j["per_second"], j["latency_ms"]["p99"], j["errors"]))'), $cpu_us us CPU/request" >&2
    done
    # The restart: RESTART_KEYS distinct keys on top of what the loads
    # wrote, then SIGKILL and a start on the same data.
    "$kvtool" -w json bench put --sequential-keys --total "$restart_keys" --key-space-size "$restart_keys" \
      --key-size 12 --val-size 256 --conns 10 --clients 100 --endpoints "$ep" >/dev/null
    loaded=$(rss_mib "$pid")
    restart_killed
    sleep 1
    restarted=$(rss_mib "$pid")
    echo "$round $server restart $restart_s {\"loaded_mib\": $loaded, \"restarted_mib\": $restarted}" >>"$results"
    echo "round $round $server: healthy ${restart_s} s after a restart on $restart_keys keys; RSS ${loaded} MiB loaded, ${restarted} MiB restarted" >&2
    stop_last
  done
done

python3 - "$results" <<'PY'
import json, statistics, sys
rows, cpu, restart = {}, {}, {}
for line in open(sys.argv[1]):
    rnd, server, name, x, js = line.split(" ", 4)
    if name == "restart":
        j = json.loads(js)
        restart.setdefault(server, []).append((float(x), j["loaded_mib"], j["restarted_mib"]))
        continue
    rows.setdefault((name, server), []).append(json.loads(js))
    cpu.setdefault((name, server), []).append(float(x))
names = []
for (n, _) in rows:
    if n not in names:
        names.append(n)
med = statistics.median
print()
def client_us(r):
    return r.get("cpu_seconds", 0.0) * 1e6 / max(r["total"], 1)
print("| load | etcd req/s | kvserver req/s | ratio | etcd p99 ms | kvserver p99 ms | etcd CPU µs/req | kvserver CPU µs/req | CPU ratio | client CPU µs/req (etcd / kvserver) | ceiling |")
print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
for n in names:
    e, k = rows.get((n, "etcd"), []), rows.get((n, "kvserver"), [])
    et, kt = med(r["per_second"] for r in e), med(r["per_second"] for r in k)
    ep, kp = med(r["latency_ms"]["p99"] for r in e), med(r["latency_ms"]["p99"] for r in k)
    ec, kc = med(cpu[(n, "etcd")]), med(cpu[(n, "kvserver")])
    ce, ck = med(client_us(r) for r in e), med(client_us(r) for r in k)
    ceiling = f"{(ec + ce) / ck:.2f}x" if ck > 0 else "-"
    print(f"| {n} | {et:.0f} | {kt:.0f} | {kt / et:.2f}x | {ep:.2f} | {kp:.2f} | {ec:.0f} | {kc:.0f} | {kc / ec:.2f}x | {ce:.0f} / {ck:.0f} | {ceiling} |")
if restart:
    e, k = restart["etcd"], restart["kvserver"]
    for i, what, unit in ((0, "restart after SIGKILL to healthy", "s"), (1, "RSS after the loads", "MiB"), (2, "RSS after the restart", "MiB")):
        ev, kv = med(r[i] for r in e), med(r[i] for r in k)
        print(f"| {what} | {ev:.2f} {unit} | {kv:.2f} {unit} | {kv / ev:.2f}x | | | | | | | |")
errs = {s: sum(r["errors"] for (n, s2), rs in rows.items() if s2 == s for r in rs) for s in ("etcd", "kvserver")}
print(f"\n(medians of {len(restart.get('etcd', []))} rounds each; errors: etcd {errs['etcd']}, kvserver {errs['kvserver']})")
PY
