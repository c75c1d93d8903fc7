#!/usr/bin/env bash
# Builds and starts the appliance on its embedded default: one node, every role, software
# encoder, RTMP on 0.0.0.0:1935, HTTP on 0.0.0.0:8080, no config file. Extra arguments go
# to `rackcast run` (for example --config deploy/rackcast.toml).
set -euo pipefail
cd "$(dirname "$0")/.."
./deploy/install-deps.sh
# rustup's toolchain is in ~/.cargo/bin, which a fresh shell may not have on PATH yet.
if [ -f "${CARGO_HOME:-$HOME/.cargo}/env" ]; then . "${CARGO_HOME:-$HOME/.cargo}/env"; fi
cargo build --release --locked
exec ./target/release/rackcast run "$@"
