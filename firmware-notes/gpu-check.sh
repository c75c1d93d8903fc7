#!/usr/bin/env bash
# rackcast GPU check: what an NVIDIA host offers GStreamer, and how the GPU-resident transcode
# chains (nvenc, nvdec-x264) run there. Writes one markdown report plus two companion files:
#
#   firmware-notes/gpu-check.sh OUTDIR [BUNDLE]
#
#   OUTDIR/gpu-check-report.md   host facts, element registration, timed pipelines, rackcast
#                                (probe, telemetry, transcode per backend), summary
#   OUTDIR/gst-inspect.txt       full gst-inspect-1.0 of nvcodec and each CUDA/NV element
#   OUTDIR/rackcast-probe.json   `rackcast probe --json` (when a rackcast binary is there)
#   OUTDIR/gpu-check-logs.tar.gz every pipeline's and transcode's log (GST_DEBUG=2 for the
#                                pipelines), nvidia-smi samples, nvidia-smi -q, the NVENC
#                                registration debug log
#
# BUNDLE (default .gpucheck) is made by firmware-notes/gpu-bundle.sh on a Debian 12 host:
#   BUNDLE/gst/{bin,libexec,plugins,lib}  GStreamer 1.22 tools, plugins and their libraries
#                                         (no glibc/libstdc++: the GPU host's are used)
#   BUNDLE/media/src1080p60.mp4, src720p30.mp4     10 s H.264 High test clips; the elementary
#                                                  streams (.h264) the pipelines read and FLV
#                                                  copies are derived from them into a temp
#                                                  dir (older bundles carried the .h264 files)
#   BUNDLE/wheel/nvidia_cuda_nvrtc_cu12-*.whl      NVRTC 12 (see below), optional
#   BUNDLE/rackcast/rackcast.xz (or rackcast)     optional: a rackcast binary (section 4)
# When BUNDLE/gst is absent the GStreamer installed on the host (PATH) is used, so on an
# appliance with gstreamer1.0-plugins-{bad,ugly} installed only BUNDLE/media is needed.
# The script needs no network and no package manager: bash, coreutils, timeout, awk, tar,
# nvidia-smi; python3 (or unzip) only to unpack the NVRTC wheel.
#
# On the lent device machine (run tool), with .gpucheck carried (at most 64 MiB; gpu-bundle.sh
# says its size), timeout_s 480 or more:
#   firmware-notes/gpu-check.sh "$OUT" .gpucheck
#
# Time: sections 1-3 stop starting pipelines after GPU_CHECK_BUDGET s (280); section 4's
# transcodes stop starting after GPU_CHECK_TOTAL_BUDGET s (400), each limited to
# GPU_CHECK_TRANSCODE_TIMEOUT s (150) and to what is left of that budget. A missing binary,
# element or file skips its part, says so in the report, and the report is always written.
#
# NVRTC: GStreamer 1.22's cudaconvert/cudascale/cudaconvertscale compile their CUDA kernels at
# run time with NVRTC, opened as "libnvrtc.so" unless GST_CUDA_NVRTC_LIBNAME names it, and the
# nvcodec plugin registers those elements only when NVRTC loads. 1.22 asks NVRTC for
# compute_30, then compute_52; CUDA 13's NVRTC supports neither. The script therefore probes
# the host's NVRTC first, then the carried NVRTC 12, and uses the first one with which a small
# cudaupload ! cudascale ! cudadownload pipeline runs.
set -u
OUT=${1:?usage: gpu-check.sh OUTDIR [BUNDLE]}
BUNDLE=${2:-.gpucheck}
PT=${GPU_CHECK_PIPELINE_TIMEOUT:-45}     # per pipeline
BUDGET=${GPU_CHECK_BUDGET:-280}          # seconds; later pipelines are skipped past it
TOTAL=${GPU_CHECK_TOTAL_BUDGET:-400}     # seconds; later rackcast transcodes are skipped past it
TT=${GPU_CHECK_TRANSCODE_TIMEOUT:-150}   # per rackcast transcode
export PATH=$PATH:/usr/sbin:/sbin
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
BUNDLE=$(cd "$BUNDLE" 2>/dev/null && pwd || echo "$BUNDLE")
WORK=$(mktemp -d /tmp/gpu-check.XXXXXX)
R=$OUT/gpu-check-report.md
INSPECT=$OUT/gst-inspect.txt
SUMMARY=$WORK/summary.tsv
: > "$R"; : > "$INSPECT"; : > "$SUMMARY"
START=$(date +%s)

# The report names the temp dir $WORK, not the host's path to it.
say() { local line="$*"; printf '%s\n' "${line//"$WORK"/\$WORK}" >> "$R"; }
fence() { say '```'; sed "s|$WORK|\$WORK|g" >> "$R"; say '```'; }
# run a shell snippet, put command, output (head -n N) and exit status into the report
show() { # N "command"
  local n=$1; shift
  say "\$ $*"
  { timeout -k 2 30 bash -c "$*" 2>&1; echo "[exit $?]"; } | head -n "$n" | fence
}

# ---------------------------------------------------------------- GStreamer environment
if [ -x "$BUNDLE/gst/bin/gst-launch-1.0" ]; then
  G=$BUNDLE/gst
  GST_LAUNCH=$G/bin/gst-launch-1.0
  GST_INSPECT=$G/bin/gst-inspect-1.0
  export GST_PLUGIN_SYSTEM_PATH_1_0=$G/plugins GST_PLUGIN_SYSTEM_PATH=$G/plugins
  export GST_PLUGIN_PATH_1_0= GST_PLUGIN_PATH=
  export GST_PLUGIN_SCANNER_1_0=$G/libexec/gst-plugin-scanner GST_PLUGIN_SCANNER=$G/libexec/gst-plugin-scanner
  GSTLIB=$G/lib
  GST_SOURCE="carried bundle $G"
