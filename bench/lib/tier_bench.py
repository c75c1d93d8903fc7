#!/usr/bin/env python3
"""Caching-tier benchmark: rackcast edge vs Varnish vs nginx proxy_cache, all in front of
the same origin (tier_origin.py), in one run. Normally started by bench/tier.sh; see
bench/README.md, "Caching tier".

Figure 1 (hits): each edge is warmed with one GET of its own 200 KB segment, then
`wrk -tT -cC -dDs --latency` runs against it, one edge after another; the same segment
as a static file served by nginx is the reference.

Figure 2 (coalescing): per edge and repetition, a segment number nobody asked for yet,
VIEWERS connections opened first, then one GET each written in one loop; reports how many
requests the origin got for that path and each viewer's latency beyond the origin's delay.
"""
import argparse
import asyncio
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
BENCH = os.path.dirname(HERE)
sys.path.insert(0, HERE)
from tier_origin import SEGMENT_BYTES, segment_body  # noqa: E402
import common  # noqa: E402
from common import (CHILDREN, CLK_TCK, TEMPDIRS, free_port, log, pct, proc_tree,  # noqa: E402
                    read_line_with_timeout, spawn, start_run, stat_fields, stop_all, table_row)

common.TAG = "tier"
EDGE_NAMES = ("rackcast", "varnish", "nginx")
STREAM_PATH = "/live/bench/720p/s-%d.m4s"


def cpu_seconds(pids):
    total = 0
    for p in pids:
        try:
            rest = stat_fields(p)
        except OSError:
            continue
        total += int(rest[11]) + int(rest[12])
    return total / CLK_TCK


def rss_mib(pids):
    total = 0
    for p in pids:
        try:
            with open("/proc/%d/status" % p) as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1])
        except OSError:
            pass
    return total / 1024.0


def machine_busy_seconds():
    """CPU seconds every process on the machine spent busy (from /proc/stat)."""
    with open("/proc/stat") as f:
        cpu = f.readline().split()[1:]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(x) for x in cpu[:8])
    return (user + nice + system + irq + softirq + steal) / CLK_TCK


def own_seconds():
    """CPU seconds of this benchmark: this process, its reaped children (wrk) and the
    process trees of everything it started and still runs."""
    rest = stat_fields("self")
    total = sum(int(x) for x in rest[11:15]) / CLK_TCK
    for _, p in CHILDREN:
        if p.poll() is None:
            total += cpu_seconds(proc_tree(p.pid))
    return total


def busy_sample():
    return {"t": time.monotonic(), "machine": machine_busy_seconds(), "own": own_seconds()}


def others_cores(s0, s1):
    """Average cores used by processes outside this benchmark between two samples."""
    wall = s1["t"] - s0["t"]
    if wall <= 0:
        return None
    return max(0.0, ((s1["machine"] - s0["machine"]) - (s1["own"] - s0["own"])) / wall)


def http_get(port, path, timeout=5.0):
    """(status, headers dict lower-case, body) or (None, {}, error text)."""
    req = urllib.request.Request("http://127.0.0.1:%d%s" % (port, path))
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(req, timeout=timeout) as r:
            return r.status, {k.lower(): v for k, v in r.headers.items()}, r.read()
    except urllib.error.HTTPError as e:
        return e.code, {k.lower(): v for k, v in e.headers.items()}, e.read()
    except Exception as e:  # noqa: BLE001
        return None, {}, str(e)


def wait_http(port, path, timeout, proc=None):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if proc is not None and proc.poll() is not None:
            return False
        st, _, _ = http_get(port, path, timeout=1.0)
        if st == 200:
            return True
        time.sleep(0.1)
    return False


def origin_counts(port):
    st, _, body = http_get(port, "/counts")
    if st != 200:
        raise RuntimeError("origin /counts answered %r" % (st,))
    return json.loads(body)


# ---------------------------------------------------------------- servers

