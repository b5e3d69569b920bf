"""A fault-injecting HTTP proxy between the worker and the simulator: the network that loses a request.

``swallow(request_body) -> bool`` decides per request: True reads the request and then never answers (the
client's read timeout fires; the simulator never sees the request), False forwards it and relays the answer.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

import requests

STATUS_QUERY = b"TransactionStatusQuery"


def is_status_query(body: bytes) -> bool:
    return STATUS_QUERY in body


class FaultProxy:
    def __init__(self, swallow: Callable[[bytes], bool], *, hold: float = 3.0) -> None:
        self.swallow = swallow
        self.hold = hold
        self.upstream = ""
        self.swallowed: list[bytes] = []
        self.forwarded: list[bytes] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                if proxy.swallow(body):
                    with proxy._lock:
                        proxy.swallowed.append(body)
                    proxy._stop.wait(proxy.hold)
                    self.close_connection = True
                    return
                with proxy._lock:
                    proxy.forwarded.append(body)
                headers = {k: v for k, v in self.headers.items() if k.lower() in ("content-type", "soapaction")}
                answer = requests.post(proxy.upstream, data=body, headers=headers, timeout=30)
                self.send_response(answer.status_code)
                self.send_header("Content-Type", answer.headers.get("Content-Type", "text/xml"))
                self.send_header("Content-Length", str(len(answer.content)))
                self.end_headers()
                self.wfile.write(answer.content)

            def log_message(self, format: str, *args: object) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="fault-proxy", daemon=True)
        self._thread.start()

    def attach(self, upstream: str) -> str:
        """For start_local_stack(gateway_url=...): forward to ``upstream``, return the proxy's URL."""
        self.upstream = upstream
        path = urlsplit(upstream).path
        return f"http://127.0.0.1:{self._server.server_address[1]}{path}"

    def close(self) -> None:
        self._stop.set()
        self._server.shutdown()
        self._server.server_close()


def first_payments_of(originator_conversation_id: str, count: int = 1) -> Callable[[bytes], bool]:
    """Swallow the first ``count`` payment requests of one payout; forward everything else."""
    seen = {"n": 0}
    lock = threading.Lock()
    marker = originator_conversation_id.encode()

    def swallow(body: bytes) -> bool:
        if is_status_query(body) or marker not in body:
            return False
        with lock:
            seen["n"] += 1
            return seen["n"] <= count

    return swallow


def all_of(originator_conversation_id: str) -> Callable[[bytes], bool]:
    """Swallow every request about one payout: its payment and every status query naming it."""
    marker = originator_conversation_id.encode()
    return lambda body: marker in body
