"""The simulator's HTTP surface: the G2 endpoint, introspection, metrics and the control endpoints."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterable
from decimal import Decimal, InvalidOperation
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST

from worker.simulator.engine import SimulatedGateway
from worker.simulator.scenarios import SCENARIOS, parse_scenario

log = logging.getLogger(__name__)

StartResponse = Callable[..., Any]
REQUEST_PATH = "/mminterface/request"


class DropConnection(Exception):
    """Raised by the app to make the server reset the connection instead of answering."""


class _HttpError(Exception):
    def __init__(self, status: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class SimulatorApp:
    def __init__(self, gateway: SimulatedGateway) -> None:
        self.gateway = gateway
        self.options = gateway.options

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        method = environ.get("REQUEST_METHOD", "GET")
        path = environ.get("PATH_INFO", "/")
        try:
            if path == REQUEST_PATH:
                self._allow(method, "POST")
                return self._soap(environ, start_response)
            routes: dict[tuple[str, str], Callable[[dict[str, Any]], Any]] = {
                ("GET", "/simulator/transactions"): lambda env: self.gateway.state.snapshot(),
                ("POST", "/simulator/balance"): self._set_balance,
                ("GET", "/simulator/balance"): lambda env: self._balance(),
                ("GET", "/simulator/faults"): lambda env: self._fault(),
                ("POST", "/simulator/faults"): self._set_fault,
                ("DELETE", "/simulator/faults"): self._clear_fault,
                ("POST", "/simulator/reset"): self._reset,
                ("GET", "/simulator/scenarios"): lambda env: self._scenarios(),
                ("GET", "/healthz"): lambda env: {"status": "ok"},
            }
            if path == "/metrics":
                self._allow(method, "GET")
                return _respond(start_response, "200 OK", CONTENT_TYPE_LATEST, self.gateway.metrics.exposition())
            handler = routes.get((method, path))
            if handler is None:
                if any(route_path == path for _, route_path in routes):
                    raise _HttpError("405 Method Not Allowed", f"{method} is not allowed on {path}")
                raise _HttpError("404 Not Found", f"no such endpoint {path}")
            return _json(start_response, "200 OK", handler(environ))
        except _HttpError as error:
            return _json(start_response, error.status, {"error": error.message})

    @staticmethod
    def _allow(method: str, allowed: str) -> None:
        if method != allowed:
            raise _HttpError("405 Method Not Allowed", f"use {allowed}")

    def _body(self, environ: dict[str, Any]) -> bytes:
        try:
            length = int(environ.get("CONTENT_LENGTH") or 0)
        except ValueError as exc:
            raise _HttpError("400 Bad Request", "invalid Content-Length") from exc
        if length > self.options.max_body_bytes:
            raise _HttpError("413 Payload Too Large", f"body over {self.options.max_body_bytes} bytes")
        stream = environ["wsgi.input"]
        data: bytes = stream.read(length) if length else b""
        return data

    def _soap(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        body = self._body(environ)
        reply = self.gateway.handle(body)
        stopping = self.gateway.stopping
        if self.options.latency:
            stopping.wait(self.options.latency)
        if reply.wait_for is not None:
            reply.wait_for.wait(self.options.before_response_wait)
        if reply.hold:
            stopping.wait(reply.hold)
        if reply.drop:
            raise DropConnection
        status = "200 OK" if reply.status == 200 else "500 Internal Server Error"
        return _respond(start_response, status, "text/xml; charset=utf-8", reply.body)

    def _json_body(self, environ: dict[str, Any]) -> dict[str, Any]:
        raw = self._body(environ)
        if not raw.strip():
            return {}
        try:
            value = json.loads(raw, parse_float=Decimal)
        except ValueError as exc:
            raise _HttpError("400 Bad Request", "the body is not JSON") from exc
        if not isinstance(value, dict):
            raise _HttpError("400 Bad Request", "the body must be a JSON object")
        return value

    def _balance(self) -> dict[str, str]:
        state = self.gateway.state
        with state.lock:
            return {"utility": f"{state.utility:.2f}", "charges": f"{state.charges:.2f}"}

    def _set_balance(self, environ: dict[str, Any]) -> dict[str, str]:
        body = self._json_body(environ)
        state = self.gateway.state
        if "utility" not in body:
            state.restore_balance()
        else:
            try:
                value = Decimal(str(body["utility"]))
            except InvalidOperation as exc:
                raise _HttpError("400 Bad Request", "utility must be a decimal amount") from exc
            if not value.is_finite() or value < 0:
                raise _HttpError("400 Bad Request", "utility must be a non-negative amount")
            with state.lock:
                state.utility = value.quantize(Decimal("0.01"))
        self.gateway.metrics.set_balance(state.utility)
        log.info("utility balance set to %s", state.utility)
        return self._balance()

    def _fault(self) -> dict[str, Any]:
        state = self.gateway.state
        with state.lock:
            return {
                "scenario": state.fault.value if state.fault else None,
                "remaining": state.fault_remaining,
            }

    def _set_fault(self, environ: dict[str, Any]) -> dict[str, Any]:
        body = self._json_body(environ)
        try:
            scenario = parse_scenario(str(body.get("scenario", "")))
        except ValueError as exc:
            raise _HttpError("400 Bad Request", str(exc)) from exc
        count = body.get("count")
        if count is not None and (isinstance(count, bool) or not isinstance(count, int) or count < 1):
            raise _HttpError("400 Bad Request", "count must be a positive integer (or absent: until cleared)")
        self.gateway.state.set_fault(scenario, count)
        log.info("global fault %s set for %s requests", scenario.value, count or "all")
        return self._fault()

    def _clear_fault(self, environ: dict[str, Any]) -> dict[str, Any]:
        self.gateway.state.set_fault(None, None)
        return self._fault()

    def _reset(self, environ: dict[str, Any]) -> dict[str, Any]:
        self.gateway.reset()
        log.info("simulator state reset")
        return {"reset": True, **self._balance()}

    @staticmethod
    def _scenarios() -> list[dict[str, Any]]:
        return [
            {"scenario": info.scenario.value, "msisdn": info.msisdn, "description": info.description}
            for info in SCENARIOS
        ]


def _respond(start_response: StartResponse, status: str, content_type: str, body: bytes) -> list[bytes]:
    start_response(status, [("Content-Type", content_type), ("Content-Length", str(len(body)))])
    return [body]


def _json(start_response: StartResponse, status: str, value: Any) -> list[bytes]:
    body = json.dumps(value, indent=1, default=str).encode("utf-8")
    return _respond(start_response, status, "application/json", body)
