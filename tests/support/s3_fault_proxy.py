"""A loopback reverse proxy in front of the S3 test server that can answer with real S3 errors.

Every request is forwarded verbatim (method, path and query, headers including `Host`, body) to
the upstream endpoint (moto's server), and the upstream response is passed back. While a fault
is armed for a request kind, matching requests are answered by the proxy itself with a genuine
S3 error response (status code, `application/xml` body `<Error><Code>..</Code>..</Error>`,
`x-amz-request-id`), or, in "reset" mode, by closing the connection without an answer. The
client (boto3) sees exactly what a failing S3 endpoint sends.

Request kinds (path-style addressing, as boto3 uses for an IP endpoint): DeleteObjects (POST
`/bucket?delete`), ListObjectsV2 (GET `/bucket?list-type=2`), ListObjects, GetObject, HeadObject,
PutObject, DeleteObject, and Other.

    with S3FaultProxy(moto_url) as proxy:
        client = boto3.client("s3", endpoint_url=proxy.url, ...)
        proxy.arm("DeleteObjects", status=503, code="SlowDown", after=1, times=2)
        ...
        assert proxy.failed["DeleteObjects"] == 2
"""

from __future__ import annotations

import http.client
import threading
import uuid
from collections import Counter
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Literal
from urllib.parse import parse_qs, urlsplit
from xml.sax.saxutils import escape

KINDS = ("DeleteObjects", "ListObjectsV2", "ListObjects", "GetObject", "HeadObject", "PutObject", "DeleteObject", "Other")

# Hop-by-hop headers (RFC 9110 7.6.1) are not forwarded; the proxy sets its own framing.
HOP_BY_HOP = {"connection", "keep-alive", "proxy-connection", "proxy-authenticate", "proxy-authorization", "te", "trailer",
              "transfer-encoding", "upgrade"}  # fmt: skip

REASONS = {500: "Internal Server Error", 503: "Slow Down"}


def request_kind(method: str, target: str) -> str:
    """The S3 operation of a path-style request."""
    parts = urlsplit(target)
    query = parse_qs(parts.query, keep_blank_values=True)
    segments = [s for s in parts.path.split("/") if s]
    if len(segments) == 1:  # the bucket itself
        if method == "POST" and "delete" in query:
            return "DeleteObjects"
        if method == "GET" and query.get("list-type") == ["2"]:
            return "ListObjectsV2"
        if method == "GET" and not (set(query) - {"prefix", "marker", "delimiter", "max-keys", "encoding-type"}):
            return "ListObjects"
        return "Other"
    if len(segments) >= 2 and not (set(query) - {"versionId", "partNumber"}):
        return {"GET": "GetObject", "HEAD": "HeadObject", "PUT": "PutObject", "DELETE": "DeleteObject"}.get(method, "Other")
    return "Other"


@dataclass
class Fault:
    kind: str
    status: int
    code: str
    message: str
    after: int  # let this many matching requests through first
    times: int | None  # then fail this many (None: until disarmed)
    mode: Literal["error", "reset"]
    seen: int = 0

    def take(self) -> bool:
        index = self.seen
        self.seen += 1
        return index >= self.after and (self.times is None or index < self.after + self.times)


