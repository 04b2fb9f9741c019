"""A real S3 endpoint over HTTP on loopback for tests: moto's server, plus a
fault-injecting reverse proxy to put in front of it.

moto has no way to make its server fail on purpose, so transient errors
(throttling, 5xx) are injected by a small HTTP proxy: the client under test
talks real HTTP to the proxy, which answers chosen requests with an S3 error
and forwards the rest to moto unchanged.
"""

from __future__ import annotations

import http.client
import logging
import socket
import struct
import threading
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Iterator
from urllib.parse import urlparse

# Environment for boto3 against moto: fake credentials, a region, and no
# shared config files so a developer's ~/.aws cannot leak into tests.
S3_TEST_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_SESSION_TOKEN": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_CONFIG_FILE": "/nonexistent/paddock-test-aws-config",
    "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent/paddock-test-aws-credentials",
}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def start_s3_server() -> Iterator[str]:
    """Run moto's S3 server on 127.0.0.1 (a free port); yields its endpoint URL."""
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one log line per request otherwise
    port = _free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop()


@dataclass
class Fault:
    """Answer the next ``times`` requests with ``method`` (and a path containing
    ``path_contains``) with an S3 error instead of forwarding them."""

    method: str
    status: int
    code: str
    times: int = 1
    path_contains: str = ""
    injected: int = 0


RESET = 0
"""Fault.status of a connection reset: the proxy closes the socket with no answer."""

RANDOM_FAULTS = (
    Fault("*", 503, "SlowDown"),
    Fault("*", 500, "InternalError"),
    Fault("*", RESET, "reset before forwarding"),
    Fault("*", RESET, "reset after forwarding"),  # the store did it; the client never hears
)


@dataclass
class FaultProxy:
    url: str
    faults: list[Fault] = field(default_factory=list)
    forwarded: list[tuple[str, str]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    random_share: float = 0.0
    """answer this share of all requests with one of RANDOM_FAULTS, drawn with ``random_seed``"""
    random_seed: int = 0
    random_injected: dict[str, int] = field(default_factory=dict)

    def __post_init__(self):
        import random

        self._random = random.Random(self.random_seed)

    def take_fault(self, method: str, path: str) -> Fault | None:
        with self.lock:
            if self.random_share and self._random.random() < self.random_share:
                fault = self._random.choice(RANDOM_FAULTS)
                self.random_injected[fault.code] = self.random_injected.get(fault.code, 0) + 1
                if fault.code != "reset after forwarding":
                    return fault
                self.forwarded.append((method, path))
                return fault
            for fault in self.faults:
                if fault.method == method and fault.path_contains in path and fault.injected < fault.times:
                    fault.injected += 1
                    return fault
            self.forwarded.append((method, path))
            return None


_HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "expect", "proxy-connection", "upgrade"}
_SET_BY_PROXY = {"server", "date"}


def _handler(proxy: FaultProxy, upstream: str):
    target = urlparse(upstream)

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args):  # quiet
            pass

        def _read_body(self) -> bytes:
            if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                body = bytearray()
                while True:
                    size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                    if size == 0:
                        while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                            pass
                        return bytes(body)
                    body += self.rfile.read(size)
                    self.rfile.readline()
            return self.rfile.read(int(self.headers.get("Content-Length", 0) or 0))

        def _handle(self):
            # Read the whole request first so the connection stays usable after an injected error.
            body = self._read_body()
            fault = proxy.take_fault(self.command, self.path)
            if fault is not None and fault.status == RESET:
                if fault.code == "reset after forwarding":
                    self._forward(body)
                self._reset()
                return
            if fault is not None:
                payload = (
                    f'<?xml version="1.0" encoding="UTF-8"?><Error><Code>{fault.code}</Code>'
                    f"<Message>injected by the test proxy</Message></Error>"
                ).encode()
                self.send_response(fault.status)
                self.send_header("Content-Type", "application/xml")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(payload)
                return
            response, data = self._forward(body)
            self.send_response(response.status)
            for name, value in response.getheaders():
                # HEAD keeps the upstream Content-Length (the object's size); others get the body's.
                if name.lower() not in _HOP_BY_HOP | _SET_BY_PROXY and (self.command == "HEAD" or name.lower() != "content-length"):
                    self.send_header(name, value)
            if self.command != "HEAD":
                self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(data)

        def _forward(self, body: bytes):
            headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP_BY_HOP}
            headers["Content-Length"] = str(len(body))
            conn = http.client.HTTPConnection(target.hostname, target.port, timeout=30)
            try:
                conn.request(self.command, self.path, body=body, headers=headers)
                response = conn.getresponse()
                return response, response.read()
            finally:
                conn.close()

        def _reset(self):
            # SO_LINGER 0: close() sends a TCP RST, as a dropped connection does.
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.close_connection = True
            self.connection.close()

        do_GET = do_PUT = do_POST = do_HEAD = do_DELETE = _handle

    return Handler


@contextmanager
def start_fault_proxy(upstream: str, random_share: float = 0.0, random_seed: int = 0) -> Iterator[FaultProxy]:
    """A reverse proxy on 127.0.0.1 in front of ``upstream``; add :class:`Fault`
    entries to ``proxy.faults`` to make chosen requests fail, or give ``random_share``."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), None)
    proxy = FaultProxy(url=f"http://127.0.0.1:{server.server_address[1]}", random_share=random_share,
                       random_seed=random_seed)
    server.RequestHandlerClass = _handler(proxy, upstream)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield proxy
    finally:
        server.shutdown()
        server.server_close()
