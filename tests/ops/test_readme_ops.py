"""The README's runbook covers exactly the alerts that are shipped (checked once the section is in the README)."""

from __future__ import annotations

import re

import pytest
import yaml

from .conftest import REPO, RULES


def _section(text: str, title: str) -> str:
    match = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## |\Z)", text, re.S | re.M)
    if match is None:
        pytest.skip(f"README.md has no '## {title}' section yet")
    return match.group(1)


def test_runbook_lists_every_shipped_alert() -> None:
    runbook = _section((REPO / "README.md").read_text(), "Alerts and runbook")
    rules = yaml.safe_load(RULES.read_text())
    shipped = {rule["alert"] for group in rules["groups"] for rule in group["rules"] if "alert" in rule}
    listed = set(re.findall(r"^\| `(\w+)` \|", runbook, re.M))
    assert shipped - listed == set(), f"alerts without a runbook row: {sorted(shipped - listed)}"
    assert listed - shipped == set(), f"runbook rows for alerts that do not exist: {sorted(listed - shipped)}"


def test_alerts_link_to_the_runbook() -> None:
    rules = yaml.safe_load(RULES.read_text())
    for group in rules["groups"]:
        for rule in group["rules"]:
            if "alert" in rule:
                assert rule["annotations"]["runbook"] == "README.md#alerts-and-runbook", rule["alert"]
