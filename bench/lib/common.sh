# Shell helpers shared by bench/run.sh and bench/tier.sh; sourced, not run.
# The script sets NAME (its file name, for messages), BENCH (the bench/ directory) and
# HELP_LINES (the lines of its header comment that --help prints) before sourcing this.

REPO="$(cd "$BENCH/.." && pwd)"
BUILD=1
BUILD_TIMEOUT=900
RACKCAST_BIN="${RACKCAST_BIN:-$REPO/target/release/rackcast}"
MAIN_PID=""
BUILD_PID=""

# set_cmdline ARGS...: CMDLINE, the command line as typed, for the results header.
set_cmdline() {
  CMDLINE="bench/$NAME"
  [ $# -gt 0 ] && CMDLINE="$CMDLINE$(printf ' %q' "$@")"
}

# common_opt "$@": the options both scripts take (--no-build, --build-timeout,
# --rackcast-bin, --help); anything else is an unknown option.  Sets SHIFT.
common_opt() {
  case "$1" in
    --no-build) BUILD=0; SHIFT=1 ;;
    --build-timeout) BUILD_TIMEOUT="$2"; SHIFT=2 ;;
    --rackcast-bin) RACKCAST_BIN="$2"; BUILD=0; SHIFT=2 ;;
    -h|--help) sed -n "${HELP_LINES}p" "$0"; exit 0 ;;
    *) echo "$NAME: unknown option $1" >&2; exit 2 ;;
  esac
}

say() { echo "[$NAME $(date +%H:%M:%S)] $*" >&2; }

# results_dir PREFIX: OUT=bench/results/<PREFIX><stamp>, created.
results_dir() {
  STAMP="$(date +%Y%m%d-%H%M%S)"
  OUT="$BENCH/results/$1$STAMP"
  mkdir -p "$OUT"
}

# On exit (and on INT/TERM): stop the build and the driver (SIGTERM, then wait up to
# CLEANUP_TICKS x 0.2 s for the driver), then SIGKILL every PID the driver recorded in
# $OUT/pids that is still alive.
cleanup() {
  local rc=$?
  for p in $BUILD_PID $MAIN_PID; do
    if kill -0 "$p" 2>/dev/null; then kill -TERM "$p" 2>/dev/null; fi
  done
  for _ in $(seq 1 "$CLEANUP_TICKS"); do
    [ -n "$MAIN_PID" ] && kill -0 "$MAIN_PID" 2>/dev/null || break
    sleep 0.2
  done
  # anything the driver started and did not stop (it records every PID it spawns)
  if [ -f "$OUT/pids" ]; then
    while read -r p; do
      if [ -n "$p" ] && kill -0 "$p" 2>/dev/null; then kill -KILL "$p" 2>/dev/null; fi
    done < "$OUT/pids"
  fi
  exit $rc
}

# install_cleanup TICKS
install_cleanup() {
  CLEANUP_TICKS="$1"
  trap cleanup EXIT
  trap 'exit 130' INT
  trap 'exit 143' TERM
}

# ensure_debs PKG...: apt-get install the packages dpkg does not list as installed (log:
# $OUT/apt.log).  cmd:NAME stands for package NAME, wanted when no command NAME is on PATH.
ensure_debs() {
  local need_pkgs=() p
  for p in "$@"; do
    case "$p" in
      cmd:*) command -v "${p#cmd:}" >/dev/null 2>&1 || need_pkgs+=("${p#cmd:}") ;;
      *) dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || need_pkgs+=("$p") ;;
    esac
  done
  [ ${#need_pkgs[@]} -gt 0 ] || return 0
  say "apt-get install ${need_pkgs[*]}"
  export DEBIAN_FRONTEND=noninteractive
  if ! apt-get install -y -q --no-install-recommends -o DPkg::Lock::Timeout=600 "${need_pkgs[@]}" >"$OUT/apt.log" 2>&1; then
    say "apt-get install failed; running apt-get update and retrying"
    apt-get update -q >>"$OUT/apt.log" 2>&1
    apt-get install -y -q --no-install-recommends -o DPkg::Lock::Timeout=600 "${need_pkgs[@]}" >>"$OUT/apt.log" 2>&1 \
      || say "apt-get install failed, see $OUT/apt.log (continuing with what is there)"
  fi
}

# build_rackcast SELECTION: when SELECTION (comma-separated) names rackcast, cargo build
# --release (unless --no-build) and check the binary; RACKCAST_NOTE says why rackcast is
# to be skipped (empty when it is not).
build_rackcast() {
  local t0 brc
  RACKCAST_NOTE=""
  [[ ",$1," == *",rackcast,"* ]] || return 0
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
  return 0
}

# run_driver CMD...: runs the measurement in the background (so that cleanup can stop it)
# and returns its exit status.
run_driver() {
  local rc
  "$@" &
  MAIN_PID=$!
  wait "$MAIN_PID"; rc=$?
  MAIN_PID=""
  return $rc
}

# copy_latest NAME: $OUT/results.json and table.txt to bench/results/NAME.{json,txt}.
copy_latest() {
  if [ -f "$OUT/results.json" ]; then
    cp "$OUT/results.json" "$BENCH/results/$1.json"
    cp "$OUT/table.txt" "$BENCH/results/$1.txt"
  fi
}
