"""Shared helpers for the operations tests: where the files are, the external tools, and PromQL names.

The tools are found on PATH or beside the running interpreter (the venv's bin/), so `.venv/bin/pytest`
works without an activated venv. A missing tool fails the test, except promtool outside CI: it comes from
Debian's `prometheus` package, which a developer may not have installed.
"""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import REGISTRY

import worker.metrics  # noqa: F401  (registers every metric in REGISTRY)
from tests.support.services import find_program, require_program

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "helm" / "mpesa-b2c"
DASHBOARDS = CHART / "dashboards"
RULES = CHART / "alerts" / "mpesa-b2c.rules.yml"

# The job names given by the chart's ServiceMonitor relabelling and by ops/prometheus.yml.
JOBS = {"worker": "mpesa-b2c-worker", "callbacks": "mpesa-b2c-callbacks", "simulator": "mpesa-b2c-simulator"}

# Yamllint for the YAML we write by hand; rendered manifests get the same minus line length (toYaml output).
YAMLLINT_HAND = (
    "{extends: default, rules: {document-start: disable, line-length: {max: 120},"
    " indentation: {spaces: 2, indent-sequences: whatever}}}"
)
YAMLLINT_RENDERED = (
    "{extends: default, rules: {line-length: disable, indentation: {spaces: 2, indent-sequences: whatever}}}"
)


def require_tool(name: str, install: str) -> str:
    """A tool the dev install provides: missing, the install is broken, so the test fails everywhere."""
    path = find_program(name)
    if path is None:
        pytest.fail(f"{name} is not installed ({install})")
    return path


@pytest.fixture(scope="session")
def promtool() -> str:
    return require_program("promtool", "apt-get install prometheus")


def run(args: list[str], cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=120, check=False)


def yamllint(paths: list[Path], config: str) -> str:
    """Problems found by yamllint, '' when clean."""
    tool = require_tool("yamllint", "pip install yamllint")
    result = run([tool, "-f", "parsable", "-d", config, *map(str, paths)])
    return (result.stdout + result.stderr).strip()


def exported_metric_names() -> set[str]:
    """Every series name the worker and the receiver can export: the prometheus_client registry after
    importing worker.metrics, expanded the way the exposition format expands each family type."""
    suffixes = {
        "counter": ("_total", "_created"),
        "histogram": ("_bucket", "_sum", "_count", "_created"),
        "summary": ("", "_sum", "_count", "_created"),
        "info": ("_info",),
        "gauge": ("",),
        "stateset": ("",),
        "gaugehistogram": ("_bucket", "_gsum", "_gcount"),
        "unknown": ("",),
    }
    names: set[str] = set()
    for family in REGISTRY.collect():
        names.update(family.name + suffix for suffix in suffixes[family.type])
    return names


_STRING = re.compile(r'"(?:\\.|[^"\\])*"|\'(?:\\.|[^\'\\])*\'|`[^`]*`')
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
_IDENT = re.compile(r"(?<![\w:.])([a-zA-Z_:][\w:]*)")
_KEYWORDS = {
    "and", "or", "unless", "by", "without", "on", "ignoring", "group_left", "group_right", "bool",
    "offset", "inf", "nan", "atan2", "start", "end",
}  # fmt: skip


def promql_metric_names(expr: str) -> set[str]:
    """Metric names selected by a PromQL expression (promtool has already checked that it parses).

    Strings, label matchers, ranges and grouping label lists are removed first; what is left that is
    neither a keyword nor followed by '(' (a function or an aggregation) is a metric name."""
    text = _STRING.sub('""', expr)
    text = re.sub(r"\{[^}]*\}", "{}", text)
    text = re.sub(r"\[[^\]]*\]", "[]", text)
    text = _GROUPING.sub(" ", text)
    names = set()
    for match in _IDENT.finditer(text):
        name = match.group(1)
        if name.lower() in _KEYWORDS or text[match.end() :].lstrip().startswith("("):
            continue
        names.add(name)
    return names


def promtool_check_exprs(promtool: str, exprs: dict[str, str], tmp_path: Path) -> dict[str, str]:
    """Parse each expression with promtool (as a recording rule); return {key: error} for the bad ones."""
    keys = list(exprs)
    rules = [{"record": f"check:expr_{i}", "expr": exprs[k]} for i, k in enumerate(keys)]
    path = tmp_path / "exprs.rules.json"
    path.write_text(json.dumps({"groups": [{"name": "exprs", "rules": rules}]}))
    result = run([promtool, "check", "rules", str(path)])
    if result.returncode == 0:
        return {}
    output = result.stdout + result.stderr
    bad = {}
    for i, key in enumerate(keys):
        if re.search(rf'"check:expr_{i}"', output):
            bad[key] = output
    return bad or {"<promtool>": output}


def load_json(path: Path) -> Any:
    return json.loads(path.read_text())


def walk_panels(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for panel in panels:
        yield panel
        yield from walk_panels(panel.get("panels", []))


def substitute(expr: str, variables: dict[str, str]) -> str:
    """``expr`` with Grafana's ``$name`` / ``${name}`` / ``${name:format}`` replaced; an unknown one fails."""

    def value(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(2)
        if name not in variables:
            pytest.fail(f"undefined Grafana variable ${name} in {expr}")
        return variables[name]

    return re.sub(r"\$\{(\w+)(?::\w+)?\}|\$(\w+)", value, expr)


def dashboard_queries(dashboard: dict[str, Any], variables: dict[str, str]) -> dict[str, str]:
    """Every PromQL query of a dashboard, keyed by where it is, variables substituted; a query variable
    (``label_values(selector, label)``) becomes ``count(selector)``."""
    found = {}
    for panel in walk_panels(dashboard["panels"]):
        for target in panel.get("targets", []):
            found[f"{dashboard['uid']} / {panel['title']} / {target['refId']}"] = substitute(target["expr"], variables)
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            text = variable["query"]["query"] if isinstance(variable["query"], dict) else variable["query"]
            selector = re.fullmatch(r"label_values\((.+),\s*\w+\)", text)
            assert selector, f"variable {variable['name']}: {text}"
            found[f"{dashboard['uid']} / variable {variable['name']}"] = (
                f"count({substitute(selector.group(1), variables)})"
            )
    return found
