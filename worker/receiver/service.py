"""Process wiring for the callback receiver role: the result endpoint, its outbox relay and its gauges."""

from __future__ import annotations

import contextlib

from worker import __version__, metrics
from worker.background import Background
from worker.errors import B2CError
from worker.events.relay import relay_for
from worker.httpserver import start_server
from worker.ledger import open_ledger
from worker.ledger.gauges import GAUGE_INTERVAL, update_ledger_gauges
from worker.receiver.endpoint import CallbackReceiver
from worker.settings import Settings


class ReceiverService:
    """``mpesa-b2c callbacks``: the GenericAPIResult endpoint at the path of B2C_RESULT_URL."""

    def __init__(self, settings: Settings, *, host: str = "127.0.0.1", port: int = 8320, threads: int = 8):
        self.settings = settings
        metrics.BUILD_INFO.info({"version": __version__})
        self.ledger = open_ledger(settings.ledger)
        self.relay = relay_for(settings, self.ledger.outbox)
        self.app = CallbackReceiver(settings, self.ledger.results, self.ledger.outbox, self.relay)
        self._background = Background()
        self.relay.start(settings.outbox_interval)
        self._background.every(
            GAUGE_INTERVAL, lambda: update_ledger_gauges(self.ledger.payouts, self.ledger.outbox), "ledger-gauges"
        )
        self.server = start_server(
            self.app,
            host,
            port,
            threads=threads,
            name="mpesa-b2c-callbacks",
            keep_proxy_headers=True,
            # A backstop far above the app's own limit (which answers 413 itself and counts it).
            max_request_body=max(4 * settings.receiver.max_body_bytes, 1024 * 1024),
        )

    @property
    def port(self) -> int:
        return self.server.port

    def stop(self) -> None:
        self.server.stop()
        self._background.join()
        with contextlib.suppress(B2CError):
            self.relay.try_flush()
        self.relay.close()
        self.ledger.close()
