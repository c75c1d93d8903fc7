"""rackcast transcode vs one ffmpeg process, same ladder, interleaved rounds.

Each run is a child process; its wall time is measured around it and its CPU time
(user + system, children included) from os.wait4. Writes table.txt and results.json
in --out, and prints the table.
"""
import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time

LADDER = [(720, 1280, 2500), (480, 854, 1000), (360, 640, 600)]
PRESET = "veryfast"


def run(cmd, log, pids):
    """Runs cmd to completion; returns (wall s, cpu s, exit code)."""
    start = time.monotonic()
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
        with open(pids, "a") as f:
            f.write(f"{proc.pid}\n")
        _, status, usage = os.wait4(proc.pid, 0)
    wall = time.monotonic() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    return wall, usage.ru_utime + usage.ru_stime, proc.returncode


def make_source(path, size, fps, seconds, log, pids):
    """testsrc2 + a sine, x264 veryfast without tune (frame threads: no slices), AAC."""
    if os.path.exists(path):
        return
    cmd = ["ffmpeg", "-loglevel", "error", "-y",
           "-f", "lavfi", "-i", f"testsrc2=size={size}:rate={fps}",
           "-f", "lavfi", "-i", "sine=frequency=440:sample_rate=48000",
           "-t", str(seconds), "-c:v", "libx264", "-preset", "veryfast", "-g", str(2 * fps),
           "-b:v", "6M" if fps > 30 else "4M", "-pix_fmt", "yuv420p",
           "-c:a", "aac", "-b:a", "128k", path]
    _, _, rc = run(cmd, log, pids)
    if rc != 0:
        sys.exit(f"making {path} failed, see {log}")


def ffmpeg_ladder(src, out_dir):
    split = "".join(f"[v{i}]" for i in range(len(LADDER)))
    scales = ";".join(f"[v{i}]scale={w}:{h}[o{i}]" for i, (h, w, _) in enumerate(LADDER))
    cmd = ["ffmpeg", "-loglevel", "error", "-y", "-i", src,
           "-filter_complex", f"[0:v]split={len(LADDER)}{split};{scales}"]
    for i in range(len(LADDER)):
        cmd += ["-map", f"[o{i}]"]
    cmd += ["-map", "0:a", "-c:v", "libx264", "-preset", PRESET, "-tune", "zerolatency",
            "-profile:v", "high", "-pix_fmt", "yuv420p", "-sc_threshold", "0",
            "-force_key_frames", "expr:gte(t,n_forced*1)"]
    for i, (_, _, kbps) in enumerate(LADDER):
        cmd += [f"-b:v:{i}", f"{kbps}k", f"-bufsize:v:{i}", f"{kbps}k"]
    cmd += ["-c:a", "copy", "-f", "dash", "-seg_duration", "1", "-use_timeline", "1",
            os.path.join(out_dir, "manifest.mpd")]
    return cmd


def rackcast_ladder(binary, src, out_dir):
    ladder = ",".join(f"{h}p={kbps}k" for h, _, kbps in LADDER)
    return [binary, "transcode", src, "--out", out_dir, "--ladder", ladder, "--x264-preset", PRESET]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--rackcast-bin", required=True)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--cmdline", default="bench/transcode.sh")
    args = ap.parse_args()
    pids = os.path.join(args.out, "pids")
    media = os.path.join(args.out, "media")
    os.makedirs(media, exist_ok=True)
    sources = [
        ("720p30, 20 s", os.path.join(media, "src-720p30.mp4"), "1280x720", 30, 20),
        ("1080p60 no slices, 10 s", os.path.join(media, "src-1080p60.mp4"), "1920x1080", 60, 10),
    ]
    for _, path, size, fps, seconds in sources:
        make_source(path, size, fps, seconds, os.path.join(args.out, "source.log"), pids)
    cores = os.cpu_count()
    rows = []
    for label, path, _, _, seconds in sources:
        figures = {"rackcast": [], "ffmpeg": []}
        for r in range(args.rounds):
            for tool in ("rackcast", "ffmpeg"):
                out_dir = os.path.join(args.out, f"{tool}-{r}")
                shutil.rmtree(out_dir, ignore_errors=True)
                os.makedirs(out_dir)
                cmd = rackcast_ladder(args.rackcast_bin, path, out_dir) if tool == "rackcast" else ffmpeg_ladder(path, out_dir)
                log = os.path.join(args.out, f"{tool}-{r}-{seconds}.log")
                wall, cpu, rc = run(cmd, log, pids)
                segments = sum(len(files) for _, _, files in os.walk(out_dir))
                if rc != 0:
                    sys.exit(f"{tool} failed on {label} (exit {rc}), see {log}")
                figures[tool].append({"wall_s": wall, "cpu_s": cpu, "files": segments})
                shutil.rmtree(out_dir, ignore_errors=True)
        med = {t: {k: statistics.median(x[k] for x in v) for k in ("wall_s", "cpu_s")} for t, v in figures.items()}
        rows.append({
            "source": label, "media_s": seconds, "runs": figures, "median": med,
            "wall_ratio": med["rackcast"]["wall_s"] / med["ffmpeg"]["wall_s"],
            "cpu_ratio": med["rackcast"]["cpu_s"] / med["ffmpeg"]["cpu_s"],
            "rackcast_cpu_per_media_s": med["rackcast"]["cpu_s"] / seconds,
            "ffmpeg_cpu_per_media_s": med["ffmpeg"]["cpu_s"] / seconds,
            # Cores a real-time copy of this ladder leaves to other streams.
            "cores_left_at_real_time": cores - med["rackcast"]["cpu_s"] / seconds,
        })
    lines = [f"# {args.cmdline}", f"# {cores} cores; ladder " + ", ".join(f"{h}p {k}k" for h, _, k in LADDER)
             + f", x264 {PRESET}, keyframe every 1 s, AAC copied; {args.rounds} interleaved rounds, medians", ""]
    lines.append(f"{'source':<26}{'tool':<10}{'wall s':>8}{'CPU s':>8}{'x real time':>12}{'CPU-s/media-s':>15}")
    for row in rows:
        for tool in ("rackcast", "ffmpeg"):
            m = row["median"][tool]
            lines.append(f"{row['source']:<26}{tool:<10}{m['wall_s']:>8.2f}{m['cpu_s']:>8.2f}"
                         f"{row['media_s'] / m['wall_s']:>12.2f}{m['cpu_s'] / row['media_s']:>15.3f}")
        lines.append(f"{'':<26}{'ratio':<10}{row['wall_ratio']:>8.2f}{row['cpu_ratio']:>8.2f}"
                     f"{'':>12}{'(rackcast / ffmpeg)':>20}")
        lines.append(f"{'':<26}cores left to other streams while rackcast runs this ladder in real time: "
                     f"{row['cores_left_at_real_time']:.2f} of {cores}")
        lines.append("")
    table = "\n".join(lines)
    print(table)
    with open(os.path.join(args.out, "table.txt"), "w") as f:
        f.write(table + "\n")
    with open(os.path.join(args.out, "results.json"), "w") as f:
        json.dump({"cmdline": args.cmdline, "cores": cores, "rows": rows}, f, indent=2)


if __name__ == "__main__":
    main()
