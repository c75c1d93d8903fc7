#!/usr/bin/env bash
# rackcast transcode vs one ffmpeg process doing the same ladder.  See bench/README.md.
#
#   bench/transcode.sh [--rounds N] [--no-build] [--rackcast-bin PATH] [--build-timeout S]
#
# Makes a 20 s 720p30 source and a 10 s 1080p60 source without slices (x264's default
# frame threading, as OBS sends), then, interleaved in one run, transcodes each with
# `rackcast transcode` and with ffmpeg (split + scale + libx264, the same settings) to the
# same 3-rung ladder (720p 2500k, 480p 1000k, 360p 600k, veryfast, a keyframe every
# second, AAC copied), both writing DASH. Prints medians of wall time and CPU seconds
# and the ratios rackcast / ffmpeg. Outputs: bench/results/<stamp>/, latest-transcode.txt.
set -uo pipefail

NAME="transcode.sh"
HELP_LINES="2,10"
BENCH="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
. "$BENCH/lib/common.sh"
set_cmdline "$@"

ROUNDS=3
while [ $# -gt 0 ]; do
  case "$1" in
    --rounds) ROUNDS="$2"; shift 2 ;;
    *) common_opt "$@"; shift "$SHIFT" ;;
  esac
done

results_dir "transcode-"
install_cleanup 50
ensure_debs ffmpeg
build_rackcast rackcast
if [ -n "$RACKCAST_NOTE" ]; then
  say "$RACKCAST_NOTE"
  exit 1
fi
say "results: $OUT"
run_driver python3 "$BENCH/lib/transcode_bench.py" --out "$OUT" --rackcast-bin "$RACKCAST_BIN" --rounds "$ROUNDS" --cmdline "$CMDLINE"
rc=$?
copy_latest latest-transcode
exit $rc
