"""The simulator's business rules, driven by a G2 client written from the specification alone."""

from __future__ import annotations

import re
import socket
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
import requests

from tests.support.sim_client import NS_XSD, G2Client, ResultView, compact, response_fields, result_view
from tests.support.sim_support import Collector, client_for, transactions, with_deliveries
from worker.settings import Settings
from worker.simulator import RunningSimulator

SimFactory = Callable[..., RunningSimulator]


def _wait_result(collector: Collector, ocid: str, timeout: float = 5.0) -> ResultView:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for item in collector.items("/result"):
            view = result_view(item.body)
            if view.fields.get("OriginatorConversationID") == ocid:
                return view
        collector.wait(len(collector.items("/result")) + 1, "/result", timeout=0.2)
    raise AssertionError(f"no result for {ocid}")


def test_correct_payment_is_accepted_then_paid_with_realistic_result(
    client: G2Client, collector: Collector, sim: RunningSimulator
) -> None:
    status, body = client.pay("600000_acme_0001", "254712345678", "1500.00", occasion="Nov & Dec")
    assert status == 200
    response = response_fields(body)
    assert response["ResponseCode"] == "0"
    assert response["OriginatorConversationID"] == "600000_acme_0001"
    assert re.fullmatch(r"AG_\d{8}_[0-9a-f]{20}", response["ConversationID"])

    result = _wait_result(collector, "600000_acme_0001")
    assert result.code == "0"
    assert result.fields["ConversationID"] == response["ConversationID"]
    params = result.parameters
    assert re.fullmatch(r"[A-Z0-9]{10}", params["TransactionReceipt"])
    assert params["TransactionAmount"] == "1500.00"
    completed = datetime.strptime(params["TransactionCompletedDateTime"], "%d.%m.%Y %H:%M:%S")
    nairobi_now = datetime.now(UTC).replace(tzinfo=None) + timedelta(hours=3)
    assert abs((nairobi_now - completed).total_seconds()) < 60
    assert re.fullmatch(r"254712345678 - [A-Z][a-z]+ [A-Z][a-z]+", params["ReceiverPartyPublicName"])
    assert params["B2CUtilityAccountAvailableFunds"] == "98500.00"
    assert Decimal(params["B2CWorkingAccountAvailableFunds"]) >= 0
    assert Decimal(params["B2CChargesPaidAccountAvailableFunds"]) >= 0
    assert params["B2CRecipientIsRegisteredCustomer"] == "Y"
    assert result.reference == {"QueueTimeoutURL": client.queue_timeout_url, "Occasion": "Nov & Dec"}

    [record] = with_deliveries(sim, 1)
    assert record["paid"] is True and record["result_code"] == "0" and record["amount"] == "1500.00"
    assert record["callback_deliveries"][0]["status"] == 200


def test_result_post_is_a_soap_request_to_the_result_url(client: G2Client, collector: Collector) -> None:
    client.pay("600000_acme_hdr", "254712345678", "100.00")
    [item] = collector.wait(1, "/result")
    assert item.headers["Content-Type"].startswith("text/xml")
    assert item.headers.get("SOAPAction") == '""'


@pytest.mark.parametrize(("header_ns", "upper"), [(NS_XSD, True), (NS_XSD, False)])
def test_either_header_namespace_and_hex_case_is_accepted(client: G2Client, header_ns: str, upper: bool) -> None:
    client.header_ns, client.upper_hex = header_ns, upper
    _, body = client.pay(f"600000_acme_ns_{upper}", "254712345678", "50.00")
    assert response_fields(body)["ResponseCode"] == "0"


def test_wrong_sp_password_or_sp_id_is_refused_100000007(
    client: G2Client, collector: Collector, sim: RunningSimulator
) -> None:
    good = client.payment_document("600000_acme_auth", "254712345678", "100.00")
    _, body = client.post(client.envelope(good, sp_password_override="V1JPTkc="))
    assert response_fields(body)["ResponseCode"] == "100000007"
    _, body = client.post(client.envelope(good, sp_id="999999"))
    assert response_fields(body)["ResponseCode"] == "100000007"
    no_header = re.sub(rb"<soapenv:Header>.*</soapenv:Header>", b"", client.envelope(good), flags=re.S)
    _, body = client.post(no_header)
    assert response_fields(body)["ResponseCode"] == "100000007"
    assert collector.wait(1, "/result", timeout=0.3) == []
    assert all(not t["paid"] for t in transactions(sim))


def test_reused_originator_conversation_id_gets_0_then_result_15(
    client: G2Client, collector: Collector, sim: RunningSimulator
) -> None:
    client.pay("600000_acme_dup", "254712345678", "200.00")
    _wait_result(collector, "600000_acme_dup")
    _, body = client.pay("600000_acme_dup", "254712345678", "200.00")
    assert response_fields(body)["ResponseCode"] == "0"
    results = collector.wait(2, "/result")
    codes = sorted(result_view(r.body).code for r in results)
    assert codes == ["0", "15"]
    assert sum(t["paid"] for t in transactions(sim)) == 1


