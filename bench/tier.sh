#!/usr/bin/env bash
# Caching-tier benchmark: rackcast edge vs Varnish vs nginx proxy_cache in front of the
# same origin.  See bench/README.md, "Caching tier".
#
#   bench/tier.sh [--edges rackcast,varnish,nginx] [--no-build] [--rackcast-bin PATH]
#                 [--delay-ms MS] [--viewers N] [--reps N] [--wrk-duration S]
#                 [--wrk-connections N] [--wrk-threads N] [--build-timeout S]
#                 [--time-limit S] [--busy-warn CORES]
#
# Installs what it needs (apt: varnish nginx wrk), builds rackcast in release mode
# (unless --no-build), then measures cached-hit throughput (wrk) and origin requests
# per fresh segment under 1,000 concurrent viewers, and prints the comparison table.
# Outputs: bench/results/tier-<stamp>/, plus bench/results/tier-latest.{txt,json}.
set -uo pipefail

BENCH="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$BENCH/.." && pwd)"
CMDLINE="bench/tier.sh"
[ $# -gt 0 ] && CMDLINE="$CMDLINE$(printf ' %q' "$@")"

EDGES="rackcast,varnish,nginx"
BUILD=1
BUILD_TIMEOUT=900
TIME_LIMIT=420
RACKCAST_BIN="${RACKCAST_BIN:-$REPO/target/release/rackcast}"
PASS=()
while [ $# -gt 0 ]; do
  case "$1" in
    --edges) EDGES="$2"; shift 2 ;;
    --no-build) BUILD=0; shift ;;
    --build-timeout) BUILD_TIMEOUT="$2"; shift 2 ;;
    --time-limit) TIME_LIMIT="$2"; shift 2 ;;
    --rackcast-bin) RACKCAST_BIN="$2"; BUILD=0; shift 2 ;;
    --delay-ms|--viewers|--reps|--wrk-duration|--wrk-connections|--wrk-threads|--busy-warn)
      PASS+=("$1" "$2"); shift 2 ;;
    -h|--help) sed -n '2,13p' "$0"; exit 0 ;;
    *) echo "tier.sh: unknown option $1" >&2; exit 2 ;;
  esac
done

say() { echo "[tier.sh $(date +%H:%M:%S)] $*" >&2; }

STAMP="$(date +%Y%m%d-%H%M%S)"
OUT="$BENCH/results/tier-$STAMP"
mkdir -p "$OUT"

# ---------------------------------------------------------------- cleanup
MAIN_PID=""
BUILD_PID=""
cleanup() {
  local rc=$?
  for p in $BUILD_PID $MAIN_PID; do
    if kill -0 "$p" 2>/dev/null; then kill -TERM "$p" 2>/dev/null; fi
  done
  for _ in $(seq 1 100); do
    [ -n "$MAIN_PID" ] && kill -0 "$MAIN_PID" 2>/dev/null || break
    sleep 0.2
  done
  # anything tier_bench.py started and did not stop (it records every PID it spawns)
  if [ -f "$OUT/pids" ]; then
    while read -r p; do
      if [ -n "$p" ] && kill -0 "$p" 2>/dev/null; then kill -KILL "$p" 2>/dev/null; fi
    done < "$OUT/pids"
  fi
  exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# ---------------------------------------------------------------- installs
need_pkgs=()
for p in varnish nginx wrk; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || need_pkgs+=("$p")
done
if [ ${#need_pkgs[@]} -gt 0 ]; then
  say "apt-get install ${need_pkgs[*]}"
  export DEBIAN_FRONTEND=noninteractive
  if ! apt-get install -y -q --no-install-recommends -o DPkg::Lock::Timeout=600 "${need_pkgs[@]}" >"$OUT/apt.log" 2>&1; then
    say "apt-get install failed; running apt-get update and retrying"
    apt-get update -q >>"$OUT/apt.log" 2>&1
    apt-get install -y -q --no-install-recommends -o DPkg::Lock::Timeout=600 "${need_pkgs[@]}" >>"$OUT/apt.log" 2>&1 \
      || say "apt-get install failed, see $OUT/apt.log (continuing with what is there)"
  fi
fi
command -v wrk >/dev/null 2>&1 || { say "wrk is missing; cannot measure"; exit 1; }

# 1,000 viewers plus the edges' upstream sockets need more than the usual 1024 descriptors.
ulimit -n 16384 2>/dev/null || ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

# ---------------------------------------------------------------- rackcast build
RACKCAST_NOTE=""
if [[ ",$EDGES," == *",rackcast,"* ]]; then
  if [ "$BUILD" = 1 ]; then
    if command -v cargo >/dev/null 2>&1; then
      say "cargo build --release (not part of the measurement; log: $OUT/build.log)"
      t0=$(date +%s)
      (cd "$REPO" && exec timeout "$BUILD_TIMEOUT" cargo build --release) >"$OUT/build.log" 2>&1 &
      BUILD_PID=$!
      wait "$BUILD_PID"; brc=$?
      BUILD_PID=""
      say "cargo build --release exited $brc after $(( $(date +%s) - t0 )) s"
      if [ "$brc" != 0 ]; then
        RACKCAST_NOTE="cargo build --release failed (exit $brc; see $OUT/build.log)"
      fi
    else
      say "cargo not found; using an existing binary if there is one"
    fi
  fi
  if [ -z "$RACKCAST_NOTE" ] && [ ! -x "$RACKCAST_BIN" ]; then
    RACKCAST_NOTE="no rackcast binary at $RACKCAST_BIN"
  fi
  [ -n "$RACKCAST_NOTE" ] && say "rackcast will be skipped: $RACKCAST_NOTE"
fi

# ---------------------------------------------------------------- run
say "results: $OUT"
timeout -s TERM -k 20 "$TIME_LIMIT" \
  python3 "$BENCH/lib/tier_bench.py" --out "$OUT" --edges "$EDGES" \
  --rackcast-bin "$RACKCAST_BIN" --rackcast-note "$RACKCAST_NOTE" --cmdline "$CMDLINE" \
  "${PASS[@]}" &
MAIN_PID=$!
wait "$MAIN_PID"; rc=$?
MAIN_PID=""
[ "$rc" = 124 ] && say "the measurement ran past --time-limit $TIME_LIMIT s and was stopped"
if [ -f "$OUT/results.json" ]; then
  cp "$OUT/results.json" "$BENCH/results/tier-latest.json"
  cp "$OUT/table.txt" "$BENCH/results/tier-latest.txt"
fi
exit $rc