class Origin:
    def __init__(self, out, delay_ms):
        self.log = open(os.path.join(out, "origin.log"), "w")
        # The rackcast edge's health probes are signed and want signed answers: the origin
        # signs them with the cluster file's relay secret.
        with open(os.path.join(BENCH, "tier", "rackcast-cluster.toml.in")) as f:
            secret = re.search(r'^relay_secret = "([^"]+)"', f.read(), re.M).group(1)
        self.proc = spawn([sys.executable, os.path.join(HERE, "tier_origin.py"), "--port", "0",
                           "--id", "origin-1", "--delay-ms", str(delay_ms), "--secret", secret], name="origin",
                          stdout=subprocess.PIPE, stderr=self.log, text=True)
        m = read_line_with_timeout(self.proc.stdout, r"ready port=(\d+)", 10)
        if not m:
            raise RuntimeError("origin did not start (see origin.log)")
        self.port = int(m.group(1))


class Edge:
    name = "?"
    port = None
    proc = None
    note = ""

    def pids(self):
        return proc_tree(self.proc.pid) if self.proc and self.proc.poll() is None else []

    def alive(self):
        return self.proc is not None and self.proc.poll() is None


class RackcastEdge(Edge):
    name = "rackcast"

    def __init__(self, binary, out, origin_port):
        self.out = out
        self.port = free_port()
        ports = {"EDGE_PORT": self.port, "EDGE_RTMP_PORT": free_port(), "ORIGIN_PORT": origin_port,
                 "ORIGIN_RTMP_PORT": free_port(), "LIVE_HTTP_PORT": free_port(), "LIVE_RTMP_PORT": free_port()}
        with open(os.path.join(BENCH, "tier", "rackcast-cluster.toml.in")) as f:
            text = f.read()
        for k, v in ports.items():
            text = text.replace("@%s@" % k, str(v))
        self.config = os.path.join(out, "rackcast-cluster.toml")
        with open(self.config, "w") as f:
            f.write(text)
        self.ports = ports
        self.logpath = os.path.join(out, "rackcast.log")
        self.log = open(self.logpath, "w")
        self.cmd = [binary, "run", "--config", self.config, "--node", "edge-1"]
        env = dict(os.environ)
        env.setdefault("RUST_LOG", "info")
        self.proc = spawn(self.cmd, name="rackcast", stdout=subprocess.PIPE, stderr=self.log, text=True, env=env)
        m = read_line_with_timeout(self.proc.stdout, r"rackcast ready rtmp=(\S+) http=(\S+)", 30, sink=self.log)
        if not m:
            raise RuntimeError("rackcast edge printed no ready line within 30 s (see %s)" % self.logpath)
        # /cluster/health answers only peers' signed requests: any route shows it serves.
        if not wait_http(self.port, "/metrics", 10, self.proc):
            raise RuntimeError("rackcast edge /metrics did not answer 200")

    def metrics(self):
        st, _, body = http_get(self.port, "/metrics")
        return common.metric_group(body.decode(errors="replace"), "tier") if st == 200 else None

    def health_check(self, wait_s=2.5):
        """The dead live-1 must go down in the edge's view without harming it."""
        time.sleep(wait_s)
        self.log.flush()
        with open(self.logpath) as f:
            text = f.read()
        live_down = bool(re.search(r"peer down.*live-1|live-1.*peer down", text))
        origin_down = bool(re.search(r"peer down.*origin-1|origin-1.*peer down", text))
        st, _, body = http_get(self.port, "/metrics")
        body = b"(the /metrics document)" if st == 200 else body
        return {"live_1_marked_down": live_down, "origin_1_marked_down": origin_down,
                "edge_health_status": st, "edge_health_body": body.decode(errors="replace") if st else None,
                "alive": self.alive()}


class VarnishEdge(Edge):
    name = "varnish"

    def __init__(self, out, origin_port, storage_mb):
        self.port = free_port()
        self.workdir = tempfile.mkdtemp(prefix="tier-varnish-")
        TEMPDIRS.append(self.workdir)
        self.logpath = os.path.join(out, "varnish.log")
        self.log = open(self.logpath, "w")
        self.cmd = ["varnishd", "-F", "-a", "127.0.0.1:%d" % self.port, "-b", "127.0.0.1:%d" % origin_port,
                    "-s", "malloc,%dm" % storage_mb, "-n", os.path.join(self.workdir, "n"), "-T", "none"]
        self.proc = spawn(self.cmd, name="varnish", stdout=self.log, stderr=subprocess.STDOUT)
        if not wait_http(self.port, "/cluster/health", 20, self.proc):
            raise RuntimeError("varnishd did not answer within 20 s (see %s)" % self.logpath)


