"""The metric tables of the README are generated from the metrics, and the metrics follow the conventions."""

from __future__ import annotations

import re

from worker.cli import metrics_doc

from .conftest import REPO

# Labels that would be unbounded (or personal data) if a metric used them.
FORBIDDEN_LABELS = re.compile(r"payout|msisdn|phone|originator|conversation|receipt|transaction|id$", re.I)


def test_every_metric_says_which_process_sets_it() -> None:
    names = {doc.name for doc in metrics_doc.worker_metrics()}
    unplaced = names - set(metrics_doc.SET_BY)
    assert not unplaced, f"add {sorted(unplaced)} to SET_BY in worker/cli/metrics_doc.py"
    stale = set(metrics_doc.SET_BY) - names
    assert not stale, f"SET_BY names metrics worker.metrics no longer defines: {sorted(stale)}"
    for name, components in metrics_doc.SET_BY.items():
        assert components, name
        assert set(components) <= {metrics_doc.WORKER, metrics_doc.RECEIVER}, name


def test_metrics_follow_the_naming_conventions() -> None:
    docs = metrics_doc.worker_metrics() + metrics_doc.simulator_metrics()
    assert len({doc.name for doc in docs}) == len(docs)
    for doc in docs:
        prefix = "mpesa_sim_" if doc in metrics_doc.simulator_metrics() else "mpesa_b2c_"
        assert doc.name.startswith(prefix), doc.name
        assert (doc.kind == "counter") == doc.name.endswith("_total"), doc.name
        assert not re.search(r"_(milli|micro)?seconds?_ms|_ms$|_minutes?$|_hours?$|_millis", doc.name), doc.name
        if "seconds" in doc.help.lower() or doc.kind == "histogram":
            assert doc.name.endswith(("_seconds", "_seconds_total")), f"{doc.name}: time in base units"
        assert doc.help.strip(), f"{doc.name}: no help text"
        bad = [label for label in doc.labels if FORBIDDEN_LABELS.search(label)]
        assert not bad, f"{doc.name}: unbounded label(s) {bad}"


def test_every_component_has_a_table() -> None:
    text = metrics_doc.markdown()
    assert text.startswith(metrics_doc.BEGIN) and text.rstrip().endswith(metrics_doc.END)
    tables = metrics_doc.by_component()
    assert set(tables) == {"worker", "receiver", "simulator"}
    for component, docs in tables.items():
        assert docs, component
        for doc in docs:
            assert f"| `{doc.name}`" in text


def test_replace_section_is_idempotent() -> None:
    section = metrics_doc.markdown()
    readme = f"# title\n\n## Metrics\n\n{metrics_doc.BEGIN}\nold table\n{metrics_doc.END}\n\n## Next\n"
    once = metrics_doc.replace_section(readme, section)
    assert "old table" not in once and once.endswith("\n\n## Next\n")
    assert metrics_doc.replace_section(once, section) == once
    assert metrics_doc.replace_section("# title\n", section) == "# title\n\n" + section


def test_readme_tables_are_current() -> None:
    readme = (REPO / "README.md").read_text()
    assert metrics_doc.BEGIN in readme and metrics_doc.END in readme, (
        "README.md lost its generated metrics section: restore the markers, then run "
        ".venv/bin/python -m worker.cli.metrics_doc --write README.md"
    )
    assert metrics_doc.replace_section(readme, metrics_doc.markdown()) == readme, (
        "the README's metric tables are stale: run .venv/bin/python -m worker.cli.metrics_doc --write README.md"
    )
