"""``mpesa-b2c breaker status|close``: the operator's view of the circuit breaker, and the way to close it.

Closing is how sending resumes after a ``credential`` or ``config`` condition (no automatic probe exists for
those, see :mod:`worker.flow.breaker`), and the quick way after topping up the utility account. It works on the
shared state in the ledger's database, so every worker replica resumes within a fraction of a second. After a
credential condition the first result of one request proves the credential again, for every process that
has the same credential; ``status`` lists when and by which process each credential was proven.
"""

from __future__ import annotations

import argparse
import getpass
import json
import socket
from typing import Any

from worker.flow.breaker import describe, describe_proofs
from worker.ledger import open_ledger
from worker.ledger.flow_state import BreakerReason
from worker.settings import Settings


def cmd_breaker(settings: Settings, args: argparse.Namespace) -> int:
    ledger = open_ledger(settings.ledger)
    store = ledger.flow
    try:
        key = settings.mpesa.shortcode
        if args.action == "close":
            who = f"operator {getpass.getuser()}@{socket.gethostname()}"
            reason = None if args.reason is None else BreakerReason(args.reason)
            closed = store.close_breaker(key, by=who, reason=reason)
            if closed is not None:
                print(f"circuit breaker of shortcode {key} closed: the workers take commands again")
            else:
                why = f" for {args.reason}" if args.reason else ""
                print(f"circuit breaker of shortcode {key} was not open{why}")
        proofs = describe_proofs(store.credential_proofs(key))
        print(json.dumps({"shortcode": key, **describe(store.breaker(key)), "credential_proven": proofs}, indent=2))
    finally:
        ledger.close()
    return 0


def add_breaker_parser(sub: Any) -> None:
    """The ``breaker`` role, for :func:`worker.cli.main.build_parser`."""
    parser = sub.add_parser("breaker", help="show or close the circuit breaker that stops payments to the gateway")
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    p = actions.add_parser("status", help="whether sending is stopped, why, and what resumes it")
    p.set_defaults(func=cmd_breaker)
    p = actions.add_parser("close", help="resume sending (after fixing the credential, or funding the account)")
    p.add_argument(
        "--reason",
        choices=[str(reason) for reason in BreakerReason],
        help="close only if it is open for this reason",
    )
    p.set_defaults(func=cmd_breaker, reason=None)
