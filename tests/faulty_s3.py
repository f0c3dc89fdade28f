"""A fault-injecting S3 endpoint for tests: a threaded HTTP reverse proxy on 127.0.0.1 in front of a
real S3-compatible server (tests/s3server.py MotoServer).

Requests are forwarded unchanged (method, path, query, headers including Host, body), so clients
talk S3 to the proxy exactly as to the server. On command, the proxy answers matching requests itself
with the error a real S3 gives under trouble, without forwarding them:

    proxy.fail(3)                                   # next 3 PUT/POST: 500 InternalError
    proxy.fail(5, status=503)                       # next 5 PUT/POST: 503 SlowDown (throttling)
    proxy.fail_forever(path_contains="/ray/")       # every matching request until heal()
    proxy.heal()
    proxy.failed, proxy.forwarded, proxy.requests   # counters and a log of (method, path, status)

This is the seam production code does not own: the server. Nothing in flows/ knows it is there.
"""
from __future__ import annotations

import http.client
import threading
import time
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlparse

from s3server import free_port

ERRORS = {500: ("InternalError", "We encountered an internal error. Please try again."),
          503: ("SlowDown", "Please reduce your request rate.")}
HOP_BY_HOP = {"connection", "keep-alive", "proxy-connection", "transfer-encoding", "te", "trailer", "upgrade",
              "expect"}


@dataclass
class Rule:
    remaining: int | None  # None: forever
    status: int
    methods: frozenset[str]
    path_contains: str
    failed: int = 0

    def matches(self, method: str, path: str) -> bool:
        return method in self.methods and self.path_contains in path and self.remaining != 0


@dataclass
class Record:
    method: str
    path: str
    status: int
    injected: bool
    at: float = field(default_factory=time.monotonic)


class FaultyS3Proxy:
    def __init__(self, upstream: str):
        up = urlparse(upstream)
        self.upstream_host, self.upstream_port = up.hostname, up.port or 80
        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self._lock = threading.Lock()
        self._rule: Rule | None = None
        self.failed = 0
        self.forwarded = 0
        self.requests: list[Record] = []
        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), _handler(self))
        self.server.daemon_threads = True
        self._thread = threading.Thread(target=self.server.serve_forever, name="faulty-s3", daemon=True)
        self._thread.start()

    # ---- control -------------------------------------------------------------------------------
    def fail(self, n: int, status: int = 500, methods=frozenset({"PUT", "POST"}), path_contains: str = "") -> None:
        """Answer the next n matching requests with an S3 error (500 InternalError or 503 SlowDown)."""
        self._set(Rule(n, status, frozenset(m.upper() for m in methods), path_contains))

    def fail_forever(self, status: int = 500, methods=frozenset({"PUT", "POST"}), path_contains: str = "") -> None:
        self._set(Rule(None, status, frozenset(m.upper() for m in methods), path_contains))

    def heal(self) -> None:
        with self._lock:
            self._rule = None

    def _set(self, rule: Rule) -> None:
        if rule.status not in ERRORS:
            raise ValueError(f"status {rule.status}: only {sorted(ERRORS)}")
        with self._lock:
            self._rule = rule

    @property
    def pending(self) -> int | None:
        """Failures still to inject (None: forever, 0: healed or used up)."""
        with self._lock:
            return 0 if self._rule is None else self._rule.remaining

    def count(self, method: str | None = None, injected: bool | None = None, path_contains: str = "") -> int:
        with self._lock:
            return sum(1 for r in self.requests if (method is None or r.method == method)
                       and (injected is None or r.injected == injected) and path_contains in r.path)

    def env(self) -> dict[str, str]:
        return {"AWS_ENDPOINT_URL": self.endpoint, "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                "AWS_DEFAULT_REGION": "us-east-1"}

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    # ---- per request ---------------------------------------------------------------------------
    def _decide(self, method: str, path: str) -> int | None:
        """The status to inject for this request, or None to forward it."""
        with self._lock:
            rule = self._rule
            if rule is None or not rule.matches(method, path):
                return None
            if rule.remaining is not None:
                rule.remaining -= 1
            rule.failed += 1
            self.failed += 1
            return rule.status

    def _record(self, method: str, path: str, status: int, injected: bool) -> None:
        with self._lock:
            if not injected:
                self.forwarded += 1
            self.requests.append(Record(method, path, status, injected))


def _handler(proxy: FaultyS3Proxy):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, as S3 clients expect

        def log_message(self, *args):  # quiet
            pass

        def _body(self) -> bytes:
            if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
                out = bytearray()
                while True:
                    size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                    if size == 0:
                        while self.rfile.readline() not in (b"\r\n", b"\n", b""):  # trailers
                            pass
                        return bytes(out)
                    out += self.rfile.read(size)
                    self.rfile.readline()
            n = int(self.headers.get("Content-Length") or 0)
            return self.rfile.read(n) if n else b""

        def _handle(self) -> None:
            method, path = self.command, self.path
            body = self._body()  # always drained: the connection stays usable after an injected error
            status = proxy._decide(method, path)
            if status is not None:
                code, message = ERRORS[status]
                request_id = uuid.uuid4().hex[:16].upper()
                xml = (f'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>{code}</Code><Message>{message}'
                       f"</Message><Resource>{path.split('?')[0]}</Resource><RequestId>{request_id}</RequestId>"
                       "</Error>").encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/xml")
                self.send_header("x-amz-request-id", request_id)
                self.send_header("Content-Length", "0" if method == "HEAD" else str(len(xml)))
                if status == 503:
                    self.send_header("Retry-After", "1")
                self.end_headers()
                if method != "HEAD":
                    self.wfile.write(xml)
                proxy._record(method, path, status, True)
                return
            conn = http.client.HTTPConnection(proxy.upstream_host, proxy.upstream_port, timeout=60)
            try:
                # the Host header is forwarded as the client sent it (SigV4 signs it)
                conn.putrequest(method, path, skip_host=True, skip_accept_encoding=True)
                for k, v in self.headers.items():
                    if k.lower() not in HOP_BY_HOP and k.lower() != "content-length":
                        conn.putheader(k, v)
                if body or method in ("PUT", "POST"):
                    conn.putheader("Content-Length", str(len(body)))
                conn.endheaders(body or None)
                resp = conn.getresponse()
                data = resp.read()
                self.send_response(resp.status, resp.reason)
                for k, v in resp.getheaders():
                    if k.lower() not in HOP_BY_HOP and k.lower() != "content-length":
                        self.send_header(k, v)
                if method == "HEAD":  # the object's size, no body
                    self.send_header("Content-Length", resp.getheader("Content-Length") or "0")
                else:
                    self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if method != "HEAD":
                    self.wfile.write(data)
                proxy._record(method, path, resp.status, False)
            finally:
                conn.close()

        do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _handle

    return Handler
