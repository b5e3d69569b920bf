"""Every Prometheus metric of the worker and the callback receiver, in one place.

Labels are bounded: outcomes, reasons, codes from the protocol tables; never a payout id or an MSISDN.
The simulator keeps its own registry (see ``worker.simulator``) so that it stays independent of the worker.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Mapping

from prometheus_client import Counter, Gauge, Histogram, Info

LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 3.0, 5.0, 10.0, 30.0, 60.0)
FINAL_BUCKETS = (1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 900.0, 3600.0, 21600.0, 86400.0)

BUILD_INFO = Info("mpesa_b2c_build", "Version of the running mpesa-b2c package")

COMMANDS_RECEIVED = Counter("mpesa_b2c_commands_received_total", "Payout commands taken from the queue")
COMMANDS_REJECTED = Counter("mpesa_b2c_commands_rejected_total", "Payout commands rejected before any send", ["reason"])
COMMANDS_REFUSED = Counter(
    "mpesa_b2c_commands_refused_total",
    "Payout commands refused for a payout_id already recorded, whose payout stays untouched",
    ["reason"],
)
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
RESULTS_INVALID = Counter(
    "mpesa_b2c_results_invalid_total", "Callback bodies that could not be parsed (kept in the quarantine, unparsable)"
)
RESULTS_QUARANTINED = Counter(
    "mpesa_b2c_results_quarantined_total",
    "Results kept aside unapplied: not matching their payout, or matching none",
    ["reason"],
)
CALLBACKS_REFUSED = Counter(
    "mpesa_b2c_callbacks_refused_total",
    "Requests to the receiver refused before parsing (token, network, size, type, method)",
    ["reason"],
)
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
OLDEST_NONFINAL_SECONDS = Gauge(
    "mpesa_b2c_oldest_nonfinal_age_seconds",
    "Time the oldest payout in each non-final status has been in it (0 when none)",
    ["status"],
)
UNKNOWN_SECONDS = Histogram(
    "mpesa_b2c_unknown_duration_seconds",
    "Time a payout spent in status unknown before it was settled",
    buckets=FINAL_BUCKETS,
)
QUEUE_DEPTH = Gauge("mpesa_b2c_command_queue_depth", "Messages ready in the command queue")
PREFETCH = Gauge("mpesa_b2c_consumer_prefetch", "Prefetch count of this worker's consumer")
DEAD_LETTERS = Counter("mpesa_b2c_dead_letters_total", "Commands copied to the dead-letter queue", ["reason"])
STALE_ANSWERS = Counter(
    "mpesa_b2c_stale_answers_total",
    "Answers to a send whose payout was claimed again meanwhile; kept, applied only if an acceptance",
    ["answer", "action"],
)
DEAD_QUEUE_DEPTH = Gauge(
    "mpesa_b2c_dead_queue_depth",
    "Messages ready in the dead-letter queue, the broker's own dead-lettering (delivery limit) included",
)
# Looking up unknowns and lost results (worker.paying.lookups, worker.ledger.lookup_store).
LOOKUPS = Counter(
    "mpesa_b2c_lookups_total",
    "Lookups of payouts in doubt (a status query, or a resend with the same id), by trigger and action",
    ["trigger", "action"],
)
STATUS_QUERIES = Counter(
    "mpesa_b2c_status_queries_total",
    "TransactionStatusQuery requests sent, by the gateway's synchronous answer",
    ["outcome"],
)
STATUS_QUERY_ANSWERS = Counter(
    "mpesa_b2c_status_query_answers_total",
    "Status query results received, by what they said about the payment looked up",
    ["verdict"],
)
PAYOUTS_FLAGGED = Gauge(
    "mpesa_b2c_payouts_flagged_for_review",
    "Payouts whose automatic lookups ran out (or contradicted them), not final: a human must look",
)
QUEUE_TIMEOUTS = Counter("mpesa_b2c_queue_timeouts_total", "notifyQueueTimeout notices received and stored")
# Flow control towards the gateway (worker.flow: limiter, breaker, deferral, control).
CIRCUIT_OPEN = Gauge(
    "mpesa_b2c_circuit_open",
    "1 while the circuit breaker (shared by every replica) stops sends, by condition; 0 otherwise",
    ["reason"],
)
CIRCUIT_OPENINGS = Counter(
    "mpesa_b2c_circuit_openings_total", "Circuit breaker openings (or escalations) made by this process", ["reason"]
)
CONSUMER_PAUSED = Gauge("mpesa_b2c_consumer_paused", "1 while this worker takes no commands (circuit breaker open)")
COMMANDS_HELD = Counter(
    "mpesa_b2c_commands_held_total",
    "Commands put back unsent, not counted as a retry (breaker open, no rate slot, credential unproven, unreachable)",
    ["reason"],
)
DEFERRALS = Counter(
    "mpesa_b2c_deferrals_total", "Commands M-PESA did not process (busy, throttled), sent to a delay tier", ["tier"]
)
RATE_LIMIT_EFFECTIVE = Gauge(
    "mpesa_b2c_rate_limit_per_second",
    "Gateway requests per second per shortcode allowed now, after adaptive slow-down (0: no limit)",
)
RATE_LIMIT_WAIT_SECONDS = Histogram(
    "mpesa_b2c_rate_limit_wait_seconds",
    "Time a gateway request waited for its rate-limit slot",
    buckets=(0.0, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0),
)
RATE_LIMIT_ADJUSTMENTS = Counter(
    "mpesa_b2c_rate_limit_adjustments_total",
    "Changes of the effective rate: down on a throttling answer, up on an accepted request",
    ["direction"],
)


BoundedSeries = Mapping[Counter | Histogram, Iterable[Mapping[str, str]]]


def every(**values: Iterable[str]) -> list[dict[str, str]]:
    """Every combination of the given label values, for :func:`start_at_zero`."""
    names = list(values)
    return [
        dict(zip(names, combo, strict=True)) for combo in itertools.product(*(map(str, v) for v in values.values()))
    ]


def start_at_zero(series: BoundedSeries) -> None:
    """Create every series of a closed label set at 0 when a process starts.

    A labelled series exists only from its first increment, so it is born at 1 and ``rate()``/``increase()``
    never see that first dead letter or rejection. Counters and histograms only: a gauge at 0 would be a claim
    (a balance of 0 KES), not an absence of events.
    """
    for metric, label_sets in series.items():
        for labels in label_sets:
            metric.labels(**labels)
