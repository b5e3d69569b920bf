"""The fault suite: batches of payouts through every simulator scenario, measured from ledger and simulator.

Each *group* runs in its own in-process stack (simulator + receiver + worker, PostgreSQL ledger, its own
queues): the scenarios that open the circuit breaker (insufficient funds, wrong credential) must not hold
back the others. A scenario's figures come from the worker's ledger (status, review flag, created/updated
times) and from the simulator's ``/simulator/transactions`` (how often each OriginatorConversationID was
actually paid) — never from what the worker says about itself alone.

Lost = a payout neither final nor held nor ``unknown``-and-flagged at the end, or one reported ``failed``
although the simulator paid it, or ``completed`` although it was never paid.
"""

from __future__ import annotations

import contextlib
import json
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import pika
import psycopg
import requests

from tests.support.commands import command
from tests.support.flow import breaker, queued
from tests.support.pipeline import EventLog, declare
from tests.support.services import POSTGRES_ADMIN_URL, RABBITMQ_URL
from tests.support.waiting import wait_until
from worker.amqp.topology import delay_queue_name
from worker.cli.publish import publish_commands
from worker.cli.stack import LocalStack, start_local_stack
from worker.ledger import open_ledger
from worker.payouts.models import PayoutStatus, originator_conversation_id
from worker.settings import Settings
from worker.simulator import RunningSimulator, SimulatorOptions
from worker.simulator.scenarios import SCENARIOS, Scenario

# Tight lookup and flow timings: every lookup, resend and probe happens within seconds.
FAST_ENV = {
    "B2C_LOOKUP_AFTER_SECONDS": "0.3",
    "B2C_LOOKUP_INTERVAL_SECONDS": "0.5",
    "B2C_LOOKUP_MAX_ATTEMPTS": "4",
    "B2C_LOOKUP_MAX_SECONDS": "20",
    "B2C_RESULT_TIMEOUT_SECONDS": "1",
    "B2C_READ_TIMEOUT": "1",
    "B2C_CONNECT_TIMEOUT": "1",
    "B2C_RETRY_DELAYS": "0.2,0.5",
    "B2C_RETRY_ATTEMPTS": "2",
    "B2C_RETRY_MAX_SECONDS": "2",
    "B2C_BREAKER_PROBE_SECONDS": "0.5",
    "B2C_CONCURRENCY": "8",
    "B2C_OUTBOX_INTERVAL": "0.5",
}
SIM_OPTIONS = SimulatorOptions(result_delay=0.05, query_result_delay=0.05, queue_timeout_delay=0.1, slow_seconds=2.0)

# Scenarios that stop the whole worker (circuit breaker): each in a stack of its own.
ISOLATED = (Scenario.INSUFFICIENT_FUNDS, Scenario.WRONG_CREDENTIAL)
# M-PESA itself never answers for these (no result, and status queries unanswered): ``unknown`` + flagged is
# an allowed end. In the simulator every status query is answered, so in practice none ends there.
NEVER_ANSWERED: tuple[Scenario, ...] = ()
# The designed end of a wrong credential: one request fails (ResultCode 18), the breaker opens and the rest
# stays queued until an operator closes it (``mpesa-b2c breaker close``): held, not failed, not sent. Funds:
# the breaker opens on ResultCode 1 and probes with one payout at growing intervals; the simulator's magic
# number fails every probe (whatever the balance), so the batch is measured once the rest is held.
HOLDS = (Scenario.WRONG_CREDENTIAL, Scenario.INSUFFICIENT_FUNDS)


class Measured(Protocol):
    """What measuring needs: an in-process stack here, or the crash tests' rig (``tests.crash.conftest``)."""

    @property
    def settings(self) -> Settings: ...

    @property
    def simulator(self) -> RunningSimulator: ...


