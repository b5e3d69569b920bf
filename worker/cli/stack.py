"""Simulator + callback receiver + worker in one process, on free loopback ports: the demo's and tests' stack."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass

from worker.paying.service import WorkerService
from worker.receiver.service import ReceiverService
from worker.settings import Settings
from worker.simulator import RunningSimulator, SimulatorOptions, start_simulator


@dataclass
class LocalStack:
    """``settings`` is what the worker runs with: the simulator's URL and the receiver's ResultURL filled in."""

    settings: Settings
    simulator: RunningSimulator
    receiver: ReceiverService
    worker: WorkerService | None

    def stop(self) -> None:
        if self.worker is not None:
            self.worker.stop(timeout=30)
        self.receiver.stop()
        self.simulator.stop()


def start_local_stack(
    settings: Settings,
    *,
    simulator_options: SimulatorOptions | None = None,
    with_worker: bool = True,
    gateway_url: Callable[[str], str] | None = None,
) -> LocalStack:
    """Start the simulator first (it writes the certificate the worker encrypts with), then receiver, worker.

    ``gateway_url`` maps the simulator's request URL to the one the worker sends to (tests put a fault proxy
    in between); by default the worker talks to the simulator directly.
    """
    simulator = start_simulator(settings, host="127.0.0.1", port=0, options=simulator_options or SimulatorOptions())
    receiver: ReceiverService | None = None
    try:
        url = simulator.url if gateway_url is None else gateway_url(simulator.url)
        settings = dataclasses.replace(settings, mpesa=dataclasses.replace(settings.mpesa, url=url))
        receiver = ReceiverService(settings, host="127.0.0.1", port=0)
        # The configured paths on the receiver's port; the worker's gateway appends the secret token.
        result_url = f"http://127.0.0.1:{receiver.port}{receiver.app.result_base_path}"
        timeout_url = f"http://127.0.0.1:{receiver.port}{receiver.app.queue_timeout_base_path}"
        mpesa = dataclasses.replace(settings.mpesa, result_url=result_url, queue_timeout_url=timeout_url)
        settings = dataclasses.replace(settings, mpesa=mpesa)
        worker = None
        if with_worker:
            worker = WorkerService(settings, metrics_port=None)
            worker.start_in_thread()
    except BaseException:
        if receiver is not None:
            receiver.stop()
        simulator.stop()
        raise
    return LocalStack(settings, simulator, receiver, worker)
