"""Helpers shared by the benchmark drivers, bench.py (run.sh) and tier_bench.py (tier.sh):
logging, starting and stopping child processes (every PID is recorded in <out>/pids so that
the shell wrapper's EXIT trap can kill what is left), /proc reading, ports, waiting for a
ready line, percentiles and table rows."""
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time

CLK_TCK = os.sysconf("SC_CLK_TCK")

TAG = "bench"  # prefix of log lines; a driver sets its own
CHILDREN = []  # (name, Popen) of every process started, stopped at exit in reverse order
TEMPDIRS = []  # temporary directories to remove at exit
PIDFILE = None  # set by start_run()


def log(msg):
    print("[%s %s] %s" % (TAG, time.strftime("%H:%M:%S"), msg), file=sys.stderr, flush=True)


def start_run(out):
    """Creates the results directory, records spawned PIDs in <out>/pids from now on, and
    turns SIGTERM/SIGINT into SystemExit so that `finally` blocks stop the children."""
    global PIDFILE
    os.makedirs(out, exist_ok=True)
    PIDFILE = os.path.join(out, "pids")

    def on_signal(signum, frame):
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)


# ---------------------------------------------------------------- processes

def note_pids(pids):
    if PIDFILE:
        with open(PIDFILE, "a") as f:
            for p in pids:
                f.write("%d\n" % p)


def spawn(cmd, name=None, new_session=False, **kw):
    """Popen, remembered for stop_all() and recorded in the PID file.  new_session: start it
    as a process group leader, stopped as a group (e.g. Chromium and its helpers)."""
    p = subprocess.Popen(cmd, start_new_session=new_session, **kw)
    p._bench_group = new_session
    CHILDREN.append((name, p))
    note_pids([p.pid])
    return p


def stop(p, sig=signal.SIGTERM, timeout=5.0, name=None, tree=False):
    """Stop one process we started: `sig`, then SIGKILL after `timeout` s (to its process
    group when it was started as one).  tree: also SIGKILL whatever was left of its
    descendants (nginx workers, varnish's child), noted before the signal.  With a name,
    a SIGKILL is logged."""
    if p is None or p.poll() is not None:
        return
    group = getattr(p, "_bench_group", False)
    kids = proc_tree(p.pid)[1:] if tree else []
    try:
        if group:
            os.killpg(p.pid, sig)
        else:
            p.send_signal(sig)
        p.wait(timeout)
    except subprocess.TimeoutExpired:
        if name:
            log("%s did not stop within %.0f s of %s; SIGKILL" % (name, timeout, signal.Signals(sig).name))
        try:
            if group:
                os.killpg(p.pid, signal.SIGKILL)
            else:
                p.kill()
            p.wait(3)
        except Exception:  # noqa: BLE001
            pass
    except ProcessLookupError:
        pass
    for pid in kids:
        try:
            os.kill(pid, 0)
        except OSError:
            continue
        try:
            with open("/proc/%d/stat" % pid) as f:
                if " Z " in f.read():
                    continue
        except OSError:
            continue
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass


def stop_all(timeout=3.0, timeouts=None, tree=False):
    """Stops every child still running, newest first (timeouts: per name), and removes the
    temporary directories."""
    for name, p in reversed(CHILDREN):
        stop(p, timeout=(timeouts or {}).get(name, timeout), name=name, tree=tree)
    CHILDREN.clear()
    for d in TEMPDIRS:
        shutil.rmtree(d, ignore_errors=True)


# ---------------------------------------------------------------- /proc

def stat_fields(pid):
    """Fields of /proc/<pid>/stat after the command name (index 1 is the parent PID, 11 and
    12 utime and stime in ticks).  Raises OSError when the process is gone."""
    with open("/proc/%s/stat" % pid) as f:
        s = f.read()
    return s[s.rfind(")") + 2:].split()


def proc_tree(root):
    """root and all its descendants."""
    kids = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            rest = stat_fields(d)
        except OSError:
            continue
        kids.setdefault(int(rest[1]), []).append(int(d))
    out, todo = [], [root]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(kids.get(p, []))
    return out


# ---------------------------------------------------------------- ports and waiting

def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def read_line_with_timeout(stream, pattern, timeout, sink=None):
    """Reads lines from a pipe until one matches `pattern` (returns the match) or timeout
    or end of file (returns None); then keeps draining the pipe (into `sink` if given) in
    a thread, so that the writer never blocks on it."""
    found = {}
    ev = threading.Event()

    def reader():
        for line in stream:
            if sink:
                sink.write(line)
                sink.flush()
            if not ev.is_set():
                m = re.search(pattern, line)
                if m:
                    found["m"] = m
                    ev.set()
        ev.set()

    threading.Thread(target=reader, daemon=True).start()
    ev.wait(timeout)
    return found.get("m")


# ---------------------------------------------------------------- figures

def pct(values, q):
    v = sorted(values)
    if not v:
        return None
    if len(v) == 1:
        return v[0]
    k = (len(v) - 1) * q / 100.0
    lo = int(k)
    hi = min(lo + 1, len(v) - 1)
    return v[lo] + (v[hi] - v[lo]) * (k - lo)


def table_row(label, cells, label_width, widths, sep=""):
    """One line of a text table: the label left-aligned, each cell right-aligned in its
    width (widths: one per cell, or one for all), cells preceded by `sep`."""
    if isinstance(widths, int):
        widths = [widths] * len(cells)
    return "%-*s" % (label_width, label) + "".join(sep + "%*s" % (w, c) for w, c in zip(widths, cells))


def metric_group(text, group):
    """One group of a node's /metrics (Prometheus text) as {name: value}: the unlabelled
    samples named rackcast_<group>_*, without that prefix and without a counter's _total
    (the tier's "rackcast_tier_hits_total" is {"hits": ...} in group "tier")."""
    prefix = "rackcast_%s_" % group
    out = {}
    for line in text.splitlines():
        if line.startswith("#") or not line.startswith(prefix):
            continue
        name, _, value = line.partition(" ")
        if "{" in name:
            continue
        name = name[len(prefix):]
        if name.endswith("_total"):
            name = name[:-len("_total")]
        try:
            v = float(value.split()[0])
        except (ValueError, IndexError):
            continue
        out[name] = int(v) if v.is_integer() else v
    return out
