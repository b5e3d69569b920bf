"""``mpesa-b2c lookups flagged|show|rearm``: the payouts automatic lookups gave up on, and handing one back.

A payout is flagged for review when its lookups ran out (``B2C_LOOKUP_MAX_ATTEMPTS``, ``B2C_LOOKUP_MAX_SECONDS``)
or a status answer contradicted what the ledger holds. It keeps its status (an ``unknown`` one stays
``unknown``, never ``failed``) and counts in ``mpesa_b2c_payouts_flagged_for_review`` until it is final.
``show`` is what to check with M-PESA; ``rearm`` gives the payout back to the lookup runner with a fresh budget,
a status query first. Phone numbers are masked, also inside M-PESA's free text.
"""

from __future__ import annotations

import argparse
from datetime import datetime
from typing import Any

from worker.cli.output import emit, opened_ledger, short, table
from worker.errors import UnknownPayout
from worker.ledger import LookupState, StatusQuery
from worker.payouts.models import Payout
from worker.redact import mask_msisdn, mask_msisdns_in_text
from worker.settings import Settings

DEFAULT_LIMIT = 100


def _when(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat()


def _text(value: str | None) -> str | None:
    return None if value is None else mask_msisdns_in_text(value)


def lookup_summary(state: LookupState) -> dict[str, Any]:
    return {
        "payout_id": state.payout_id,
        "status": state.status,
        "flagged_at": _when(state.flagged_at),
        "flag_reason": state.flag_reason,
        "lookup_attempts": state.lookup_attempts,
        "lookup_started_at": _when(state.lookup_started_at),
        "next_lookup_at": _when(state.next_lookup_at),
        "lookup_trigger": state.lookup_trigger,
        "resend_due": state.resend_due,
    }


def payout_summary(payout: Payout) -> dict[str, Any]:
    """What to look the payout up by in the M-PESA portal; the recipient's name (in the result) is left out."""
    return {
        "payout_id": payout.payout_id,
        "status": str(payout.status),
        "reason": payout.reason,
        "amount": str(payout.command.amount),
        "msisdn": mask_msisdn(payout.command.msisdn),
        "originator_conversation_id": payout.originator_conversation_id,
        "conversation_id": payout.conversation_id,
        "send_attempts": payout.send_attempts,
        "response_code": payout.response_code,
        "response_desc": _text(payout.response_desc),
        "result_code": payout.result_code,
        "result_desc": _text(payout.result_desc),
        "receipt": payout.receipt,
        "created_at": _when(payout.created_at),
        "updated_at": _when(payout.updated_at),
    }


def query_summary(query: StatusQuery) -> dict[str, Any]:
    return {
        "attempt": query.attempt,
        "query_originator_conversation_id": query.query_originator_conversation_id,
        "trigger": query.trigger,
        "sent_at": _when(query.sent_at),
        "response_outcome": query.response_outcome,
        "response_code": query.response_code,
        "response_desc": _text(query.response_desc),
        "answered_at": _when(query.answered_at),
        "answer_code": query.answer_code,
        "answer_desc": _text(query.answer_desc),
        "transaction_status": query.transaction_status,
        "verdict": query.verdict,
        "note": _text(query.note),
    }


def cmd_flagged(settings: Settings, args: argparse.Namespace) -> int:
    with opened_ledger(settings) as ledger:
        rows = [lookup_summary(state) for state in ledger.lookups.list_flagged(limit=args.limit)]
        total = ledger.lookups.count_flagged()

    def human() -> None:
        table(rows, ["payout_id", "status", "flagged_at", "flag_reason", "lookup_attempts", "lookup_started_at"])
        if total > len(rows):
            print(f"{len(rows)} of {total} flagged payout(s) shown (--limit)")

    emit(args, rows, human)
    return 0


def cmd_show(settings: Settings, args: argparse.Namespace) -> int:
    with opened_ledger(settings) as ledger:
        payout = ledger.payouts.get(args.payout_id)
        state = ledger.lookups.lookup_state(args.payout_id)
        queries = ledger.lookups.status_queries(args.payout_id)
    if payout is None or state is None:
        raise UnknownPayout(args.payout_id)
    value: dict[str, Any] = {
        "payout": payout_summary(payout),
        "lookup": {**lookup_summary(state), "flagged_for_review": state.flagged_for_review},
        "status_queries": [query_summary(query) for query in queries],
    }

    def human() -> None:
        for section in ("payout", "lookup"):
            print(f"{section}:")
            for key, item in value[section].items():
                print(f"  {key + ':':28} {'-' if item is None else item}")
        print("status queries:")
        table(
            [{**row, "answer_desc": short(row["answer_desc"])} for row in value["status_queries"]],
            ["attempt", "sent_at", "trigger", "response_outcome", "answer_code", "verdict", "answer_desc"],
        )

    emit(args, value, human)
    return 0


def cmd_rearm(settings: Settings, args: argparse.Namespace) -> int:
    with opened_ledger(settings) as ledger:
        before = ledger.lookups.lookup_state(args.payout_id)
        state = ledger.lookups.rearm_lookup(args.payout_id)
    value = {"rearmed": lookup_summary(state), "was": None if before is None else lookup_summary(before)}

    def human() -> None:
        if before is not None and before.flagged_for_review:
            cleared = f"its review flag ({before.flag_reason}) cleared"
        else:
            cleared = "it was not flagged"
        print(
            f"payout {state.payout_id} ({state.status}) handed back to the lookup runner: {cleared}, "
            f"its {before.lookup_attempts if before else 0} lookup(s) forgotten (a fresh budget of "
            f"{settings.lookup.max_attempts}), a status query on the next pass of a running worker"
        )
        if before is not None and before.resend_due:
            print("the resend that was due is cleared: the status query decides whether it is still needed")

    emit(args, value, human)
    return 0


def cmd_clear(settings: Settings, args: argparse.Namespace) -> int:
    with opened_ledger(settings) as ledger:
        before = ledger.lookups.lookup_state(args.payout_id)
        state = ledger.lookups.clear_flag(args.payout_id)
    value = {"cleared": lookup_summary(state), "was": None if before is None else lookup_summary(before)}

    def human() -> None:
        reason = before.flag_reason if before is not None else None
        print(f"payout {state.payout_id} ({state.status}): its review flag ({reason}) cleared")

    emit(args, value, human)
    return 0


def add_lookups_parser(sub: Any) -> None:
    """The ``lookups`` role and its actions, for :func:`worker.cli.main.build_parser`."""
    parser = sub.add_parser(
        "lookups",
        help="payouts flagged for review: list, show and hand back to the lookup runner",
        description="Payouts whose automatic lookups ran out or were contradicted. They keep their status "
        "(never failed by a timer) until M-PESA's answer settles them; check them with M-PESA before acting.",
    )
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")

    def action(name: str, help_text: str) -> argparse.ArgumentParser:
        p: argparse.ArgumentParser = actions.add_parser(name, help=help_text, description=help_text)
        p.add_argument("--json", action="store_true", help="machine-readable output")
        return p

    p = action("flagged", "payouts flagged for review that are not final, longest flagged first")
    p.add_argument("--limit", type=int, default=DEFAULT_LIMIT, help=f"show at most this many (default {DEFAULT_LIMIT})")
    p.set_defaults(func=cmd_flagged)

    p = action("show", "one payout: its status, lookup state and every status query made for it")
    p.add_argument("payout_id", metavar="PAYOUT_ID", help="the payer's payout_id")
    p.set_defaults(func=cmd_show)

    p = action(
        "rearm",
        "hand an unknown or accepted payout back to the lookup runner: unflag it, reset its lookup budget and "
        "look it up again from scratch (a status query first; a resend only ever under its own "
        "OriginatorConversationID)",
    )
    p.add_argument("payout_id", metavar="PAYOUT_ID", help="the payer's payout_id")
    p.set_defaults(func=cmd_rearm)

    p = action(
        "clear",
        "unflag a final payout a human has reviewed (e.g. a success result that came after its failure, "
        "checked with M-PESA); a payout that is not final is refused: rearm it instead",
    )
    p.add_argument("payout_id", metavar="PAYOUT_ID", help="the payer's payout_id")
    p.set_defaults(func=cmd_clear)
