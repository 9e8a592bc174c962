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

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
