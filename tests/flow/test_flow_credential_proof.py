"""The proven credential, shared by every replica through the ledger (both engines), keyed by a fingerprint.

Each :class:`FlowControl` here is one worker process (its own breaker, owner and memory) over the same ledger,
as replicas sharing one PostgreSQL database, or processes sharing one SQLite file, are.
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from decimal import Decimal
from pathlib import Path

import pytest

from tests.support.ledger import table_rows
from worker.cli.breaker import cmd_breaker
from worker.flow.breaker import FINGERPRINT_SALT, credential_fingerprint
from worker.flow.control import FlowControl
from worker.gateway.g2 import HoldReason
from worker.ledger import Ledger, open_ledger, schema
from worker.ledger.flow_state import BreakerReason
from worker.payouts.models import CommandId, PayoutCommand, originator_conversation_id
from worker.protocol.result import build_result_envelope, parse_result_envelope
from worker.settings import Secret, Settings

KEY = "600000"
PAY = "BusinessPayment"
PASSWORD = "Initiator#Pass-2024"
CERTIFICATE = b"-----BEGIN CERTIFICATE-----\nnot parsed by the fingerprint\n-----END CERTIFICATE-----\n"


@dataclass
class Fleet:
    ledger: Ledger
    settings: Callable[..., Settings]

    def process(self, **env: str) -> FlowControl:
        """A worker process's flow control (a fresh one each time: a restart, or another replica)."""
        return FlowControl(self.settings(**env), self.ledger.flow, canary_wait=0.3)

    def payout(self, payout_id: str) -> str:
        command = PayoutCommand(
            payout_id=payout_id,
            msisdn="254712345678",
            amount=Decimal("150.00"),
            command=CommandId.BUSINESS_PAYMENT,
            remarks="Payout",
            occasion=None,
            metadata={},
        )
        ocid = originator_conversation_id(KEY, "mpesab2c", payout_id)
        self.ledger.payouts.record(command, ocid)
        self.ledger.payouts.claim_send(payout_id, expected_attempts=0)
        self.ledger.payouts.mark_accepted(payout_id, conversation_id=f"AG_{payout_id}", code="0", description="ok")
        return ocid

    def result(self, ocid: str, code: str) -> None:
        raw = build_result_envelope(
            code=code,
            description=f"result {code}",
            originator_conversation_id=ocid,
            conversation_id=None,
            transaction_id="SE1234ABCD" if code == "0" else None,
            parameters={"TransactionAmount": "150.00", "TransactionReceipt": "SE1234ABCD"} if code == "0" else None,
        )
        self.ledger.results.record(raw, parse_result_envelope(raw))

    def prove(self, process: FlowControl, payout_id: str) -> None:
        """``process`` sends the canary and its result proves the credential."""
        canary = self.payout(payout_id)
        assert process.breaker.gate(PAY, canary) is None
        assert self.ledger.flow.breaker(KEY).canary_id == canary
        self.result(canary, "0")
        process.tick()
        assert process.breaker.describe()["credential_proven"] is True


@pytest.fixture
def credential_env(tmp_path: Path) -> dict[str, str]:
    cert = tmp_path / "mpesa-cert.pem"
    cert.write_bytes(CERTIFICATE)
    return {"B2C_CERT_PATH": str(cert), "B2C_SHORTCODE": KEY, "B2C_INITIATOR_PASSWORD": PASSWORD}


@pytest.fixture
def fleet(
    ledger_env: dict[str, str], credential_env: dict[str, str], make_settings: Callable[..., Settings]
) -> Iterator[Fleet]:
    ledger = open_ledger(make_settings(**ledger_env).ledger)

    def settings(**env: str) -> Settings:
        return make_settings(**{**ledger_env, **credential_env, **env})

    yield Fleet(ledger, settings)
    ledger.close()


