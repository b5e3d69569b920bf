"""The package's one error hierarchy: callers catch ``B2CError`` or a precise subclass, never bare ``Exception``."""

from __future__ import annotations

from enum import StrEnum


class B2CError(Exception):
    """Base of every error this package raises on purpose."""


class ConfigError(B2CError):
    """A setting is missing or invalid; the message names the environment variable."""

    def __init__(self, variable: str, message: str) -> None:
        super().__init__(f"{variable}: {message}")
        self.variable = variable


class ProtocolError(B2CError):
    """A message from or for M-PESA does not have the shape the interface requires."""


class UnsafeXmlError(ProtocolError):
    """Untrusted XML tried to use a DTD, an entity, or exceeded the size limits."""


class InvalidCommand(B2CError):
    """A payout command failed validation; ``field`` names the offending field (or ``"$"`` for the whole)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


class LedgerError(B2CError):
    """The ledger could not record or read a payout."""


class BrokerUnavailable(B2CError):
    """RabbitMQ cannot be reached; the message names the URL (without its password)."""


class GatewayError(B2CError):
    """The M-PESA gateway client could not be set up (bad WSDL, certificate, TLS files)."""


class UnknownPayout(LedgerError):
    """A transition was asked for a payout id the ledger has never recorded."""

    def __init__(self, payout_id: str) -> None:
        super().__init__(f"no payout {payout_id!r} in the ledger")
        self.payout_id = payout_id


class TransitionRefused(LedgerError):
    """The payout's current status does not allow the asked-for change (the status machine says no)."""

    def __init__(self, payout_id: str, current: StrEnum, target: StrEnum) -> None:
        super().__init__(f"payout {payout_id!r} cannot go from {current} to {target}")
        self.payout_id = payout_id
        self.current = current
        self.target = target


class RearmRefused(LedgerError):
    """The payout cannot be handed back to the lookup runner in its status; ``why`` says what to do instead."""

    def __init__(self, payout_id: str, status: str, why: str) -> None:
        super().__init__(f"payout {payout_id!r} is {status}: {why}")
        self.payout_id = payout_id
        self.status = status


class PublishFailure(StrEnum):
    """Why a publish failed: callers decide by it whether the message was refused or the broker was lost."""

    UNROUTABLE = "unroutable"
    NACKED = "nacked"
    REFUSED = "refused"
    CONNECTION = "connection"
    CLOSED = "closed"


class PublishError(B2CError):
    """The broker did not confirm a message: nacked, unroutable, or the connection failed twice."""

    def __init__(self, message: str, failure: PublishFailure) -> None:
        super().__init__(message)
        self.failure = failure


class TopologyError(B2CError):
    """A queue or exchange exists with other settings than ours, or is missing where it must exist."""


class DeadError(B2CError):
    """An operation on the dead letters or the quarantine that cannot be done as asked."""
