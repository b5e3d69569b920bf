"""The simulated Broker + M-PESA core: one GenericAPIRequest in, one HTTP answer out, results scheduled.

Answer codes for bad requests (the Broker's exact choice is not documented; these follow PROTOCOL section 3):

- 100000007 authentication failed: no/unknown RequestSOAPHeader, wrong spId, serviceId or spPassword.
- 100000005 invalid input value: the envelope or its document cannot be read, or Amount, ReceiverParty or
  Timestamp is malformed.
- 24 the document does not validate against the request schema.
- 23 CommandID not supported.  30 OriginatorConversationID empty.
- 100000014 missing mandatory parameter (ResultURL, Amount, ReceiverParty, the status query's key).

Everything that gets past those is answered ResponseCode 0 and decided by the "core" with a result: stale
Timestamp 19 (not processed, the id stays free), reused OriginatorConversationID 15, wrong initiator 18,
amount limits 2/3, utility balance 1, else paid (0). A TransactionStatusQuery answers 0 or 49.
"""

from __future__ import annotations

import hmac
import logging
import threading
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal, InvalidOperation

from cryptography.hazmat.primitives.asymmetric import rsa
from lxml import etree

from worker.errors import ProtocolError, UnsafeXmlError
from worker.protocol.credential import decrypt_security_credential
from worker.protocol.header import parse_transaction_timestamp, verify_sp_password
from worker.protocol.inbound import (
    HEADER_NAMESPACES,
    InboundRequest,
    ParsedRequest,
    parse_request_envelope,
    validate_request_document,
)
from worker.protocol.request import PAYMENT_COMMANDS, STATUS_QUERY_COMMAND
from worker.protocol.response import build_response_envelope
from worker.protocol.xml import child, descendant, parse_untrusted
from worker.redact import mask_msisdn
from worker.settings import MpesaSettings
from worker.simulator.metrics import SimulatorMetrics
from worker.simulator.options import SimulatorOptions
from worker.simulator.result_sender import Attempt, CallbackDeliverer, CallbackJob
from worker.simulator.scenarios import Scenario, scenario_for_msisdn
from worker.simulator.state import (
    WORKING_FUNDS,
    SimTransaction,
    SimulatorState,
    b2c_charge,
    nairobi,
    public_name,
    utc_now,
)
from worker.simulator.templates import (
    Dialect,
    ResultDocument,
    queue_timeout_envelope,
    result_envelope,
    soap_fault,
)
from worker.simulator.templates import truncate as truncate_body

log = logging.getLogger(__name__)

QUERY_KEYS = ("OriginatorConversationID", "ReceiptNumber", "TransactionID", "ConversationID")
REASON_TYPES = {
    "BusinessPayment": "Business Payment to Customer via API",
    "SalaryPayment": "Salary Payment via API",
    "PromotionPayment": "Promotion Payment via API",
    "BusinessPaymentWithWithdrawalChargePaid": "Business Payment with Withdrawal Charge Paid via API",
    "SalaryPaymentWithWithdrawalChargePaid": "Salary Payment with Withdrawal Charge Paid via API",
}
RESULT_DESCRIPTIONS = {
    "0": "The service request is processed successfully.",
    "1": "The balance is insufficient for the transaction.",
    "2": "Declined due to limit rule: less than the minimum transaction amount.",
    "3": "Declined due to limit rule: greater than the maximum transaction amount.",
    "15": "Duplicate OriginatorConversationID.",
    "18": "Initiator Credential Check Failure.",
    "19": "ApiRequestMessageExpiryFailure",
    "49": "No transaction found.",
}
DIALECTS = {
    Scenario.DIALECT_UPPERCASE_ROOT: Dialect.UPPERCASE_ROOT,
    Scenario.DIALECT_NO_NAMESPACE: Dialect.NO_NAMESPACE,
    Scenario.DIALECT_OTHER_NAMESPACE: Dialect.OTHER_NAMESPACE,
    Scenario.DIALECT_ID_CASING: Dialect.ID_CASING,
    Scenario.DIALECT_COMPLETED_WORD: Dialect.COMPLETED_WORD,
    Scenario.DIALECT_OLD_PARAMETERS: Dialect.OLD_PARAMETERS,
    Scenario.DIALECT_NO_DECLARATION: Dialect.NO_DECLARATION,
    Scenario.DIALECT_LEADING_WHITESPACE: Dialect.LEADING_WHITESPACE,
    Scenario.DIALECT_TRACE_2014: Dialect.TRACE_2014,
}


