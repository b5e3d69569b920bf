"""Asynchronous POSTs to the payer's URLs: results and queue-timeout notices, with retries and backoff.

A timer thread holds the schedule and a small pool does the POSTs, so neither a result delay nor a slow
receiver ever holds a request thread (or a pool thread waiting for its turn).
"""

from __future__ import annotations

import heapq
import itertools
import logging
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from time import monotonic
from urllib.parse import urlsplit

import requests

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CallbackJob:
    """One message to deliver; ``label`` tells copies apart (``result``, ``result#2``, ``queue_timeout``)."""

    url: str
    body: bytes
    label: str
    done: threading.Event = field(default_factory=threading.Event, compare=False)


@dataclass(frozen=True)
class Attempt:
    at: datetime
    url: str
    label: str
    attempt: int
    status: int | None
    error: str | None

    @property
    def delivered(self) -> bool:
        return self.status is not None and 200 <= self.status < 300

    def to_json(self) -> dict[str, object]:
        return {
            "at": self.at.isoformat(),
            "url": self.url,
            "kind": self.label,
            "attempt": self.attempt,
            "status": self.status,
            "error": self.error,
        }


Recorder = Callable[[CallbackJob, Attempt, bool], None]


def safe_url(url: str) -> str:
    """Scheme, host and path only: an unguessable callback URL's query is as good as a password."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.hostname}:{parts.port or ''}{parts.path}"


class CallbackDeliverer:
    def __init__(self, *, threads: int, attempts: int, backoff: float, timeout: float, record: Recorder) -> None:
        self._attempts = attempts
        self._backoff = backoff
        self._timeout = timeout
        self._record = record
        self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="sim-callback")
        self._heap: list[tuple[float, int, CallbackJob, int]] = []
        self._order = itertools.count()
        self._cond = threading.Condition()
        self._closed = False
        self._timer = threading.Thread(target=self._run, name="sim-callback-timer", daemon=True)
        self._timer.start()

    def schedule(self, job: CallbackJob, delay: float, attempt: int = 1) -> CallbackJob:
        with self._cond:
            if self._closed:
                return job
            heapq.heappush(self._heap, (monotonic() + delay, next(self._order), job, attempt))
            self._cond.notify()
        return job

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._closed and (not self._heap or self._heap[0][0] > monotonic()):
                    wait = self._heap[0][0] - monotonic() if self._heap else None
                    self._cond.wait(wait)
                if self._closed:
                    return
                _, _, job, attempt = heapq.heappop(self._heap)
            try:
                self._pool.submit(self._deliver, job, attempt)
            except RuntimeError:
                return

    def _deliver(self, job: CallbackJob, attempt: int) -> None:
        status: int | None = None
        error: str | None = None
        try:
            response = requests.post(
                job.url,
                data=job.body,
                headers={
                    "Content-Type": "text/xml; charset=utf-8",
                    "SOAPAction": '""',
                    "Connection": "close",
                },
                timeout=self._timeout,
                allow_redirects=False,
            )
            status = response.status_code
        except requests.RequestException as exc:
            error = type(exc).__name__
        outcome = Attempt(datetime.now(UTC), job.url, job.label, attempt, status, error)
        final = outcome.delivered or attempt >= self._attempts
        if not outcome.delivered:
            log.warning(
                "callback %s to %s failed (attempt %d/%d): %s",
                job.label,
                safe_url(job.url),
                attempt,
                self._attempts,
                error or f"HTTP {status}",
            )
        self._record(job, outcome, final)
        if final:
            job.done.set()
        else:
            self.schedule(job, self._backoff * 2 ** (attempt - 1), attempt + 1)

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._heap.clear()
            self._cond.notify_all()
        self._timer.join(timeout=2)
        self._pool.shutdown(wait=False, cancel_futures=True)
