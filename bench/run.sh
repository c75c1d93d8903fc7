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

NAME="run.sh"
HELP_LINES="2,12"
BENCH="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
. "$BENCH/lib/common.sh"
set_cmdline "$@"

DURATION=30
SERVERS="rackcast,nginx"
PASS=()
while [ $# -gt 0 ]; do
  case "$1" in
    --duration) DURATION="$2"; shift 2 ;;
    --servers) SERVERS="$2"; shift 2 ;;
    --no-player) PASS+=("--no-player"); shift ;;
    --poll-ms|--mpd-poll-ms|--player-clock|--player-pass|--settle-window|--drain|--stream-key)
      PASS+=("$1" "$2"); shift 2 ;;
    *) common_opt "$@"; shift "$SHIFT" ;;
  esac
done

results_dir ""
install_cleanup 50

# ---------------------------------------------------------------- installs
ensure_debs nginx libnginx-mod-rtmp chromium ffmpeg openssl cmd:npm

want_dashjs="$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["packages"]["node_modules/dashjs"]["version"])' "$BENCH/package-lock.json" 2>/dev/null)"
have_dashjs="$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["version"])' "$BENCH/node_modules/dashjs/package.json" 2>/dev/null)"
if [ -z "$have_dashjs" ] || [ "$have_dashjs" != "$want_dashjs" ] \
   || [ ! -f "$BENCH/node_modules/dashjs/dist/modern/umd/dash.all.min.js" ]; then
  say "npm ci (dashjs $want_dashjs)"
  (cd "$BENCH" && npm ci --no-audit --no-fund --loglevel=error) >"$OUT/npm.log" 2>&1 \
    || say "npm ci failed, see $OUT/npm.log (the dash.js figure will be skipped)"
fi

# ---------------------------------------------------------------- rackcast build
build_rackcast "$SERVERS"

# ---------------------------------------------------------------- run
say "results: $OUT"
run_driver python3 "$BENCH/lib/bench.py" --out "$OUT" --servers "$SERVERS" --duration "$DURATION" \
  --rackcast-bin "$RACKCAST_BIN" --rackcast-note "$RACKCAST_NOTE" --cmdline "$CMDLINE" \
  "${PASS[@]}"
rc=$?
copy_latest latest
exit $rc
