"""What every operator command prints the same way: JSON or a table, shortened texts, a ledger opened and closed."""

from __future__ import annotations

import argparse
import contextlib
import json
from collections.abc import Callable, Iterator
from typing import Any

from worker.ledger import Ledger, open_ledger
from worker.settings import Settings

MESSAGE_WIDTH = 60


def emit(args: argparse.Namespace, value: Any, human: Callable[[], None]) -> None:
    if args.json:
        print(json.dumps(value, indent=2, default=str))
    else:
        human()


def table(rows: list[dict[str, Any]], columns: list[str]) -> None:
    if not rows:
        print("(none)")
        return
    cells = [[("-" if row.get(c) is None else str(row[c])) for c in columns] for row in rows]
    widths = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(columns)]
    print("  ".join(c.upper().ljust(w) for c, w in zip(columns, widths, strict=True)).rstrip())
    for r in cells:
        print("  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip())


def short(text: str | None) -> str | None:
    if text is None or len(text) <= MESSAGE_WIDTH:
        return text
    return text[: MESSAGE_WIDTH - 1] + "…"


@contextlib.contextmanager
def opened_ledger(settings: Settings) -> Iterator[Ledger]:
    ledger = open_ledger(settings.ledger)
    try:
        yield ledger
    finally:
        ledger.close()
