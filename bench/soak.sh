#!/usr/bin/env bash
# Soak test of a small rackcast federation on loopback (not run in CI).  See
# bench/README.md, "Soak test".
#
#   bench/soak.sh [--duration S] [--streams N] [--no-build] [--rackcast-bin PATH]
#                 [--build-timeout S] [--warmup S] [--restart-delay S] [--burst N]
#                 [--burst-hold S] [--burst-from ADDR] [--rss-tolerance F] [--poll S]
#
# Starts live-1, origin-1 and edge-1 from one generated cluster config, publishes N
# (default 4) looped 320x240 clips to live-1 with ffmpeg, watches each through edge-1
# (MPD every 0.5 s, every new video and audio segment fetched), injects faults (kill -9
# edge and origin with restart, a publisher killed and restarted after 3 s, 200 idle TCP
# sockets to the RTMP port for 20 s, garbage connects), samples RSS every 10 s, and prints
# a report.  Default duration 600 s.  Outputs: bench/results/soak-<stamp>/.
set -uo pipefail

NAME="soak.sh"
HELP_LINES="2,14"
BENCH="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
. "$BENCH/lib/common.sh"
set_cmdline "$@"

DURATION=600
PASS=()
while [ $# -gt 0 ]; do
  case "$1" in
    --duration) DURATION="$2"; shift 2 ;;
    --streams|--burst-from|--warmup|--restart-delay|--publisher-restart|--burst|--burst-hold|--rss-tolerance|--poll|--clip-seconds|--gap-report)
      PASS+=("$1" "$2"); shift 2 ;;
    *) common_opt "$@"; shift "$SHIFT" ;;
  esac
done

results_dir "soak-"
install_cleanup 100
ensure_debs ffmpeg
command -v ffmpeg >/dev/null 2>&1 || { say "ffmpeg is missing"; exit 1; }
# 200 burst sockets plus viewers and publishers stay far below 1024, but be safe.
ulimit -n 4096 2>/dev/null || true

build_rackcast rackcast
if [ -n "$RACKCAST_NOTE" ]; then say "cannot run: $RACKCAST_NOTE"; exit 1; fi

# Run a private copy: a build in the same tree (another engineer's cargo run) replaces
# target/*/rackcast, and the nodes restarted mid-run must run the same binary.
BIN_COPY="$OUT/rackcast-under-test"
cp "$RACKCAST_BIN" "$BIN_COPY" || { say "cannot copy $RACKCAST_BIN"; exit 1; }
BIN_NOTE="$RACKCAST_BIN (modified $(stat -c %y "$RACKCAST_BIN" | cut -d. -f1), sha256 $(sha256sum "$BIN_COPY" | cut -c1-16))"
say "results: $OUT (rackcast: $BIN_NOTE)"
# The driver's own limit: the run, plus clip encoding, start-up, restarts and shutdown.
run_driver timeout -s TERM -k 30 "$(( ${DURATION%.*} + 300 ))" \
  python3 "$BENCH/lib/soak.py" --out "$OUT" --duration "$DURATION" \
  --rackcast-bin "$BIN_COPY" --rackcast-note "$BIN_NOTE" --cmdline "$CMDLINE" "${PASS[@]}"
rc=$?
rm -f "$BIN_COPY"
[ "$rc" = 124 ] && say "the soak driver ran past its time limit and was stopped"
[ -f "$OUT/report.txt" ] && cp "$OUT/report.txt" "$BENCH/results/soak-latest.txt"
say "report: $OUT/report.txt (exit $rc: 0 = no lost segment, no timeline error, no unexpected exit)"
exit $rc