def test_a_process_with_a_proven_credential_sends_freely_without_a_canary_of_its_own(fleet: Fleet) -> None:
    first, second = fleet.process(), fleet.process()
    canary, waiting = fleet.payout("s-1"), fleet.payout("s-2")
    assert first.breaker.gate(PAY, canary) is None, "the canary"
    assert second.breaker.gate(PAY, waiting) == HoldReason.CREDENTIAL_UNPROVEN, "unproven while it is in flight"
    fleet.result(canary, "0")
    first.tick()
    assert second.breaker.gate(PAY, waiting) is None, "proven by the other process"

    restarted = fleet.process()
    assert restarted.breaker.gate(PAY, fleet.payout("s-3")) is None
    assert restarted.breaker.gate(PAY, fleet.payout("s-4")) is None, "a second request at once: no canary needed"
    assert fleet.ledger.flow.breaker(KEY).canary_id is None, "nobody sent a canary after the first"
    described = restarted.health()["breaker"]
    assert described["credential_proven"] is True and described["credential_proven_since"] is not None


def test_a_credential_condition_makes_every_process_prove_it_again(fleet: Fleet) -> None:
    first, second = fleet.process(), fleet.process()
    fleet.prove(first, "r-1")
    sent = fleet.payout("r-2")
    assert second.breaker.gate(PAY, sent) is None
    fleet.result(sent, "18")  # the initiator credential is now refused (e.g. the password expired)
    second.tick()
    assert fleet.ledger.flow.breaker(KEY).reason == "credential"
    assert fleet.ledger.flow.credential_proofs(KEY) == []
    assert fleet.ledger.flow.close_breaker(KEY, by="operator") is not None  # the operator fixed it

    again, behind = fleet.payout("r-3"), fleet.payout("r-4")
    assert first.breaker.gate(PAY, again) is None
    assert fleet.ledger.flow.breaker(KEY).canary_id == again, "the first process proves it again"
    assert second.breaker.gate(PAY, behind) == HoldReason.CREDENTIAL_UNPROVEN, "and so does the second"
    assert fleet.process().breaker.gate(PAY, fleet.payout("r-5")) == HoldReason.CREDENTIAL_UNPROVEN
    for process in (first, second):
        assert process.breaker.describe()["credential_proven"] is False
    fleet.result(again, "0")
    first.tick()
    assert second.breaker.gate(PAY, behind) is None


def test_a_different_password_does_not_inherit_the_proof(fleet: Fleet) -> None:
    fleet.prove(fleet.process(), "p-1")
    rotated = fleet.process(B2C_INITIATOR_PASSWORD="Rotated#Pass-2025")
    own = fleet.payout("p-2")
    assert rotated.breaker.gate(PAY, own) is None
    assert fleet.ledger.flow.breaker(KEY).canary_id == own, "that request is its own canary"
    assert rotated.breaker.gate(PAY, fleet.payout("p-3")) == HoldReason.CREDENTIAL_UNPROVEN
    assert rotated.breaker.describe()["credential_proven"] is False
    fleet.result(own, "0")
    rotated.tick()
    assert len(fleet.ledger.flow.credential_proofs(KEY)) == 2, "both credentials proven, each by its own"


def test_a_stale_proof_is_not_recorded_after_a_credential_condition(fleet: Fleet) -> None:
    store = fleet.ledger.flow
    epoch = store.breaker(KEY).credential_epoch
    store.open_breaker(KEY, reason=BreakerReason.CREDENTIAL, code="18", detail="test", by="test", next_probe_at=None)
    assert store.prove_credential(KEY, "f" * 64, epoch=epoch, by="late") is False
    assert store.breaker(KEY, fingerprint="f" * 64).credential_proven is False


def test_the_breaker_status_shows_when_and_by_whom_never_the_fingerprint(
    fleet: Fleet, capsys: pytest.CaptureFixture[str]
) -> None:
    first = fleet.process()
    fleet.prove(first, "b-1")
    cmd_breaker(fleet.settings(), argparse.Namespace(action="status", reason=None))
    output = capsys.readouterr().out
    status = json.loads(output)
    [proof] = status["credential_proven"]
    assert proof["proven_by"] == first.breaker.owner and proof["since"] is not None
    [stored] = table_rows(fleet.settings().ledger, "SELECT fingerprint FROM credential_proofs")
    assert stored["fingerprint"] not in output and stored["fingerprint"] not in json.dumps(first.health())


