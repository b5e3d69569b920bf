"""The version is declared once, in pyproject.toml; everything that shows one must show that one."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

import yaml
from prometheus_client import REGISTRY

import worker
from worker.receiver.service import ReceiverService
from worker.settings import load_settings

ROOT = Path(__file__).resolve().parent.parent
DECLARED = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]


def test_package_version_is_the_pyproject_version() -> None:
    assert worker.__version__ == DECLARED


def test_cli_version_is_the_pyproject_version() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "worker.cli", "--version"], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"mpesa-b2c {DECLARED}"


def test_build_info_metric_is_the_pyproject_version(tmp_path: Path) -> None:
    service = ReceiverService(load_settings({"B2C_DATA_DIR": str(tmp_path)}), port=0, threads=1)
    try:
        assert REGISTRY.get_sample_value("mpesa_b2c_build_info", {"version": DECLARED}) == 1.0
    finally:
        service.stop()


def test_chart_app_version_is_the_pyproject_version() -> None:
    chart = yaml.safe_load((ROOT / "helm" / "mpesa-b2c" / "Chart.yaml").read_text())
    assert chart["appVersion"] == DECLARED
