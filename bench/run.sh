#!/usr/bin/env bash
# rackcast vs nginx-rtmp live DASH benchmark.  See bench/README.md.
#
#   bench/run.sh [--duration S] [--servers rackcast,nginx] [--no-player]
#                [--no-build] [--rackcast-bin PATH] [--poll-ms MS]
#                [--mpd-poll-ms MS] [--player-clock local|date]
#                [--player-pass separate|same] [--build-timeout S]
#
# Installs what it needs (apt: nginx libnginx-mod-rtmp chromium ffmpeg;
# npm: dashjs from bench/package-lock.json), builds rackcast in release mode
# (unless --no-build), then runs both servers one after the other with the same
# publish and prints the comparison table.  Outputs: bench/results/<stamp>/,
# plus bench/results/latest.{txt,json}.
set -uo pipefail

BENCH="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$BENCH/.." && pwd)"
CMDLINE="bench/run.sh"
[ $# -gt 0 ] && CMDLINE="$CMDLINE$(printf ' %q' "$@")"

DURATION=30
SERVERS="rackcast,nginx"
BUILD=1
BUILD_TIMEOUT=900
RACKCAST_BIN="${RACKCAST_BIN:-$REPO/target/release/rackcast}"
PASS=()
while [ $# -gt 0 ]; do
  case "$1" in
    --duration) DURATION="$2"; shift 2 ;;
    --servers) SERVERS="$2"; shift 2 ;;
    --no-build) BUILD=0; shift ;;
    --build-timeout) BUILD_TIMEOUT="$2"; shift 2 ;;
    --rackcast-bin) RACKCAST_BIN="$2"; BUILD=0; shift 2 ;;
    --no-player) PASS+=("--no-player"); shift ;;
    --poll-ms|--mpd-poll-ms|--player-clock|--player-pass|--settle-window|--drain|--stream-key)
      PASS+=("$1" "$2"); shift 2 ;;
    -h|--help) sed -n '2,12p' "$0"; exit 0 ;;
    *) echo "run.sh: unknown option $1" >&2; exit 2 ;;
  esac
done

say() { echo "[run.sh $(date +%H:%M:%S)] $*" >&2; }

STAMP="$(date +%Y%m%d-%H%M%S)"
OUT="$BENCH/results/$STAMP"
mkdir -p "$OUT"

# ---------------------------------------------------------------- cleanup
MAIN_PID=""
BUILD_PID=""
cleanup() {
  local rc=$?
  for p in $BUILD_PID $MAIN_PID; do
    if kill -0 "$p" 2>/dev/null; then kill -TERM "$p" 2>/dev/null; fi
  done
  for _ in $(seq 1 50); do
    [ -n "$MAIN_PID" ] && kill -0 "$MAIN_PID" 2>/dev/null || break
    sleep 0.2
  done
  # anything bench.py started and did not stop (it records every PID it spawns)
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
for p in nginx libnginx-mod-rtmp chromium ffmpeg openssl; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || need_pkgs+=("$p")
done
command -v npm >/dev/null 2>&1 || need_pkgs+=(npm)
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

want_dashjs="$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["packages"]["node_modules/dashjs"]["version"])' "$BENCH/package-lock.json" 2>/dev/null)"
have_dashjs="$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["version"])' "$BENCH/node_modules/dashjs/package.json" 2>/dev/null)"
if [ -z "$have_dashjs" ] || [ "$have_dashjs" != "$want_dashjs" ] \
   || [ ! -f "$BENCH/node_modules/dashjs/dist/modern/umd/dash.all.min.js" ]; then
  say "npm ci (dashjs $want_dashjs)"
  (cd "$BENCH" && npm ci --no-audit --no-fund --loglevel=error) >"$OUT/npm.log" 2>&1 \
    || say "npm ci failed, see $OUT/npm.log (the dash.js figure will be skipped)"
fi

# ---------------------------------------------------------------- rackcast build
RACKCAST_NOTE=""
if [[ ",$SERVERS," == *",rackcast,"* ]]; then
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
python3 "$BENCH/lib/bench.py" --out "$OUT" --servers "$SERVERS" --duration "$DURATION" \
  --rackcast-bin "$RACKCAST_BIN" --rackcast-note "$RACKCAST_NOTE" --cmdline "$CMDLINE" \
  "${PASS[@]}" &
MAIN_PID=$!
wait "$MAIN_PID"; rc=$?
MAIN_PID=""
if [ -f "$OUT/results.json" ]; then
  cp "$OUT/results.json" "$BENCH/results/latest.json"
  cp "$OUT/table.txt" "$BENCH/results/latest.txt"
fi
exit $rc
