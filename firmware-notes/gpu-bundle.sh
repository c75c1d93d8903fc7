#!/usr/bin/env bash
# Collect a relocatable GStreamer 1.22 bundle from a Debian 12 host, for firmware-notes/gpu-check.sh
# on a GPU host that has no GStreamer, no package manager and no network (e.g. a lent H200).
#
#   firmware-notes/gpu-bundle.sh [DEST]      # default DEST: .gpucheck (ignored via .git/info/exclude)
#
# Needs on the collecting host (Debian 12): gstreamer1.0-tools, -plugins-base, -plugins-good,
# -plugins-bad (nvcodec, videoparsersbad), -plugins-ugly (x264), libopenh264-7, ffmpeg (test
# media), xz-utils and python3-pip (only for the optional NVRTC-12 wheel, see below).
# With a rackcast binary (built from this tree):
#   RACKCAST_BIN=target/release/rackcast firmware-notes/gpu-bundle.sh
#
# What it writes under DEST:
#   gst/bin/        gst-launch-1.0, gst-inspect-1.0
#   gst/libexec/    gst-plugin-scanner
#   gst/plugins/    the plugins the check and rackcast use (coreelements, typefind, videotestsrc,
#                   videoconvertscale, videoparsersbad, nvcodec, x264, openh264; for
#                   rackcast: app (appsrc/appsink), playback (parsebin, which
#                   `rackcast transcode` demuxes its input with), isomp4 and flv (demuxers,
#                   also used to remux the media), audioparsers (aacparse))
#   gst/lib/        the ldd closure of all of the above, WITHOUT glibc, libstdc++ and libgcc_s
#                   (the GPU host's newer ones are used) and without any NVIDIA driver library
#                   (nvcodec dlopens libcuda.so.1, libnvcuvid.so.1, libnvidia-encode.so.1 and
#                   libnvrtc from the GPU host at run time)
#   media/          10 s 1080p60 (~6 Mbit/s) and 720p30 (~3 Mbit/s) H.264 High in MP4
#                   (src1080p60.mp4, src720p30.mp4). gpu-check.sh derives from them the
#                   elementary streams its gst-launch pipelines read and the FLV copies it
#                   may feed `rackcast transcode`; older bundles carried the .h264 files
#                   themselves (removed here: both would not fit the 64 MiB carry limit)
#   rackcast/       rackcast.xz: the rackcast binary, stripped and xz-compressed (18 MB ->
#                   ~5 MB), when RACKCAST_BIN names one (e.g. target/release/rackcast), with
#                   the libgst* libraries it links added to gst/lib; rackcast/ldd.txt lists
#                   its other shared libraries (they must exist on the GPU host);
#                   gpu-check.sh unpacks it (xz, else python3's lzma) and runs it in section 4
#                   (probe, telemetry, `rackcast transcode` of both clips per backend)
#   wheel/          nvidia-cuda-nvrtc-cu12 12.1 wheel (NVRTC 12): GStreamer 1.22's CUDA
#                   converters compile their kernels with NVRTC for compute_30/compute_52, which
#                   CUDA 13's NVRTC no longer accepts; the check falls back to this one.
# libav (avdec_h264) is NOT bundled: Debian's libavcodec closure is ~230 MB (x265, codec2,
# rsvg, icu, ...), and libavcodec is linked BIND_NOW, so it cannot be trimmed; the software
# baseline on the GPU host decodes with openh264dec instead (gpu-check.sh gives rackcast's
# software backend an openh264dec template through transcode.pipelines_dir for the same
# reason).
# Size: gst ~22 MB + media ~11 MB + wheel ~24 MB + rackcast.xz ~5 MB. The run tool carries
# at most 64 MiB; the script warns when DEST is larger.
set -euo pipefail
DEST=${1:-.gpucheck}
ARCH=/usr/lib/x86_64-linux-gnu
PLUGDIR=$ARCH/gstreamer-1.0
PLUGINS="coreelements typefindfunctions videotestsrc videoconvertscale videoparsersbad nvcodec x264 openh264 app playback isomp4 flv audioparsers"
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
  rm -f "$DEST/rackcast/rackcast"   # an older bundle's uncompressed copy
  cp -L "$RACKCAST_BIN" "$DEST/rackcast/rackcast.tmp" && strip "$DEST/rackcast/rackcast.tmp"
  xz -T1 -6 -c "$DEST/rackcast/rackcast.tmp" > "$DEST/rackcast/rackcast.xz"
  rm -f "$DEST/rackcast/rackcast.tmp"
  ldd "$RACKCAST_BIN" | awk '$1 ~ /^libgst/ && $3 ~ /^\// {print $3}' | xargs -r cp -L -t "$DEST/gst/lib/"
  { "$RACKCAST_BIN" --version 2>&1 || true; ldd "$RACKCAST_BIN" | awk '$1 !~ /^libgst/'; } > "$DEST/rackcast/ldd.txt"
fi

mkdir -p "$DEST/media"
[ -s "$DEST/media/src1080p60.mp4" ] || ffmpeg -hide_banner -loglevel error -y -f lavfi \
  -i testsrc2=size=1920x1080:rate=60 -t 10 -c:v libx264 -profile:v high -preset veryfast \
  -b:v 6M -maxrate 6M -bufsize 6M -g 120 -bf 2 -pix_fmt yuv420p -x264-params slices=1 \
  -movflags +faststart -f mp4 "$DEST/media/src1080p60.mp4"
[ -s "$DEST/media/src720p30.mp4" ] || ffmpeg -hide_banner -loglevel error -y -f lavfi \
  -i testsrc2=size=1280x720:rate=30 -t 10 -c:v libx264 -profile:v high -preset veryfast \
  -b:v 3M -maxrate 3M -bufsize 3M -g 60 -bf 2 -pix_fmt yuv420p \
  -movflags +faststart -f mp4 "$DEST/media/src720p30.mp4"
rm -f "$DEST/media/src1080p60.h264" "$DEST/media/src720p30.h264"   # derived on the GPU host

mkdir -p "$DEST/wheel"
ls "$DEST"/wheel/nvidia_cuda_nvrtc_cu12-*.whl >/dev/null 2>&1 || python3 -m pip download -q \
  --no-deps --only-binary=:all: --platform manylinux1_x86_64 --python-version 3.11 \
  -d "$DEST/wheel" nvidia-cuda-nvrtc-cu12==12.1.105 \
  || echo "warning: no NVRTC-12 wheel; cudascale may not work with a CUDA 13 host" >&2
du -sh "$DEST"/*
total=$(du -sk "$DEST" | cut -f1)
echo "total: $((total / 1024)) MiB"
[ "$total" -le 65536 ] || echo "warning: $DEST is over 64 MiB, more than the run tool carries" >&2
