"""Logging set-up with a last line of defence: every record is scrubbed of secrets and phone numbers.

Code should never log a secret or a full MSISDN in the first place; this filter catches what slips through
(an exception message quoting a request, a library's debug output) before any handler writes it.
"""

from __future__ import annotations

import logging
import sys
import threading

from worker.redact import mask_msisdns_in_text

_secrets: set[str] = set()
_lock = threading.Lock()


def scrub(text: str) -> str:
    """The text with every registered secret and every Kenyan mobile number masked."""
    with _lock:
        secrets = sorted(_secrets, key=len, reverse=True)
    for secret in secrets:
        text = text.replace(secret, "********")
    return mask_msisdns_in_text(text)


def register_secret(value: str) -> None:
    """Make sure this value is masked wherever it would appear in a log line (passwords, credentials)."""
    if len(value) >= 4:
        with _lock:
            _secrets.add(value)


class ScrubFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = scrub(record.exc_text)
        record.msg = scrub(message)
        record.args = None
        return True


class NoReturnedBodies(logging.Filter):
    """pika logs the first 255 bytes of every returned (unroutable) message; keep only its routing."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.msg, str) and record.msg.startswith("Published message was returned"):
            args = record.args if isinstance(record.args, tuple) else ()
            record.msg = "Published message was returned (body omitted): method=%r"
            record.args = (args[2] if len(args) > 2 else None,)
        return True


PIKA_RETURNS_LOGGER = "pika.adapters.blocking_connection"


def quiet_returned_bodies() -> None:
    """Install :class:`NoReturnedBodies` on pika's logger, once: bodies carry phone numbers.

    Called by :func:`setup_logging` and by every publisher, so a returned body never reaches a handler
    whoever configured logging (a test, an embedding program).
    """
    logger = logging.getLogger(PIKA_RETURNS_LOGGER)
    with _lock:
        if not any(isinstance(f, NoReturnedBodies) for f in logger.filters):
            logger.addFilter(NoReturnedBodies())


def setup_logging(level: str, secrets: list[str] | None = None) -> None:
    """Configure the root logger once per process, with the scrub filter on every handler."""
    for secret in secrets or []:
        register_secret(secret)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s [%(threadName)s] %(message)s"))
    handler.addFilter(ScrubFilter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    # pika's INFO is connection chatter and its DEBUG prints frames with message bodies (phone numbers).
    logging.getLogger("pika").setLevel(logging.WARNING)
    quiet_returned_bodies()
