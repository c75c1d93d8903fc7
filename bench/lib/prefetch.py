#!/usr/bin/env python3
"""Does edge prefetch lower what a viewer waits for a new segment?

Runs a 3-node federation (live, origin, edge) on 127.0.0.1 twice, with [tier] prefetch off
and on, publishes the same ffmpeg stream to the live node, and plays a "viewer" against the
edge that refreshes the MPD every 250 ms and fetches each newly listed segment of the first
video Representation at once, recording how long the GET took and its x-cache-status.
Prints medians, p95 and the cache-status mix per mode.
"""
import json, os, re, signal, socket, statistics, subprocess, sys, tempfile, time, urllib.request
import xml.etree.ElementTree as ET

NS = {"d": "urn:mpeg:dash:schema:mpd:2011"}


def free_port():
    s = socket.socket(); s.bind(("127.0.0.1", 0)); p = s.getsockname()[1]; s.close(); return p


def get(url, timeout=5):
    start = time.monotonic()
    with urllib.request.urlopen(url, timeout=timeout) as r:
        body = r.read()
        return r.status, body, r.headers.get("x-cache-status", ""), time.monotonic() - start


def newest_video_segments(base, stream, xml):
    root = ET.fromstring(xml)
    period = root.findall("d:Period", NS)[-1]
    for aset in period.findall("d:AdaptationSet", NS):
        if aset.get("contentType") != "video":
            continue
        rep = aset.findall("d:Representation", NS)[-1]  # lowest rung: cheapest to transcode
        tmpl = rep.find("d:SegmentTemplate", NS)
        number = int(tmpl.get("startNumber"))
        urls = []
        for s in tmpl.find("d:SegmentTimeline", NS).findall("d:S", NS):
            for _ in range(int(s.get("r", "0")) + 1):
                media = tmpl.get("media").replace("$RepresentationID$", rep.get("id")).replace("$Number$", str(number))
                urls.append((number, f"{base}/live/{stream}/{media}"))
                number += 1
        return urls
    return []


def wait_started(procs, nodes, tmp, within=20.0):
    """Every node answers HTTP, or the benchmark stops with the reason: without its
    subject it would measure nothing."""
    deadline = time.monotonic() + within
    for proc, (name, http) in zip(procs, nodes):
        while True:
            if proc.poll() is not None:
                tail = open(os.path.join(tmp, name + ".log")).read()[-2000:]
                sys.exit("rackcast node %s did not start (exit %s):\n%s" % (name, proc.returncode, tail))
            try:
                urllib.request.urlopen("http://127.0.0.1:%d/api/v1/node" % http, timeout=1).read()
                break
            except Exception:
                if time.monotonic() > deadline:
                    sys.exit("rackcast node %s did not answer HTTP within %.0f s (log: %s)" % (name, within, tmp))
                time.sleep(0.2)


def run(binary, prefetch, seconds):
    nodes = [("live-1", "live"), ("origin-1", "origin"), ("edge-1", "edge")]
    ports = {n: (free_port(), free_port()) for n, _ in nodes}
    cfg = ('[cluster]\nhealth_interval = "300ms"\nhealth_timeout = "250ms"\nrelay_secret = "prefetch-bench-%s"\n\n[tier]\nprefetch = %s\n'
           % (os.urandom(8).hex(), "true" if prefetch else "false"))
    for n, role in nodes:
        cfg += f'\n[[cluster.nodes]]\nid = "{n}"\nroles = ["{role}"]\nrtmp = "127.0.0.1:{ports[n][0]}"\nhttp = "127.0.0.1:{ports[n][1]}"\n'
    tmp = tempfile.mkdtemp()
    path = os.path.join(tmp, "cluster.toml")
    open(path, "w").write(cfg)
    procs = [subprocess.Popen([binary, "run", "--config", path, "--node", n], stdout=subprocess.DEVNULL,
                              stderr=open(os.path.join(tmp, n + ".log"), "w")) for n, _ in nodes]
    try:
        wait_started(procs, [(n, ports[n][1]) for n, _ in nodes], tmp)
        stream = "prefetch"
        ff = subprocess.Popen(["ffmpeg", "-hide_banner", "-loglevel", "error", "-re", "-f", "lavfi", "-i",
                               "testsrc2=size=640x360:rate=30", "-f", "lavfi", "-i", "sine=sample_rate=48000",
                               "-t", str(seconds), "-c:v", "libx264", "-preset", "veryfast", "-tune", "zerolatency",
                               "-g", "30", "-c:a", "aac", "-f", "flv",
                               f"rtmp://127.0.0.1:{ports['live-1'][0]}/live/{stream}"])
        edge = f"http://127.0.0.1:{ports['edge-1'][1]}"
        seen, samples = set(), []
        deadline = time.monotonic() + seconds + 5
        while time.monotonic() < deadline and ff.poll() is None:
            try:
                status, body, _, _ = get(f"{edge}/live/{stream}/manifest.mpd")
            except Exception:
                time.sleep(0.25); continue
            urls = newest_video_segments(edge, stream, body)
            if not seen:
                seen.update(n for n, _ in urls)  # only segments that appear while we watch
            for number, url in urls:
                if number in seen:
                    continue
                seen.add(number)
                status, _, cache, took = get(url)
                samples.append((took * 1000, cache))
            time.sleep(0.25)
        ff.wait(timeout=30)
        return samples
    finally:
        for p in procs:
            p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(timeout=15)
            except subprocess.TimeoutExpired:
                p.kill()


def summary(samples):
    ms = sorted(s[0] for s in samples)
    mix = {}
    for _, c in samples:
        mix[c] = mix.get(c, 0) + 1
    p95 = ms[min(len(ms) - 1, int(0.95 * len(ms)))] if ms else float("nan")
    return {"segments": len(ms), "median_ms": round(statistics.median(ms), 2) if ms else None, "p95_ms": round(p95, 2), "cache_status": mix}


def main():
    binary = sys.argv[1] if len(sys.argv) > 1 else "target/release/rackcast"
    seconds = int(sys.argv[2]) if len(sys.argv) > 2 else 20
    results = {mode: summary(run(binary, mode == "on", seconds)) for mode in ("off", "on")}
    if any(r["segments"] == 0 for r in results.values()):
        sys.exit("no segment reached the edge: %s" % json.dumps(results))
    print(f"command: bench/prefetch.sh ({seconds} s publish per mode; viewer polls the edge MPD every 250 ms)")
    print(f"{'prefetch':<10}{'segments':>10}{'median ms':>12}{'p95 ms':>10}  x-cache-status")
    for mode, r in results.items():
        print(f"{mode:<10}{r['segments']:>10}{r['median_ms']:>12}{r['p95_ms']:>10}  {json.dumps(r['cache_status'])}")
    os.makedirs("bench/results", exist_ok=True)
    json.dump(results, open("bench/results/prefetch.json", "w"), indent=2)


if __name__ == "__main__":
    main()
