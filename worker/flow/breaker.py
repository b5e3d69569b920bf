"""The circuit breaker: stop sending when the gateway cannot take payments, and resume when it can.

It opens, for one shortcode and every replica at once (the state is a row in the ledger's database, see
:mod:`worker.ledger.flow_state`), on four conditions, each with its own way back:

``unreachable``
    ``B2C_BREAKER_THRESHOLD`` consecutive attempts of this process failed to connect (nothing was sent).
    Probe: every ``B2C_BREAKER_PROBE_SECONDS`` a plain TCP connect to the gateway's host and port; it sends
    no request, so it can neither pay nor lock anything. Success closes the breaker; if the gateway still
    fails, the next attempts open it again.
``funds``
    A result said the utility account cannot pay (ResultCode 1, or 5 "below minimum balance"; the receiver
    stores it and the breaker reads it from the ledger), or a request was refused 100000012. Status queries
    (lookups, no money) go on. Probe: one real queued payout, the only payment allowed fleet-wide while the
    probe runs. Its result decides: paid (0)
    closes the breaker; still no funds leaves it open and the next probe waits twice as long (up to 32
    intervals). Money-safe: the probe is an ordinary payout with its own stored OriginatorConversationID,
    and a failed probe is a certain "nothing paid". Its cost is that payout ending ``failed`` (reason
    ``funds``), so probes back off; ``mpesa-b2c breaker close`` after a top-up resumes at once.
``credential`` and ``config``
    A result said the initiator credential is wrong or not permitted (18, 20-22, 28, 31, 32, 44, 48, 50), or
    the SP authentication failed (100000007): ``credential``. The SP, service or API is not in a usable
    state, or has no permission or route (100000006, 8, 9, 10, 13): ``config``. No automatic probe: every
    payment or status query carries the same credential, and repeated failures lock the operator account
    (8006). An operator fixes the cause and runs ``mpesa-b2c breaker close``.

So that a wrong credential costs one failed request, not one per thread: until a result has proven the
credential (paid, failed for an account or limit reason, or "not found" for a status query), a process sends
one request (the *canary*, at most one in flight fleet-wide) and nothing else. The other threads wait for it
(a few seconds at most) or put their command back. A result for the canary that says "credential" opens
the breaker; the canary was the only request sent with that credential.

The proof is shared through the ledger (``credential_proofs``), keyed by the credential's *fingerprint*
(:func:`credential_fingerprint`): a process, or a restart, whose credential was already proven sends freely
at once; one whose credential differs in any part (a password rotated on one replica) proves its own. A
credential condition starts a new credential epoch and deletes every proof of the shortcode, so every
process proves its credential again.

While the breaker is open the worker takes no commands (its consumer is cancelled, so commands stay in the
queue); the reason is in the log, in ``mpesa_b2c_circuit_open{reason}`` and in the worker's ``/healthz``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import socket
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal
from urllib.parse import urlsplit

from worker import metrics
from worker.errors import B2CError
from worker.gateway.g2 import NOT_SENT_REASONS, AttemptReason, HoldReason
from worker.ledger.flow_state import (
    BreakerReason,
    BreakerRow,
    BreakerState,
    CredentialProof,
    FlowStore,
    already_open_for,
)
from worker.protocol.codes import (
    CodeCategory,
    ResponseOutcome,
    ResultOutcome,
    classify_result_code,
    response_category,
    result_category,
)
from worker.protocol.request import STATUS_QUERY_COMMAND
from worker.settings import MpesaSettings

log = logging.getLogger(__name__)

UNREACHABLE, FUNDS, CREDENTIAL, CONFIG = (
    BreakerReason.UNREACHABLE,
    BreakerReason.FUNDS,
    BreakerReason.CREDENTIAL,
    BreakerReason.CONFIG,
)
# The code categories that open the breaker, from a refused request and from a result.
_RESPONSE_CONDITIONS = {
    CodeCategory.FUNDS: FUNDS,
    CodeCategory.CREDENTIAL: CREDENTIAL,
    CodeCategory.CONFIG: CONFIG,
}
_RESULT_CONDITIONS = {CodeCategory.FUNDS: FUNDS, CodeCategory.CREDENTIAL: CREDENTIAL}

_PROVES_CREDENTIAL = frozenset({ResultOutcome.COMPLETED, ResultOutcome.FAILED, ResultOutcome.NOT_FOUND})
# Failures decided before the credential is looked at (the simulator's order; M-PESA's is unconfirmed).
_INCONCLUSIVE_CATEGORIES = frozenset({CodeCategory.EXPIRED})

SCAN_INTERVAL = 0.05
SCAN_LAG_ROWS = 50
START_SCAN_ROWS = 1000
MAX_PROBE_BACKOFF = 32
_WAIT_STEP = 0.1

ACTIONS: dict[BreakerReason, str] = {
    UNREACHABLE: "check the network path to the gateway; sending resumes by itself once a TCP connect succeeds",
    FUNDS: "fund the B2C utility account; one queued payout is sent as a probe every probe interval (backing "
    "off) and sending resumes when it is paid; `mpesa-b2c breaker close` resumes at once",
    CREDENTIAL: "fix or unlock the credential (B2C_INITIATOR_NAME/B2C_INITIATOR_PASSWORD, B2C_CERT_PATH, "
    "B2C_SP_ID/B2C_SP_PASSWORD), then run `mpesa-b2c breaker close`; nothing is sent until then, because "
    "repeated bad-credential requests lock the operator account",
    CONFIG: "resolve the SP/service/API state, permission or route with Safaricom, then run `mpesa-b2c breaker close`",
}


def response_condition(code: str | None) -> BreakerReason | None:
    """The account or configuration condition a synchronous ResponseCode reports, if any."""
    category = None if code is None else response_category(code)
    return None if category is None else _RESPONSE_CONDITIONS.get(category)


def result_condition(code: str | None) -> BreakerReason | None:
    """The account condition a ResultCode reports (``funds`` or ``credential``), if any."""
    category = None if code is None else result_category(code)
    return None if category is None else _RESULT_CONDITIONS.get(category)


FINGERPRINT_SALT = "credential-fingerprint"
# scrypt's cost: about 16 MiB and tens of milliseconds a guess, for whoever tries passwords against the table.
_SCRYPT = {"n": 2**14, "r": 8, "p": 1, "maxmem": 64 * 1024 * 1024, "dklen": 32}


def credential_fingerprint(mpesa: MpesaSettings, salt: bytes) -> str | None:
    """What identifies the credential in ``credential_proofs``, without revealing any part of it.

    Every part that can make M-PESA refuse the credential goes in, so changing any of them changes the
    fingerprint. Each part is public except the two passwords, so a fast hash would let anyone who reads the
    table try passwords by the billion: scrypt over a random per-deployment salt (from the ledger, so every
    replica agrees) makes each guess slow and a precomputed table useless. None when the certificate cannot be
    read: the process then proves its credential by itself (the gateway reports the certificate).
    """
    try:
        certificate = mpesa.cert_path.read_bytes()
    except OSError:
        return None
    parts = [
        mpesa.url,
        mpesa.shortcode,
        mpesa.sp_id,
        mpesa.sp_password.reveal(),
        mpesa.service_id,
        mpesa.password_uppercase,
        mpesa.initiator_name,
        mpesa.initiator_password.reveal(),
        hashlib.sha256(certificate).hexdigest(),
    ]
    material = json.dumps(parts).encode("utf-8")
    return hashlib.scrypt(material, salt=salt, **_SCRYPT).hex()


def _proves_credential(code: str | None) -> bool | None:
    """True: the credential works; False: it does not; None: this result cannot tell."""
    if code is None:
        return None
    if result_condition(code) == CREDENTIAL:
        return False
    if result_category(code) in _INCONCLUSIVE_CATEGORIES:
        return None
    return True if classify_result_code(code) in _PROVES_CREDENTIAL else None


@dataclass(frozen=True)
class Accepting:
    """Whether the worker should take commands now, and if not, why (for logs and /healthz)."""

    accepting: bool
    why: str = ""


def _iso(epoch: float | None) -> str | None:
    return None if epoch is None else datetime.fromtimestamp(epoch, UTC).isoformat(timespec="milliseconds")


def describe_proofs(proofs: list[CredentialProof]) -> list[dict[str, Any]]:
    """The proven credentials for ``mpesa-b2c breaker status``: when and by whom, never the fingerprint."""
    return [{"since": _iso(proof.proven_at), "proven_by": proof.proven_by} for proof in proofs]


def describe(row: BreakerRow) -> dict[str, Any]:
    """The breaker for people: ``/healthz`` and ``mpesa-b2c breaker status``."""
    state: dict[str, Any] = {"state": BreakerState.OPEN if row.open else BreakerState.CLOSED}
    if row.open:
        state.update(
            reason=row.reason,
            code=row.code,
            detail=row.detail,
            since=_iso(row.opened_at),
            opened_by=row.opened_by,
            next_probe_at=_iso(row.next_probe_at) if row.reason in (UNREACHABLE, FUNDS) else None,
            probe_running=row.probe_running,
            failed_probes=row.failed_probes,
            action="" if row.reason is None else ACTIONS[row.reason],
        )
    else:
        state.update(since=_iso(row.closed_at), closed_by=row.closed_by)
    return state


class CircuitBreaker:
    """One shortcode's breaker as seen by one process; thread-safe.

    ``gate`` runs right before every request to the gateway, ``record`` right after it; ``tick`` runs on a
    background thread (probes, reading results, gauges) and says whether the worker should take commands.
    """

    def __init__(
        self,
        store: FlowStore,
        key: str,
        *,
        threshold: int,
        probe_seconds: float,
        gateway_url: str,
        connect_timeout: float,
        canary_lease: float,
        canary_wait: float = 5.0,
        probe_lease: float | None = None,
        owner: str | None = None,
        stop: threading.Event | None = None,
        on_open: Callable[[str], None] | None = None,
        fingerprint: str | None = None,
    ) -> None:
        self._store = store
        self._fingerprint = fingerprint  # None: the proof is this process's alone
        self.key = key
        self.threshold = threshold
        self.probe_seconds = probe_seconds
        self._gateway = urlsplit(gateway_url)
        self._connect_timeout = connect_timeout
        self._canary_lease = canary_lease
        self.canary_wait = canary_wait
        self._probe_lease = probe_lease if probe_lease is not None else max(2 * probe_seconds, canary_lease)
        self.owner = owner or f"{socket.gethostname()}:{uuid.uuid4().hex[:8]}"
        self._stop = stop or threading.Event()
        self._on_open = on_open
        self._lock = threading.Lock()
        self._failures = 0
        self._verified_epoch: int | None = None
        self._verified_at: float | None = None
        self._canary: str | None = None
        self._probe: str | None = None  # the last funds probe this process sent
        self._last_scan = 0.0
        self._cursor = max(0, store.last_result_id() - START_SCAN_ROWS)
        self._row = store.breaker(key, fingerprint=fingerprint)
        self._announced: tuple[bool, BreakerReason | None] = (self._row.open, self._row.reason)
        if self._row.open:
            log.error(self._describe_open(self._row))
        self._gauges(self._row)

    # ------------------------------------------------------------------------------ before a send

    def blocked(self) -> HoldReason | None:
        """A cheap look before taking a command: BREAKER_OPEN while open and no probe is due, else None."""
        self._scan()
        row = self._read()
        return None if self._accepting(row).accepting else HoldReason.BREAKER_OPEN

    def gate(self, command: str, originator_conversation_id: str) -> HoldReason | None:
        """Right before a request: None to send it now, else why it is held back (nothing is sent).

        May wait up to ``canary_wait`` seconds for this process's canary to prove the credential.
        """
        deadline = time.monotonic() + self.canary_wait
        while True:
            verdict = self._check(command, originator_conversation_id)
            if verdict != "wait":
                return verdict
            if time.monotonic() >= deadline or self._stop.wait(_WAIT_STEP):
                return HoldReason.CREDENTIAL_UNPROVEN

    def _check(self, command: str, ocid: str) -> HoldReason | Literal["wait"] | None:  # noqa: C901 - the gate's checks in the order its safety rests on, read as one
        self._scan()
        # Taken before the row: a credential proven after this read may come with an opening we did not see.
        with self._lock:
            verified_epoch = self._verified_epoch
        row = self._read()
        if row.open:
            if row.reason != FUNDS:
                return HoldReason.BREAKER_OPEN
            if command == STATUS_QUERY_COMMAND:
                # A lookup moves no money, and a funds condition proves the credential: lookups go on.
                with self._lock:
                    return None if self._proven(row) else HoldReason.BREAKER_OPEN
            if self._store.take_probe(self.key, ocid, lease=self._probe_lease):
                log.warning("circuit open (funds): sending %s as the probe", ocid)
                self._probe = ocid
                return None
            return HoldReason.BREAKER_OPEN
        if verified_epoch == row.credential_epoch or row.credential_proven:
            return None
        if self._canary is not None:
            self._judge_canary(row)
            row = self._read()
            if row.open:
                return HoldReason.BREAKER_OPEN
            with self._lock:
                if self._proven(row):
                    return None
        if row.canary_running and row.canary_id != ocid:
            return "wait"  # another request is the canary: no need to ask the database for the lease
        if self._store.take_canary(self.key, ocid, owner=self.owner, lease=self._canary_lease):
            if self._canary != ocid:
                log.info("credential not yet proven by this process: %s %s is the one request in flight", command, ocid)
            self._canary = ocid
            return None
        return "wait"

    def abandon(self, originator_conversation_id: str) -> None:
        """The request passed the gate but will not be sent after all: free what it held."""
        if self._canary == originator_conversation_id:
            self._release_canary()
        if self._probe == originator_conversation_id:  # not self._row: it predates take_probe
            self._store.end_probe(self.key, originator_conversation_id, failed=False, next_in=0.0)

    # ------------------------------------------------------------------------------- after a send

    def record(
        self,
        command: str,
        originator_conversation_id: str,
        outcome: ResponseOutcome,
        reason: AttemptReason,
        code: str | None,
    ) -> None:
        """What one attempt ended with (``reason`` is the gateway's, ``code`` the ResponseCode)."""
        ocid = originator_conversation_id
        if reason in NOT_SENT_REASONS:
            with self._lock:
                self._failures += 1
                failures = self._failures
            if failures >= self.threshold:
                self._open(UNREACHABLE, None, f"{failures} consecutive attempts could not connect ({reason})")
        else:
            with self._lock:
                self._failures = 0
        condition = response_condition(code) if outcome is ResponseOutcome.REJECTED else None
        if condition is not None:
            self._open(condition, code, f"{command} {ocid} refused with ResponseCode {code}")
        if ocid == self._canary and outcome in (ResponseOutcome.RETRY_LATER, ResponseOutcome.REJECTED):
            # Refused before M-PESA's core looked at the credential: it proves nothing either way.
            self._release_canary()
        if self._row.probe_id == ocid and outcome in (ResponseOutcome.RETRY_LATER, ResponseOutcome.REJECTED):
            still_no_funds = condition == FUNDS
            self._end_probe(ocid, failed=still_no_funds)

    # --------------------------------------------------------------------------------- background

    def tick(self) -> Accepting:
        """Read the shared state and results, run a due probe; whether the worker should take commands."""
        self._scan(force=True)
        row = self._read()
        if row.open and row.reason == UNREACHABLE and (row.next_probe_at or 0.0) <= row.now:
            self._probe_connect()
            row = self._read()
        elif row.open and row.reason == FUNDS and row.probe_id is not None:
            self._judge_probe(row)
            row = self._read()
        if self._canary is not None and not row.open:
            self._judge_canary(row)
        return self._accepting(row)

    def close(self, *, by: str) -> bool:
        """Close the breaker (an operator's decision, or a probe's); True if it was open."""
        row = self._store.close_breaker(self.key, by=by)
        if row is not None:
            self._row = row
            self._observe(row)
        return row is not None

    def describe(self) -> dict[str, Any]:
        """The breaker as this process last read it, and whether this process has proven its credential."""
        row = self._row
        with self._lock:
            own = self._verified_epoch == row.credential_epoch
            since = row.proven_at if row.credential_proven else self._verified_at if own else None
            proven = own or row.credential_proven
        return {**describe(row), "credential_proven": proven, "credential_proven_since": _iso(since)}

    # ----------------------------------------------------------------------------------- internals

    def _read(self) -> BreakerRow:
        row = self._store.breaker(self.key, fingerprint=self._fingerprint)
        self._row = row
        self._observe(row)
        return row

    def _proven(self, row: BreakerRow) -> bool:
        """Call with ``_lock`` held."""
        return self._verified_epoch == row.credential_epoch or row.credential_proven

    def _credential_works(self, epoch: int) -> None:
        """A result of this process's own request proved its credential: remember it, and tell the fleet."""
        with self._lock:
            self._verified_epoch = epoch
            self._verified_at = time.time()
        if self._fingerprint is not None:
            self._store.prove_credential(self.key, self._fingerprint, epoch=epoch, by=self.owner)

    def _accepting(self, row: BreakerRow) -> Accepting:
        if not row.open:
            return Accepting(True)
        if row.reason == FUNDS and not row.probe_running and (row.next_probe_at or 0.0) <= row.now:
            return Accepting(True, "circuit open (funds): a probe is due")
        return Accepting(False, f"circuit open ({row.reason}): {row.detail}")

    def _open(self, reason: BreakerReason, code: str | None, detail: str) -> None:
        next_probe = self._store.clock() + self.probe_seconds if reason in (UNREACHABLE, FUNDS) else None
        row = self._store.open_breaker(
            self.key, reason=reason, code=code, detail=detail, by=self.owner, next_probe_at=next_probe
        )
        if row is None:
            return
        metrics.CIRCUIT_OPENINGS.labels(reason=reason).inc()
        if reason == CREDENTIAL:
            self._canary = None
        self._row = row
        self._observe(row)

    def _observe(self, row: BreakerRow) -> None:
        """Log and notify when the shared state changed (whoever changed it)."""
        seen = (row.open, row.reason)
        with self._lock:
            changed, self._announced = seen != self._announced, seen
        self._gauges(row)
        if not changed:
            return
        if row.open:
            log.error(self._describe_open(row))
            if self._on_open is not None:
                self._on_open(f"circuit open ({row.reason})")
        else:
            log.warning("circuit breaker closed by %s: sending resumes", row.closed_by or "?")

    def _describe_open(self, row: BreakerRow) -> str:
        return (
            f"circuit breaker OPEN for shortcode {row.key}: {row.reason} (code {row.code or '-'}): {row.detail}."
            f" No commands are taken; they stay queued. To resume: {'' if row.reason is None else ACTIONS[row.reason]}"
        )

    def _gauges(self, row: BreakerRow) -> None:
        for reason in BreakerReason:
            metrics.CIRCUIT_OPEN.labels(reason=reason).set(1 if row.open and row.reason == reason else 0)

    def _scan(self, *, force: bool = False) -> None:
        """Read the results stored since the last look; open on a funds or credential condition.

        A result counts only if its payout was sent after the breaker last closed: results of payouts in
        flight when it opened must not open it again after a probe closed it.
        """
        now = time.monotonic()
        with self._lock:
            if not force and now - self._last_scan < SCAN_INTERVAL:
                return
            self._last_scan = now
            after = max(0, self._cursor - SCAN_LAG_ROWS)
        results = self._store.results_after(after)
        if not results:
            return
        with self._lock:
            self._cursor = max(self._cursor, results[-1].id)
        closed_at: float | None = None
        for result in results:
            condition = result_condition(result.code)
            if condition is None:
                continue
            if closed_at is None:
                closed_at = self._read().closed_at  # fresh: another process may have closed it just now
            if already_open_for(self._row, condition):
                continue  # the rescanned window keeps showing the result that opened it: no write each scan
            if result.sent_at > closed_at:
                self._open(condition, result.code, f"result {result.code} for {result.originator_conversation_id}")

    def _judge_canary(self, row: BreakerRow) -> None:
        canary = self._canary
        if canary is None:
            return
        if row.canary_id != canary:
            row = self._store.breaker(self.key)  # ``row`` may predate the lease: look again before giving up
            if row.canary_id != canary:
                if self._canary == canary:
                    self._canary = None  # the lease ran out and went elsewhere, or was released
                return
        result = self._store.latest_result(canary)
        proof = _proves_credential(result.code) if result is not None else None
        if proof is True:
            assert result is not None
            condition = result_condition(result.code)
            if condition is not None:
                # e.g. ResultCode 1: the credential works but the account is empty. Open before the requests
                # waiting for this canary can see the credential proven (``_check``), or they all go out to fail.
                self._open(condition, result.code, f"result {result.code} for the canary {canary}")
            else:
                log.info("credential proven by the result of %s: sending freely", canary)
            self._credential_works(row.credential_epoch)
            self._release_canary()
        elif proof is False:
            assert result is not None
            self._open(CREDENTIAL, result.code, f"result {result.code} for {canary}")
        elif result is not None or self._store.payout_status(canary) in ("received", "rejected"):
            self._release_canary()  # answered without proving anything, or back in the queue: another may try

    def _release_canary(self) -> None:
        canary, self._canary = self._canary, None
        if canary is not None:
            self._store.release_canary(self.key, canary)

    def _judge_probe(self, row: BreakerRow) -> None:
        probe = row.probe_id
        assert probe is not None
        result = self._store.latest_result(probe)
        code = result.code if result is not None else None
        if probe == self._probe and _proves_credential(code):
            self._credential_works(row.credential_epoch)  # this process's own request: its credential works
        if code is not None and classify_result_code(code) is ResultOutcome.COMPLETED:
            if self._store.close_breaker(self.key, by=f"probe {probe}", reason=FUNDS) is not None:
                log.warning("funds probe %s was paid: the account is funded again", probe)
            return
        condition = result_condition(code)
        if condition == CREDENTIAL:
            self._open(CREDENTIAL, code, f"result {code} for the probe {probe}")
        elif condition == FUNDS:
            self._end_probe(probe, failed=True)
        elif result is not None or not row.probe_running or self._store.payout_status(probe) == "received":
            self._end_probe(probe, failed=False)

    def _end_probe(self, probe: str, *, failed: bool) -> None:
        failures = self._row.failed_probes + (1 if failed else 0)
        wait = self.probe_seconds * min(2 ** max(failures - 1, 0), MAX_PROBE_BACKOFF) if failed else self.probe_seconds
        self._store.end_probe(self.key, probe, failed=failed, next_in=wait)
        if failed:
            log.warning("funds probe %s failed: still no funds; next probe in %.0fs", probe, wait)

    def _probe_connect(self) -> None:
        host = self._gateway.hostname or "localhost"
        port = self._gateway.port or (443 if self._gateway.scheme == "https" else 80)
        try:
            with contextlib.closing(socket.create_connection((host, port), timeout=self._connect_timeout)):
                pass
        except OSError as exc:
            log.info("gateway %s:%d still unreachable (%s)", host, port, exc.strerror or type(exc).__name__)
            self._store.schedule_probe(self.key, after=self.probe_seconds)
            return
        with self._lock:
            self._failures = 0
        if self._store.close_breaker(self.key, by=f"probe of {host}:{port}", reason=UNREACHABLE) is not None:
            log.warning("gateway %s:%d reachable again", host, port)


def safe_tick(breaker: CircuitBreaker) -> Accepting:
    """``tick`` for a background loop: a database hiccup keeps the previous decision's safe side (pause)."""
    try:
        return breaker.tick()
    except B2CError as exc:
        log.warning("circuit breaker state unavailable: %s", exc)
        return Accepting(False, f"circuit breaker state unavailable: {exc}")
