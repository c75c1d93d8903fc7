#!/usr/bin/env python3
"""Soak test of a small rackcast federation on loopback (normally started by bench/soak.sh;
see bench/README.md, "Soak test").

One generated cluster config, three processes (`rackcast run --config FILE --node ID`):
live-1, origin-1, edge-1.  Four ffmpeg publishers loop a pre-encoded 320x240 clip into the
live node (`-stream_loop -1 -re ... -c copy`); one viewer thread per stream polls the
edge's MPD every 500 ms and fetches every newly listed segment of the first video
Representation and of the audio Representation.  Faults are injected on a schedule spread
over the run; RSS of every rackcast process is sampled every 10 s.  At the end: a report
(report.txt) and every raw figure (results.json) in the output directory.

Stdlib only.
"""
import argparse
import http.client
import json
import os
import random
import re
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
import xml.etree.ElementTree as ET
from urllib.parse import urljoin

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import common  # noqa: E402
from common import free_port, log, read_line_with_timeout, spawn, start_run, stop, stop_all  # noqa: E402
from mpd import _base, _children, _fill, _is_video, parse_duration, segment_template  # noqa: E402

common.TAG = "soak"
NODES = (("live-1", "live"), ("origin-1", "origin"), ("edge-1", "edge"))
T0 = time.monotonic()


def now():
    """Seconds since the driver started (every time in the report is on this clock)."""
    return time.monotonic() - T0


# ---------------------------------------------------------------- HTTP

class Http:
    """One keep-alive connection to 127.0.0.1:port, reopened after any error."""

    def __init__(self, port, timeout=3.0):
        self.port = port
        self.timeout = timeout
        self.conn = None

    def get(self, path):
        """(status, body) or (None, error text)."""
        for attempt in (0, 1):
            try:
                if self.conn is None:
                    self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=self.timeout)
                self.conn.request("GET", path)
                r = self.conn.getresponse()
                body = r.read()
                if r.getheader("connection", "").lower() == "close":
                    self.close()
                return r.status, body
            except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError) as e:
                self.close()
                if attempt == 1:
                    return None, "%s: %s" % (type(e).__name__, e)
            except Exception as e:  # noqa: BLE001
                self.close()
                return None, "%s: %s" % (type(e).__name__, e)
        return None, "unreachable"

    def close(self):
        if self.conn is not None:
            try:
                self.conn.close()
            except Exception:  # noqa: BLE001
                pass
        self.conn = None


def get_metrics(port, group):
    """The node's /metrics group (common.metric_group), or {"_status", "_error"}."""
    st, body = Http(port).get("/metrics")
    if st != 200:
        return {"_status": st, "_error": body if isinstance(body, str) else body[:200].decode(errors="replace")}
    return common.metric_group(body.decode(errors="replace") if isinstance(body, bytes) else body, group)


def get_json(port, path):
    st, body = Http(port).get(path)
    if st != 200:
        return {"_status": st, "_error": body if isinstance(body, str) else body[:200].decode(errors="replace")}
    try:
        return json.loads(body)
    except ValueError:
        return {"_status": st, "_error": "not JSON"}


# ---------------------------------------------------------------- MPD

def mpd_segments(text, url_base):
    """Every Period's first video and first audio Representation:
    [{"period", "kind", "rep", "segs": [(number, t, d, url)], "holes": [(n, t_expected, t)]}],
    plus the MPD type."""
    root = ET.fromstring(text)
    base = _base(url_base, root)
    out = []
    for pi, period in enumerate(_children(root, "Period")):
        pid = period.get("id") or "p%d" % pi
        pbase = _base(base, period)
        done = set()
        for aset in _children(period, "AdaptationSet"):
            for rep in _children(aset, "Representation"):
                kind = "video" if _is_video(aset, rep) else "audio"
                if kind in done:
                    continue
                attrs, timeline = segment_template(aset, rep)
                if "media" not in attrs or timeline is None:
                    continue
                done.add(kind)
                rbase = _base(_base(pbase, aset), rep)
                rep_id, bw = rep.get("id", ""), rep.get("bandwidth", "0")
                n = int(attrs.get("startNumber", "1"))
                segs, holes, t = [], [], None
                for s in _children(timeline, "S"):
                    d = int(s.get("d"))
                    if s.get("t") is not None:
                        st_ = int(s.get("t"))
                        if t is not None and st_ != t:
                            holes.append((n, t, st_))
                        t = st_
                    elif t is None:
                        t = 0
                    for _ in range(int(s.get("r", "0")) + 1):
                        url = _fill(attrs["media"], rep_id, bw, n, t)
                        segs.append((n, t, d, urljoin(rbase, url)))
                        t += d
                        n += 1
                out.append({"period": pid, "kind": kind, "rep": rep_id, "segs": segs, "holes": holes,
                            "init": urljoin(rbase, _fill(attrs["initialization"], rep_id, bw))
                            if attrs.get("initialization") else None})
    return root.get("type"), out


