"""Every fault scenario, observed on the wire by the spec-only client and the result collector."""

from __future__ import annotations

import base64
import socket
import time
from collections.abc import Callable

import pytest
import requests
from lxml import etree

from tests.support.sim_client import G2Client, ResultView, response_fields, result_view
from tests.support.sim_support import Collector, client_for, transactions
from worker.settings import Settings
from worker.simulator import RunningSimulator
from worker.simulator.scenarios import SCENARIOS, Scenario, msisdn_for

SimFactory = Callable[..., RunningSimulator]


def magic(scenario: Scenario) -> str:
    number = msisdn_for(scenario)
    assert number is not None
    return number


def results_for(collector: Collector, ocid: str, count: int = 1, timeout: float = 5.0) -> list[ResultView]:
    deadline = time.monotonic() + timeout
    while True:
        views = [result_view(r.body) for r in collector.items("/result")]
        mine = [v for v in views if v.fields.get("OriginatorConversationID") == ocid]
        if len(mine) >= count or time.monotonic() >= deadline:
            return mine
        collector.wait(len(views) + 1, "/result", timeout=0.1)


def test_slow_response_times_the_client_out_but_pays(
    client: G2Client, collector: Collector, sim: RunningSimulator
) -> None:
    started = time.monotonic()
    with pytest.raises(TimeoutError):
        client.post(
            client.envelope(client.payment_document("600000_f_slow", magic(Scenario.SLOW_RESPONSE))),
            timeout=0.4,
        )
    assert time.monotonic() - started < 1.0
    [result] = results_for(collector, "600000_f_slow")
    assert result.code == "0"
    assert transactions(sim)[0]["paid"] is True


def test_slow_response_does_answer_0_eventually(client: G2Client) -> None:
    started = time.monotonic()
    status, body = client.pay("600000_f_slow2", magic(Scenario.SLOW_RESPONSE))
    assert time.monotonic() - started >= 0.95
    assert status == 200 and response_fields(body)["ResponseCode"] == "0"


def test_http_500_after_the_payment_was_taken(client: G2Client, collector: Collector, sim: RunningSimulator) -> None:
    status, body = client.pay("600000_f_500", magic(Scenario.HTTP_500))
    assert status == 500
    fault = etree.fromstring(body)
    assert fault.find(".//{http://schemas.xmlsoap.org/soap/envelope/}Fault") is not None
    assert results_for(collector, "600000_f_500")[0].code == "0"
    [record] = transactions(sim)
    assert record["paid"] is True and record["http_status"] == 500 and record["response_code"] is None


def test_connection_reset_after_the_payment_was_taken(
    client: G2Client, collector: Collector, sim: RunningSimulator
) -> None:
    with pytest.raises(ConnectionResetError):
        client.pay("600000_f_reset", magic(Scenario.CONNECTION_RESET))
    assert results_for(collector, "600000_f_reset")[0].code == "0"
    assert transactions(sim)[0]["paid"] is True