class NginxEdge(Edge):
    """nginx proxy_cache edge; the same process serves the static reference on a second port."""
    name = "nginx"

    def __init__(self, out, origin_port, static_segment):
        self.port = free_port()
        self.static_port = free_port()
        self.prefix = tempfile.mkdtemp(prefix="tier-nginx-")
        TEMPDIRS.append(self.prefix)
        for d in ("logs", "tmp", "cache", "static/live/bench/720p"):
            os.makedirs(os.path.join(self.prefix, d), exist_ok=True)
        self.static_segment = n = static_segment
        with open(os.path.join(self.prefix, "static", STREAM_PATH.lstrip("/") % n), "wb") as f:
            f.write(segment_body(n))
        with open(os.path.join(BENCH, "tier", "nginx.conf.in")) as f:
            text = f.read()
        for k, v in {"PREFIX": self.prefix, "EDGE_PORT": self.port, "STATIC_PORT": self.static_port,
                     "ORIGIN_PORT": origin_port}.items():
            text = text.replace("@%s@" % k, str(v))
        conf = os.path.join(self.prefix, "nginx.conf")
        with open(conf, "w") as f:
            f.write(text)
        shutil.copy(conf, os.path.join(out, "nginx.conf"))
        self.logpath = os.path.join(out, "nginx.log")
        self.log = open(self.logpath, "w")
        self.cmd = ["nginx", "-p", self.prefix, "-e", os.path.join(self.prefix, "logs", "error.log"), "-c", conf]
        self.proc = spawn(self.cmd, name="nginx", stdout=self.log, stderr=subprocess.STDOUT)
        if not wait_http(self.port, "/cluster/health", 10, self.proc):
            raise RuntimeError("nginx did not answer within 10 s (see %s)" % self.logpath)

    def copy_error_log(self, out):
        try:
            shutil.copy(os.path.join(self.prefix, "logs", "error.log"), os.path.join(out, "nginx-error.log"))
        except OSError:
            pass


def hit_header(name, headers):
    """What the edge says about a response: a hit or not (None when it does not say)."""
    if name == "rackcast":
        return headers.get("x-cache-status")
    if name == "nginx":
        return headers.get("x-cache-status")
    if name == "varnish":
        xv = headers.get("x-varnish", "")
        return "hit" if len(xv.split()) == 2 else ("miss" if xv else None)
    return None


# ---------------------------------------------------------------- figure 1: wrk

UNITS = {"us": 1e-3, "ms": 1.0, "s": 1000.0, "m": 60000.0}


def parse_wrk(text):
    out = {}
    m = re.search(r"Requests/sec:\s+([\d.]+)", text)
    out["req_per_s"] = float(m.group(1)) if m else None
    for q in ("50", "75", "90", "99"):
        m = re.search(r"^\s+%s%%\s+([\d.]+)(us|ms|s|m)\s*$" % q, text, re.M)
        out["lat_p%s_ms" % q] = float(m.group(1)) * UNITS[m.group(2)] if m else None
    m = re.search(r"(\d+) requests in ([\d.]+)(\w+), ([\d.]+)(\w+) read", text)
    out["requests"] = int(m.group(1)) if m else None
    m = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    out["non_2xx"] = int(m.group(1)) if m else 0
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
    out["socket_errors"] = sum(int(x) for x in m.groups()) if m else 0
    return out