def test_the_stored_fingerprint_does_not_reveal_the_credential(fleet: Fleet) -> None:
    fleet.prove(fleet.process(), "f-1")
    ledger = fleet.settings().ledger
    [stored] = table_rows(ledger, "SELECT * FROM credential_proofs")
    fingerprint = str(stored["fingerprint"])
    assert PASSWORD not in json.dumps(stored, default=str)
    [salt] = table_rows(ledger, "SELECT salt FROM salts WHERE name = ?", FINGERPRINT_SALT)
    mpesa = fleet.settings().mpesa
    secrets = (mpesa.initiator_password.reveal(), mpesa.sp_password.reveal())
    # What an attacker with the table would try first: unsalted and quickly salted hashes of the secrets.
    guesses = {
        hashlib.new(algorithm, (prefix + secret).encode()).hexdigest()
        for algorithm in ("md5", "sha1", "sha256", "sha512")
        for secret in (*secrets, "".join(secrets), mpesa.initiator_name + secrets[0])
        for prefix in ("", str(salt["salt"]))
    }
    guesses |= {hmac.new(bytes.fromhex(salt["salt"]), s.encode(), "sha256").hexdigest() for s in secrets}
    assert fingerprint not in guesses
    assert fingerprint == credential_fingerprint(mpesa, bytes.fromhex(salt["salt"]))


def test_the_salt_is_random_per_deployment_and_stable_across_opens(
    fleet: Fleet, make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    salt = fleet.ledger.flow.salt(FINGERPRINT_SALT)
    assert len(salt) == 32
    reopened = open_ledger(fleet.settings().ledger)
    try:
        assert reopened.flow.salt(FINGERPRINT_SALT) == salt
    finally:
        reopened.close()
    other = open_ledger(make_settings(B2C_SQLITE_PATH=str(tmp_path / "another.sqlite3")).ledger)
    try:
        assert other.flow.salt(FINGERPRINT_SALT) != salt, "another deployment: a table precomputed for one is useless"
    finally:
        other.close()


@pytest.mark.parametrize(
    "change",
    [
        {"initiator_name": "apiop99"},
        {"initiator_password": Secret("another-password")},
        {"sp_id": "107099"},
        {"sp_password": Secret("another-sp-password")},
        {"shortcode": "600999"},
        {"cert": CERTIFICATE + b"\n"},
    ],
    ids=lambda change: next(iter(change)),
)
def test_any_change_of_the_credential_changes_the_fingerprint(
    change: dict[str, object], credential_env: dict[str, str], make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    mpesa = make_settings(**credential_env).mpesa
    salt = bytes(range(32))
    before = credential_fingerprint(mpesa, salt)
    assert before is not None and before == credential_fingerprint(mpesa, salt)
    if "cert" in change:
        rotated = tmp_path / "rotated-cert.pem"
        rotated.write_bytes(change.pop("cert"))  # type: ignore[arg-type]
        change["cert_path"] = rotated
    assert credential_fingerprint(replace(mpesa, **change), salt) != before  # type: ignore[arg-type]
    assert credential_fingerprint(mpesa, bytes(32)) != before, "another salt, another fingerprint"


def test_an_older_ledger_upgrades_on_open_and_keeps_its_breaker(
    ledger_env: dict[str, str], make_settings: Callable[..., Settings], monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = make_settings(**ledger_env).ledger
    with monkeypatch.context() as patch:
        patch.setattr(schema, "MIGRATIONS", schema.MIGRATIONS[:4])
        old = open_ledger(settings)
        old.flow.open_breaker(KEY, reason=BreakerReason.FUNDS, code="1", detail="empty", by="old", next_probe_at=None)
        old.close()
    ledger = open_ledger(settings)
    try:
        assert table_rows(settings, "SELECT MAX(version) AS v FROM schema_version") == [{"v": schema.LATEST_VERSION}]
        row = ledger.flow.breaker(KEY, fingerprint="a" * 64)
        assert row.open and row.reason == "funds" and not row.credential_proven
        assert ledger.flow.prove_credential(KEY, "a" * 64, epoch=row.credential_epoch, by="new") is True
        assert ledger.flow.breaker(KEY, fingerprint="a" * 64).credential_proven
        assert not ledger.flow.breaker(KEY, fingerprint="b" * 64).credential_proven
    finally:
        ledger.close()
