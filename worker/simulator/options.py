"""Knobs of one simulator run; defaults suit a local demo, tests shrink the delays."""

from __future__ import annotations

from dataclasses import dataclass

from worker.simulator.scenarios import Scenario


@dataclass(frozen=True)
class SimulatorOptions:
    """Timing and fault settings; ``slow_seconds`` None means the configured read timeout plus five seconds,
    ``query_result_delay`` None means a TransactionStatusQuery's result comes after ``result_delay`` too.

    ``fault`` applies to every payment request (or the next ``fault_count`` of them) whose recipient is not
    a magic number, as if set through ``POST /simulator/faults`` at start.
    """

    latency: float = 0.0
    result_delay: float = 1.0
    slow_seconds: float | None = None
    throttle_tries: int = 2
    queue_timeout_delay: float | None = None
    query_result_delay: float | None = None
    max_age_seconds: float = 600.0
    callback_attempts: int = 4
    callback_backoff: float = 1.0
    callback_timeout: float = 10.0
    duplicate_gap: float = 0.2
    fault: Scenario | None = None
    fault_count: int | None = None
    threads: int = 8
    callback_threads: int = 4
    max_body_bytes: int = 256 * 1024
    before_response_wait: float = 15.0

    def __post_init__(self) -> None:
        for name in ("latency", "result_delay", "max_age_seconds", "callback_backoff", "duplicate_gap"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must not be negative")
        if self.slow_seconds is not None and self.slow_seconds < 0:
            raise ValueError("slow_seconds must not be negative")
        if self.queue_timeout_delay is not None and self.queue_timeout_delay < 0:
            raise ValueError("queue_timeout_delay must not be negative")
        if self.query_result_delay is not None and self.query_result_delay < 0:
            raise ValueError("query_result_delay must not be negative")
        if self.callback_attempts < 1 or self.threads < 1 or self.callback_threads < 1:
            raise ValueError("callback_attempts, threads and callback_threads must be at least 1")
        if self.throttle_tries < 0:
            raise ValueError("throttle_tries must not be negative")
        if self.fault_count is not None and self.fault_count < 1:
            raise ValueError("fault_count must be at least 1")
        if self.callback_timeout <= 0 or self.max_body_bytes < 1024:
            raise ValueError("callback_timeout must be positive and max_body_bytes at least 1024")
