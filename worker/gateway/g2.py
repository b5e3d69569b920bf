"""The worker's client for M-PESA's ``GenericAPIRequest``: send one request, say what became of it.

Deciding whether a failed call may be repeated is the point of this module. A resend is safe only when the
gateway certainly did not process the request: nothing reached it (connection refused, connect timeout) or
it answered "not now" (a RETRY_LATER code). Everything else that goes wrong after the request left (silence,
a dropped connection, an HTTP 5xx, a body that cannot be read) is UNKNOWN: the payment may have gone
through, so it is never retried here and never reported as failed. Every resend carries the same
OriginatorConversationID with a fresh timestamp, which M-PESA de-duplicates.

zeep builds the envelope from the project's own WSDL (loaded once per process, never from the network) and
this module reads the raw HTTP answer itself, so that the classification above stays in one place.
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from enum import StrEnum
from typing import Any, Protocol, cast
from urllib.parse import urlsplit

import requests
import urllib3
import zeep.exceptions
from lxml import etree
from requests.adapters import HTTPAdapter
from tenacity import (
    RetryCallState,
    Retrying,
    retry_if_result,
    stop_after_attempt,
    stop_before_delay,
    wait_exponential_jitter,
)
from zeep import Client, Plugin, Settings
from zeep.transports import Transport
from zeep.wsdl import Document

from worker.errors import GatewayError, ProtocolError
from worker.logs import register_secret
from worker.metrics import B2C_CALL_SECONDS, B2C_CALLS, B2C_RETRIES
from worker.protocol.codes import ResponseOutcome, describe_response_code
from worker.protocol.credential import security_credential
from worker.protocol.header import header_timestamp, sp_password, transaction_timestamp
from worker.protocol.request import (
    REQUEST_NS,
    STATUS_QUERY_COMMAND,
    Initiator,
    build_payment_request,
    build_status_query,
    cdata,
)
from worker.protocol.response import SyncResponse, parse_response_envelope
from worker.protocol.xml import MAX_XML_BYTES
from worker.redact import mask_msisdn
from worker.resources import wsdl_path
from worker.settings import MpesaSettings

log = logging.getLogger(__name__)

WSDL_FILE = "CBPInterface_Request.wsdl"
_BINDING = f"{{{REQUEST_NS}}}RequestBinding"
_OPERATION = "GenericAPIRequest"
_POOL_SIZE = 32
_CHUNK = 65536
_DESCRIPTION_LIMIT = 200


class AttemptReason(StrEnum):
    """Why an attempt that was sent ended the way it did; a metric label and a ledger reason, so bounded."""

    RESPONSE_CODE = "response_code"
    CONNECTION_REFUSED = "connection_refused"
    CONNECT_FAILED = "connect_failed"
    CONNECT_TIMEOUT = "connect_timeout"
    READ_TIMEOUT = "read_timeout"
    CONNECTION_LOST = "connection_lost"
    TLS_ERROR = "tls_error"
    TRANSPORT_ERROR = "transport_error"
    HTTP_ERROR = "http_error"
    UNPARSABLE = "unparsable_response"
    OVERSIZED = "oversized_response"


NOT_SENT_REASONS = frozenset(
    {AttemptReason.CONNECTION_REFUSED, AttemptReason.CONNECT_FAILED, AttemptReason.CONNECT_TIMEOUT}
)


class HoldReason(StrEnum):
    """Why a command went back unsent: a metric label and a message header, so bounded.

    The first three are an :class:`AttemptObserver`'s answers (the request was held back); ``unreachable``
    is the worker's word for a request that could not reach the gateway (one of ``NOT_SENT_REASONS``).
    """

    BREAKER_OPEN = "breaker_open"
    CREDENTIAL_UNPROVEN = "credential_unproven"
    RATE_LIMITED = "rate_limited"
    UNREACHABLE = "unreachable"


@dataclass(frozen=True)
class GatewayAnswer:
    """What one ``pay``/``query_status`` call ended with, after any retries.

    ``outcome`` ACCEPTED / REJECTED come from a response code; RETRY_LATER means nothing was processed and
    the retry budget ran out; UNKNOWN means the request may have been processed. ``reason`` says why
    (``response_code`` when M-PESA's code decided); ``detail`` is for humans.
    ``held``: the observer held the last attempt back (RETRY_LATER, nothing sent); ``reason`` is its word.
    """

    outcome: ResponseOutcome
    response: SyncResponse | None
    detail: str
    attempts: int
    reason: AttemptReason | HoldReason = AttemptReason.RESPONSE_CODE
    held: bool = False


class AttemptObserver(Protocol):
    """Sees every HTTP attempt of a Gateway (payments and status queries, retries included).

    ``before_attempt`` may wait (a rate-limit slot) and may hold the attempt back by returning a reason:
    then nothing is sent and the call ends RETRY_LATER at once, with ``held`` set. ``after_attempt`` learns
    how each attempt that was sent ended (``code``: the ResponseCode, if M-PESA answered with one).
    """

    def before_attempt(self, command: str, originator_conversation_id: str) -> HoldReason | None: ...

    def after_attempt(
        self,
        command: str,
        originator_conversation_id: str,
        outcome: ResponseOutcome,
        reason: AttemptReason,
        code: str | None,
    ) -> None: ...


@dataclass(frozen=True)
class _Attempt:
    outcome: ResponseOutcome
    response: SyncResponse | None
    reason: AttemptReason | HoldReason
    detail: str
    held: bool = False

    @property
    def retryable(self) -> bool:
        """Only what M-PESA certainly did not process may be sent again (not what we held back)."""
        return self.outcome is ResponseOutcome.RETRY_LATER and not self.held

    @property
    def metric_outcome(self) -> str:
        return "not_sent" if self.reason in NOT_SENT_REASONS else str(self.outcome)


def _zeep_settings() -> Settings:
    # raw_response: the answer is classified here, from its bytes, not by zeep's fault handling.
    return Settings(
        strict=True,
        raw_response=True,
        forbid_dtd=True,
        forbid_entities=True,
        forbid_external=True,
        xml_huge_tree=False,
    )


class _GatewayTransport(Transport):
    """Local files only for the WSDL; POSTs without redirects and without zeep's envelope logging.

    zeep's own ``post`` logs the whole envelope at DEBUG level, which would put the SP password digest and
    the SecurityCredential in the log.
    """

    def __init__(self, session: requests.Session, timeout: tuple[float, float]) -> None:
        super().__init__(session=session, operation_timeout=timeout)  # type: ignore[no-untyped-call]
        self._timeout = timeout

    def load(self, url: str) -> bytes:
        if urlsplit(url).scheme not in ("", "file"):
            raise GatewayError(f"refusing to fetch {url}: the WSDL must only refer to local files")
        content: bytes = super().load(url)  # type: ignore[no-untyped-call]
        return content

    def post(self, address: str, message: bytes, headers: dict[str, str]) -> requests.Response:
        return self.session.post(
            address, data=message, headers=headers, timeout=self._timeout, allow_redirects=False, stream=True
        )


class CdataPlugin(Plugin):
    """Send RequestMsg's text as a CDATA section: zeep escapes a string value, real gateways want CDATA."""

    def egress(
        self, envelope: etree._Element, http_headers: dict[str, str], operation: Any, binding_options: Any
    ) -> tuple[etree._Element, dict[str, str]]:
        for node in envelope.iter(f"{{{REQUEST_NS}}}RequestMsg"):
            node.text = cdata(node.text or "")
        return envelope, http_headers


_WSDL_LOCK = threading.Lock()


@functools.cache
def _load_request_wsdl() -> Any:
    path = wsdl_path(WSDL_FILE)
    loader = _GatewayTransport(requests.Session(), (5.0, 5.0))
    try:
        # zeep annotates the transport as a class; it takes an instance.
        return Document(str(path), loader, settings=_zeep_settings())  # type: ignore[arg-type]
    except (OSError, etree.LxmlError, zeep.exceptions.Error) as exc:
        raise GatewayError(f"the request WSDL {path} cannot be loaded: {exc}") from exc


def request_wsdl() -> Any:
    """The parsed request WSDL (a zeep Document), loaded once per process and shared by every Gateway."""
    with _WSDL_LOCK:
        return _load_request_wsdl()


def _session(mpesa: MpesaSettings) -> requests.Session:
    session = requests.Session()
    # Proxies, netrc and CA bundles from the environment would bypass the explicit settings below.
    session.trust_env = False
    adapter = HTTPAdapter(pool_connections=1, pool_maxsize=_POOL_SIZE, max_retries=0)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    if mpesa.tls_client_cert is not None and mpesa.tls_client_key is not None:
        session.cert = (str(mpesa.tls_client_cert), str(mpesa.tls_client_key))
    if mpesa.tls_ca_bundle is not None:
        session.verify = str(mpesa.tls_ca_bundle)
    return session


def _compute_credential(mpesa: MpesaSettings) -> str:
    path = mpesa.cert_path
    try:
        certificate = path.read_bytes()
    except OSError as exc:
        raise GatewayError(
            f"the M-PESA encryption certificate {path} cannot be read (B2C_CERT_PATH): {exc.strerror}"
        ) from exc
    return security_credential(mpesa.initiator_password.reveal(), certificate)


def _exception_chain(exc: BaseException) -> Iterator[BaseException]:
    """The exception and everything it wraps: requests hides urllib3's reason inside its arguments."""
    seen: set[int] = set()
    stack: list[BaseException] = [exc]
    while stack:
        current = stack.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        yield current
        linked = (current.__cause__, current.__context__, getattr(current, "reason", None), *current.args)
        stack.extend(item for item in linked if isinstance(item, BaseException))


def _transport_failure(exc: requests.RequestException) -> _Attempt:
    chain = list(_exception_chain(exc))
    if any(isinstance(e, urllib3.exceptions.NewConnectionError) for e in chain):
        refused = any(isinstance(e, ConnectionRefusedError) for e in chain)
        reason = AttemptReason.CONNECTION_REFUSED if refused else AttemptReason.CONNECT_FAILED
        return _Attempt(ResponseOutcome.RETRY_LATER, None, reason, f"{reason}: nothing was sent")
    if isinstance(exc, requests.exceptions.ConnectTimeout) or any(
        isinstance(e, urllib3.exceptions.ConnectTimeoutError) for e in chain
    ):
        return _Attempt(
            ResponseOutcome.RETRY_LATER, None, AttemptReason.CONNECT_TIMEOUT, "connect timeout: nothing sent"
        )
    if isinstance(exc, requests.exceptions.ReadTimeout) or any(
        isinstance(e, urllib3.exceptions.ReadTimeoutError) for e in chain
    ):
        reason = AttemptReason.READ_TIMEOUT
    elif isinstance(exc, requests.exceptions.SSLError):
        # A TLS failure may happen after the request was written; it cannot be told apart from the outside.
        reason = AttemptReason.TLS_ERROR
    elif isinstance(exc, requests.exceptions.ConnectionError | requests.exceptions.ChunkedEncodingError):
        reason = AttemptReason.CONNECTION_LOST
    else:
        reason = AttemptReason.TRANSPORT_ERROR
    detail = f"{reason} ({type(exc).__name__}) after sending: the request may have been processed"
    return _Attempt(ResponseOutcome.UNKNOWN, None, reason, detail)


class _Oversized(Exception):
    pass


def _read_body(response: requests.Response) -> bytes:
    chunks: list[bytes] = []
    size = 0
    for chunk in response.iter_content(_CHUNK):
        size += len(chunk)
        if size > MAX_XML_BYTES:
            raise _Oversized
        chunks.append(chunk)
    return b"".join(chunks)


def _describe(response: SyncResponse) -> str:
    said = response.description[:_DESCRIPTION_LIMIT]
    return f"{response.code} {describe_response_code(response.code)} ({said!r})"


def _classify_answer(status: int, body: bytes) -> _Attempt:
    try:
        response: SyncResponse | None = parse_response_envelope(body)
        problem = ""
    except ProtocolError as exc:
        response, problem = None, str(exc)[:_DESCRIPTION_LIMIT]
    if status >= 500:
        said = f"; it said {_describe(response)}" if response else ""
        detail = f"HTTP {status} after sending: the request may have been processed{said}"
        return _Attempt(ResponseOutcome.UNKNOWN, response, AttemptReason.HTTP_ERROR, detail)
    if response is None:
        reason = AttemptReason.UNPARSABLE if 200 <= status < 300 else AttemptReason.HTTP_ERROR
        return _Attempt(ResponseOutcome.UNKNOWN, None, reason, f"HTTP {status}, unreadable answer: {problem}")
    return _Attempt(
        response.outcome, response, AttemptReason.RESPONSE_CODE, f"{response.outcome}: {_describe(response)}"
    )


class Gateway:
    """One configured connection to the G2 gateway; thread-safe, shared by the worker's threads.

    The SecurityCredential is computed once here (PKCS#1 v1.5 padding is random; one value serves every
    request). ``backoff_initial``/``backoff_max`` shape the wait between resends (exponential with jitter);
    ``clock`` exists for tests.
    """

    def __init__(
        self,
        mpesa: MpesaSettings,
        *,
        backoff_initial: float = 0.5,
        backoff_max: float = 8.0,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        observer: AttemptObserver | None = None,
    ) -> None:
        self._mpesa = mpesa
        # Flow control (worker.flow.control.FlowControl): the circuit breaker and the rate limit, per attempt.
        self.observer = observer
        for secret in (mpesa.sp_password.reveal(), mpesa.initiator_password.reveal()):
            register_secret(secret)
        credential = _compute_credential(mpesa)
        register_secret(credential)
        self._initiator = Initiator(
            name=mpesa.initiator_name, security_credential=credential, shortcode=mpesa.shortcode
        )
        self._session = _session(mpesa)
        transport = _GatewayTransport(self._session, (mpesa.connect_timeout, mpesa.read_timeout))
        client = Client(  # type: ignore[no-untyped-call]
            request_wsdl(), transport=transport, plugins=[CdataPlugin()], settings=_zeep_settings()
        )
        self._service = client.create_service(_BINDING, mpesa.url)  # type: ignore[no-untyped-call]
        self._backoff_initial = backoff_initial
        self._backoff_max = backoff_max
        self._clock = clock

    def close(self) -> None:
        self._session.close()

    def pay(
        self,
        *,
        originator_conversation_id: str,
        command_id: str,
        amount: Decimal,
        msisdn: str,
        remark: str,
        reference: Mapping[str, str],
    ) -> GatewayAnswer:
        """Ask M-PESA to pay; raises (ProtocolError, GatewayError) only when nothing could be sent at all."""
        mpesa = self._mpesa

        def build(timestamp: str) -> bytes:
            return build_payment_request(
                command_id=str(command_id),
                originator_conversation_id=originator_conversation_id,
                amount=amount,
                msisdn=msisdn,
                remark=remark,
                initiator=self._initiator,
                result_url=mpesa.result_url,
                queue_timeout_url=mpesa.queue_timeout_url,
                reference=reference,
                timestamp=timestamp,
            )

        return self._send(str(command_id), originator_conversation_id, build, f"to {mask_msisdn(msisdn)}")

    def query_status(
        self,
        *,
        originator_conversation_id: str,
        target_originator_conversation_id: str | None = None,
        receipt: str | None = None,
        remark: str = "",
    ) -> GatewayAnswer:
        """Ask for a payment's status; the answer comes later as a result for this query's own id."""
        mpesa = self._mpesa

        def build(timestamp: str) -> bytes:
            return build_status_query(
                originator_conversation_id=originator_conversation_id,
                initiator=self._initiator,
                result_url=mpesa.result_url,
                queue_timeout_url=mpesa.queue_timeout_url,
                target_originator_conversation_id=target_originator_conversation_id,
                receipt=receipt,
                remark=remark,
                timestamp=timestamp,
            )

        target = target_originator_conversation_id or f"receipt {receipt}"
        return self._send(STATUS_QUERY_COMMAND, originator_conversation_id, build, f"for {target}")

    def _send(
        self, command: str, originator_conversation_id: str, build: Callable[[str], bytes], about: str
    ) -> GatewayAnswer:
        attempts = 0

        def attempt() -> _Attempt:
            nonlocal attempts
            attempts += 1
            return self._attempt(command, originator_conversation_id, build)

        def before_sleep(state: RetryCallState) -> None:
            previous: _Attempt = state.outcome.result()  # type: ignore[union-attr]
            B2C_RETRIES.labels(previous.reason).inc()
            log.warning(
                "%s %s %s not processed (%s), resending with the same id, attempt %d",
                command,
                originator_conversation_id,
                about,
                previous.detail,
                attempts + 1,
            )

        retrying = Retrying(
            retry=retry_if_result(lambda result: bool(result.retryable)),
            stop=stop_after_attempt(self._mpesa.retry_attempts) | stop_before_delay(self._mpesa.retry_max_seconds),
            wait=wait_exponential_jitter(
                multiplier=self._backoff_initial, max=self._backoff_max, jitter=self._backoff_initial
            ),
            before_sleep=before_sleep,
            retry_error_callback=lambda state: state.outcome.result() if state.outcome else None,
        )
        last: _Attempt = retrying(attempt)
        level = logging.INFO if last.outcome is ResponseOutcome.ACCEPTED else logging.WARNING
        log.log(
            level,
            "%s %s %s: %s after %d attempt(s)",
            command,
            originator_conversation_id,
            about,
            last.detail,
            attempts,
        )
        return GatewayAnswer(
            outcome=last.outcome,
            response=last.response,
            detail=last.detail,
            attempts=attempts,
            reason=last.reason,
            held=last.held,
        )

    def _header(self, stamp: str) -> etree._Element:
        mpesa = self._mpesa
        namespace = mpesa.header_namespace
        header = etree.Element(f"{{{namespace}}}RequestSOAPHeader", nsmap={"tns": namespace})
        digest = sp_password(mpesa.sp_id, mpesa.sp_password.reveal(), stamp, uppercase=mpesa.password_uppercase)
        for name, value in (("spId", mpesa.sp_id), ("spPassword", digest), ("serviceId", mpesa.service_id)):
            etree.SubElement(header, f"{{{namespace}}}{name}").text = value
        etree.SubElement(header, f"{{{namespace}}}timeStamp").text = stamp
        return header

    def _attempt(self, command: str, originator_conversation_id: str, build: Callable[[str], bytes]) -> _Attempt:
        """One POST. Both timestamps are taken now: a resend must not carry a stale one (result 19)."""
        observer = self.observer
        if observer is not None:
            held = observer.before_attempt(command, originator_conversation_id)
            if held is not None:
                return _Attempt(ResponseOutcome.RETRY_LATER, None, held, f"held back, nothing sent: {held}", held=True)
        result = self._post(command, build)
        if observer is not None:
            code = result.response.code if result.response is not None else None
            sent = cast(AttemptReason, result.reason)  # only a held attempt carries a HoldReason
            try:
                observer.after_attempt(command, originator_conversation_id, result.outcome, sent, code)
            except Exception:  # M-PESA has answered: its answer must reach the ledger whatever the bookkeeping
                log.exception("flow control could not record the answer for %s", originator_conversation_id)
        return result

    def _post(self, command: str, build: Callable[[str], bytes]) -> _Attempt:
        now = self._clock()
        document = build(transaction_timestamp(now))
        header = self._header(header_timestamp(now, self._mpesa.header_timezone))
        started = time.monotonic()
        try:
            http = self._service[_OPERATION](document.decode("utf-8"), _soapheaders=[header])
            try:
                status, body = http.status_code, _read_body(http)
            finally:
                http.close()
        except requests.RequestException as exc:
            result = _transport_failure(exc)
        except _Oversized:
            detail = f"the answer exceeds {MAX_XML_BYTES} bytes: the request may have been processed"
            result = _Attempt(ResponseOutcome.UNKNOWN, None, AttemptReason.OVERSIZED, detail)
        except zeep.exceptions.Error as exc:
            raise GatewayError(f"zeep could not build the {_OPERATION} envelope: {exc}") from exc
        else:
            result = _classify_answer(status, body)
        finally:
            B2C_CALL_SECONDS.labels(command).observe(time.monotonic() - started)
        B2C_CALLS.labels(command, result.metric_outcome).inc()
        return result
