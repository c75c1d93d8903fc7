#!/usr/bin/env python3
"""Poll a live DASH MPD and the segment URLs of its first video Representation.

Every --poll-ms (default 10 ms):
  1. GET every segment URL that is known but has not yet returned 200: the ones
     the MPD lists and the *predicted next* one (last listed $Number$+1 or
     $Time$ = t+d of the last listed segment), plus the init segment;
  2. every --mpd-poll-ms (default 20 ms): GET the MPD and parse it (last Period,
     first video Representation).
With --segment-base http://HOST:PORT, init and media segments are fetched from that server
instead (same paths): an edge, asked at the moments the MPD of the node that makes the
segments says, so two pollers time the same requests at two servers.
Wall times are time.monotonic(), comparable with the relay's log.
Segments are fetched with plain GET on a keep-alive connection; the moment
recorded is when the status line of the first 200 response arrived.

Writes JSON lines to --log:
  {"ev":"mpd_first","wall":W}
  {"ev":"mpd_info", ...first video representation description...}  (on change)
  {"ev":"listed","url","n","t","d","timescale","pto","period_start","period_id","wall"}
  {"ev":"seg200","url","wall","saw_404":bool,"predicted":bool,"bytes":N (0: segments are not read),"waited_ms":held}
  {"ev":"init200","url","wall","saw_404":bool}
  {"ev":"error","what",...}
"""
import argparse
import http.client
import json
import os
import signal
import sys
import time
from urllib.parse import urlsplit, urlunsplit

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from mpd import first_video_representation  # noqa: E402

STOP = False


def _stop(*_):
    global STOP
    STOP = True


class Client:
    def __init__(self):
        self.conns = {}

    def get(self, url, timeout=2.0, read_body=True):
        """Return (status, t_status, body). Raises on transport errors. Without
        read_body the connection is closed once the status arrives (a segment still being
        encoded would otherwise hold the poller for the rest of it)."""
        u = urlsplit(url)
        key = u.netloc
        path = u.path + ("?" + u.query if u.query else "")
        for attempt in (0, 1):
            conn = self.conns.get(key)
            if conn is None:
                conn = http.client.HTTPConnection(u.hostname, u.port or 80, timeout=timeout)
                self.conns[key] = conn
            try:
                conn.request("GET", path, headers={"Cache-Control": "no-cache"})
                resp = conn.getresponse()
                t_status = time.monotonic()
                if not read_body:
                    conn.close()
                    self.conns.pop(key, None)
                    return resp.status, t_status, b""
                body = resp.read()
                if resp.will_close:
                    conn.close()
                    self.conns.pop(key, None)
                return resp.status, t_status, body
            except (http.client.HTTPException, OSError):
                try:
                    conn.close()
                except Exception:
                    pass
                self.conns.pop(key, None)
                if attempt:
                    raise
        raise OSError("unreachable")



def poll_pending(cli, emit, table, what, ok_event, extra, err_count, read_body=True):
    """GETs every URL of `table` not yet downloadable; records the first 200 (with `extra`
    fields from its state, and how long the server held the request: `waited_ms`) or that a
    404 was seen. Returns the updated error count."""
    for url, st in list(table.items()):
        if st["ok"]:
            continue
        try:
            asked = time.monotonic()
            status, ts, body = cli.get(url, read_body=read_body)
        except Exception as e:
            err_count += 1
            if err_count < 20:
                emit({"ev": "error", "what": what, "url": url, "err": repr(e)})
            continue
        if status == 200:
            st["ok"] = True
            emit({"ev": ok_event, "url": url, "wall": ts, "saw_404": st["saw_404"], **extra(st),
                  "bytes": len(body), "waited_ms": round((ts - asked) * 1000.0, 1)})
        else:
            st["saw_404"] = True
    return err_count

