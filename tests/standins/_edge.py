"""The stand-ins' "edge": an HTTP server on 127.0.0.1 that forwards every request to a local target.

This plays the part of the ngrok / Cloudflare cloud, which is not reachable from the test machine.
It really forwards (method, path, headers, body) and enforces HTTP basic auth when given credentials.
"""

from __future__ import annotations

import base64
import http.client
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade",
              "proxy-authorization", "proxy-authenticate", "host"}


def start_edge(target_host: str, target_port: int, credentials: list[str] | None = None, *,
               listen_port: int = 0, connected=None) -> ThreadingHTTPServer:
    """Serve on `listen_port` (0: a free one); forward to target; demand one of `credentials`
    ("user:pass") if any. While `connected()` is false, answer as Cloudflare's edge does for a
    tunnel whose connector is not connected yet: HTTP 530, error code 1033."""
    allowed = {base64.b64encode(c.encode()).decode() for c in credentials or []}

    class Forward(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args):  # keep stdout for the agent's own log lines
            pass

        def _handle(self):
            if connected is not None and not connected():
                body = b"error code: 1033"
                self.send_response(530)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
                return
            if allowed:
                header = self.headers.get("Authorization", "")
                scheme, _, value = header.partition(" ")
                if scheme.lower() != "basic" or value.strip() not in allowed:
                    body = b"401 Unauthorized\n"
                    self.send_response(401)
                    self.send_header("WWW-Authenticate", 'Basic realm="ngrok"')
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                    return
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else None
            # The edge consumes the credentials it checks itself; otherwise (cloudflared) Authorization
            # reaches the origin unchanged, as through the real edge.
            dropped = HOP_BY_HOP | ({"authorization"} if allowed else set())
            headers = {k: v for k, v in self.headers.items() if k.lower() not in dropped}
            conn = http.client.HTTPConnection(target_host, target_port, timeout=30)
            try:
                conn.request(self.command, self.path, body=body, headers=headers)
                response = conn.getresponse()
                data = response.read()
            except OSError as exc:
                data = f"502 upstream unreachable: {exc}\n".encode()
                self.send_response(502)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)
                return
            finally:
                conn.close()
            self.send_response(response.status, response.reason)
            for key, value in response.getheaders():
                if key.lower() not in HOP_BY_HOP and key.lower() != "content-length":
                    self.send_header(key, value)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(data)

        do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = do_PATCH = _handle

    server = ThreadingHTTPServer(("127.0.0.1", listen_port), Forward)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server
