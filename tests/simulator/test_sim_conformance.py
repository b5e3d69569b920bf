"""What the simulator sends can be read by the project's own receiver-side parsers, in every dialect.

A failure here points at whichever side is wrong; the simulator's templates follow PROTOCOL section 4.
"""

from __future__ import annotations

from decimal import Decimal

import pytest

from tests.support.sim_client import G2Client
from tests.support.sim_support import Collector
from worker.protocol.response import parse_response_envelope
from worker.protocol.result import parse_queue_timeout, parse_result_envelope
from worker.simulator.scenarios import SCENARIOS, Scenario, msisdn_for

RESULT_SCENARIOS = [
    info.scenario
    for info in SCENARIOS
    if info.scenario == Scenario.NORMAL or info.scenario.value.startswith("dialect_")
]


@pytest.mark.parametrize("scenario", RESULT_SCENARIOS, ids=lambda s: s.value)
def test_worker_parser_reads_every_result_dialect(client: G2Client, collector: Collector, scenario: Scenario) -> None:
    msisdn = msisdn_for(scenario) or "254712345678"
    ocid = f"600000_c_{scenario.value}"
    _, body = client.pay(ocid, msisdn, "1500.00")
    response = parse_response_envelope(body)
    assert response.code == "0" and response.originator_conversation_id == ocid
    [item] = collector.wait(1, "/result")
    result = parse_result_envelope(item.body)
    assert result.code == "0"
    assert result.originator_conversation_id == ocid
    assert result.conversation_id == response.conversation_id
    assert result.details.amount == Decimal("1500.00")
    assert result.details.receipt and len(result.details.receipt) == 10
    assert result.details.utility_balance == Decimal("98500.00")
    assert result.details.completed_at is not None
    assert result.reference["Occasion"] == "Salary Nov"


def test_worker_parser_reads_the_queue_timeout(client: G2Client, collector: Collector) -> None:
    _, body = client.pay("600000_c_cached", msisdn_for(Scenario.CACHED) or "", "100.00")
    assert parse_response_envelope(body).code == "100000000"
    [notice] = collector.wait(1, "/timeout")
    timeout = parse_queue_timeout(notice.body)
    assert timeout.originator_conversation_id == "600000_c_cached"
    assert timeout.origin_request is not None and b"600000_c_cached" in timeout.origin_request