def run_wrk(a, port, path, pids, outdir, label):
    url = "http://127.0.0.1:%d%s" % (port, path)
    cmd = ["wrk", "-t%d" % a.wrk_threads, "-c%d" % a.wrk_connections, "-d%ds" % a.wrk_duration, "--latency", url]
    cpu0 = cpu_seconds(pids)
    t0 = time.monotonic()
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=a.wrk_duration + 30)
        text = r.stdout + r.stderr
    except subprocess.TimeoutExpired as e:
        text = "wrk timed out\n%s" % (e.stdout or "")
    wall = time.monotonic() - t0
    cpu = cpu_seconds(pids) - cpu0
    with open(os.path.join(outdir, "wrk-%s.txt" % label), "w") as f:
        f.write(" ".join(cmd) + "\n" + text)
    res = parse_wrk(text)
    res["cmd"] = " ".join(cmd)
    res["server_cpu_cores"] = round(cpu / wall, 3) if wall > 0 else None
    res["server_rss_mib"] = round(rss_mib(pids), 1)
    return res


def figure_hits(a, origin, edges, static, outdir):
    results = {}
    targets = [(e.name, e.port, e.pids) for e in edges]
    if static is not None:
        targets.append(("static", static.static_port, static.pids))
    for i, (name, port, pids) in enumerate(targets):
        n = static.static_segment if name == "static" else a.hit_segment + EDGE_NAMES.index(name)
        path = STREAM_PATH % n
        res = {"path": path}
        warm = []
        for _ in range(2):  # the warming GET, then a check that the next one is a hit
            st, hdr, body = http_get(port, path, timeout=10)
            warm.append({"status": st, "bytes": len(body) if st else 0, "cache": hit_header(name, hdr)})
        res["warm"] = warm
        if warm[0]["status"] != 200 or warm[0]["bytes"] != SEGMENT_BYTES:
            res["error"] = "warming GET failed: %r" % (warm[0],)
            log("%s: hit figure skipped: %s" % (name, res["error"]))
            results[name] = res
            continue
        before = origin_counts(origin.port)["paths"].get(path, 0)
        log("%s: wrk %ss against %s" % (name, a.wrk_duration, path))
        res.update(run_wrk(a, port, path, pids(), outdir, name))
        after = origin_counts(origin.port)["paths"].get(path, 0)
        res["origin_requests_total"] = after
        res["origin_requests_during_wrk"] = after - before
        log("%s: %.0f req/s, p50 %.2f ms, p99 %.2f ms, origin requests during wrk %d" % (
            name, res["req_per_s"] or 0, res["lat_p50_ms"] or 0, res["lat_p99_ms"] or 0, after - before))
        results[name] = res
        time.sleep(1.0)
    return results


# ---------------------------------------------------------------- figure 2: swarm

class Viewer(asyncio.Protocol):
    def __init__(self):
        self.tr = None
        self.done = asyncio.get_running_loop().create_future()
        self.head = bytearray()
        self.hdr = None
        self.status = None
        self.clen = None
        self.chunked = False
        self.tail = b""
        self.got = 0
        self.t_send = self.t_hdr = self.t_done = None
        self.error = None
        self.cache = None

    def connection_made(self, tr):
        self.tr = tr

    def _finish(self, error=None):
        if not self.done.done():
            self.t_done = time.monotonic()
            self.error = error
            self.done.set_result(None)
            if self.tr is not None:
                self.tr.close()

    def data_received(self, data):
        if self.hdr is None:
            self.head += data
            i = self.head.find(b"\r\n\r\n")
            if i < 0:
                return
            self.t_hdr = time.monotonic()
            lines = bytes(self.head[:i]).decode("latin-1").split("\r\n")
            parts = lines[0].split(" ", 2)
            self.status = int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else None
            self.hdr = {}
            for line in lines[1:]:
                k, _, v = line.partition(":")
                self.hdr[k.strip().lower()] = v.strip()
            if "content-length" in self.hdr:
                self.clen = int(self.hdr["content-length"])
            self.chunked = "chunked" in self.hdr.get("transfer-encoding", "").lower()
            data = bytes(self.head[i + 4:])
            self.head = None
        self.got += len(data)
        if self.clen is not None:
            if self.got >= self.clen:
                self._finish()
        elif self.chunked:
            self.tail = (self.tail + data)[-5:]
            if self.tail == b"0\r\n\r\n":
                self._finish()

    def connection_lost(self, exc):
        if self.clen is None and not self.chunked and self.hdr is not None:
            self._finish()  # body delimited by close
        else:
            self._finish("connection lost%s" % (": %s" % exc if exc else ""))


