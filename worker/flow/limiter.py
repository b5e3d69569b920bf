"""A rate limit towards the gateway that holds across every worker replica, and slows down when throttled.

The limit is ``B2C_RATE_LIMIT`` requests per second per shortcode (payments and status queries alike: both
reach the same gateway), with bursts of ``B2C_RATE_BURST``. Its state is one GCRA row in the ledger's
database (:meth:`worker.ledger.flow_state.FlowStore.reserve`), so three replicas with a limit of 5 send 5 a second
between them, not 15. Each request reserves its own slot and its thread sleeps until then (in short steps,
so a shutdown is not held up), at most ``max_wait`` seconds: a request that would wait longer is not sent
and its command goes back to the queue for later (``rate_limited``).

Adaptive (AIMD, as TCP does): a throttling or overload answer halves the effective rate shared by every
replica (at most once a second, never below 5% of the limit) and keeps the next request one new interval
away; every accepted request adds back 5% of the limit, so after one halving 10 accepted requests restore
the full rate. With no limit configured (0, the default) nothing is paced and nothing adapts.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from enum import StrEnum

from worker import metrics
from worker.errors import B2CError
from worker.ledger.flow_state import FlowStore

log = logging.getLogger(__name__)


class RateDirection(StrEnum):
    """Which way the shared rate moved: the ``direction`` of ``mpesa_b2c_rate_limit_adjustments_total``."""

    DOWN = "down"
    UP = "up"


DECREASE_FACTOR = 0.5
FLOOR_FRACTION = 0.05
RECOVERY_FRACTION = 0.05
DECREASE_COOLDOWN = 1.0
DEFAULT_MAX_WAIT = 30.0
_SLEEP_STEP = 0.2


class RateLimiter:
    """The pacing of one shortcode; thread-safe (all state is in the database)."""

    def __init__(
        self,
        store: FlowStore | None,
        key: str,
        *,
        rate: float,
        burst: int = 1,
        max_wait: float = DEFAULT_MAX_WAIT,
        stop: threading.Event | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self._store = store
        self.key = key
        self.ceiling = rate
        self.burst = max(1, burst)
        self.max_wait = max_wait
        self._stop = stop or threading.Event()
        self._sleep = sleep
        self._rate = rate
        metrics.RATE_LIMIT_EFFECTIVE.set(rate)

    @property
    def enabled(self) -> bool:
        return self._store is not None and self.ceiling > 0

    @property
    def effective_rate(self) -> float:
        """The shared effective rate as this process last saw it (0: no limit)."""
        return self._rate if self.enabled else 0.0

    def acquire(self, max_wait: float | None = None) -> bool:
        """Wait for this request's slot; False (nothing reserved) if it is further away than ``max_wait``
        seconds or the worker is stopping. Call it right before each request to the gateway."""
        if not self.enabled:
            return True
        assert self._store is not None
        reservation = self._store.reserve(
            self.key,
            ceiling=self.ceiling,
            burst=self.burst,
            max_wait=self.max_wait if max_wait is None else max_wait,
        )
        self._seen(reservation.rate)
        if reservation.wait is None:
            log.info("no rate-limit slot within %.0fs at %.2f/s; back to the queue", self.max_wait, self._rate)
            return False
        metrics.RATE_LIMIT_WAIT_SECONDS.observe(reservation.wait)
        deadline = time.monotonic() + reservation.wait
        while (left := deadline - time.monotonic()) > 0:
            if self._stop.is_set():
                return False
            self._sleep(min(left, _SLEEP_STEP))
        return True

    def throttled(self) -> None:
        """The gateway said it is overloaded or throttling: slow every replica down."""
        if not self.enabled:
            return
        assert self._store is not None
        before = self._rate
        try:
            rate = self._store.slow_down(
                self.key,
                ceiling=self.ceiling,
                factor=DECREASE_FACTOR,
                floor=self.ceiling * FLOOR_FRACTION,
                cooldown=DECREASE_COOLDOWN,
            )
        except B2CError as exc:
            log.warning("could not lower the shared rate: %s", exc)
            return
        if rate < before:
            metrics.RATE_LIMIT_ADJUSTMENTS.labels(direction=RateDirection.DOWN).inc()
            log.warning("gateway throttling: rate lowered to %.2f/s (limit %.2f/s)", rate, self.ceiling)
        self._seen(rate)

    def succeeded(self) -> None:
        """An accepted request: recover towards the configured limit."""
        if not self.enabled or self._rate >= self.ceiling:
            return
        assert self._store is not None
        try:
            rate = self._store.speed_up(self.key, ceiling=self.ceiling, step=self.ceiling * RECOVERY_FRACTION)
        except B2CError as exc:
            log.warning("could not raise the shared rate: %s", exc)
            return
        if rate > self._rate:
            metrics.RATE_LIMIT_ADJUSTMENTS.labels(direction=RateDirection.UP).inc()
        self._seen(rate)

    def refresh(self) -> float:
        """Re-read the shared effective rate (another replica may have changed it); for gauges."""
        if self.enabled:
            assert self._store is not None
            self._seen(self._store.rate(self.key, ceiling=self.ceiling))
        return self.effective_rate

    def _seen(self, rate: float) -> None:
        self._rate = rate
        metrics.RATE_LIMIT_EFFECTIVE.set(rate)
