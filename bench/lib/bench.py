#!/usr/bin/env python3
"""Orchestrates one benchmark run: rackcast vs nginx-rtmp, one after the other.

For each server:  start server -> start wire-clock relay (rtmp_relay.py) ->
start MPD/segment poller (poller.py) -> sample /proc of the server's process
tree -> publish with ffmpeg through the relay -> once the first segment is
downloadable, open the dash.js page in headless Chromium -> when the publish
ends, drain, stop everything, analyse.  Normally started by bench/run.sh.
"""
import argparse
import datetime
import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

import common
from common import (CLK_TCK, TEMPDIRS, free_port, log, pct, proc_tree, read_line_with_timeout,
                    spawn, start_run, stat_fields, stop, stop_all, table_row)

HERE = os.path.dirname(os.path.abspath(__file__))
BENCH = os.path.dirname(HERE)
PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")
common.TAG = "bench"


def wait_port(port, timeout):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            socket.create_connection(("127.0.0.1", port), 0.5).close()
            return True
        except OSError:
            time.sleep(0.05)
    return False


def read_jsonl(path):
    out = []
    try:
        with open(path) as f:
            for line in f:
                line = line.strip()
                if line:
                    try:
                        out.append(json.loads(line))
                    except ValueError:
                        pass
    except FileNotFoundError:
        pass
    return out


# ---------------------------------------------------------------- /proc sampling

def _proc_sample(pid):
    try:
        rest = stat_fields(pid)
        cpu = (int(rest[11]) + int(rest[12])) / CLK_TCK  # utime + stime
        hwm = rss = 0
        with open("/proc/%d/status" % pid) as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    hwm = int(line.split()[1]) * 1024
                elif line.startswith("VmRSS:"):
                    rss = int(line.split()[1]) * 1024
        return cpu, hwm, rss
    except (OSError, IndexError, ValueError):
        return None


class Sampler(threading.Thread):
    """Samples utime+stime and VmHWM of a process and all its descendants."""

    def __init__(self, root_pid, interval=0.25):
        super().__init__(daemon=True)
        self.root = root_pid
        self.interval = interval
        self.samples = []  # (wall, {pid: cpu_s})
        self.hwm = {}  # pid -> max VmHWM bytes
        self.names = {}
        self.halt = threading.Event()

    def sample_once(self):
        now = time.monotonic()
        cpu = {}
        for pid in proc_tree(self.root):
            r = _proc_sample(pid)
            if r is None:
                continue
            cpu[pid] = r[0]
            self.hwm[pid] = max(self.hwm.get(pid, 0), r[1])
            if pid not in self.names:
                try:
                    with open("/proc/%d/cmdline" % pid, "rb") as f:
                        self.names[pid] = f.read().replace(b"\0", b" ").decode(errors="replace").strip()[:80]
                except OSError:
                    self.names[pid] = "?"
        self.samples.append((now, cpu))

    def run(self):
        while not self.halt.is_set():
            self.sample_once()
            self.halt.wait(self.interval)

    def cpu_between(self, t0, t1):
        """CPU seconds used by the tree between the last sample <= t0 and the
        first sample >= t1 (per pid, so processes that come or go count)."""
        if not self.samples:
            return None, None, None
        a = max((s for s in self.samples if s[0] <= t0), key=lambda s: s[0], default=self.samples[0])
        later = [s for s in self.samples if s[0] >= t1]
        b = later[0] if later else self.samples[-1]
        last_seen = {}
        for w, c in self.samples:
            if a[0] <= w <= b[0]:
                last_seen.update(c)
        total = 0.0
        for pid, v in last_seen.items():
            total += v - a[1].get(pid, 0.0)
        return total, a[0], b[0]


# ---------------------------------------------------------------- servers

class ServerHandle:
    name = ""
    rtmp_port = None
    http_port = None
    proc = None
    cmd = None
    ok = False
    why = ""

    def publish_url(self, relay_port, key):
        return "rtmp://127.0.0.1:%d/live/%s" % (relay_port, key)

    def player_mpd_url(self, key):
        """The MPD dash.js is given: the one a user would give it."""
        return self.mpd_url(key)