# ---------------------------------------------------------------- viewer

class Viewer(threading.Thread):
    """Polls the edge's MPD for one stream every `poll` s; fetches every newly listed segment
    (video and audio); records lost segments, gaps between new video segments and timeline
    errors."""

    def __init__(self, stream, cluster, poll, stop_ev):
        super().__init__(daemon=True, name="viewer-" + stream)
        self.stream = stream
        self.cluster = cluster
        self.poll = poll
        self.stop_ev = stop_ev
        self.http = None
        self.http_port = None
        self.known = {}        # (period, kind, number) -> (t, d)
        self.state = {}        # (period, kind, number) -> "ok" | "pending"
        self.urls = {}         # same key -> url
        self.first_fail = {}   # same key -> (time, status)
        self.max_number = {}   # (period, kind) -> highest number listed so far
        self.video_new = []    # times at which new video segments first appeared
        self.errors = []       # timeline errors
        self.lost = []         # listed segments that never returned 200 while listed
        self.recovered = []    # listed segments that failed at first and returned 200 later
        self.mpd_fail = []     # (time, status/error) of failed MPD fetches
        self.mpd_ok = 0
        self.fetched = {"video": 0, "audio": 0}
        self.init_fetched = set()
        self.periods = []
        self.bytes = 0
        self.hole_seen = set()

    def conn(self):
        port = self.cluster.http_port("edge-1")
        if self.http is None or self.http_port != port:
            if self.http:
                self.http.close()
            self.http, self.http_port = Http(port), port
        return self.http

    def error(self, what, **kw):
        kw.update({"t": round(now(), 2), "what": what})
        self.errors.append(kw)

    def fetch(self, key, url):
        st, body = self.conn().get(url)
        if st == 200:
            self.bytes += len(body)
            self.fetched[key[1]] += 1
            if key in self.first_fail:
                t, why = self.first_fail.pop(key)
                self.recovered.append({"key": list(key), "first_failure_t": round(t, 2), "first_failure": why,
                                       "ok_t": round(now(), 2)})
            self.state[key] = "ok"
            return True
        self.first_fail.setdefault(key, (now(), st if st is not None else body))
        self.state[key] = "pending"
        return False

    def run(self):
        mpd_path = "/live/%s/manifest.mpd" % self.stream
        base = "/live/%s/" % self.stream
        while not self.stop_ev.is_set():
            t_poll = time.monotonic()
            self.step(mpd_path, base)
            self.stop_ev.wait(max(0.0, self.poll - (time.monotonic() - t_poll)))
        self.finish()

    def step(self, mpd_path, base):
        st, body = self.conn().get(mpd_path)
        if st != 200:
            self.mpd_fail.append((round(now(), 2), st if st is not None else str(body)[:120]))
            return
        self.mpd_ok += 1
        try:
            _type, reps = mpd_segments(body.decode(), base)
        except Exception as e:  # noqa: BLE001
            self.error("MPD does not parse", detail=str(e)[:200])
            return
        listed = set()
        for r in reps:
            pk = (r["period"], r["kind"])
            if r["period"] not in self.periods:
                self.periods.append(r["period"])
            for (n, t_exp, t_got) in r["holes"]:
                if (pk, n) not in self.hole_seen:
                    self.hole_seen.add((pk, n))
                    self.error("timeline hole/overlap", period=r["period"], kind=r["kind"], number=n,
                               expected_t=t_exp, t=t_got)
            if r["init"] and pk not in self.init_fetched:
                st_i, _ = self.conn().get(r["init"])
                if st_i == 200:
                    self.init_fetched.add(pk)
            if not r["segs"]:
                continue
            first_n = r["segs"][0][0]
            prev_max = self.max_number.get(pk)
            if prev_max is not None and first_n > prev_max + 1:
                self.error("numbering hole (never listed)", period=r["period"], kind=r["kind"],
                           after=prev_max, next_listed=first_n)
            new_video = False
            for i, (n, t, d, url) in enumerate(r["segs"]):
                key = (r["period"], r["kind"], n)
                listed.add(key)
                old = self.known.get(key)
                if old is None:
                    self.known[key] = (t, d)
                    self.urls[key] = url
                    if prev_max is None or n > prev_max:
                        if r["kind"] == "video":
                            new_video = True
                    self.fetch(key, url)
                elif old != (t, d):
                    self.error("listed segment changed t/d", period=r["period"], kind=r["kind"], number=n,
                               was=list(old), now=[t, d], was_last_listed=(n == prev_max),
                               now_from_end=len(r["segs"]) - 1 - i)
                    self.known[key] = (t, d)
                elif self.state.get(key) == "pending":
                    self.fetch(key, url)
            self.max_number[pk] = max(prev_max or 0, r["segs"][-1][0])
            if new_video:
                self.video_new.append(now())
        # A segment that never returned 200 and is no longer listed: it was lost inside the
        # DVR window (it was listed, hence inside the window, the whole time we tried).
        for key, s in list(self.state.items()):
            if s == "pending" and key not in listed and key[0] in {k[0] for k in listed}:
                self.mark_lost(key, "dropped out of the listing")

    def mark_lost(self, key, why):
        t, first = self.first_fail.pop(key, (None, None))
        self.state[key] = "lost"
        self.lost.append({"key": list(key), "first_failure_t": round(t, 2) if t is not None else None,
                          "first_failure": first, "why": why, "t": round(now(), 2)})

    def finish(self):
        for key, s in list(self.state.items()):
            if s == "pending":
                self.mark_lost(key, "still failing at the end of the run")


