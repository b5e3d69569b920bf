"""Where the third-party reference files live (``tests/data``, see its README): read by tests only."""

from __future__ import annotations

from pathlib import Path

DATA = Path(__file__).resolve().parent.parent / "data"
G2_REFERENCE = DATA / "mpesa-g2" / "reference"
G2_SAMPLES = DATA / "mpesa-g2" / "samples"
K8S_SCHEMAS = DATA / "k8s-schemas"