@dataclass(frozen=True)
class Reply:
    """What the HTTP layer does with a request: wait, then answer ``body`` or drop the connection."""

    status: int
    body: bytes
    hold: float = 0.0
    drop: bool = False
    wait_for: threading.Event | None = None


@dataclass(frozen=True)
class _Call:
    inbound: InboundRequest
    body: bytes
    transaction: SimTransaction
    now: datetime


class _Refused(Exception):
    """A request answered with a non-zero ResponseCode before anything was processed."""

    def __init__(self, code: str, description: str) -> None:
        super().__init__(description)
        self.code = code
        self.description = description


def _money(value: Decimal) -> str:
    return f"{value:.2f}"


def _param(parameters: dict[str, str], name: str) -> str | None:
    wanted = name.lower()
    for key, value in parameters.items():
        if key.strip().lower() == wanted:
            return value.strip()
    return None


class SimulatedGateway:
    """Decides each request, records it, and schedules its callbacks; the WSGI app only carries bytes."""

    def __init__(
        self,
        mpesa: MpesaSettings,
        options: SimulatorOptions,
        key: rsa.RSAPrivateKey,
        state: SimulatorState,
        metrics: SimulatorMetrics,
    ) -> None:
        self.mpesa = mpesa
        self.options = options
        self.key = key
        self.state = state
        self.metrics = metrics
        self.stopping = threading.Event()
        self.slow_seconds = options.slow_seconds if options.slow_seconds is not None else mpesa.read_timeout + 5.0
        self.deliverer = CallbackDeliverer(
            threads=options.callback_threads,
            attempts=options.callback_attempts,
            backoff=options.callback_backoff,
            timeout=options.callback_timeout,
            record=self._record_attempt,
        )
        self._jobs: dict[int, SimTransaction] = {}
        self._jobs_lock = threading.Lock()
        metrics.set_balance(state.utility)
        if options.fault is not None:
            state.set_fault(options.fault, options.fault_count)

    def reset(self) -> None:
        """Forget every request and restore the starting balance and the start-up fault."""
        self.state.reset()
        if self.options.fault is not None:
            self.state.set_fault(self.options.fault, self.options.fault_count)
        self.metrics.set_balance(self.state.utility)

    def close(self) -> None:
        self.stopping.set()
        self.deliverer.close()

    # ---- the request ---------------------------------------------------------------------------------

    def handle(self, body: bytes) -> Reply:
        now = utc_now()
        transaction = SimTransaction(received_at=now)
        self.state.add(transaction)
        try:
            inbound = self._read(body, transaction)
            self._authenticate(inbound)
            request = inbound.request
            errors = validate_request_document(inbound.document)
            if errors:
                raise _Refused("24", f"Request message schema validation failure: {errors[0][:200]}")
            call = _Call(inbound, body, transaction, now)
            if request.command_id in PAYMENT_COMMANDS:
                return self._payment(call)
            if request.command_id == STATUS_QUERY_COMMAND:
                return self._status_query(call)
            raise _Refused("23", f"The CommandID {request.command_id[:64]!r} is not supported.")
        except _Refused as refused:
            return self._answer(transaction, refused.code, refused.description)

    def _read(self, body: bytes, transaction: SimTransaction) -> InboundRequest:
        try:
            inbound = parse_request_envelope(body)
        except UnsafeXmlError as exc:
            raise _Refused("100000005", "Invalid input value:RequestMsg") from exc
        except ProtocolError as exc:
            if not _header_present(body):
                raise _Refused("100000007", "Authentication failed") from exc
            raise _Refused("100000005", "Invalid input value:RequestMsg") from exc
        request = inbound.request
        transaction.command_id = request.command_id or None
        transaction.originator_conversation_id = request.originator_conversation_id or None
        transaction.msisdn = request.receiver_party
        return inbound

    def _authenticate(self, inbound: InboundRequest) -> None:
        header = inbound.header
        valid = (
            header.namespace in HEADER_NAMESPACES
            and hmac.compare_digest(header.sp_id.encode(), self.mpesa.sp_id.encode())
            and (header.service_id or "") == self.mpesa.service_id
            and bool(header.timestamp)
            and bool(header.sp_password)
            and verify_sp_password(
                header.sp_password or "",
                header.sp_id,
                self.mpesa.sp_password.reveal(),
                header.timestamp or "",
            )
        )
        if not valid:
            raise _Refused("100000007", "Authentication failed")

    def _common_checks(self, request: ParsedRequest) -> None:
        if not request.originator_conversation_id:
            raise _Refused("30", "Missing OriginatorConversationID.")
        if not request.result_url:
            raise _Refused("100000014", "Missing mandatory parameter:ResultURL")

    def _expired(self, request: ParsedRequest, now: datetime) -> bool:
        try:
            stamp = parse_transaction_timestamp(request.timestamp)
        except ProtocolError as exc:
            raise _Refused("100000005", "Invalid input value:Timestamp") from exc
        return now - stamp > timedelta(seconds=self.options.max_age_seconds)

    def _credential_ok(self, request: ParsedRequest) -> bool:
        try:
            password = decrypt_security_credential(request.security_credential, self.key)
        except ProtocolError:
            return False
        expected = self.mpesa.initiator_password.reveal()
        name_ok = request.initiator_name == self.mpesa.initiator_name
        return hmac.compare_digest(password.encode(), expected.encode()) and name_ok

    # ---- payments ------------------------------------------------------------------------------------

    def _payment(self, call: _Call) -> Reply:
        request, transaction, now = call.inbound.request, call.transaction, call.now
        self._common_checks(request)
        raw_amount = _param(request.parameters, "Amount")
        if not raw_amount:
            raise _Refused("100000014", "Missing mandatory parameter:Amount")
        try:
            amount = Decimal(raw_amount)
        except InvalidOperation as exc:
            raise _Refused("100000005", "Invalid input value:Amount") from exc
        if not amount.is_finite() or amount < 0 or amount != amount.quantize(Decimal("0.01")):
            raise _Refused("100000005", "Invalid input value:Amount")
        transaction.amount = amount
        msisdn = request.receiver_party
        if not msisdn:
            raise _Refused("100000014", "Missing mandatory parameter:ReceiverParty")
        if not (len(msisdn) == 12 and msisdn.isdigit() and msisdn[:4] in ("2547", "2541")):
            raise _Refused("100000005", "Invalid input value:ReceiverParty")

        scenario = scenario_for_msisdn(msisdn) or self.state.take_fault() or Scenario.NORMAL
        transaction.scenario = scenario
        ocid = request.originator_conversation_id
        if scenario == Scenario.THROTTLED:
            tries = self.state.bump_tries(ocid)
            if tries <= self.options.throttle_tries:
                if tries % 2:
                    raise _Refused("100000002", "Throttling error")
                raise _Refused("26", "System busy. The service request is rejected.")
        if scenario == Scenario.CACHED and self.state.first_cache(ocid):
            self._schedule_queue_timeout(call)
            raise _Refused("100000000", "Request was cached, waiting for resending")

        transaction.conversation_id = self.state.conversation_id(now)
        document = self._decide_payment(request, transaction, scenario, amount, now)
        return self._accepted(call, document, scenario)

    def _decide_payment(
        self,
        request: ParsedRequest,
        transaction: SimTransaction,
        scenario: Scenario,
        amount: Decimal,
        now: datetime,
    ) -> ResultDocument:
        ocid = request.originator_conversation_id
        if self._expired(request, now):
            return self._failure(transaction, request, "19", now)
        if not self.state.claim(ocid):
            return self._failure(transaction, request, "15", now)
        credential_ok = self._credential_ok(request)
        with self.state.lock:
            transaction.transaction_id = self.state.transaction_id(now)
            if not credential_ok or scenario == Scenario.WRONG_CREDENTIAL:
                code = "18"
            elif amount < self.mpesa.amount_min:
                code = "2"
            elif amount > self.mpesa.amount_max:
                code = "3"
            elif scenario == Scenario.INSUFFICIENT_FUNDS or amount > self.state.utility:
                code = "1"
            else:
                code = "0"
                self.state.utility -= amount
                self.state.charges -= b2c_charge(amount)
                transaction.paid = True
            transaction.completed_at = now
            transaction.public_name = public_name(request.receiver_party or "")
            utility, charges = self.state.utility, self.state.charges
            self.state.index(transaction)
        self.metrics.set_balance(utility)
        if code != "0":
            return self._failure(transaction, request, code, now)
        transaction.result_code, transaction.result_desc = code, RESULT_DESCRIPTIONS[code]
        completed = nairobi(now).strftime("%d.%m.%Y %H:%M:%S")
        receipt = transaction.transaction_id or ""
        registered = "N" if scenario == Scenario.UNREGISTERED_RECIPIENT else "Y"
        return ResultDocument(
            code=code,
            description=RESULT_DESCRIPTIONS[code],
            originator_conversation_id=request.originator_conversation_id,
            conversation_id=transaction.conversation_id or "",
            transaction_id=receipt,
            parameters=(
                ("TransactionAmount", _money(amount)),
                ("TransactionReceipt", receipt),
                ("B2CRecipientIsRegisteredCustomer", registered),
                ("B2CChargesPaidAccountAvailableFunds", _money(charges)),
                ("ReceiverPartyPublicName", transaction.public_name or ""),
                ("TransactionCompletedDateTime", completed),
                ("B2CUtilityAccountAvailableFunds", _money(utility)),
                ("B2CWorkingAccountAvailableFunds", _money(WORKING_FUNDS)),
            ),
            legacy_parameters=(
                ("Amount", f"Ksh{_money(amount)}"),
                ("Transaction Datetime", completed),
                ("Working Account Available Funds", _money(WORKING_FUNDS)),
                ("Utility Account Available Funds", _money(utility)),
            ),
            reference=tuple(request.reference.items()),
        )

    def _failure(self, transaction: SimTransaction, request: ParsedRequest, code: str, now: datetime) -> ResultDocument:
        transaction.result_code, transaction.result_desc = code, RESULT_DESCRIPTIONS[code]
        if code in ("15", "19"):
            transaction.transaction_id = self.state.transaction_id(now)
        return ResultDocument(
            code=code,
            description=RESULT_DESCRIPTIONS[code],
            originator_conversation_id=request.originator_conversation_id,
            conversation_id=transaction.conversation_id or "",
            transaction_id=transaction.transaction_id or "",
            legacy_parameters=(("Transaction Datetime", nairobi(now).strftime("%d.%m.%Y %H:%M:%S")),),
            reference=tuple(request.reference.items()),
        )

    # ---- status queries ------------------------------------------------------------------------------

    def _status_query(self, call: _Call) -> Reply:
        request, transaction, now = call.inbound.request, call.transaction, call.now
        self._common_checks(request)
        lookup = next(((key, value) for key in QUERY_KEYS if (value := _param(request.parameters, key))), None)
        if lookup is None:
            raise _Refused("100000014", "Missing mandatory parameter:OriginatorConversationID")
        transaction.conversation_id = self.state.conversation_id(now)
        transaction.transaction_id = self.state.transaction_id(now)
        if self._expired(request, now):
            document = self._failure(transaction, request, "19", now)
        elif not self.state.claim(request.originator_conversation_id):
            document = self._failure(transaction, request, "15", now)
        elif not self._credential_ok(request):
            document = self._failure(transaction, request, "18", now)
        else:
            document = self._query_result(request, transaction, self.state.lookup(*lookup))
        return self._accepted(call, document, Scenario.NORMAL)

    def _query_result(
        self, request: ParsedRequest, transaction: SimTransaction, found: SimTransaction | None
    ) -> ResultDocument:
        code = "0" if found is not None else "49"
        transaction.result_code, transaction.result_desc = code, RESULT_DESCRIPTIONS[code]
        parameters: tuple[tuple[str, str], ...] = ()
        if found is not None:
            with self.state.lock:
                finished = found.completed_at or found.received_at
                parameters = (
                    ("TransactionStatus", "Completed" if found.paid else "Failed"),
                    ("ReceiptNo", found.transaction_id or ""),
                    ("Amount", _money(found.amount or Decimal(0))),
                    ("DebitPartyName", f"{self.mpesa.shortcode} - {self.mpesa.org_name}"),
                    ("CreditPartyName", found.public_name or ""),
                    ("InitiatedTime", nairobi(found.received_at).strftime("%Y%m%d%H%M%S")),
                    ("FinalisedTime", nairobi(finished).strftime("%Y%m%d%H%M%S")),
                    ("ReasonType", REASON_TYPES.get(found.command_id or "", "")),
                    ("DebitAccountType", "Utility Account"),
                    ("OriginatorConversationID", found.originator_conversation_id or ""),
                    ("ConversationID", found.conversation_id or ""),
                    ("ResultCode", found.result_code or ""),
                    ("ResultDesc", found.result_desc or ""),
                )
        return ResultDocument(
            code=code,
            description=RESULT_DESCRIPTIONS[code],
            originator_conversation_id=request.originator_conversation_id,
            conversation_id=transaction.conversation_id or "",
            transaction_id=transaction.transaction_id or "",
            parameters=parameters,
            legacy_parameters=parameters,
            reference=tuple(request.reference.items()),
        )

    # ---- answers and callbacks -----------------------------------------------------------------------

    def _answer(self, transaction: SimTransaction, code: str, description: str) -> Reply:
        transaction.http_status, transaction.response_code = 200, code
        self.metrics.requests.labels(command=transaction.command_id or "unknown", response_code=code).inc()
        self._log(transaction)
        body = build_response_envelope(
            code, description, originator_conversation_id=transaction.originator_conversation_id
        )
        return Reply(200, body)

    def _accepted(self, call: _Call, document: ResultDocument, scenario: Scenario) -> Reply:
        transaction = call.transaction
        self.metrics.results.labels(code=document.code).inc()
        body = build_response_envelope(
            "0",
            "Accept the service request successfully.",
            conversation_id=transaction.conversation_id,
            originator_conversation_id=transaction.originator_conversation_id,
            service_status="0",
        )
        wait_for = self._schedule_result(call, document, scenario)
        command = transaction.command_id or "unknown"
        reply: Reply
        if scenario == Scenario.HTTP_500:
            transaction.http_status, label = 500, "http_500"
            reply = Reply(500, soap_fault("Internal Server Error"))
        elif scenario == Scenario.CONNECTION_RESET:
            transaction.http_status, label = None, "connection_reset"
            reply = Reply(200, b"", drop=True)
        elif scenario == Scenario.MALFORMED_RESPONSE:
            transaction.http_status, label = 200, "malformed"
            reply = Reply(200, truncate_body(body))
        else:
            transaction.http_status, label = 200, "0"
            transaction.response_code = "0"
            hold = self.slow_seconds if scenario == Scenario.SLOW_RESPONSE else 0.0
            reply = Reply(200, body, hold=hold, wait_for=wait_for)
        self.metrics.requests.labels(command=command, response_code=label).inc()
        self._log(transaction)
        return reply

    def _schedule_result(self, call: _Call, document: ResultDocument, scenario: Scenario) -> threading.Event | None:
        transaction, url = call.transaction, call.inbound.request.result_url
        if scenario == Scenario.RESULT_DROPPED or url is None:
            return None
        body = result_envelope(document, DIALECTS.get(scenario, Dialect.XSD))
        if scenario == Scenario.RESULT_BEFORE_RESPONSE:
            return self._submit(transaction, CallbackJob(url, body, "result"), 0.0).done
        delay = self.options.result_delay
        if transaction.command_id == STATUS_QUERY_COMMAND and self.options.query_result_delay is not None:
            delay = self.options.query_result_delay
        self._submit(transaction, CallbackJob(url, body, "result"), delay)
        if scenario == Scenario.RESULT_TWICE:
            delay = self.options.result_delay + self.options.duplicate_gap
            self._submit(transaction, CallbackJob(url, body, "result#2"), delay)
        return None

    def _schedule_queue_timeout(self, call: _Call) -> None:
        request = call.inbound.request
        url = _param(request.reference, "QueueTimeoutURL")
        if not url:
            return
        body = queue_timeout_envelope(request.originator_conversation_id, call.body)
        delay = self.options.queue_timeout_delay
        job = CallbackJob(url, body, "queue_timeout")
        self._submit(call.transaction, job, self.options.result_delay if delay is None else delay)

    def _submit(self, transaction: SimTransaction, job: CallbackJob, delay: float) -> CallbackJob:
        with self._jobs_lock:
            self._jobs[id(job)] = transaction
        return self.deliverer.schedule(job, delay)

    def _record_attempt(self, job: CallbackJob, attempt: Attempt, final: bool) -> None:
        with self._jobs_lock:
            transaction = self._jobs.pop(id(job), None) if final else self._jobs.get(id(job))
        if attempt.delivered:
            outcome = "delivered"
        elif attempt.status is not None:
            outcome = "http_error"
        else:
            outcome = "connection_error"
        self.metrics.deliveries.labels(outcome=outcome).inc()
        if final and not attempt.delivered:
            self.metrics.deliveries.labels(outcome="abandoned").inc()
        if transaction is not None:
            with self.state.lock:
                transaction.deliveries.append(attempt)

    def _log(self, transaction: SimTransaction) -> None:
        log.info(
            "%s %s to %s: response %s, result %s, scenario %s",
            transaction.command_id or "request",
            transaction.originator_conversation_id or "-",
            mask_msisdn(transaction.msisdn) if transaction.msisdn else "-",
            transaction.response_code or transaction.http_status or "none",
            transaction.result_code or "-",
            transaction.scenario.value,
        )


def _header_present(body: bytes) -> bool:
    """Whether a request that could not be read at least carried a usable RequestSOAPHeader."""
    try:
        envelope = parse_untrusted(body)
    except ProtocolError:
        return True
    header = child(envelope, "Header")
    node = descendant(header, "RequestSOAPHeader") if header is not None else None
    if node is None:
        return False
    return (etree.QName(node).namespace or "") in HEADER_NAMESPACES and child(node, "spId") is not None