# ---------------------------------------------------------------- cluster

class Cluster:
    def __init__(self, binary, out, secret):
        self.binary = binary
        self.out = out
        self.ports = {nid: {"rtmp": free_port(), "http": free_port()} for nid, _ in NODES}
        lines = [
            "# Generated by bench/lib/soak.py: loopback soak federation.",
            "[cluster]",
            'health_interval = "500ms"',
            'health_timeout = "400ms"',
            "fail_after = 2",
            "rise_after = 2",
            'relay_secret = "%s"' % secret,
        ]
        for nid, role in NODES:
            lines += ["", "[[cluster.nodes]]", 'id = "%s"' % nid, 'roles = ["%s"]' % role, 'region = "soak"',
                      'rtmp = "127.0.0.1:%d"' % self.ports[nid]["rtmp"],
                      'http = "127.0.0.1:%d"' % self.ports[nid]["http"]]
        self.config = os.path.join(out, "cluster.toml")
        with open(self.config, "w") as f:
            f.write("\n".join(lines) + "\n")
        self.procs = {}
        self.starts = {nid: [] for nid, _ in NODES}   # (time, pid)
        self.exits = []                               # unexpected exits seen

    def http_port(self, nid):
        return self.ports[nid]["http"]

    def rtmp_port(self, nid):
        return self.ports[nid]["rtmp"]

    def start(self, nid, attempts=5):
        env = dict(os.environ)
        env["RUST_LOG"] = os.environ.get("SOAK_RUST_LOG", "info")
        for attempt in range(attempts):
            logf = open(os.path.join(self.out, "%s.log" % nid), "a")
            logf.write("\n==== soak: start at t=%.2f (attempt %d)\n" % (now(), attempt + 1))
            logf.flush()
            p = spawn([self.binary, "run", "--config", self.config, "--node", nid], name=nid,
                      stdout=subprocess.PIPE, stderr=logf, text=True, env=env)
            m = read_line_with_timeout(p.stdout, r"rackcast ready rtmp=(\S+) http=(\S+)", 30, sink=logf)
            if m:
                self.procs[nid] = p
                self.starts[nid].append((round(now(), 2), p.pid))
                return p
            log("%s printed no ready line (attempt %d; exit %r); see %s.log" % (nid, attempt + 1, p.poll(), nid))
            stop(p, sig=signal.SIGKILL, timeout=3)
            time.sleep(1.0)
        raise RuntimeError("%s did not start" % nid)

    def kill9(self, nid):
        p = self.procs.get(nid)
        if p is None or p.poll() is not None:
            return None
        os.kill(p.pid, signal.SIGKILL)
        p.wait(5)
        return p.pid

    def wait_healthy(self, nid, timeout=15.0):
        end = time.monotonic() + timeout
        h = Http(self.http_port(nid), timeout=1.0)
        while time.monotonic() < end:
            st, _ = h.get("/metrics")  # /cluster/health answers only peers' signed requests
            if st == 200:
                return True
            time.sleep(0.1)
        return False


# ---------------------------------------------------------------- publishers

class Publishers:
    def __init__(self, clip, out, cluster, streams):
        self.clip = clip
        self.out = out
        self.cluster = cluster
        self.streams = streams
        self.procs = {}
        self.expected_down = set()
        self.events = []     # unexpected publisher exits and restarts
        self.kills = {s: [] for s in streams}
        self.republished = {s: [] for s in streams}

    def start(self, s):
        url = "rtmp://127.0.0.1:%d/live/%s" % (self.cluster.rtmp_port("live-1"), s)
        logf = open(os.path.join(self.out, "ffmpeg-%s.log" % s), "a")
        logf.write("\n==== soak: start at t=%.2f\n" % now())
        logf.flush()
        self.procs[s] = spawn(["ffmpeg", "-hide_banner", "-nostdin", "-loglevel", "warning", "-stream_loop", "-1",
                               "-re", "-i", self.clip, "-c", "copy", "-f", "flv", url],
                              name="ffmpeg-" + s, stdin=subprocess.DEVNULL, stdout=logf, stderr=logf)

    def supervise(self):
        """Restarts a publisher that exited without being told to (logged as an event)."""
        for s, p in self.procs.items():
            if s in self.expected_down or p.poll() is None:
                continue
            self.events.append({"t": round(now(), 2), "stream": s, "what": "ffmpeg exited on its own (rc %s); restarted" % p.returncode})
            log("publisher %s exited on its own (rc %s); restarting" % (s, p.returncode))
            self.start(s)


