#!/usr/bin/env python3
"""Orchestrates one benchmark run: rackcast vs nginx-rtmp, one after the other.

For each server:  start server -> start wire-clock relay (rtmp_relay.py) ->
start MPD/segment poller (poller.py) -> sample /proc of the server's process
tree -> publish with ffmpeg through the relay -> once the first segment is
downloadable, open the player page (dash.js, Shaka Player, hls.js) in headless
Chromium -> when the publish ends, drain, stop everything, analyse.  Passes per
server: measured (no browser), player, and for rackcast a live -> origin -> edge
federation on loopback (a second poller times the same segment requests at the
edge).  Normally started by bench/run.sh.
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

    def player_urls(self, key, players):
        """The manifest each browser player is given (the one a user would give it), under
        a host name of the player's own (PLAYER_HOSTS)."""
        return {p: "http://%s.%s:%d%s" % (p, PLAYER_HOSTS, self.http_port, self.player_path(p, key))
                for p in players}


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

    def player_path(self, player, key):
        # dash.js and Shaka get the low-latency MPD (segments fetched while they are
        # encoded), hls.js the LL-HLS multivariant playlist.
        if player == "hlsjs":
            return "/live/%s/master.m3u8" % key
        return "/live/%s/manifest-ll.mpd" % key

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
        for d in ("logs", "dash", "hls", "tmp"):
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

    def player_path(self, player, key):
        # hls.js: the HLS nginx-rtmp writes beside the DASH (nginx/nginx.conf.in)
        return "/hls/%s.m3u8" % key if player == "hlsjs" else "/live/%s.mpd" % key

    def stop(self):
        stop(self.proc, signal.SIGTERM, 10)
        try:
            shutil.copy(os.path.join(self.prefix, "logs", "error.log"),
                        os.path.join(self.workdir, "nginx.error.log"))
        except OSError:
            pass
        shutil.rmtree(self.prefix, ignore_errors=True)


FEDERATION = (("live-1", "live"), ("origin-1", "origin"), ("edge-1", "edge"))


class Federation(ServerHandle):
    """rackcast as live -> origin -> edge on loopback: one generated config with
    [[cluster.nodes]], each node `rackcast run --config FILE --node ID` (its own data
    directory).  The publish goes to the live node; proc/rtmp_port/http_port are the live
    node's, edge_base the edge's HTTP address."""
    name = "rackcast"

    def __init__(self, binary, workdir):
        self.binary = binary
        self.workdir = workdir
        self.procs = []

    def start(self):
        if not self.binary or not os.path.exists(self.binary):
            self.why = "binary %s not found" % self.binary
            return False
        ports = {nid: (free_port(), free_port()) for nid, _ in FEDERATION}
        lines = ["# Generated by bench/lib/bench.py: the federation pass (defaults otherwise).",
                 "[cluster]", 'relay_secret = "bench-loopback-only-secret-1234"']
        for nid, role in FEDERATION:
            lines += ["", "[[cluster.nodes]]", 'id = "%s"' % nid, 'roles = ["%s"]' % role,
                      'region = "bench"', 'rtmp = "127.0.0.1:%d"' % ports[nid][0],
                      'http = "127.0.0.1:%d"' % ports[nid][1]]
        config = os.path.join(self.workdir, "cluster.toml")
        with open(config, "w") as f:
            f.write("\n".join(lines) + "\n")
        data = tempfile.mkdtemp(prefix="bench-federation-")
        TEMPDIRS.append(data)
        cmds = []
        for nid, _ in FEDERATION:
            cmd = [self.binary, "run", "--config", config, "--node", nid,
                   "--data-dir", os.path.join(data, nid)]
            cmds.append(" ".join(shlex.quote(c) for c in cmd))
            logf = open(os.path.join(self.workdir, "%s.stderr.log" % nid), "w")
            p = spawn(cmd, name=nid, stdout=subprocess.PIPE, stderr=logf, text=True)
            self.procs.append(p)
            if read_line_with_timeout(p.stdout, r"^rackcast ready", 30) is None:
                self.why = "%s printed no 'rackcast ready' line within 30 s (exit code %s); see %s" % (
                    nid, p.poll(), logf.name)
                self.stop()
                return False
        self.cmd_text = "; ".join(cmds)
        self.proc = self.procs[0]
        self.rtmp_port, self.http_port = ports["live-1"]
        self.edge_base = "http://127.0.0.1:%d" % ports["edge-1"][1]
        self.ok = True
        return True

    def mpd_url(self, key):
        return "http://127.0.0.1:%d/live/%s/manifest.mpd" % (self.http_port, key)

    def stop(self):
        for p in reversed(self.procs):
            stop(p, signal.SIGTERM, 10)


