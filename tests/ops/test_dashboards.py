"""The Grafana dashboards: one copy (the chart's), every query parses and reads only metrics the code exports.

Grafana's variables are replaced by plausible values before promtool parses a query; an unknown variable
fails the test, so a dashboard cannot depend on something it does not define.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from .conftest import (
    DASHBOARDS,
    REPO,
    dashboard_queries,
    exported_metric_names,
    load_json,
    promql_metric_names,
    promtool_check_exprs,
    walk_panels,
)

VARIABLES = {"__rate_interval": "5m", "__interval": "1m", "__range": "1h", "namespace": ".*"}
FILES = sorted(DASHBOARDS.glob("*.json"))

# What the issue asks each dashboard to show, as the series its queries must read.
OVERVIEW_NEEDS = {
    "mpesa_b2c_payout_transitions_total",  # payouts per minute by outcome, success rate
    "mpesa_b2c_gateway_call_seconds_bucket",  # gateway latency percentiles
    "mpesa_b2c_command_to_final_seconds_bucket",  # command-to-final time
    "mpesa_b2c_consumer_in_flight",
    "mpesa_b2c_payouts",  # unknowns
    "mpesa_b2c_unknown_oldest_age_seconds",  # and their age
    "mpesa_b2c_command_queue_depth",
    "mpesa_b2c_account_balance_kes",
    "mpesa_b2c_paid_kes_total",
    "mpesa_b2c_failed_kes_total",
    "mpesa_b2c_unknown_duration_seconds_bucket",  # time spent unknown
    "mpesa_b2c_oldest_nonfinal_age_seconds",  # how long each non-final status has held a payout
    "mpesa_b2c_payouts_flagged_for_review",  # payouts waiting for a human
}
GATEWAY_NEEDS = {
    "mpesa_b2c_gateway_calls_total",
    "mpesa_b2c_gateway_call_seconds_bucket",
    "mpesa_b2c_gateway_retries_total",
    "mpesa_b2c_results_received_total",
    "mpesa_b2c_results_unmatched_total",
    "mpesa_b2c_results_invalid_total",
    "mpesa_b2c_callback_lag_seconds_bucket",
}


def queries(dashboard: dict[str, Any]) -> dict[str, str]:
    return dashboard_queries(dashboard, VARIABLES)


@pytest.fixture(scope="module")
def dashboards() -> dict[str, dict[str, Any]]:
    assert len(FILES) >= 2
    return {path.name: load_json(path) for path in FILES}


def test_every_query_parses(promtool: str, tmp_path: Path, dashboards: dict[str, dict[str, Any]]) -> None:
    everything = {key: expr for d in dashboards.values() for key, expr in queries(d).items()}
    assert len(everything) > 20
    bad = promtool_check_exprs(promtool, everything, tmp_path)
    assert not bad, "\n".join(f"{key}: {everything.get(key, '')}\n{err}" for key, err in bad.items())


def test_promtool_check_reports_a_broken_query(promtool: str, tmp_path: Path) -> None:
    bad = promtool_check_exprs(promtool, {"good": "sum(up)", "broken": "sum(rate(up[5m])"}, tmp_path)
    assert set(bad) == {"broken"}


def test_queries_read_only_exported_metrics(dashboards: dict[str, dict[str, Any]]) -> None:
    exported = exported_metric_names() | {"up"}
    for dashboard in dashboards.values():
        for key, expr in queries(dashboard).items():
            names = promql_metric_names(expr)
            assert names, f"{key}: reads no metric"
            assert names <= exported, f"{key}: {names - exported} is not exported by worker.metrics"


def test_dashboards_cover_what_operators_need(dashboards: dict[str, dict[str, Any]]) -> None:
    def reads(uid: str) -> set[str]:
        dashboard = next(d for d in dashboards.values() if d["uid"] == uid)
        return set().union(*(promql_metric_names(e) for e in queries(dashboard).values()))

    assert reads("mpesa-b2c-overview") >= OVERVIEW_NEEDS
    assert reads("mpesa-b2c-gateway") >= GATEWAY_NEEDS
    overview = next(d for d in dashboards.values() if d["uid"] == "mpesa-b2c-overview")
    exprs = [t["expr"] for p in walk_panels(overview["panels"]) for t in p.get("targets", [])]
    assert any("histogram_quantile(0.99" in e and "gateway_call_seconds" in e for e in exprs)
    assert any("sum by (status)" in e and "payout_transitions_total" in e and "* 60" in e for e in exprs)


def test_dashboards_are_portable_and_well_formed(dashboards: dict[str, dict[str, Any]]) -> None:
    uids = [d["uid"] for d in dashboards.values()]
    assert len(set(uids)) == len(uids)
    for name, dashboard in dashboards.items():
        assert dashboard.get("id") is None, f"{name}: a fixed id clashes on import"
        assert "mpesa-b2c" in dashboard["tags"]
        variables = {v["name"]: v for v in dashboard["templating"]["list"]}
        assert variables["datasource"]["type"] == "datasource"
        assert variables["datasource"]["query"] == "prometheus"
        ids = [p["id"] for p in walk_panels(dashboard["panels"])]
        assert len(set(ids)) == len(ids), f"{name}: duplicate panel ids"
        for panel in walk_panels(dashboard["panels"]):
            assert panel.get("title"), f"{name}: untitled panel"
            assert {"x", "y", "w", "h"} <= set(panel["gridPos"])
            assert panel["gridPos"]["x"] + panel["gridPos"]["w"] <= 24
            if panel["type"] == "row":
                continue
            assert panel["targets"], f"{name} / {panel['title']}: no query"
            assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
            for target in panel["targets"]:
                assert target["datasource"]["uid"] == "${datasource}"


def test_single_copy_of_each_dashboard(dashboards: dict[str, dict[str, Any]]) -> None:
    """The chart's dashboards/ is the only copy; compose and the chart both read it."""
    uids = {d["uid"] for d in dashboards.values()}
    skip = {".git", ".venv", "node_modules", ".mypy_cache", ".ruff_cache", ".pytest_cache"}
    for path in REPO.rglob("*.json"):
        if skip & set(path.relative_to(REPO).parts) or path.parent == DASHBOARDS:
            continue
        text = path.read_text(errors="replace")
        assert not any(f'"uid": "{uid}"' in text for uid in uids), f"second copy of a dashboard in {path}"