async def swarm(port, path, viewers, timeout):
    loop = asyncio.get_running_loop()
    t_c0 = time.monotonic()

    async def connect():
        try:
            _, proto = await asyncio.wait_for(
                loop.create_connection(Viewer, "127.0.0.1", port), timeout)
            return proto
        except Exception as e:  # noqa: BLE001
            return e

    conns = await asyncio.gather(*(connect() for _ in range(viewers)))
    connect_errors = [str(c) for c in conns if isinstance(c, Exception)]
    conns = [c for c in conns if not isinstance(c, Exception)]
    t_connected = time.monotonic()
    await asyncio.sleep(0.3)  # let the server accept every connection before the requests
    req = ("GET %s HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nUser-Agent: tier-swarm\r\nAccept: */*\r\n\r\n"
           % (path, port)).encode()
    t_s0 = time.monotonic()
    for c in conns:
        c.t_send = time.monotonic()
        c.tr.write(req)
    t_s1 = time.monotonic()
    try:
        await asyncio.wait_for(asyncio.gather(*(c.done for c in conns)), timeout)
    except asyncio.TimeoutError:
        for c in conns:
            c._finish("timed out after %.0f s" % timeout)
    return {"conns": conns, "connect_errors": connect_errors, "connect_s": t_connected - t_c0,
            "send_spread_ms": (t_s1 - t_s0) * 1000.0, "t_send_first": t_s0}


def summarize(values):
    if not values:
        return {"median": None, "p99": None, "max": None, "min": None}
    return {"median": pct(values, 50), "p99": pct(values, 99), "max": max(values), "min": min(values)}


def run_swarm(a, origin, edge, n):
    path = STREAM_PATH % n
    m0 = edge.metrics() if isinstance(edge, RackcastEdge) else None
    cpu0 = cpu_seconds(edge.pids())
    sw = asyncio.run(swarm(edge.port, path, a.viewers, a.swarm_timeout))
    cpu = cpu_seconds(edge.pids()) - cpu0
    time.sleep(a.settle)  # late upstream requests (nginx lock timeouts, retries) still count
    counts = origin_counts(origin.port)
    m1 = edge.metrics() if isinstance(edge, RackcastEdge) else None
    conns = sw["conns"]
    ok = [c for c in conns if c.error is None and c.status == 200 and c.got >= SEGMENT_BYTES]
    delay = a.delay_ms
    lat = [(c.t_done - c.t_send) * 1000.0 for c in ok]
    extra = [x - delay for x in lat]
    # Headers beyond the delay: when the edge released the waiter, before the 200 KB body.
    head_extra = [(c.t_hdr - c.t_send) * 1000.0 - delay for c in ok]
    answered = counts["answered"].get(path)
    after_origin = [(c.t_done - answered) * 1000.0 for c in ok] if answered else []
    statuses = {}
    for c in conns:
        k = str(c.status) if c.error is None else "error"
        statuses[k] = statuses.get(k, 0) + 1
    cache = {}
    for c in ok:
        k = hit_header(edge.name, c.hdr or {}) or "-"
        cache[k] = cache.get(k, 0) + 1
    errors = sorted({c.error for c in conns if c.error})[:5] + sw["connect_errors"][:3]
    res = {
        "segment": n, "path": path,
        "origin_requests": counts["paths"].get(path, 0),
        "viewers": a.viewers, "ok": len(ok), "failed": a.viewers - len(ok), "statuses": statuses,
        "cache_status": cache, "errors": errors,
        "latency_ms": summarize(lat),
        "extra_ms": summarize(extra),
        "headers_extra_ms": summarize(head_extra),
        "after_origin_answer_ms": summarize(after_origin),
        "origin_first_request_after_send_ms":
            (counts["first"][path] - sw["t_send_first"]) * 1000.0 if path in counts["first"] else None,
        "connect_s": sw["connect_s"], "send_spread_ms": sw["send_spread_ms"],
        "server_cpu_s": round(cpu, 3),
    }
    if m0 and m1:
        gauges = ("bytes_cached", "entries", "capacity_bytes")
        res["rackcast_metrics_delta"] = {k: m1[k] - m0[k] for k in m1 if k in m0 and k not in gauges}
    return res


