"""How the worker paces itself towards the gateway: the circuit breaker and the rate limit, per request.

:class:`FlowControl` is the :class:`~worker.gateway.g2.AttemptObserver` of the worker's Gateway, so every HTTP
attempt (payments and status queries, the gateway client's own quick retries included) first passes the
breaker (:mod:`worker.flow.breaker`) and then waits for its rate-limit slot (:mod:`worker.flow.limiter`), and every
answer feeds both: connection failures and account conditions open the breaker, throttling answers slow the
shared rate down, accepted requests speed it up again.

A status query sent through another Gateway gets the same pacing by passing this object as
that Gateway's ``observer``, or by calling :meth:`FlowControl.before_attempt` / ``after_attempt`` itself.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from worker.errors import B2CError
from worker.flow.breaker import FINGERPRINT_SALT, Accepting, CircuitBreaker, credential_fingerprint, safe_tick
from worker.flow.limiter import RateLimiter
from worker.gateway.g2 import AttemptReason, HoldReason
from worker.ledger.flow_state import FlowStore
from worker.protocol.codes import ResponseOutcome
from worker.settings import Settings

log = logging.getLogger(__name__)

# How long a request may wait for this process's first request (the canary) to prove the credential.
CANARY_WAIT = 5.0
# How long one canary may stay unresolved before another request may try: the send itself, then its result.
CANARY_RESULT_WAIT = 20.0
# How long the consumer stays paused after a ledger error: doubling per error in a row, up to the maximum.
LEDGER_BACKOFF_FIRST = 0.5
LEDGER_BACKOFF_MAX = 15.0


class FlowControl:
    """The breaker and the limiter of the worker's shortcode, shared with every replica via the ledger DB."""

    def __init__(
        self,
        settings: Settings,
        store: FlowStore,
        *,
        on_hold: Callable[[str], None] | None = None,
        canary_wait: float = CANARY_WAIT,
    ) -> None:
        mpesa, flow = settings.mpesa, settings.flow
        self.stop = threading.Event()
        self._store = store
        self._on_hold = on_hold
        send_seconds = mpesa.connect_timeout + mpesa.read_timeout + mpesa.retry_max_seconds
        self.breaker = CircuitBreaker(
            store,
            mpesa.shortcode,
            threshold=flow.breaker_threshold,
            probe_seconds=flow.breaker_probe_seconds,
            gateway_url=mpesa.url,
            connect_timeout=mpesa.connect_timeout,
            canary_lease=send_seconds + CANARY_RESULT_WAIT,
            canary_wait=canary_wait,
            stop=self.stop,
            on_open=on_hold,
            fingerprint=credential_fingerprint(mpesa, store.salt(FINGERPRINT_SALT)),
        )
        self.limiter = RateLimiter(store, mpesa.shortcode, rate=flow.rate_limit, burst=flow.rate_burst, stop=self.stop)
        self._ledger_lock = threading.Lock()
        self._ledger_errors = 0
        self._ledger_hold_until = 0.0

    # ------------------------------------------------------------------------ the consumer's side

    def admit(self) -> HoldReason | None:
        """Before taking a command on: a hold reason while the breaker is open (and no probe is due)."""
        held = self.breaker.blocked()
        if held is not None and self._on_hold is not None:
            self._on_hold(held)
        return held

    def ledger_failed(self, why: str) -> None:
        """A command could not be handled because the ledger failed: stop taking commands for a while, so
        a fast-failing database does not spin deliveries to the queue's delivery limit. :meth:`tick` resumes
        once the hold is over and the ledger answers again."""
        with self._ledger_lock:
            self._ledger_errors += 1
            backoff = min(LEDGER_BACKOFF_MAX, LEDGER_BACKOFF_FIRST * 2 ** min(self._ledger_errors - 1, 16))
            self._ledger_hold_until = max(self._ledger_hold_until, time.monotonic() + backoff)
        if self._on_hold is not None:
            self._on_hold(f"ledger unavailable: {why}")

    def tick(self) -> Accepting:
        """For a background loop: probes, shared state, gauges; whether to take commands now. A ledger that
        cannot be read keeps the safe side (pause), whichever part of the tick it failed."""
        try:
            self.limiter.refresh()
        except B2CError as exc:
            log.warning("rate limit state unavailable: %s", exc)
            return Accepting(False, f"rate limit state unavailable: {exc}")
        decision = safe_tick(self.breaker)
        if not decision.accepting:
            return decision
        with self._ledger_lock:
            now = time.monotonic()
            if now < self._ledger_hold_until:
                return Accepting(False, "backing off after a ledger error")
            if now > self._ledger_hold_until + LEDGER_BACKOFF_MAX:  # quiet for a while: the next hold is short
                self._ledger_errors = 0
        return decision

    @property
    def max_wait_seconds(self) -> float:
        """The longest a request can wait here before it is sent (canary, then rate-limit slot)."""
        return self.breaker.canary_wait + (self.limiter.max_wait if self.limiter.enabled else 0.0)

    def health(self) -> dict[str, Any]:
        return {
            "breaker": self.breaker.describe(),
            "rate_limit": {
                "limit_per_second": self.limiter.ceiling,
                "effective_per_second": self.limiter.effective_rate,
                "burst": self.limiter.burst,
            },
        }

    def close(self) -> None:
        self.stop.set()

    # ------------------------------------------------------------------ the gateway's AttemptObserver

    def before_attempt(self, command: str, originator_conversation_id: str) -> HoldReason | None:
        held = self.breaker.gate(command, originator_conversation_id)
        if held is not None:
            if self._on_hold is not None and held != HoldReason.CREDENTIAL_UNPROVEN:
                self._on_hold(held)
            return held
        if not self.limiter.acquire():
            self.breaker.abandon(originator_conversation_id)
            return HoldReason.RATE_LIMITED
        return None

    def after_attempt(
        self,
        command: str,
        originator_conversation_id: str,
        outcome: ResponseOutcome,
        reason: AttemptReason,
        code: str | None,
    ) -> None:
        self.breaker.record(command, originator_conversation_id, outcome, reason, code)
        if outcome is ResponseOutcome.RETRY_LATER and code is not None:
            self.limiter.throttled()  # overloaded, throttling, licence/rate limit or busy: M-PESA asks for less
        elif outcome is ResponseOutcome.ACCEPTED:
            self.limiter.succeeded()
