"""Every role that needs RabbitMQ says plainly when it cannot reach it, names the URL and exits non-zero."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from worker.settings import load_settings
from worker.simulator.keys import prepare_key


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _cli(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "worker.cli", *args], env=env, capture_output=True, text=True, timeout=60, check=False
    )


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    settings_env = {"B2C_DATA_DIR": str(tmp_path), "B2C_CERT_PATH": str(tmp_path / "cert.pem")}
    prepare_key(load_settings(settings_env))
    port = _closed_port()
    return {
        **os.environ,
        **settings_env,
        "B2C_AMQP_URL": f"amqp://payer:s3cret-pw@127.0.0.1:{port}/%2F",
    }


@pytest.mark.parametrize(
    "args",
    [
        ["worker", "--metrics-port", "0"],
        ["publish", '{"payout_id": "p-1", "msisdn": "0712345678", "amount": 100}'],
        ["events", "--timeout", "1"],
        ["demo", "--timeout", "5"],
        ["dead", "list"],
    ],
)
def test_no_broker_is_said_plainly(args: list[str], env: dict[str, str]) -> None:
    done = _cli(args, env)
    assert done.returncode != 0
    assert "cannot reach RabbitMQ at amqp://payer:***@127.0.0.1:" in done.stderr
    assert "s3cret-pw" not in done.stderr + done.stdout


def test_bad_setting_names_the_variable(env: dict[str, str]) -> None:
    done = _cli(["publish", "{}"], {**env, "B2C_CONCURRENCY": "many"})
    assert done.returncode == 2
    assert "B2C_CONCURRENCY" in done.stderr


@pytest.mark.parametrize("role", ["worker", "callbacks"])
def test_without_demo_defaults_a_role_names_what_is_missing_and_exits(role: str, env: dict[str, str]) -> None:
    environment = {k: v for k, v in env.items() if not k.startswith("B2C_")} | {"B2C_DEMO_DEFAULTS": "false"}
    done = _cli([role], {**environment, "B2C_SHORTCODE": "654321", "B2C_SP_PASSWORD": ""})
    assert done.returncode == 2
    assert "B2C_MPESA_URL" in done.stderr and "B2C_SP_PASSWORD" in done.stderr and "B2C_DATABASE_URL" in done.stderr
    assert "B2C_SHORTCODE" not in done.stderr


def test_a_database_password_quoted_by_the_driver_is_not_printed(env: dict[str, str]) -> None:
    done = _cli(["breaker", "status"], {**env, "B2C_DATABASE_URL": "postgresql://payer:s3cr%zzet@127.0.0.1:5432/nodb"})
    assert done.returncode != 0
    assert "postgresql ledger" in done.stderr
    assert "s3cr" not in done.stderr + done.stdout
