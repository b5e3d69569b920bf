"""Every panel of every dashboard returns data from a real Prometheus scraping the real processes.

The simulator, the result receiver and the worker run as separate processes on loopback (see live_stack.py)
against the tests' RabbitMQ and a fresh PostgreSQL ledger; Debian's ``prometheus`` scrapes them every second
with the project's job names and loads the shipped alert rules. Two waves of payouts exercise every outcome
(the first creates the labelled series, the second makes their rates move), then each panel query and each
template variable query is evaluated through the HTTP API and must return at least one number (not NaN).
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.services import require_program
from worker.cli import metrics_doc

from .conftest import DASHBOARDS, dashboard_queries, load_json
from .live_stack import (
    JOBS,
    SIMULATOR_LIMITS,
    LiveStack,
    Prometheus,
    every_outcome,
    wait_final,
    wait_until,
)

# The whole run lasts well under the rate window, so every rate sees both waves.
VARIABLES = {"__rate_interval": "3m", "__interval": "15s", "__range": "1h", "namespace": ".*"}
QUERY_PATIENCE = 30.0  # the ledger gauges refresh every 5 s; give a few rounds


@pytest.fixture(scope="module")
def prometheus_binary() -> str:
    return require_program("prometheus", "apt-get install prometheus")


@pytest.fixture
def live(
    tmp_path: Path,
    prometheus_binary: str,
    amqp_names: dict[str, str],
    postgres_url: str,
) -> Iterator[tuple[LiveStack, Prometheus]]:
    env = {
        **amqp_names,
        "B2C_DATABASE_URL": postgres_url,
        "B2C_BREAKER_PROBE_SECONDS": "1",  # the no-funds payout opens the breaker; probe again soon
    }
    stack = LiveStack(tmp_path / "stack", env, role_env={"simulator": SIMULATOR_LIMITS})
    with stack, Prometheus(tmp_path / "prometheus", stack.targets(), binary=prometheus_binary) as prometheus:
        yield stack, prometheus


def _has_number(result: list[dict[str, Any]]) -> bool:
    return any(not math.isnan(float(sample["value"][1])) for sample in result)


def _failures(prometheus: Prometheus, queries: dict[str, str]) -> dict[str, str]:
    failures = {}
    for key, expr in queries.items():
        try:
            result = prometheus.query(expr)
        except RuntimeError as exc:
            failures[key] = f"{expr}\n    error: {exc}"
            continue
        if not _has_number(result):
            failures[key] = f"{expr}\n    returned {'only NaN' if result else 'nothing'}"
    return failures


def _wave(stack: LiveStack, run: str, wave: int, timeout: float = 60.0) -> None:
    bodies, final_ids = every_outcome(f"e2e-{run}-{wave}")
    stack.publish(bodies)
    ledger = stack.open_ledger()
    try:
        wait_final(ledger, final_ids, timeout)
    except TimeoutError as exc:
        pytest.fail(f"{exc}\n{stack.logs()}")
    finally:
        ledger.close()


def test_every_dashboard_panel_returns_data(live: tuple[LiveStack, Prometheus]) -> None:
    stack, prometheus = live
    started = time.monotonic()
    wait_until(
        lambda: prometheus.targets_up() == dict.fromkeys(JOBS.values(), "up"),
        20,
        "every target to be scraped",
    )
    run = str(int(time.time()))
    _wave(stack, run, 1)
    print(f"wave 1 final after {time.monotonic() - started:.1f} s")
    time.sleep(2.5)  # a couple of scrapes between the waves, so the second one moves every rate
    _wave(stack, run, 2)
    print(f"wave 2 final after {time.monotonic() - started:.1f} s")

    dashboards = {path.name: load_json(path) for path in sorted(DASHBOARDS.glob("*.json"))}
    queries = {key: expr for d in dashboards.values() for key, expr in dashboard_queries(d, VARIABLES).items()}
    assert len(queries) > 40
    failures: dict[str, str] = {}

    def all_answer() -> bool:
        failures.clear()
        failures.update(_failures(prometheus, queries))
        return not failures

    try:
        wait_until(all_answer, QUERY_PATIENCE, "every panel query to return data", interval=1.0)
    except TimeoutError:
        pytest.fail(
            f"{len(failures)} of {len(queries)} dashboard queries return no data:\n"
            + "\n".join(f"  {key}: {why}" for key, why in sorted(failures.items()))
            + f"\n{stack.logs()}"
        )
    print(f"{len(queries)} dashboard queries returned data after {time.monotonic() - started:.1f} s")
    # The check itself tells a panel without data from one with data.
    controls = {"missing": "sum(rate(mpesa_b2c_no_such_metric_total[3m]))", "nan": "vector(0) / 0", "ok": "vector(1)"}
    assert set(_failures(prometheus, controls)) == {"missing", "nan"}

    _what_each_job_sets_is_documented_for_it(prometheus)
    _alert_rules_evaluate(prometheus)


def _series_names(doc: metrics_doc.MetricDoc) -> list[str]:
    if doc.kind == "histogram":
        return [doc.name + suffix for suffix in ("_bucket", "_sum", "_count")]
    return [doc.name]


def _what_each_job_sets_is_documented_for_it(prometheus: Prometheus) -> None:
    """Every metric a component's job shows with a non-zero value is in that component's README table.

    (Both processes import every definition, so a label-less metric also appears, at 0, where nothing sets it;
    ``_created`` timestamps are left out for the same reason.)"""
    jobs = {"worker": JOBS["worker"], "receiver": JOBS["callbacks"], "simulator": JOBS["simulator"]}
    tables = metrics_doc.by_component()
    undocumented = []
    for component, job in jobs.items():
        documented = {series for doc in tables[component] for series in _series_names(doc)}
        selector = f'{{__name__=~"mpesa_(b2c|sim)_.+",__name__!~".+_created",job="{job}"}} != 0'
        exported = {sample["metric"]["__name__"] for sample in prometheus.query(selector)}
        assert exported, f"{job} exports no metric with a value"
        undocumented += [f"{component}: {name}" for name in sorted(exported - documented)]
    assert not undocumented, "set by a component but not in its table (worker/cli/metrics_doc.py SET_BY): " + ", ".join(
        undocumented
    )


def _alert_rules_evaluate(prometheus: Prometheus) -> None:
    """The shipped rules load into this Prometheus and evaluate without errors against the real series; the
    dead-letter alert (no ``for``) fires on this run's invalid commands, the component alerts stay quiet."""

    def evaluated() -> list[dict[str, Any]]:
        rules = prometheus.rules()
        return rules if rules and all(not r["lastEvaluation"].startswith("0001") for r in rules) else []

    rules = wait_until(evaluated, 15, "every alert rule to be evaluated once")
    broken = {r["name"]: r.get("lastError") for r in rules if r["health"] != "ok"}
    assert not broken, broken
    state = {r["name"]: r.get("state") for r in rules if r["type"] == "alerting"}
    assert len(state) >= 8, state
    assert state["MpesaB2CDeadLettersGrowing"] == "firing", state
    assert state["MpesaB2CComponentDown"] == state["MpesaB2CComponentMissing"] == "inactive", state
