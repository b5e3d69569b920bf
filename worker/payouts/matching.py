"""Does a result describe the payout we sent? A result that does not is quarantined, never applied.

Checked against the payout the ledger found for the result:

- ``originator_conversation_id``: the result's OriginatorConversationID must be the payout's, when the
  result carries one (a result found only through its ConversationID but naming another originator id is
  not ours to apply).
- ``conversation_id``: once M-PESA gave the payout a ConversationID, a result naming a different one is a
  mismatch. A payout without one yet (the result overtook the synchronous answer) is not checked, nor one
  sent more than once (each send got its own ConversationID, and only the last one is stored).
- ``amount``: ``TransactionAmount`` (or the older ``Amount``) must equal the payout's amount exactly, and a
  success must carry one: every known dialect of a success result does, and without this a forger who knows
  the OriginatorConversationID (it is derived from the payout_id) could simply leave the amount out.
- ``msisdn``: ``ReceiverPartyPublicName`` (or a status answer's ``CreditPartyName``) starts with the number
  paid, ``2547XXXXXXXX - First Last``. Local (``07…``) and ``+254`` spellings count as that number; masked
  digits (``*``/``x``) match any digit, so a masked number matches when all of its visible digits do.

Apart from a success's amount, a value that is absent, empty, fully masked or written in a shape we cannot
read is "not present" and never a mismatch: failure results carry no parameters at all, and M-PESA's spellings
changed over the years, so refusing on absence would quarantine genuine results. Only a value that is present,
readable and different is a mismatch. A genuine result quarantined by mistake is not lost: the payout stays
``accepted`` until a status query (or an operator's ``mpesa-b2c dead release``) settles it. The names of
the checks are the metric's ``reason`` label (bounded).

A status query's answer (:func:`answer_mismatches`) describes the original payment and is checked the same
way, field by field (PROTOCOL §5: Daraja sends ``Amount`` and ``CreditPartyName``; G2's names are
unconfirmed):

- ``amount``: an answer that says "paid" must carry a readable amount equal to the payout's; without one the
  payout is flagged for review, never completed, since a completion is what a forger would want and every
  known answer (Daraja's, the simulator's) carries ``Amount``. An answer that says "failed" is checked only
  when it carries an amount.
- ``msisdn``: a present, readable ``CreditPartyName`` must show the payout's number; an absent, masked or
  unreadable one is tolerated exactly as on a direct result, because no source confirms that G2 answers
  carry it, and refusing on absence would flag every genuine answer there.
- The OriginatorConversationID is checked by the caller against the answer's target (it names the query's
  own id at the top, the payment's in its parameters), and the ConversationID is not checked: the
  parameter's meaning in a G2 answer is unconfirmed.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

from worker.payouts.models import Payout
from worker.protocol.codes import ResultOutcome
from worker.protocol.result import Result, parse_money

REASON_ORIGINATOR = "originator_conversation_id"
REASON_CONVERSATION = "conversation_id"
REASON_AMOUNT = "amount"
REASON_MSISDN = "msisdn"
REASON_UNKNOWN_PAYOUT = "unknown_payout"
REASONS = (REASON_ORIGINATOR, REASON_CONVERSATION, REASON_AMOUNT, REASON_MSISDN, REASON_UNKNOWN_PAYOUT)

_AMOUNT_KEYS = ("transactionamount", "amount")
_NAME_KEYS = ("receiverpartypublicname", "creditpartyname")
_LEADING_NUMBER = re.compile(r"^\s*(\+?[0-9*xX]{9,15})\s*(?:-|$)")
_MASK = frozenset("*xX")


@dataclass(frozen=True)
class Mismatch:
    """One check that failed; ``detail`` says what differed without quoting a phone number."""

    reason: str
    detail: str


def _parameter(parameters: Mapping[str, str], keys: tuple[str, ...]) -> str | None:
    normalised = {re.sub(r"[\s_]", "", key).lower(): value for key, value in parameters.items()}
    for key in keys:
        value = normalised.get(key)
        if value is not None and value.strip():
            return value
    return None


def _international(number: str) -> str | None:
    """``2547…``/``+2547…``/``07…`` (digits possibly masked) as 12 characters ``254…``; None if another shape."""
    digits = number.lstrip("+")
    if len(digits) == 10 and digits[0] == "0":
        digits = "254" + digits[1:]
    return digits if len(digits) == 12 else None


def msisdn_agrees(public_name: str, msisdn: str) -> bool | None:
    """True/False when the name's leading number can be compared with ``msisdn``; None when not present."""
    match = _LEADING_NUMBER.match(public_name)
    if match is None:
        return None
    shown = _international(match.group(1))
    if shown is None or all(char in _MASK for char in shown[3:]):
        return None
    return all(s in _MASK or s == m for s, m in zip(shown, msisdn, strict=True))


def mismatches(payout: Payout, result: Result) -> list[Mismatch]:
    """Every check the result fails against ``payout`` (empty: it matches as far as it says anything)."""
    found: list[Mismatch] = []
    if result.originator_conversation_id and result.originator_conversation_id != payout.originator_conversation_id:
        found.append(Mismatch(REASON_ORIGINATOR, "OriginatorConversationID differs from the payout's"))
    # After a resend the payout holds the resend's ConversationID; the first send's genuine result names
    # its own, so the check only holds for a payout sent once.
    known = payout.conversation_id if payout.send_attempts <= 1 else None
    if known and result.conversation_id and result.conversation_id != known:
        found.append(
            Mismatch(
                REASON_CONVERSATION,
                f"ConversationID {result.conversation_id!r}, payout has {payout.conversation_id!r}",
            )
        )
    paid = result.outcome is ResultOutcome.COMPLETED
    found.extend(
        _money_mismatches(payout, result, paid=paid, missing="a success result without a readable TransactionAmount")
    )
    return found


def answer_mismatches(payout: Payout, original: Result, *, paid: bool) -> list[Mismatch]:
    """Every check a status answer's ``original`` payment fails against ``payout``; ``paid``: it says
    completed, so it must carry the amount."""
    return _money_mismatches(
        payout, original, paid=paid, missing="a status answer saying paid without a readable Amount"
    )


def _money_mismatches(payout: Payout, result: Result, *, paid: bool, missing: str) -> list[Mismatch]:
    found: list[Mismatch] = []
    amount = parse_money(_parameter(result.parameters, _AMOUNT_KEYS))
    if amount is not None and amount != payout.command.amount:
        found.append(Mismatch(REASON_AMOUNT, f"amount {amount}, payout is for {payout.command.amount}"))
    elif amount is None and paid:
        found.append(Mismatch(REASON_AMOUNT, missing))
    name = _parameter(result.parameters, _NAME_KEYS)
    if name is not None and msisdn_agrees(name, payout.command.msisdn) is False:
        found.append(Mismatch(REASON_MSISDN, "the recipient's number is not the payout's"))
    return found