def test_status_query_reports_a_paid_payment_and_49_for_an_unknown_id(client: G2Client, collector: Collector) -> None:
    client.pay("600000_acme_q1", "254712345678", "750.00")
    paid = _wait_result(collector, "600000_acme_q1")
    _, body = client.query("600000_acme_query1", "OriginatorConversationID", "600000_acme_q1")
    assert response_fields(body)["ResponseCode"] == "0"
    report = _wait_result(collector, "600000_acme_query1")
    assert report.code == "0"
    p = report.parameters
    assert p["TransactionStatus"] == "Completed"
    assert p["ReceiptNo"] == paid.parameters["TransactionReceipt"]
    assert p["Amount"] == "750.00"
    assert p["OriginatorConversationID"] == "600000_acme_q1"
    assert p["ConversationID"] == paid.fields["ConversationID"]
    assert p["ResultCode"] == "0"
    assert p["CreditPartyName"].startswith("254712345678 - ")
    assert p["DebitPartyName"].startswith("600000")
    assert re.fullmatch(r"\d{14}", p["InitiatedTime"]) and re.fullmatch(r"\d{14}", p["FinalisedTime"])

    client.query("600000_acme_query2", "ReceiptNumber", paid.parameters["TransactionReceipt"])
    assert _wait_result(collector, "600000_acme_query2").parameters["OriginatorConversationID"] == "600000_acme_q1"

    client.query("600000_acme_query3", "OriginatorConversationID", "600000_never_sent")
    unknown = _wait_result(collector, "600000_acme_query3")
    assert unknown.code == "49"
    assert "TransactionStatus" not in unknown.parameters


def test_status_query_reports_a_failed_payment_as_failed(client: G2Client, collector: Collector) -> None:
    client.pay("600000_acme_qf", "254712345678", "5.00")
    assert _wait_result(collector, "600000_acme_qf").code == "2"
    client.query("600000_acme_qf_query", "OriginatorConversationID", "600000_acme_qf")
    report = _wait_result(collector, "600000_acme_qf_query")
    assert report.code == "0"
    assert report.parameters["TransactionStatus"] == "Failed"
    assert report.parameters["ResultCode"] == "2"


def test_wrong_initiator_password_fails_with_18_and_pays_nothing(
    client: G2Client, collector: Collector, sim: RunningSimulator
) -> None:
    _, body = client.pay("600000_acme_cred", "254712345678", "100.00", initiator_password="not-it")
    assert response_fields(body)["ResponseCode"] == "0"
    assert _wait_result(collector, "600000_acme_cred").code == "18"
    assert not transactions(sim)[0]["paid"]


@pytest.mark.parametrize(("amount", "code"), [("150000.01", "3"), ("9.99", "2"), ("100000.00", "0")])
def test_amount_limits(client: G2Client, collector: Collector, amount: str, code: str) -> None:
    client.pay(f"600000_acme_lim_{amount}", "254712345678", amount)
    assert _wait_result(collector, f"600000_acme_lim_{amount}").code == code


def test_balance_runs_down_to_result_1_and_is_restored_by_the_control_endpoint(
    client: G2Client, collector: Collector, sim: RunningSimulator
) -> None:
    client.pay("600000_acme_b1", "254712345678", "60000.00")
    assert _wait_result(collector, "600000_acme_b1").parameters["B2CUtilityAccountAvailableFunds"] == "40000.00"
    client.pay("600000_acme_b2", "254712345678", "60000.00")
    assert _wait_result(collector, "600000_acme_b2").code == "1"
    reply = requests.post(sim.base_url + "/simulator/balance", json={"utility": "123456.00"}, timeout=5)
    assert reply.json()["utility"] == "123456.00"
    client.pay("600000_acme_b3", "254712345678", "60000.00")
    after = _wait_result(collector, "600000_acme_b3")
    assert after.code == "0"
    assert after.parameters["B2CUtilityAccountAvailableFunds"] == "63456.00"
    metrics = requests.get(sim.base_url + "/metrics", timeout=5).text
    assert "mpesa_sim_utility_balance_kes 63456.0" in metrics


@pytest.mark.parametrize("form", ["iso", "compact"])
def test_stale_timestamp_fails_with_19_and_leaves_the_id_free(
    client: G2Client, collector: Collector, sim: RunningSimulator, form: str
) -> None:
    old = datetime.now(UTC) - timedelta(minutes=11)
    stamp = old.strftime("%Y-%m-%dT%H:%M:%S.%fZ") if form == "iso" else compact(old)
    ocid = f"600000_acme_stale_{form}"
    _, body = client.pay(ocid, "254712345678", "100.00", timestamp=stamp)
    assert response_fields(body)["ResponseCode"] == "0"
    assert _wait_result(collector, ocid).code == "19"
    fresh = compact(datetime.now(UTC)) if form == "compact" else None
    client.pay(ocid, "254712345678", "100.00", timestamp=fresh)
    codes = [result_view(r.body).code for r in collector.wait(2, "/result")]
    assert codes == ["19", "0"]
    assert [t["paid"] for t in transactions(sim)] == [False, True]


