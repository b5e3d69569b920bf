"""The ledger's gauges, read every few seconds by each long-running process."""

from __future__ import annotations

from datetime import UTC, datetime

from worker import metrics
from worker.ledger.outbox import OutboxBacklog
from worker.ledger.payout_store import PayoutCensus
from worker.payouts.models import FINAL_STATUSES, PayoutStatus

GAUGE_INTERVAL = 5.0
NON_FINAL_STATUSES = tuple(status for status in PayoutStatus if status not in FINAL_STATUSES)

# Every status from the first scrape: an alert on a series that appears only once it is bad cannot tell
# "fine" from "not exported".
for _status in NON_FINAL_STATUSES:
    metrics.OLDEST_NONFINAL_SECONDS.labels(status=_status.value).set(0)


def update_ledger_gauges(payouts: PayoutCensus, outbox: OutboxBacklog) -> None:
    counts = payouts.count_by_status()
    for status in PayoutStatus:
        metrics.PAYOUTS_BY_STATUS.labels(status=status.value).set(counts.get(status.value, 0))
    now = datetime.now(UTC)
    for status in NON_FINAL_STATUSES:
        oldest = payouts.list_payouts(status=status, limit=1)  # ordered by updated_at
        # A writer whose clock is ahead of ours must not make the age negative.
        age = max((now - oldest[0].updated_at).total_seconds(), 0.0) if oldest else 0.0
        metrics.OLDEST_NONFINAL_SECONDS.labels(status=status.value).set(age)
        if status is PayoutStatus.UNKNOWN:
            metrics.UNKNOWN_OLDEST_SECONDS.set(age)
    metrics.OUTBOX_BACKLOG.set(outbox.backlog())
