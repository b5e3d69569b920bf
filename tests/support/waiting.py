"""The one way tests wait for something that happens on another thread or in another process."""

from __future__ import annotations

import time
from collections.abc import Callable


def wait_until(
    predicate: Callable[[], object],
    timeout: float = 10.0,
    what: str = "condition",
    detail: Callable[[], object] | None = None,
    interval: float = 0.05,
) -> None:
    """Poll ``predicate`` until it is truthy; fail naming ``what`` (and ``detail()``, the state) after ``timeout``.

    An assertion error, not a timeout, so a test that waits in vain fails like one that checks in vain.
    """
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return
        if time.monotonic() > deadline:
            raise AssertionError(
                f"timed out after {timeout:.0f}s waiting for {what}" + (f": {detail()}" if detail else "")
            )
        time.sleep(interval)
