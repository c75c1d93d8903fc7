#!/usr/bin/env python3
"""Wire-clock RTMP relay.

Sits between the publisher (ffmpeg) and the server under test on 127.0.0.1 and
forwards bytes untouched in both directions.  While forwarding it parses the
RTMP chunk stream of each direction (after the 3073-byte handshake) far enough
to reassemble messages, so it can note:

* server -> client: the onStatus command carrying ``NetStream.Publish.Start``;
* client -> server: every audio (type 8) / video (type 9) message after that,
  with its RTMP timestamp, the wall time its first chunk passed and the wall
  time its last chunk passed (i.e. the moment the whole frame had been sent on
  to the server).

Wall times are ``time.monotonic()`` (CLOCK_MONOTONIC, shared by all processes on
the machine), so the poller process can be compared against it directly.

Output: a JSON-lines file (``--log``); one object per event:
  {"ev":"listen","port":P}
  {"ev":"accept","wall":W}
  {"ev":"publish_start","wall":W}
  {"ev":"video","ts":ms,"cts":ms,"kind":"frame|seq|eos","key":bool,
   "first":W,"last":W,"len":N}
  {"ev":"audio","ts":ms,"first":W,"last":W,"len":N}
  {"ev":"client_eof","wall":W} / {"ev":"server_eof","wall":W}
Only media after publish_start is logged.  One connection is relayed at a time.
"""
import argparse
import asyncio
import json
import signal
import sys
import time

HANDSHAKE_LEN = 1 + 1536 + 1536  # C0+C1+C2 (or S0+S1+S2)


class ChunkParser:
    """Incremental RTMP chunk-stream parser for one direction."""

    def __init__(self, on_message, on_chunk_start=None):
        self.buf = bytearray()
        self.skip = HANDSHAKE_LEN
        self.chunk_size = 128
        self.streams = {}  # csid -> state dict
        self.on_message = on_message  # (csid, type, ts, payload, first_wall, last_wall)
        self.on_chunk_start = on_chunk_start  # (type, wall) when a message starts
        self.broken = None

    def feed(self, data, wall):
        if self.broken:
            return
        if self.skip:
            n = min(self.skip, len(data))
            self.skip -= n
            data = data[n:]
        if not data:
            return
        self.buf += data
        try:
            self._parse(wall)
        except Exception as e:  # never let a parse bug break forwarding
            self.broken = repr(e)

    def _parse(self, wall):
        buf = self.buf
        pos = 0
        n = len(buf)
        while True:
            p = pos
            if p >= n:
                break
            b0 = buf[p]
            fmt = b0 >> 6
            csid = b0 & 0x3F
            p += 1
            if csid == 0:
                if p + 1 > n:
                    break
                csid = 64 + buf[p]
                p += 1
            elif csid == 1:
                if p + 2 > n:
                    break
                csid = 64 + buf[p] + buf[p + 1] * 256
                p += 2
            st = self.streams.get(csid)
            if st is None:
                st = {"ts": 0, "delta": 0, "len": 0, "type": 0, "sid": 0,
                      "ext": False, "payload": None, "first": None, "hdr_ts": 0}
                self.streams[csid] = st
            mh = (11, 7, 3, 0)[fmt]
            if p + mh > n:
                break
            if fmt <= 2:
                tsf = (buf[p] << 16) | (buf[p + 1] << 8) | buf[p + 2]
            if fmt <= 1:
                mlen = (buf[p + 3] << 16) | (buf[p + 4] << 8) | buf[p + 5]
                mtype = buf[p + 6]
            if fmt == 0:
                sid = int.from_bytes(buf[p + 7:p + 11], "little")
            p += mh
            # extended timestamp
            if fmt <= 2:
                ext = tsf == 0xFFFFFF
            else:
                ext = st["ext"]
            if ext:
                if p + 4 > n:
                    break
                ext_val = int.from_bytes(buf[p:p + 4], "big")
                p += 4
                if fmt <= 2:
                    tsf = ext_val
            # Work out the header's effect without touching the state, so that a
            # chunk cut short by the end of the buffer can be re-parsed later.
            in_progress = st["payload"] is not None
            if fmt == 3 and in_progress:
                new = None  # continuation chunk, header unchanged
                mlen_eff = st["len"]
                have = len(st["payload"])
            else:
                new = dict(st)
                if fmt == 0:
                    new.update(ts=tsf, delta=0, len=mlen, type=mtype, sid=sid)
                elif fmt == 1:
                    new.update(delta=tsf, ts=(st["ts"] + tsf) & 0xFFFFFFFF, len=mlen, type=mtype)
                elif fmt == 2:
                    new.update(delta=tsf, ts=(st["ts"] + tsf) & 0xFFFFFFFF)
                else:  # fmt 3 starting a new message: reuse the previous delta
                    new.update(ts=(st["ts"] + st["delta"]) & 0xFFFFFFFF)
                if fmt <= 2:
                    new["ext"] = ext
                mlen_eff = new["len"]
                have = 0
            take = min(mlen_eff - have, self.chunk_size)
            if p + take > n:
                break
            if new is not None:
                new["payload"] = bytearray()
                new["first"] = wall
                st.update(new)
                if self.on_chunk_start:
                    self.on_chunk_start(st["type"], wall)
            st["payload"] += buf[p:p + take]
            p += take
            pos = p
            if len(st["payload"]) >= st["len"]:
                payload = bytes(st["payload"])
                first = st["first"]
                st["payload"] = None
                if st["type"] == 1 and len(payload) >= 4:
                    self.chunk_size = int.from_bytes(payload[:4], "big") & 0x7FFFFFFF
                self.on_message(csid, st["type"], st["ts"], payload, first, wall)
        if pos:
            del buf[:pos]