else
  GST_LAUNCH=$(command -v gst-launch-1.0); GST_INSPECT=$(command -v gst-inspect-1.0)
  GSTLIB=
  GST_SOURCE="host installation ($GST_LAUNCH)"
fi
export GST_DEBUG_NO_COLOR=1
# NVIDIA driver libraries may live outside the loader's default paths (/usr/local/nvidia).
DRIVERDIRS=
for l in libcuda.so.1 libnvcuvid.so.1 libnvidia-encode.so.1 libnvidia-ml.so.1; do
  p=$(ldconfig -p 2>/dev/null | awk -v l="$l" '$1 == l && /x86-64/ {print $NF; exit}')
  [ -n "$p" ] || p=$(find /usr/local/nvidia /usr/lib/x86_64-linux-gnu /usr/lib64 /usr/lib -maxdepth 3 -name "$l" 2>/dev/null | head -1)
  [ -n "$p" ] && case ":$DRIVERDIRS:" in *":$(dirname "$p"):"*) ;; *) DRIVERDIRS=$DRIVERDIRS:$(dirname "$p");; esac
done
export LD_LIBRARY_PATH=${GSTLIB}${DRIVERDIRS}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}

M=$BUNDLE/media
F1080=$M/src1080p60.h264; F720=$M/src720p30.h264   # derived from the MP4 clips below when absent

# ---------------------------------------------------------------- 1. host facts
say "# rackcast GPU check"
say ""
say "- date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
say "- GStreamer: $GST_SOURCE, $("$GST_LAUNCH" --version 2>&1 | sed -n 2p)"
say "- LD_LIBRARY_PATH: $LD_LIBRARY_PATH"
say "- bundle media: $(find "$M" -maxdepth 1 -type f -printf '%f (%s bytes) ' 2>&1)"
say ""
say "## 1. Host"
show 5 "uname -a; nproc; grep -E '^(PRETTY_NAME|VERSION_ID)=' /etc/os-release; ldd --version | head -1"
show 20 "nvidia-smi --query-gpu=name,pci.bus_id,driver_version,vbios_version,memory.total,compute_cap,encoder.stats.sessionCount,clocks.max.sm --format=csv"
show 40 "nvidia-smi; echo; nvidia-smi -L"
nvidia-smi -q > "$WORK/nvidia-smi-q.txt" 2>&1
say "nvidia-smi -q (decoder/encoder related lines; full text in gpu-check-logs.tar.gz):"
grep -iE 'Product Name|Product Architecture|Driver Version|CUDA Version|Encoder|Decoder|JPG|OFA|Session|Average FPS|Average Latency|Video|Virtualization|MIG Mode|Current *:|Total|Used' "$WORK/nvidia-smi-q.txt" | head -80 | fence
show 30 "ls -l /dev/nvidia* /dev/dri 2>&1"
show 12 "echo GST_LAUNCH=$GST_LAUNCH; ldd $GST_LAUNCH | grep -E 'gstreamer|glib|libc\\.'; echo 'unresolved libraries of the plugins (should be none):'; for f in ${GSTLIB:+$G/plugins/*} ${GSTLIB:+$G/libexec/*}; do ldd \$f | grep 'not found' | sed \"s|^|\$(basename \$f): |\"; done"
show 10 "env | grep -E '^(NVIDIA_|CUDA_VERSION|CUDA_HOME)' | sort"
show 30 "for l in libcuda.so.1 libnvcuvid.so.1 libnvidia-encode.so.1 libnvidia-ml.so.1 libnvrtc.so; do echo \"\$l: ldconfig=[\$(ldconfig -p | grep -F \$l | awk '{print \$NF}' | tr '\n' ' ')]\"; done; find /usr/local/nvidia /usr/lib/x86_64-linux-gnu /usr/lib64 /usr/local/cuda*/lib64 /usr/local/cuda*/targets/x86_64-linux/lib -maxdepth 2 \\( -name 'libcuda.so*' -o -name 'libnvcuvid.so*' -o -name 'libnvidia-encode.so*' -o -name 'libnvidia-ml.so*' -o -name 'libnvrtc*.so*' \\) 2>/dev/null | sort | head -40"

# ---------------------------------------------------------------- NVRTC probe
say ""
say "## NVRTC for the CUDA converters (cudascale/cudaconvert/cudaconvertscale)"
CANDS=()
for p in $(ldconfig -p 2>/dev/null | awk '$1 ~ /^libnvrtc\.so/ && /x86-64/ {print $NF}') \
         $(find /usr/local/cuda/lib64 /usr/local/cuda*/targets/x86_64-linux/lib /usr/lib/x86_64-linux-gnu /opt -maxdepth 6 -name 'libnvrtc.so*' ! -name '*builtins*' ! -path '*/stubs/*' 2>/dev/null | sort); do
  p=$(readlink -f "$p"); case " ${CANDS[*]-} " in *" $p "*) ;; *) CANDS+=("$p");; esac
done
CANDS=("${CANDS[@]:0:3}")
W=$(ls "$BUNDLE"/wheel/nvidia_cuda_nvrtc_cu12-*.whl 2>/dev/null | head -1)
if [ -n "$W" ]; then
  mkdir -p "$WORK/nvrtc12"
  (cd "$WORK/nvrtc12" && { python3 -m zipfile -e "$W" . 2>/dev/null || unzip -q "$W"; })
  N12=$(find "$WORK/nvrtc12" -name 'libnvrtc.so.12*' | head -1)
  if [ -n "$N12" ]; then
    CANDS+=("$N12")
    export LD_LIBRARY_PATH=$LD_LIBRARY_PATH:$(dirname "$N12")   # libnvrtc-builtins.so.12.x
  fi