def rebase(url, base):
    """`url` with the scheme and host:port of `base` (None: unchanged)."""
    if not base or not url:
        return url
    u, b = urlsplit(url), urlsplit(base)
    return urlunsplit((b.scheme, b.netloc, u.path, u.query, u.fragment))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--mpd", required=True)
    ap.add_argument("--segment-base", default=None,
                    help="fetch segments from this http://HOST:PORT instead of the MPD's server")
    ap.add_argument("--log", required=True)
    ap.add_argument("--poll-ms", type=float, default=10.0)
    ap.add_argument("--mpd-poll-ms", type=float, default=20.0)
    ap.add_argument("--max-seconds", type=float, default=600.0)
    a = ap.parse_args()
    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    log = open(a.log, "w")

    def emit(obj):
        log.write(json.dumps(obj, separators=(",", ":")) + "\n")
        log.flush()

    cli = Client()
    segs = {}  # url -> {"listed": bool, "ok": bool, "saw_404": bool, "predicted": bool}
    init = {}  # url -> {"ok", "saw_404"}
    predicted = None
    mpd_seen = False
    last_info = None
    period = a.poll_ms / 1000.0
    t_end = time.monotonic() + a.max_seconds
    next_tick = time.monotonic()
    err_count = 0
    next_mpd = 0.0
    while not STOP and time.monotonic() < t_end:
        # 1. pending segment URLs (init first, then media in listing order)
        err_count = poll_pending(cli, emit, init, "init", "init200", lambda st: {}, err_count)
        err_count = poll_pending(cli, emit, segs, "segment", "seg200",
                                 lambda st: {"predicted": st["predicted"], "listed_before": st["listed"]},
                                 err_count, read_body=False)
        # 2. the MPD, at its own (slower) cadence
        status, body = None, b""
        if time.monotonic() >= next_mpd:
            next_mpd = time.monotonic() + a.mpd_poll_ms / 1000.0 - 0.002
            try:
                status, ts, body = cli.get(a.mpd)
            except Exception as e:
                err_count += 1
                if err_count < 20:
                    emit({"ev": "error", "what": "mpd", "err": repr(e)})
        if status == 200 and body:
            if not mpd_seen:
                mpd_seen = True
                emit({"ev": "mpd_first", "wall": ts})
            try:
                info = first_video_representation(body.decode("utf-8", "replace"), a.mpd)
            except Exception as e:
                info = None
                err_count += 1
                if err_count < 20:
                    emit({"ev": "error", "what": "mpd_parse", "err": repr(e)})
            if info is not None:
                info["init_url"] = rebase(info["init_url"], a.segment_base)
                info["next_url"] = rebase(info["next_url"], a.segment_base)
                for s in info["segments"]:
                    s["url"] = rebase(s["url"], a.segment_base)
                sig = (info["rep_id"], info["period_id"], info["period_count"],
                       info["timescale"], info["pto"], info["media_template"], info["init_url"])
                if sig != last_info:
                    last_info = sig
                    d = {k: v for k, v in info.items() if k != "segments"}
                    d.update(ev="mpd_info", wall=ts, n_segments=len(info["segments"]))
                    emit(d)
                if info["init_url"] and info["init_url"] not in init:
                    init[info["init_url"]] = {"ok": False, "saw_404": False}
                for s in info["segments"]:
                    st = segs.get(s["url"])
                    if st is None:
                        st = {"listed": False, "ok": False, "saw_404": False, "predicted": False}
                        segs[s["url"]] = st
                    if not st["listed"]:
                        st["listed"] = True
                        emit({"ev": "listed", "url": s["url"], "rep_id": info["rep_id"],
                              "n": s["n"], "t": s["t"],
                              "d": s["d"], "timescale": info["timescale"], "pto": info["pto"],
                              "period_start": info["period_start"],
                              "period_id": info["period_id"], "wall": ts,
                              "already_ok": st["ok"]})
                nu = info["next_url"]
                if nu != predicted:
                    # forget a wrong prediction that never appeared in the MPD
                    if predicted and predicted in segs and not segs[predicted]["listed"] \
                            and not segs[predicted]["ok"]:
                        del segs[predicted]
                    predicted = nu
                    if nu and nu not in segs:
                        segs[nu] = {"listed": False, "ok": False, "saw_404": False,
                                    "predicted": True}
        next_tick += period
        now = time.monotonic()
        if next_tick > now:
            time.sleep(next_tick - now)
        else:
            next_tick = now
    log.close()


if __name__ == "__main__":
    main()
