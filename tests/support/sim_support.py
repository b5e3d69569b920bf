"""Helpers shared by the simulator tests: the result collector, settings, the client, introspection."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import requests

from tests.support.sim_client import G2Client
from worker.settings import Settings, load_settings
from worker.simulator import RunningSimulator

RESPONSE_OK = (
    b'<soapenv:Envelope xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/" '
    b'xmlns:req="http://api-v1.gen.mm.vodafone.com/mminterface/request"><soapenv:Body>'
    b'<req:ResponseMsg><![CDATA[<?xml version="1.0" encoding="UTF-8"?><response '
    b'xmlns="http://api-v1.gen.mm.vodafone.com/mminterface/response"><ResponseCode>00000000</ResponseCode>'
    b"<ResponseDesc>success</ResponseDesc></response>]]></req:ResponseMsg></soapenv:Body></soapenv:Envelope>"
)
SP_PASSWORD = "sp-secret-Pa55"
INITIATOR_PASSWORD = "initiator-secret-9"


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes
    at: float


@dataclass
class Collector:
    """A tiny HTTP server standing in for the payer's result receiver."""

    base_url: str = ""
    received: list[Received] = field(default_factory=list)
    statuses: list[int] = field(default_factory=list)
    cond: threading.Condition = field(default_factory=threading.Condition)

    def wait(self, count: int, path: str | None = None, timeout: float = 15.0) -> list[Received]:
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                items = [r for r in self.received if path is None or r.path == path]
                if len(items) >= count or time.monotonic() >= deadline:
                    return items
                self.cond.wait(deadline - time.monotonic())

    def items(self, path: str | None = None) -> list[Received]:
        with self.cond:
            return [r for r in self.received if path is None or r.path == path]


def start_collector() -> tuple[Collector, ThreadingHTTPServer]:
    sink = Collector()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            with sink.cond:
                status = sink.statuses.pop(0) if sink.statuses else 200
                sink.received.append(Received(self.path, dict(self.headers), body, time.monotonic()))
                sink.cond.notify_all()
            self.send_response(status)
            self.send_header("Content-Type", "text/xml; charset=utf-8")
            self.send_header("Content-Length", str(len(RESPONSE_OK)))
            self.end_headers()
            self.wfile.write(RESPONSE_OK)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    sink.base_url = f"http://127.0.0.1:{server.server_address[1]}"
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    return sink, server


def make_settings(tmp_path: Path, key_file: Path | None, **extra: str) -> Settings:
    env = {
        "B2C_DATA_DIR": str(tmp_path / "data"),
        "B2C_CERT_PATH": str(tmp_path / "certs" / "nested" / "mpesa-cert.pem"),
        "B2C_SP_ID": "107031",
        "B2C_SP_PASSWORD": SP_PASSWORD,
        "B2C_SERVICE_ID": "107031000",
        "B2C_INITIATOR_NAME": "apiop37",
        "B2C_INITIATOR_PASSWORD": INITIATOR_PASSWORD,
        "B2C_SHORTCODE": "600000",
        "B2C_AMOUNT_MIN": "10",
        "B2C_AMOUNT_MAX": "150000",
        "B2C_SIM_BALANCE": "100000.00",
        "B2C_READ_TIMEOUT": "0.5",
    }
    if key_file is not None:
        env["B2C_SIM_PRIVATE_KEY"] = str(key_file)
    env.update(extra)
    return load_settings(env)


FAST: dict[str, Any] = {
    "result_delay": 0.05,
    "callback_backoff": 0.05,
    "duplicate_gap": 0.05,
    "slow_seconds": 1.0,
    "callback_timeout": 5.0,
}


def client_for(sim: RunningSimulator, settings: Settings, collector: Collector) -> G2Client:
    return G2Client(
        host="127.0.0.1",
        port=sim.port,
        sp_id="107031",
        sp_password=SP_PASSWORD,
        service_id="107031000",
        initiator="apiop37",
        initiator_password=INITIATOR_PASSWORD,
        shortcode="600000",
        certificate=settings.mpesa.cert_path.read_bytes(),
        result_url=collector.base_url + "/result",
        queue_timeout_url=collector.base_url + "/timeout",
    )


def transactions(sim: RunningSimulator) -> list[dict[str, Any]]:
    response = requests.get(sim.base_url + "/simulator/transactions", timeout=5)
    response.raise_for_status()
    value: list[dict[str, Any]] = response.json()
    return value


def with_deliveries(sim: RunningSimulator, count: int, timeout: float = 5.0) -> list[dict[str, Any]]:
    """The transactions once the first has ``count`` callback deliveries recorded.

    The simulator records a delivery when the receiver's answer is back, a moment after the receiver has
    seen (and acted on) the callback: a test that reads the record right after must wait for it.
    """
    deadline = time.monotonic() + timeout
    records = transactions(sim)
    while (not records or len(records[0]["callback_deliveries"]) < count) and time.monotonic() < deadline:
        time.sleep(0.05)
        records = transactions(sim)
    return records
