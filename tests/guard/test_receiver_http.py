"""The receiver's door over real HTTP on loopback: token path, source networks behind a proxy, size, type."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import requests
from prometheus_client import REGISTRY

from tests.support.guard import TOKEN, XML, Receiver, count
from worker.protocol.request import SOAP_ENV_NS
from worker.protocol.result import RESULT_NS, TIMEOUT_NS, build_result_envelope
from worker.protocol.xml import parse_untrusted
from worker.simulator.templates import queue_timeout_envelope

UNKNOWN = build_result_envelope(
    code="0",
    description="ok",
    originator_conversation_id="600000_mpesab2c_nobodyknowsthisone",
    conversation_id="AG_20240501_unknown",
    transaction_id="SGR7UNKNOWN",
    parameters={"TransactionAmount": "10.00"},
)


def refused(reason: str) -> float:
    return REGISTRY.get_sample_value("mpesa_b2c_callbacks_refused_total", {"reason": reason}) or 0.0


def test_only_the_tokened_path_takes_results(receiver_factory: Callable[..., Receiver]) -> None:
    receiver = receiver_factory()
    ledger = receiver.settings.ledger
    assert receiver.service.app.result_path == f"/mpesa/result/{TOKEN}"
    before = refused("token")
    for path in ("/mpesa/result", "/mpesa/result/", "/mpesa/result/not-the-token-at-all", f"/mpesa/result/{TOKEN}/x"):
        answer = receiver.post(path, UNKNOWN)
        assert answer.status_code == 404, path
        assert answer.text == "not found\n", "a wrong token looks like any unknown path"
    assert receiver.post("/somewhere/else", UNKNOWN).status_code == 404
    assert refused("token") - before == 4
    assert count(ledger, "results") == 0 and count(ledger, "quarantine") == 0

    answer = receiver.post(receiver.service.app.result_path, UNKNOWN)
    assert answer.status_code == 200 and b"00000000" in answer.content
    assert count(ledger, "results") == 1
    assert requests.get(receiver.result_url, timeout=5).status_code == 405


def test_size_and_content_type_are_checked_before_parsing(receiver_factory: Callable[..., Receiver]) -> None:
    receiver = receiver_factory(B2C_CALLBACK_MAX_BYTES="2048")
    path = receiver.service.app.result_path
    too_big = UNKNOWN + b" " * 2048
    before = refused("too_large")
    assert receiver.post(path, too_big).status_code == 413

    def chunks() -> Iterator[bytes]:
        yield from (too_big[i : i + 500] for i in range(0, len(too_big), 500))

    chunked = requests.post(receiver.result_url, data=chunks(), headers=XML, timeout=10)
    assert chunked.status_code == 413
    assert refused("too_large") - before == 2
    for content_type in ("application/json", "text/plain", ""):
        answer = receiver.post(path, UNKNOWN, {"Content-Type": content_type})
        assert answer.status_code == 415, content_type
    assert count(receiver.settings.ledger, "results") == 0
    assert receiver.post(path, UNKNOWN).status_code == 200, "a body within the limit is taken"


def test_networks_without_a_trusted_proxy_use_the_peer(receiver_factory: Callable[..., Receiver]) -> None:
    receiver = receiver_factory(B2C_CALLBACK_ALLOWED_NETWORKS="10.9.0.0/16")
    path = receiver.service.app.result_path
    before = refused("network")
    assert receiver.post(path, UNKNOWN).status_code == 403
    # The header is anyone's word when the peer is not a trusted proxy.
    assert receiver.post(path, UNKNOWN, {**XML, "X-Forwarded-For": "10.9.1.1"}).status_code == 403
    # A token guess from outside learns nothing: 403 whether or not the token is right.
    assert receiver.post("/mpesa/result/guess-guess-guess", UNKNOWN).status_code == 403
    assert refused("network") - before == 3
    assert requests.get(receiver.url + "/healthz", timeout=5).status_code == 200
    assert count(receiver.settings.ledger, "results") == 0


def test_forwarded_for_is_believed_only_from_a_trusted_proxy(receiver_factory: Callable[..., Receiver]) -> None:
    receiver = receiver_factory(B2C_CALLBACK_ALLOWED_NETWORKS="10.9.0.0/16", B2C_TRUSTED_PROXIES="127.0.0.0/8")
    path = receiver.service.app.result_path

    def status(forwarded: str | None) -> int:
        headers = dict(XML) if forwarded is None else {**XML, "X-Forwarded-For": forwarded}
        return receiver.post(path, UNKNOWN, headers).status_code

    assert status("10.9.1.1") == 200
    assert status("203.0.113.7, 10.9.1.1") == 200, "left of the right-most untrusted hop is the client's word"
    assert status("10.9.1.1, 127.0.0.2") == 200, "a second proxy hop is skipped"
    assert status("10.9.1.1, 203.0.113.7") == 403, "the right-most untrusted hop is the client"
    assert status("not-an-address") == 403
    assert status(None) == 403, "the proxy itself is not an allowed source"
    assert count(receiver.settings.ledger, "results") == 3


def test_a_queue_timeout_is_answered_in_the_notify_queue_timeout_shape(
    receiver_factory: Callable[..., Receiver],
) -> None:
    receiver = receiver_factory()
    notice = queue_timeout_envelope("600000_mpesab2c_nobodyknowsthisone", b"<request/>")
    answer = receiver.post(receiver.service.app.queue_timeout_path, notice)
    assert answer.status_code == 200
    result = parse_untrusted(answer.content).find(
        f"{{{SOAP_ENV_NS}}}Body/{{{TIMEOUT_NS}}}notifyQueueTimeoutResponse/{{{TIMEOUT_NS}}}result"
    )
    assert result is not None, answer.text
    assert result.findtext(f"{{{RESULT_NS}}}ResultCode") == "00000000"
    assert count(receiver.settings.ledger, "queue_timeouts") == 1