# ---------------------------------------------------------------- faults

def garbage_connect(port, handshake_first):
    """Random bytes to the RTMP port: either from the first byte, or after a valid C0/C1/C2
    handshake.  Returns what happened."""
    t = time.monotonic()
    s = socket.create_connection(("127.0.0.1", port), timeout=5)
    s.settimeout(15)
    sent = 0
    try:
        if handshake_first:
            s.sendall(b"\x03" + os.urandom(1536))
            got = b""
            while len(got) < 3073:
                chunk = s.recv(4096)
                if not chunk:
                    break
                got += chunk
            s.sendall(got[1:1537] if len(got) >= 1537 else os.urandom(1536))
        for _ in range(16):
            s.sendall(os.urandom(4096))
            sent += 4096
        s.shutdown(socket.SHUT_WR)
        while s.recv(65536):
            pass
        res = "server closed after %.2f s (%d random bytes sent)" % (time.monotonic() - t, sent)
    except socket.timeout:
        res = "still open after 15 s (%d random bytes sent)" % sent
    except OSError as e:
        res = "%s after %.2f s (%d random bytes sent)" % (type(e).__name__, time.monotonic() - t, sent)
    finally:
        s.close()
    return res


class SocketBurst:
    """N idle TCP connections to a port, held for `hold` s (in a thread), then closed.
    Records how many the server closed before we did."""

    def __init__(self, port, n, hold, source):
        self.port, self.n, self.hold, self.source = port, n, hold, source
        self.result = None
        self.thread = threading.Thread(target=self.run, daemon=True, name="burst")

    def run(self):
        socks, failed = [], 0
        t0 = time.monotonic()
        for i in range(self.n):
            try:
                s = socket.socket()
                if self.source != "127.0.0.1":
                    s.bind((self.source, 0))
                s.setblocking(False)
                s.connect_ex(("127.0.0.1", self.port))
                socks.append(s)
            except OSError:
                failed += 1
        closed_at = {}
        end = t0 + self.hold
        while time.monotonic() < end:
            for i, s in enumerate(socks):
                if i in closed_at:
                    continue
                try:
                    d = s.recv(4096)
                    if d == b"":
                        closed_at[i] = time.monotonic() - t0
                except BlockingIOError:
                    pass
                except OSError:
                    closed_at[i] = time.monotonic() - t0
            time.sleep(0.2)
        for s in socks:
            s.close()
        ts = sorted(closed_at.values())
        self.result = {"opened": len(socks), "failed_to_open": failed,
                       "closed_by_server_within_hold": len(ts),
                       "server_close_s_min": round(ts[0], 2) if ts else None,
                       "server_close_s_median": round(statistics.median(ts), 2) if ts else None,
                       "server_close_s_max": round(ts[-1], 2) if ts else None,
                       "held_s": round(time.monotonic() - t0, 2)}


def schedule(duration, warmup, burst_hold, restart_delay):
    """(time, name) of each fault, spread over the part of the run after the warm-up, with
    room left at the end for the last one to play out."""
    usable_end = duration - max(burst_hold, 10) - 5
    span = max(usable_end - warmup, 10)
    names = ["kill9-edge", "garbage-connect", "kill9-origin", "kill-publisher", "socket-burst"]
    return [(round(warmup + span * (i + 0.5) / len(names), 1), n) for i, n in enumerate(names)]


# ---------------------------------------------------------------- RSS

def vmrss_kib(pid):
    try:
        with open("/proc/%d/status" % pid) as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def rss_verdict(samples, warmup, tolerance):
    """samples: [(t, kib)] of one process incarnation; t relative to its start.  Median of
    the last third vs the first third of the samples after the warm-up."""
    after = [kib for t, kib in samples if t >= warmup and kib is not None]
    if len(after) < 6:
        return {"verdict": "n/a (%d samples after warm-up, need 6)" % len(after)}
    k = len(after) // 3
    first, last = statistics.median(after[:k]), statistics.median(after[-k:])
    change = (last - first) / first if first else 0.0
    return {"first_third_median_kib": first, "last_third_median_kib": last, "change": round(change, 4),
            "verdict": "flat" if abs(change) <= tolerance else ("GROWING" if change > 0 else "shrinking")}


# ---------------------------------------------------------------- main

