#!/usr/bin/env bash
# Installs what rackcast needs on Debian 12. Returns at once (no apt, no network) when
# everything is already present; uses sudo for apt only when not run as root.
#
#   deploy/install-deps.sh          build and run: C toolchain, pkg-config, GStreamer 1.22
#                                   (headers, tools, plugin sets), ffmpeg, curl, CA
#                                   certificates, and a Rust toolchain at least as new as
#                                   Cargo.toml's rust-version (through rustup when cargo is
#                                   missing or too old, e.g. Debian's own rustc 1.63)
#   deploy/install-deps.sh --test   also the tools the test suite spawns (tests/run.sh), and
#                                   kubernetes-validate in a venv (k8s_venv below) for
#                                   tests/kubernetes_check.sh
#   deploy/install-deps.sh --runtime  only what the built binary needs to run (the
#                                   container image's runtime stage): the list below
#                                   without build tools, each -dev package replaced by
#                                   its shared library; no Rust
#
# rustup installs into ~/.cargo/bin, which this script cannot add to its caller's PATH:
# deploy/run.sh and tests/run.sh source ~/.cargo/env themselves; in a shell, run
# `. "$HOME/.cargo/env"` once (new login shells get it from ~/.profile).
#
# tests/install_deps_check.sh checks the package lists below against what the build and
# the tests use, and exercises the Rust version check and the rustup branch offline.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cargo_env="${CARGO_HOME:-$HOME/.cargo}/env"

# Build and run. The -sys crates link glib-2.0, gobject-2.0, gio-2.0 (libglib2.0-dev),
# gstreamer-1.0, gstreamer-base-1.0 (libgstreamer1.0-dev), gstreamer-app/-audio/-pbutils/
# -tag/-video-1.0 (libgstreamer-plugins-base1.0-dev). No crate builds C++ or needs git
# (Cargo.lock has only crates.io sources). procps: the tests signal the binary with kill.
packages=(
  gcc libc6-dev make pkg-config ca-certificates curl procps
  libglib2.0-dev libgstreamer1.0-dev libgstreamer-plugins-base1.0-dev gstreamer1.0-tools
  gstreamer1.0-plugins-base gstreamer1.0-plugins-good gstreamer1.0-plugins-bad
  gstreamer1.0-plugins-ugly gstreamer1.0-libav ffmpeg
)

# What only the build needs (the C toolchain and pkg-config for the -sys crates' build
# scripts, curl for rustup), and the shared library each -dev package above links the
# binary against: runtime_packages (--runtime, deploy/kubernetes/Containerfile) is
# `packages` without the first, with the second in place of the -dev packages.
# tests/kubernetes_check.sh checks both against the libraries pkg-config names.
build_only=(gcc libc6-dev make pkg-config curl)
declare -A dev_runtime=(
  [libglib2.0-dev]=libglib2.0-0 [libgstreamer1.0-dev]=libgstreamer1.0-0
  [libgstreamer-plugins-base1.0-dev]=libgstreamer-plugins-base1.0-0
)

# Test-only tools (the player matrix and the console test): xmllint (validates MPDs
# against tests/schema/), python3-jsonschema (validates the OpenAPI document against the
# OpenAPI 3.1 schema in tests/schema/), cvlc, streamlink, headless chromium (dash.js) and firefox-esr
# (the console in both engines), node and npm (fetch dash.js/shaka, puppeteer-core).
# GStreamer's dashdemux is in gstreamer1.0-plugins-bad, dashdemux2 (adaptivedemux2) in
# gstreamer1.0-plugins-good 1.22; both are in the list above.
# VLC refuses to run as root, even for `cvlc --version` ("VLC is not supposed to be run
# as root. Sorry."), and CI runs as root; Debian's vlc-wrapper does not help ("Cannot
# determine unprivileged user for VLC!"). Start it as nobody (setpriv is util-linux):
#   setpriv --reuid=nobody --regid=nogroup --clear-groups --reset-env \
#     cvlc --play-and-exit --vout=dummy --aout=dummy URL
# --reset-env gives it nobody's HOME; without it VLC warns that /root/.config is unreadable.
# tests/kubernetes_check.sh: kubectl (renders the kustomizations; Debian's kubernetes-client
# is kubectl 1.20), yamllint, python3-venv (the venv that kubernetes-validate goes into).
test_packages=(libxml2-utils python3-jsonschema vlc-bin vlc-plugin-base streamlink chromium firefox-esr nodejs npm
  kubernetes-client yamllint python3-venv)

# A package counts as present when dpkg has it installed or, for these, when its command
# is on PATH: NodeSource's nodejs package ships npm and conflicts with Debian's npm.
# kubectl may come from elsewhere than Debian (a newer one from the Kubernetes project's
# repository or a cloud SDK): any kubectl on PATH will do.
declare -A present_as_command=([nodejs]=node [npm]=npm [kubernetes-client]=kubectl)

# kubernetes-validate (PyPI; Kubernetes JSON schemas up to 1.31, the checks use 1.30), in
# a venv of its own: Debian packages neither it nor its schemas.
k8s_validate_version=1.31.0
k8s_venv() { echo "${RACKCAST_K8S_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/rackcast/k8s-venv}"; }

