"""Keys, the scenario table, the CLI flags, the HTTP surface and the server's life cycle."""

from __future__ import annotations

import argparse
import base64
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import requests
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from tests.support.sim_client import G2Client, response_fields
from tests.support.sim_support import FAST, Collector, client_for, make_settings
from worker.errors import ConfigError
from worker.settings import Settings
from worker.simulator import RunningSimulator, SimulatorOptions, scenario_table_markdown, start_simulator
from worker.simulator.cli_args import add_simulator_arguments, options_from_args
from worker.simulator.scenarios import MAGIC_HIGH, MAGIC_LOW, SCENARIOS, Scenario, scenario_for_msisdn

SimFactory = Callable[..., RunningSimulator]


def test_without_a_key_a_pair_is_generated_and_the_certificate_written(tmp_path: Path, collector: Collector) -> None:
    settings = make_settings(tmp_path, None)
    assert not settings.mpesa.cert_path.parent.exists()
    sim = start_simulator(settings, options=SimulatorOptions(**FAST))
    try:
        certificate = x509.load_pem_x509_certificate(settings.mpesa.cert_path.read_bytes())
        public = certificate.public_key()
        assert isinstance(public, rsa.RSAPublicKey) and public.key_size == 2048
        client = client_for(sim, settings, collector)
        _, body = client.pay("600000_k_1", "254712345678", "100.00")
        assert response_fields(body)["ResponseCode"] == "0"
        [item] = collector.wait(1, "/result")
        assert b"<ResultCode>0</ResultCode>" in item.body
    finally:
        sim.stop()


def test_a_fresh_start_writes_a_fresh_certificate(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, None)
    start_simulator(settings, options=SimulatorOptions(**FAST)).stop()
    first = settings.mpesa.cert_path.read_bytes()
    start_simulator(settings, options=SimulatorOptions(**FAST)).stop()
    assert settings.mpesa.cert_path.read_bytes() != first


def test_a_configured_key_is_used_and_an_existing_certificate_kept(tmp_path: Path, key_file: Path) -> None:
    settings = make_settings(tmp_path, key_file)
    settings.mpesa.cert_path.parent.mkdir(parents=True)
    settings.mpesa.cert_path.write_bytes(b"operator's certificate")
    start_simulator(settings, options=SimulatorOptions(**FAST)).stop()
    assert settings.mpesa.cert_path.read_bytes() == b"operator's certificate"


def test_without_a_key_someone_elses_certificate_is_never_overwritten(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, None)
    settings.mpesa.cert_path.parent.mkdir(parents=True)
    settings.mpesa.cert_path.write_bytes(b"M-PESA's production certificate")
    with pytest.raises(ConfigError, match="B2C_CERT_PATH"):
        start_simulator(settings, options=SimulatorOptions(**FAST))
    assert settings.mpesa.cert_path.read_bytes() == b"M-PESA's production certificate"


def test_the_written_certificate_matches_the_configured_key(tmp_path: Path, key_file: Path) -> None:
    settings = make_settings(tmp_path, key_file)
    start_simulator(settings, options=SimulatorOptions(**FAST)).stop()
    public = x509.load_pem_x509_certificate(settings.mpesa.cert_path.read_bytes()).public_key()
    private = serialization.load_pem_private_key(key_file.read_bytes(), password=None)
    assert isinstance(public, rsa.RSAPublicKey) and isinstance(private, rsa.RSAPrivateKey)
    secret = base64.b64decode(base64.b64encode(public.encrypt(b"pw", padding.PKCS1v15())))
    assert private.decrypt(secret, padding.PKCS1v15()) == b"pw"


def test_an_unreadable_key_is_a_config_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad.pem"
    bad.write_text("not a key")
    with pytest.raises(ConfigError, match="B2C_SIM_PRIVATE_KEY"):
        start_simulator(make_settings(tmp_path, bad), options=SimulatorOptions(**FAST))


def test_magic_numbers_are_unique_and_inside_the_reserved_range() -> None:
    numbers = [info.msisdn for info in SCENARIOS if info.msisdn]
    assert len(numbers) == len(set(numbers)) == len(SCENARIOS) - 1
    assert all(MAGIC_LOW <= int(n) <= MAGIC_HIGH for n in numbers)
    assert scenario_for_msisdn("254700000100") is None
    assert scenario_for_msisdn("254700000000") is None
    assert scenario_for_msisdn("254712345678") is None


def test_scenario_table_lists_every_scenario_with_its_number() -> None:
    table = scenario_table_markdown()
    rows = [line for line in table.splitlines() if line.startswith("| `2547") or "any other" in line]
    assert len(rows) == len(SCENARIOS)
    for info in SCENARIOS:
        assert f"`{info.scenario.value}`" in table
        if info.msisdn:
            assert f"| `{info.msisdn}` | `{info.scenario.value}` |" in table