def test_bad_requests_get_input_error_codes(client: G2Client, collector: Collector) -> None:
    def code_of(body: bytes) -> str:
        return response_fields(client.post(body)[1])["ResponseCode"]

    assert code_of(b"this is not xml") == "100000005"
    dtd = b'<?xml version="1.0"?><!DOCTYPE x [<!ENTITY e SYSTEM "file:///etc/passwd">]><x>&e;</x>'
    assert code_of(dtd) == "100000005"
    valid = client.payment_document("600000_acme_bad", "254712345678", "100.00")
    no_identity = re.sub(r"<Identity>.*</Identity>", "", valid, flags=re.S)
    assert code_of(client.envelope(no_identity)) == "24"
    assert code_of(client.envelope(valid.replace(">BusinessPayment<", ">Teleport<"))) == "23"
    no_amount = re.sub(r"<Parameters>.*</Parameters>", "", valid, flags=re.S)
    assert code_of(client.envelope(no_amount)) == "100000014"
    assert code_of(client.envelope(valid.replace(">100.00<", ">ten<"))) == "100000005"
    assert code_of(client.envelope(valid.replace(">254712345678<", ">0712345678<"))) == "100000005"
    empty_id = valid.replace(">600000_acme_bad<", "><")
    assert code_of(client.envelope(empty_id)) == "30"
    no_result_url = re.sub(r"<ResultURL>.*</ResultURL>", "", valid)
    assert code_of(client.envelope(no_result_url)) == "100000014"
    assert collector.wait(1, "/result", timeout=0.3) == []


def test_oversized_body_is_refused_before_it_is_read(client: G2Client) -> None:
    head = "POST /mminterface/request HTTP/1.1\r\nHost: sim\r\nContent-Type: text/xml\r\nContent-Length: 300000\r\n\r\n"
    with socket.create_connection((client.host, client.port), timeout=5) as sock:
        sock.sendall(head.encode() + b"<x>")
        answer = sock.recv(4096)
    assert answer.startswith(b"HTTP/1.1 413")


def test_failed_callbacks_are_retried_with_backoff(
    client: G2Client, collector: Collector, sim: RunningSimulator
) -> None:
    collector.statuses.extend([500, 503])
    client.pay("600000_acme_retry", "254712345678", "100.00")
    items = collector.wait(3, "/result")
    assert len(items) == 3
    assert items[1].at - items[0].at >= 0.04 and items[2].at - items[1].at >= 0.09
    deliveries = with_deliveries(sim, 3)[0]["callback_deliveries"]
    assert [(d["attempt"], d["status"]) for d in deliveries] == [(1, 500), (2, 503), (3, 200)]
    metrics = requests.get(sim.base_url + "/metrics", timeout=5).text
    assert 'mpesa_sim_callback_deliveries_total{outcome="http_error"} 2.0' in metrics
    assert 'mpesa_sim_callback_deliveries_total{outcome="delivered"} 1.0' in metrics


def test_unreachable_result_url_is_given_up_after_the_configured_attempts(
    start: SimFactory, settings: Settings, collector: Collector
) -> None:
    sim = start(callback_attempts=2)
    client = client_for(sim, settings, collector)
    client.result_url = "http://127.0.0.1:9/result"
    client.pay("600000_acme_unreach", "254712345678", "100.00")
    with_deliveries(sim, 2)
    time.sleep(0.3)  # no third attempt follows
    deliveries = transactions(sim)[0]["callback_deliveries"]
    assert [d["attempt"] for d in deliveries] == [1, 2]
    assert all(d["status"] is None and d["error"] for d in deliveries)
    metrics = requests.get(sim.base_url + "/metrics", timeout=5).text
    assert 'mpesa_sim_callback_deliveries_total{outcome="abandoned"} 1.0' in metrics


def test_metrics_count_requests_and_results(client: G2Client, collector: Collector, sim: RunningSimulator) -> None:
    client.pay("600000_acme_m1", "254712345678", "100.00")
    client.pay("600000_acme_m2", "254712345678", "1.00")
    collector.wait(2, "/result")
    client.post(client.envelope(client.payment_document("x", "254712345678"), sp_password_override="eA=="))
    text = requests.get(sim.base_url + "/metrics", timeout=5).text
    assert 'mpesa_sim_requests_total{command="BusinessPayment",response_code="0"} 2.0' in text
    assert 'mpesa_sim_requests_total{command="BusinessPayment",response_code="100000007"} 1.0' in text
    assert 'mpesa_sim_results_total{code="0"} 1.0' in text
    assert 'mpesa_sim_results_total{code="2"} 1.0' in text


def test_reset_forgets_transactions_and_restores_the_balance(
    client: G2Client, collector: Collector, sim: RunningSimulator
) -> None:
    client.pay("600000_acme_r1", "254712345678", "1000.00")
    _wait_result(collector, "600000_acme_r1")
    reply = requests.post(sim.base_url + "/simulator/reset", timeout=5).json()
    assert reply["utility"] == "100000.00"
    assert transactions(sim) == []
    client.pay("600000_acme_r1", "254712345678", "1000.00")
    assert [result_view(r.body).code for r in collector.wait(2, "/result")] == ["0", "0"]
