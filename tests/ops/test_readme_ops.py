"""The README's runbook covers exactly the alerts that are shipped, and documents every setting the code reads."""

from __future__ import annotations

import re

import yaml

from .conftest import REPO, RULES


def _section(text: str, title: str) -> str:
    match = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## |\Z)", text, re.S | re.M)
    assert match is not None, f"README.md has no '## {title}' section"
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


def test_settings_table_documents_every_variable_the_code_reads() -> None:
    table = _section((REPO / "README.md").read_text(), "Settings")
    documented = set(re.findall(r"`(B2C_[A-Z0-9_]+)`", table))
    read = set(re.findall(r'"(B2C_[A-Z0-9_]+)"', (REPO / "worker" / "settings.py").read_text()))
    assert read - documented == set(), f"settings missing from the README: {sorted(read - documented)}"
    assert documented - read == set(), f"README settings the code does not read: {sorted(documented - read)}"
