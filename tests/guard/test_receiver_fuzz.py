"""Hostile bodies at the receiver (hypothesis): malformed XML, XXE, entity bombs, huge bodies, wrong content
types, random bytes, and forged results for real payouts. Every answer is a 4xx, or a result that was stored
and answered success; never a crash or a 5xx, and never a change to any payout (ledger checked each time)."""

from __future__ import annotations

import io
import os
from collections.abc import Callable, Iterator
from decimal import Decimal
from typing import Any

import pytest
import requests
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.support.commands import make_command
from tests.support.guard import TOKEN, Receiver, count, snapshot
from tests.support.pipeline import declare
from worker.amqp.publisher import ConfirmedPublisher
from worker.events.relay import OutboxRelay
from worker.ledger import Ledger, open_ledger
from worker.payouts.models import Payout, originator_conversation_id
from worker.protocol.result import build_result_envelope, parse_result_envelope
from worker.receiver.endpoint import CallbackReceiver
from worker.settings import Settings

MAX_BODY = 4096
SUCCESS = b"00000000"

XXE = b"""<?xml version="1.0"?>
<!DOCTYPE r [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>
<soapenv:Envelope xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/"><soapenv:Body>
<ResultMsg xmlns="http://api-v1.gen.mm.vodafone.com/mminterface/result">&xxe;</ResultMsg>
</soapenv:Body></soapenv:Envelope>"""
BOMB = b"""<?xml version="1.0"?>
<!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
<!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">]><lolz>&lol3;</lolz>"""
EXTERNAL_DTD = b'<?xml version="1.0"?><!DOCTYPE r SYSTEM "http://127.0.0.1:9/evil.dtd"><r/>'
INNER_XXE = (
    b'<soapenv:Envelope xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/"><soapenv:Body>'
    b'<ResultMsg xmlns="http://api-v1.gen.mm.vodafone.com/mminterface/result"><![CDATA[<?xml version="1.0"?>'
    b'<!DOCTYPE r [<!ENTITY x SYSTEM "file:///etc/hostname">]><Result><ResultCode>0</ResultCode>'
    b"<OriginatorConversationID>&x;</OriginatorConversationID></Result>]]></ResultMsg></soapenv:Body>"
    b"</soapenv:Envelope>"
)
HOSTILE = [
    XXE,
    BOMB,
    EXTERNAL_DTD,
    INNER_XXE,
    b"<a>" * 5000,
    b"\xff\xfe<\x00a\x00>",
    b"<?xml version='1.0' encoding='klingon'?><a/>",
    b"",
]
CONTENT_TYPES = ["text/xml; charset=utf-8", "text/xml", "application/soap+xml", "TEXT/XML", "text/xml; charset=latin-1"]
WRONG_TYPES = [
    "application/json",
    "",
    "text/plain",
    "multipart/form-data; boundary=x",
    "application/x-www-form-urlencoded",
]
XML_TEXT = st.text(alphabet=st.characters(blacklist_categories=("Cs", "Cc")), max_size=40)
# B2C_FUZZ_EXAMPLES raises the count for a long hunt (the default keeps the suite quick).
FUZZ = settings(
    max_examples=int(os.environ.get("B2C_FUZZ_EXAMPLES", "150")),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large],
)


def _payouts(ledger: Ledger, settings: Settings) -> list[Payout]:
    """One payout in each interesting status: received, accepted (with a ConversationID), completed."""
    made = []
    for n, amount in enumerate(("100.00", "2500.00", "70.50")):
        payout_id = f"p-fuzz-{n}"
        ocid = originator_conversation_id(settings.mpesa.shortcode, settings.mpesa.org_name, payout_id)
        ledger.payouts.record(make_command(payout_id, amount, remarks="fuzz", metadata={}), ocid)
        if n >= 1:
            ledger.payouts.claim_send(payout_id, expected_attempts=0)
            ledger.payouts.mark_accepted(payout_id, conversation_id=f"AG_FUZZ_{n}", code="0", description="ok")
        if n == 2:
            genuine = build_result_envelope(
                code="0",
                description="ok",
                originator_conversation_id=ocid,
                conversation_id=f"AG_FUZZ_{n}",
                transaction_id="SGRFUZZ2",
                parameters={"TransactionAmount": amount, "TransactionReceipt": "SGRFUZZ2"},
            )
            ledger.results.record(genuine, parse_result_envelope(genuine))
        stored = ledger.payouts.get(payout_id)
        assert stored is not None
        made.append(stored)
    return made


