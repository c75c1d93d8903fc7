#!/usr/bin/env bash
# Proves that deploy/install-deps.sh installs everything on a bare Debian 12: builds a
# minimal bookworm chroot (debootstrap --variant=minbase), copies the committed tree (HEAD,
# `git archive`) into it and runs, as root inside it:
#   deploy/install-deps.sh --test          the packages, then the Rust toolchain (rustup)
#   deploy/install-deps.sh --test again    must return at once
#   tests/install_deps_check.sh --installed, and each test tool's version line
# It does not build rackcast in the chroot. Rust: without access to sh.rustup.rs the
# rustup step fails; that is reported, not treated as a package failure.
#
#   deploy/check-fresh-debian.sh [--debian-cargo] [--keep] [DIR]
#     --debian-cargo  afterwards install Debian's own cargo/rustc and show that
#                     install-deps.sh finds them too old (so a bare machine takes rustup)
#     --keep          leave the chroot (default: unmount and delete it)
#     DIR             where to build it (default: a new directory under /tmp)
# Needs root (debootstrap, mount, chroot) and the network to the Debian mirror this machine's
# apt uses. Takes minutes and about 2.5 GB; the summary is printed at the end.
# shellcheck disable=SC2016 # the single-quoted commands run inside the chroot
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
debian_cargo=0 keep=0 dir=""
for a in "$@"; do
  case "$a" in
    --debian-cargo) debian_cargo=1 ;;
    --keep) keep=1 ;;
    -*) echo "usage: $0 [--debian-cargo] [--keep] [DIR]" >&2; exit 2 ;;
    *) dir=$a ;;
  esac
done
[ "$(id -u)" -eq 0 ] || { echo "$0: needs root (debootstrap, mount, chroot)" >&2; exit 1; }
[ -n "$dir" ] || dir=$(mktemp -d /tmp/rackcast-deb12.XXXXXX)
mkdir -p "$dir"
say() { echo "check-fresh-debian: $*" >&2; }