class Rackcast(ServerHandle):
    name = "rackcast"

    def __init__(self, binary, workdir):
        self.binary = binary
        self.workdir = workdir

    def start(self):
        if not self.binary or not os.path.exists(self.binary):
            self.why = "binary %s not found" % self.binary
            return False
        self.cmd = [self.binary, "run", "--rtmp", "127.0.0.1:0", "--http", "127.0.0.1:0"]
        self.stderr = open(os.path.join(self.workdir, "rackcast.stderr.log"), "w")
        self.proc = spawn(self.cmd, stdout=subprocess.PIPE, stderr=self.stderr, text=True)
        # (the reader keeps draining stdout so the server never blocks on it)
        ready = read_line_with_timeout(self.proc.stdout, r"^rackcast ready.*", 30)
        if ready is None:
            rc = self.proc.poll()
            self.why = "no 'rackcast ready' line within 30 s (exit code %s); see %s" % (
                rc, self.stderr.name)
            stop(self.proc)
            return False
        line = ready.group(0).strip()
        m = re.search(r"rtmp=127\.0\.0\.1:(\d+)\s+http=127\.0\.0\.1:(\d+)", line)
        if not m:
            self.why = "could not parse ready line %r" % line
            stop(self.proc)
            return False
        self.rtmp_port, self.http_port = int(m.group(1)), int(m.group(2))
        self.ok = True
        return True

    def mpd_url(self, key):
        # The pollers read a SegmentTimeline: when each complete segment was listed.
        return "http://127.0.0.1:%d/live/%s/manifest.mpd" % (self.http_port, key)

    def player_mpd_url(self, key):
        # dash.js gets the low-latency MPD (segments fetched while they are encoded).
        return "http://127.0.0.1:%d/live/%s/manifest-ll.mpd" % (self.http_port, key)

    def stop(self):
        stop(self.proc, signal.SIGTERM, 10)


class Nginx(ServerHandle):
    name = "nginx-rtmp"

    def __init__(self, workdir):
        self.workdir = workdir

    def start(self):
        if not shutil.which("nginx") or not os.path.exists("/usr/lib/nginx/modules/ngx_rtmp_module.so"):
            self.why = "nginx or libnginx-mod-rtmp not installed"
            return False
        prefix = tempfile.mkdtemp(prefix="bench-nginx-")
        TEMPDIRS.append(prefix)
        self.prefix = prefix
        for d in ("logs", "dash", "tmp"):
            os.makedirs(os.path.join(prefix, d), exist_ok=True)
        self.rtmp_port, self.http_port = free_port(), free_port()
        with open(os.path.join(BENCH, "nginx", "nginx.conf.in")) as f:
            conf = f.read()
        conf = conf.replace("@PREFIX@", prefix).replace("@RTMP_PORT@", str(self.rtmp_port)) \
                   .replace("@HTTP_PORT@", str(self.http_port))
        cpath = os.path.join(prefix, "nginx.conf")
        with open(cpath, "w") as f:
            f.write(conf)
        shutil.copy(cpath, os.path.join(self.workdir, "nginx.conf"))
        self.cmd = ["nginx", "-p", prefix, "-e", os.path.join(prefix, "logs", "error.log"), "-c", cpath]
        self.stderr = open(os.path.join(self.workdir, "nginx.stderr.log"), "w")
        self.proc = spawn(self.cmd, stdout=self.stderr, stderr=subprocess.STDOUT)
        if not (wait_port(self.rtmp_port, 10) and wait_port(self.http_port, 5)):
            self.why = "nginx did not listen on its ports; see %s" % self.stderr.name
            stop(self.proc)
            return False
        self.ok = True
        return True

    def mpd_url(self, key):
        return "http://127.0.0.1:%d/live/%s.mpd" % (self.http_port, key)

    def stop(self):
        stop(self.proc, signal.SIGTERM, 10)
        try:
            shutil.copy(os.path.join(self.prefix, "logs", "error.log"),
                        os.path.join(self.workdir, "nginx.error.log"))
        except OSError:
            pass
        shutil.rmtree(self.prefix, ignore_errors=True)


# ---------------------------------------------------------------- one server run

def ffmpeg_cmd(url, duration):
    return ["ffmpeg", "-hide_banner", "-nostdin", "-loglevel", "warning",
            "-re", "-f", "lavfi", "-i", "testsrc2=size=1280x720:rate=30",
            "-re", "-f", "lavfi", "-i", "sine=frequency=1000:sample_rate=48000",
            "-t", str(duration),
            "-c:v", "libx264", "-preset", "veryfast", "-tune", "zerolatency",
            "-g", "30", "-keyint_min", "30", "-sc_threshold", "0", "-pix_fmt", "yuv420p",
            "-b:v", "2500k",
            "-c:a", "aac", "-b:a", "128k", "-ar", "48000", "-ac", "2",
            "-f", "flv", url]