def figure_coalescing(a, origin, edges):
    runs = {e.name: [] for e in edges}
    for rep in range(a.reps):
        for i, e in enumerate(edges):
            if not e.alive():
                log("%s: not running any more; coalescing run skipped" % e.name)
                continue
            n = a.fresh_segment + 100 * EDGE_NAMES.index(e.name) + rep
            log("%s: %d viewers, fresh segment %d (run %d of %d)" % (e.name, a.viewers, n, rep + 1, a.reps))
            r = run_swarm(a, origin, e, n)
            log("%s: origin requests %d, ok %d/%d, extra median %.0f ms, p99 %.0f ms, max %.0f ms" % (
                e.name, r["origin_requests"], r["ok"], a.viewers, r["extra_ms"]["median"] or -1,
                r["extra_ms"]["p99"] or -1, r["extra_ms"]["max"] or -1))
            runs[e.name].append(r)
            time.sleep(a.pause)
    out = {}
    for name, rs in runs.items():
        def med(get):
            v = [get(r) for r in rs]
            v = [x for x in v if x is not None]
            return statistics.median(v) if v else None
        out[name] = {
            "runs": rs,
            "origin_requests_each": [r["origin_requests"] for r in rs],
            "origin_requests_median": med(lambda r: r["origin_requests"]),
            "extra_median_ms": med(lambda r: r["extra_ms"]["median"]),
            "extra_p99_ms": med(lambda r: r["extra_ms"]["p99"]),
            "extra_max_ms": med(lambda r: r["extra_ms"]["max"]),
            "headers_extra_median_ms": med(lambda r: r["headers_extra_ms"]["median"]),
            "headers_extra_p99_ms": med(lambda r: r["headers_extra_ms"]["p99"]),
            "after_origin_p99_ms": med(lambda r: r["after_origin_answer_ms"]["p99"]),
            "after_origin_max_ms": med(lambda r: r["after_origin_answer_ms"]["max"]),
            "failed_total": sum(r["failed"] for r in rs),
        }
    return out


# ---------------------------------------------------------------- table

def fmt(v, spec):
    if v is None:
        return "-"
    if isinstance(v, str):
        return v
    return format(v, spec)