@dataclass
class Row:
    scenario: str
    payouts: int = 0
    paid_once: int = 0
    double_paid: int = 0
    lost: int = 0
    final: int = 0
    completed: int = 0
    failed: int = 0
    unknown_flagged: int = 0
    held: int = 0
    requests: int = 0
    seconds_to_final: list[float] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def cells(self) -> list[str]:
        times = sorted(self.seconds_to_final)
        median = times[len(times) // 2] if times else None
        timing = f"{median:.1f} / {times[-1]:.1f}" if median is not None else "-"
        return [
            self.scenario,
            str(self.payouts),
            str(self.paid_once),
            str(self.double_paid),
            str(self.lost),
            f"{self.final} ({self.completed} ok, {self.failed} failed)",
            str(self.unknown_flagged),
            str(self.held),
            str(self.requests),
            timing,
        ]


HEADER = [
    "scenario",
    "payouts",
    "paid exactly once",
    "double-paid",
    "lost",
    "final",
    "still unknown (flagged)",
    "held (queued, breaker open)",
    "payment requests seen by M-PESA",
    "time to final median / max (s)",
]


def table(rows: list[Row]) -> str:
    lines = ["| " + " | ".join(HEADER) + " |", "|" + "|".join("---" for _ in HEADER) + "|"]
    lines += ["| " + " | ".join(row.cells()) + " |" for row in rows]
    return "\n".join(lines) + "\n"


@dataclass(frozen=True)
class Batch:
    scenario: str
    msisdn: str | None  # None: normal numbers
    count: int


def batches(count: int) -> list[Batch]:
    """One batch per simulator scenario (normal: ordinary numbers)."""
    found = []
    for info in SCENARIOS:
        n = count
        if info.scenario is Scenario.SLOW_RESPONSE:
            n = max(1, count // 2)  # each holds a worker thread for the read timeout
        found.append(Batch(info.scenario.value, info.msisdn, n))
    return found


@contextlib.contextmanager
def group_stack(make_settings: Callable[..., Settings], env: dict[str, str]) -> Iterator[LocalStack]:
    """A stack with its own PostgreSQL database and queues, all removed afterwards."""
    run = uuid.uuid4().hex[:10]
    database = f"b2c_fault_{run}"
    with psycopg.connect(POSTGRES_ADMIN_URL, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{database}"')
    names = {
        "B2C_AMQP_URL": RABBITMQ_URL,
        "B2C_COMMAND_QUEUE": f"test.{run}.commands",
        "B2C_DEAD_QUEUE": f"test.{run}.dead",
        "B2C_EVENTS_EXCHANGE": f"test.{run}.events",
        "B2C_DATABASE_URL": f"postgresql://postgres@127.0.0.1:5432/{database}",
    }
    settings = make_settings(**{**FAST_ENV, **env, **names})
    declare(settings)
    events = EventLog(settings.amqp.url, settings.amqp.events_exchange)  # a consumer of the events, as in life
    stack = start_local_stack(settings, simulator_options=SIM_OPTIONS)
    try:
        yield stack
    finally:
        stack.stop()
        events.close()
        with contextlib.suppress(pika.exceptions.AMQPError):
            connection = pika.BlockingConnection(pika.URLParameters(RABBITMQ_URL))
            channel = connection.channel()
            for seconds in settings.flow.retry_delays:
                channel.queue_delete(delay_queue_name(names["B2C_COMMAND_QUEUE"], seconds))
            channel.queue_delete(names["B2C_COMMAND_QUEUE"])
            channel.queue_delete(names["B2C_DEAD_QUEUE"])
            channel.exchange_delete(names["B2C_EVENTS_EXCHANGE"])
            connection.close()
        with psycopg.connect(POSTGRES_ADMIN_URL, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')


def commands(batch: Batch, tag: str) -> list[dict[str, Any]]:
    return [command(f"{tag}-{batch.scenario}", n, batch.msisdn, digits=3) for n in range(batch.count)]


def publish(stack: LocalStack, cmds: list[dict[str, Any]]) -> None:
    bodies = [json.dumps(c).encode() for c in cmds]
    publish_commands(stack.settings.amqp.url, stack.settings.amqp.command_queue, bodies)


def payments(stack: Measured) -> list[dict[str, Any]]:
    response = requests.get(f"{stack.simulator.base_url}/simulator/transactions", timeout=5)
    response.raise_for_status()
    return [t for t in response.json() if t.get("command_id") != "TransactionStatusQuery"]


def count_by_originator(found: list[dict[str, Any]]) -> dict[str, int]:
    counted: dict[str, int] = {}
    for t in found:
        counted[t["originator_conversation_id"]] = counted.get(t["originator_conversation_id"], 0) + 1
    return counted


def _settled(stack: Measured, ids: list[str], holds: bool) -> bool:
    with contextlib.closing(open_ledger(stack.settings.ledger)) as ledger:
        open_ones = 0
        for pid in ids:
            payout = ledger.payouts.get(pid)
            if payout is None or not payout.is_final:
                state = ledger.lookups.lookup_state(pid) if payout is not None else None
                if not (state is not None and state.flagged_for_review):
                    open_ones += 1
    if open_ones == 0:
        return True
    return holds and breaker(stack.settings).open and queued(stack.settings) == open_ones


def run_group(
    make_settings: Callable[..., Settings],
    group: list[Batch],
    *,
    tag: str,
    env: dict[str, str] | None = None,
    timeout: float = 60.0,
    warm_up: bool = True,
    label: str | None = None,
    inspect: Callable[[LocalStack], None] | None = None,
    before: Callable[[LocalStack], None] | None = None,
    after: Callable[[LocalStack], None] | None = None,
) -> list[Row]:
    """Publish every batch of ``group`` into one stack, wait until settled (or ``timeout``), measure."""
    with group_stack(make_settings, env or {}) as stack:
        if warm_up:
            # The worker's first request is a lone canary until a result proves the credential: a normal
            # payout, so that no slow or faulty scenario holds everything else behind it.
            warm = Batch("warm-up", None, 1)
            publish(stack, commands(warm, tag))
            wait_until(lambda: _settled(stack, [f"{tag}-warm-up-000"], False), 20, "the warm-up payout")
        cmds = {b.scenario: commands(b, tag) for b in group}
        if before is not None:
            before(stack)
        publish(stack, [c for cs in cmds.values() for c in cs])
        if after is not None:
            after(stack)
        ids = [str(c["payout_id"]) for cs in cmds.values() for c in cs]
        holds = any(b.scenario in HOLDS for b in group)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and not _settled(stack, ids, holds):
            time.sleep(0.25)
        if holds:
            time.sleep(1.5)  # several probe intervals: prove the held ones stay held and unsent
        if inspect is not None:
            inspect(stack)
        return [measure(stack, b, cmds[b.scenario], label) for b in group]


def measure(stack: Measured, batch: Batch, cmds: list[dict[str, Any]], label: str | None = None) -> Row:
    settings = stack.settings
    sent = payments(stack)
    paid = count_by_originator([t for t in sent if t.get("paid")])
    requested = count_by_originator(sent)
    row = Row(label or batch.scenario, payouts=len(cmds))
    held_in_queue = queued(settings) if batch.scenario in HOLDS else 0
    with contextlib.closing(open_ledger(settings.ledger)) as ledger:
        for c in cmds:
            pid = str(c["payout_id"])
            ocid = originator_conversation_id(settings.mpesa.shortcode, settings.mpesa.org_name, pid)
            times_paid = paid.get(ocid, 0)
            row.requests += requested.get(ocid, 0)
            row.paid_once += times_paid == 1
            row.double_paid += times_paid > 1
            payout = ledger.payouts.get(pid)
            if payout is not None and payout.is_final:
                row.final += 1
                row.seconds_to_final.append((payout.updated_at - payout.created_at).total_seconds())
                if payout.status is PayoutStatus.COMPLETED:
                    row.completed += 1
                    if times_paid == 0:
                        row.lost += 1
                        row.notes.append(f"{pid}: completed but never paid")
                else:
                    row.failed += 1
                    if times_paid > 0:
                        row.lost += 1
                        row.notes.append(f"{pid}: reported {payout.status} but paid")
                continue
            state = ledger.lookups.lookup_state(pid) if payout is not None else None
            if payout is not None and payout.status is PayoutStatus.UNKNOWN and state and state.flagged_for_review:
                row.unknown_flagged += 1
            elif held_in_queue > 0 and times_paid == 0 and (payout is None or payout.status is PayoutStatus.RECEIVED):
                row.held += 1
            else:
                row.lost += 1
                row.notes.append(f"{pid}: ended {payout.status if payout else 'unseen'}")
    return row


def run_suite(
    make_settings: Callable[..., Settings],
    count: int = 10,
    timeout: float = 60.0,
    *,
    env: dict[str, str] | None = None,
    inspect: Callable[[LocalStack], None] | None = None,
) -> list[Row]:
    every = batches(count)
    shared = [b for b in every if b.scenario not in ISOLATED]
    common: dict[str, Any] = {"timeout": timeout, "env": env, "inspect": inspect}
    rows = run_group(make_settings, shared, tag="mix", **common)
    for b in every:
        if b.scenario in ISOLATED:
            # Cold: the batch's first request is the worker's canary (credential not yet proven).
            rows += run_group(
                make_settings, [b], tag=b.scenario[:5], warm_up=False, label=f"{b.scenario} (cold)", **common
            )
            # Warm: a normal payout proved the credential first; the whole batch is in flight at once.
            rows += run_group(make_settings, [b], tag=b.scenario[:5], label=f"{b.scenario} (warm)", **common)
    order = [b.scenario for b in every]
    rows = sorted(rows, key=lambda r: order.index(r.scenario.split(" ")[0]))
    return rows + run_balance_run_down(make_settings, **common)


RUN_DOWN = "normal (balance run down mid-batch)"


def set_balance(stack: LocalStack, utility: str | None) -> None:
    body = {} if utility is None else {"utility": utility}
    requests.post(f"{stack.simulator.base_url}/simulator/balance", json=body, timeout=5).raise_for_status()


def run_balance_run_down(
    make_settings: Callable[..., Settings],
    *,
    timeout: float,
    env: dict[str, str] | None = None,
    inspect: Callable[[LocalStack], None] | None = None,
) -> list[Row]:
    """20 ordinary payouts with float for four: the breaker opens on ResultCode 1, the rest stays queued;
    the balance is restored once it has opened and a probe resumes the batch (the Done-when case)."""

    def restore_when_open(stack: LocalStack) -> None:
        wait_until(lambda: breaker(stack.settings).open, 20, "the breaker to open on ResultCode 1")
        time.sleep(1.0)  # a few probe intervals with the account still empty
        set_balance(stack, None)

    return run_group(
        make_settings,
        [Batch("normal", None, 20)],
        tag="rundown",
        env={**(env or {}), "B2C_CONCURRENCY": "2"},
        timeout=timeout,
        inspect=inspect,
        label=RUN_DOWN,
        before=lambda stack: set_balance(stack, "450.00"),
        after=restore_when_open,
    )


def write_table(rows: list[Row], path: Path) -> str:
    text = table(rows)
    path.write_text(text)
    return text