def make_cert(outdir):
    """Self-signed certificate for the stand-in of dash.js's default time source."""
    key, crt, pem = (os.path.join(outdir, n) for n in ("time.key", "time.crt", "time.pem"))
    r = subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes",
                        "-subj", "/CN=time.akamai.com", "-addext", "subjectAltName=DNS:time.akamai.com",
                        "-days", "2", "-keyout", key, "-out", crt],
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    if r.returncode != 0:
        return None
    with open(pem, "w") as f:
        f.write(open(key).read() + open(crt).read())
    return pem


def chromium_cmd(url, udd, page_port, local_clock=True):
    # Keep every lookup local.  dash.js's default UTC timing source
    # (http://time.akamai.com/?iso&ms, used when the MPD has no UTCTiming) is
    # mapped to the page server, which answers with this machine's clock, the
    # same clock the servers stamp availabilityStartTime with; every other name
    # fails at once.  With --player-clock date, that host fails too and dash.js
    # falls back to the MPD response's Date header (1 s resolution).
    rules = "MAP * ~NOTFOUND , EXCLUDE 127.0.0.1"
    if local_clock:
        rules = "MAP time.akamai.com 127.0.0.1:%d , " % page_port + rules
    return ["/usr/bin/chromium", "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
            "--no-first-run", "--disable-background-networking", "--disable-component-update",
            "--disable-sync", "--autoplay-policy=no-user-gesture-required",
            "--user-data-dir=" + udd,
            "--host-resolver-rules=" + rules,
            # the stand-in time source has a self-signed certificate (Chromium's
            # HSTS list upgrades time.akamai.com to https)
            "--ignore-certificate-errors",
            "--window-size=1280,800", url]


