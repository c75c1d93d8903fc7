#!/usr/bin/env bash
# Checks deploy/install-deps.sh without network or root (tests/run.sh runs it before cargo):
#  1. every Debian package the build and the tests need is in its lists. The need is worked
#     out here, independently: the -sys crates in Cargo.lock (the system libraries they
#     link, through pkg-config), the C toolchain and what rustup needs, and the programs
#     the tests spawn (Command::new in tests/ and src/, plus the player-matrix tools);
#  2. its Rust version comparison, and that it reads rust-version from Cargo.toml;
#  3. its Rust branch, offline, with stub cargo/rustc/curl/rustup on PATH: a recent enough
#     toolchain is left alone; Debian's rustc 1.63 leads to the rustup installer with the
#     documented arguments; an old rustup default leads to `rustup toolchain install`.
#  With --installed (tests/run.sh, after install-deps.sh --test): each of those programs is
#  on PATH.
set -euo pipefail
cd "$(dirname "$0")/.."

failures=0
fail() { echo "install_deps_check: FAIL: $*" >&2; failures=$((failures + 1)); }

# shellcheck source=deploy/install-deps.sh
source deploy/install-deps.sh # defines packages, test_packages and the functions only
listed() { local p; for p in "${@:2}"; do [ "$p" = "$1" ] && return 0; done; return 1; }

# 1a. -sys crates: the pkg-config modules they link and the Debian package with the .pc file.
declare -A sys_module=(
  [glib-sys]=glib-2.0 [gobject-sys]=gobject-2.0 [gio-sys]=gio-2.0
  [gstreamer-sys]=gstreamer-1.0 [gstreamer-base-sys]=gstreamer-base-1.0
  [gstreamer-app-sys]=gstreamer-app-1.0 [gstreamer-audio-sys]=gstreamer-audio-1.0
  [gstreamer-pbutils-sys]=gstreamer-pbutils-1.0 [gstreamer-tag-sys]=gstreamer-tag-1.0
  [gstreamer-video-sys]=gstreamer-video-1.0
)
declare -A module_package=(
  [glib-2.0]=libglib2.0-dev [gobject-2.0]=libglib2.0-dev [gio-2.0]=libglib2.0-dev
  [gstreamer-1.0]=libgstreamer1.0-dev [gstreamer-base-1.0]=libgstreamer1.0-dev
  [gstreamer-app-1.0]=libgstreamer-plugins-base1.0-dev
  [gstreamer-audio-1.0]=libgstreamer-plugins-base1.0-dev
  [gstreamer-pbutils-1.0]=libgstreamer-plugins-base1.0-dev
  [gstreamer-tag-1.0]=libgstreamer-plugins-base1.0-dev
  [gstreamer-video-1.0]=libgstreamer-plugins-base1.0-dev
)
# -sys crates that link nothing on Linux (other platforms' APIs, raw syscalls).
# nvml-wrapper-sys opens libnvidia-ml with dlopen at run time (libloading). jni-sys
# (Android) and system-configuration-sys (macOS) come with hickory-resolver's other targets.
no_link_sys=" core-foundation-sys js-sys web-sys windows-sys linux-raw-sys nvml-wrapper-sys jni-sys system-configuration-sys "
# -sys crates built from their bundled C sources: they need only the C compiler below.
bundled_sys=" libsqlite3-sys "
grep -qE '^rusqlite = .*"bundled"' Cargo.toml || fail "rusqlite must keep its \"bundled\" feature (or libsqlite3-dev goes into install-deps.sh)"

build_need=(gcc libc6-dev pkg-config curl ca-certificates) # cc as linker; rustup's download
modules=()
while read -r crate; do
  if [ -n "${sys_module[$crate]:-}" ]; then
    modules+=("${sys_module[$crate]}")
    build_need+=("${module_package[${sys_module[$crate]}]}")
  elif [[ "$no_link_sys" != *" $crate "* && "$bundled_sys" != *" $crate "* ]]; then
    fail "Cargo.lock has $crate: add the library it links to this check and its Debian package to deploy/install-deps.sh"
  fi
