"""The URLs M-PESA calls back on: the configured ResultURL / QueueTimeoutURL with the secret token appended.

The one place that turns ``B2C_RESULT_URL`` + ``B2C_CALLBACK_TOKEN`` into what goes on the wire and what the
receiver serves, so the two cannot drift apart. ``https://payer.example/mpesa/result`` with token ``T``
becomes ``https://payer.example/mpesa/result/T`` (a query string, if any, stays after the path). The token is
registered with the log scrubber whenever it is used, so a logged URL never shows it.
"""

from __future__ import annotations

import dataclasses
from urllib.parse import urlsplit, urlunsplit

from worker.logs import register_secret
from worker.settings import MpesaSettings, Settings


def with_token(url: str, token: str) -> str:
    """``url`` with ``/<token>`` appended to its path."""
    register_secret(token)
    parts = urlsplit(url)
    path = parts.path.rstrip("/") + "/" + token
    return urlunsplit(parts._replace(path=path))


def base_path(url: str) -> str:
    """The path part of a configured callback URL, without the token (``/`` when empty)."""
    return urlsplit(url).path.rstrip("/") or "/"


def result_url(settings: Settings) -> str:
    return with_token(settings.mpesa.result_url, settings.receiver.callback_token.reveal())


def queue_timeout_url(settings: Settings) -> str:
    return with_token(settings.mpesa.queue_timeout_url, settings.receiver.callback_token.reveal())


def result_path(settings: Settings) -> str:
    return urlsplit(result_url(settings)).path


def queue_timeout_path(settings: Settings) -> str:
    return urlsplit(queue_timeout_url(settings)).path


def gateway_mpesa(settings: Settings) -> MpesaSettings:
    """The gateway's settings with the effective (tokened) callback URLs: what the worker sends M-PESA."""
    return dataclasses.replace(
        settings.mpesa, result_url=result_url(settings), queue_timeout_url=queue_timeout_url(settings)
    )
