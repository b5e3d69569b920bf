"""The scrub filter masks registered secrets and phone numbers in every record, exceptions included."""

from __future__ import annotations

import logging

import pytest

from worker.logs import ScrubFilter, register_secret, scrub


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
