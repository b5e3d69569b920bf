"""Periodic jobs of a long-running process (relay flushes, gauges, lookups), on daemon threads."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from worker.errors import B2CError

log = logging.getLogger(__name__)


class Background:
    """Periodic jobs on daemon threads that end together when ``stop`` is set."""

    def __init__(self) -> None:
        self.stop = threading.Event()
        self._threads: list[threading.Thread] = []

    def every(self, seconds: float, job: Callable[[], None], name: str) -> None:
        def loop() -> None:
            while not self.stop.wait(seconds):
                try:
                    job()
                except B2CError as exc:
                    log.warning("%s: %s", name, exc)
                except Exception:  # a background job must outlive a bug or a broker hiccup; it runs again
                    log.exception("%s failed; trying again in %.0f s", name, seconds)

        thread = threading.Thread(target=loop, name=name, daemon=True)
        thread.start()
        self._threads.append(thread)

    def join(self, timeout: float = 5.0) -> None:
        self.stop.set()
        for thread in self._threads:
            thread.join(timeout)