# version_ge A B: true when dotted version A >= B, compared numerically field by field; a
# missing field counts as 0 and a suffix is ignored (1.95.0-beta.1 -> 1.95.0).
version_ge() {
  local -a a b
  local i x y
  IFS=. read -ra a <<<"$1"
  IFS=. read -ra b <<<"$2"
  for ((i = 0; i < ${#a[@]} || i < ${#b[@]}; i++)); do
    x=${a[i]:-0} y=${b[i]:-0}
    x=${x%%[!0-9]*} y=${y%%[!0-9]*}
    x=$((10#${x:-0})) y=$((10#${y:-0}))
    if ((x != y)); then return $((x > y ? 0 : 1)); fi
  done
  return 0
}

# The crate's rust-version, read from Cargo.toml (the one place it is written).
required_rust() { sed -n 's/^rust-version *= *"\([0-9.]*\)".*/\1/p' "$root/Cargo.toml" | head -n 1; }

# The version of the rustc cargo would run: "rustc 1.95.0 (59807616e 2026-04-14)" -> 1.95.0.
# rust-version is about rustc; cargo's own version can differ (Debian 12: cargo 1.65.0,
# rustc 1.63.0).
rustc_version() { rustc --version 2>/dev/null | awk '{ print $2 }'; }

rust_ok() {
  local v
  command -v cargo >/dev/null && v=$(rustc_version) && [ -n "$v" ] && version_ge "$v" "$1"
}

missing_packages() {
  local -A installed=()
  local p s
  while read -r p s; do
    [ "$s" = "installed" ] && installed[${p%%:*}]=1
  done < <(dpkg-query -W -f='${Package} ${db:Status-Status}\n' "$@" 2>/dev/null || true)
  for p in "$@"; do
    [ -n "${installed[$p]:-}" ] && continue
    [ -n "${present_as_command[$p]:-}" ] && command -v "${present_as_command[$p]}" >/dev/null && continue
    echo "$p"
  done
}

install_packages() {
  local missing
  mapfile -t missing < <(missing_packages "$@")
  ((${#missing[@]})) || return 0
  echo "install-deps: installing ${missing[*]}" >&2
  local sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get update -qq -o DPkg::Lock::Timeout=600
  $sudo env DEBIAN_FRONTEND=noninteractive \
    apt-get install -y -qq --no-install-recommends -o DPkg::Lock::Timeout=600 "${missing[@]}"
}

ensure_rust() {
  local want found
  want=$(required_rust)
  [ -n "$want" ] || { echo "install-deps: no rust-version in $root/Cargo.toml" >&2; return 1; }
  # shellcheck source=/dev/null
  [ -f "$cargo_env" ] && . "$cargo_env"
  rust_ok "$want" && return 0
  found=$(rustc_version || true)
  echo "install-deps: Rust >= $want needed (found: ${found:-none}), installing it with rustup" >&2
  if command -v rustup >/dev/null; then
    rustup toolchain install --profile minimal "$want"
    rustup default "$want"
  else
    curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs |
      sh -s -- -y --profile minimal --default-toolchain "$want"
  fi
  # shellcheck source=/dev/null
  . "$cargo_env"
  if ! rust_ok "$want"; then
    echo "install-deps: rustup ran but $(command -v rustc || echo rustc) is $(rustc_version || echo missing), not >= $want" >&2
    return 1
  fi
  echo "install-deps: Rust $(rustc_version) is in ${cargo_env%/env}/bin; to use cargo in this shell run: . \"$cargo_env\"" >&2
}

# The runtime list: `packages` without build_only, -dev packages as their libraries.
runtime_packages() {
  local p
  for p in "${packages[@]}"; do
    if [[ " ${build_only[*]} " == *" $p "* ]]; then
      continue
    elif [[ "$p" == *-dev ]]; then
      [ -n "${dev_runtime[$p]:-}" ] || { echo "install-deps: no runtime package for $p in dev_runtime" >&2; return 1; }
      echo "${dev_runtime[$p]}"
    else
      echo "$p"
    fi
  done
}

# The venv with kubernetes-validate: no network when the pinned version is there.
ensure_k8s_validate() {
  local venv py
  venv=$(k8s_venv)
  [ "$("$venv/bin/kubernetes-validate" --version 2>/dev/null)" = "$k8s_validate_version" ] && return 0
  echo "install-deps: installing kubernetes-validate $k8s_validate_version into $venv" >&2
  py=/usr/bin/python3
  [ -x "$py" ] || py=python3
  mkdir -p "$(dirname "$venv")"
  "$py" -m venv "$venv"
  "$venv/bin/pip" install -q --disable-pip-version-check "kubernetes-validate==$k8s_validate_version"
}

main() {
  local want=("${packages[@]}") runtime
  case "${1:-}" in
    "") ;;
    --test) want+=("${test_packages[@]}") ;;
    --runtime)
      runtime=$(runtime_packages)
      mapfile -t want <<<"$runtime"
      install_packages "${want[@]}"
      return
      ;;
    *) echo "usage: $0 [--test | --runtime]" >&2; exit 2 ;;
  esac
  install_packages "${want[@]}"
  ensure_rust
  if [ "${1:-}" = --test ]; then ensure_k8s_validate; fi
}

# Sourcing the script (tests/install_deps_check.sh does) defines the lists and functions only.
if [[ "${BASH_SOURCE[0]}" == "$0" ]]; then main "$@"; fi