@pytest.fixture
def app(
    amqp_names: dict[str, str], ledger_env: dict[str, str], make_settings: Callable[..., Settings]
) -> Iterator[tuple[CallbackReceiver, Ledger, Settings, list[Payout]]]:
    settings = make_settings(**amqp_names, **ledger_env, B2C_CALLBACK_TOKEN=TOKEN, B2C_CALLBACK_MAX_BYTES=str(MAX_BODY))
    declare(settings)
    ledger = open_ledger(settings.ledger)
    url = settings.amqp.url
    relay = OutboxRelay(ledger.outbox, lambda: ConfirmedPublisher(url), settings.amqp.events_exchange)
    try:
        yield (
            CallbackReceiver(settings, ledger.results, ledger.outbox, relay),
            ledger,
            settings,
            _payouts(ledger, settings),
        )
    finally:
        relay.close()
        ledger.close()


def call(app: CallbackReceiver, path: str, body: bytes, content_type: str) -> tuple[str, bytes]:
    """One POST straight into the WSGI app: an exception here is what a 500 would be behind waitress."""
    answer: dict[str, Any] = {}

    def start_response(status: str, headers: list[tuple[str, str]]) -> None:
        answer["status"] = status

    environ = {
        "REQUEST_METHOD": "POST",
        "PATH_INFO": path,
        "CONTENT_TYPE": content_type,
        "CONTENT_LENGTH": str(len(body)),
        "REMOTE_ADDR": "127.0.0.1",
        "wsgi.input": io.BytesIO(body),
    }
    chunks = b"".join(app(environ, start_response))
    return str(answer["status"]), chunks


@st.composite
def forged_results(draw: st.DrawFn, payouts: list[Payout]) -> bytes:
    """A well-formed result for a real payout that does not say what was sent (the amount is always off)."""
    payout = draw(st.sampled_from(payouts))
    delta = draw(st.decimals(min_value=Decimal("0.01"), max_value=Decimal("100000"), places=2))
    amount = payout.command.amount + delta if draw(st.booleans()) else max(payout.command.amount - delta, Decimal(0))
    parameters = {"TransactionAmount": f"{amount:.2f}"}
    if draw(st.booleans()):
        parameters["ReceiverPartyPublicName"] = draw(
            st.sampled_from(["254712345678 - Jane", "254799999999 - Eve", "Eve", "2547****5678 - Eve"])
        )
    return build_result_envelope(
        code=draw(st.sampled_from(["0", "1", "2", "15", "17", "26", "49", "2001", "Completed", "x"])),
        description=draw(XML_TEXT),
        originator_conversation_id=payout.originator_conversation_id,
        conversation_id=draw(st.sampled_from([payout.conversation_id, None, "AG_OTHER"])),
        transaction_id=draw(st.one_of(st.none(), st.text(alphabet="ABCDEFGHJK0123456789", min_size=1, max_size=10))),
        parameters=parameters,
    )


def unknown_results() -> st.SearchStrategy[bytes]:
    return st.builds(
        lambda ocid, code, text: build_result_envelope(
            code=code, description=text, originator_conversation_id=ocid, conversation_id=None
        ),
        st.text(alphabet="abcdef0123456789_", min_size=1, max_size=60),
        st.sampled_from(["0", "1", "17"]),
        XML_TEXT,
    )


def mutated(valid: bytes) -> st.SearchStrategy[bytes]:
    def mutate(cut: int, junk: bytes, keep_tail: bool) -> bytes:
        cut %= len(valid) + 1
        return valid[:cut] + junk + (valid[cut:] if keep_tail else b"")

    return st.builds(mutate, st.integers(min_value=0), st.binary(max_size=40), st.booleans())


