"""Payout commands for tests: as the model (``make_command``) and as the JSON bodies a payer publishes.

The one place tests build commands, so what a valid command looks like is decided once.
"""

from __future__ import annotations

import uuid
from decimal import Decimal
from typing import Any

from worker.payouts.models import CommandId, PayoutCommand


def make_command(payout_id: str | None = None, amount: str | Decimal = "1500.00", **overrides: Any) -> PayoutCommand:
    fields: dict[str, Any] = {
        "payout_id": payout_id or f"p-{uuid.uuid4().hex[:12]}",
        "msisdn": "254712345678",
        "amount": Decimal(amount),
        "command": CommandId.BUSINESS_PAYMENT,
        "remarks": "Payout",
        "occasion": None,
        "metadata": {"order": 42},
    }
    fields.update(overrides)
    return PayoutCommand(**fields)


def command_body(payout_id: str, msisdn: str, amount: str, **fields: Any) -> dict[str, Any]:
    """A command body as a payer publishes it; ``fields`` adds (or overrides) the optional fields."""
    return {"payout_id": payout_id, "msisdn": msisdn, "amount": amount, **fields}


def command(
    run: str, n: int, msisdn: str | None = None, amount: str | None = None, *, digits: int = 4, **fields: Any
) -> dict[str, Any]:
    """The ``n``-th command body of a run: distinct id (``run-`` and ``n`` in ``digits`` digits), number and
    amount."""
    return command_body(f"{run}-{n:0{digits}d}", msisdn or f"0712{n:06d}", amount or f"{100 + n}.00", **fields)


def commands(run: str, count: int) -> list[dict[str, Any]]:
    """``count`` command bodies of a run, each carrying its number as metadata."""
    return [command(run, n, metadata={"n": n}) for n in range(count)]
