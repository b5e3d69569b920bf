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
from collections.abc import Callable
from typing import Any

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

    # ------------------------------------------------------------------------ the consumer's side

    def admit(self) -> HoldReason | None:
        """Before taking a command on: a hold reason while the breaker is open (and no probe is due)."""
        held = self.breaker.blocked()
        if held is not None and self._on_hold is not None:
            self._on_hold(held)
        return held

    def tick(self) -> Accepting:
        """For a background loop: probes, shared state, gauges; whether to take commands now."""
        self.limiter.refresh()
        return safe_tick(self.breaker)

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