fi
say "candidates, in order: ${CANDS[*]-none}"
NVRTC=
for c in "${CANDS[@]}"; do
  tag=$(basename "$c" | tr -c 'A-Za-z0-9.\n' '_')
  export GST_REGISTRY=$WORK/registry-probe-$tag.bin GST_CUDA_NVRTC_LIBNAME=$c
  reg=$("$GST_INSPECT" cudascale >/dev/null 2>&1 && echo registered || echo "NOT registered")
  GST_DEBUG=2,cudanvrtc:6,cudaconverter:5 timeout -k 2 30 "$GST_LAUNCH" videotestsrc num-buffers=10 \
    ! video/x-raw,format=NV12,width=320,height=240 ! cudaupload ! cudascale \
    ! "video/x-raw(memory:CUDAMemory),width=160,height=120" ! cudadownload ! fakesink > "$WORK/nvrtc-probe-$tag.log" 2>&1
  rc=$?
  say ""
  say "- \`$c\`: cudascale $reg; probe pipeline exit $rc; log tail:"
  grep -vE 'cudaconverter .*(Set|matrix|texture)' "$WORK/nvrtc-probe-$tag.log" | grep -iE 'nvrtc|compile|error|warn|Execution ended|ERROR' | cut -c1-300 | head -12 | fence
  if [ $rc -eq 0 ] && [ -z "$NVRTC" ]; then NVRTC=$c; fi
done
if [ -n "$NVRTC" ]; then export GST_CUDA_NVRTC_LIBNAME=$NVRTC; else unset GST_CUDA_NVRTC_LIBNAME; fi
say ""
say "**NVRTC used below: ${NVRTC:-none worked (CUDA converter pipelines are expected to fail)}**"
export GST_REGISTRY=$WORK/registry.bin
rm -f "$GST_REGISTRY"

# ---------------------------------------------------------------- media
# The bundle carries MP4 clips; the pipelines below read H.264 elementary streams and
# `rackcast transcode` may want FLV (what RTMP carries): both are remuxed here (no re-encode).
mkdir -p "$WORK/media"
say ""
say "## Media"
for s in src1080p60 src720p30; do
  if [ -s "$M/$s.mp4" ]; then
    [ -s "$M/$s.h264" ] || timeout 60 "$GST_LAUNCH" -q filesrc location="$M/$s.mp4" ! qtdemux ! h264parse \
      ! video/x-h264,stream-format=byte-stream,alignment=au ! filesink location="$WORK/media/$s.h264" > "$WORK/media/$s-h264.log" 2>&1
    timeout 60 "$GST_LAUNCH" -q filesrc location="$M/$s.mp4" ! qtdemux ! h264parse ! flvmux \
      ! filesink location="$WORK/media/$s.flv" > "$WORK/media/$s-flv.log" 2>&1
  fi
  for f in "$M/$s.mp4" "$M/$s.h264" "$WORK/media/$s.h264" "$WORK/media/$s.flv"; do
    [ -s "$f" ] && say "- \`$f\`: $(wc -c < "$f") bytes"
  done
done
[ -s "$F1080" ] || F1080=$WORK/media/src1080p60.h264
[ -s "$F720" ] || F720=$WORK/media/src720p30.h264
if [ ! -s "$F1080" ] || [ ! -s "$F720" ]; then say "- **elementary streams missing** (no media in the bundle, or qtdemux absent): the pipelines below will fail"; fi

# ---------------------------------------------------------------- 2. elements
say ""
say "## 2. Elements"
"$GST_INSPECT" nvcodec > "$WORK/inspect-nvcodec.txt" 2>&1
{ echo "===== gst-inspect-1.0 nvcodec"; cat "$WORK/inspect-nvcodec.txt"; } >> "$INSPECT"
say "gst-inspect-1.0 nvcodec (features registered on this host):"
sed -n '/features:/,$p;/^  [a-z0-9]*: /p' "$WORK/inspect-nvcodec.txt" | awk '!seen[$0]++' | head -60 | fence
say ""
say "| element | registered | long name |"
say "|---|---|---|"
for e in nvh264dec nvh264sldec nvh265dec cudaupload cudadownload cudascale cudaconvert cudaconvertscale nvh264enc nvcudah264enc nvautogpuh264enc nvh265enc x264enc openh264dec avdec_h264 h264parse videoconvertscale; do
  if "$GST_INSPECT" "$e" > "$WORK/inspect-$e.txt" 2>&1; then
    say "| $e | yes | $(awk -F'  +' '/Long-name/ {print $3; exit}' "$WORK/inspect-$e.txt") |"
  else
    say "| $e | **no** ($(head -1 "$WORK/inspect-$e.txt" | cut -c1-80)) | |"
  fi
  case $e in x264enc|openh264dec|avdec_h264|h264parse|videoconvertscale) ;; *)
    { echo; echo "===== gst-inspect-1.0 $e"; cat "$WORK/inspect-$e.txt"; } >> "$INSPECT";; esac
done
has() { "$GST_INSPECT" --exists "$1" 2>/dev/null; }

