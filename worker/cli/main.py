"""``mpesa-b2c``: one command, a subcommand per role. Settings come from B2C_* environment variables."""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from types import FrameType

from worker import __version__
from worker.cli.breaker import add_breaker_parser
from worker.cli.dead import add_dead_parser
from worker.cli.demo import run_demo
from worker.cli.lookups import add_lookups_parser
from worker.cli.publish import add_publish_parsers
from worker.errors import B2CError, BrokerUnavailable, ConfigError
from worker.logs import scrub, setup_logging
from worker.paying.service import WorkerService
from worker.receiver.service import ReceiverService
from worker.settings import Settings, load_settings
from worker.simulator import serve
from worker.simulator.cli_args import add_simulator_arguments, options_from_args

EXIT_ERROR = 1
EXIT_CONFIG = 2
EXIT_BROKER = 3


def _on_signals(action: threading.Event | None, stop: object) -> None:
    def handler(signum: int, frame: FrameType | None) -> None:
        del signum, frame
        if action is not None:
            action.set()
        if callable(stop):
            stop()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)


def cmd_worker(settings: Settings, args: argparse.Namespace) -> int:
    service = WorkerService(settings, metrics_host=args.host, metrics_port=args.metrics_port)
    _on_signals(None, service.stop)
    service.run()
    return 0


def cmd_callbacks(settings: Settings, args: argparse.Namespace) -> int:
    stop = threading.Event()
    service = ReceiverService(settings, host=args.host, port=args.port)
    _on_signals(stop, None)
    base = f"http://{args.host}:{service.port}{service.app.result_base_path}"
    print(f"callback receiver on {base}/<B2C_CALLBACK_TOKEN>", file=sys.stderr)
    stop.wait()
    service.stop()
    return 0


def cmd_simulator(settings: Settings, args: argparse.Namespace) -> int:
    serve(settings, host=args.host, port=args.port, options=options_from_args(args))
    return 0


def cmd_demo(settings: Settings, args: argparse.Namespace) -> int:
    return run_demo(settings, timeout=args.timeout)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mpesa-b2c",
        description="M-PESA B2C disbursement worker, callback receiver and G2 simulator. "
        "Configured with B2C_* environment variables (see the README's settings table).",
    )
    parser.add_argument("--version", action="version", version=f"mpesa-b2c {__version__}")
    sub = parser.add_subparsers(dest="role", required=True, metavar="ROLE")

    p = sub.add_parser("worker", help="consume payout commands and pay them through M-PESA")
    p.add_argument("--host", default="127.0.0.1", help="address for /metrics and /healthz (default 127.0.0.1)")
    p.add_argument("--metrics-port", type=int, default=8330, help="port for /metrics and /healthz (default 8330)")
    p.set_defaults(func=cmd_worker)

    p = sub.add_parser("callbacks", help="receive M-PESA results at the path of B2C_RESULT_URL")
    p.add_argument("--host", default="127.0.0.1", help="listen address (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8320, help="listen port (default 8320)")
    p.set_defaults(func=cmd_callbacks)

    p = sub.add_parser("simulator", help="run the M-PESA G2 simulator (fault injection by MSISDN or flag)")
    add_simulator_arguments(p)
    p.set_defaults(func=cmd_simulator)

    add_publish_parsers(sub)

    p = sub.add_parser("demo", help="run simulator, receiver and worker locally and pay a few demo payouts")
    p.add_argument("--timeout", type=float, default=60.0, help="give up after this many seconds (default 60)")
    p.set_defaults(func=cmd_demo)

    add_dead_parser(sub)
    add_breaker_parser(sub)
    add_lookups_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        settings = load_settings()
    except ConfigError as exc:
        print(f"mpesa-b2c: configuration error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    setup_logging(settings.log_level, secrets=settings.secret_values())
    try:
        return int(args.func(settings, args))
    except BrokerUnavailable as exc:
        print(f"mpesa-b2c: {scrub(str(exc))}", file=sys.stderr)
        return EXIT_BROKER
    except B2CError as exc:
        # Driver messages can quote a URL's password; the scrubber knows it (secret_values).
        print(f"mpesa-b2c: {scrub(str(exc))}", file=sys.stderr)
        return EXIT_ERROR


if __name__ == "__main__":
    sys.exit(main())