def table(a, hits, fresh, skipped, header_lines, notes):
    cols = [n for n in EDGE_NAMES if n in hits or n in fresh or n in skipped] + (["static"] if "static" in hits else [])
    w = 12
    lines = list(header_lines)
    lines.append("")
    lines.append(table_row("figure", cols, 48, w))

    def row(label, get, spec):
        cells = []
        for c in cols:
            if c in skipped:
                cells.append("skipped")
                continue
            try:
                v = get(c)
            except (KeyError, TypeError):
                v = None
            cells.append(fmt(v, spec))
        lines.append(table_row(label, cells, 48, w))

    seg_kb = SEGMENT_BYTES / 1000
    row("hit req/s (one %g KB segment)" % seg_kb, lambda c: hits[c]["req_per_s"], ".0f")
    row("hit latency p50 ms", lambda c: hits[c]["lat_p50_ms"], ".2f")
    row("hit latency p99 ms", lambda c: hits[c]["lat_p99_ms"], ".2f")
    row("hit: server CPU cores used during wrk", lambda c: hits[c]["server_cpu_cores"], ".2f")
    row("hit: origin requests during wrk", lambda c: hits[c]["origin_requests_during_wrk"] if c != "static" else None, "d")
    row("hit: non-2xx + socket errors",
        lambda c: hits[c]["non_2xx"] + hits[c]["socket_errors"], "d")
    row("fresh: origin requests per segment (median)", lambda c: fresh[c]["origin_requests_median"], "g")
    row("fresh: origin requests, each run",
        lambda c: ",".join(str(x) for x in fresh[c]["origin_requests_each"]) or None, "")
    row("fresh: latency beyond origin delay, median ms", lambda c: fresh[c]["extra_median_ms"], ".0f")
    row("fresh: latency beyond origin delay, p99 ms", lambda c: fresh[c]["extra_p99_ms"], ".0f")
    row("fresh: latency beyond origin delay, max ms", lambda c: fresh[c]["extra_max_ms"], ".0f")
    row("fresh: headers beyond origin delay, median ms", lambda c: fresh[c]["headers_extra_median_ms"], ".0f")
    row("fresh: headers beyond origin delay, p99 ms", lambda c: fresh[c]["headers_extra_p99_ms"], ".0f")
    row("fresh: after the origin's answer, p99 ms", lambda c: fresh[c]["after_origin_p99_ms"], ".0f")
    row("fresh: failed viewers (all runs)", lambda c: fresh[c]["failed_total"], "d")
    lines.append("")
    lines.append("hit: wrk -t%d -c%d -d%ds --latency, each edge warmed with one GET first; static = nginx serving the "
                 "segment as a file." % (a.wrk_threads, a.wrk_connections, a.wrk_duration))
    lines.append("fresh: %d concurrent GETs of a new segment per run, %d runs per edge (medians); origin delay %g ms;"
                 % (a.viewers, a.reps, a.delay_ms))
    lines.append("       latency = request written to last body byte read (%.0f MB per run into one Python client),"
                 % (a.viewers * SEGMENT_BYTES / 1e6))
    lines.append("       headers = request written to end of response headers.")
    rc = notes.get("rackcast_cluster")
    if rc:
        yes = lambda b: "yes" if b else "NO"  # noqa: E731
        lines.append("rackcast cluster: live-1 (nothing listening) marked down by the edge's probes: %s; origin-1 "
                     "stayed up: %s; edge /metrics 200: %s; edge running at the end: %s." % (
                         yes(rc["live_1_marked_down"]), yes(not rc["origin_1_marked_down"]),
                         yes(rc["edge_health_status"] == 200), yes(notes.get("rackcast_alive_at_end"))))
    for name, why in skipped.items():
        lines.append("%s skipped: %s" % (name, why))
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------- main

