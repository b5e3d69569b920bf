"""The callback receiver: result -> ledger -> events, and only then "success" to M-PESA.

M-PESA may never send a result again once we answered success, so the raw body is committed to the ledger
before the answer. The answer never waits for the broker: the result's events are in the outbox, and the
relay is only nudged (:meth:`worker.events.relay.OutboxRelay.nudge`) to publish them from its own thread.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from typing import Any

from prometheus_client import make_wsgi_app

from worker import metrics
from worker.errors import B2CError, LedgerError, ProtocolError
from worker.events.relay import OutboxRelay
from worker.ledger import ApplyOutcome, ResultApplied
from worker.ledger.outbox import OutboxBacklog
from worker.ledger.quarantine import REASON_UNPARSABLE
from worker.ledger.result_store import ResultIntake
from worker.protocol.codes import RESULT_CODES
from worker.protocol.response import build_response_envelope
from worker.protocol.result import Result, build_queue_timeout_response, parse_queue_timeout, parse_result_envelope
from worker.receiver.guard import ReceiverGuard, Refusal
from worker.settings import Settings

log = logging.getLogger(__name__)

StartResponse = Callable[..., Any]

_SUCCESS = build_response_envelope("00000000", "success")
_INTERNAL_ERROR = build_response_envelope("200000003", "Internal Server Error")
# notifyQueueTimeout is answered in its own shape (QueueTimeoutNotification WSDL, the v1.5 example).
_TIMEOUT_SUCCESS = build_queue_timeout_response()
_TIMEOUT_INTERNAL_ERROR = build_queue_timeout_response("200000003", "Internal Server Error")


class CallbackReceiver:
    """WSGI app serving the ResultURL path, the QueueTimeoutURL path, ``/healthz`` and ``/metrics``.

    The callback paths are the configured ones plus the secret token (:mod:`worker.gateway.callback_urls`); a
    request elsewhere, or from outside the allowed networks, is refused before its body is read.
    """

    def __init__(self, settings: Settings, results: ResultIntake, outbox: OutboxBacklog, relay: OutboxRelay) -> None:
        self._guard = ReceiverGuard(settings)
        self.result_path = self._guard.result_path
        self.queue_timeout_path = self._guard.queue_timeout_path
        self.result_base_path = self._guard.result_base
        self.queue_timeout_base_path = self._guard.queue_timeout_base
        self._max_body = settings.receiver.max_body_bytes
        self._confirm_success = settings.lookup.confirm_success
        self._results = results
        self._outbox = outbox
        self._relay = relay
        self._metrics_app = make_wsgi_app()

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        method = environ.get("REQUEST_METHOD", "GET")
        if path == "/metrics" and method == "GET":
            return self._metrics_app(environ, start_response)  # type: ignore[no-any-return]
        if path == "/healthz" and method == "GET":
            return self._health(start_response)
        if not self._guard.source_allowed(environ):
            # Before the path check: an outsider must not learn whether a token guess was right.
            return _refuse(start_response, Refusal.NETWORK, "403 Forbidden", "forbidden\n")
        route = self._guard.route(path)
        if route in ("result", "queue_timeout"):
            if method != "POST":
                return _refuse(start_response, Refusal.METHOD, "405 Method Not Allowed", "POST only\n")
            body = _read_body(environ, self._max_body)
            if body is None:
                too_large = f"body over {self._max_body} bytes\n"
                return _refuse(start_response, Refusal.TOO_LARGE, "413 Content Too Large", too_large)
            if "xml" not in environ.get("CONTENT_TYPE", "").lower():
                return _refuse(
                    start_response, Refusal.CONTENT_TYPE, "415 Unsupported Media Type", "expected text/xml\n"
                )
            if route == "result":
                return self._result(body, start_response)
            return self._queue_timeout(body, start_response)
        # A wrong or missing token looks exactly like any unknown path.
        return _refuse(
            start_response, Refusal.TOKEN if route == "token" else Refusal.NOT_FOUND, "404 Not Found", "not found\n"
        )

    def _result(self, raw: bytes, start_response: StartResponse) -> Iterable[bytes]:
        try:
            result = parse_result_envelope(raw)
        except ProtocolError as exc:
            return self._unparsable(raw, f"result: {exc}", start_response, _SUCCESS, _INTERNAL_ERROR)
        try:
            applied = self._results.record(raw, result, confirm_success=self._confirm_success)
        except LedgerError:
            log.exception("could not store the result for %s; answering an error", result.originator_conversation_id)
            return _xml(start_response, "500 Internal Server Error", _INTERNAL_ERROR)
        self._count(result, applied)
        if applied.payout is not None:
            self._relay_events(applied.payout.payout_id)
        return _xml(start_response, "200 OK", _SUCCESS)

    def _unparsable(
        self, raw: bytes, detail: str, start_response: StartResponse, stored: bytes, not_stored: bytes
    ) -> Iterable[bytes]:
        """A body on the secret path that we cannot read may still be M-PESA's, in a shape we do not know.

        Kept in the quarantine before the answer, then answered like any stored callback: "success" says we
        have it, and an error answer would at best get the same bytes again. Only a failed store is an error.
        """
        metrics.RESULTS_INVALID.inc()
        try:
            entry = self._results.record_unparsable(raw, detail)
        except LedgerError:
            log.exception("could not store an unparsable callback body of %d bytes; answering an error", len(raw))
            return _xml(start_response, "500 Internal Server Error", not_stored)
        metrics.RESULTS_QUARANTINED.labels(reason=REASON_UNPARSABLE).inc()
        log.error("unparsable callback body of %d bytes kept as q:%d, not applied: %s", len(raw), entry, detail)
        return _xml(start_response, "200 OK", stored)

    def _count(self, result: Result, applied: ResultApplied) -> None:
        outcome = applied.outcome
        code = result.code if result.code in RESULT_CODES else "other"
        metrics.RESULTS_RECEIVED.labels(outcome=result.outcome.value, result_code=code).inc()
        if applied.quarantine_reason is not None:
            metrics.RESULTS_QUARANTINED.labels(reason=applied.quarantine_reason).inc()
        if outcome is ApplyOutcome.QUARANTINED:
            log.error(
                "result %s for %s does not match what was sent (%s); quarantined with its body, not applied",
                result.code,
                result.originator_conversation_id,
                applied.quarantine_reason,
            )
        elif outcome is ApplyOutcome.UNMATCHED:
            metrics.RESULTS_UNMATCHED.inc()
            log.warning(
                "result for no known payout (OriginatorConversationID %s) kept for review",
                result.originator_conversation_id,
            )
        elif outcome is ApplyOutcome.CONFLICT:
            metrics.RESULTS_CONFLICTING.inc()
            log.error(
                "result %s for %s contradicts the payout's final status; kept, not applied",
                result.code,
                result.originator_conversation_id,
            )
        elif outcome is ApplyOutcome.APPLIED:
            details = result.details
            if result.outcome.value == "completed" and details.amount is not None:
                metrics.KES_PAID.inc(float(details.amount))
            for account, value in (
                ("working", details.working_balance),
                ("utility", details.utility_balance),
                ("charges", details.charges_balance),
            ):
                if value is not None:
                    metrics.ACCOUNT_BALANCE.labels(account=account).set(float(value))

    def _relay_events(self, payout_id: str) -> None:
        self._relay.nudge(payout_id)

    def _queue_timeout(self, raw: bytes, start_response: StartResponse) -> Iterable[bytes]:
        try:
            notice = parse_queue_timeout(raw)
        except ProtocolError as exc:
            return self._unparsable(
                raw, f"queue timeout: {exc}", start_response, _TIMEOUT_SUCCESS, _TIMEOUT_INTERNAL_ERROR
            )
        log.warning(
            "M-PESA queue timeout for OriginatorConversationID %s: not executed unless a status query says so",
            notice.originator_conversation_id,
        )
        try:
            # Kept with its body; its payout is looked up right away (worker.ledger.result_store).
            stored = self._results.record_queue_timeout(raw, notice)
        except LedgerError:
            log.exception(
                "could not store the queue timeout for %s; answering an error", notice.originator_conversation_id
            )
            return _xml(start_response, "500 Internal Server Error", _TIMEOUT_INTERNAL_ERROR)
        if stored.payout is not None:
            self._relay_events(stored.payout.payout_id)
        return _xml(start_response, "200 OK", _TIMEOUT_SUCCESS)

    def _health(self, start_response: StartResponse) -> Iterable[bytes]:
        try:
            backlog = self._outbox.backlog()
        except B2CError as exc:
            body = {"status": "unhealthy", "ledger": str(exc)}
            return _json(start_response, "503 Service Unavailable", body)
        return _json(
            start_response,
            "200 OK",
            {"status": "ok", "outbox_backlog": backlog, "time": datetime.now(UTC).isoformat()},
        )


def _read_body(environ: dict[str, Any], limit: int) -> bytes | None:
    try:
        length = int(environ.get("CONTENT_LENGTH") or 0)
    except ValueError:
        length = 0
    if length > limit:
        return None
    stream = environ["wsgi.input"]
    body: bytes = stream.read(length) if length > 0 else stream.read(limit + 1)
    return None if len(body) > limit else body


def _refuse(start_response: StartResponse, reason: Refusal, status: str, text: str) -> list[bytes]:
    metrics.CALLBACKS_REFUSED.labels(reason=str(reason)).inc()
    return _plain(start_response, status, text)


def _plain(start_response: StartResponse, status: str, text: str) -> list[bytes]:
    body = text.encode()
    start_response(status, [("Content-Type", "text/plain; charset=utf-8"), ("Content-Length", str(len(body)))])
    return [body]


def _xml(start_response: StartResponse, status: str, body: bytes) -> list[bytes]:
    start_response(status, [("Content-Type", "text/xml; charset=utf-8"), ("Content-Length", str(len(body)))])
    return [body]


def _json(start_response: StartResponse, status: str, value: dict[str, Any]) -> list[bytes]:
    body = json.dumps(value).encode()
    start_response(status, [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
    return [body]
