from __future__ import annotations

import base64
import logging
import re
import socket
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest
from lxml import etree
from prometheus_client import REGISTRY

from tests.support.g2_double import (
    INITIATOR_PASSWORD,
    SP_PASSWORD,
    FakeGateway,
    KeyPair,
    TlsFiles,
    drop,
    hang,
    raw,
    reset,
    respond,
)
from worker.errors import GatewayError, ProtocolError
from worker.gateway.g2 import AttemptReason, Gateway, GatewayAnswer, HoldReason, request_wsdl
from worker.protocol.codes import ResponseOutcome
from worker.protocol.credential import decrypt_security_credential
from worker.protocol.header import verify_sp_password
from worker.protocol.inbound import parse_request_envelope, validate_request_document
from worker.protocol.response import build_response_envelope
from worker.settings import HEADER_NS_OSG, HEADER_NS_XSD

MakeGateway = Callable[..., Gateway]
MSISDN = "254712345678"
OCID = "600000_mpesab2c_0123456789abcdef0123456789abcdef"
THROTTLED = "100000002"
OVERLOADED = "100000001"


def pay(gateway: Gateway, ocid: str = OCID) -> GatewayAnswer:
    return gateway.pay(
        originator_conversation_id=ocid,
        command_id="BusinessPayment",
        amount=Decimal("1500.00"),
        msisdn=MSISDN,
        remark="June salary",
        reference={"Occasion": "payroll"},
    )