# ---------------------------------------------------------------- 3. pipelines
say ""
say "## 3. Pipelines"
say ""
say "Each run: \`timeout $PT gst-launch-1.0 <pipeline>\` with GST_DEBUG=2, timed by bash \`time\` (wall, user+sys CPU of gst-launch and its threads). 'exec s' is gst-launch's own PLAYING-to-EOS time (no start-up); fps = frames / exec s. nvidia-smi sampled every 250 ms during GPU runs (decoder/GPU utilisation: max and mean of the samples)."
hms() { awk -F: '{print ($1*3600)+($2*60)+$3}'; }
pipe() { # id frames gpu(0/1) description pipeline
  local id=$1 frames=$2 gpu=$3 desc=$4 pl=$5 log=$WORK/$1.log smi=$WORK/$1.smi tf=$WORK/$1.time rc smipid=
  if [ $(( $(date +%s) - START )) -gt "$BUDGET" ]; then
    say ""; say "### $id: skipped (time budget of ${BUDGET}s spent)"
    printf '%s\tskipped\t-\t-\t-\t-\t%s\t\t%s\n' "$id" "$frames" "$desc" >> "$SUMMARY"; return
  fi
  if [ "$gpu" = 1 ] && command -v nvidia-smi >/dev/null; then
    nvidia-smi --query-gpu=timestamp,utilization.gpu,utilization.decoder,utilization.encoder,memory.used --format=csv,noheader,nounits -lms 250 > "$smi" 2>&1 &
    smipid=$!; sleep 0.5
  fi
  local TIMEFORMAT='%R %U %S'
  { time { GST_DEBUG=2 timeout -k 5 "$PT" "$GST_LAUNCH" $pl > "$log" 2>&1; echo $? > "$WORK/$id.rc"; }; } 2> "$tf"
  rc=$(cat "$WORK/$id.rc")
  read -r wall usr sys < <(tail -1 "$tf")
  [ -n "$smipid" ] && { sleep 0.3; kill "$smipid" 2>/dev/null; wait "$smipid" 2>/dev/null; }
  local exec_s cpu fps util=""
  exec_s=$(sed -n 's/.*Execution ended after \([0-9:.]*\).*/\1/p' "$log" | tail -1 | hms)
  cpu=$(awk -v u="$usr" -v s="$sys" 'BEGIN {printf "%.2f", u+s}')
  fps=$(awk -v f="$frames" -v e="$exec_s" 'BEGIN {if (e > 0) printf "%.0f", f/e; else print "-"}')
  if [ -s "$smi" ]; then
    util=$(awk -F', *' 'NF>=5 && $3+0==$3 {n++; g+=$2; d+=$3; if ($3>dm) dm=$3; if ($2>gm) gm=$2; if ($5>mm) mm=$5} END {if (n) printf "dec max %d%% mean %.0f%%, gpu max %d%%, mem %d MiB", dm, d/n, gm, mm}' "$smi")
  fi
  local warns; warns=$(grep -cE '^[0-9:.]+ +[0-9]+ +0x[0-9a-f]+ +(WARN|ERROR)' "$log")
  printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$id" "$rc" "$wall" "$cpu" "${exec_s:--}" "$fps" "$frames" "$util" "$desc" >> "$SUMMARY"
  say ""
  say "### $id: $desc"
  say ""
  say "exit **$rc**, wall ${wall}s, CPU ${cpu}s (user $usr + sys $sys), exec ${exec_s:--}s, $frames frames, fps ${fps}${util:+, $util}, GST_DEBUG=2 warnings/errors: $warns"
  say ""
  say "\`gst-launch-1.0 $pl\`"
  say ""
  { grep -E ' (WARN|ERROR) ' "$log" | sed -E 's/^[0-9:.]+ +[0-9]+ +0x[0-9a-f]+ +//' | cut -c1-260 | awk '!seen[$0]++' | head -8
    echo "--- last lines:"; grep -vE ' (WARN|ERROR|INFO|DEBUG|FIXME|LOG) ' "$log" | tail -4 | cut -c1-260; } | fence
  echo "$id rc=$rc wall=$wall cpu=$cpu exec=${exec_s:--} fps=$fps $util"
}

x264() { echo "x264enc speed-preset=veryfast tune=zerolatency key-int-max=30 bitrate=$1"; }
sink="fakesink sync=false"
rungs_cuda() { # scaler format(NV12|I420) download(yes)
  local s=$1 fmt=$2 enc=$3 r w h b
  for r in 1280x720x2500 854x480x1000 640x360x600; do
    IFS=x read -r w h b <<< "$r"
    if [ "$enc" = enc ]; then
      printf ' t. ! queue ! %s ! video/x-raw(memory:CUDAMemory),width=%s,height=%s,pixel-aspect-ratio=1/1,format=%s ! cudadownload ! video/x-raw,format=%s ! %s ! %s' "$s" "$w" "$h" "$fmt" "$fmt" "$(x264 "$b")" "$sink"
    else
      printf ' t. ! queue ! %s ! video/x-raw(memory:CUDAMemory),width=%s,height=%s,pixel-aspect-ratio=1/1,format=%s ! cudadownload ! %s' "$s" "$w" "$h" "$fmt" "$sink"
    fi
  done
}
rungs_sw() {
  local r w h b
  for r in 1280x720x2500 854x480x1000 640x360x600; do
    IFS=x read -r w h b <<< "$r"
    printf ' t. ! queue ! videoconvertscale ! video/x-raw,format=I420,width=%s,height=%s,pixel-aspect-ratio=1/1 ! %s ! %s' "$w" "$h" "$(x264 "$b")" "$sink"
  done
}
NVDEC="h264parse ! nvh264dec"
CUDA_CAPS="video/x-raw(memory:CUDAMemory)"
if has nvh264dec; then
  pipe a1_nvdec_cuda_1080p60 600 1 "NVDEC only, 1080p60, output kept in CUDA memory" "filesrc location=$F1080 ! $NVDEC ! $CUDA_CAPS ! $sink"
  pipe a2_nvdec_sys_1080p60 600 1 "NVDEC, 1080p60, output to system memory" "filesrc location=$F1080 ! $NVDEC ! video/x-raw ! $sink"
  pipe a3_nvdec_cuda_720p30 300 1 "NVDEC only, 720p30, CUDA memory" "filesrc location=$F720 ! $NVDEC ! $CUDA_CAPS ! $sink"
  pipe a4_nvdec_sys_720p30 300 1 "NVDEC, 720p30, system memory" "filesrc location=$F720 ! $NVDEC ! video/x-raw ! $sink"
  pipe b1_cudascale_1080p60 600 1 "NVDEC + tee + 3x cudascale (720p/480p/360p NV12, CUDAMemory) + cudadownload" "filesrc location=$F1080 ! $NVDEC ! $CUDA_CAPS ! tee name=t $(rungs_cuda cudascale NV12 no)"
  pipe b2_cudaconvertscale_1080p60 600 1 "NVDEC + tee + 3x cudaconvertscale to I420 (CUDAMemory) + cudadownload" "filesrc location=$F1080 ! $NVDEC ! $CUDA_CAPS ! tee name=t $(rungs_cuda cudaconvertscale I420 no)"
  pipe b3_cudascale_720p30 300 1 "NVDEC + tee + 3x cudascale, 720p30 source" "filesrc location=$F720 ! $NVDEC ! $CUDA_CAPS ! tee name=t $(rungs_cuda cudascale NV12 no)"
  pipe c1_hybrid_1080p60 600 1 "hybrid: NVDEC + cudascale NV12 + cudadownload + 3x x264enc (2500/1000/600)" "filesrc location=$F1080 ! $NVDEC ! $CUDA_CAPS ! tee name=t $(rungs_cuda cudascale NV12 enc)"
  pipe c2_hybrid_i420_1080p60 600 1 "hybrid: NVDEC + cudaconvertscale I420 + cudadownload + 3x x264enc" "filesrc location=$F1080 ! $NVDEC ! $CUDA_CAPS ! tee name=t $(rungs_cuda cudaconvertscale I420 enc)"
  pipe c3_hybrid_720p30 300 1 "hybrid: NVDEC + cudascale NV12 + 3x x264enc, 720p30 source" "filesrc location=$F720 ! $NVDEC ! $CUDA_CAPS ! tee name=t $(rungs_cuda cudascale NV12 enc)"
