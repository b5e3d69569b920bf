"""The simulator's own Prometheus registry, so that it never mixes with the worker's in one process."""

from __future__ import annotations

from decimal import Decimal

from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest


class SimulatorMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "mpesa_sim_requests",
            "GenericAPIRequests answered, by CommandID and ResponseCode (transport faults by name).",
            ["command", "response_code"],
            registry=self.registry,
        )
        self.results = Counter("mpesa_sim_results", "Results decided, by ResultCode.", ["code"], registry=self.registry)
        self.deliveries = Counter(
            "mpesa_sim_callback_deliveries",
            "Callback POST attempts, by outcome (delivered, http_error, connection_error, abandoned).",
            ["outcome"],
            registry=self.registry,
        )
        self.balance = Gauge(
            "mpesa_sim_utility_balance_kes", "The simulated utility account balance.", registry=self.registry
        )

    def set_balance(self, value: Decimal) -> None:
        self.balance.set(float(value))

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