# The mirror this machine's apt uses (deb822 or one-line sources), else Debian's CDN.
mirror=$(sed -n 's/^URIs: *\([^ ]*debian\/*\)$/\1/p' /etc/apt/sources.list.d/*.sources 2>/dev/null | head -n 1)
[ -n "$mirror" ] || mirror=$(awk '$1 == "deb" && $2 ~ /debian\/?$/ { print $2; exit }' /etc/apt/sources.list 2>/dev/null || true)
mirror=${mirror:-http://deb.debian.org/debian}

mounted=()
cleanup() {
  local i
  for ((i = ${#mounted[@]} - 1; i >= 0; i--)); do
    umount "${mounted[i]}" 2>/dev/null || umount -l "${mounted[i]}" || say "could not unmount ${mounted[i]}"
  done
  if ((keep)); then say "chroot kept in $dir"; return; fi
  if findmnt -rn -o TARGET | grep -q "^$dir"; then
    say "something is still mounted under $dir: not deleting it"; return
  fi
  rm -rf --one-file-system "$dir"
}
trap cleanup EXIT

command -v debootstrap >/dev/null || {
  say "installing debootstrap"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends debootstrap >/dev/null
}

t0=$SECONDS
say "debootstrap --variant=minbase bookworm $dir $mirror"
debootstrap --variant=minbase bookworm "$dir" "$mirror" >"$dir.debootstrap.log" 2>&1 || {
  tail -n 20 "$dir.debootstrap.log" >&2; exit 1
}
t_boot=$((SECONDS - t0))
base_count=$(chroot "$dir" dpkg-query -W -f='${db:Status-Status}\n' | grep -c '^installed$')

# A stock Debian 12 install's sources: the release, its updates and security.
security=${mirror%/debian*}/debian-security
[ "$security" != "$mirror" ] || security=http://deb.debian.org/debian-security
rm -f "$dir/etc/apt/sources.list"
cat >"$dir/etc/apt/sources.list.d/debian.sources" <<EOF
Types: deb
URIs: $mirror
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: $security
Suites: bookworm-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF
cp /etc/resolv.conf "$dir/etc/resolv.conf"
# No service may start inside the chroot.
printf '#!/bin/sh\nexit 101\n' >"$dir/usr/sbin/policy-rc.d"
chmod +x "$dir/usr/sbin/policy-rc.d"

mount -t proc proc "$dir/proc" && mounted+=("$dir/proc")
mount --bind /dev "$dir/dev" && mounted+=("$dir/dev")
mount --bind /dev/pts "$dir/dev/pts" && mounted+=("$dir/dev/pts")

commit=$(git -C "$repo" rev-parse HEAD)
git -C "$repo" diff --quiet HEAD || say "uncommitted changes in $repo are not copied: testing $commit"
mkdir -p "$dir/root/rackcast"
git -C "$repo" archive HEAD | tar -x -C "$dir/root/rackcast"

in_chroot() {
  chroot "$dir" /usr/bin/env -i HOME=/root TERM=dumb LANG=C.UTF-8 \
    PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    bash -c "cd /root/rackcast && $1"
}

say "running deploy/install-deps.sh --test in the chroot (log: $dir.install.log)"
t0=$SECONDS
rc=0
in_chroot './deploy/install-deps.sh --test' >"$dir.install.log" 2>&1 || rc=$?
t_install=$((SECONDS - t0))
all_count=$(chroot "$dir" dpkg-query -W -f='${db:Status-Status}\n' | grep -c '^installed$')
missing=$(in_chroot 'source deploy/install-deps.sh && missing_packages "${packages[@]}" "${test_packages[@]}"' | xargs)
rust_line=$(grep -E 'install-deps: (Rust|rustup)|curl:' "$dir.install.log" | tail -n 3 | tr '\n' ' ' || true)

t0=${EPOCHREALTIME/./}
in_chroot 'source deploy/install-deps.sh && install_packages "${packages[@]}" "${test_packages[@]}"' >/dev/null
t_again=$(((${EPOCHREALTIME/./} - t0) / 1000))

check=$(in_chroot './tests/install_deps_check.sh --installed' 2>&1) || true
versions=$(in_chroot '
  xmllint --version 2>&1 | head -n 1
  setpriv --reuid=nobody --regid=nogroup --clear-groups --reset-env cvlc --version 2>/dev/null | head -n 1
  streamlink --version; chromium --version 2>/dev/null; echo "node $(node --version)"; echo "npm $(npm --version)"
  ffmpeg -version | head -n 1; gst-launch-1.0 --version | sed -n 2p
  for e in dashdemux dashdemux2 x264enc h264parse avdec_h264 aacparse; do
    gst-inspect-1.0 --exists "$e" && echo "gst $e: yes" || echo "gst $e: MISSING"
  done' 2>&1) || true

debian_rust=""
if ((debian_cargo)); then
  say "installing Debian's cargo in the chroot"
  in_chroot 'DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends cargo' >"$dir.cargo.log" 2>&1 || say "apt-get install cargo failed ($dir.cargo.log)"
  debian_rust=$(in_chroot 'source deploy/install-deps.sh; echo "$(cargo --version), $(rustc --version)";
    rust_ok "$(required_rust)" && echo "install-deps.sh: new enough" ||
      echo "install-deps.sh: older than rust-version $(required_rust): takes the rustup branch"' 2>&1) || true
fi

cat <<EOF

== check-fresh-debian: commit $commit, mirror $mirror
debootstrap (minbase):       ${t_boot} s, $base_count packages
install-deps.sh --test:      exit $rc after ${t_install} s, $((all_count - base_count)) packages installed ($all_count in all)
still missing:               ${missing:-none}
second run (packages only):  ${t_again} ms
Rust:                        ${rust_line:-nothing to do}
install_deps_check:          $check
$versions
${debian_rust:+Debian cargo: $debian_rust}
logs: $dir.debootstrap.log $dir.install.log
EOF
[ -z "$missing" ]