else
  say ""; say "nvh264dec is not registered: NVDEC pipelines (a, b, c) skipped."
fi
for dec in avdec_h264 openh264dec; do
  has $dec || { say ""; say "$dec not available: its software runs skipped."; continue; }
  pipe "d_${dec}_decode_1080p60" 600 0 "software decode only ($dec), 1080p60" "filesrc location=$F1080 ! h264parse ! $dec ! $sink"
  pipe "d_${dec}_ladder_1080p60" 600 0 "software: $dec + tee + 3x videoconvertscale + x264enc" "filesrc location=$F1080 ! h264parse ! $dec ! tee name=t $(rungs_sw)"
  pipe "d_${dec}_ladder_720p30" 300 0 "software: $dec + tee + 3x videoconvertscale + x264enc, 720p30" "filesrc location=$F720 ! h264parse ! $dec ! tee name=t $(rungs_sw)"
done

# ---------------------------------------------------------------- e. NVENC
say ""
say "## 3e. NVENC"
for e in nvh264enc nvcudah264enc nvautogpuh264enc; do
  pipe "e_$e" 60 1 "NVENC attempt with $e" "videotestsrc num-buffers=60 ! video/x-raw,format=NV12,width=1280,height=720,framerate=30/1 ! cudaupload ! $e ! h264parse ! $sink"
done
say ""
say "nvcodec registration with GST_DEBUG=nvcodec:5,nvenc:5,cudacontext:5,nvdec:5 (fresh registry, in process), lines about encode/NVENC/CUDA init:"
rm -f "$WORK/registry-dbg.bin"
GST_REGISTRY=$WORK/registry-dbg.bin GST_REGISTRY_FORK=no GST_DEBUG=nvcodec:5,nvenc:5,cudacontext:5,nvdec:5,cudautils:4,cudaloader:5,nvrtcloader:5,cudanvrtc:5 \
  timeout 60 "$GST_INSPECT" nvcodec > "$WORK/nvcodec-register-debug.log" 2>&1
grep -iE 'nvenc|encode|cuvid|nvdec|NVRTC|cuda (context|device)|device id|Compute|support|could not|fail|load' "$WORK/nvcodec-register-debug.log" \
  | sed -E 's/^[0-9:.]+ +[0-9]+ +0x[0-9a-f]+ +//' | cut -c1-240 | awk '!seen[$0]++' | head -50 | fence

# ---------------------------------------------------------------- 4. rackcast itself
# With a rackcast binary (BUNDLE/rackcast/rackcast.xz or rackcast, else `rackcast` on PATH):
# 4a `rackcast probe` (text and --json); 4b its backend selection with every backend
# preferred, and its NVML telemetry read through the admin API idle and while nvh264dec
# decodes; 4c `rackcast transcode` of both clips with each backend, timed.
RC=
if [ -x "$BUNDLE/rackcast/rackcast" ]; then
  RC=$BUNDLE/rackcast/rackcast
elif [ -s "$BUNDLE/rackcast/rackcast.xz" ]; then
  if command -v xz > /dev/null; then
    xz -dc "$BUNDLE/rackcast/rackcast.xz" > "$WORK/rackcast-bin" 2> "$WORK/rackcast-unpack.log"
  else
    python3 -c 'import lzma,shutil,sys; shutil.copyfileobj(lzma.open(sys.argv[1]), sys.stdout.buffer)' \
      "$BUNDLE/rackcast/rackcast.xz" > "$WORK/rackcast-bin" 2> "$WORK/rackcast-unpack.log"
  fi && chmod +x "$WORK/rackcast-bin" && RC=$WORK/rackcast-bin
