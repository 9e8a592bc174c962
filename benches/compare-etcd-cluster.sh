#!/usr/bin/env bash
# Real etcd against kvserver as 3-member clusters on loopback, same
# settings, the same `kvtool bench` loads, alternating between the two over
# several rounds (each round starts both clusters afresh); prints medians,
# ratios, the servers' CPU time per request (all three members, from
# /proc/<pid>/stat) and the time from SIGKILL of the leader to the first
# write acknowledged after it.
#
#   benches/compare-etcd-cluster.sh [rounds]    (default 3; ROUNDS=... works too)
#
# Puts go to the leader; reads go to a follower. Each load runs twice: with
# kvtool (tonic) and with benches/clientv3 (etcd's Go client, what
# Kubernetes uses; names ending in -go). Every server it starts is stopped
# on exit.
set -euo pipefail

rounds=${1:-${ROUNDS:-3}}
# shellcheck source=benches/common.sh
. "$(dirname "${BASH_SOURCE[0]}")/common.sh"
clientv3_bench

work=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill -CONT "$p" 2>/dev/null || true; kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

# start_cluster NAME: three fresh members of NAME (etcd or kvserver); sets
# eps (their client endpoints), mpids (their PIDs), margs (their arguments).
start_cluster() {
  local name=$1 i
  eps=(); mpids=(); margs=()
  local cports=() pports=() initial=""
  for i in 0 1 2; do
    cports+=("$(free_port)"); pports+=("$(free_port)")
    initial+="${initial:+,}m$i=http://127.0.0.1:${pports[$i]}"
  done
  local dir="$work/$name-$RANDOM"
  for i in 0 1 2; do
    local client="http://127.0.0.1:${cports[$i]}" peer="http://127.0.0.1:${pports[$i]}"
    margs+=("--name m$i --data-dir $dir/m$i --listen-client-urls $client --advertise-client-urls $client --listen-peer-urls $peer --initial-advertise-peer-urls $peer --initial-cluster $initial")
    eps+=("127.0.0.1:${cports[$i]}")
    start_member "$name" "$i" "$dir"
  done
  for i in 0 1 2; do wait_healthy "${eps[$i]}" "$dir"; done
}

start_member() {
  local name=$1 i=$2 dir=$3 bin
  bin=$([ "$name" = etcd ] && echo etcd || echo "$kvserver")
  mkdir -p "$dir"
  # shellcheck disable=SC2086
  $bin ${margs[$i]} >>"$dir/m$i.log" 2>&1 &
  mpids[$i]=$!
  pids+=($!)
}

wait_healthy() {
  for _ in $(seq 1 200); do
    if etcdctl --endpoints "$1" endpoint health >/dev/null 2>&1; then return; fi
    sleep 0.1
  done
  echo "$1 did not become healthy; see $2" >&2
  exit 1
}

stop_cluster() {
  local p
  for p in "${mpids[@]}"; do kill "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done
}

# leader: the index in eps of the member that leads.
leader() {
  local i
  for i in 0 1 2; do
    if etcdctl --endpoints "${eps[$i]}" endpoint status -w json 2>/dev/null |
      python3 -c 'import json,sys; s=json.load(sys.stdin)[0]["Status"]; sys.exit(0 if s["leader"]==s["header"]["member_id"] else 1)'; then
      echo "$i"; return
    fi
  done
  echo "no leader" >&2; exit 1
}

# cpu_ticks: user + system clock ticks of the running members together.
cpu_ticks() {
  local p t=0
  for p in "${mpids[@]}"; do
    if [ -r "/proc/$p/stat" ]; then
      t=$((t + $(awk '{print $14 + $15}' "/proc/$p/stat")))
    fi
  done
  echo "$t"
}
hz=$(getconf CLK_TCK)

loads=(
  "put-1client|leader|kvtool|put --conns 1 --clients 1 --total 3000 --key-size 8 --val-size 256 --key-space-size 100000"
  "put-100conns-1000clients|leader|kvtool|put --conns 100 --clients 1000 --total 100000 --key-size 8 --val-size 256 --key-space-size 100000"
  "range-linearizable-follower-1000clients|follower|kvtool|range foo --consistency l --conns 100 --clients 1000 --total 100000"
  "range-serializable-follower-1000clients|follower|kvtool|range foo --consistency s --conns 100 --clients 1000 --total 100000"
  "put-1client-go|leader|go|-op put -conns 1 -clients 1 -total 3000 -key-size 8 -val-size 256 -key-space 100000"
  "put-100conns-1000clients-go|leader|go|-op put -conns 100 -clients 1000 -total 100000 -key-size 8 -val-size 256 -key-space 100000"
  "range-linearizable-follower-1000clients-go|follower|go|-op range -key foo -consistency l -conns 100 -clients 1000 -total 100000"
  "range-serializable-follower-1000clients-go|follower|go|-op range -key foo -consistency s -conns 100 -clients 1000 -total 100000"
)

