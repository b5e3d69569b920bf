from __future__ import annotations

from collections.abc import Callable
from decimal import Decimal

import pytest

from tests.support.data import G2_SAMPLES
from worker.protocol.request import Initiator, build_envelope, build_payment_request
from worker.settings import HEADER_NS_OSG

SAMPLE_01 = G2_SAMPLES / "g2_v15_01_GenericAPIRequest_B2C_PromotionPayment_with_ResultURL.xml"


@pytest.fixture
def sample_request() -> bytes:
    """The v1.5 specification's GenericAPIRequest example, without the provenance comment line."""
    lines = SAMPLE_01.read_bytes().splitlines(keepends=True)
    assert lines[0].startswith(b"<!--")
    return b"".join(lines[1:])


@pytest.fixture
def inner_document() -> bytes:
    return build_payment_request(
        command_id="BusinessPayment",
        originator_conversation_id="600000_mpesab2c_0123456789abcdef0123456789abcdef",
        amount=Decimal("1500.00"),
        msisdn="254712345678",
        remark="June salary",
        initiator=Initiator(name="apiop37", security_credential="Q1JFREVOVElBTA==", shortcode="600000"),
        result_url="http://127.0.0.1:8320/mpesa/result",
        queue_timeout_url="http://127.0.0.1:8320/mpesa/queue-timeout",
        reference={"Occasion": "payroll"},
        timestamp="2024-06-01T10:00:00.000000Z",
    )


@pytest.fixture
def make_envelope(inner_document: bytes) -> Callable[..., bytes]:
    def make(*, inner: bytes | None = None, namespace: str = HEADER_NS_OSG) -> bytes:
        return build_envelope(
            inner=inner_document if inner is None else inner,
            sp_id="107031",
            sp_password_digest="c3BwYXNzd29yZA==",
            service_id="107031000",
            timestamp="20240601100000",
            header_namespace=namespace,
        )

    return make
