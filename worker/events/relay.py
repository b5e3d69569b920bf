"""The outbox relay: publishes the events the ledger stored, then marks them published.

Events are only ever derived from ledger transitions; this is the one place that puts them on the broker.
Delivery is at least once: a crash between the broker's confirm and ``mark_published`` republishes an event,
so consumers de-duplicate by ``event_id``.

A request path that must not wait for the broker (the callback receiver's answer to M-PESA) only *nudges*
the relay: its own thread (:meth:`OutboxRelay.start`) publishes the nudged payouts' events at once, and sweeps
up what anyone left behind every interval. A broker outage then delays events, never the answer.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Protocol

from worker import metrics
from worker.amqp.publisher import ConfirmedPublisher
from worker.errors import B2CError
from worker.ledger import OutboxEvent
from worker.ledger.outbox import EventOutbox
from worker.settings import Settings

log = logging.getLogger(__name__)

# A flusher that dies mid-publish leaves its rows to the next one after this long.
LEASE_SECONDS = 30.0


class Publisher(Protocol):
    def publish(
        self,
        exchange: str,
        routing_key: str,
        body: bytes,
        *,
        message_id: str | None = None,
        headers: dict[str, object] | None = None,
    ) -> None: ...


class OutboxRelay:
    """Publishes pending outbox rows; ``publisher_factory`` is called lazily so a process starts without a broker."""

    def __init__(self, outbox: EventOutbox, publisher_factory: Callable[[], Publisher], exchange: str) -> None:
        self._outbox = outbox
        self._factory = publisher_factory
        self._exchange = exchange
        self._publisher: Publisher | None = None
        self._lock = threading.Lock()
        self._nudged: dict[str, None] = {}
        self._nudge_lock = threading.Lock()
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    def _get_publisher(self) -> Publisher:
        with self._lock:
            if self._publisher is None:
                self._publisher = self._factory()
            return self._publisher

    def flush(self, payout_id: str | None = None, *, limit: int = 500) -> int:
        """Publish pending events (of one payout, or all); raise B2CError when the broker refuses or is gone.

        Rows are leased first, so a worker and a receiver flushing the same payout do not both publish them.
        """
        return self._publish(self._outbox.claim(limit, lease_seconds=LEASE_SECONDS, payout_id=payout_id))

    def flush_older(self, older_than_seconds: float = 2.0, *, limit: int = 500) -> int:
        """Publish what request paths left behind; leased rows keep two relays from racing each other."""
        return self._publish(
            self._outbox.claim(limit, older_than_seconds=older_than_seconds, lease_seconds=LEASE_SECONDS)
        )

    def _publish(self, events: list[OutboxEvent]) -> int:
        if not events:
            return 0
        done = 0
        try:
            publisher = self._get_publisher()
            for event in events:
                publisher.publish(self._exchange, event.routing_key, event.body, message_id=event.event_id or None)
                self._outbox.mark_published([event.id])
                metrics.EVENTS_PUBLISHED.labels(routing_key=event.routing_key).inc()
                done += 1
        except B2CError:
            # Unpublished rows go back at once so the next flush keeps their order, not after the lease.
            self._outbox.release([event.id for event in events[done:]])
            raise
        return done

    def try_flush(self, payout_id: str | None = None) -> bool:
        """Like flush, but a broker failure is logged, not raised: the events stay stored for the next try."""
        return self._guarded(lambda: self.flush(payout_id))

    def try_flush_older(self) -> None:
        self._guarded(self.flush_older)

    def _guarded(self, action: Callable[[], int]) -> bool:
        try:
            action()
        except B2CError as exc:
            log.warning("events stay in the outbox for now: %s", exc)
            self._reset()
            return False
        return True

    def nudge(self, payout_id: str) -> None:
        """Have the relay's thread publish this payout's events now; returns at once, whatever the broker does.

        Without a started thread the events wait for the next flush by anyone (they are stored either way).
        """
        with self._nudge_lock:
            self._nudged[payout_id] = None
        self._wake.set()

    def start(self, interval: float, name: str = "outbox-relay") -> None:
        """Run the relay on its own daemon thread: nudged payouts at once, a sweep every ``interval`` seconds."""
        self._thread = threading.Thread(target=self._run, args=(interval,), name=name, daemon=True)
        self._thread.start()

    def _run(self, interval: float) -> None:
        sweep_at = time.monotonic()
        while not self._stopping.is_set():
            self._wake.wait(max(sweep_at - time.monotonic(), 0.0))
            self._wake.clear()
            if self._stopping.is_set():
                return
            try:
                self._relay_nudged()
                if time.monotonic() >= sweep_at:
                    self.try_flush_older()
                    sweep_at = time.monotonic() + interval
            except Exception:  # the relay thread must outlive a ledger blip or a bug; the rows stay stored
                log.exception("outbox relay pass failed; trying again in %.0f s", interval)
                sweep_at = time.monotonic() + interval

    def _relay_nudged(self) -> None:
        with self._nudge_lock:
            nudged, self._nudged = list(self._nudged), {}
        for payout_id in nudged:
            if not self.try_flush(payout_id):
                return  # the broker is away: the sweep takes the rest once it is back

    def _reset(self) -> None:
        with self._lock:
            publisher, self._publisher = self._publisher, None
        close = getattr(publisher, "close", None)
        if callable(close):
            try:
                close()
            except Exception:
                log.debug("closing a broken publisher failed", exc_info=True)

    def close(self) -> None:
        self._stopping.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(5.0)
        self._reset()


def relay_for(settings: Settings, outbox: EventOutbox) -> OutboxRelay:
    url = settings.amqp.url
    return OutboxRelay(outbox, lambda: ConfirmedPublisher(url, name="mpesa-b2c-events"), settings.amqp.events_exchange)
