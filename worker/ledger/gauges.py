"""The ledger's gauges, read every few seconds by each long-running process."""

from __future__ import annotations

from datetime import UTC, datetime

from worker import metrics
from worker.ledger.outbox import OutboxBacklog
from worker.ledger.payout_store import PayoutCensus
from worker.payouts.models import PayoutStatus

GAUGE_INTERVAL = 5.0


def update_ledger_gauges(payouts: PayoutCensus, outbox: OutboxBacklog) -> None:
    counts = payouts.count_by_status()
    for status in PayoutStatus:
        metrics.PAYOUTS_BY_STATUS.labels(status=status.value).set(counts.get(status.value, 0))
    oldest = payouts.list_payouts(status=PayoutStatus.UNKNOWN, limit=1)  # ordered by updated_at
    age = (datetime.now(UTC) - oldest[0].updated_at).total_seconds() if oldest else 0.0
    metrics.UNKNOWN_OLDEST_SECONDS.set(age)
    metrics.OUTBOX_BACKLOG.set(outbox.backlog())