def run_server(srv, a, outdir, page_port, page_log, player, suffix=""):
    """One publish against a freshly started server.  player: open the dash.js
    page in Chromium during this publish."""
    key = a.stream_key
    res = {"server": srv.name, "ok": False}
    wd = os.path.join(outdir, srv.name + suffix)
    os.makedirs(wd, exist_ok=True)
    srv.workdir = wd
    log("%s%s: starting server" % (srv.name, suffix))
    if not srv.start():
        res["skipped"] = srv.why
        log("%s: SKIPPED: %s" % (srv.name, srv.why))
        return res
    res["server_cmd"] = " ".join(shlex.quote(c) for c in srv.cmd)
    res["ports"] = {"rtmp": srv.rtmp_port, "http": srv.http_port}
    sampler = Sampler(srv.proc.pid)
    sampler.start()
    relay_log = os.path.join(wd, "relay.jsonl")
    relay = spawn([sys.executable, os.path.join(HERE, "rtmp_relay.py"),
                   "--upstream", "127.0.0.1:%d" % srv.rtmp_port, "--log", relay_log],
                  stdout=subprocess.PIPE, text=True)
    relay_port = int(relay.stdout.readline().strip())
    mpd_url = srv.mpd_url(key)
    res["mpd_url"] = mpd_url
    poll_log = os.path.join(wd, "poll.jsonl")
    poller = spawn([sys.executable, os.path.join(HERE, "poller.py"), "--mpd", mpd_url,
                    "--log", poll_log, "--poll-ms", str(a.poll_ms),
                    "--mpd-poll-ms", str(a.mpd_poll_ms),
                    "--max-seconds", str(a.duration + 60)])
    time.sleep(0.3)
    pub_url = srv.publish_url(relay_port, key)
    fcmd = ffmpeg_cmd(pub_url, a.duration)
    res["publish_cmd"] = " ".join(shlex.quote(c) for c in fcmd)
    ff_log = open(os.path.join(wd, "ffmpeg.log"), "w")
    log("%s%s: publishing %ds through the relay (127.0.0.1:%d -> %d)%s" % (
        srv.name, suffix, a.duration, relay_port, srv.rtmp_port,
        ", dash.js in Chromium once the first segment is up" if player else ""))
    t_pub = time.monotonic()
    ff = spawn(fcmd, stdout=ff_log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    chrome = None
    udd = None
    deadline = t_pub + a.duration + 30
    first_seg_seen = False
    while ff.poll() is None and time.monotonic() < deadline:
        time.sleep(0.1)
        if not first_seg_seen:
            ev = read_jsonl(poll_log)
            if any(e["ev"] == "seg200" for e in ev) and any(e["ev"] == "init200" for e in ev):
                first_seg_seen = True
                log("%s%s: first segment downloadable after %.1f s" % (srv.name, suffix, time.monotonic() - t_pub))
                if player and page_port:
                    udd = tempfile.mkdtemp(prefix="bench-chromium-")
                    TEMPDIRS.append(udd)
                    from urllib.parse import quote
                    purl = "http://127.0.0.1:%d/index.html?tag=%s&mpd=%s" % (
                        page_port, quote(srv.name), quote(srv.player_mpd_url(key), safe=""))
                    res["player_url"] = purl
                    chrome = spawn(chromium_cmd(purl, udd, page_port, a.player_clock == "local"),
                                   new_session=True,
                                   stdout=open(os.path.join(wd, "chromium.log"), "w"),
                                   stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
            elif time.monotonic() - t_pub > 20:
                first_seg_seen = True  # give up waiting; no player
                log("%s: no segment became downloadable within 20 s" % srv.name)
    if ff.poll() is None:
        log("%s: ffmpeg overran its time; stopping it" % srv.name)
        stop(ff, signal.SIGINT, 5)
    res["ffmpeg_rc"] = ff.returncode
    t_ff_end = time.monotonic()
    time.sleep(a.drain)
    sampler.sample_once()
    stop(chrome, signal.SIGTERM, 5)
    if udd:
        shutil.rmtree(udd, ignore_errors=True)
    stop(poller)
    stop(relay)
    sampler.halt.set()
    sampler.join(2)
    srv.stop()
    res.update(analyse(srv.name, relay_log, poll_log, page_log if player else None,
                       sampler, t_ff_end, a))
    res["ok"] = True
    return res


# ---------------------------------------------------------------- analysis

def analyse(name, relay_log, poll_log, page_log, sampler, t_ff_end, a):
    r = {"warnings": []}
    W = r["warnings"]
    rev = read_jsonl(relay_log)
    pev = read_jsonl(poll_log)
    pub = next((e["wall"] for e in rev if e["ev"] == "publish_start"), None)
    first_chunk = next((e["wall"] for e in rev if e["ev"] == "first_video_chunk"), None)
    vids = [e for e in rev if e["ev"] == "video"]
    frames = [e for e in vids if e["kind"] == "frame"]
    eof = next((e for e in rev if e["ev"] == "client_eof"), None)
    for e in rev:
        if e["ev"].endswith("_eof") and e.get("parse_error"):
            W.append("relay parse error (%s): %s" % (e["ev"], e["parse_error"]))
    if pub is None or not frames or first_chunk is None:
        W.append("relay saw no publish / no video frames")
        return r
    media_last = [e["last"] for e in rev if e["ev"] in ("video", "audio")]
    publish_end = max(media_last) if media_last else (eof["wall"] if eof else t_ff_end)
    origin_chunk = vids[0]["ts"]          # RTMP ts of the first type-9 message
    origin_frame = frames[0]["ts"] + frames[0]["cts"]
    pts = [f["ts"] + f["cts"] for f in frames]
    keys = sorted(f["ts"] + f["cts"] for f in frames if f["key"])
    gaps = [b - a_ for a_, b in zip(pts, pts[1:])]
    r["relay"] = {"video_frames": len(frames), "first_frame_rtmp_ts": origin_frame,
                  "first_video_msg_rtmp_ts": origin_chunk,
                  "media_seconds": (pts[-1] - pts[0] + (pct(gaps, 50) or 0)) / 1000.0,
                  "publish_start_to_first_video_ms": (first_chunk - pub) * 1000,
                  "keyframes": len(keys)}
    if any(g < 0 for g in gaps):
        W.append("video RTMP timestamps not monotonic (%d backwards steps)" % sum(g < 0 for g in gaps))
    media_s = r["relay"]["media_seconds"]
    if len(frames) > 1 and pts[-1] > pts[0]:
        # > 1 when the publish fell behind real time (CPU starvation or the
        # server pushing back on the RTMP connection)
        r["publish_wall_per_media_s"] = (frames[-1]["last"] - frames[0]["last"]) / ((pts[-1] - pts[0]) / 1000.0)
        if r["publish_wall_per_media_s"] > 1.03:
            W.append("the publish fell behind real time: %.1f s of media took %.1f s on the wire"
                     % ((pts[-1] - pts[0]) / 1000.0, frames[-1]["last"] - frames[0]["last"]))

    listed = {}
    for e in pev:
        if e["ev"] == "listed" and e["url"] not in listed:
            listed[e["url"]] = e
    ok200 = {}
    for e in pev:
        if e["ev"] == "seg200" and e["url"] not in ok200:
            ok200[e["url"]] = e
    init200 = [e for e in pev if e["ev"] == "init200"]
    infos = [e for e in pev if e["ev"] == "mpd_info"]
    if infos:
        r["mpd"] = {k: infos[-1].get(k) for k in ("rep_id", "timescale", "pto", "period_start",
                                                  "period_count", "media_template", "init_url",
                                                  "mpd_type")}
        live_infos = [i for i in infos if i["wall"] <= publish_end]
        if len({i["period_id"] for i in live_infos}) > 1:
            W.append("the last Period changed during the publish (%d Period ids)"
                     % len({i["period_id"] for i in live_infos}))
    errs = [e for e in pev if e["ev"] == "error"]
    if errs:
        W.append("poller: %d errors, first: %s" % (len(errs), json.dumps(errs[0])[:200]))

    # Segment boundaries: media time t/timescale (the track's own timeline, not
    # the presentation time, which adds Period@start - presentationTimeOffset)
    # -> RTMP ms; the origin is chosen by keyframe alignment below.
    def mpd_seconds(e, x):
        return x / float(e["timescale"])

    steady = [i for i in infos if i["wall"] <= publish_end] or infos
    steady_rep = steady[-1]["rep_id"] if steady else None
    other = [e for e in listed.values() if e.get("rep_id", steady_rep) != steady_rep]
    if other:
        W.append("%d segments listed for another first video Representation (MPD shape changed "
                 "early on); counted only %s" % (len(other), steady_rep))
    segs = sorted((e for e in listed.values() if e.get("rep_id", steady_rep) == steady_rep),
                  key=lambda e: mpd_seconds(e, e["t"]))
    starts = [mpd_seconds(e, e["t"]) * 1000.0 for e in segs]
    cands = [("first video message RTMP timestamp = MPD time 0", origin_chunk),
             ("first video frame RTMP timestamp = MPD time 0", origin_frame)]
    if starts:
        cands.append(("first listed segment start = first video frame", origin_frame - starts[0]))

    def score(off):
        import bisect
        n = 0
        for s in starts:
            x = s + off
            i = bisect.bisect_left(keys, x - 1.5)
            if i < len(keys) and abs(keys[i] - x) <= 1.5:
                n += 1
        return n

    scored = [(score(off), -i, label, off) for i, (label, off) in enumerate(cands)]
    best = max(scored) if scored else (0, 0, cands[0][0], cands[0][1])
    off = best[3]
    r["timeline_origin"] = {"rule": best[2], "offset_ms": off,
                            "segment_starts_on_source_keyframes": "%d/%d" % (best[0], len(starts))}
    if starts and best[0] < 0.8 * len(starts):
        W.append("segment boundaries do not line up with source keyframes under any origin "
                 "(%d/%d); the lag mapping may be off by up to a frame" % (best[0], len(starts)))

    import bisect
    fr_pts = pts
    fr_last = [f["last"] for f in frames]
    per_seg = []
    first_bytes = []
    for e in segs:
        end_ms = mpd_seconds(e, e["t"] + e["d"]) * 1000.0 + off
        # First bytes: from the segment's first frame crossing the relay to the poller's
        # first 200. The poller always has a request out for the next segment; a server
        # that waits for it (rackcast) answers at its first chunk, one that 404s (nginx)
        # once it is complete. Only segments that were asked for before they existed.
        o = ok200.get(e["url"])
        j = bisect.bisect_left(fr_pts, mpd_seconds(e, e["t"]) * 1000.0 + off - 0.5)
        if o and j < len(fr_pts) and o["wall"] <= publish_end and fr_last[j] < o["wall"] and (o["saw_404"] or o.get("waited_ms", 0) > 20):
            first_bytes.append((o["wall"] - fr_last[j]) * 1000.0)
        i = bisect.bisect_left(fr_pts, end_ms - 0.5) - 1  # last frame with pts < end
        o = ok200.get(e["url"])
        row = {"n": e["n"], "t": e["t"], "d": e["d"], "url": e["url"].rsplit("/", 1)[-1],
               "end_rtmp_ms": round(end_ms, 3), "listed_wall": e["wall"]}
        if i < 0:
            row["excluded"] = "no frame before segment end"
            per_seg.append(row)
            continue
        row["last_frame_rtmp_ms"] = fr_pts[i]
        row["last_frame_wall"] = fr_last[i]
        row["mpd_listing_lag_ms"] = (e["wall"] - fr_last[i]) * 1000.0
        if o:
            row["first_200_wall"] = o["wall"]
            row["lag_ms"] = (o["wall"] - fr_last[i]) * 1000.0
            row["saw_404_first"] = o["saw_404"]
        if not o:
            row["excluded"] = "never returned 200"
        elif o["wall"] > publish_end:
            row["excluded"] = "became available after the publish ended (final flush)"
        elif not o["saw_404"]:
            row["excluded"] = "already available when first polled (no 404 seen first)"
        elif i + 1 >= len(fr_pts):
            row["excluded"] = "ends with the stream"
        per_seg.append(row)
    good = [s for s in per_seg if "excluded" not in s]
    lags = [s["lag_ms"] for s in good]
    mlags = [s["mpd_listing_lag_ms"] for s in per_seg
             if "mpd_listing_lag_ms" in s and s["listed_wall"] <= publish_end
             and s.get("excluded") != "ends with the stream"]
    r["segments"] = per_seg
    r["segments_measured"] = len(good)
    r["segments_listed"] = len(segs)
    if any(l < 0 for l in lags):
        W.append("%d segments were downloadable before their last frame crossed the relay "
                 "(negative lag): timeline mapping or chunked delivery?" % sum(l < 0 for l in lags))
    r["first_bytes_ms_median"] = pct(first_bytes, 50)
    r["first_bytes_ms_p95"] = pct(first_bytes, 95)
    r["lag_ms_median"] = pct(lags, 50)
    r["lag_ms_p95"] = pct(lags, 95)
    r["mpd_listing_lag_ms_median"] = pct(mlags, 50)
    r["mpd_listing_lag_ms_p95"] = pct(mlags, 95)

    # time to first playable segment
    if ok200 and init200:
        first_media = min(e["wall"] for e in ok200.values())
        first_init = min(e["wall"] for e in init200)
        r["first_segment_s"] = max(first_media, first_init) - first_chunk
    else:
        W.append("no segment / init segment of the first video Representation ever returned 200")

    # CPU and memory
    cpu, w0, w1 = sampler.cpu_between(first_chunk, publish_end + 1.0)
    if cpu is not None and media_s > 0:
        r["cpu_s"] = cpu
        r["cpu_window_s"] = w1 - w0
        r["cpu_per_media_s"] = cpu / media_s
    r["peak_rss_mib"] = sum(sampler.hwm.values()) / 1048576.0
    r["processes"] = {str(p): {"cmd": sampler.names.get(p), "vmhwm_mib": h / 1048576.0}
                      for p, h in sampler.hwm.items()}

    # dash.js
    if page_log:
        page = [e for e in read_jsonl(page_log) if e.get("tag") == name]
        samples = [e for e in page if e.get("ev") == "sample"]
        lat = [e for e in samples if e.get("latency") is not None and e["latency"] > 0]
        win = [e["latency"] for e in lat if publish_end - 0.5 - a.settle_window <= e["wall"] <= publish_end - 0.5]
        r["player"] = {
            "samples": len(samples),
            "latency_samples_in_window": len(win),
            "started": any(e.get("ev") == "playback_started" for e in page),
            "waiting_events": sum(1 for e in page if e.get("ev") == "waiting"),
            "errors": [e.get("detail") for e in page if e.get("ev") == "error"][:5],
            "loaded": next((e for e in page if e.get("ev") == "page_loaded"), None),
            "time_sync_requests_served": sum(1 for e in read_jsonl(page_log) if e.get("ev") == "time_sync"),
            "latency_series": [[round(e["wall"] - first_chunk, 2), round(e["latency"], 3)] for e in lat],
        }
        if win:
            r["dashjs_latency_s_median"] = pct(win, 50)
            r["dashjs_latency_s_p95"] = pct(win, 95)
        # Wire-clock playback latency: the page's video.currentTime (MPD
        # presentation time) mapped onto the relay's publish clock, i.e. how long
        # ago the frame now on screen crossed the relay.  Independent of the
        # MPD's availabilityStartTime and of dash.js's clock synchronisation.
        wire = []
        series = []
        live_infos = [i for i in infos if i["wall"] <= publish_end] or infos
        pinfo = live_infos[-1] if live_infos else {}
        # presentation time -> media time of the track
        p2m = -(pinfo.get("period_start") or 0.0) + (pinfo.get("pto") or 0) / float(pinfo.get("timescale") or 1)
        for e in samples:
            ct = e.get("current_time")
            if not ct or e.get("paused"):
                continue
            x = (ct + p2m) * 1000.0 + off
            i = bisect.bisect_right(fr_pts, x) - 1
            if i < 0 or i + 1 >= len(fr_pts):
                continue
            # interpolate the wall clock between the two frames around x
            f0, f1 = fr_pts[i], fr_pts[i + 1]
            w = fr_last[i] + (fr_last[i + 1] - fr_last[i]) * ((x - f0) / (f1 - f0) if f1 > f0 else 0)
            lat_w = e["wall"] - w
            series.append([round(e["wall"] - first_chunk, 2), round(lat_w, 3)])
            if publish_end - 0.5 - a.settle_window <= e["wall"] <= publish_end - 0.5:
                wire.append(lat_w)
        r["player"]["wire_latency_series"] = series
        r["player"]["target_delay_last"] = next((e.get("target_delay") for e in reversed(samples)
                                                 if e.get("target_delay") is not None), None)
        if wire:
            r["playback_wire_latency_s_median"] = pct(wire, 50)
            r["playback_wire_latency_s_p95"] = pct(wire, 95)
        else:
            W.append("dash.js reported no live latency in the last %.0f s of the publish" % a.settle_window)
    return r


# ---------------------------------------------------------------- report

PLAYER_KEYS = ("player", "dashjs_latency_s_median", "dashjs_latency_s_p95",
               "playback_wire_latency_s_median", "playback_wire_latency_s_p95")

ROWS = [
    ("segment first bytes lag median ms", "first_bytes_ms_median", "%.0f"),
    ("segment first bytes lag p95 ms", "first_bytes_ms_p95", "%.0f"),
    ("segment availability lag median ms", "lag_ms_median", "%.0f"),
    ("segment availability lag p95 ms", "lag_ms_p95", "%.0f"),
    ("segments measured", "segments_measured", "%d"),
    ("MPD listing lag median ms", "mpd_listing_lag_ms_median", "%.0f"),
    ("MPD listing lag p95 ms", "mpd_listing_lag_ms_p95", "%.0f"),
    ("time to first playable segment s", "first_segment_s", "%.2f"),
    ("dash.js live latency median s", "dashjs_latency_s_median", "%.2f"),
    ("dash.js live latency p95 s", "dashjs_latency_s_p95", "%.2f"),
    ("playback latency vs wire clock median s", "playback_wire_latency_s_median", "%.2f"),
    ("server CPU s per media s", "cpu_per_media_s", "%.3f"),
    ("publish wall s per media s", "publish_wall_per_media_s", "%.3f"),
    ("  same, during the player publish", "player_publish_wall_per_media_s", "%.3f"),
    ("server peak RSS MiB", "peak_rss_mib", "%.1f"),
]


def table(results):
    names = ["rackcast", "nginx-rtmp"]
    by = {r["server"]: r for r in results}
    widths = (12, 14, 8)
    lines = [table_row("figure", ["rackcast", "nginx-rtmp", "ratio"], 40, widths, " ")]
    for label, key, fmt in ROWS:
        vals = []
        for n in names:
            v = by.get(n, {}).get(key)
            vals.append(v)
        cells = [(fmt % v) if isinstance(v, (int, float)) else ("skipped" if by.get(n, {}).get("skipped") else "n/a")
                 for v, n in zip(vals, names)]
        ratio = "n/a"
        if all(isinstance(v, (int, float)) for v in vals) and vals[1]:
            ratio = "%.2f" % (vals[0] / vals[1])
        lines.append(table_row(label, cells + [ratio], 40, widths, " "))
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--servers", default="rackcast,nginx")
    ap.add_argument("--duration", type=int, default=30)
    ap.add_argument("--poll-ms", type=float, default=10.0,
                    help="segment URL poll interval")
    ap.add_argument("--mpd-poll-ms", type=float, default=20.0)
    ap.add_argument("--drain", type=float, default=2.5)
    ap.add_argument("--settle-window", type=float, default=10.0)
    ap.add_argument("--no-player", dest="player", action="store_false")
    ap.add_argument("--player-clock", choices=("local", "date"), default="local")
    ap.add_argument("--player-pass", choices=("separate", "same"), default="separate",
                    help="run Chromium in a second publish per server (default) or in the measured one")
    ap.add_argument("--rackcast-bin", default=None)
    ap.add_argument("--rackcast-note", default="")
    ap.add_argument("--dashjs-dir", default=os.path.join(BENCH, "node_modules", "dashjs", "dist", "modern", "umd"))
    ap.add_argument("--stream-key", default="bench")
    ap.add_argument("--cmdline", default=" ".join(sys.argv))
    a = ap.parse_args()
    start_run(a.out)
    results = []
    try:
        page_port = None
        page_log = os.path.join(a.out, "player.jsonl")
        if a.player:
            if not os.path.exists(os.path.join(a.dashjs_dir, "dash.all.min.js")):
                log("dash.js not found in %s: player figure skipped" % a.dashjs_dir)
                a.player = False
            elif not os.path.exists("/usr/bin/chromium"):
                log("/usr/bin/chromium not found: player figure skipped")
                a.player = False
        if a.player:
            extra = []
            if a.player_clock == "local":
                pem = make_cert(a.out)
                if pem:
                    extra = ["--tls-cert", pem]
                else:
                    log("openssl failed: dash.js falls back to the MPD Date header for its clock")
                    a.player_clock = "date"
            ps = spawn([sys.executable, os.path.join(HERE, "pageserver.py"),
                        "--root", os.path.join(BENCH, "player"), "--dashjs", a.dashjs_dir,
                        "--log", page_log] + extra, stdout=subprocess.PIPE, text=True)
            page_port = int(ps.stdout.readline().strip())
        for s in a.servers.split(","):
            s = s.strip()
            if s == "rackcast":
                if a.rackcast_note:
                    results.append({"server": "rackcast", "ok": False, "skipped": a.rackcast_note})
                    log("rackcast: SKIPPED: %s" % a.rackcast_note)
                    continue
                srv = Rackcast(a.rackcast_bin, a.out)
            elif s in ("nginx", "nginx-rtmp"):
                srv = Nginx(a.out)
            else:
                log("unknown server %r" % s)
                continue
            try:
                same = a.player and a.player_pass == "same"
                res = run_server(srv, a, a.out, page_port, page_log, same)
                if same:
                    res["player_pass"] = "same publish"
            finally:
                if srv.proc is not None:
                    srv.stop()
            time.sleep(1.0)
            if a.player and a.player_pass == "separate" and res.get("ok"):
                try:
                    pres = run_server(srv, a, a.out, page_port, page_log, True, "-player")
                finally:
                    if srv.proc is not None:
                        srv.stop()
                time.sleep(1.0)
                res["player_pass"] = "separate publish"
                for k in PLAYER_KEYS:
                    if k in pres:
                        res[k] = pres[k]
                res["warnings"] = res.get("warnings", []) + [
                    "player pass: " + w for w in pres.get("warnings", [])
                    if "dash.js" in w or "player" in w or "real time" in w]
                res["player_pass_result"] = {k: pres.get(k) for k in (
                    "lag_ms_median", "lag_ms_p95", "cpu_per_media_s", "first_segment_s",
                    "segments_measured", "publish_wall_per_media_s")}
                res["player_publish_wall_per_media_s"] = pres.get("publish_wall_per_media_s")
            results.append(res)
    finally:
        stop_all()

    first_pub = next((r.get("publish_cmd") for r in results if r.get("publish_cmd")), "")
    header = ["command: " + a.cmdline,
              "publish: " + re.sub(r"rtmp://\S+", "rtmp://127.0.0.1:RELAY/live/" + a.stream_key, first_pub)]
    for r in results:
        if r.get("server_cmd"):
            header.append("%s: %s" % (r["server"], r["server_cmd"]))
    tbl = table(results)
    notes = []
    for r in results:
        if r.get("skipped"):
            notes.append("%s skipped: %s" % (r["server"], r["skipped"]))
        for w in r.get("warnings", []):
            notes.append("%s warning: %s" % (r["server"], w))
        if r.get("timeline_origin"):
            notes.append("%s timeline origin: %s (segment starts on source keyframes %s)" % (
                r["server"], r["timeline_origin"]["rule"],
                r["timeline_origin"]["segment_starts_on_source_keyframes"]))
    text = "\n".join(header) + "\n\n" + tbl + "\n" + ("\n" + "\n".join(notes) + "\n" if notes else "")
    out = {"command": a.cmdline, "date": datetime.datetime.now().isoformat(timespec="seconds"),
           "settings": {"duration_s": a.duration, "poll_ms": a.poll_ms, "mpd_poll_ms": a.mpd_poll_ms, "drain_s": a.drain,
                        "settle_window_s": a.settle_window, "player": a.player,
                        "player_clock": a.player_clock, "player_pass": a.player_pass},
           "table": {label: {r["server"]: r.get(key) for r in results} for label, key, _ in ROWS},
           "servers": results}
    with open(os.path.join(a.out, "results.json"), "w") as f:
        json.dump(out, f, indent=1)
    with open(os.path.join(a.out, "table.txt"), "w") as f:
        f.write(text)
    print(text)
    subject = [r for r in results if r["server"] == "rackcast"]
    if subject and not all(r.get("ok") for r in subject):
        # The server this benchmark measures: a table without it measures nothing.
        log("FAILED: rackcast, the server this benchmark measures, %s" % (subject[0].get("skipped") or "did not complete its run"))
        return 1
    ok = any(r.get("ok") for r in results)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
