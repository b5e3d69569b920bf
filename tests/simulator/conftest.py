"""Fixtures for the simulator tests: settings, a result collector, a running simulator, a spec-only client."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from tests.support.sim_client import G2Client
from tests.support.sim_support import FAST, Collector, client_for, make_settings, start_collector
from worker.settings import Settings
from worker.simulator import RunningSimulator, SimulatorOptions, start_simulator

SimFactory = Callable[..., RunningSimulator]


@pytest.fixture
def collector() -> Iterator[Collector]:
    sink, server = start_collector()
    yield sink
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="session")
def key_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    path = tmp_path_factory.mktemp("simkey") / "sim-key.pem"
    path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return path


@pytest.fixture
def settings(tmp_path: Path, key_file: Path) -> Settings:
    return make_settings(tmp_path, key_file)


@pytest.fixture
def start(settings: Settings) -> Iterator[SimFactory]:
    running: list[RunningSimulator] = []

    def factory(settings_override: Settings | None = None, **options: Any) -> RunningSimulator:
        sim = start_simulator(settings_override or settings, port=0, options=SimulatorOptions(**{**FAST, **options}))
        running.append(sim)
        return sim

    yield factory
    for sim in running:
        sim.stop()


@pytest.fixture
def sim(start: SimFactory) -> RunningSimulator:
    return start()


@pytest.fixture
def client(sim: RunningSimulator, settings: Settings, collector: Collector) -> G2Client:
    return client_for(sim, settings, collector)