fi
[ -n "$RC" ] || RC=$(command -v rackcast || true)
say ""
say "## 4. rackcast on this host"
TCT=$WORK/transcode.tsv; : > "$TCT"
tc_table() {
  [ -s "$TCT" ] || return 0
  say ""
  say "| run | backend | source | input | exit | wall s | CPU s | speed x | max RSS MiB | GPU samples | output |"
  say "|---|---|---|---|---|---|---|---|---|---|---|"
  awk -F'\t' '{printf "| %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |\n", $1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11}' "$TCT" >> "$R"
}
if [ -z "$RC" ]; then
  say "no rackcast binary (BUNDLE/rackcast/rackcast.xz, BUNDLE/rackcast/rackcast or PATH): skipped."
  [ -s "$WORK/rackcast-unpack.log" ] && fence < "$WORK/rackcast-unpack.log"
else
  say ""
  say "binary: \`$RC\`, $("$RC" --version 2>&1 | head -1)"
  show 12 "ldd $RC | grep -E 'not found|libgst(reamer|app|video)' ; echo \"unresolved: \$(ldd $RC | grep -c 'not found')\""

  # rackcast transcode's flags and, where avdec_h264 is absent (libav is not bundled), a
  # config whose transcode.pipelines_dir gives the software backend a copy of its template
  # that decodes with openh264dec. `--backend` itself makes rackcast refuse any other
  # backend, so a run measures the backend it names or fails.
  GNUTIME=; /usr/bin/time -v true > /dev/null 2>&1 && GNUTIME=/usr/bin/time
  TC_CONF=()
  TC_NOTE=
  TC_HELP_OK=
  if timeout 20 "$RC" transcode --help > "$WORK/transcode-help.txt" 2>&1; then
    TC_HELP_OK=1
    TPL=$(cd "$(dirname "$0")/../pipelines" 2>/dev/null && pwd)/software.pipeline
    if grep -q -- '--config' "$WORK/transcode-help.txt" && ! has avdec_h264 && has openh264dec && [ -s "$TPL" ]; then
      mkdir -p "$WORK/pipelines"
      sed -E 's/^avdec_h264([[:space:]].*)?$/openh264dec/' "$TPL" > "$WORK/pipelines/software.pipeline"
      printf '[transcode]\npipelines_dir = "%s"\n' "$WORK/pipelines" > "$WORK/transcode.toml"
      if ! grep -q '^openh264dec$' "$WORK/pipelines/software.pipeline"; then
        TC_NOTE="software template has no avdec_h264 line to replace: no override"
      elif timeout 20 "$RC" config --config "$WORK/transcode.toml" > /dev/null 2> "$WORK/transcode-config.err"; then
        TC_CONF=(--config "$WORK/transcode.toml")
        TC_NOTE="the software backend decodes with openh264dec (transcode.pipelines_dir override: avdec_h264 is absent), single-threaded, so it is slower than with avdec_h264"
      else
        TC_NOTE="transcode.pipelines_dir override refused by \`rackcast config\` ($(head -1 "$WORK/transcode-config.err" | cut -c1-160)): software runs need avdec_h264"
      fi
    fi
  fi

  # ---------------------------------------------------------- 4a. probe
  say ""
  say "### 4a. rackcast probe"
  say ""
  show 120 "$RC probe"
  if [ ${#TC_CONF[@]} -gt 0 ]; then
    say ""; say "with the config section 4c uses (software template override):"
    show 60 "$RC probe ${TC_CONF[*]}"
  fi
  timeout -k 2 60 "$RC" probe --json > "$OUT/rackcast-probe.json" 2> "$WORK/rackcast-probe-json.err"
  say "\`rackcast probe --json\`: exit $? (also in rackcast-probe.json)"
  { head -c 12000 "$OUT/rackcast-probe.json"; echo; head -5 "$WORK/rackcast-probe-json.err"; } | fence

  # ---------------------------------------------------------- 4b. telemetry
  say ""
  say "### 4b. rackcast run: backend selection and GPU telemetry"
  fetch() { curl -sf "$1" 2>/dev/null || python3 -c 'import sys,urllib.request;sys.stdout.write(urllib.request.urlopen(sys.argv[1],timeout=3).read().decode())' "$1"; }
  gpus() { python3 -c 'import json,sys
for x in json.load(sys.stdin)["host"]["gpus"]: print("gpu%(index)s %(name)s util=%(utilization_percent)s%% dec=%(decoder_utilization_percent)s%% enc=%(encoder_utilization_percent)s%% nvenc_sessions=%(encoder_sessions)s mem=%(memory_used_bytes)s/%(memory_total_bytes)s temp=%(temperature_celsius)sC" % x)'; }
  # transcode.backends; an older binary knows only `encoders`.
  printf '[transcode]\nbackends = ["nvenc", "nvdec-x264", "vaapi", "software"]\nfallback = "allow"\n' > "$WORK/rackcast.toml"
  if ! timeout 20 "$RC" config --config "$WORK/rackcast.toml" > /dev/null 2> "$WORK/rackcast-config.err"; then
    printf '[transcode]\nencoders = ["nvenc", "vaapi", "x264"]\n' > "$WORK/rackcast.toml"
  fi
  say ""; say "config:"; fence < "$WORK/rackcast.toml"
  RUST_LOG=info "$RC" run --config "$WORK/rackcast.toml" --rtmp 127.0.0.1:0 --http 127.0.0.1:18089 --data-dir "$WORK/rackcast-data" \
    > "$WORK/rackcast-stdout.txt" 2> "$WORK/rackcast-log.txt" &
  rc_pid=$!
  for _ in $(seq 1 60); do fetch http://127.0.0.1:18089/api/v1/node > "$WORK/node.json" && break; kill -0 $rc_pid 2>/dev/null || break; sleep 0.5; done
  if [ ! -s "$WORK/node.json" ]; then
    say ""; say "rackcast run did not answer GET /api/v1/node within 30 s; its log:"
    tail -15 "$WORK/rackcast-log.txt" | cut -c1-240 | fence
  else
    say ""; say "GPUs as GET /api/v1/node reports them, idle, then every 0.5 s while nvh264dec decodes the 1080p60 clip:"
    {
      gpus < "$WORK/node.json" 2>&1
      python3 -c 'import json,sys; print("gpus_absent:", json.load(sys.stdin)["host"]["gpus_absent"])' < "$WORK/node.json" 2>&1
      if has nvh264dec && kill -0 $rc_pid 2>/dev/null; then
        ( for _ in 1 2 3 4 5 6; do timeout 20 "$GST_LAUNCH" -q filesrc location="$F1080" ! h264parse ! nvh264dec ! fakesink sync=false; done ) > /dev/null 2>&1 &
        dec_pid=$!
        for _ in $(seq 1 12); do sleep 0.5; fetch http://127.0.0.1:18089/api/v1/node | gpus 2>&1; done
        wait $dec_pid
      fi
    } | head -40 | fence
    say ""; say "/metrics, GPU and host series:"
    fetch http://127.0.0.1:18089/metrics | grep -E '^rackcast_(gpu|host)_' | head -60 | fence
  fi
  say ""; say "rackcast's log about backends, encoders and GPUs:"
  grep -iE 'backend|encoder|fallback|gpu|nvidia|nvml|telemetry|error' "$WORK/rackcast-log.txt" | cut -c1-240 | head -25 | fence
  kill -TERM $rc_pid 2>/dev/null; wait $rc_pid
  say "rackcast exit status after SIGTERM: $?"

  # ---------------------------------------------------------- 4c. transcode
  say ""
  say "### 4c. rackcast transcode"
  LADDER=720p=2500k,480p=1000k,360p=600k
  if [ -z "$TC_HELP_OK" ]; then
    say ""; say "\`rackcast transcode --help\` failed (a binary older than the command?):"
    head -8 "$WORK/transcode-help.txt" | fence
  fi
  say ""
  say "Each run: \`timeout <s> rackcast transcode INPUT --out <tmp> --ladder $LADDER --x264-preset veryfast --backend NAME${TC_CONF[*]:+ ${TC_CONF[*]}}\`, timed by bash \`time\` (wall; CPU = user+sys of rackcast and its threads)${GNUTIME:+ and GNU time -v (max RSS)}. speed = 10 s of media / wall s (includes rackcast's start-up: GStreamer init, CUDA context, NVRTC compile). nvidia-smi sampled every 250 ms during GPU backends. INPUT: the MP4 clip, else its FLV copy, else the elementary stream: the first that a run accepts is kept for the later runs.${TC_NOTE:+ Note: $TC_NOTE.}"
  if [ ${#TC_CONF[@]} -gt 0 ]; then say ""; say "config:"; fence < "$WORK/transcode.toml"; fi
  mkdir -p "$WORK/tc-out"
  tc() { # id backend source(1080p60|720p30) input
    local id=$1 be=$2 src=$3 in=$4 out=$WORK/tc-out/$1 log=$WORK/$1.log smi=$WORK/$1.smi tf=$WORK/$1.time gt=$WORK/$1.gnutime
    local smipid='' rc wall usr sys cpu speed rss=- util='' files kib mpd left t=$TT
    left=$(( TOTAL - ($(date +%s) - START) ))
    if [ "$left" -lt 20 ]; then
      say ""; say "#### $id: skipped (time budget of ${TOTAL}s spent)"
      printf '%s\t%s\t%s\t%s\tskipped\t-\t-\t-\t-\t-\t-\n' "$id" "$be" "$src" "${in##*.}" >> "$TCT"; return 2
    fi
    [ "$left" -lt "$t" ] && t=$left
    rm -rf "$out"; mkdir -p "$out"
    if [ "$be" != software ] && command -v nvidia-smi > /dev/null; then
      nvidia-smi --query-gpu=timestamp,utilization.gpu,utilization.decoder,utilization.encoder,memory.used --format=csv,noheader,nounits -lms 250 > "$smi" 2>&1 &
      smipid=$!; sleep 0.5
    fi
    local pre=(); [ -n "$GNUTIME" ] && pre=("$GNUTIME" -v -o "$gt")
    local cmd=("$RC" transcode "$in" --out "$out" --ladder "$LADDER" --x264-preset veryfast --backend "$be" ${TC_CONF[@]+"${TC_CONF[@]}"})
    local TIMEFORMAT='%R %U %S'
    { time { ${pre[@]+"${pre[@]}"} timeout -k 5 "$t" "${cmd[@]}" > "$log" 2>&1; echo $? > "$WORK/$id.rc"; }; } 2> "$tf"
    rc=$(cat "$WORK/$id.rc" 2>/dev/null || echo '?')
    read -r wall usr sys < <(tail -1 "$tf")
    [ -n "$smipid" ] && { sleep 0.3; kill "$smipid" 2>/dev/null; wait "$smipid" 2>/dev/null; }
    cpu=$(awk -v u="${usr:-0}" -v s="${sys:-0}" 'BEGIN {printf "%.2f", u+s}')
    speed=$(awk -v w="${wall:-0}" -v rc="$rc" 'BEGIN {if (rc == "0" && w > 0) printf "%.2f", 10/w; else print "-"}')
    [ -s "$gt" ] && rss=$(awk -F': ' '/Maximum resident set size/ {printf "%.0f", $2/1024}' "$gt")
    if [ -s "$smi" ]; then
      util=$(awk -F', *' 'NF>=5 && $3+0==$3 {n++; d+=$3; if ($3>dm) dm=$3; if ($4>em) em=$4; if ($2>gm) gm=$2; if ($5>mm) mm=$5} END {if (n) printf "dec max %d%% mean %.0f%%, enc max %d%%, gpu max %d%%, mem %d MiB", dm, d/n, em, gm, mm; else print "-"}' "$smi")
    fi
    files=$(find "$out" -type f | wc -l); kib=$(du -sk "$out" | cut -f1)
    mpd=$(find "$out" -name '*.mpd' | head -1)
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$id" "$be" "$src" "${in##*.}" "$rc" "$wall" "$cpu" "$speed" "$rss" "${util:--}" "$files files, $kib KiB, MPD $([ -n "$mpd" ] && echo yes || echo no)" >> "$TCT"
    say ""
    say "#### $id: --backend $be, $src (${in##*.})"
    say ""
    say "exit **$rc**, wall ${wall}s, CPU ${cpu}s (user $usr + sys $sys), speed ${speed}x, max RSS ${rss} MiB${util:+, $util}; output: $files files, $kib KiB, MPD ${mpd:-none}"
    say ""
    say "\`timeout $t ${cmd[*]}\`"
    say ""
    { grep -iE 'backend|fallback|refus|usable|not available|error|warn|panic' "$log" | cut -c1-240 | awk '!seen[$0]++' | head -12
      echo "--- last lines:"; tail -6 "$log" | cut -c1-240
      echo "--- output:"; (cd "$out" && find . -maxdepth 2 | sort | head -12); } | fence
    echo "$id rc=$rc wall=$wall cpu=$cpu speed=$speed $util"
    [ "$rc" = 0 ]
  }
  # tc_try id backend source: runs with the input kind that worked before; until one has,
  # the first two calls try mp4, flv and h264 in turn, later calls the first present only.
  TC_KIND=; TC_TRIALS=2
  tc_try() {
    local id=$1 be=$2 src=$3 k f rc one='' kinds=(mp4 flv h264)
    if [ -n "$TC_KIND" ]; then kinds=("$TC_KIND")
    elif [ "$TC_TRIALS" -gt 0 ]; then TC_TRIALS=$((TC_TRIALS - 1))
    else one=1; fi
    for k in "${kinds[@]}"; do
      f=$M/src$src.$k; [ -s "$f" ] || f=$WORK/media/src$src.$k; [ -s "$f" ] || continue
      tc "${id}_$k" "$be" "$src" "$f"; rc=$?
      [ "$rc" = 0 ] && { TC_KIND=$k; return 0; }
      [ "$rc" = 2 ] && return 2   # time budget spent
      [ -n "$one" ] && return 1
    done
    return 1
  }
  if grep -q -- '--backend' "$WORK/transcode-help.txt" 2>/dev/null; then
    BACKENDS="software nvdec-x264"
    if has nvcudah264enc; then BACKENDS="$BACKENDS nvenc"
    else say ""; say "nvcudah264enc is not registered: \`--backend nvenc\` not run."; fi
    for be in $BACKENDS; do
      for src in 720p30 1080p60; do
        tc_try "t_${be//-/_}_$src" "$be" "$src"
      done
    done
  else
    say ""; say "this rackcast has no \`transcode --backend\`: transcodes skipped."
  fi
  tc_table
fi

# ---------------------------------------------------------------- summary
say ""
say "## Summary"
say ""
say "| run | exit | wall s | CPU s | exec s | frames | fps | GPU samples | what |"
say "|---|---|---|---|---|---|---|---|---|"
awk -F'\t' '{printf "| %s | %s | %s | %s | %s | %s | %s | %s | %s |\n", $1, $2, $3, $4, $5, $7, $6, $8, $9}' "$SUMMARY" >> "$R"
say ""
say "Ratios (software ladder / hybrid ladder, same source):"
awk -F'\t' '{w[$1]=$3; c[$1]=$4}
  END {for (s in w) if (s ~ /^d_.*_ladder_/) { src=s; sub(/^d_[a-z0-9_]*_ladder_/, "", src); dec=s; sub(/^d_/, "", dec); sub(/_ladder_.*/, "", dec);
        h = (src == "1080p60") ? "c1_hybrid_1080p60" : "c3_hybrid_720p30";
        if (c[h] > 0 && w[h] > 0) printf "- %s (%s vs %s): wall %.2f, CPU %.2f\n", src, dec, h, w[s]/w[h], c[s]/c[h] }}' "$SUMMARY" >> "$R"
if [ -s "$TCT" ]; then
  say ""
  say "rackcast transcode (section 4c; wall includes rackcast's start-up):"
  tc_table
  say ""
  say "Ratios (rackcast transcode, --backend software / --backend nvdec-x264, same source, runs that exited 0):"
  awk -F'\t' '$5 == "0" {w[$2 "/" $3]=$6; c[$2 "/" $3]=$7}
    END {n = split("720p30 1080p60", srcs, " "); for (i = 1; i <= n; i++) { s = "software/" srcs[i]; h = "nvdec-x264/" srcs[i];
          if (w[s] > 0 && w[h] > 0 && c[h] > 0) printf "- %s: wall %.2f, CPU %.2f\n", srcs[i], w[s]/w[h], c[s]/c[h]; else printf "- %s: not both ran\n", srcs[i] }}' "$TCT" >> "$R"
fi
cp "$WORK/nvidia-smi-q.txt" "$WORK/summary.tsv" "$WORK" 2>/dev/null
tar -C "$WORK" -czf "$OUT/gpu-check-logs.tar.gz" --exclude='registry*' --exclude='nvrtc12' \
  --exclude='tc-out' --exclude='media/*.h264' --exclude='media/*.flv' --exclude='rackcast-bin' . 2>/dev/null
say ""
say "checked in $(( $(date +%s) - START )) s"
echo "report: $R"
rm -rf "$WORK"
