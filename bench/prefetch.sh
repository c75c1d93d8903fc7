#!/usr/bin/env bash
# Edge prefetch on vs off: what a viewer waits for each new segment at the edge.
# Usage: bench/prefetch.sh [seconds]   (builds the release binary first)
set -euo pipefail
cd "$(dirname "$0")/.."
./deploy/install-deps.sh
cargo build --release --locked
exec python3 bench/lib/prefetch.py target/release/rackcast "${1:-20}"
