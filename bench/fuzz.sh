#!/usr/bin/env bash
# Longer run of the RTMP protocol fuzzer (src/ingest/fuzz.rs, the unit test
# ingest::fuzz::the_protocol_path_survives_structured_random_input).  See bench/README.md.
#
#   bench/fuzz.sh [--cases N] [--debug] [--build-timeout S] [--time-limit S]
#
# Builds the library's test binary first (cargo test --release --lib --no-run; --debug:
# the dev profile), then runs `cargo test [--release] --lib ingest::fuzz:: -- --nocapture`
# with PROPTEST_CASES=N (default 200000) and prints cases, seconds, cases per second and
# PASS/FAIL (on failure, proptest's minimal failing input).  --time-limit stops a run
# that hangs (default 14400 s; a hang counts as FAIL).  Output: bench/results/fuzz-<stamp>.txt.
set -uo pipefail

NAME="fuzz.sh"
HELP_LINES="2,11"
BENCH="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
. "$BENCH/lib/common.sh"
set_cmdline "$@"

CASES=200000
PROFILE=release
TIME_LIMIT=14400
while [ $# -gt 0 ]; do
  case "$1" in
    --cases) CASES="$2"; shift 2 ;;
    --debug) PROFILE=debug; shift ;;
    --release) PROFILE=release; shift ;;
    --build-timeout) BUILD_TIMEOUT="$2"; shift 2 ;;
    --time-limit) TIME_LIMIT="$2"; shift 2 ;;
    -h|--help) sed -n "${HELP_LINES}p" "$0"; exit 0 ;;
    *) echo "$NAME: unknown option $1" >&2; exit 2 ;;
  esac
done
case "$CASES" in ''|*[!0-9]*) echo "$NAME: --cases wants a positive integer" >&2; exit 2 ;; esac
command -v cargo >/dev/null 2>&1 || { say "cargo not found"; exit 1; }
cd "$REPO" || exit 1

STAMP="$(date +%Y%m%d-%H%M%S)"
mkdir -p "$BENCH/results"
REPORT="$BENCH/results/fuzz-$STAMP.txt"
LOG="$BENCH/results/fuzz-$STAMP.log"
CARGO_FLAGS=(--lib)
[ "$PROFILE" = release ] && CARGO_FLAGS=(--release --lib)

# Stop whatever we started (the build or the test run) on exit or Ctrl-C.
CHILD=""
on_exit() {
  local rc=$?
  if [ -n "$CHILD" ] && kill -0 "$CHILD" 2>/dev/null; then
    kill -TERM -- "-$CHILD" 2>/dev/null || kill -TERM "$CHILD" 2>/dev/null
  fi
  exit $rc
}
trap on_exit EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# run_bg LIMIT CMD...: runs CMD in its own process group (so on_exit can stop cargo and the
# test binary together) under `timeout`, appending to $LOG; returns its exit status.
run_bg() {
  local limit="$1" rc; shift
  setsid timeout -s TERM -k 10 "$limit" "$@" >>"$LOG" 2>&1 &
  CHILD=$!
  wait "$CHILD"; rc=$?
  CHILD=""
  return $rc
}

say "building the test binary ($PROFILE; log: $LOG)"
t0=$(date +%s)
run_bg "$BUILD_TIMEOUT" cargo test "${CARGO_FLAGS[@]}" --no-run
brc=$?
say "build exited $brc after $(( $(date +%s) - t0 )) s"
if [ "$brc" != 0 ]; then
  { echo "command: $CMDLINE"; echo "result: FAIL (the test binary did not build, exit $brc; see $LOG)"; } | tee "$REPORT"
  exit 1
fi

say "fuzzing: PROPTEST_CASES=$CASES cargo test ${CARGO_FLAGS[*]} ingest::fuzz:: -- --nocapture"
echo "===== test run" >>"$LOG"
start_ns=$(date +%s%N)
export PROPTEST_CASES="$CASES"
run_bg "$TIME_LIMIT" cargo test "${CARGO_FLAGS[@]}" ingest::fuzz:: -- --nocapture
trc=$?
end_ns=$(date +%s%N)

# Figures: wall time of the test run (cargo's up-to-date check and the 0.2 s
# a_well_formed_publish_reaches_the_media_path test included), and libtest's own figure.
run_out="$(sed -n '/^===== test run/,$p' "$LOG")"
fuzz_line="$(grep -E 'test ingest::fuzz::the_protocol_path_survives_structured_random_input \.\.\. ' <<<"$run_out" | tail -1)"
libtest_s="$(grep -oE 'finished in [0-9.]+s' <<<"$run_out" | tail -1 | grep -oE '[0-9.]+')"
wall_s="$(awk -v a="$start_ns" -v b="$end_ns" 'BEGIN { printf "%.2f", (b - a) / 1e9 }')"
secs="${libtest_s:-$wall_s}"
if [ "$trc" = 0 ] && grep -q 'the_protocol_path_survives_structured_random_input \.\.\. ok' <<<"$run_out"; then
  verdict="PASS"
elif [ "$trc" = 124 ] || [ "$trc" = 137 ]; then
  verdict="FAIL (no result within --time-limit $TIME_LIMIT s: a hang, or too many cases for the limit)"
elif [ -z "$fuzz_line" ]; then
  verdict="FAIL (the fuzz test did not run, exit $trc; see $LOG)"
else
  verdict="FAIL (exit $trc)"
fi

{
  echo "command:          $CMDLINE"
  echo "commit:           $(git -C "$REPO" rev-parse --short HEAD 2>/dev/null)$(git -C "$REPO" diff --quiet HEAD -- src 2>/dev/null || echo ' (src/ has uncommitted changes)')"
  echo "profile:          $PROFILE"
  echo "cases run:        $CASES"
  echo "seconds:          $secs (libtest 'finished in'; wall time of the run incl. cargo: $wall_s)"
  awk -v n="$CASES" -v s="$secs" 'BEGIN { if (s > 0) printf "cases per second: %.0f\n", n / s }'
  grep -m1 'well-formed publish through guard' <<<"$run_out" | sed 's/^/note:             /'
  echo "result:           $verdict"
  if [ "$verdict" != PASS ]; then
    echo
    echo "---- failure (from $LOG)"
    # proptest's panic message carries the minimal failing input after shrinking.
    if grep -q 'minimal failing input' <<<"$run_out"; then
      grep -B2 -A40 'minimal failing input' <<<"$run_out" | head -80
    else
      tail -40 <<<"$run_out"
    fi
  fi
} | tee "$REPORT"
say "report: $REPORT"
[ "$verdict" = PASS ]