class Relay:
    def __init__(self, upstream_host, upstream_port, log, dump=None):
        self.dump = dump
        self.uh = upstream_host
        self.up = upstream_port
        self.log = log
        self.publishing = False
        self.busy = False

    def emit(self, obj):
        self.log.write(json.dumps(obj, separators=(",", ":")) + "\n")
        self.log.flush()

    # client -> server messages
    def on_client_msg(self, csid, mtype, ts, payload, first, last):
        if not self.publishing:
            return
        if mtype == 9 and payload:
            b0 = payload[0]
            key = (b0 >> 4) & 0x0F == 1
            kind = "frame"
            cts = 0
            if b0 & 0x80:  # enhanced RTMP: low nibble is the packet type
                pt = b0 & 0x0F
                key = (b0 >> 4) & 0x07 == 1
                if pt == 0 or pt == 4:
                    kind = "seq"
                elif pt == 2:
                    kind = "eos"
                elif pt == 1 and len(payload) >= 8:
                    cts = int.from_bytes(payload[5:8], "big", signed=True)
            elif (b0 & 0x0F) in (7, 12) and len(payload) >= 2:  # AVC / HEVC
                pt = payload[1]
                if pt == 0:
                    kind = "seq"
                elif pt == 2:
                    kind = "eos"
                elif len(payload) >= 5:
                    cts = int.from_bytes(payload[2:5], "big", signed=True)
            self.emit({"ev": "video", "ts": ts, "cts": cts, "kind": kind, "key": key,
                       "first": first, "last": last, "len": len(payload)})
        elif mtype == 8:
            self.emit({"ev": "audio", "ts": ts, "first": first, "last": last,
                       "len": len(payload)})

    def on_client_chunk_start(self, mtype, wall):
        if self.publishing and mtype == 9 and not self.first_video_chunk:
            self.first_video_chunk = wall
            self.emit({"ev": "first_video_chunk", "wall": wall})

    # server -> client messages
    def on_server_msg(self, csid, mtype, ts, payload, first, last):
        if mtype in (20, 17) and b"NetStream.Publish.Start" in payload and not self.publishing:
            self.publishing = True
            self.emit({"ev": "publish_start", "wall": last})

    async def pipe(self, reader, writer, parser, name):
        dump = open(self.dump + "." + name, "wb") if self.dump else None
        try:
            while True:
                data = await reader.read(65536)
                wall = time.monotonic()
                if not data:
                    break
                writer.write(data)
                if dump:
                    dump.write(data)
                parser.feed(data, wall)
                await writer.drain()
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            self.emit({"ev": name + "_eof", "wall": time.monotonic(),
                       "parse_error": parser.broken})
            try:
                writer.close()
            except Exception:
                pass

    async def handle(self, creader, cwriter):
        if self.busy:
            cwriter.close()
            return
        self.busy = True
        self.publishing = False
        self.first_video_chunk = None
        self.emit({"ev": "accept", "wall": time.monotonic()})
        sock = cwriter.get_extra_info("socket")
        try:
            import socket
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except Exception:
            pass
        sreader, swriter = await asyncio.open_connection(self.uh, self.up)
        try:
            import socket
            swriter.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except Exception:
            pass
        cp = ChunkParser(self.on_client_msg, self.on_client_chunk_start)
        sp = ChunkParser(self.on_server_msg)
        t1 = asyncio.create_task(self.pipe(creader, swriter, cp, "client"))
        t2 = asyncio.create_task(self.pipe(sreader, cwriter, sp, "server"))
        try:
            await asyncio.wait([t1, t2], return_when=asyncio.FIRST_COMPLETED)
            await asyncio.sleep(0.5)
        except asyncio.CancelledError:
            pass
        finally:
            for t in (t1, t2):
                t.cancel()
            self.busy = False


async def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--upstream", required=True, help="HOST:PORT of the RTMP server")
    ap.add_argument("--listen-port", type=int, default=0)
    ap.add_argument("--log", required=True)
    ap.add_argument("--dump", help="debug: write raw bytes of each direction to DUMP.client/.server")
    a = ap.parse_args()
    host, port = a.upstream.rsplit(":", 1)
    log = open(a.log, "w")
    relay = Relay(host, int(port), log, a.dump)
    server = await asyncio.start_server(relay.handle, "127.0.0.1", a.listen_port)
    lport = server.sockets[0].getsockname()[1]
    relay.emit({"ev": "listen", "port": lport})
    print(lport, flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for s in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(s, stop.set)
    async with server:
        await stop.wait()


if __name__ == "__main__":
    asyncio.run(main())
