# Shared by the scripts that run kvserver beside real etcd: installs etcd
# when missing, builds kvserver and kvtool in release mode, and defines
# free_port. Source it from a script in benches/ after `set -euo pipefail`.

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
if ! command -v etcd >/dev/null 2>&1; then
  apt-get update -qq && apt-get install -y -qq etcd-server etcd-client
fi
cargo build --release -q -p server -p tools
kvtool="$root/target/release/kvtool"
kvserver="$root/target/release/kvserver"
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
