"""The callback receiver: result -> ledger -> events, and only then "success" to M-PESA.

M-PESA may never send a result again once we answered success, so the raw body is committed to the ledger
before the answer. Publishing the event is attempted right away, but a broker outage does not turn a stored
result into an error answer: the outbox relay publishes it later.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

from prometheus_client import make_wsgi_app

from worker import metrics
from worker.errors import B2CError, LedgerError, ProtocolError
from worker.ledger import ApplyOutcome, Ledger
from worker.protocol.codes import RESULT_CODES
from worker.protocol.response import build_response_envelope
from worker.protocol.result import Result, parse_queue_timeout, parse_result_envelope
from worker.relay import OutboxRelay
from worker.settings import Settings

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 256 * 1024
StartResponse = Callable[..., Any]

_SUCCESS = build_response_envelope("00000000", "success")
_INTERNAL_ERROR = build_response_envelope("200000003", "Internal Server Error")


class CallbackReceiver:
    """WSGI app serving the ResultURL path, the QueueTimeoutURL path, ``/healthz`` and ``/metrics``."""

    def __init__(self, settings: Settings, ledger: Ledger, relay: OutboxRelay) -> None:
        self.result_path = urlsplit(settings.mpesa.result_url).path or "/"
        self.queue_timeout_path = urlsplit(settings.mpesa.queue_timeout_url).path or "/"
        self._ledger = ledger
        self._relay = relay
        self._metrics_app = make_wsgi_app()

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        method = environ.get("REQUEST_METHOD", "GET")
        if path == "/metrics" and method == "GET":
            return self._metrics_app(environ, start_response)  # type: ignore[no-any-return]
        if path == "/healthz" and method == "GET":
            return self._health(start_response)
        if path in (self.result_path, self.queue_timeout_path):
            if method != "POST":
                return _plain(start_response, "405 Method Not Allowed", "POST only\n")
            body = _read_body(environ)
            if body is None:
                return _plain(start_response, "413 Content Too Large", f"body over {MAX_BODY_BYTES} bytes\n")
            if "xml" not in environ.get("CONTENT_TYPE", "").lower():
                return _plain(start_response, "415 Unsupported Media Type", "expected text/xml\n")
            if path == self.result_path:
                return self._result(body, start_response)
            return self._queue_timeout(body, start_response)
        return _plain(start_response, "404 Not Found", "not found\n")

    def _result(self, raw: bytes, start_response: StartResponse) -> Iterable[bytes]:
        try:
            result = parse_result_envelope(raw)
        except ProtocolError as exc:
            metrics.RESULTS_INVALID.inc()
            log.warning("refused a result body of %d bytes: %s", len(raw), exc)
            return _plain(start_response, "400 Bad Request", "not a GenericAPIResult\n")
        try:
            applied = self._ledger.record_result(raw, result)
        except LedgerError:
            log.exception("could not store the result for %s; answering an error", result.originator_conversation_id)
            return _xml(start_response, "500 Internal Server Error", _INTERNAL_ERROR)
        self._count(result, applied.outcome)
        if applied.payout is not None:
            self._relay_events(applied.payout.payout_id)
        return _xml(start_response, "200 OK", _SUCCESS)

    def _count(self, result: Result, outcome: ApplyOutcome) -> None:
        code = result.code if result.code in RESULT_CODES else "other"
        metrics.RESULTS_RECEIVED.labels(outcome=result.outcome.value, result_code=code).inc()
        if outcome is ApplyOutcome.UNMATCHED:
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
        try:
            self._relay.flush(payout_id)
        except B2CError as exc:
            log.warning("result stored; its events stay in the outbox until the broker is back: %s", exc)

    def _queue_timeout(self, raw: bytes, start_response: StartResponse) -> Iterable[bytes]:
        try:
            notice = parse_queue_timeout(raw)
        except ProtocolError as exc:
            metrics.RESULTS_INVALID.inc()
            log.warning("refused a queue-timeout body of %d bytes: %s", len(raw), exc)
            return _plain(start_response, "400 Bad Request", "not a notifyQueueTimeout\n")
        log.warning(
            "M-PESA queue timeout for OriginatorConversationID %s: not executed unless a status query says so",
            notice.originator_conversation_id,
        )
        return _xml(start_response, "200 OK", _SUCCESS)

    def _health(self, start_response: StartResponse) -> Iterable[bytes]:
        try:
            backlog = self._ledger.outbox_backlog()
        except B2CError as exc:
            body = {"status": "unhealthy", "ledger": str(exc)}
            return _json(start_response, "503 Service Unavailable", body)
        return _json(
            start_response,
            "200 OK",
            {"status": "ok", "outbox_backlog": backlog, "time": datetime.now(UTC).isoformat()},
        )


def _read_body(environ: dict[str, Any]) -> bytes | None:
    try:
        length = int(environ.get("CONTENT_LENGTH") or 0)
    except ValueError:
        length = 0
    if length > MAX_BODY_BYTES:
        return None
    stream = environ["wsgi.input"]
    body: bytes = stream.read(length) if length else stream.read(MAX_BODY_BYTES + 1)
    return None if len(body) > MAX_BODY_BYTES else body


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
