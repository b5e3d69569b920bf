"""Process wiring for the worker role: consume commands, pay them, look unknowns up, publish events.

The service builds its parts from the settings once, runs them, and stops them in the reverse order: stop
taking work, let in-flight payouts finish, publish what the outbox still holds, close.
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
from collections.abc import Callable, Iterable
from typing import Any

from prometheus_client import make_wsgi_app

from worker import __version__, metrics
from worker.amqp.connection import connect
from worker.amqp.consumer import ThreadedConsumer
from worker.amqp.publisher import ConfirmedPublisher
from worker.amqp.topology import declare_topology, queue_depth
from worker.background import Background
from worker.errors import B2CError
from worker.events.relay import relay_for
from worker.flow.control import FlowControl
from worker.flow.deferral import LEDGER_HOLD, Deferrer
from worker.flow.limiter import RateDirection
from worker.gateway import callback_urls
from worker.gateway.g2 import AttemptReason, Gateway, HoldReason
from worker.httpserver import RunningServer, start_server
from worker.ledger import open_ledger
from worker.ledger.flow_state import BreakerReason
from worker.ledger.gauges import GAUGE_INTERVAL, update_ledger_gauges
from worker.ledger.lookups import LookupAction, LookupTrigger, QueryResponse
from worker.paying.handler import LEDGER_ERROR, PayoutProcessor
from worker.paying.lookups import LookupRunner
from worker.payouts.models import (
    COMMAND_REFUSED_KEY,
    FINAL_STATUSES,
    ROUTING_KEYS,
    CommandId,
    PayoutStatus,
    RefusalReason,
    RejectionReason,
)
from worker.payouts.policy import SendAnswer, StaleAction
from worker.protocol.codes import ResponseOutcome
from worker.protocol.request import STATUS_QUERY_COMMAND
from worker.settings import Settings

log = logging.getLogger(__name__)

FLOW_INTERVAL = 0.25


def worker_series(deferral_tiers: Iterable[str]) -> metrics.BoundedSeries:
    """Every series of a closed label set the worker increments (see :func:`worker.metrics.start_at_zero`)."""
    commands = (*CommandId, STATUS_QUERY_COMMAND)
    return {
        metrics.COMMANDS_REJECTED: metrics.every(reason=RejectionReason),
        metrics.COMMANDS_REFUSED: metrics.every(reason=RefusalReason),
        metrics.STALE_ANSWERS: metrics.every(answer=SendAnswer, action=StaleAction),
        metrics.DEAD_LETTERS: metrics.every(reason=(*RejectionReason, LEDGER_ERROR)),
        metrics.B2C_CALLS: metrics.every(command=commands, outcome=(*ResponseOutcome, "not_sent")),
        metrics.B2C_CALL_SECONDS: metrics.every(command=commands),
        metrics.B2C_RETRIES: metrics.every(reason=AttemptReason),
        metrics.PAYOUT_TRANSITIONS: metrics.every(status=PayoutStatus),
        metrics.COMMAND_TO_FINAL_SECONDS: metrics.every(status=FINAL_STATUSES),
        metrics.EVENTS_PUBLISHED: metrics.every(routing_key=(*sorted(ROUTING_KEYS), COMMAND_REFUSED_KEY)),
        metrics.LOOKUPS: metrics.every(trigger=LookupTrigger, action=LookupAction),
        metrics.STATUS_QUERIES: metrics.every(outcome=QueryResponse),
        metrics.CIRCUIT_OPENINGS: metrics.every(reason=BreakerReason),
        metrics.COMMANDS_HELD: metrics.every(reason=(*HoldReason, LEDGER_HOLD)),
        metrics.DEFERRALS: metrics.every(tier=deferral_tiers),
        metrics.RATE_LIMIT_ADJUSTMENTS: metrics.every(direction=RateDirection),
    }


class WorkerService:
    """``mpesa-b2c worker``: consume commands, pay them, publish events; /metrics and /healthz on a side port."""

    def __init__(self, settings: Settings, *, metrics_host: str = "127.0.0.1", metrics_port: int | None = 8330):
        self.settings = settings
        metrics.BUILD_INFO.info({"version": __version__})
        metrics.PREFETCH.set(settings.amqp.prefetch)
        self.ledger = open_ledger(settings.ledger)
        # What M-PESA calls back on: the configured URLs plus the secret token (worker.gateway.callback_urls).
        self.gateway = Gateway(callback_urls.gateway_mpesa(settings))
        self.relay = relay_for(settings, self.ledger.outbox)
        # Circuit breaker + rate limit on every gateway request (worker.flow.control), shared with the other replicas
        # through the ledger's database; "not processed" commands wait in delay queues (worker.flow.deferral).
        self.flow = FlowControl(settings, self.ledger.flow, on_hold=self._pause)
        self.gateway.observer = self.flow
        self.deferrer = Deferrer(
            settings.amqp,
            settings.flow.retry_delays,
            lambda: ConfirmedPublisher(settings.amqp.url, name="mpesa-b2c-deferrals"),
        )
        metrics.start_at_zero(worker_series(self.deferrer.labels))
        self.processor = PayoutProcessor(
            settings,
            self.ledger.payouts,
            self.ledger.lookups,
            self.gateway,
            self.relay,
            flow=self.flow,
            deferrer=self.deferrer,
        )
        self.lookups = LookupRunner(
            settings,
            self.ledger.lookups,
            self.ledger.payouts,
            self.gateway,
            self.relay,
            send_lease_seconds=self.processor.send_lease_seconds,
        )
        self.consumer = ThreadedConsumer(
            settings.amqp.url,
            settings.amqp.command_queue,
            self.processor.handle,
            concurrency=settings.concurrency,
            prefetch=settings.amqp.prefetch,
            on_connected=lambda channel: declare_topology(channel, settings.amqp),
            dead_queue=settings.amqp.dead_queue,
            name="mpesa-b2c-worker",
            # On SIGTERM, wait as long as one send can take before giving up on the payouts in flight.
            drain_timeout=self.processor.send_lease_seconds,
        )
        self._background = Background()
        self._metrics_app = make_wsgi_app()
        self._thread: threading.Thread | None = None
        self._failure: BaseException | None = None
        self._server: RunningServer | None = None
        if metrics_port is not None:  # last: a scrape may come at once
            self._server = start_server(self._app, metrics_host, metrics_port, threads=2, name="mpesa-b2c-worker")

    @property
    def metrics_port(self) -> int | None:
        return self._server.port if self._server else None

    def run(self) -> None:
        """Block until stopped (SIGTERM handlers call ``stop``); raises BrokerUnavailable if RabbitMQ is down."""
        self._background.every(self.settings.outbox_interval, self.relay.try_flush_older, "outbox-relay")
        self._background.every(
            GAUGE_INTERVAL, lambda: update_ledger_gauges(self.ledger.payouts, self.ledger.outbox), "ledger-gauges"
        )
        self._background.every(GAUGE_INTERVAL, self._queue_gauge, "queue-gauge")
        self._background.every(self.lookups.tick_seconds, self.lookups.tick, "lookups")
        self._follow_flow()  # an open breaker (another replica's, or from before a restart) holds from the start
        self._background.every(FLOW_INTERVAL, self._follow_flow, "flow-control")
        try:
            self.consumer.run()
        finally:
            self._close()

    def start_in_thread(self) -> None:
        def target() -> None:
            try:
                self.run()
            except BaseException as exc:
                self._failure = exc
                log.exception("worker stopped with an error")

        self._thread = threading.Thread(target=target, name="mpesa-b2c-worker-main", daemon=True)
        self._thread.start()

    def stop(self, timeout: float | None = None) -> None:
        self.flow.stop.set()  # requests waiting for a rate-limit slot or the canary give up (nothing sent)
        self.consumer.stop(timeout)
        if self._thread is not None:
            self._thread.join(timeout)

    def _pause(self, reason: str) -> None:
        self.consumer.pause(reason)

    def _follow_flow(self) -> None:
        """Take commands only while the circuit breaker lets requests through (or a probe is due)."""
        decision = self.flow.tick()
        if decision.accepting:
            self.consumer.resume()
        else:
            self.consumer.pause(decision.why)

    def _close(self) -> None:
        self._background.join()
        with contextlib.suppress(B2CError):
            self.relay.try_flush()
        self.relay.close()
        self.deferrer.close()
        self.flow.close()
        if self._server is not None:
            self._server.stop()
        self.ledger.close()

    def _queue_gauge(self) -> None:
        connection = connect(self.settings.amqp.url, name="mpesa-b2c-gauge")
        try:
            channel = connection.channel()
            metrics.QUEUE_DEPTH.set(queue_depth(channel, self.settings.amqp.command_queue))
            # The broker dead-letters a command over the delivery limit without telling the worker: only the
            # dead queue's depth shows it (MpesaB2CDeadQueueGrowing).
            metrics.DEAD_QUEUE_DEPTH.set(queue_depth(channel, self.settings.amqp.dead_queue))
        finally:
            with contextlib.suppress(Exception):
                connection.close()

    def _app(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        if path == "/metrics":
            return self._metrics_app(environ, start_response)  # type: ignore[no-any-return]
        if path == "/healthz":
            # An open circuit breaker is reported but stays 200: the process is healthy and restarting it
            # would not fund the account or fix a credential (see worker.flow.breaker).
            alive = self._failure is None
            health = {"status": "ok" if alive else "failed", "in_flight": self.consumer.in_flight}
            health.update(consuming=not self.consumer.paused, **self.flow.health())
            start_response("200 OK" if alive else "503 Service Unavailable", [("Content-Type", "application/json")])
            return [json.dumps(health).encode()]
        start_response("404 Not Found", [("Content-Type", "text/plain")])
        return [b"not found\n"]
