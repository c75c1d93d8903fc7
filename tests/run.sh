#!/usr/bin/env bash
# The whole test suite: unit tests, and integration tests that run the real binary with
# real ffmpeg publishers and HTTP on 127.0.0.1. Installs what it needs first.
set -euo pipefail
cd "$(dirname "$0")/.."
./deploy/install-deps.sh
cargo test --locked
