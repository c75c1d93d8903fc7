#!/usr/bin/env python3
"""The common origin of the caching-tier benchmark (bench/tier.sh).

A small threaded HTTP/1.1 server on 127.0.0.1 that every edge under test fetches from:

  GET /live/{stream}/manifest.mpd          a tiny static MPD (Cache-Control: public, max-age=0, s-maxage=1)
  GET /live/{stream}/{rendition}/s-{n}.m4s  SEGMENT_BYTES of deterministic bytes (depends on n),
                                            Cache-Control: public, max-age=31536000, immutable,
                                            answered after --delay-ms (the slow upstream that makes
                                            coalescing visible)
  GET /cluster/health                       {"id": "<--id>", "streams": []} (rackcast's peer probe; with
                                            --secret, the answer is signed as rackcast's peers sign
                                            theirs: src/auth/peer.rs)
  GET /counts                               {"paths": {path: requests}, "first": {path: t}, "answered": {path: t}}
                                            (t: CLOCK_MONOTONIC seconds, the same clock as the client)

Every request except /counts and /cluster/health is counted per path. Prints one line
`tier-origin ready port=PORT` on stdout once it listens.
"""

import argparse
import hashlib
import hmac
import json
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

SEGMENT_BYTES = 200_000
IMMUTABLE = "public, max-age=31536000, immutable"
MANIFEST_CACHE = "public, max-age=0, s-maxage=1"

MPD = """<?xml version="1.0" encoding="UTF-8"?>
<MPD xmlns="urn:mpeg:dash:schema:mpd:2011" type="static" profiles="urn:mpeg:dash:profile:isoff-live:2011"
     mediaPresentationDuration="PT1H" minBufferTime="PT2S">
  <Period id="0" start="PT0S">
    <AdaptationSet mimeType="video/mp4" segmentAlignment="true">
      <SegmentTemplate timescale="1000" duration="1000" startNumber="1" media="$RepresentationID$/s-$Number$.m4s"/>
      <Representation id="720p" bandwidth="1600000" width="1280" height="720" codecs="avc1.64001f"/>
    </AdaptationSet>
  </Period>
</MPD>
"""


def segment_body(n: int, size: int = SEGMENT_BYTES) -> bytes:
    """Deterministic, incompressible-looking bytes for segment n."""
    block = hashlib.sha256(f"segment-{n}".encode()).digest() * 128  # 4 KiB
    reps = size // len(block) + 1
    return (block * reps)[:size]


def lp(b: bytes) -> bytes:
    """A length-prefixed field, as src/auth/peer.rs signs them."""
    return len(b).to_bytes(8, "big") + b


def sign_answer(secret: str, node_id: str, nonce_hex: str, status: int, body: bytes) -> dict:
    """Headers that sign a peer answer (src/auth/peer.rs, sign_response)."""
    t = int(time.time())
    msg = (b"rackcast-peer-response\0" + lp(node_id.encode()) + lp(bytes.fromhex(nonce_hex))
           + lp(status.to_bytes(2, "big")) + lp(t.to_bytes(8, "big")) + lp(body))
    return {"x-rackcast-time": str(t), "x-rackcast-signature": hmac.new(secret.encode(), msg, hashlib.sha256).hexdigest()}


class State:
    def __init__(self, node_id: str, delay: float, secret: str = ""):
        self.node_id = node_id
        self.secret = secret
        self.delay = delay
        self.lock = threading.Lock()
        self.counts = {}
        self.first = {}
        self.answered = {}
        self.bodies = {}

    def note(self, path: str) -> None:
        now = time.monotonic()
        with self.lock:
            self.counts[path] = self.counts.get(path, 0) + 1
            self.first.setdefault(path, now)

    def body(self, n: int) -> bytes:
        with self.lock:
            b = self.bodies.get(n)
            if b is None:
                b = self.bodies[n] = segment_body(n)
                if len(self.bodies) > 256:
                    self.bodies.pop(next(iter(self.bodies)))
            return b


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "tier-origin"
    state: State = None  # set by main

    def log_message(self, *args):  # quiet
        pass

    def _send(self, status, body, ctype, cache, extra=None):
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", cache)
        for k, v in (extra or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        st = self.state
        path = self.path.split("?", 1)[0]
        if path == "/cluster/health":
            body = json.dumps({"id": st.node_id, "streams": []}).encode()
            nonce = self.headers.get("x-rackcast-nonce")
            extra = sign_answer(st.secret, st.node_id, nonce, 200, body) if st.secret and nonce else None
            return self._send(200, body, "application/json", "no-store", extra)
        if path == "/counts":
            with st.lock:
                body = json.dumps({"paths": st.counts, "first": st.first, "answered": st.answered}).encode()
            return self._send(200, body, "application/json", "no-store")
        parts = path.split("/")
        # ['', 'live', stream, 'manifest.mpd'] or ['', 'live', stream, rendition, 's-N.m4s']
        if len(parts) == 4 and parts[1] == "live" and parts[3] == "manifest.mpd":
            st.note(path)
            return self._send(200, MPD.encode(), "application/dash+xml", MANIFEST_CACHE)
        if len(parts) == 5 and parts[1] == "live" and parts[4].startswith("s-") and parts[4].endswith(".m4s"):
            num = parts[4][2:-4]
            if num.isdigit() and len(num) < 19:
                st.note(path)
                if st.delay > 0:
                    time.sleep(st.delay)
                self._send(200, st.body(int(num)), "video/iso.segment", IMMUTABLE)
                with st.lock:
                    st.answered.setdefault(path, time.monotonic())
                return None
        st.note(path)
        return self._send(404, b"not found\n", "text/plain", "no-store")


class Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 4096
    allow_reuse_address = True


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--id", default="origin-1")
    ap.add_argument("--delay-ms", type=float, default=200.0)
    ap.add_argument("--secret", default="", help="cluster.relay_secret, to sign health answers")
    a = ap.parse_args()
    Handler.state = State(a.id, a.delay_ms / 1000.0, a.secret)
    srv = Server(("127.0.0.1", a.port), Handler)
    print(f"tier-origin ready port={srv.server_address[1]}", flush=True)
    try:
        srv.serve_forever(poll_interval=0.2)
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