def test_connection_reset_sends_no_http_bytes_at_all(client: G2Client) -> None:
    body = client.envelope(client.payment_document("600000_f_reset_raw", magic(Scenario.CONNECTION_RESET)))
    request = (
        f"POST /mminterface/request HTTP/1.1\r\nHost: sim\r\nContent-Type: text/xml\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode() + body
    received = b""
    with socket.create_connection((client.host, client.port), timeout=5) as sock:
        sock.sendall(request)
        with pytest.raises(ConnectionResetError):
            while chunk := sock.recv(4096):
                received += chunk
    assert received == b""


def test_throttled_refuses_the_first_tries_then_accepts(
    client: G2Client, collector: Collector, sim: RunningSimulator
) -> None:
    codes = [
        response_fields(client.pay("600000_f_thr", magic(Scenario.THROTTLED))[1])["ResponseCode"] for _ in range(3)
    ]
    assert codes == ["100000002", "26", "0"]
    assert [r.code for r in results_for(collector, "600000_f_thr")] == ["0"]
    time.sleep(0.2)
    assert len(collector.items("/result")) == 1
    assert [t["paid"] for t in transactions(sim)] == [False, False, True]


def test_cached_then_queue_timeout_and_nothing_paid(
    client: G2Client, collector: Collector, sim: RunningSimulator
) -> None:
    status, body = client.pay("600000_f_cached", magic(Scenario.CACHED))
    assert status == 200 and response_fields(body)["ResponseCode"] == "100000000"
    [notice] = collector.wait(1, "/timeout")
    root = etree.fromstring(notice.body)
    ns = "{http://www.csapi.org/schema/timeoutnotification/data/v1_0/local}"
    node = root.find(f".//{ns}notifyQueueTimeout")
    assert node is not None
    assert node.findtext(f"{ns}originatorConversationID") == "600000_f_cached"
    origin = base64.b64decode(node.findtext(f"{ns}originRequest") or "")
    assert b"600000_f_cached" in origin and origin.startswith(b"<soapenv:Envelope")
    time.sleep(0.2)
    assert collector.items("/result") == []
    assert transactions(sim)[0]["paid"] is False

    _, body = client.pay("600000_f_cached", magic(Scenario.CACHED))
    assert response_fields(body)["ResponseCode"] == "0"
    assert results_for(collector, "600000_f_cached")[0].code == "0"


def test_result_dropped_is_never_sent_but_the_payment_can_be_looked_up(
    client: G2Client, collector: Collector, sim: RunningSimulator
) -> None:
    _, body = client.pay("600000_f_drop", magic(Scenario.RESULT_DROPPED))
    assert response_fields(body)["ResponseCode"] == "0"
    time.sleep(0.3)
    assert collector.items("/result") == []
    assert transactions(sim)[0]["paid"] is True
    client.query("600000_f_drop_q", "OriginatorConversationID", "600000_f_drop")
    [report] = results_for(collector, "600000_f_drop_q")
    assert report.parameters["TransactionStatus"] == "Completed"


def test_result_sent_twice(client: G2Client, collector: Collector, sim: RunningSimulator) -> None:
    client.pay("600000_f_twice", magic(Scenario.RESULT_TWICE))
    items = collector.wait(2, "/result")
    assert len(items) == 2 and items[0].body == items[1].body
    assert result_view(items[0].body).code == "0"
    assert sum(t["paid"] for t in transactions(sim)) == 1


def test_result_arrives_before_the_http_response(client: G2Client, collector: Collector) -> None:
    status, body = client.pay("600000_f_early", magic(Scenario.RESULT_BEFORE_RESPONSE))
    answered = time.monotonic()
    assert status == 200 and response_fields(body)["ResponseCode"] == "0"
    [item] = collector.items("/result")
    assert item.at < answered
    assert result_view(item.body).fields["OriginatorConversationID"] == "600000_f_early"


def test_insufficient_funds_scenario(client: G2Client, collector: Collector, sim: RunningSimulator) -> None:
    client.pay("600000_f_funds", magic(Scenario.INSUFFICIENT_FUNDS))
    assert results_for(collector, "600000_f_funds")[0].code == "1"
    assert transactions(sim)[0]["paid"] is False


def test_wrong_credential_scenario_fails_a_correct_credential(
    client: G2Client, collector: Collector, sim: RunningSimulator
) -> None:
    client.pay("600000_f_cred", magic(Scenario.WRONG_CREDENTIAL))
    assert results_for(collector, "600000_f_cred")[0].code == "18"
    assert transactions(sim)[0]["paid"] is False


def test_malformed_response_after_the_payment_was_taken(
    client: G2Client, collector: Collector, sim: RunningSimulator
) -> None:
    status, body = client.pay("600000_f_bad", magic(Scenario.MALFORMED_RESPONSE))
    assert status == 200 and body
    with pytest.raises(etree.XMLSyntaxError):
        etree.fromstring(body)
    assert results_for(collector, "600000_f_bad")[0].code == "0"
    assert transactions(sim)[0]["paid"] is True


def test_unregistered_recipient(client: G2Client, collector: Collector) -> None:
    client.pay("600000_f_unreg", magic(Scenario.UNREGISTERED_RECIPIENT))
    assert results_for(collector, "600000_f_unreg")[0].parameters["B2CRecipientIsRegisteredCustomer"] == "N"


RESULT_NS = b"http://api-v1.gen.mm.vodafone.com/mminterface/result"
REQUEST_NS = b"http://api-v1.gen.mm.vodafone.com/mminterface/request"


def _cdata(body: bytes) -> bytes:
    start = body.index(b"<![CDATA[") + len(b"<![CDATA[")
    return body[start : body.index(b"]]>", start)]


DIALECT_CHECKS: dict[Scenario, Callable[[bytes, bytes], bool]] = {
    Scenario.DIALECT_UPPERCASE_ROOT: lambda body, doc: (
        doc.split(b"?>", 1)[1].lstrip().startswith(b'<Result xmlns="' + RESULT_NS + b'"')
    ),
    Scenario.DIALECT_NO_NAMESPACE: lambda body, doc: doc.split(b"?>", 1)[1].lstrip().startswith(b"<result>"),
    Scenario.DIALECT_OTHER_NAMESPACE: lambda body, doc: b'<result xmlns="' + REQUEST_NS + b'">' in doc,
    Scenario.DIALECT_ID_CASING: lambda body, doc: (
        b"<ConversationId>" in doc and b"<TransactionId>" in doc and b"<ConversationID>" not in doc
    ),
    Scenario.DIALECT_COMPLETED_WORD: lambda body, doc: b"<ResultType>Completed</ResultType>" in doc,
    Scenario.DIALECT_OLD_PARAMETERS: lambda body, doc: (
        b'<Parameter><Key xmlns="' + REQUEST_NS + b'">Amount</Key>' in doc
        and b">Ksh1500.00</Value>" in doc
        and b"TransactionReceipt" not in doc
    ),
    Scenario.DIALECT_NO_DECLARATION: lambda body, doc: doc.startswith(b"<result xmlns="),
    Scenario.DIALECT_LEADING_WHITESPACE: lambda body, doc: doc[:1].isspace() and doc.lstrip().startswith(b"<?xml"),
    Scenario.DIALECT_TRACE_2014: lambda body, doc: (
        body.startswith(b"<s:Envelope")
        and b'<ResultMsg xmlns="' + RESULT_NS + b'">' in body
        and doc.startswith(b'<Result xmlns:i="http://www.w3.org/2001/XMLSchema-instance"')
        and b"<ResultType>Completed</ResultType>" in doc
        and b">Utility Account Available Funds</Key>" in doc
    ),
}


@pytest.mark.parametrize("scenario", list(DIALECT_CHECKS), ids=lambda s: s.value)
def test_result_dialects_on_the_wire(client: G2Client, collector: Collector, scenario: Scenario) -> None:
    ocid = f"600000_f_{scenario.value}"
    client.pay(ocid, magic(scenario))
    [item] = collector.wait(1, "/result")
    doc = _cdata(item.body)
    assert DIALECT_CHECKS[scenario](item.body, doc), doc[:300]
    view = result_view(item.body)
    assert view.code == "0"
    assert view.fields["OriginatorConversationID"] == ocid
    assert view.fields.get("TransactionID", view.fields.get("TransactionId", ""))
    assert view.reference["QueueTimeoutURL"] == client.queue_timeout_url


def test_every_scenario_has_a_wire_test() -> None:
    tested = set(DIALECT_CHECKS) | {
        Scenario.NORMAL,
        Scenario.SLOW_RESPONSE,
        Scenario.HTTP_500,
        Scenario.CONNECTION_RESET,
        Scenario.THROTTLED,
        Scenario.CACHED,
        Scenario.RESULT_DROPPED,
        Scenario.RESULT_TWICE,
        Scenario.RESULT_BEFORE_RESPONSE,
        Scenario.INSUFFICIENT_FUNDS,
        Scenario.WRONG_CREDENTIAL,
        Scenario.MALFORMED_RESPONSE,
        Scenario.UNREGISTERED_RECIPIENT,
    }
    assert tested == {info.scenario for info in SCENARIOS}


def test_global_fault_applies_to_the_next_n_payments_then_clears(
    client: G2Client, collector: Collector, sim: RunningSimulator
) -> None:
    reply = requests.post(sim.base_url + "/simulator/faults", json={"scenario": "http_500", "count": 2}, timeout=5)
    assert reply.json() == {"scenario": "http_500", "remaining": 2}
    statuses = [client.pay(f"600000_f_g{i}", "254712345678")[0] for i in range(3)]
    assert statuses == [500, 500, 200]
    assert requests.get(sim.base_url + "/simulator/faults", timeout=5).json()["scenario"] is None


def test_global_fault_until_cleared(client: G2Client, sim: RunningSimulator) -> None:
    requests.post(sim.base_url + "/simulator/faults", json={"scenario": "throttled"}, timeout=5)
    _, body = client.pay("600000_f_gt", "254712345678")
    assert response_fields(body)["ResponseCode"] == "100000002"
    requests.delete(sim.base_url + "/simulator/faults", timeout=5)
    _, body = client.pay("600000_f_gt2", "254712345678")
    assert response_fields(body)["ResponseCode"] == "0"


def test_global_fault_does_not_override_a_magic_number(client: G2Client, sim: RunningSimulator) -> None:
    requests.post(sim.base_url + "/simulator/faults", json={"scenario": "http_500"}, timeout=5)
    _, body = client.pay("600000_f_gm", magic(Scenario.THROTTLED))
    assert response_fields(body)["ResponseCode"] == "100000002"


def test_bad_fault_requests_are_refused(sim: RunningSimulator) -> None:
    url = sim.base_url + "/simulator/faults"
    assert requests.post(url, json={"scenario": "meteor_strike"}, timeout=5).status_code == 400
    assert requests.post(url, json={"scenario": "http_500", "count": 0}, timeout=5).status_code == 400
    assert requests.post(url, data=b"[1]", timeout=5).status_code == 400


def test_fault_option_at_start(start: SimFactory, settings: Settings, collector: Collector) -> None:
    sim = start(fault=Scenario.HTTP_500, fault_count=1)
    client = client_for(sim, settings, collector)
    assert client.pay("600000_f_opt1", "254712345678")[0] == 500
    assert client.pay("600000_f_opt2", "254712345678")[0] == 200
