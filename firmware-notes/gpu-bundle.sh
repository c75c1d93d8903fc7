#!/usr/bin/env bash
# Collect a relocatable GStreamer 1.22 bundle from a Debian 12 host, for firmware-notes/gpu-check.sh
# on a GPU host that has no GStreamer, no package manager and no network (e.g. a lent H200).
#
#   firmware-notes/gpu-bundle.sh [DEST]      # default DEST: .gpucheck (ignored via .git/info/exclude)
#
# Needs on the collecting host (Debian 12): gstreamer1.0-tools, -plugins-base, -plugins-good,
# -plugins-bad (nvcodec, videoparsersbad), -plugins-ugly (x264), libopenh264-7, ffmpeg (test
# media) and python3-pip (only for the optional NVRTC-12 wheel, see below).
#
# What it writes under DEST:
#   gst/bin/        gst-launch-1.0, gst-inspect-1.0
#   gst/libexec/    gst-plugin-scanner
#   gst/plugins/    the plugins the check uses (coreelements, typefind, videotestsrc,
#                   videoconvertscale, videoparsersbad, nvcodec, x264, openh264)
#   gst/lib/        the ldd closure of all of the above, WITHOUT glibc, libstdc++ and libgcc_s
#                   (the GPU host's newer ones are used) and without any NVIDIA driver library
#                   (nvcodec dlopens libcuda.so.1, libnvcuvid.so.1, libnvidia-encode.so.1 and
#                   libnvrtc from the GPU host at run time)
#   media/          10 s 1080p60 (~6 Mbit/s) and 720p30 (~3 Mbit/s) H.264 High elementary streams
#   rackcast/       the rackcast binary, stripped, when RACKCAST_BIN names one (e.g.
#                   target/release/rackcast), with libgstapp-1.0 added to gst/lib
#   wheel/          nvidia-cuda-nvrtc-cu12 12.1 wheel (NVRTC 12): GStreamer 1.22's CUDA
#                   converters compile their kernels with NVRTC for compute_30/compute_52, which
#                   CUDA 13's NVRTC no longer accepts; the check falls back to this one.
# libav (avdec_h264) is NOT bundled: Debian's libavcodec closure is ~230 MB (x265, codec2,
# rsvg, icu, ...), and libavcodec is linked BIND_NOW, so it cannot be trimmed; the software
# baseline on the GPU host decodes with openh264dec instead.
set -euo pipefail
DEST=${1:-.gpucheck}
ARCH=/usr/lib/x86_64-linux-gnu
PLUGDIR=$ARCH/gstreamer-1.0
PLUGINS="coreelements typefindfunctions videotestsrc videoconvertscale videoparsersbad nvcodec x264 openh264"
mkdir -p "$DEST"/gst/{bin,libexec,plugins,lib}
cp -L /usr/bin/gst-launch-1.0 /usr/bin/gst-inspect-1.0 "$DEST/gst/bin/"
cp -L $ARCH/gstreamer1.0/gstreamer-1.0/gst-plugin-scanner "$DEST/gst/libexec/"
for p in $PLUGINS; do cp -L "$PLUGDIR/libgst$p.so" "$DEST/gst/plugins/"; done
# glibc, the C++ runtime and the dynamic loader stay the host's.
skip='^(linux-vdso|ld-linux-x86-64|libc|libm|libpthread|libdl|librt|libresolv|libutil|libstdc\+\+|libgcc_s|libmvec|libanl|libnsl)\.so'
for f in "$DEST"/gst/bin/* "$DEST"/gst/libexec/* "$DEST"/gst/plugins/*; do
  ldd "$f" | awk '$2 == "=>" && $3 ~ /^\// {print $1, $3}'
done | sort -u | while read -r soname path; do
  [[ $soname =~ $skip ]] && continue
  cp -L "$path" "$DEST/gst/lib/$soname"
done
if ldd "$DEST"/gst/plugins/* "$DEST"/gst/bin/* 2>/dev/null | grep -q 'not found'; then
  echo "unresolved libraries:" >&2; ldd "$DEST"/gst/plugins/* | grep 'not found' >&2; exit 1
fi
strip --strip-unneeded "$DEST"/gst/lib/* "$DEST"/gst/plugins/* 2>/dev/null || true

if [ -n "${RACKCAST_BIN:-}" ]; then
  mkdir -p "$DEST/rackcast"
  cp -L "$RACKCAST_BIN" "$DEST/rackcast/rackcast" && strip "$DEST/rackcast/rackcast"
  ldd "$RACKCAST_BIN" | awk '$1 ~ /^libgst/ && $3 ~ /^\// {print $3}' | xargs -r cp -L -t "$DEST/gst/lib/"
fi

mkdir -p "$DEST/media"
[ -s "$DEST/media/src1080p60.h264" ] || ffmpeg -hide_banner -loglevel error -y -f lavfi \
  -i testsrc2=size=1920x1080:rate=60 -t 10 -c:v libx264 -profile:v high -preset veryfast \
  -b:v 6M -maxrate 6M -bufsize 6M -g 120 -bf 2 -pix_fmt yuv420p -x264-params slices=1 \
  -f h264 "$DEST/media/src1080p60.h264"
[ -s "$DEST/media/src720p30.h264" ] || ffmpeg -hide_banner -loglevel error -y -f lavfi \
  -i testsrc2=size=1280x720:rate=30 -t 10 -c:v libx264 -profile:v high -preset veryfast \
  -b:v 3M -maxrate 3M -bufsize 3M -g 60 -bf 2 -pix_fmt yuv420p \
  -f h264 "$DEST/media/src720p30.h264"

mkdir -p "$DEST/wheel"
ls "$DEST"/wheel/nvidia_cuda_nvrtc_cu12-*.whl >/dev/null 2>&1 || python3 -m pip download -q \
  --no-deps --only-binary=:all: --platform manylinux1_x86_64 --python-version 3.11 \
  -d "$DEST/wheel" nvidia-cuda-nvrtc-cu12==12.1.105 \
  || echo "warning: no NVRTC-12 wheel; cudascale may not work with a CUDA 13 host" >&2
du -sh "$DEST"/*