class S3FaultProxy:
    """A threaded HTTP reverse proxy on 127.0.0.1:<free port> in front of `upstream` (http://host:port)."""

    def __init__(self, upstream: str, host: str = "127.0.0.1", port: int = 0):
        up = urlsplit(upstream)
        if up.scheme != "http" or not up.hostname:
            raise ValueError(f"upstream must be http://host:port, not {upstream!r}")
        self.upstream_host = up.hostname
        self.upstream_port = up.port or 80
        self._lock = threading.Lock()
        self._faults: list[Fault] = []
        self.failed: Counter[str] = Counter()  # requests the proxy answered with an error, by kind
        self.forwarded: Counter[str] = Counter()  # requests passed to the upstream, by kind
        self._server = ThreadingHTTPServer((host, port), _handler_for(self))
        self._server.daemon_threads = True
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    # lifecycle

    def start(self) -> S3FaultProxy:
        if self._thread is None:
            self._thread = threading.Thread(target=self._server.serve_forever, name="s3-fault-proxy", daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        if self._thread is not None:
            self._server.shutdown()
            self._thread.join(timeout=10)
            self._thread = None
        self._server.server_close()

    def __enter__(self) -> S3FaultProxy:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()

    # faults

    def arm(
        self,
        kind: str,
        status: int = 503,
        code: str = "SlowDown",
        message: str = "Please reduce your request rate.",
        after: int = 0,
        times: int | None = None,
        mode: Literal["error", "reset"] = "error",
    ) -> Fault:
        """Fail requests of `kind`: skip the first `after` matching ones, then fail `times` (None: all)."""
        if kind not in KINDS:
            raise ValueError(f"unknown request kind {kind!r}; one of {KINDS}")
        fault = Fault(kind, status, code, message, after, times, mode)
        with self._lock:
            self._faults.append(fault)
        return fault

    def disarm(self, kind: str | None = None) -> None:
        with self._lock:
            self._faults = [f for f in self._faults if kind is not None and f.kind != kind]

    def reset_counters(self) -> None:
        with self._lock:
            self.failed.clear()
            self.forwarded.clear()

    def _decide(self, kind: str) -> Fault | None:
        with self._lock:
            hit = None
            for fault in self._faults:
                if fault.kind == kind and fault.take() and hit is None:
                    hit = fault
            if hit is not None:
                self.failed[kind] += 1
            else:
                self.forwarded[kind] += 1
            return hit


def _handler_for(proxy: S3FaultProxy) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, as boto3's connection pool expects
        disable_nagle_algorithm = True  # headers and body are separate writes: no 40 ms delayed-ACK stall

        def log_message(self, format: str, *args: object) -> None:
            pass

        def _read_body(self) -> tuple[bytes, bool]:
            """The request body and whether the request framed one (Content-Length or chunked)."""
            if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
                chunks = []
                while True:
                    size_line = self.rfile.readline(65537)
                    size = int(size_line.split(b";", 1)[0].strip() or b"0", 16)
                    if size == 0:
                        while self.rfile.readline(65537) not in (b"\r\n", b"\n", b""):
                            pass  # trailers
                        return b"".join(chunks), True
                    chunks.append(self.rfile.read(size))
                    self.rfile.readline(65537)  # the CRLF after the chunk
            length = self.headers.get("Content-Length")
            if length is not None:
                return self.rfile.read(int(length)), True
            return b"", False

        def _handle(self) -> None:
            body, framed = self._read_body()
            kind = request_kind(self.command, self.path)
            fault = proxy._decide(kind)
            if fault is None:
                self._forward(body, framed)
            elif fault.mode == "reset":
                self.close_connection = True
                self.wfile.flush()
            else:
                self._error(fault)

        def _error(self, fault: Fault) -> None:
            request_id = uuid.uuid4().hex[:16].upper()
            resource = urlsplit(self.path).path
            payload = (
                '<?xml version="1.0" encoding="UTF-8"?>\n'
                f"<Error><Code>{escape(fault.code)}</Code><Message>{escape(fault.message)}</Message>"
                f"<Resource>{escape(resource)}</Resource><RequestId>{request_id}</RequestId>"
                f"<HostId>s3-fault-proxy</HostId></Error>"
            ).encode()
            self.send_response_only(fault.status, REASONS.get(fault.status))
            self.send_header("Content-Type", "application/xml")
            self.send_header("x-amz-request-id", request_id)
            self.send_header("Server", "AmazonS3")
            self.send_header("Date", self.date_time_string())
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(payload)

        def _forward(self, body: bytes, framed: bool) -> None:
            conn = http.client.HTTPConnection(proxy.upstream_host, proxy.upstream_port, timeout=60)
            try:
                # Headers verbatim and in order, Host included (it is part of the SigV4 signature).
                conn.putrequest(self.command, self.path, skip_host=True, skip_accept_encoding=True)
                for name, value in self.headers.items():
                    lower = name.lower()
                    if lower in HOP_BY_HOP or lower in ("content-length", "expect"):
                        continue
                    conn.putheader(name, value)
                if framed:
                    conn.putheader("Content-Length", str(len(body)))
                conn.endheaders(body if framed else None)
                resp = conn.getresponse()
                data = resp.read()
                headers = resp.getheaders()
            finally:
                conn.close()
            no_body = self.command == "HEAD" or resp.status in (204, 304) or 100 <= resp.status < 200
            self.send_response_only(resp.status, resp.reason)
            for name, value in headers:
                lower = name.lower()
                if lower in HOP_BY_HOP or (lower == "content-length" and not no_body):
                    continue
                self.send_header(name, value)
            if not no_body:
                self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            if not no_body:
                self.wfile.write(data)

        do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = do_PATCH = do_OPTIONS = _handle

    return Handler
