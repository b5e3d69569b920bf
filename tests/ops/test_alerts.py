"""The Prometheus rules: valid, unit-tested per alert (fires on the bad series, quiet on the good one), and
written only against metrics the code exports.

promtool comes from Debian's `prometheus` package; without it these tests fail in CI and skip elsewhere.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from .conftest import JOBS, RULES, YAMLLINT_HAND, exported_metric_names, promql_metric_names, run, yamllint

UNIT_TESTS = Path(__file__).with_name("alerts_test.yml")

# What each required alert must watch (the list), by alert name.
REQUIRED = {
    "MpesaB2CUnknownPayoutsStale": {"mpesa_b2c_unknown_oldest_age_seconds"},
    "MpesaB2CResultsStopped": {"mpesa_b2c_results_received_total", "mpesa_b2c_payout_transitions_total"},
    "MpesaB2CFailureRateHigh": {"mpesa_b2c_payout_transitions_total"},
    "MpesaB2CUtilityBalanceLow": {"mpesa_b2c_account_balance_kes"},
    "MpesaB2CDeadLettersGrowing": {"mpesa_b2c_dead_letters_total"},
    "MpesaB2COutboxBacklog": {"mpesa_b2c_outbox_backlog"},
    "MpesaB2CComponentDown": {"up"},
    "MpesaB2CResultsQuarantined": {"mpesa_b2c_results_quarantined_total"},
    "MpesaB2CResultConflict": {"mpesa_b2c_results_conflicting_total"},
    "MpesaB2CPayoutStuck": {"mpesa_b2c_oldest_nonfinal_age_seconds"},
    "MpesaB2CPayoutsFlaggedForReview": {"mpesa_b2c_payouts_flagged_for_review"},
}


def load_rules() -> list[dict[str, Any]]:
    return [rule for group in yaml.safe_load(RULES.read_text())["groups"] for rule in group["rules"]]


def alerts() -> dict[str, dict[str, Any]]:
    return {rule["alert"]: rule for rule in load_rules() if "alert" in rule}


def test_promtool_accepts_the_rules(promtool: str) -> None:
    result = run([promtool, "check", "rules", str(RULES)])
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_unit_tests_pass(promtool: str) -> None:
    result = run([promtool, "test", "rules", UNIT_TESTS.name], cwd=UNIT_TESTS.parent)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_every_required_alert_exists_and_watches_its_metric() -> None:
    found = alerts()
    for name, metrics in REQUIRED.items():
        assert name in found, f"missing alert {name}"
        assert metrics <= promql_metric_names(found[name]["expr"]), name
    utility = found["MpesaB2CUtilityBalanceLow"]["expr"]
    assert 'account="utility"' in utility
    assert 'status="accepted"' in found["MpesaB2CResultsStopped"]["expr"]
    stuck = found["MpesaB2CPayoutStuck"]["expr"]
    assert all(f'status="{status}"' in stuck for status in ("received", "sending", "accepted"))
    assert 'status="unknown"' not in stuck, "unknown is MpesaB2CUnknownPayoutsStale's"


def test_every_alert_is_unit_tested_both_firing_and_quiet() -> None:
    cases = yaml.safe_load(UNIT_TESTS.read_text())["tests"]
    fires: set[str] = set()
    quiet: set[str] = set()
    for case in cases:
        for check in case.get("alert_rule_test", []):
            (fires if check.get("exp_alerts") else quiet).add(check["alertname"])
    assert set(alerts()) <= fires, f"never seen firing: {set(alerts()) - fires}"
    assert set(alerts()) <= quiet, f"never seen quiet: {set(alerts()) - quiet}"
    for name, rule in alerts().items():
        assert rule["labels"]["severity"] in ("critical", "warning"), name
        assert {"summary", "description", "runbook"} <= set(rule["annotations"]), name


@pytest.mark.parametrize("alert", [*sorted(REQUIRED), "MpesaB2CComponentMissing"])
def test_unit_tests_catch_a_broken_alert(promtool: str, tmp_path: Path, alert: str) -> None:
    """Weaken one alert's condition so it can never fire: the unit tests must notice."""
    document = yaml.safe_load(RULES.read_text())
    for group in document["groups"]:
        for rule in group["rules"]:
            if rule.get("alert") == alert:
                rule["expr"] = f"({rule['expr']}) and on () vector(0) > 1"
    (tmp_path / "rules.yml").write_text(yaml.safe_dump(document))
    tests = yaml.safe_load(UNIT_TESTS.read_text())
    tests["rule_files"] = ["rules.yml"]
    (tmp_path / "alerts_test.yml").write_text(yaml.safe_dump(tests))
    result = run([promtool, "test", "rules", "alerts_test.yml"], cwd=tmp_path)
    assert result.returncode != 0, f"the unit tests still pass with {alert} disabled"
    assert alert in result.stdout + result.stderr


def test_rules_use_only_exported_metrics_and_their_own_records() -> None:
    exported = exported_metric_names() | {"up"}
    recorded = {rule["record"] for rule in load_rules() if "record" in rule}
    for rule in load_rules():
        unknown = promql_metric_names(rule["expr"]) - exported - recorded
        assert not unknown, f"{rule.get('alert') or rule.get('record')}: {unknown} not exported by worker.metrics"


def test_component_alerts_name_the_scrape_jobs_of_chart_and_compose() -> None:
    expr = alerts()["MpesaB2CComponentDown"]["expr"]
    pattern = re.search(r'job=~"([^"]+)"', expr)
    assert pattern
    assert re.fullmatch(pattern.group(1), JOBS["worker"]) and re.fullmatch(pattern.group(1), JOBS["callbacks"])
    assert not re.fullmatch(pattern.group(1), JOBS["simulator"]), "a staging simulator must not page"
    missing = alerts()["MpesaB2CComponentMissing"]["expr"]
    assert f'job="{JOBS["worker"]}"' in missing and f'job="{JOBS["callbacks"]}"' in missing


def test_thresholds_group_is_the_one_the_chart_replaces() -> None:
    groups = {g["name"]: g for g in yaml.safe_load(RULES.read_text())["groups"]}
    assert [r["record"] for r in groups["mpesa-b2c-thresholds"]["rules"]] == ["mpesa_b2c:utility_balance_min_kes"]
    assert "mpesa_b2c:utility_balance_min_kes" in alerts()["MpesaB2CUtilityBalanceLow"]["expr"]


def test_promql_name_extraction() -> None:
    expr = (
        'sum by (le, job) (rate(foo_bucket{a="x{y}", b=~"on|by"}[5m])) / on (job) group_left (instance) '
        "bar:ratio offset 10m > bool 0.5 and absent(baz{c='1'}) unless qux @ 10 or atan2 1e3"
    )
    assert promql_metric_names(expr) == {"foo_bucket", "bar:ratio", "baz", "qux"}


def test_rules_and_unit_tests_pass_yamllint() -> None:
    assert yamllint([RULES], YAMLLINT_HAND) == ""
    relaxed = YAMLLINT_HAND.replace("{max: 120}", "disable")
    assert yamllint([UNIT_TESTS], relaxed) == ""
