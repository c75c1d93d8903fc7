#!/usr/bin/env bash
# Starts or stops the example federation of deploy/federation.toml on this machine.
#   deploy/federation.sh start    build (release) and start all nodes in the background
#   deploy/federation.sh stop     SIGTERM every node this script started
#   deploy/federation.sh status   which nodes run, and each one's health
# Logs and PIDs go to ${RACKCAST_FEDERATION_DIR:-/tmp/rackcast-federation}.
set -euo pipefail
cd "$(dirname "$0")/.."
config=deploy/federation.toml
dir=${RACKCAST_FEDERATION_DIR:-/tmp/rackcast-federation}
nodes=$(sed -n 's/^id = "\(.*\)"/\1/p' "$config")

case "${1:-}" in
  start)
    ./deploy/install-deps.sh
    # rustup's toolchain is in ~/.cargo/bin, which a fresh shell may not have on PATH yet.
    if [ -f "${CARGO_HOME:-$HOME/.cargo}/env" ]; then . "${CARGO_HOME:-$HOME/.cargo}/env"; fi
    cargo build --release --locked
    mkdir -p "$dir"
    for node in $nodes; do
      if [ -f "$dir/$node.pid" ] && kill -0 "$(cat "$dir/$node.pid")" 2>/dev/null; then
        echo "$node already running (pid $(cat "$dir/$node.pid"))"; continue
      fi
      ./target/release/rackcast run --config "$config" --node "$node" >"$dir/$node.out" 2>"$dir/$node.log" &
      echo $! >"$dir/$node.pid"
      echo "$node started (pid $!, log $dir/$node.log)"
    done
    echo "publish: rtmp://127.0.0.1:19321/live/STREAM (any node); watch: http://127.0.0.1:18101/live/STREAM/manifest.mpd"
    ;;
  stop)
    for node in $nodes; do
      [ -f "$dir/$node.pid" ] || continue
      pid=$(cat "$dir/$node.pid")
      kill -TERM "$pid" 2>/dev/null && echo "$node stopping (pid $pid)"
      rm -f "$dir/$node.pid"
    done
    ;;
  status)
    for node in $nodes; do
      http=$(awk -v id="$node" '$0 ~ "^id = \""id"\"" {f=1} f && /^http = / {gsub(/"/,"",$3); print $3; exit}' "$config")
      if [ -f "$dir/$node.pid" ] && kill -0 "$(cat "$dir/$node.pid")" 2>/dev/null; then
        # /cluster/health answers only peers' signed requests; the API answers loopback
        # until an admin user exists (then: curl -b JAR or -H "Authorization: Bearer rat_...").
        echo "$node up (pid $(cat "$dir/$node.pid")): $(curl -s -m 1 "http://$http/api/v1/cluster" || echo 'no answer')"
      else
        echo "$node down"
      fi
    done
    ;;
  *) echo "usage: $0 start|stop|status" >&2; exit 2 ;;
esac
