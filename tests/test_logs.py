"""The scrub filter masks registered secrets and phone numbers in every record, exceptions included."""

from __future__ import annotations

import json
import logging

import pytest

from worker.cli.dead import DeadMessage
from worker.logs import ScrubFilter, register_secret, scrub
from worker.redact import mask_msisdns_in_json


def test_scrub_masks_numbers_in_every_spelling() -> None:
    text = scrub("pay 254712345678, +254712345678, 0712345678 and 0112345678 now")
    assert "12345678" not in text
    assert "2547******78" in text and "07******78" in text


def test_registered_secrets_are_masked() -> None:
    register_secret("s3cr3t-initiator-pw")
    assert scrub("password=s3cr3t-initiator-pw;") == "password=********;"


def test_filter_scrubs_message_arguments_and_tracebacks(caplog: pytest.LogCaptureFixture) -> None:
    register_secret("very-secret-sp-password")
    logger = logging.getLogger("test.scrub")
    logger.addFilter(ScrubFilter())
    try:
        with caplog.at_level(logging.INFO, logger="test.scrub"):
            logger.info("sending to %s with %s", "254711223344", "very-secret-sp-password")
            try:
                raise ValueError("bad request for 0711223344 using very-secret-sp-password")
            except ValueError:
                logger.exception("failed")
    finally:
        logger.filters.clear()
    output = caplog.text + "".join(r.exc_text or "" for r in caplog.records)
    assert "very-secret-sp-password" not in output
    assert "711223344" not in output and "11223344" not in output
    assert "2547******44" in output


def test_numbers_in_parsed_json_are_masked_and_it_stays_json() -> None:
    value = {"msisdn": 254712345678, "note": "call 0712345678", "254712345678": [True, 3, 254112345678]}
    masked = mask_msisdns_in_json(value)
    assert masked == {"msisdn": "2547******78", "note": "call 07******78", "2547******78": [True, 3, "2541******78"]}
    assert json.loads(json.dumps(masked)) == masked


def test_dead_message_details_mask_a_phone_number_held_as_a_json_number() -> None:
    message = DeadMessage(
        id="1",
        body=b'{"msisdn": "254712345678"}',
        headers={"x-note": 254712345678},
        message_id=None,
        timestamp=None,
        reason="invalid",
        message="bad",
        source_queue=None,
        dead_at=None,
    )
    details = message.details(raw=False)
    assert details["headers"] == {"x-note": "2547******78"}
    assert "254712345678" not in json.dumps(details)