def bodies(payouts: list[Payout]) -> st.SearchStrategy[bytes]:
    # A forged success for the accepted payout (amount off); mutations of it must not get through either.
    valid = build_result_envelope(
        code="0",
        description="ok",
        originator_conversation_id=payouts[1].originator_conversation_id,
        conversation_id=payouts[1].conversation_id,
        parameters={"TransactionAmount": "2500.10", "TransactionReceipt": "SGRFORGED"},
    )
    return st.one_of(
        st.binary(max_size=2048),
        st.text(max_size=500).map(str.encode),
        st.sampled_from(HOSTILE),
        forged_results(payouts),
        unknown_results(),
        mutated(valid),
        st.integers(min_value=MAX_BODY - 200, max_value=MAX_BODY * 3).map(lambda n: b"<a>" + b" " * n + b"</a>"),
    )


def test_hostile_bodies_never_crash_and_never_change_a_payout(
    app: tuple[CallbackReceiver, Ledger, Settings, list[Payout]],
) -> None:
    receiver, ledger, config, payouts = app
    before = snapshot(ledger)
    backlog = ledger.outbox.backlog()

    @FUZZ
    @given(
        body=bodies(payouts),
        content_type=st.one_of(st.sampled_from(CONTENT_TYPES), st.sampled_from(WRONG_TYPES)),
    )
    def check(body: bytes, content_type: str) -> None:
        stored = count(config.ledger, "results")
        status, answer = call(receiver, receiver.result_path, body, content_type)
        code = int(status.split()[0])
        assert code in (200, 400, 413, 415), status
        if code == 200:
            assert SUCCESS in answer
            assert count(config.ledger, "results") == stored + 1, "answered success without storing"
        else:
            assert count(config.ledger, "results") == stored
        if code == 413:
            assert len(body) > MAX_BODY
        if code == 415:
            assert "xml" not in content_type.lower()
        assert snapshot(ledger) == before
        assert ledger.outbox.backlog() == backlog

    check()


def test_a_truncated_inner_declaration_is_refused_not_a_crash(
    app: tuple[CallbackReceiver, Ledger, Settings, list[Payout]],
) -> None:
    """Found by the fuzzer: a CDATA document that starts ``<?xml`` and never closes the declaration. Kept in the
    quarantine (reason ``unparsable``) and answered as stored, like every unreadable body on the secret path."""
    receiver, ledger = app[0], app[1]
    body = (
        b'<soapenv:Envelope xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/"><soapenv:Body>'
        b'<res:ResultMsg xmlns:res="http://api-v1.gen.mm.vodafone.com/mminterface/result"><![CDATA[<?xml]]>'
        b"</res:ResultMsg></soapenv:Body></soapenv:Envelope>"
    )
    status, answer = call(receiver, receiver.result_path, body, "text/xml")
    assert status.startswith("200") and SUCCESS in answer
    assert [(entry.reason, entry.raw) for entry in ledger.quarantine.entries()][-1] == ("unparsable", body)


def test_hostile_bodies_over_real_http(receiver_factory: Callable[..., Receiver]) -> None:
    """The same through waitress: what a 5xx would look like on the wire never happens."""
    receiver = receiver_factory(B2C_CALLBACK_MAX_BYTES=str(MAX_BODY))
    ledger = receiver.service.ledger
    paths = [receiver.service.app.result_path, receiver.service.app.queue_timeout_path]

    @settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(
        body=st.one_of(st.binary(max_size=1024), st.sampled_from(HOSTILE), unknown_results()),
        content_type=st.sampled_from(CONTENT_TYPES + WRONG_TYPES),
        path=st.sampled_from(paths),
    )
    def check(body: bytes, content_type: str, path: str) -> None:
        answer = receiver.post(path, body, {"Content-Type": content_type})
        assert 200 <= answer.status_code < 500, answer.status_code
        if answer.status_code == 200:
            assert SUCCESS in answer.content

    check()
    assert ledger.payouts.list_payouts() == []
    assert requests.get(receiver.url + "/healthz", timeout=5).status_code == 200