def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--edges", default=",".join(EDGE_NAMES))
    ap.add_argument("--rackcast-bin", default=None)
    ap.add_argument("--rackcast-note", default="")
    ap.add_argument("--delay-ms", type=float, default=200.0)
    ap.add_argument("--viewers", type=int, default=1000)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--wrk-duration", type=int, default=10)
    ap.add_argument("--wrk-connections", type=int, default=64)
    ap.add_argument("--wrk-threads", type=int, default=2)
    ap.add_argument("--hit-segment", type=int, default=1)
    ap.add_argument("--fresh-segment", type=int, default=1000)
    ap.add_argument("--swarm-timeout", type=float, default=20.0)
    ap.add_argument("--settle", type=float, default=1.0, help="wait after a swarm before reading the origin's counts")
    ap.add_argument("--pause", type=float, default=1.0)
    ap.add_argument("--busy-warn", type=float, default=0.15,
                    help="warn when other processes used more than this many cores during the measurement")
    ap.add_argument("--varnish-storage-mb", type=int, default=256)
    ap.add_argument("--cmdline", default=" ".join(sys.argv))
    a = ap.parse_args()
    start_run(a.out)
    wanted = [e.strip() for e in a.edges.split(",") if e.strip()]
    skipped, edges, notes = {}, [], {}
    rc = 0
    try:
        origin = Origin(a.out, a.delay_ms)
        log("origin on 127.0.0.1:%d, delay %g ms" % (origin.port, a.delay_ms))
        static = None
        for name in wanted:
            try:
                if name == "rackcast":
                    if a.rackcast_note:
                        raise RuntimeError(a.rackcast_note)
                    e = RackcastEdge(a.rackcast_bin, a.out, origin.port)
                elif name == "varnish":
                    if not shutil.which("varnishd"):
                        raise RuntimeError("varnishd not installed")
                    e = VarnishEdge(a.out, origin.port, a.varnish_storage_mb)
                elif name == "nginx":
                    if not shutil.which("nginx"):
                        raise RuntimeError("nginx not installed")
                    e = NginxEdge(a.out, origin.port, a.hit_segment + len(EDGE_NAMES))
                    static = e
                else:
                    raise RuntimeError("unknown edge %r" % name)
                edges.append(e)
                log("%s edge on 127.0.0.1:%d: %s" % (name, e.port, " ".join(e.cmd)))
            except Exception as ex:  # noqa: BLE001
                skipped[name] = str(ex)
                log("%s: SKIPPED: %s" % (name, ex))
        if "rackcast" in wanted and "rackcast" in skipped:
            # The subject of the benchmark: a table without it measures nothing.
            raise RuntimeError("rackcast, the edge this benchmark measures, did not start: %s" % skipped["rackcast"])
        if not edges:
            raise RuntimeError("no edge started")
        for e in edges:
            if isinstance(e, RackcastEdge):
                notes["rackcast_cluster"] = e.health_check()
                log("rackcast edge cluster check: %s" % json.dumps(notes["rackcast_cluster"]))
        load_before = open("/proc/loadavg").read().split()[0]
        b0 = busy_sample()
        hits = figure_hits(a, origin, edges, static, a.out)
        b1 = busy_sample()
        fresh = figure_coalescing(a, origin, edges)
        b2 = busy_sample()
        notes["other_processes_cores"] = {"hits": others_cores(b0, b1), "fresh": others_cores(b1, b2),
                                          "load_average_before": float(load_before)}
        for e in edges:
            if isinstance(e, RackcastEdge):
                notes["rackcast_metrics_end"] = e.metrics()
                notes["rackcast_alive_at_end"] = e.alive()
        header = [
            "command: %s" % a.cmdline,
            "machine: %s, %d cores; rackcast %s" % (
                os.uname().nodename, os.cpu_count(), a.rackcast_bin if "rackcast" not in skipped else "skipped"),
            "origin: bench/lib/tier_origin.py (threaded Python), %d-byte segments, %g ms delay per segment request"
            % (SEGMENT_BYTES, a.delay_ms),
            "other processes on the machine (not this benchmark): %.2f cores during the hit figures, %.2f during "
            "the fresh ones; load average %s before" % (
                notes["other_processes_cores"]["hits"] or 0, notes["other_processes_cores"]["fresh"] or 0, load_before),
        ]
        busiest = max(notes["other_processes_cores"]["hits"] or 0, notes["other_processes_cores"]["fresh"] or 0)
        if busiest > a.busy_warn:
            header.append("WARNING: other processes used %.2f cores (more than %.2f): these figures are not "
                          "comparable with a quiet run; run it again when the machine is idle" % (busiest, a.busy_warn))
            log(header[-1])
        text = table(a, hits, fresh, skipped, header, notes)
        results = {
            "cmdline": a.cmdline, "stamp": os.path.basename(a.out), "args": vars(a),
            "segment_bytes": SEGMENT_BYTES, "edges": {e.name: {"port": e.port, "cmd": e.cmd} for e in edges},
            "skipped": skipped, "hits": hits, "fresh": fresh, "notes": notes,
            "origin_counts_end": origin_counts(origin.port)["paths"],
        }
        with open(os.path.join(a.out, "results.json"), "w") as f:
            json.dump(results, f, indent=1)
        with open(os.path.join(a.out, "table.txt"), "w") as f:
            f.write(text)
        print(text, end="", flush=True)
    except Exception as ex:  # noqa: BLE001
        log("FAILED: %s" % ex)
        rc = 1
    finally:
        for e in edges:
            if isinstance(e, NginxEdge):
                e.copy_error_log(a.out)
        stop_all(5.0, {"rackcast": 12.0}, tree=True)
    return rc


if __name__ == "__main__":
    sys.exit(main())