done < <(sed -n 's/^name = "\(.*-sys\)"$/\1/p' Cargo.lock | sort -u)
((${#modules[@]} >= 5)) || fail "found only ${#modules[@]} GStreamer/GLib -sys crates in Cargo.lock"

# 1b. Programs the tests spawn, and the player matrix's tools.
declare -A program_package=(
  [ffmpeg]=ffmpeg [ffprobe]=ffmpeg [gst-launch-1.0]=gstreamer1.0-tools
  [gst-inspect-1.0]=gstreamer1.0-tools [kill]=procps [xmllint]=libxml2-utils
  [cvlc]="vlc-bin vlc-plugin-base" [streamlink]=streamlink [chromium]=chromium
  [node]=nodejs [npm]=npm [firefox-esr]=firefox-esr
  # python3 with the jsonschema module (the OpenAPI document's validation).
  [python3]=python3-jsonschema
  # tests/kubernetes_check.sh (its venv's kubernetes-validate is checked with --installed).
  [kubectl]=kubernetes-client [yamllint]=yamllint [python3 -m venv]=python3-venv
  # Essential on every Debian system (apt will not remove them): nothing to install.
  [sh]=essential [id]=essential [chown]=essential [setpriv]=essential
)
player_matrix=(gst-launch-1.0 cvlc streamlink chromium firefox-esr xmllint node npm)
# What tests/kubernetes_check.sh runs besides python3.
kubernetes_check_tools=(kubectl yamllint "python3 -m venv")
programs=()
while read -r program; do programs+=("$program"); done < <(
  grep -rhoE 'Command::new\("[^"]+"\)' tests src | sed 's/.*("\(.*\)")/\1/' | sort -u)
((${#programs[@]} >= 2)) || fail "found only ${#programs[@]} programs spawned in tests/ and src/"
programs+=("${player_matrix[@]}" "${kubernetes_check_tools[@]}")
test_need=()
for program in "${programs[@]}"; do
  if [ -z "${program_package[$program]:-}" ]; then
    fail "the tests spawn $program: add its Debian package to this check and to deploy/install-deps.sh"
    continue
  fi
  [ "${program_package[$program]}" = essential ] && continue
  # shellcheck disable=SC2206
  test_need+=(${program_package[$program]})
done

mapfile -t build_need < <(printf '%s\n' "${build_need[@]}" | sort -u)
mapfile -t test_need < <(printf '%s\n' "${test_need[@]}" | sort -u)
for p in "${build_need[@]}"; do
  listed "$p" "${packages[@]}" || fail "deploy/install-deps.sh does not install $p (needed to build)"
done
for p in "${test_need[@]}"; do
  listed "$p" "${packages[@]}" "${test_packages[@]}" ||
    fail "deploy/install-deps.sh --test does not install $p (needed by the tests)"
done

# 2. Version comparison and rust-version.
expect_ge() { version_ge "$1" "$2" || fail "version_ge $1 $2 should be true"; }
expect_lt() { ! version_ge "$1" "$2" || fail "version_ge $1 $2 should be false"; }
expect_lt 1.63.0 1.95
expect_lt 1.94.1 1.95
expect_lt 0.66.0 1.95
expect_ge 1.95.0 1.95
expect_ge 1.95 1.95.0
expect_ge 1.95.2 1.95
expect_ge 1.100.1 1.95
expect_ge 2.0.0 1.95
expect_ge 1.96.0-beta.3 1.95
expect_lt 1.95.0 1.95.1
toml_rust=$(grep -m1 '^rust-version' Cargo.toml | cut -d'"' -f2)
[ -n "$toml_rust" ] && [ "$(required_rust)" = "$toml_rust" ] ||
  fail "required_rust gives '$(required_rust)', Cargo.toml says '$toml_rust'"

# 3. The Rust branch with stubs (no network, nothing installed).
stubs=$(mktemp -d)
trap 'rm -rf "$stubs"' EXIT
stub() { printf '#!/bin/sh\n%s\n' "$2" >"$1" && chmod +x "$1"; }
# run_case NAME RUSTC_VERSION WITH_RUSTUP: ensure_rust in a clean HOME; prints its stderr.
run_case() {
  local home=$stubs/$1 bin=$stubs/$1/bin
  mkdir -p "$bin"
  stub "$bin/cargo" 'exit 0'
  stub "$bin/rustc" "echo 'rustc $2 (stub)'"
  stub "$bin/curl" "echo \"\$*\" >'$home/curl.args'; cat <<'INSTALLER'
echo \"\$*\" >\"\$HOME/rustup-init.args\"
mkdir -p \"\$HOME/.cargo/bin\"
printf '#!/bin/sh\\nexit 0\\n' >\"\$HOME/.cargo/bin/cargo\"
printf '#!/bin/sh\\necho \"rustc 1.95.0 (rustup stub)\"\\n' >\"\$HOME/.cargo/bin/rustc\"
chmod +x \"\$HOME/.cargo/bin/cargo\" \"\$HOME/.cargo/bin/rustc\"
echo 'export PATH=\"\$HOME/.cargo/bin:\$PATH\"' >\"\$HOME/.cargo/env\"
INSTALLER"
  if [ "$3" = rustup ]; then
    stub "$bin/rustup" "echo \"\$*\" >>'$home/rustup.args'
[ \"\$1\" = default ] && printf '#!/bin/sh\\necho \"rustc \$2.0 (rustup stub)\"\\n' >'$bin/rustc'
exit 0"
  fi
  HOME=$home CARGO_HOME=$home/.cargo PATH="$bin:/usr/bin:/bin" \
    bash -c 'source deploy/install-deps.sh && ensure_rust && echo "after: $(rustc --version)" >&2' 2>&1 ||
    echo "ensure_rust failed"
}
rust_want=$(required_rust)

out=$(run_case recent "$rust_want.0" none)
[ ! -e "$stubs/recent/curl.args" ] && [ "$out" = "after: rustc $rust_want.0 (stub)" ] || fail "Rust $rust_want.0 present, yet ensure_rust did: $out"

out=$(run_case debian 1.63.0 none)
[ "$(cat "$stubs/debian/curl.args" 2>/dev/null)" = "--proto =https --tlsv1.2 -sSf https://sh.rustup.rs" ] ||
  fail "Debian's rustc 1.63: curl not called as documented ($(cat "$stubs/debian/curl.args" 2>/dev/null))"
[ "$(cat "$stubs/debian/rustup-init.args" 2>/dev/null)" = "-y --profile minimal --default-toolchain $rust_want" ] ||
  fail "rustup installer got '$(cat "$stubs/debian/rustup-init.args" 2>/dev/null)'"
[[ "$out" == *"after: rustc 1.95.0 (rustup stub)"* && "$out" == *". \"$stubs/debian/.cargo/env\""* ]] ||
  fail "after rustup: cargo not usable or no PATH hint: $out"

out=$(run_case oldrustup 1.80.0 rustup)
[ "$(cat "$stubs/oldrustup/rustup.args" 2>/dev/null)" = "toolchain install --profile minimal $rust_want
default $rust_want" ] || fail "old rustup default: rustup called as '$(cat "$stubs/oldrustup/rustup.args" 2>/dev/null)'"
[ ! -e "$stubs/oldrustup/curl.args" ] || fail "old rustup default: the installer was downloaded anyway"

# With --installed: the programs are there (after install-deps.sh --test).
if [ "${1:-}" = --installed ]; then
  for program in "${programs[@]}"; do
    if [ "$program" = "python3 -m venv" ]; then
      continue # used once, by install-deps.sh; the venv it made is checked below
    fi
    command -v "$program" >/dev/null || fail "$program is not on PATH after deploy/install-deps.sh --test"
  done
  [ "$("$(k8s_venv)/bin/kubernetes-validate" --version 2>/dev/null)" = "$k8s_validate_version" ] ||
    fail "no kubernetes-validate $k8s_validate_version in $(k8s_venv) after deploy/install-deps.sh --test"
  for m in "${modules[@]}"; do
    pkg-config --exists "$m" || fail "pkg-config does not find $m"
  done
fi

if ((failures)); then exit 1; fi
echo "install_deps_check: ok (${#build_need[@]} build packages, ${#test_need[@]} test packages, ${#programs[@]} programs, version and rustup branches)"