# ---------------------------------------------------------------- one server run

# The measured and federation passes' source; the player passes take --player-source.
SOURCE = "1280x720"


def ffmpeg_cmd(url, duration, size=SOURCE):
    return ["ffmpeg", "-hide_banner", "-nostdin", "-loglevel", "warning",
            "-re", "-f", "lavfi", "-i", "testsrc2=size=%s:rate=30" % size,
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


PLAYER_HOSTS = "bench.test"
PLAYERS = ("dashjs", "shaka", "hlsjs")
# npm package and the build the page loads, per player
PLAYER_LIB = {"dashjs": ("dashjs", "dist/modern/umd/dash.all.min.js"),
              "shaka": ("shaka-player", "dist/shaka-player.compiled.js"),
              "hlsjs": ("hls.js", "dist/hls.min.js")}
PLAYER_NAMES = {"dashjs": "dash.js", "shaka": "Shaka", "hlsjs": "hls.js"}


def chromium_cmd(url, udd, page_port, local_clock=True):
    # Keep every lookup local.  dash.js's default UTC timing source
    # (http://time.akamai.com/?iso&ms, used when the MPD has no UTCTiming) is
    # mapped to the page server, which answers with this machine's clock, the
    # same clock the servers stamp availabilityStartTime with; every other name
    # fails at once.  With --player-clock date, that host fails too and dash.js
    # falls back to the MPD response's Date header (1 s resolution).
    # Each player reaches the server under a name of its own (<player>.bench.test, mapped
    # to 127.0.0.1, the URL's port kept): Chromium opens at most six HTTP/1.1 connections
    # per host, and low-latency players hold long requests (segments being encoded,
    # blocking playlist reloads), so on one host name one player would wait for another's.
    rules = "MAP * ~NOTFOUND , EXCLUDE 127.0.0.1"
    if local_clock:
        rules = "MAP time.akamai.com 127.0.0.1:%d , " % page_port + rules
    rules = "MAP *.%s 127.0.0.1 , " % PLAYER_HOSTS + rules
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
    """One publish against a freshly started server.  player: open the player page
    in Chromium during this publish.  A server with an edge_base (Federation) gets a
    second poller that fetches the segments from there."""
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
    res["server_cmd"] = getattr(srv, "cmd_text", None) or " ".join(shlex.quote(c) for c in srv.cmd)
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
    edge_poller = None
    edge_log = os.path.join(wd, "poll-edge.jsonl")
    if getattr(srv, "edge_base", None):
        # Same MPD (the live node's), so the same request moments; segments from the edge.
        edge_poller = spawn([sys.executable, os.path.join(HERE, "poller.py"), "--mpd", mpd_url,
                             "--segment-base", srv.edge_base,
                             "--log", edge_log, "--poll-ms", str(a.poll_ms),
                             "--mpd-poll-ms", str(a.mpd_poll_ms),
                             "--max-seconds", str(a.duration + 60)])
        res["edge_base"] = srv.edge_base
    time.sleep(0.3)
    pub_url = srv.publish_url(relay_port, key)
    fcmd = ffmpeg_cmd(pub_url, a.duration, getattr(a, "source", SOURCE))
    res["publish_cmd"] = " ".join(shlex.quote(c) for c in fcmd)
    ff_log = open(os.path.join(wd, "ffmpeg.log"), "w")
    log("%s%s: publishing %ds through the relay (127.0.0.1:%d -> %d)%s" % (
        srv.name, suffix, a.duration, relay_port, srv.rtmp_port,
        ", players in Chromium once the first segment is up" if player else ""))
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
                    urls = srv.player_urls(key, a.players)
                    purl = "http://127.0.0.1:%d/index.html?tag=%s&%s" % (
                        page_port, quote(srv.name),
                        "&".join("%s=%s" % (p, quote(u, safe="")) for p, u in urls.items()))
                    res["player_url"] = purl
                    res["player_manifests"] = urls
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
    stop(edge_poller)
    stop(relay)
    sampler.halt.set()
    sampler.join(2)
    srv.stop()
    res.update(analyse(srv.name, relay_log, poll_log, page_log if player else None,
                       sampler, t_ff_end, a))
    if edge_poller is not None:
        edge = analyse(srv.name, relay_log, edge_log, None, sampler, t_ff_end, a)
        res["edge"] = edge_figures(res, edge)
        res["warnings"] += ["edge poller: " + w for w in edge.get("warnings", [])
                            if w.startswith("poller")]
    res["ok"] = True
    return res


def edge_figures(live, edge):
    """What the edge adds to a segment's first bytes: per segment measured at both the live
    node and the edge in the same publish (same request moments), edge minus live."""
    at_live = {(s["n"], s["t"]): s["first_bytes_ms"] for s in live.get("segments", []) if "first_bytes_ms" in s}
    at_edge = {(s["n"], s["t"]): s["first_bytes_ms"] for s in edge.get("segments", []) if "first_bytes_ms" in s}
    both = sorted(set(at_live) & set(at_edge), key=lambda k: k[1])
    adds = [at_edge[k] - at_live[k] for k in both]
    return {"first_bytes_ms_median": edge.get("first_bytes_ms_median"),
            "first_bytes_ms_p95": edge.get("first_bytes_ms_p95"),
            "segments_measured_live": len(at_live), "segments_measured_edge": len(at_edge),
            "segments_paired": len(both),
            "adds_ms_median": pct(adds, 50), "adds_ms_p95": pct(adds, 95),
            "adds_ms": [[k[0], round(v, 1)] for k, v in zip(both, adds)]}


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
        row = {"n": e["n"], "t": e["t"], "d": e["d"], "url": e["url"].rsplit("/", 1)[-1],
               "end_rtmp_ms": round(end_ms, 3), "listed_wall": e["wall"]}
        j = bisect.bisect_left(fr_pts, mpd_seconds(e, e["t"]) * 1000.0 + off - 0.5)
        if o and j < len(fr_pts) and o["wall"] <= publish_end and fr_last[j] < o["wall"] and (o["saw_404"] or o.get("waited_ms", 0) > 20):
            row["first_bytes_ms"] = (o["wall"] - fr_last[j]) * 1000.0
            first_bytes.append(row["first_bytes_ms"])
        i = bisect.bisect_left(fr_pts, end_ms - 0.5) - 1  # last frame with pts < end
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

    if page_log:
        analyse_players(r, name, read_jsonl(page_log), infos, publish_end, first_chunk,
                        fr_pts, fr_last, keys, off, a)
    return r


# Media time of a frame in nginx-rtmp's MPEG-TS HLS minus its RTMP timestamp:
# ngx_rtmp_mpegts.c writes PTS = RTMP timestamp + NGX_RTMP_HLS_DELAY (63000 / 90 kHz).
TS_PTS_DELAY_MS = 700.0


def hls_origin(frag_starts, keys, off):
    """Which offset o maps hls.js's media time (playback time + initPTS) onto RTMP ms
    (media ms + o): the DASH timeline's (CMAF: the same fMP4 media as the MPD) or minus
    nginx-rtmp's MPEG-TS delay.  Scored by how many buffered fragments start within 50 ms of a source
    keyframe (fragments start on keyframes; audio may lead the keyframe a little).
    Returns (offset, rule, "hits/fragments")."""
    import bisect
    cands = [("same media time as the DASH timeline", off),
             ("MPEG-TS PTS = RTMP timestamp + %.0f ms" % TS_PTS_DELAY_MS, -TS_PTS_DELAY_MS)]

    def score(o):
        n = 0
        for st in frag_starts:
            x = st * 1000.0 + o
            i = bisect.bisect_left(keys, x - 50.0)
            if i < len(keys) and abs(keys[i] - x) <= 50.0:
                n += 1
        return n

    best = max((score(o), -i, label, o) for i, (label, o) in enumerate(cands))
    return best[3], best[2], "%d/%d" % (best[0], len(frag_starts))


def analyse_players(r, name, page, infos, publish_end, first_chunk, fr_pts, fr_last, keys, off, a):
    """Per browser player (page reports tagged with this server): its own live latency and
    the wire-clock latency (the playhead mapped through the relay log), each the median and
    p95 over the last settle_window s of the publish, and its stalls (`waiting` after the
    first `playing`).  Sets r["players"][player] and the flat <player>_* table keys."""
    import bisect
    W = r["warnings"]
    syncs = [e["wall"] for e in page if e.get("ev") == "time_sync"]
    page = [e for e in page if e.get("tag") == name]
    if page:
        # dash.js's default time source (nginx-rtmp's MPD has no UTCTiming), during this pass
        r["time_sync_requests_served"] = sum(1 for w in syncs if page[0]["wall"] <= w <= page[-1]["wall"])
    lo, hi = publish_end - 0.5 - a.settle_window, publish_end - 0.5
    # DASH presentation time -> the track's media time (s): minus Period@start plus
    # presentationTimeOffset of the Period the playhead is in (every Period the poller's MPD
    # showed; a re-plan or republish starts a new one; dash.js and Shaka put segments on
    # the same presentation timeline).
    # Only the live MPD's: once the publish ends, rackcast's MPD turns static and rebased
    # (its presentationTimeOffset the first retained media), which would shift the mapping.
    live_infos = [i for i in infos if i.get("mpd_type") == "dynamic"] or infos
    periods = sorted({(i.get("period_start") or 0.0,
                       (i.get("pto") or 0) / float(i.get("timescale") or 1)) for i in live_infos})

    def dash_p2m(ct):
        starts = [p for p in periods if p[0] <= ct + 1e-3] or periods[:1]
        return -starts[-1][0] + starts[-1][1] if starts else 0.0
    r["players"] = {}
    for pl in a.players:
        mine = [e for e in page if e.get("player") == pl]
        samples = [e for e in mine if e.get("ev") == "sample"]
        playing = [e["wall"] for e in mine if e.get("ev") == "playing"]
        first_playing = min(playing) if playing else None
        waits = [e["wall"] for e in mine if e.get("ev") == "waiting"]
        # Once the publish has ended every player runs dry: not a stall.
        stalls = [w for w in waits if first_playing is not None and first_playing < w <= publish_end]
        own = [e["latency"] for e in samples if e.get("latency") is not None and lo <= e["wall"] <= hi]
        loaded = next((e for e in mine if e.get("ev") == "loaded"), {})
        info = {"version": loaded.get("version"), "manifest": loaded.get("url"),
                "samples": len(samples), "latency_samples_in_window": len(own),
                "first_playing_s": round(first_playing - first_chunk, 2) if first_playing else None,
                "stalls": len(stalls) if first_playing is not None else None,
                "stall_times_s": [round(w - first_chunk, 2) for w in stalls],
                "frames_decoded": max((e.get("frames") or 0 for e in samples), default=0),
                "frames_dropped": max((e.get("dropped") or 0 for e in samples), default=0),
                "errors": [e.get("detail") for e in mine if e.get("ev") == "error"][:5],
                "warnings": len([e for e in mine if e.get("ev") == "warning"]),
                "target_delay_last": next((e.get("target_delay") for e in reversed(samples)
                                           if e.get("target_delay") is not None), None),
                "latency_series": [[round(e["wall"] - first_chunk, 2), round(e["latency"], 3)]
                                   for e in samples if e.get("latency") is not None]}
        r["players"][pl] = info
        label = PLAYER_NAMES[pl]
        if not samples:
            W.append("%s: no samples from the page (did it load?)" % label)
            continue
        if info["errors"]:
            W.append("%s: %d error(s), first: %s" % (label, len(info["errors"]), str(info["errors"][0])[:200]))
        if first_playing is None:
            W.append("%s never started playing" % label)
        else:
            r[pl + "_stalls"] = len(stalls)
        if own:
            r[pl + "_latency_s_median"] = pct(own, 50)
            r[pl + "_latency_s_p95"] = pct(own, 95)
        else:
            W.append("%s reported no live latency in the last %.0f s of the publish" % (label, a.settle_window))
        # Wire clock: the playhead as media time -> RTMP ms -> when that frame crossed the
        # relay (interpolated between the two frames around it), subtracted from when the
        # sample reached the page server.  Needs no player API, no server clock.
        if pl == "hlsjs":
            # hls.js plays on its own timeline: playback time = media time - initPTS.
            inits = sorted((e["wall"], e["init_pts_s"]) for e in mine
                           if e.get("ev") == "init_pts" and e.get("init_pts_s") is not None)
            frags = {}
            for e in mine:
                start = e.get("video_start", e.get("start")) if e.get("ev") == "frag" else None
                if start is not None:
                    i = bisect.bisect_right([w for w, _ in inits], e["wall"]) - 1
                    if i >= 0:
                        frags[e["sn"]] = start + inits[i][1]
            hoff, rule, hits = hls_origin(sorted(frags.values()), keys, off)
            info["media_time_origin"] = {"rule": rule, "fragment_starts_on_source_keyframes": hits}
            if frags and int(hits.split("/")[0]) < 0.8 * len(frags):
                W.append("hls.js: buffered fragment starts do not line up with source keyframes "
                         "(%s); its wire-clock latency may be off" % hits)

            def media_s(e, inits=inits):
                i = bisect.bisect_right([w for w, _ in inits], e["wall"]) - 1
                return None if i < 0 else e["current_time"] + inits[i][1]
        else:
            hoff = off

            def media_s(e):
                return e["current_time"] + dash_p2m(e["current_time"])
        wire, series = [], []
        for e in samples:
            if not e.get("current_time") or e.get("paused"):
                continue
            m = media_s(e)
            if m is None:
                continue
            x = m * 1000.0 + hoff
            i = bisect.bisect_right(fr_pts, x) - 1
            if i < 0 or i + 1 >= len(fr_pts):
                continue
            f0, f1 = fr_pts[i], fr_pts[i + 1]
            w = fr_last[i] + (fr_last[i + 1] - fr_last[i]) * ((x - f0) / (f1 - f0) if f1 > f0 else 0)
            series.append([round(e["wall"] - first_chunk, 2), round(e["wall"] - w, 3)])
            if lo <= e["wall"] <= hi:
                wire.append(e["wall"] - w)
        info["wire_latency_series"] = series
        if wire:
            r[pl + "_wire_latency_s_median"] = pct(wire, 50)
            r[pl + "_wire_latency_s_p95"] = pct(wire, 95)
            if min(wire) < 0:
                W.append("%s: negative wire-clock latency (the media time mapping is off)" % label)
        else:
            W.append("%s: no playhead sample in the last %.0f s maps onto the publish" % (label, a.settle_window))


# ---------------------------------------------------------------- report

def player_keys(res):
    """The figures of a player pass that go into the server's result."""
    return [k for k in res if k in ("players", "player_manifests", "time_sync_requests_served")
            or k.split("_", 1)[0] in PLAYERS]


DASH_VS = "player pass; rackcast manifest-ll.mpd, nginx-rtmp its MPD"
HLS_VS = "player pass; rackcast LL-HLS, nginx-rtmp HLS (MPEG-TS)"
# (label, key, format, target for rackcast (same unit as the label) or None, what it compares)
ROWS = [
    ("segment first bytes lag median ms", "first_bytes_ms_median", "%.0f", None, "measured pass"),
    ("segment first bytes lag p95 ms", "first_bytes_ms_p95", "%.0f", None, "measured pass"),
    ("segment availability lag median ms", "lag_ms_median", "%.0f", None, "measured pass"),
    ("segment availability lag p95 ms", "lag_ms_p95", "%.0f", None, "measured pass"),
    ("segments measured", "segments_measured", "%d", None, "measured pass"),
    ("MPD listing lag median ms", "mpd_listing_lag_ms_median", "%.0f", None, "measured pass"),
    ("MPD listing lag p95 ms", "mpd_listing_lag_ms_p95", "%.0f", None, "measured pass"),
    ("time to first playable segment s", "first_segment_s", "%.2f", None, "measured pass"),
]
for _pl, _target, _vs in (("dashjs", 1.5, DASH_VS), ("shaka", 1.5, DASH_VS), ("hlsjs", 2.0, HLS_VS)):
    _n = PLAYER_NAMES[_pl]
    ROWS += [
        ("%s live latency median s" % _n, _pl + "_latency_s_median", "%.2f", _target, _vs + "; player's own"),
        ("%s live latency p95 s" % _n, _pl + "_latency_s_p95", "%.2f", None, _vs + "; player's own"),
        ("%s latency vs wire clock median s" % _n, _pl + "_wire_latency_s_median", "%.2f", _target, _vs + "; playhead vs relay"),
        ("%s stalls after first playing" % _n, _pl + "_stalls", "%d", None, _vs),
    ]
ROWS += [
    ("first bytes lag at live node median ms", "fed_live_first_bytes_ms_median", "%.0f", None,
     "federation pass (live -> origin -> edge)"),
    ("first bytes lag at edge median ms", "fed_edge_first_bytes_ms_median", "%.0f", None,
     "federation pass, same publish and requests"),
    ("edge adds, per segment, median ms", "edge_adds_ms_median", "%.0f", 100,
     "federation pass: edge minus live node"),
    ("edge adds, per segment, p95 ms", "edge_adds_ms_p95", "%.0f", None,
     "federation pass: edge minus live node"),
    ("segments paired live/edge", "edge_segments_paired", "%d", None, "federation pass"),
    ("server CPU s per media s", "cpu_per_media_s", "%.3f", None, "measured pass"),
    ("publish wall s per media s", "publish_wall_per_media_s", "%.3f", None, "measured pass"),
    ("  same, during the player publish", "player_publish_wall_per_media_s", "%.3f", None, "player pass"),
    ("  same, during the federation publish", "federation_publish_wall_per_media_s", "%.3f", None, "federation pass"),
    ("server peak RSS MiB", "peak_rss_mib", "%.1f", None, "measured pass"),
]


def table(results):
    names = ["rackcast", "nginx-rtmp"]
    by = {r["server"]: r for r in results}
    widths = (10, 11, 7, 12)
    lines = [table_row("figure", ["rackcast", "nginx-rtmp", "ratio", "target"], 40, widths, " ")
             + "  pass / compared"]
    for label, key, fmt, target, vs in ROWS:
        vals = [by.get(n, {}).get(key) for n in names]
        cells = [(fmt % v) if isinstance(v, (int, float)) else ("skipped" if by.get(n, {}).get("skipped") else "n/a")
                 for v, n in zip(vals, names)]
        ratio = "n/a"
        if all(isinstance(v, (int, float)) for v in vals) and vals[1]:
            ratio = "%.2f" % (vals[0] / vals[1])
        mark = ""
        if target is not None:
            met = "" if not isinstance(vals[0], (int, float)) else (" ok" if vals[0] <= target else " over")
            mark = ("<= %g" % target) + met
        lines.append(table_row(label, cells + [ratio, mark], 40, widths, " ") + "  " + vs)
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
    ap.add_argument("--settle-window", type=float, default=20.0,
                    help="player figures: median over the last S s of the player publish")
    ap.add_argument("--no-player", dest="player", action="store_false")
    ap.add_argument("--players", default=",".join(PLAYERS),
                    help="browser players in the player page, comma-separated (%s)" % ",".join(PLAYERS))
    ap.add_argument("--no-federation", dest="federation", action="store_false",
                    help="skip rackcast's live -> origin -> edge pass")
    ap.add_argument("--player-clock", choices=("local", "date"), default="local")
    ap.add_argument("--player-pass", choices=("each", "separate", "same"), default="each",
                    help="run Chromium in a publish of its own per player and server (default), "
                         "in one more publish with every player, or in the measured one")
    ap.add_argument("--player-source", default="640x360",
                    help="the player passes' source picture size (WxH): the browser test's, which "
                         "two cores keep in real time beside Chromium (1280x720 there overloads them)")
    ap.add_argument("--rackcast-bin", default=None)
    ap.add_argument("--rackcast-note", default="")
    ap.add_argument("--node-modules", default=os.path.join(BENCH, "node_modules"))
    ap.add_argument("--stream-key", default="bench")
    ap.add_argument("--cmdline", default=" ".join(sys.argv))
    a = ap.parse_args()
    a.players = [p.strip() for p in a.players.split(",") if p.strip()]
    unknown = [p for p in a.players if p not in PLAYERS]
    if unknown:
        ap.error("unknown player(s) %s (known: %s)" % (",".join(unknown), ",".join(PLAYERS)))
    start_run(a.out)
    results = []
    try:
        page_port = None
        page_log = os.path.join(a.out, "player.jsonl")
        if a.player:
            missing = [p for p in a.players
                       if not os.path.exists(os.path.join(a.node_modules, PLAYER_LIB[p][0], PLAYER_LIB[p][1]))]
            if missing:
                log("%s not found under %s: skipped" % (", ".join(PLAYER_NAMES[p] for p in missing), a.node_modules))
                a.players = [p for p in a.players if p not in missing]
            if not a.players:
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
            for p in PLAYERS:
                d = os.path.dirname(os.path.join(a.node_modules, PLAYER_LIB[p][0], PLAYER_LIB[p][1]))
                extra += ["--lib", "%s=%s" % (p, d)]
            ps = spawn([sys.executable, os.path.join(HERE, "pageserver.py"),
                        "--root", os.path.join(BENCH, "player"),
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
            if a.player and a.player_pass in ("each", "separate") and res.get("ok"):
                # "each": one publish per player, each page with one player (as a viewer's);
                # "separate": one publish, every player in the page.
                groups = [[p] for p in a.players] if a.player_pass == "each" else [list(a.players)]
                passes = []
                for group in groups:
                    one = argparse.Namespace(**vars(a))
                    one.players = group
                    one.source = a.player_source
                    try:
                        suffix = "-player" + ("-" + group[0] if a.player_pass == "each" else "")
                        passes.append(run_server(srv, one, a.out, page_port, page_log, True, suffix))
                    finally:
                        if srv.proc is not None:
                            srv.stop()
                    time.sleep(1.0)
                res["player_pass"] = "a publish per player" if a.player_pass == "each" else "separate publish"
                res["players"] = {}
                for group, pres in zip(groups, passes):
                    for k in player_keys(pres):
                        if k == "players":
                            res["players"].update(pres[k] or {})
                        else:
                            res[k] = pres[k]
                    who = "player pass" + (" (%s)" % PLAYER_NAMES[group[0]] if a.player_pass == "each" else "")
                    res["warnings"] = res.get("warnings", []) + [
                        who + ": " + w for w in pres.get("warnings", [])
                        if any(n in w for n in PLAYER_NAMES.values()) or "player" in w or "real time" in w
                        or "Period" in w]
                # The slowest pass: the one whose publish fell furthest behind real time.
                slowest = max(passes, key=lambda r: r.get("publish_wall_per_media_s") or 0.0)
                res["player_pass_result"] = {k: slowest.get(k) for k in (
                    "lag_ms_median", "lag_ms_p95", "cpu_per_media_s", "first_segment_s",
                    "segments_measured", "publish_wall_per_media_s")}
                res["player_publish_wall_per_media_s"] = slowest.get("publish_wall_per_media_s")
            if s == "rackcast" and a.federation and res.get("ok"):
                fed = Federation(a.rackcast_bin, a.out)
                try:
                    fres = run_server(fed, a, a.out, None, None, False, "-federation")
                finally:
                    fed.stop()
                time.sleep(1.0)
                res["federation_pass"] = {k: fres.get(k) for k in (
                    "ok", "skipped", "server_cmd", "edge_base", "edge", "first_bytes_ms_median",
                    "first_bytes_ms_p95", "segments_measured", "publish_wall_per_media_s", "warnings")}
                edge = fres.get("edge") or {}
                res["fed_live_first_bytes_ms_median"] = fres.get("first_bytes_ms_median")
                res["fed_edge_first_bytes_ms_median"] = edge.get("first_bytes_ms_median")
                res["edge_adds_ms_median"] = edge.get("adds_ms_median")
                res["edge_adds_ms_p95"] = edge.get("adds_ms_p95")
                res["edge_segments_paired"] = edge.get("segments_paired")
                res["federation_publish_wall_per_media_s"] = fres.get("publish_wall_per_media_s")
                if fres.get("skipped"):
                    res["warnings"] = res.get("warnings", []) + ["federation pass skipped: " + fres["skipped"]]
                else:
                    res["warnings"] = res.get("warnings", []) + [
                        "federation pass: " + w for w in fres.get("warnings", [])]
            results.append(res)
    finally:
        stop_all()

    first_pub = next((r.get("publish_cmd") for r in results if r.get("publish_cmd")), "")
    header = ["command: " + a.cmdline,
              "publish: " + re.sub(r"rtmp://\S+", "rtmp://127.0.0.1:RELAY/live/" + a.stream_key, first_pub)]
    if a.player:
        header.append("player passes: the same publish at %s" % a.player_source)
    for r in results:
        if r.get("server_cmd"):
            header.append("%s: %s" % (r["server"], r["server_cmd"]))
        if (r.get("federation_pass") or {}).get("server_cmd"):
            header.append("%s federation: %s" % (r["server"], r["federation_pass"]["server_cmd"]))
        for p, u in (r.get("player_manifests") or {}).items():
            header.append("%s %s: %s" % (r["server"], PLAYER_NAMES[p], u))
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
                        "players": a.players, "federation": a.federation,
                        "player_clock": a.player_clock, "player_pass": a.player_pass,
                        "source": SOURCE, "player_source": a.player_source},
           "table": {label: {r["server"]: r.get(key) for r in results} for label, key, _, _, _ in ROWS},
           "targets": {label: target for label, _, _, target, _ in ROWS if target is not None},
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