results="$work/results"
: >"$results"
for round in $(seq 1 "$rounds"); do
  for server in etcd kvserver; do
    start_cluster "$server"
    l=$(leader); f=$(( (l + 1) % 3 ))
    etcdctl --endpoints "${eps[$l]}" put foo bar >/dev/null
    for load in "${loads[@]}"; do
      IFS='|' read -r name target tool args <<<"$load"
      ep=${eps[$l]}; [ "$target" = follower ] && ep=${eps[$f]}
      before=$(cpu_ticks)
      if [ "$tool" = go ]; then
        # shellcheck disable=SC2086
        line=$("$clientv3" $args -endpoints "$ep" | tail -1)
      else
        # shellcheck disable=SC2086
        line=$("$kvtool" -w json bench $args --endpoints "$ep" | tail -1)
      fi
      after=$(cpu_ticks)
      cpu_us=$(python3 -c "import json,sys; j=json.loads(sys.argv[1]); print(($after-$before)*1e6/$hz/max(j['total'],1))" "$line")
      echo "$round $server $name $cpu_us $line" >>"$results"
      echo "round $round $server $name: $(echo "$line" | python3 -c 'import json,sys; j=json.load(sys.stdin); print("%.0f/s p99 %.2f ms errors %d" % (j["per_second"], j["latency_ms"]["p99"], j["errors"]))'), $cpu_us us CPU/request" >&2
    done
    # Failover: SIGKILL the leader, then puts to the other two until one
    # is acknowledged.
    l=$(leader)
    others="${eps[$(( (l + 1) % 3 ))]},${eps[$(( (l + 2) % 3 ))]}"
    t0=$(date +%s.%N)
    kill -9 "${mpids[$l]}"
    until etcdctl --endpoints "$others" --command-timeout=15s put after-kill v >/dev/null 2>&1; do :; done
    t1=$(date +%s.%N)
    ms=$(python3 -c "print(($t1-$t0)*1000)")
    echo "$round $server failover-ms $ms {}" >>"$results"
    echo "round $round $server: first write acknowledged ${ms} ms after SIGKILL of the leader" >&2
    stop_cluster
  done
done

python3 - "$results" <<'PY'
import json, statistics, sys
rows, cpu, fail = {}, {}, {}
for line in open(sys.argv[1]):
    rnd, server, name, x, js = line.split(" ", 4)
    if name == "failover-ms":
        fail.setdefault(server, []).append(float(x))
        continue
    rows.setdefault((name, server), []).append(json.loads(js))
    cpu.setdefault((name, server), []).append(float(x))
names = []
for (n, _) in rows:
    if n not in names:
        names.append(n)
med = statistics.median
print()
print("| load | etcd req/s | kvserver req/s | ratio | etcd p99 ms | kvserver p99 ms | etcd CPU µs/req | kvserver CPU µs/req | CPU ratio |")
print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
for n in names:
    e, k = rows.get((n, "etcd"), []), rows.get((n, "kvserver"), [])
    et, kt = med(r["per_second"] for r in e), med(r["per_second"] for r in k)
    ep, kp = med(r["latency_ms"]["p99"] for r in e), med(r["latency_ms"]["p99"] for r in k)
    ec, kc = med(cpu[(n, "etcd")]), med(cpu[(n, "kvserver")])
    print(f"| {n} | {et:.0f} | {kt:.0f} | {kt / et:.2f}x | {ep:.2f} | {kp:.2f} | {ec:.0f} | {kc:.0f} | {kc / ec:.2f}x |")
if fail:
    ef, kf = med(fail.get("etcd", [float("nan")])), med(fail.get("kvserver", [float("nan")]))
    print(f"| SIGKILL of the leader to the first acknowledged write | {ef:.0f} ms | {kf:.0f} ms | {kf / ef:.2f}x | | | | | |")
errs = {s: sum(r["errors"] for (n, s2), rs in rows.items() if s2 == s for r in rs) for s in ("etcd", "kvserver")}
print(f"\n(medians of {len(fail.get('etcd', []))} rounds each; errors: etcd {errs['etcd']}, kvserver {errs['kvserver']})")
PY
