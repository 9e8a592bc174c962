# Shared by the scripts that run kvserver beside real etcd: installs etcd
# when missing (unless NEED_ETCD=0), builds kvserver and kvtool in release
# mode (unless KVSERVER and KVTOOL name binaries already built), and
# defines free_port. Source it from a script in benches/ after
# `set -euo pipefail`.

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
if [ "${NEED_ETCD:-1}" != 0 ] && ! command -v etcd >/dev/null 2>&1; then
  apt-get update -qq && apt-get install -y -qq etcd-server etcd-client
fi
if [ -n "${KVSERVER:-}" ] && [ -n "${KVTOOL:-}" ]; then
  kvtool=$KVTOOL
  kvserver=$KVSERVER
else
  cargo build --release -q -p server -p tools
  kvtool="$root/target/release/kvtool"
  kvserver="$root/target/release/kvserver"
fi
export ETCDCTL_API=3

# clientv3_bench: builds benches/clientv3 (a load generator on etcd's Go
# client) against Debian's etcd source, installing Go and it when missing;
# sets $clientv3 to the binary.
clientv3_bench() {
  if ! command -v go >/dev/null 2>&1 || [ ! -d /usr/share/gocode/src/go.etcd.io/etcd/clientv3 ]; then
    apt-get update -qq && apt-get install -y -qq golang-go golang-etcd-server-dev
  fi
  clientv3="$root/target/clientv3-bench"
  local gopath
  gopath=$(mktemp -d)
  GO111MODULE=off GOPATH="$gopath:/usr/share/gocode" GOCACHE="$root/target/go-cache" \
    go build -o "$clientv3" "$root/benches/clientv3/main.go"
  rm -rf "$gopath"
}

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# The member helpers below keep what they start in the caller's `pids`
# array and their data under the caller's `$work` directory.

# start_member SERVER SCHEME: a fresh one-member cluster of SERVER
# ("etcd" or "kvserver", or the path of another kvserver binary) serving
# clients over SCHEME (http, or https with --auto-tls); waits until it
# takes a put. Sets $ep (host:port), $url, $pid and $tls (what
# benches/clientv3 needs for it), and what restart_killed needs.
start_member() {
  local server=$1 scheme=${2:-http} port peer dir
  port=$(free_port); peer=$(free_port); dir="$work/$(basename "$server")-$RANDOM"
  local client="$scheme://127.0.0.1:$port" peers="http://127.0.0.1:$peer"
  local args=(--data-dir "$dir" --listen-client-urls "$client" --advertise-client-urls "$client"
    --listen-peer-urls "$peers" --initial-advertise-peer-urls "$peers"
    --initial-cluster "default=$peers" --name default)
  local ctl=()
  tls=()
  if [ "$scheme" = https ]; then
    args+=(--auto-tls)
    tls=(-insecure-skip-tls-verify)
    ctl=(--insecure-transport=false --insecure-skip-tls-verify)
  fi
  case "$server" in
    etcd) member_bin=etcd ;;
    kvserver) member_bin=$kvserver ;;
    *) member_bin=$server ;;
  esac
  member_args=("${args[@]}")
  member_log="$dir.log"
  "$member_bin" "${member_args[@]}" >>"$member_log" 2>&1 &
  pid=$!
  pids+=("$pid")
  for _ in $(seq 1 100); do
    if etcdctl --endpoints "$client" "${ctl[@]}" put foo bar >/dev/null 2>&1; then
      ep="127.0.0.1:$port"
      url=$client
      return
    fi
    sleep 0.1
  done
  echo "$server did not start; see $dir.log" >&2
  exit 1
}

# restart_killed: SIGKILLs the member started last and starts it again on
# the same data; returns once /health says it is healthy. Sets $pid and
# $restart_s (seconds from the new process's start to healthy).
restart_killed() {
  kill -9 "$pid"
  wait "$pid" 2>/dev/null || true
  unset 'pids[-1]'
  local t0 t1
  t0=$(date +%s.%N)
  "$member_bin" "${member_args[@]}" >>"$member_log" 2>&1 &
  pid=$!
  pids+=("$pid")
  for _ in $(seq 1 3000); do
    if curl -sfk "$url/health" 2>/dev/null | grep -q '"health":"true"'; then
      t1=$(date +%s.%N)
      restart_s=$(python3 -c "print($t1 - $t0)")
      return
    fi
    sleep 0.02
  done
  echo "$member_bin did not become healthy after a restart; see $member_log" >&2
  exit 1
}

# rss_mib PID: the resident memory of process PID, MiB.
rss_mib() { awk '/^VmRSS:/ {print $2 / 1024}' "/proc/$1/status"; }

# stop_last: stops the member started last.
stop_last() {
  local p=${pids[-1]}
  kill "$p" 2>/dev/null || true
  wait "$p" 2>/dev/null || true
  unset 'pids[-1]'
}

# cpu PID: the CPU seconds (user + system) process PID has used.
cpu() { awk -v t="$(getconf CLK_TCK)" '{print ($14 + $15) / t}' "/proc/$1/stat"; }
