"""Run a WSGI app on waitress in a background thread, and stop it cleanly: one helper for every server role."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable
from typing import Any

from waitress import wasyncore
from waitress.server import create_server

log = logging.getLogger(__name__)

WsgiApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


class RunningServer:
    """A waitress server on its own thread; ``port`` is the bound port (useful with port 0)."""

    def __init__(
        self,
        app: WsgiApp,
        host: str,
        port: int,
        *,
        threads: int,
        name: str,
        keep_proxy_headers: bool = False,
        max_request_body: int | None = None,
    ) -> None:
        # keep_proxy_headers: the app itself decides whom to believe (the receiver's trusted proxies), so
        # waitress must not strip X-Forwarded-For; no other role reads them.
        options: dict[str, Any] = {"clear_untrusted_proxy_headers": not keep_proxy_headers}
        if max_request_body is not None:
            options["max_request_body_size"] = max_request_body
        self._server: Any = create_server(app, host=host, port=port, threads=threads, ident=name, **options)
        self.host = host
        self.port: int = int(self._server.effective_port)
        self._thread = threading.Thread(target=self._server.run, name=f"{name}-http", daemon=True)
        self._thread.start()

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def stop(self, timeout: float = 5.0) -> None:
        """Close every socket from the loop's own thread (closing them from here could pull a descriptor out
        from under its select()); the loop ends once its map is empty, open keep-alive connections included."""
        server = self._server
        if self._thread.is_alive():
            server.trigger.pull_trigger(lambda: wasyncore.close_all(server._map, ignore_all=True))
            self._thread.join(timeout)
        if self._thread.is_alive():
            log.warning("the %s server thread did not stop within %.0f s", self._thread.name, timeout)
        server.task_dispatcher.shutdown(timeout=timeout)


def start_server(
    app: WsgiApp,
    host: str,
    port: int,
    *,
    threads: int = 8,
    name: str = "mpesa-b2c",
    keep_proxy_headers: bool = False,
    max_request_body: int | None = None,
) -> RunningServer:
    return RunningServer(
        app,
        host,
        port,
        threads=threads,
        name=name,
        keep_proxy_headers=keep_proxy_headers,
        max_request_body=max_request_body,
    )
