"""Every series of a closed label set exists at 0 from a process's start, so that the first dead letter,
rejection or retry is a rise that ``rate()`` and ``increase()`` see (a series born at 1 shows none)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from prometheus_client import Counter, Histogram

from worker import metrics
from worker.cli import metrics_doc
from worker.gateway.g2 import AttemptReason
from worker.ledger.quarantine import REASON_UNPARSABLE
from worker.paying.handler import LEDGER_ERROR
from worker.paying.service import worker_series
from worker.payouts.models import RejectionReason
from worker.receiver.guard import Refusal
from worker.receiver.service import receiver_series

# A fresh process: the receiver as it starts (its real /metrics), the worker's table through the same function.
SCRAPE = """
import json, sys, urllib.request
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families
from worker import metrics
from worker.paying.service import worker_series
from worker.receiver.service import ReceiverService
from worker.settings import load_settings

receiver = ReceiverService(load_settings(), port=0)
try:
    text = urllib.request.urlopen(f"http://127.0.0.1:{receiver.port}/metrics", timeout=10).read().decode()
finally:
    receiver.stop()
metrics.start_at_zero(worker_series(["5s", "30s"]))
text += generate_latest().decode()
samples = [
    [sample.name, sample.labels, sample.value]
    for family in text_string_to_metric_families(text)
    for sample in family.samples
    if sample.name.startswith("mpesa_b2c_")
]
json.dump(samples, sys.stdout)
"""


def _labelled(component: str) -> dict[str, Counter | Histogram]:
    names = {doc.name for doc in metrics_doc.by_component()[component]}
    found: dict[str, Counter | Histogram] = {}
    for value in vars(metrics).values():
        if isinstance(value, Counter | Histogram) and value._labelnames:
            [family] = value.describe()
            name = family.name + ("_total" if family.type == "counter" else "")
            if name in names:
                found[name] = value
    return found


def test_each_process_covers_every_labelled_counter_and_histogram_it_sets() -> None:
    for component, table in (
        (metrics_doc.WORKER, worker_series(["5s"])),
        (metrics_doc.RECEIVER, receiver_series()),
    ):
        expected = _labelled(component)
        missing = sorted(name for name, metric in expected.items() if metric not in table)
        assert not missing, f"{component} does not start these at 0: {missing}"
        for metric, label_sets in table.items():
            sets = list(label_sets)
            assert sets, metric
            assert all(set(labels) == set(metric._labelnames) for labels in sets), metric


def test_a_fresh_process_shows_every_bounded_series_at_zero(tmp_path: Path) -> None:
    env = {"B2C_DATA_DIR": str(tmp_path), "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    run = subprocess.run(
        [sys.executable, "-c", SCRAPE], env=env, capture_output=True, text=True, timeout=120, check=False
    )
    assert run.returncode == 0, run.stderr
    samples = json.loads(run.stdout)

    def values(name: str, label: str) -> dict[str, float]:
        return {labels[label]: value for sample, labels, value in samples if sample == name and label in labels}

    dead_reasons = [*map(str, RejectionReason), LEDGER_ERROR]
    assert values("mpesa_b2c_dead_letters_total", "reason") == dict.fromkeys(dead_reasons, 0.0)
    assert values("mpesa_b2c_commands_rejected_total", "reason") == dict.fromkeys(map(str, RejectionReason), 0.0)
    assert values("mpesa_b2c_gateway_retries_total", "reason") == dict.fromkeys(map(str, AttemptReason), 0.0)
    assert values("mpesa_b2c_deferrals_total", "tier") == {"5s": 0.0, "30s": 0.0}
    assert values("mpesa_b2c_callbacks_refused_total", "reason") == dict.fromkeys(map(str, Refusal), 0.0)
    quarantined = values("mpesa_b2c_results_quarantined_total", "reason")
    assert quarantined[REASON_UNPARSABLE] == 0.0 and set(quarantined.values()) == {0.0}
    received = values("mpesa_b2c_results_received_total", "result_code")
    assert received["0"] == 0.0 and received["other"] == 0.0
