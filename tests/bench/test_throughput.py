"""The throughput benchmark as a test: a ratio against a serial baseline measured in the same run."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.throughput import run_benchmark


@pytest.mark.slow
def test_default_worker_is_at_least_eight_times_one_at_a_time(rabbitmq_url: str, tmp_path: Path) -> None:
    result = run_benchmark(payouts=200, baseline_payouts=40, latency=0.3, amqp_url=rabbitmq_url, workdir=tmp_path)
    print(result.report())
    assert result.ratio >= 8, result.report()
