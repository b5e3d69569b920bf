"""The settings every test builds on: an isolated data directory and certificate, and fast timeouts."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from worker.settings import Settings, load_settings


def fast_settings_env(tmp_path: Path) -> dict[str, str]:
    """The environment of a test's settings: isolated data dir and certificate, fast timeouts."""
    return {
        "B2C_DATA_DIR": str(tmp_path / "data"),
        "B2C_CERT_PATH": str(tmp_path / "data" / "sim-cert.pem"),
        "B2C_READ_TIMEOUT": "5",
        "B2C_CONNECT_TIMEOUT": "2",
        "B2C_RETRY_MAX_SECONDS": "3",
        "B2C_OUTBOX_INTERVAL": "0.5",
    }


@pytest.fixture
def make_settings(tmp_path: Path) -> Callable[..., Settings]:
    """Settings for a test (``fast_settings_env``), with overrides."""

    def build(**env: str) -> Settings:
        return load_settings({**fast_settings_env(tmp_path), **env})

    return build
