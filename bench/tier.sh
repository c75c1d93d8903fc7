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

NAME="tier.sh"
HELP_LINES="2,13"
BENCH="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
. "$BENCH/lib/common.sh"
set_cmdline "$@"

EDGES="rackcast,varnish,nginx"
TIME_LIMIT=420
PASS=()
while [ $# -gt 0 ]; do
  case "$1" in
    --edges) EDGES="$2"; shift 2 ;;
    --time-limit) TIME_LIMIT="$2"; shift 2 ;;
    --delay-ms|--viewers|--reps|--wrk-duration|--wrk-connections|--wrk-threads|--busy-warn)
      PASS+=("$1" "$2"); shift 2 ;;
    *) common_opt "$@"; shift "$SHIFT" ;;
  esac
done

results_dir "tier-"
install_cleanup 100

# ---------------------------------------------------------------- installs
ensure_debs varnish nginx wrk
command -v wrk >/dev/null 2>&1 || { say "wrk is missing; cannot measure"; exit 1; }

# 1,000 viewers plus the edges' upstream sockets need more than the usual 1024 descriptors.
ulimit -n 16384 2>/dev/null || ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

# ---------------------------------------------------------------- rackcast build
build_rackcast "$EDGES"

# ---------------------------------------------------------------- run
say "results: $OUT"
run_driver timeout -s TERM -k 20 "$TIME_LIMIT" \
  python3 "$BENCH/lib/tier_bench.py" --out "$OUT" --edges "$EDGES" \
  --rackcast-bin "$RACKCAST_BIN" --rackcast-note "$RACKCAST_NOTE" --cmdline "$CMDLINE" \
  "${PASS[@]}"
rc=$?
[ "$rc" = 124 ] && say "the measurement ran past --time-limit $TIME_LIMIT s and was stopped"
copy_latest tier-latest
exit $rc