def test_cli_help_documents_every_scenario_and_the_flags_build_options() -> None:
    parser = argparse.ArgumentParser(prog="mpesa-b2c simulator")
    add_simulator_arguments(parser)
    help_text = parser.format_help()
    for info in SCENARIOS:
        assert info.scenario.value in help_text
        if info.msisdn:
            assert info.msisdn in help_text
    for flag in ("--host", "--port", "--latency", "--result-delay", "--fault", "--fault-count", "--slow-seconds"):
        assert flag in help_text
    ns = parser.parse_args(
        ["--port", "9999", "--latency", "0.2", "--result-delay", "3", "--fault", "cached", "--fault-count", "4"]
    )
    options = options_from_args(ns)
    assert ns.port == 9999 and ns.host == "127.0.0.1"
    assert options.latency == 0.2 and options.result_delay == 3.0
    assert options.fault == Scenario.CACHED and options.fault_count == 4
    with pytest.raises(SystemExit):
        parser.parse_args(["--fault", "meteor"])
    with pytest.raises(SystemExit):
        parser.parse_args(["--latency", "-1"])


def test_cli_arguments_without_address() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--host")
    add_simulator_arguments(parser, include_address=False)
    assert "--port" not in parser.format_help()


def test_latency_delays_every_answer(start: SimFactory, settings: Settings, collector: Collector) -> None:
    sim = start(latency=0.3)
    client = client_for(sim, settings, collector)
    began = time.monotonic()
    client.pay("600000_s_lat", "254712345678", "100.00")
    assert time.monotonic() - began >= 0.3


def test_unknown_paths_and_methods(sim: RunningSimulator) -> None:
    assert requests.get(sim.base_url + "/nope", timeout=5).status_code == 404
    assert requests.get(sim.url, timeout=5).status_code == 405
    assert requests.put(sim.base_url + "/simulator/reset", timeout=5).status_code == 405
    assert requests.get(sim.base_url + "/healthz", timeout=5).json() == {"status": "ok"}
    scenarios = requests.get(sim.base_url + "/simulator/scenarios", timeout=5).json()
    assert {s["scenario"] for s in scenarios} == {info.scenario.value for info in SCENARIOS}
    assert requests.post(sim.base_url + "/simulator/balance", json={"utility": "-1"}, timeout=5).status_code == 400


def test_balance_endpoint_without_a_value_restores_the_initial_balance(
    client: G2Client, collector: Collector, sim: RunningSimulator
) -> None:
    client.pay("600000_s_bal", "254712345678", "1000.00")
    collector.wait(1, "/result")
    assert requests.get(sim.base_url + "/simulator/balance", timeout=5).json()["utility"] == "99000.00"
    assert requests.post(sim.base_url + "/simulator/balance", json={}, timeout=5).json()["utility"] == "100000.00"


def test_stop_closes_the_port(settings: Settings) -> None:
    sim = start_simulator(settings, options=SimulatorOptions(**FAST))
    port = sim.port
    assert requests.get(sim.base_url + "/healthz", timeout=5).ok
    sim.stop()
    with pytest.raises(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
        pass


def test_urls(sim: RunningSimulator) -> None:
    assert sim.url == f"http://127.0.0.1:{sim.port}/mminterface/request"
    assert sim.base_url == f"http://127.0.0.1:{sim.port}"


SERVE = """
import logging, sys
from worker.settings import load_settings
from worker.simulator import serve, SimulatorOptions
logging.basicConfig(level=logging.INFO, stream=sys.stdout)
serve(load_settings(), "127.0.0.1", int(sys.argv[1]), SimulatorOptions(result_delay=0.05))
print("SERVE RETURNED", flush=True)
"""


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_serve_stops_cleanly_on_a_signal(tmp_path: Path, key_file: Path, signum: int) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {
        **os.environ,
        "B2C_DATA_DIR": str(tmp_path),
        "B2C_SIM_PRIVATE_KEY": str(key_file),
        "B2C_SP_PASSWORD": "sp-secret-Pa55",
        "B2C_INITIATOR_PASSWORD": "initiator-secret-9",
    }
    process = subprocess.Popen(
        [sys.executable, "-c", SERVE, str(port)], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                if requests.get(f"http://127.0.0.1:{port}/healthz", timeout=0.5).ok:
                    break
            except requests.ConnectionError:
                time.sleep(0.05)
        process.send_signal(signum)
        output, _ = process.communicate(timeout=10)
    finally:
        if process.poll() is None:
            process.kill()
    text = output.decode()
    assert process.returncode == 0, text
    assert "SERVE RETURNED" in text and "simulator stopped" in text
    assert "sp-secret-Pa55" not in text and "initiator-secret-9" not in text
