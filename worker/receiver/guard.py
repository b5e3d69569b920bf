"""Who may post results to the receiver: the secret path token and the allowed source networks.

The token is checked in constant time; a wrong or missing token is answered exactly like any unknown path
(404), so a scanner cannot tell that it found the endpoint. The source address is the TCP peer, unless the
peer is one of ``B2C_TRUSTED_PROXIES``: then the right-most ``X-Forwarded-For`` address that is not itself
a trusted proxy is the client. Everything left of it was written by the client and proves nothing, so it is
never looked at. A forwarded-for entry that is not an IP address makes the client unknown, and an unknown
client is outside every network.
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import Mapping
from enum import StrEnum
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network, ip_address
from typing import Any

from worker.gateway import callback_urls
from worker.logs import register_secret
from worker.settings import DEMO_CALLBACK_TOKEN, Settings

log = logging.getLogger(__name__)

Address = IPv4Address | IPv6Address
Network = IPv4Network | IPv6Network


class Refusal(StrEnum):
    """Why a request was refused before its body was parsed: the ``reason`` of ``mpesa_b2c_callbacks_refused_total``."""

    NETWORK = "network"
    METHOD = "method"
    TOO_LARGE = "too_large"
    CONTENT_TYPE = "content_type"
    TOKEN = "token"  # noqa: S105 - the reason label (a wrong token), not a token
    NOT_FOUND = "not_found"


def parse_address(text: str) -> Address | None:
    """An address as it appears in REMOTE_ADDR or X-Forwarded-For (``1.2.3.4``, ``1.2.3.4:80``, ``[::1]:80``)."""
    value = text.strip().strip('"')
    if value.startswith("["):
        value = value[1:].split("]", 1)[0]
    elif value.count(":") == 1:
        value = value.split(":", 1)[0]
    try:
        address = ip_address(value.split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(address, IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def _inside(address: Address, networks: tuple[Network, ...]) -> bool:
    return any(address.version == network.version and address in network for network in networks)


def client_address(peer: str, forwarded_for: str | None, trusted_proxies: tuple[Network, ...]) -> Address | None:
    """The client as far as it can be trusted (None: unknown); see the module docstring for the rule."""
    address = parse_address(peer)
    if address is None or not forwarded_for or not _inside(address, trusted_proxies):
        return address
    hops = [hop for hop in forwarded_for.split(",") if hop.strip()]
    for hop in reversed(hops):
        candidate = parse_address(hop)
        if candidate is None or not _inside(candidate, trusted_proxies):
            return candidate
    # Every hop is a trusted proxy: the left-most one is where the request entered our own network.
    return parse_address(hops[0]) if hops else address


class ReceiverGuard:
    """Token paths and source networks of one receiver, built once from the settings."""

    def __init__(self, settings: Settings) -> None:
        receiver = settings.receiver
        token = receiver.callback_token.reveal()
        register_secret(token)
        self.result_path = callback_urls.result_path(settings)
        self.queue_timeout_path = callback_urls.queue_timeout_path(settings)
        self.result_base = callback_urls.base_path(settings.mpesa.result_url)
        self.queue_timeout_base = callback_urls.base_path(settings.mpesa.queue_timeout_url)
        self._allowed = receiver.allowed_networks
        self._trusted = receiver.trusted_proxies
        if hmac.compare_digest(token, DEMO_CALLBACK_TOKEN):
            log.warning(
                "B2C_CALLBACK_TOKEN is the demo default: anyone who reads the source can post results; "
                "set an unguessable token for any real deployment"
            )
        if not self._allowed:
            log.info("B2C_CALLBACK_ALLOWED_NETWORKS is empty: results are accepted from any address")

    def route(self, path: str) -> str | None:
        """``result`` / ``queue_timeout`` for the exact tokened paths, ``token`` for a guess at one of them
        (the base path with a wrong or no token), None for anything else."""
        if hmac.compare_digest(path.encode(), self.result_path.encode()):
            return "result"
        if hmac.compare_digest(path.encode(), self.queue_timeout_path.encode()):
            return "queue_timeout"
        for base in (self.result_base, self.queue_timeout_base):
            if path == base or path.startswith(base.rstrip("/") + "/"):
                return "token"
        return None

    def source_allowed(self, environ: Mapping[str, Any]) -> bool:
        """Whether the request comes from an allowed network (always, when none is configured)."""
        if not self._allowed:
            return True
        client = client_address(str(environ.get("REMOTE_ADDR", "")), environ.get("HTTP_X_FORWARDED_FOR"), self._trusted)
        return client is not None and _inside(client, self._allowed)
