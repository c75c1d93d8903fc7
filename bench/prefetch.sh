#!/usr/bin/env bash
# Edge prefetch on vs off: what a viewer waits for each new segment at the edge.
# Usage: bench/prefetch.sh [seconds]   (builds the release binary first)
set -euo pipefail
cd "$(dirname "$0")/.."
./deploy/install-deps.sh
# rustup's toolchain is in ~/.cargo/bin, which a fresh shell may not have on PATH yet.
if [ -f "${CARGO_HOME:-$HOME/.cargo}/env" ]; then . "${CARGO_HOME:-$HOME/.cargo}/env"; fi
cargo build --release --locked
exec python3 bench/lib/prefetch.py target/release/rackcast "${1:-20}"