def metric(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def ticking_clock(step: timedelta = timedelta(seconds=1)) -> Callable[[], datetime]:
    moments: Iterator[datetime] = (datetime(2024, 6, 1, 10, 0, tzinfo=UTC) + i * step for i in range(10_000))
    return lambda: next(moments)


# ------------------------------------------------------------------------------------------- the wire


def test_request_msg_is_real_cdata_on_the_wire(make_gateway: MakeGateway, fake_gateway: FakeGateway) -> None:
    answer = make_gateway().pay(
        originator_conversation_id=OCID,
        command_id="BusinessPayment",
        amount=Decimal("1500.00"),
        msisdn=MSISDN,
        remark="Salary & <bonus>",
        reference={"Occasion": "payroll"},
    )

    assert answer.outcome is ResponseOutcome.ACCEPTED
    (received,) = fake_gateway.received
    body = received.body
    match = re.search(rb"<([\w-]+:)?RequestMsg[^>]*><!\[CDATA\[(.*?)\]\]></([\w-]+:)?RequestMsg>", body, re.S)
    assert match, body[:500]
    inner = match.group(2)
    assert inner.startswith(b"<?xml")
    assert b"<request " in inner and b"&lt;request" not in body
    assert b"Salary &amp; &lt;bonus&gt;" in inner  # the document's own escaping survives inside the CDATA
    assert validate_request_document(parse_request_envelope(body).document) == []
    request = parse_request_envelope(body).request
    assert request.originator_conversation_id == OCID
    assert request.parameters == {"Amount": "1500.00"}
    assert request.receiver_party == MSISDN
    assert request.primary_party == "600000"
    assert request.remark == "Salary & <bonus>"
    assert request.reference["Occasion"] == "payroll"
    assert request.reference["QueueTimeoutURL"] == "http://127.0.0.1:8320/mpesa/queue-timeout"
    assert request.result_url == "http://127.0.0.1:8320/mpesa/result"
    assert received.path == "/mminterface/request"
    assert received.headers["content-type"].startswith("text/xml")
    assert received.headers["soapaction"] == '""'


@pytest.mark.parametrize(
    ("choice", "namespace", "uppercase"),
    [("osg", HEADER_NS_OSG, "true"), ("xsd", HEADER_NS_XSD, "false")],
)
def test_soap_header(
    make_gateway: MakeGateway, fake_gateway: FakeGateway, choice: str, namespace: str, uppercase: str
) -> None:
    before = datetime.now(UTC).replace(microsecond=0)
    pay(make_gateway(B2C_HEADER_NAMESPACE=choice, B2C_SP_PASSWORD_UPPERCASE=uppercase))

    body = fake_gateway.received[0].body
    root = etree.fromstring(body)
    (header,) = root.iter(f"{{{namespace}}}RequestSOAPHeader")
    assert [etree.QName(child).localname for child in header] == ["spId", "spPassword", "serviceId", "timeStamp"]
    assert all(etree.QName(child).namespace == namespace for child in header)
    values = {etree.QName(child).localname: child.text or "" for child in header}
    assert values["spId"] == "107031"
    assert values["serviceId"] == "107031000"
    stamp = datetime.strptime(values["timeStamp"], "%Y%m%d%H%M%S").replace(tzinfo=UTC)
    assert before <= stamp <= datetime.now(UTC) + timedelta(seconds=1)
    assert verify_sp_password(values["spPassword"], "107031", SP_PASSWORD, values["timeStamp"])
    hex_digest = base64.b64decode(values["spPassword"]).decode()
    assert len(hex_digest) == 64
    assert hex_digest == (hex_digest.upper() if uppercase == "true" else hex_digest.lower())
    assert parse_request_envelope(body).header.namespace == namespace


def test_security_credential_is_computed_once_and_decrypts(
    make_gateway: MakeGateway, fake_gateway: FakeGateway, encryption_key: KeyPair
) -> None:
    fake_gateway.script(respond(THROTTLED), respond("0"))
    gateway = make_gateway()
    pay(gateway, "600000_mpesab2c_first")
    pay(gateway, "600000_mpesab2c_second")

    credentials = {parse_request_envelope(r.body).request.security_credential for r in fake_gateway.received}
    assert len(fake_gateway.received) == 3
    (credential,) = credentials
    assert len(credential) == 344
    assert decrypt_security_credential(credential, encryption_key.private_key) == INITIATOR_PASSWORD


def test_missing_certificate_is_a_clear_error(make_gateway: MakeGateway, tmp_path: Path) -> None:
    missing = tmp_path / "nowhere" / "apicrypt.cer"
    with pytest.raises(GatewayError, match=re.escape(str(missing))):
        make_gateway(B2C_CERT_PATH=str(missing))


def test_wsdl_is_loaded_once_per_process(make_gateway: MakeGateway) -> None:
    make_gateway()
    make_gateway()
    assert request_wsdl() is request_wsdl()


def test_status_query(make_gateway: MakeGateway, fake_gateway: FakeGateway) -> None:
    answer = make_gateway().query_status(
        originator_conversation_id="600000_mpesab2c_query1",
        target_originator_conversation_id=OCID,
        receipt="NH26HBCQ1Y",
    )

    assert answer.outcome is ResponseOutcome.ACCEPTED
    inbound = parse_request_envelope(fake_gateway.received[0].body)
    assert inbound.request.command_id == "TransactionStatusQuery"
    assert inbound.request.originator_conversation_id == "600000_mpesab2c_query1"
    assert inbound.request.parameters == {"OriginatorConversationID": OCID, "ReceiptNumber": "NH26HBCQ1Y"}
    assert inbound.request.receiver_party is None
    assert validate_request_document(inbound.document) == []


# ------------------------------------------------------------------------------------------- outcomes


def test_accepted(make_gateway: MakeGateway, fake_gateway: FakeGateway) -> None:
    calls = metric("mpesa_b2c_gateway_calls_total", command="BusinessPayment", outcome="accepted")
    fake_gateway.script(respond("0", "Accept the service request successfully.", conversation_id="AG_1"))

    answer = pay(make_gateway())

    assert answer.outcome is ResponseOutcome.ACCEPTED
    assert answer.attempts == 1
    assert answer.response is not None
    assert answer.response.conversation_id == "AG_1"
    assert answer.response.originator_conversation_id == OCID
    assert metric("mpesa_b2c_gateway_calls_total", command="BusinessPayment", outcome="accepted") == calls + 1


class _BrokenBookkeeping:
    """An observer whose bookkeeping fails after M-PESA answered (e.g. its database is gone)."""

    def before_attempt(self, command: str, originator_conversation_id: str) -> HoldReason | None:
        return None

    def after_attempt(
        self,
        command: str,
        originator_conversation_id: str,
        outcome: ResponseOutcome,
        reason: AttemptReason,
        code: str | None,
    ) -> None:
        raise RuntimeError("flow store unavailable")


def test_an_observer_failing_after_the_answer_does_not_lose_it(
    make_gateway: MakeGateway, fake_gateway: FakeGateway
) -> None:
    fake_gateway.script(respond("0", "Accept the service request successfully.", conversation_id="AG_1"))
    gateway = make_gateway()
    gateway.observer = _BrokenBookkeeping()
    answer = pay(gateway)
    assert answer.response is not None
    assert answer.outcome is ResponseOutcome.ACCEPTED and answer.response.conversation_id == "AG_1"


def test_cached_request_counts_as_accepted(make_gateway: MakeGateway, fake_gateway: FakeGateway) -> None:
    fake_gateway.script(respond("100000000", "Request was cached, waiting for resending"))
    answer = make_gateway().pay(
        originator_conversation_id=OCID,
        command_id="SalaryPayment",
        amount=Decimal("10"),
        msisdn=MSISDN,
        remark="",
        reference={},
    )
    assert answer.outcome is ResponseOutcome.ACCEPTED
    assert answer.attempts == 1
    assert len(fake_gateway.received) == 1


@pytest.mark.parametrize("code", ["100000007", "100000005", "24"])
def test_rejected_is_not_retried(make_gateway: MakeGateway, fake_gateway: FakeGateway, code: str) -> None:
    fake_gateway.script(respond(code, "Authentication failed"))
    answer = make_gateway().pay(
        originator_conversation_id=OCID,
        command_id="BusinessPayment",
        amount=Decimal("10.00"),
        msisdn=MSISDN,
        remark="x",
        reference={},
    )
    assert answer.outcome is ResponseOutcome.REJECTED
    assert answer.response is not None
    assert answer.response is not None and answer.response.code == code
    assert answer.attempts == 1
    assert len(fake_gateway.received) == 1


def test_throttling_then_success_resends_with_the_same_id_and_fresh_stamps(
    make_gateway: MakeGateway, fake_gateway: FakeGateway
) -> None:
    retries = metric("mpesa_b2c_gateway_retries_total", reason="response_code")
    fake_gateway.script(respond(THROTTLED), respond(OVERLOADED), respond("0"))

    answer = make_gateway(clock=ticking_clock()).pay(
        originator_conversation_id=OCID,
        command_id="BusinessPayment",
        amount=Decimal("1500.00"),
        msisdn=MSISDN,
        remark="June salary",
        reference={},
    )

    assert answer.outcome is ResponseOutcome.ACCEPTED
    assert answer.attempts == 3
    inbound = [parse_request_envelope(r.body) for r in fake_gateway.received]
    assert [i.request.originator_conversation_id for i in inbound] == [OCID] * 3
    assert len({i.request.timestamp for i in inbound}) == 3
    assert len({i.header.timestamp for i in inbound}) == 3
    assert len({i.header.sp_password for i in inbound}) == 3
    for i in inbound:
        assert verify_sp_password(i.header.sp_password or "", "107031", SP_PASSWORD, i.header.timestamp or "")
    assert metric("mpesa_b2c_gateway_retries_total", reason="response_code") == retries + 2


def test_retry_later_gives_up_after_the_attempt_budget(make_gateway: MakeGateway, fake_gateway: FakeGateway) -> None:
    fake_gateway.script(respond(THROTTLED))
    answer = pay(make_gateway(B2C_RETRY_ATTEMPTS="4"))

    assert answer.outcome is ResponseOutcome.RETRY_LATER
    assert answer.attempts == 4
    assert answer.response is not None
    assert answer.response.code == THROTTLED
    assert len(fake_gateway.received) == 4


def test_retry_later_gives_up_after_the_time_budget(make_gateway: MakeGateway, fake_gateway: FakeGateway) -> None:
    fake_gateway.script(respond(THROTTLED))
    gateway = make_gateway(B2C_RETRY_ATTEMPTS="1000", B2C_RETRY_MAX_SECONDS="0.4")
    started = time.monotonic()
    answer = pay(gateway)
    elapsed = time.monotonic() - started

    assert answer.outcome is ResponseOutcome.RETRY_LATER
    assert 1 < answer.attempts < 1000
    assert len(fake_gateway.received) == answer.attempts
    assert elapsed < 2.0


@pytest.mark.parametrize(
    ("behaviour", "reason"),
    [
        (hang(2.0), "read_timeout"),
        (respond("0", status=500), "http_error"),
        (respond(THROTTLED, status=503), "http_error"),
        (raw(500, b"<html>Internal Server Error</html>", "text/html"), "http_error"),
        (raw(502, b""), "http_error"),
        (raw(200, b"garbage, not XML at all"), "unparsable_response"),
        (raw(200, b"<soapenv:Envelope xmlns:soapenv='http://schemas.xmlsoap.org/soap/envelope/'/>"), "unparsable"),
        (raw(404, b"<html>Not Found</html>", "text/html"), "http_error"),
        (reset(), "connection_lost"),
        (drop(), "connection_lost"),
        (respond("100000004", "Internal Server Error"), "response_code"),
        (respond("987654321", "never heard of it"), "response_code"),
    ],
    ids=[
        "read-timeout",
        "500-accept",
        "503-throttle",
        "500-html",
        "502-empty",
        "garbage",
        "no-body",
        "404",
        "reset-after-send",
        "drop-after-send",
        "internal-error-code",
        "unlisted-code",
    ],
)
def test_anything_after_sending_is_unknown_and_not_retried(
    make_gateway: MakeGateway, fake_gateway: FakeGateway, behaviour: Callable[..., None], reason: str
) -> None:
    fake_gateway.script(behaviour, respond("0"))
    answer = pay(make_gateway())

    assert answer.outcome is ResponseOutcome.UNKNOWN
    assert answer.reason.startswith(reason)
    assert answer.attempts == 1
    assert len(fake_gateway.received) == 1


def test_oversized_answer_is_unknown(make_gateway: MakeGateway, fake_gateway: FakeGateway) -> None:
    filler = b"<!-- " + b"x" * 1_100_000 + b" -->"
    body = build_response_envelope("0", "ok").replace(b"<soapenv:Body>", b"<soapenv:Body>" + filler)
    fake_gateway.script(raw(200, body))
    answer = pay(make_gateway())
    assert answer.outcome is ResponseOutcome.UNKNOWN
    assert answer.reason == "oversized_response"


def test_hostile_answer_is_unknown(make_gateway: MakeGateway, fake_gateway: FakeGateway) -> None:
    hostile = (
        b'<?xml version="1.0"?><!DOCTYPE r [<!ENTITY x SYSTEM "file:///etc/passwd">]>'
        + build_response_envelope("0", "&x;").split(b"?>", 1)[1]
    )
    fake_gateway.script(raw(200, hostile))
    answer = pay(make_gateway())
    assert answer.outcome is ResponseOutcome.UNKNOWN
    assert answer.reason == "unparsable_response"


# ------------------------------------------------------------------------------ nothing sent: retried


@pytest.fixture
def closed_port_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/mminterface/request"


@pytest.fixture
def unanswered_connect_url() -> Iterator[str]:
    """A listener whose accept queue is full: further connects neither succeed nor fail until timeout."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    port = listener.getsockname()[1]
    filler = socket.create_connection(("127.0.0.1", port))
    yield f"http://127.0.0.1:{port}/mminterface/request"
    filler.close()
    listener.close()


def test_connection_refused_is_retried_then_retry_later(make_gateway: MakeGateway, closed_port_url: str) -> None:
    retries = metric("mpesa_b2c_gateway_retries_total", reason="connection_refused")
    not_sent = metric("mpesa_b2c_gateway_calls_total", command="BusinessPayment", outcome="not_sent")

    answer = pay(make_gateway(B2C_MPESA_URL=closed_port_url, B2C_RETRY_ATTEMPTS="3"))

    assert answer.outcome is ResponseOutcome.RETRY_LATER
    assert answer.reason == "connection_refused"
    assert answer.response is None
    assert answer.attempts == 3
    assert metric("mpesa_b2c_gateway_retries_total", reason="connection_refused") == retries + 2
    assert metric("mpesa_b2c_gateway_calls_total", command="BusinessPayment", outcome="not_sent") == not_sent + 3


def test_connect_timeout_is_retried_then_retry_later(make_gateway: MakeGateway, unanswered_connect_url: str) -> None:
    started = time.monotonic()
    answer = pay(make_gateway(B2C_MPESA_URL=unanswered_connect_url, B2C_CONNECT_TIMEOUT="0.2"))

    assert answer.outcome is ResponseOutcome.RETRY_LATER
    assert answer.reason == "connect_timeout"
    assert answer.attempts == 3
    assert time.monotonic() - started < 3.0


def test_refused_then_reachable_is_accepted(
    make_gateway: MakeGateway, fake_gateway: FakeGateway, closed_port_url: str
) -> None:
    """The same Gateway keeps working once the far end is back (no poisoned connection pool)."""
    gateway = make_gateway(B2C_MPESA_URL=closed_port_url)
    assert pay(gateway).outcome is ResponseOutcome.RETRY_LATER
    reachable = make_gateway()
    answer = pay(reachable)
    assert answer.outcome is ResponseOutcome.ACCEPTED
    assert len(fake_gateway.received) == 1


# ------------------------------------------------------------------------------------------- secrets


def test_nothing_secret_reaches_the_log(
    make_gateway: MakeGateway,
    fake_gateway: FakeGateway,
    closed_port_url: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    fake_gateway.script(respond(THROTTLED), respond("0"), hang(2.0), raw(500, b"oops"))
    gateway = make_gateway()
    for ocid in ("600000_a", "600000_b", "600000_c"):
        pay(gateway, ocid)
    pay(make_gateway(B2C_MPESA_URL=closed_port_url))

    credential = parse_request_envelope(fake_gateway.received[0].body).request.security_credential
    digests = [parse_request_envelope(r.body).header.sp_password or "" for r in fake_gateway.received]
    text = "\n".join(record.getMessage() + (record.exc_text or "") for record in caplog.records)
    assert "2547******78" in text
    for secret in (MSISDN, SP_PASSWORD, INITIATOR_PASSWORD, credential, *digests):
        assert secret not in text
    assert "<request" not in text and "RequestMsg" not in text


# ------------------------------------------------------------------------------------------- TLS


def test_two_way_tls_with_client_certificate_and_ca_bundle(
    make_gateway: MakeGateway, tls_gateway: FakeGateway, tls_files: TlsFiles
) -> None:
    gateway = make_gateway(
        B2C_MPESA_URL=tls_gateway.url,
        B2C_TLS_CLIENT_CERT=str(tls_files.client_cert),
        B2C_TLS_CLIENT_KEY=str(tls_files.client_key),
        B2C_TLS_CA_BUNDLE=str(tls_files.ca),
        B2C_READ_TIMEOUT="2",
    )
    answer = pay(gateway)
    assert answer.outcome is ResponseOutcome.ACCEPTED, answer.detail
    assert len(tls_gateway.received) == 1


def test_tls_without_the_client_certificate_is_not_paid_and_not_retried(
    make_gateway: MakeGateway, tls_gateway: FakeGateway, tls_files: TlsFiles
) -> None:
    """TLS errors cannot be placed before or after the request was written: UNKNOWN, never resent."""
    gateway = make_gateway(B2C_MPESA_URL=tls_gateway.url, B2C_TLS_CA_BUNDLE=str(tls_files.ca))
    answer = pay(gateway)
    assert answer.outcome is ResponseOutcome.UNKNOWN, answer.detail
    assert answer.reason in ("tls_error", "connection_lost")
    assert answer.attempts == 1
    assert tls_gateway.received == []


def test_tls_server_not_trusted_without_the_ca_bundle(make_gateway: MakeGateway, tls_gateway: FakeGateway) -> None:
    answer = pay(make_gateway(B2C_MPESA_URL=tls_gateway.url))
    assert answer.outcome is ResponseOutcome.UNKNOWN
    assert answer.reason == "tls_error"
    assert answer.attempts == 1
    assert tls_gateway.received == []


# ------------------------------------------------------------------------------------------- misc


def test_a_request_that_cannot_be_built_is_never_sent(make_gateway: MakeGateway, fake_gateway: FakeGateway) -> None:
    with pytest.raises(ProtocolError):
        make_gateway().pay(
            originator_conversation_id=OCID,
            command_id="BusinessPayment",
            amount=Decimal("10.001"),
            msisdn=MSISDN,
            remark="",
            reference={},
        )
    assert fake_gateway.received == []


def test_one_gateway_serves_many_threads(make_gateway: MakeGateway, fake_gateway: FakeGateway) -> None:
    gateway = make_gateway(B2C_READ_TIMEOUT="5")
    ids = [f"600000_mpesab2c_{n:04d}" for n in range(48)]
    with ThreadPoolExecutor(max_workers=16) as pool:
        answers = list(pool.map(lambda ocid: pay(gateway, ocid), ids))

    assert [a.outcome for a in answers] == [ResponseOutcome.ACCEPTED] * len(ids)
    assert [a.response.originator_conversation_id for a in answers if a.response] == ids
    sent = sorted(parse_request_envelope(r.body).request.originator_conversation_id for r in fake_gateway.received)
    assert sent == ids
    assert all(b"<![CDATA[" in r.body for r in fake_gateway.received)
