#!/usr/bin/env bash
# rackcast vs nginx-rtmp live DASH benchmark.  See bench/README.md.
#
#   bench/run.sh [--duration S] [--servers rackcast,nginx] [--no-player]
#                [--players dashjs,shaka,hlsjs] [--no-federation]
#                [--no-build] [--rackcast-bin PATH] [--poll-ms MS]
#                [--mpd-poll-ms MS] [--player-clock local|date]
#                [--player-pass separate|same] [--player-source WxH]
#                [--build-timeout S]
#
# Installs what it needs (apt: nginx libnginx-mod-rtmp chromium ffmpeg; npm:
# dashjs, shaka-player, hls.js from bench/package-lock.json), builds rackcast in release mode
# (unless --no-build), then runs both servers one after the other with the same
# publish and prints the comparison table.  Outputs: bench/results/<stamp>/,
# plus bench/results/latest.{txt,json}.
set -uo pipefail

NAME="run.sh"
HELP_LINES="2,13"
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
    --no-player|--no-federation) PASS+=("$1"); shift ;;
    --poll-ms|--mpd-poll-ms|--player-clock|--player-pass|--player-source|--settle-window|--drain|--stream-key|--players)
      PASS+=("$1" "$2"); shift 2 ;;
    *) common_opt "$@"; shift "$SHIFT" ;;
  esac
done

results_dir ""
install_cleanup 50

# ---------------------------------------------------------------- installs
ensure_debs nginx libnginx-mod-rtmp chromium ffmpeg openssl cmd:npm

# The browser players (dash.js, Shaka Player, hls.js) pinned by package-lock.json.
stale_modules="$(python3 - "$BENCH" <<'PY'
import json, os, sys
bench = sys.argv[1]
sys.path.insert(0, os.path.join(bench, "lib"))
from bench import PLAYER_LIB  # noqa: E402
lock = json.load(open(os.path.join(bench, "package-lock.json")))["packages"]
for name, build in PLAYER_LIB.values():
    want = lock["node_modules/" + name]["version"]
    try:
        have = json.load(open(os.path.join(bench, "node_modules", name, "package.json")))["version"]
    except (OSError, ValueError, KeyError):
        have = None
    if have != want or not os.path.exists(os.path.join(bench, "node_modules", name, build)):
        print("%s@%s" % (name, want))
PY
)"
if [ -n "$stale_modules" ]; then
  say "npm ci ($(echo $stale_modules))"
  (cd "$BENCH" && npm ci --no-audit --no-fund --loglevel=error) >"$OUT/npm.log" 2>&1 \
    || say "npm ci failed, see $OUT/npm.log (the browser player figures will be skipped)"
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
