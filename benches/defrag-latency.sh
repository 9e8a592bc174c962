#!/usr/bin/env bash
# Request latency before and during a defragmentation, real etcd (whose
# defrag blocks every request) against kvserver (online defrag), on the same
# data: 100,000 keys of 1 KiB, then 90% of them deleted and compacted.
#
#   benches/defrag-latency.sh
#
# For each server: a put load from 16 clients runs once undisturbed and once
# while `etcdctl defrag` runs; prints the defrag's duration, the file size
# before and after, and the load's p99, p99.9 and max latency both times.
set -euo pipefail

# shellcheck source=benches/common.sh
. "$(dirname "${BASH_SOURCE[0]}")/common.sh"

work=$(mktemp -d)
pid=
cleanup() {
  [ -n "$pid" ] && kill "$pid" 2>/dev/null || true
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

field() { python3 -c "import json,sys; j=json.load(sys.stdin); print($1)"; }

load=(bench put --conns 4 --clients 16 --total 20000 --key-size 8 --val-size 256 --key-space-size 1000)

for server in etcd kvserver; do
  port=$(free_port); peer=$(free_port); dir="$work/$server"
  args=(--data-dir "$dir" --listen-client-urls "http://127.0.0.1:$port"
    --advertise-client-urls "http://127.0.0.1:$port" --listen-peer-urls "http://127.0.0.1:$peer"
    --initial-advertise-peer-urls "http://127.0.0.1:$peer" --initial-cluster "default=http://127.0.0.1:$peer"
    --quota-backend-bytes 8589934592)
  if [ "$server" = etcd ]; then etcd "${args[@]}" >"$dir.log" 2>&1 & else "$kvserver" "${args[@]}" >"$dir.log" 2>&1 & fi
  pid=$!
  ep="127.0.0.1:$port"
  for _ in $(seq 1 100); do etcdctl --endpoints "$ep" endpoint health >/dev/null 2>&1 && break; sleep 0.1; done

  # The data: prefix "z" keeps it apart from the load's keys.
  "$kvtool" bench put --endpoints "$ep" --conns 20 --clients 200 --total 100000 \
    --key-size 8 --val-size 1024 --key-space-size 100000 --sequential-keys >/dev/null
  etcdctl --endpoints "$ep" del 00000000 00090000 >/dev/null
  rev=$(etcdctl --endpoints "$ep" endpoint status -w json | field 'j[0]["Status"]["header"]["revision"]')
  etcdctl --endpoints "$ep" compact --physical "$rev" >/dev/null
  before=$(etcdctl --endpoints "$ep" endpoint status -w json | field 'j[0]["Status"]["dbSize"]')

  quiet=$("$kvtool" -w json "${load[@]}" --endpoints "$ep" | tail -1)
  "$kvtool" -w json "${load[@]}" --endpoints "$ep" | tail -1 >"$work/during" &
  bench=$!
  sleep 0.3
  start=$(date +%s.%N)
  etcdctl --endpoints "$ep" --command-timeout 120s defrag >/dev/null
  took=$(python3 -c "print(round($(date +%s.%N) - $start, 3))")
  wait "$bench"
  during=$(cat "$work/during")
  after=$(etcdctl --endpoints "$ep" endpoint status -w json | field 'j[0]["Status"]["dbSize"]')
  kill "$pid"; wait "$pid" 2>/dev/null || true; pid=

  echo "$server|$took|$before|$after|$quiet|$during" >>"$work/results"
done

python3 - "$work/results" <<'EOF'
import json, sys
print("| server | defrag s | db before | db after | quiet p99 / p99.9 / max ms | during defrag p99 / p99.9 / max ms | puts/s quiet / during |")
print("|---|---:|---:|---:|---|---|---|")
for line in open(sys.argv[1]):
    server, took, before, after, quiet, during = line.strip().split("|")
    q, d = json.loads(quiet), json.loads(during)
    f = lambda j: " / ".join(f"{j['latency_ms'][k]:.1f}" for k in ("p99", "p99.9", "max"))
    mb = lambda b: f"{int(b) / 2**20:.1f} MiB"
    print(f"| {server} | {float(took):.2f} | {mb(before)} | {mb(after)} | {f(q)} | {f(d)} | {q['per_second']:.0f} / {d['per_second']:.0f} |")
EOF