def make_clip(out, seconds):
    clip = os.path.join(out, "clip.flv")
    cmd = ["ffmpeg", "-hide_banner", "-nostdin", "-loglevel", "error", "-y",
           "-f", "lavfi", "-i", "testsrc2=size=320x240:rate=30",
           "-f", "lavfi", "-i", "sine=frequency=440:sample_rate=48000", "-t", str(seconds),
           "-c:v", "libx264", "-preset", "veryfast", "-g", "30", "-keyint_min", "30", "-sc_threshold", "0",
           "-bf", "0", "-pix_fmt", "yuv420p", "-b:v", "400k", "-c:a", "aac", "-b:a", "64k", "-ar", "48000",
           "-ac", "2", "-f", "flv", clip]
    t = time.monotonic()
    subprocess.run(cmd, check=True, timeout=300)
    log("clip: %s (%d s, encoded in %.1f s)" % (clip, seconds, time.monotonic() - t))
    return clip, " ".join(cmd)


def scan_logs(out, names):
    """Lines that matter in the rackcast logs: panics, errors, warnings (counted, first few
    of each kind kept)."""
    res = {}
    for nid in names:
        path = os.path.join(out, "%s.log" % nid)
        counts, excerpts = {"panic": 0, "ERROR": 0, "WARN": 0}, []
        try:
            with open(path, errors="replace") as f:
                for line in f:
                    plain = re.sub(r"\x1b\[[0-9;]*m", "", line.rstrip())
                    for k in ("panic", "ERROR", "WARN"):
                        if k in plain:
                            counts[k] += 1
                            if len(excerpts) < 25 and (k != "WARN" or counts[k] <= 10):
                                excerpts.append(plain[:300])
                            break
        except OSError:
            pass
        res[nid] = {"counts": counts, "excerpts": excerpts}
    return res


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--rackcast-bin", required=True)
    ap.add_argument("--duration", type=float, default=600)
    ap.add_argument("--streams", type=int, default=4)
    ap.add_argument("--clip-seconds", type=int, default=60)
    ap.add_argument("--poll", type=float, default=0.5)
    ap.add_argument("--rss-interval", type=float, default=10.0)
    ap.add_argument("--warmup", type=float, default=None, help="default min(60, duration/3)")
    ap.add_argument("--rss-tolerance", type=float, default=0.15)
    ap.add_argument("--restart-delay", type=float, default=2.0, help="kill -9 to restart of edge/origin")
    ap.add_argument("--publisher-restart", type=float, default=3.0)
    ap.add_argument("--burst", type=int, default=200)
    ap.add_argument("--burst-hold", type=float, default=20.0)
    ap.add_argument("--burst-from", default="127.0.0.1",
                    help="source address of the burst sockets (a loopback address; 127.0.0.1 is a "
                         "federation peer's address here, so the per-address limit does not apply to it)")
    ap.add_argument("--gap-report", type=float, default=3.0, help="list gaps longer than this (s)")
    ap.add_argument("--cmdline", default="")
    ap.add_argument("--rackcast-note", default="", help="where the binary under test came from")
    a = ap.parse_args()

    out = a.out
    start_run(out)
    warmup = a.warmup if a.warmup is not None else min(60.0, a.duration / 3)
    streams = ["soak%d" % (i + 1) for i in range(a.streams)]
    secret = "soak-loopback-" + os.urandom(12).hex()
    results = {"cmdline": a.cmdline, "rackcast": a.rackcast_note or a.rackcast_bin, "args": vars(a), "warmup_s": warmup, "streams": streams}
    stop_ev = threading.Event()
    viewers = []
    fault_log = []
    rss = []   # {"t", node, pid, kib}

    def fault(name, **kw):
        kw.update({"t": round(now(), 2), "fault": name})
        fault_log.append(kw)
        log("fault t=%.1f %s %s" % (kw["t"], name, {k: v for k, v in kw.items() if k not in ("t", "fault")}))

    try:
        clip, clip_cmd = make_clip(out, a.clip_seconds)
        results["clip_command"] = clip_cmd
        cluster = Cluster(a.rackcast_bin, out, secret)
        results["ports"] = cluster.ports
        for nid, _ in NODES:
            cluster.start(nid)
        for nid, _ in NODES:
            if not cluster.wait_healthy(nid):
                raise RuntimeError("%s /metrics did not answer 200" % nid)
        log("federation up: %s" % ", ".join("%s http=%d rtmp=%d" % (n, p["http"], p["rtmp"]) for n, p in cluster.ports.items()))
        pubs = Publishers(clip, out, cluster, streams)
        for s in streams:
            pubs.start(s)
        t_pub = now()
        for s in streams:
            v = Viewer(s, cluster, a.poll, stop_ev)
            v.start()
            viewers.append(v)

        run_end = a.duration
        faults = schedule(a.duration, warmup, a.burst_hold, a.restart_delay)
        results["fault_schedule"] = faults
        log("fault schedule: %s" % ", ".join("%s at %.0f s" % (n, t) for t, n in faults))
        pending = list(faults)
        victim = streams[1 % len(streams)]
        restarts = []     # (time, action)
        burst = None
        next_rss = now()
        while now() < run_end:
            t = now()
            if t >= next_rss:
                for nid, p in cluster.procs.items():
                    if p.poll() is None:
                        smp = {"t": round(t, 1), "node": nid, "pid": p.pid, "kib": vmrss_kib(p.pid)}
                        if nid != "live-1":
                            # the tier cache fills by design (segment_ttl 1h, 512 MiB): keep
                            # its size next to the RSS so growth can be told apart from a leak
                            tm = get_metrics(cluster.http_port(nid), "tier")
                            smp["cache_kib"] = tm.get("bytes_cached", 0) // 1024 if "bytes_cached" in tm else None
                        rss.append(smp)
                next_rss += a.rss_interval
            while pending and t >= pending[0][0]:
                _, name = pending.pop(0)
                if name in ("kill9-edge", "kill9-origin"):
                    nid = "edge-1" if name == "kill9-edge" else "origin-1"
                    pid = cluster.kill9(nid)
                    fault(name, pid=pid)
                    restarts.append((now() + a.restart_delay, "restart", nid))
                elif name == "kill-publisher":
                    pubs.expected_down.add(victim)
                    p = pubs.procs[victim]
                    p.kill()
                    p.wait(5)
                    pubs.kills[victim].append(now())
                    fault(name, stream=victim, pid=p.pid, signal="SIGKILL")
                    restarts.append((now() + a.publisher_restart, "republish", victim))
                elif name == "socket-burst":
                    before = get_metrics(cluster.http_port("live-1"), "ingest")
                    burst = SocketBurst(cluster.rtmp_port("live-1"), a.burst, a.burst_hold, a.burst_from)
                    burst.before = before
                    burst.thread.start()
                    fault(name, sockets=a.burst, hold_s=a.burst_hold, source=a.burst_from)
                    restarts.append((now() + a.burst_hold + 1.0, "burst-done", None))
                elif name == "garbage-connect":
                    port = cluster.rtmp_port("live-1")
                    r1 = garbage_connect(port, False)
                    r2 = garbage_connect(port, True)
                    fault(name, raw=r1, after_handshake=r2)
            for item in list(restarts):
                if now() < item[0]:
                    continue
                restarts.remove(item)
                _, action, who = item
                if action == "restart":
                    t_r = now()
                    p = cluster.start(who)
                    healthy = cluster.wait_healthy(who)
                    fault("restarted-" + who, pid=p.pid, ready_after_s=round(now() - t_r, 2), healthy=healthy)
                elif action == "republish":
                    pubs.start(who)
                    pubs.republished[who].append(now())
                    pubs.expected_down.discard(who)
                    fault("republished", stream=who, pid=pubs.procs[who].pid)
                elif action == "burst-done":
                    burst.thread.join(10)
                    after = get_metrics(cluster.http_port("live-1"), "ingest")
                    delta = {k: after[k] - burst.before.get(k, 0) for k in after
                             if isinstance(after.get(k), int) and isinstance(burst.before.get(k), int)}
                    fault("socket-burst-done", result=burst.result, ingest_metrics_delta=delta)
            pubs.supervise()
            for nid, p in cluster.procs.items():
                if p.poll() is not None and not any(r[2] == nid for r in restarts) \
                        and not any(e.get("pid") == p.pid for e in cluster.exits):
                    cluster.exits.append({"t": round(now(), 2), "node": nid, "pid": p.pid, "rc": p.returncode})
                    log("UNEXPECTED: %s (pid %d) exited with %s" % (nid, p.pid, p.returncode))
            time.sleep(0.1)

        # ------------------------------------------------------------ end of the run
        t_end = now()
        stop_ev.set()
        for v in viewers:
            v.join(10)
        final = {}
        for nid, _ in NODES:
            port = cluster.http_port(nid)
            final[nid] = {group: get_metrics(port, group) for group in ("ingest", "http_edge", "tier")}
            final[nid].update({path: get_json(port, path) for path in ("/api/v1/cluster", "/live")})
        final["streams"] = {s: get_json(cluster.http_port("live-1"), "/live/%s" % s) for s in streams}
        # stop: publishers first, then the nodes (SIGTERM; exit status recorded)
        for s, p in pubs.procs.items():
            stop(p, timeout=5, name="ffmpeg-" + s)
        stops = {}
        for nid, _ in reversed(NODES):
            p = cluster.procs[nid]
            alive = p.poll() is None
            t_s = time.monotonic()
            stop(p, timeout=15, name=nid)
            stops[nid] = {"was_alive": alive, "rc": p.returncode, "stop_s": round(time.monotonic() - t_s, 2)}

        # ------------------------------------------------------------ figures
        per_stream = {}
        for v in viewers:
            republished = pubs.republished.get(v.stream, [])
            times = v.video_new
            gaps = []
            for a_, b_ in zip(times, times[1:] + [t_end]):
                # The publisher's gap: the one the republish falls in (the old Period's
                # last segment is flushed after the kill, the new Period starts after it).
                expected = any(a_ <= k < b_ for k in republished)
                near = [f["fault"] + "@%.1f" % f["t"] for f in fault_log
                        if a_ - 1.0 <= f["t"] < b_ and not f["fault"].startswith(("restarted", "republished", "socket-burst-done"))]
                gaps.append({"from": round(a_, 2), "to": round(b_, 2), "s": round(b_ - a_, 2),
                             "expected_publisher_restart": expected, "faults": near})
            unexpected = [g for g in gaps if not g["expected_publisher_restart"]]
            exp = [g for g in gaps if g["expected_publisher_restart"]]
            per_stream[v.stream] = {
                "lost_segments": len(v.lost),
                "lost": v.lost,
                "recovered_after_failure": len(v.recovered),
                "recovered": v.recovered[:50],
                "longest_gap_s": max((g["s"] for g in unexpected), default=None),
                "longest_gap": max(unexpected, key=lambda g: g["s"], default=None),
                "expected_publisher_restart_gap_s": max((g["s"] for g in exp), default=None),
                "gaps_over_threshold": [g for g in gaps if g["s"] > a.gap_report],
                "timeline_errors": len(v.errors),
                "timeline_error_list": v.errors[:50],
                "segments_fetched": v.fetched,
                "bytes": v.bytes,
                "mpd_ok": v.mpd_ok,
                "mpd_failures": len(v.mpd_fail),
                "mpd_failure_samples": v.mpd_fail[:20],
                "periods": v.periods,
                "first_video_segment_t": round(times[0], 2) if times else None,
            }
        rss_by = {}
        for nid, _ in NODES:
            incs = []
            for (t_start, pid) in cluster.starts[nid]:
                samples = [(r["t"] - t_start, r["kib"]) for r in rss if r["pid"] == pid]
                inc = {"pid": pid, "started_t": t_start, "samples": len(samples),
                       **rss_verdict(samples, warmup, a.rss_tolerance)}
                net = [(r["t"] - t_start, r["kib"] - r["cache_kib"]) for r in rss
                       if r["pid"] == pid and r.get("cache_kib") is not None and r["kib"]]
                if net:
                    inc["minus_cache"] = rss_verdict(net, warmup, a.rss_tolerance)
                incs.append(inc)
            rss_by[nid] = incs
        results.update({
            "published_at_t": round(t_pub, 2), "ended_at_t": round(t_end, 2),
            "per_stream": per_stream, "faults": fault_log, "rss_samples": rss, "rss": rss_by,
            "final_metrics": final, "stops": stops, "unexpected_exits": cluster.exits,
            "publisher_events": pubs.events, "log_scan": scan_logs(out, [n for n, _ in NODES]),
            "node_starts": cluster.starts,
        })
        with open(os.path.join(out, "results.json"), "w") as f:
            json.dump(results, f, indent=1, default=str)
        report = render(results, a)
        with open(os.path.join(out, "report.txt"), "w") as f:
            f.write(report)
        print(report)
        bad = any(ps["lost_segments"] or ps["timeline_errors"] for ps in per_stream.values()) or cluster.exits
        return 1 if bad else 0
    finally:
        stop_ev.set()
        stop_all(timeout=5)


