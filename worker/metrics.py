"""Every Prometheus metric of the worker and the callback receiver, in one place.

Labels are bounded: outcomes, reasons, codes from the protocol tables; never a payout id or an MSISDN.
The simulator keeps its own registry (see ``worker.simulator``) so that it stays independent of the worker.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram, Info

LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 3.0, 5.0, 10.0, 30.0, 60.0)
FINAL_BUCKETS = (1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 900.0, 3600.0, 21600.0, 86400.0)

BUILD_INFO = Info("mpesa_b2c_build", "Version of the running mpesa-b2c package")

COMMANDS_RECEIVED = Counter("mpesa_b2c_commands_received_total", "Payout commands taken from the queue")
COMMANDS_REJECTED = Counter("mpesa_b2c_commands_rejected_total", "Payout commands rejected before any send", ["reason"])
COMMANDS_DUPLICATE = Counter(
    "mpesa_b2c_commands_duplicate_total", "Payout commands answered from the ledger as duplicates"
)
B2C_CALLS = Counter("mpesa_b2c_gateway_calls_total", "B2C requests sent to the gateway", ["command", "outcome"])
B2C_CALL_SECONDS = Histogram(
    "mpesa_b2c_gateway_call_seconds", "Time of one gateway call", ["command"], buckets=LATENCY_BUCKETS
)
B2C_RETRIES = Counter("mpesa_b2c_gateway_retries_total", "Gateway calls retried because not processed", ["reason"])
PAYOUT_TRANSITIONS = Counter("mpesa_b2c_payout_transitions_total", "Ledger status transitions", ["status"])
COMMAND_TO_FINAL_SECONDS = Histogram(
    "mpesa_b2c_command_to_final_seconds",
    "From command recorded to final status",
    ["status"],
    buckets=FINAL_BUCKETS,
)
RESULTS_RECEIVED = Counter("mpesa_b2c_results_received_total", "Result callbacks received", ["outcome", "result_code"])
RESULTS_UNMATCHED = Counter("mpesa_b2c_results_unmatched_total", "Results for no known payout, kept for review")
RESULTS_CONFLICTING = Counter(
    "mpesa_b2c_results_conflicting_total", "Results contradicting an already final status (not applied)"
)
RESULTS_INVALID = Counter("mpesa_b2c_results_invalid_total", "Callback bodies refused as unparsable or unsafe")
EVENTS_PUBLISHED = Counter("mpesa_b2c_events_published_total", "Events published with confirms", ["routing_key"])
OUTBOX_BACKLOG = Gauge("mpesa_b2c_outbox_backlog", "Events stored but not yet confirmed by the broker")
IN_FLIGHT = Gauge("mpesa_b2c_consumer_in_flight", "Commands being processed by this worker")
KES_PAID = Counter("mpesa_b2c_paid_kes_total", "KES reported paid by results")
KES_FAILED = Counter("mpesa_b2c_failed_kes_total", "KES of payouts that ended failed")
CALLBACK_LAG_SECONDS = Histogram(
    "mpesa_b2c_callback_lag_seconds", "From acceptance by M-PESA to its result", buckets=FINAL_BUCKETS
)
ACCOUNT_BALANCE = Gauge("mpesa_b2c_account_balance_kes", "Account balances as last reported by a result", ["account"])
PAYOUTS_BY_STATUS = Gauge("mpesa_b2c_payouts", "Payouts in the ledger by status", ["status"])
UNKNOWN_OLDEST_SECONDS = Gauge(
    "mpesa_b2c_unknown_oldest_age_seconds", "Age of the oldest payout in status unknown (0 when none)"
)
QUEUE_DEPTH = Gauge("mpesa_b2c_command_queue_depth", "Messages ready in the command queue")
PREFETCH = Gauge("mpesa_b2c_consumer_prefetch", "Prefetch count of this worker's consumer")
DEAD_LETTERS = Counter("mpesa_b2c_dead_letters_total", "Commands copied to the dead-letter queue", ["reason"])
