"""The fault suite's log capture: the root logger set up as ``mpesa-b2c`` does with B2C_LOG_LEVEL=DEBUG."""

from __future__ import annotations

import contextlib
import io
import logging
import re
from collections.abc import Iterator

import pytest

from worker.logs import setup_logging

# Distinctive values: a leak of any of them cannot hide behind a common word.
SECRETS = {
    "B2C_SP_PASSWORD": "SpPw-Zq7xK9-distinct",
    "B2C_INITIATOR_PASSWORD": "InitPw-Vb3mW8-distinct",
    "B2C_CALLBACK_TOKEN": "CbTok-Rj5nT2pLq8sX4w-distinct",
}
# A full Kenyan mobile number in any spelling, not part of a longer digit run; masked ones (2547******78) pass.
FULL_MSISDN = re.compile(r"(?<![0-9])(?:\+?254[17][0-9]{8}|0[17][0-9]{8})(?![0-9])")


@pytest.fixture
def debug_log() -> Iterator[io.StringIO]:
    """worker.logs.setup_logging("DEBUG", secrets=...) exactly as worker/cli/main.py calls it, into a buffer."""
    root = logging.getLogger()
    saved = (list(root.handlers), root.level, logging.getLogger("pika").level)
    buffer = io.StringIO()
    with contextlib.redirect_stderr(buffer):  # setup_logging's handler binds the stream it finds now
        setup_logging("DEBUG", secrets=list(SECRETS.values()))
    try:
        yield buffer
    finally:
        for handler in list(root.handlers):
            handler.flush()
            root.removeHandler(handler)
        for handler in saved[0]:
            root.addHandler(handler)
        root.setLevel(saved[1])
        logging.getLogger("pika").setLevel(saved[2])


def assert_no_secrets(text: str, credentials: list[str]) -> None:
    """No secret, no SecurityCredential and no full MSISDN in any line; enough DEBUG output to mean it."""
    lines = text.splitlines()
    assert len(lines) > 200, "DEBUG logging did not reach the captured handler"
    assert any(" DEBUG " in line for line in lines), "no DEBUG line: the level was not applied"
    assert credentials and all(len(c) > 100 for c in credentials), "no SecurityCredential to look for"
    for name, secret in [*SECRETS.items(), *(("SecurityCredential", c) for c in credentials)]:
        leaked = [line for line in lines if secret in line]
        assert not leaked, f"{name} in the log: {leaked[:3]}"
    numbers = [line for line in lines if FULL_MSISDN.search(line)]
    assert not numbers, f"full MSISDNs in the log: {numbers[:5]}"
    assert "2547******" in text, "masked numbers are expected in the log (the run logged recipients)"
