"""A wire-faithful M-PESA G2 gateway for local runs and tests, with fault injection (see ``scenarios``)."""

from worker.simulator.options import SimulatorOptions
from worker.simulator.scenarios import Scenario, scenario_table_markdown
from worker.simulator.server import RunningSimulator, serve, start_simulator

__all__ = [
    "RunningSimulator",
    "Scenario",
    "SimulatorOptions",
    "scenario_table_markdown",
    "serve",
    "start_simulator",
]
