"""Waitress around the simulator app, in a background thread or in the foreground for the CLI.

The one addition to plain waitress is a way to reset a connection instead of answering it: the app raises
:class:`DropConnection`, the task turns lingering off on the socket (so ``close`` sends a TCP RST) and
tells its channel to close without writing a byte. Nothing else in waitress is patched.
"""

from __future__ import annotations

import logging
import signal
import socket
import struct
import threading
from types import FrameType
from typing import Any

from cryptography.hazmat.primitives.asymmetric import rsa
from waitress.channel import HTTPChannel
from waitress.server import BaseWSGIServer, create_server
from waitress.task import WSGITask
from waitress.trigger import trigger as _Trigger

from worker.settings import Settings
from worker.simulator.app import REQUEST_PATH, DropConnection, SimulatorApp
from worker.simulator.engine import SimulatedGateway
from worker.simulator.keys import prepare_key
from worker.simulator.metrics import SimulatorMetrics
from worker.simulator.options import SimulatorOptions
from worker.simulator.state import SimulatorState

log = logging.getLogger(__name__)


class _DroppingTask(WSGITask):  # type: ignore[misc]
    dropped = False

    def execute(self) -> None:
        try:
            super().execute()
        except DropConnection:
            self.dropped = True
            self.close_on_finish = True
            self.channel.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))

    def finish(self) -> None:
        if not self.dropped:
            super().finish()


class _DroppingChannel(HTTPChannel):  # type: ignore[misc]
    task_class = _DroppingTask


class RunningSimulator:
    """A simulator serving on ``host:port`` from a background thread until :meth:`stop`."""

    def __init__(
        self,
        settings: Settings,
        host: str,
        port: int,
        options: SimulatorOptions,
        *,
        state: SimulatorState | None = None,
        key: rsa.RSAPrivateKey | None = None,
    ) -> None:
        self.state = state if state is not None else SimulatorState(settings.simulator.initial_balance)
        key = key if key is not None else prepare_key(settings)
        self.gateway = SimulatedGateway(settings.mpesa, options, key, self.state, SimulatorMetrics())
        self._map: dict[int, Any] = {}
        self._server: Any = create_server(
            SimulatorApp(self.gateway),
            map=self._map,
            host=host,
            port=port,
            threads=options.threads,
            ident="mpesa-g2-simulator",
            max_request_body_size=options.max_body_bytes,
            clear_untrusted_proxy_headers=True,
            expose_tracebacks=False,
        )
        for dispatcher in list(self._map.values()):
            if isinstance(dispatcher, BaseWSGIServer):
                dispatcher.channel_class = _DroppingChannel
        self.host = host
        self.port: int = int(getattr(self._server, "effective_port", 0) or self._server.effective_listen[0][1])
        self._stopped = False
        self._thread = threading.Thread(target=self._server.run, name="simulator-http", daemon=True)
        self._thread.start()
        log.info("M-PESA G2 simulator listening on %s", self.url)

    @property
    def base_url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    @property
    def url(self) -> str:
        return self.base_url + REQUEST_PATH

    def stop(self, timeout: float = 5.0) -> None:
        """Stop callbacks, close every socket from the server's own loop thread, then drain the workers."""
        if self._stopped:
            return
        self._stopped = True
        self.gateway.close()

        def close_all() -> None:
            for dispatcher in list(self._map.values()):
                try:
                    if isinstance(dispatcher, HTTPChannel):
                        dispatcher.handle_close()
                    else:
                        dispatcher.close()
                except OSError:
                    log.debug("error closing a socket during shutdown", exc_info=True)
            self._map.clear()

        trigger = next((d for d in list(self._map.values()) if isinstance(d, _Trigger)), None)
        if trigger is not None and self._thread.is_alive():
            trigger.pull_trigger(close_all)
            self._thread.join(timeout)
        if self._thread.is_alive():
            close_all()
            self._thread.join(timeout)
        self._server.task_dispatcher.shutdown(timeout=timeout)
        log.info("M-PESA G2 simulator stopped")

    def __enter__(self) -> RunningSimulator:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def start_simulator(
    settings: Settings,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    options: SimulatorOptions | None = None,
    state: SimulatorState | None = None,
    key: rsa.RSAPrivateKey | None = None,
) -> RunningSimulator:
    """Start a simulator in the background; port 0 picks a free port (read it from ``.port``).

    ``state`` and ``key`` (a stopped simulator's ``.state`` and ``.gateway.key``) bring one back after a
    restart with its memory intact, as the real gateway keeps it: OriginatorConversationIDs it has seen,
    payments, balance, and the key the worker's certificate belongs to.
    """
    return RunningSimulator(settings, host, port, options or SimulatorOptions(), state=state, key=key)


def serve(settings: Settings, host: str, port: int, options: SimulatorOptions | None = None) -> None:
    """Run in the foreground until SIGINT or SIGTERM, then stop cleanly."""
    done = threading.Event()
    previous: dict[signal.Signals, Any] = {}

    def on_signal(signum: int, frame: FrameType | None) -> None:
        log.info("signal %d received; stopping the simulator", signum)
        done.set()

    for signum in (signal.SIGINT, signal.SIGTERM):
        previous[signum] = signal.signal(signum, on_signal)
    simulator = start_simulator(settings, host=host, port=port, options=options)
    try:
        while not done.wait(1.0):
            pass
    finally:
        simulator.stop()
        for signum, handler in previous.items():
            signal.signal(signum, handler)
