#!/usr/bin/env python3
"""Serves bench/player/ and the browser players on 127.0.0.1, collects POST /report.

GET /?iso&ms     -> the current UTC time as ISO-8601 with milliseconds, i.e. what
                    dash.js's default UTC timing source (time.akamai.com/?iso&ms)
                    answers; Chromium's --host-resolver-rules maps that host here
GET /            -> player/index.html (query string passed through)
GET /lib/NAME/X  -> <dir of --lib NAME=DIR>/X (dash.js, Shaka Player, hls.js builds)
POST /report     -> body appended, with the server's time.monotonic(), to --log
Prints the chosen port on stdout.
"""
import argparse
import json
import os
import socket
import ssl
import time
from http.server import ThreadingHTTPServer, SimpleHTTPRequestHandler


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--root", required=True, help="bench/player directory")
    ap.add_argument("--lib", action="append", default=[], metavar="NAME=DIR",
                    help="serve DIR's files as /lib/NAME/ (repeatable)")
    ap.add_argument("--log", required=True)
    ap.add_argument("--tls-cert", help="PEM with cert+key: also accept TLS on the same port "
                    "(Chromium upgrades http://time.akamai.com to https through HSTS)")
    a = ap.parse_args()
    log = open(a.log, "a")
    libs = dict(x.split("=", 1) for x in a.lib)

    class H(SimpleHTTPRequestHandler):
        def translate_path(self, path):
            p = path.split("?", 1)[0].split("#", 1)[0]
            parts = p.split("/")
            if len(parts) == 4 and parts[1] == "lib" and parts[2] in libs:
                return os.path.join(libs[parts[2]], os.path.basename(p))
            if p in ("/", ""):
                p = "/index.html"
            return os.path.join(a.root, os.path.basename(p))

        def do_GET(self):
            path, _, query = self.path.partition("?")
            if path == "/" and "iso" in query.split("&"):
                now = time.time()
                body = (time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now))
                        + ".%03dZ" % int((now % 1) * 1000)).encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/plain")
                self.send_header("Access-Control-Allow-Origin", "*")
                self.send_header("Cache-Control", "no-cache")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
                log.write(json.dumps({"ev": "time_sync", "wall": time.monotonic(),
                                      "ua_host": self.headers.get("Host")}) + "\n")
                log.flush()
                return
            return super().do_GET()

        def end_headers(self):
            if self.command == "GET":
                self.send_header("Cache-Control", "no-cache")
            super().end_headers()

        def do_POST(self):
            n = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(n)
            try:
                obj = json.loads(body)
            except Exception:
                obj = {"raw": body.decode("utf-8", "replace")}
            obj["wall"] = time.monotonic()
            log.write(json.dumps(obj) + "\n")
            log.flush()
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args):
            pass

    class S(ThreadingHTTPServer):
        daemon_threads = True

        def get_request(self):
            sock, addr = super().get_request()
            if ctx is not None:
                try:
                    sock.settimeout(5)
                    first = sock.recv(1, socket.MSG_PEEK)
                    if first == b"\x16":  # TLS handshake record
                        sock = ctx.wrap_socket(sock, server_side=True)
                    sock.settimeout(None)
                except (OSError, ssl.SSLError):
                    pass
            return sock, addr

    ctx = None
    if a.tls_cert:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(a.tls_cert)
    srv = S(("127.0.0.1", 0), H)
    print(srv.server_address[1], flush=True)
    srv.serve_forever()


if __name__ == "__main__":
    main()
