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
from worker.ledger.quarantine import REASON_UNPARSABLE
from worker.payouts.matching import REASONS as MATCH_REASONS
from worker.payouts.models import FINAL_STATUSES, ROUTING_KEYS, PayoutStatus
from worker.protocol.codes import RESULT_CODES, ResultOutcome
from worker.protocol.status import StatusVerdict
from worker.receiver.endpoint import CallbackReceiver
from worker.receiver.guard import Refusal
from worker.settings import Settings


def receiver_series() -> metrics.BoundedSeries:
    """Every series of a closed label set the receiver increments (see :func:`worker.metrics.start_at_zero`)."""
    results = [{"outcome": str(entry.outcome), "result_code": code} for code, entry in RESULT_CODES.items()]
    return {
        metrics.RESULTS_RECEIVED: [*results, {"outcome": str(ResultOutcome.UNKNOWN), "result_code": "other"}],
        metrics.RESULTS_QUARANTINED: metrics.every(reason=(*MATCH_REASONS, REASON_UNPARSABLE)),
        metrics.CALLBACKS_REFUSED: metrics.every(reason=Refusal),
        metrics.STATUS_QUERY_ANSWERS: metrics.every(verdict=StatusVerdict),
        metrics.PAYOUT_TRANSITIONS: metrics.every(status=PayoutStatus),
        metrics.COMMAND_TO_FINAL_SECONDS: metrics.every(status=FINAL_STATUSES),
        metrics.EVENTS_PUBLISHED: metrics.every(routing_key=ROUTING_KEYS),
    }


class ReceiverService:
    """``mpesa-b2c callbacks``: the GenericAPIResult endpoint at the path of B2C_RESULT_URL."""

    def __init__(self, settings: Settings, *, host: str = "127.0.0.1", port: int = 8320, threads: int = 8):
        self.settings = settings
        metrics.BUILD_INFO.info({"version": __version__})
        metrics.start_at_zero(receiver_series())
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
