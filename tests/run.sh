#!/usr/bin/env bash
# The whole test suite: unit tests, and integration tests that run the real binary with
# real ffmpeg publishers and HTTP on 127.0.0.1. Installs what it needs first (the build's
# packages, the test tools, Rust through rustup if needed: deploy/install-deps.sh --test),
# checks that installer (tests/install_deps_check.sh), and ends with one line totalling
# every test binary's results: the library's and the binary's unit tests and the
# integration tests, one binary (tests/it).
set -euo pipefail
cd "$(dirname "$0")/.."
./deploy/install-deps.sh --test
# rustup's toolchain is in ~/.cargo/bin, which a fresh shell may not have on PATH yet.
if [ -f "${CARGO_HOME:-$HOME/.cargo}/env" ]; then . "${CARGO_HOME:-$HOME/.cargo}/env"; fi
# The package lists and the Rust branch of install-deps.sh (offline, < 1 s).
./tests/install_deps_check.sh --installed
# deploy/kubernetes: renders, schema validation, yamllint, the image's packages, no
# committed secret (offline, a few seconds; no cargo).
./tests/kubernetes_check.sh
# The suite builds from scratch on CI: incremental compilation only adds work there.
export CARGO_INCREMENTAL=${CARGO_INCREMENTAL:-0}
# Everything the browser and player tests need is installed above: they must run, not skip.
export RACKCAST_REQUIRE_PLAYERS=1
log=$(mktemp)
# Tests that cannot check something on this machine (no cgroup controller, a low open-files
# limit) write why here; the lines are printed before the totals.
export RACKCAST_TEST_NOT_RUN=$(mktemp)
trap 'rm -f "$log" "$RACKCAST_TEST_NOT_RUN"' EXIT
status=0
# --no-fail-fast: every test binary runs even after one fails, so a red run shows all that broke.
cargo test --locked --no-fail-fast 2>&1 | tee "$log" || status=$?
if [ -s "$RACKCAST_TEST_NOT_RUN" ]; then
  echo "not run on this machine:"
  sed 's/^/  /' "$RACKCAST_TEST_NOT_RUN"
fi
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i } }
     END { printf "tests: %d passed, %d failed\n", p, f }' "$log"
exit "$status"
