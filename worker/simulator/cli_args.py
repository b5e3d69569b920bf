"""The ``mpesa-b2c simulator`` command-line flags, kept next to the options they fill."""

from __future__ import annotations

import argparse
import textwrap

from worker.simulator.options import SimulatorOptions
from worker.simulator.scenarios import SCENARIOS, parse_scenario


def _non_negative(text: str) -> float:
    value = float(text)
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a non-negative number of seconds")
    return value


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive integer")
    return value


def _scenario_help() -> str:
    lines = ["Scenarios (by recipient MSISDN, or for all payments with --fault / POST /simulator/faults):"]
    for info in SCENARIOS:
        number = info.msisdn or "any other"
        text = f"{number:<13} {info.scenario.value}: {info.description.replace('`', '')}"
        lines.append(textwrap.fill(text, width=100, initial_indent="  ", subsequent_indent=" " * 16))
    return "\n".join(lines)


def add_simulator_arguments(parser: argparse.ArgumentParser, *, include_address: bool = True) -> None:
    """Add the simulator's flags; ``include_address`` False when the caller defines --host/--port itself."""
    if parser.formatter_class is argparse.HelpFormatter:
        parser.formatter_class = argparse.RawDescriptionHelpFormatter
    if include_address:
        parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default %(default)s)")
        parser.add_argument("--port", type=int, default=8310, help="port to listen on (default %(default)s)")
    timing = parser.add_argument_group("timing")
    timing.add_argument(
        "--latency",
        type=_non_negative,
        default=0.0,
        metavar="SECONDS",
        help="delay added before every GenericAPIResponse (default %(default)s)",
    )
    timing.add_argument(
        "--result-delay",
        type=_non_negative,
        default=1.0,
        metavar="SECONDS",
        help="time from accepting a request to POSTing its result (default %(default)s)",
    )
    timing.add_argument(
        "--queue-timeout-delay",
        type=_non_negative,
        default=None,
        metavar="SECONDS",
        help="time from a cached answer to the notifyQueueTimeout POST (default: the result delay)",
    )
    timing.add_argument(
        "--max-age",
        type=_non_negative,
        default=600.0,
        metavar="SECONDS",
        help="requests whose Transaction/Timestamp is older fail with result 19 (default %(default)s)",
    )
    timing.add_argument(
        "--callback-attempts",
        type=_positive_int,
        default=4,
        metavar="N",
        help="tries per callback before giving up, on non-2xx or connection errors (default %(default)s)",
    )
    timing.add_argument(
        "--callback-backoff",
        type=_non_negative,
        default=1.0,
        metavar="SECONDS",
        help="wait before the first callback retry, doubling after each (default %(default)s)",
    )
    faults = parser.add_argument_group("fault injection", _scenario_help())
    faults.add_argument(
        "--fault",
        choices=[info.scenario.value for info in SCENARIOS],
        default=None,
        metavar="SCENARIO",
        help="apply SCENARIO to every payment whose recipient is not a magic number (see the list above)",
    )
    faults.add_argument(
        "--fault-count",
        type=_positive_int,
        default=None,
        metavar="N",
        help="apply --fault to the next N payments only (default: all)",
    )
    faults.add_argument(
        "--slow-seconds",
        type=_non_negative,
        default=None,
        metavar="SECONDS",
        help="how long slow_response holds its answer (default: B2C_READ_TIMEOUT + 5)",
    )
    faults.add_argument(
        "--throttle-tries",
        type=int,
        default=2,
        metavar="N",
        help="throttled refuses the first N tries of an OriginatorConversationID (default %(default)s)",
    )


def options_from_args(ns: argparse.Namespace) -> SimulatorOptions:
    """The options the parsed flags describe; ValueError for an inconsistent combination."""
    return SimulatorOptions(
        latency=ns.latency,
        result_delay=ns.result_delay,
        queue_timeout_delay=ns.queue_timeout_delay,
        max_age_seconds=ns.max_age,
        callback_attempts=ns.callback_attempts,
        callback_backoff=ns.callback_backoff,
        fault=parse_scenario(ns.fault) if ns.fault else None,
        fault_count=ns.fault_count,
        slow_seconds=ns.slow_seconds,
        throttle_tries=ns.throttle_tries,
    )