def render(r, a):
    L = []
    L.append("rackcast soak: %s" % r["cmdline"])
    L.append("binary: %s" % r["rackcast"])
    L.append("duration %.0f s, %d streams, warm-up %.0f s, viewer MPD poll %.1f s, ports %s" % (
        a.duration, len(r["streams"]), r["warmup_s"], a.poll,
        " ".join("%s=%d/%d" % (n, p["http"], p["rtmp"]) for n, p in r["ports"].items())))
    L.append("")
    L.append("per stream (viewer at edge-1)        lost  longest gap s (fault nearby)        publisher-restart gap s  timeline err  segs v/a   MPD fails  periods")
    for s, ps in r["per_stream"].items():
        lg = ps["longest_gap"]
        lg_txt = "%.2f (%s)" % (lg["s"], ",".join(lg["faults"]) or "none") if lg else "-"
        exp = "%.2f" % ps["expected_publisher_restart_gap_s"] if ps["expected_publisher_restart_gap_s"] is not None else "-"
        L.append("  %-34s %4d  %-35s %23s  %12d  %4d/%-4d  %9d  %7d" % (
            s, ps["lost_segments"], lg_txt, exp, ps["timeline_errors"], ps["segments_fetched"]["video"],
            ps["segments_fetched"]["audio"], ps["mpd_failures"], len(ps["periods"])))
    L.append("")
    L.append("gaps over %.1f s (wall time between new video segments at the edge):" % a.gap_report)
    for s, ps in r["per_stream"].items():
        for g in ps["gaps_over_threshold"]:
            L.append("  %-8s %7.1f -> %7.1f  %6.2f s  %s%s" % (s, g["from"], g["to"], g["s"],
                     "EXPECTED (publisher restart) " if g["expected_publisher_restart"] else "",
                     ",".join(g["faults"]) or "no fault nearby"))
    for s, ps in r["per_stream"].items():
        if ps["lost"]:
            L.append("lost segments %s: %s" % (s, json.dumps(ps["lost"][:10])))
        if ps["timeline_error_list"]:
            corrected = [e for e in ps["timeline_error_list"] if e["what"] == "listed segment changed t/d"
                         and e.get("was_last_listed") and e["was"][0] == e["now"][0]]
            L.append("timeline errors %s: %d, of which %d = the newest listed segment's d rewritten once the next "
                     "segment arrived (t unchanged; d %s)" % (
                         s, ps["timeline_errors"], len(corrected),
                         ", ".join("%d->%d" % (e["was"][1], e["now"][1]) for e in corrected[:6])))
            L.append("    first ones: %s" % json.dumps(ps["timeline_error_list"][:4]))
        if ps["recovered_after_failure"]:
            L.append("segments that failed at first and returned 200 on a later poll, %s: %d" % (s, ps["recovered_after_failure"]))
    L.append("")
    L.append("RSS MiB every %.0f s (t = s since start; '-' = not running):" % a.rss_interval)
    nodes = [n for n in r["rss"]]
    L.append("  %7s" % "t" + "".join("%12s" % n for n in nodes) + "   (tier cache MiB: origin-1 edge-1)")
    by_t = {}
    for smp in r["rss_samples"]:
        by_t.setdefault(round(smp["t"] / a.rss_interval), {})[smp["node"]] = smp
    for k in sorted(by_t):
        row = by_t[k]
        t = min(x["t"] for x in row.values())
        L.append("  %7.0f" % t + "".join("%12s" % ("%.1f" % (row[n]["kib"] / 1024) if n in row and row[n]["kib"] else "-") for n in nodes)
                 + "   " + " ".join("%6s" % ("%.1f" % (row[n]["cache_kib"] / 1024) if n in row and row[n].get("cache_kib") is not None else "-")
                                    for n in ("origin-1", "edge-1")))
    L.append("RSS verdict (median of the last third vs the first third of each process's samples after %.0f s warm-up, tolerance %.0f%%):" % (r["warmup_s"], a.rss_tolerance * 100))
    for n, incs in r["rss"].items():
        for inc in incs:
            if "change" in inc:
                L.append("  %-9s pid %-7d started t=%-7.1f %-8s %.1f -> %.1f MiB (%+.1f%%, %d samples)" % (
                    n, inc["pid"], inc["started_t"], inc["verdict"], inc["first_third_median_kib"] / 1024,
                    inc["last_third_median_kib"] / 1024, inc["change"] * 100, inc["samples"]))
            else:
                L.append("  %-9s pid %-7d started t=%-7.1f %s" % (n, inc["pid"], inc["started_t"], inc["verdict"]))
            mc = inc.get("minus_cache")
            if mc and "change" in mc:
                L.append("  %-9s   RSS minus tier cache bytes: %-8s %.1f -> %.1f MiB (%+.1f%%)" % (
                    "", mc["verdict"], mc["first_third_median_kib"] / 1024, mc["last_third_median_kib"] / 1024, mc["change"] * 100))
    L.append("")
    L.append("fault log:")
    for f in r["faults"]:
        rest = {k: v for k, v in f.items() if k not in ("t", "fault")}
        L.append("  t=%7.2f  %-22s %s" % (f["t"], f["fault"], json.dumps(rest)))
    for e in r["publisher_events"]:
        L.append("  t=%7.2f  publisher event        %s %s" % (e["t"], e["stream"], e["what"]))
    for e in r["unexpected_exits"]:
        L.append("  t=%7.2f  UNEXPECTED EXIT        %s pid %s rc %s" % (e["t"], e["node"], e["pid"], e["rc"]))
    L.append("")
    L.append("counters at the end (GET /metrics: rackcast_ingest_*, rackcast_http_edge_*, rackcast_tier_*):")
    for n in ("live-1", "origin-1", "edge-1"):
        fm = r["final_metrics"].get(n, {})
        L.append("  %s ingest %s" % (n, json.dumps(fm.get("ingest"))))
        L.append("  %s http   %s" % (n, json.dumps(fm.get("http_edge"))))
        if n != "live-1":
            L.append("  %s tier   %s" % (n, json.dumps(fm.get("tier"))))
    for s, st in r["final_metrics"].get("streams", {}).items():
        health = st.get("status", {}).get("health") if isinstance(st.get("status"), dict) else st.get("_error")
        L.append("  stream %s health at the end: %s" % (s, json.dumps(health)))
    L.append("")
    L.append("shutdown (SIGTERM): %s" % json.dumps(r["stops"]))
    L.append("log scan (lines with panic / ERROR / WARN):")
    for n, sc in r["log_scan"].items():
        L.append("  %s %s" % (n, json.dumps(sc["counts"])))
        for e in sc["excerpts"][:12]:
            L.append("      " + e)
    return "\n".join(L) + "\n"


if __name__ == "__main__":
    sys.exit(main())
