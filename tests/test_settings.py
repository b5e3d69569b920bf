"""Settings are validated once, up front, and every error names its variable."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from worker.errors import ConfigError
from worker.settings import (
    DEMO_CALLBACK_TOKEN,
    DEMO_DEFAULTED,
    HEADER_NS_OSG,
    HEADER_NS_XSD,
    RENAMED,
    Secret,
    load_settings,
    redact_url,
)

PRODUCTION_LIKE = {
    "B2C_MPESA_URL": "https://gw.example.invalid:18423/mminterface/request",
    "B2C_SP_ID": "654321",
    "B2C_SP_PASSWORD": "sp-password",
    "B2C_SERVICE_ID": "654321000",
    "B2C_INITIATOR_NAME": "payroll",
    "B2C_INITIATOR_PASSWORD": "initiator-password",
    "B2C_SHORTCODE": "654321",
    "B2C_CERT_PATH": "/etc/mpesa-b2c/certificate/mpesa-cert.pem",
    "B2C_RESULT_URL": "https://b2c.example.invalid/mpesa/result",
    "B2C_QUEUE_TIMEOUT_URL": "https://b2c.example.invalid/mpesa/queue-timeout",
    "B2C_AMQP_URL": "amqps://payouts:secret@rabbitmq.example.invalid:5671/payouts",
    "B2C_DATABASE_URL": "postgresql://payouts:secret@pg.example.invalid:5432/payouts",
    "B2C_CALLBACK_TOKEN": "a-long-unguessable-token-0123456789",
}


def test_defaults_make_a_working_local_setup() -> None:
    settings = load_settings({})
    assert settings.mpesa.url == "http://127.0.0.1:8310/mminterface/request"
    assert settings.mpesa.header_namespace == HEADER_NS_OSG
    assert settings.ledger.database_url is None
    assert settings.concurrency == 16
    assert settings.flow.rate_limit == 0
    assert str(settings.mpesa.amount_min) == "10" and str(settings.mpesa.amount_max) == "250000"


@pytest.mark.parametrize(
    ("variable", "value", "fragment"),
    [
        ("B2C_MPESA_URL", "ftp://x/y", "not a http/https URL"),
        ("B2C_SHORTCODE", "12ab", "5-7 digit"),
        ("B2C_ORG_NAME", "acme org", "letters and digits"),
        ("B2C_HEADER_NAMESPACE", "other", "neither"),
        ("B2C_HEADER_TIMEZONE", "EAT", "neither"),
        ("B2C_AMOUNT_MIN", "ten", "decimal"),
        ("B2C_AMOUNT_MAX", "-1", "non-negative"),
        ("B2C_CONCURRENCY", "0", "at least 1"),
        ("B2C_READ_TIMEOUT", "soon", "number"),
        ("B2C_SP_PASSWORD_UPPERCASE", "maybe", "boolean"),
        ("B2C_DATABASE_URL", "mysql://db/x", "postgresql"),
        ("B2C_AMQP_URL", "http://broker", "amqp"),
        ("B2C_LOG_LEVEL", "LOUD", "DEBUG"),
        ("B2C_RETRY_DELAYS", "30,5", "increasing"),
        ("B2C_CALLBACK_ALLOWED_NETWORKS", "10.0.0.0/33", "CIDR"),
        ("B2C_CALLBACK_TOKEN", "short", "16 characters"),
        ("B2C_TLS_CA_BUNDLE", "/nonexistent/ca.pem", "does not exist"),
    ],
)
def test_bad_values_name_the_variable(variable: str, value: str, fragment: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings({variable: value})
    assert caught.value.variable == variable
    assert fragment in str(caught.value)


def test_amount_range_must_be_ordered() -> None:
    with pytest.raises(ConfigError, match="B2C_AMOUNT_MIN"):
        load_settings({"B2C_AMOUNT_MIN": "500", "B2C_AMOUNT_MAX": "100"})


def test_tls_certificate_and_key_go_together(tmp_path: Path) -> None:
    cert = tmp_path / "client.pem"
    cert.write_text("x")
    with pytest.raises(ConfigError, match="go together"):
        load_settings({"B2C_TLS_CLIENT_CERT": str(cert)})


def test_header_namespace_choice() -> None:
    assert load_settings({"B2C_HEADER_NAMESPACE": "xsd"}).mpesa.header_namespace == HEADER_NS_XSD


def test_secrets_never_print() -> None:
    settings = load_settings({"B2C_SP_PASSWORD": "hunter2-sp", "B2C_INITIATOR_PASSWORD": "hunter2-init"})
    text = repr(settings)
    assert "hunter2" not in text
    assert settings.mpesa.sp_password.reveal() == "hunter2-sp"
    assert Secret("a") == Secret("a") and str(Secret("a")) == "Secret('********')"


def test_urls_are_redacted_for_messages() -> None:
    settings = load_settings({"B2C_AMQP_URL": "amqp://user:pa55@rabbit:5672/%2F"})
    assert settings.amqp.safe_url == "amqp://user:***@rabbit:5672/%2F"
    assert redact_url("postgresql://svc:pw@db/ledger") == "postgresql://svc:***@db/ledger"
    assert redact_url("amqp://rabbit/") == "amqp://rabbit/"


def test_networks_and_delays_parse() -> None:
    settings = load_settings(
        {"B2C_CALLBACK_ALLOWED_NETWORKS": "196.201.214.0/24, 2001:db8::/32", "B2C_RETRY_DELAYS": "0.5,2,10"}
    )
    assert [str(n) for n in settings.receiver.allowed_networks] == ["196.201.214.0/24", "2001:db8::/32"]
    assert settings.flow.retry_delays == (0.5, 2.0, 10.0)


def test_without_demo_defaults_every_demo_defaulted_variable_is_required() -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings({"B2C_DEMO_DEFAULTS": "false", "B2C_AMQP_URL": "amqps://u:p@broker/payouts"})
    named = caught.value.variable.split(", ")
    assert named == [name for name in DEMO_DEFAULTED if name != "B2C_AMQP_URL"]
    assert "B2C_DEMO_DEFAULTS=false" in str(caught.value)


@pytest.mark.parametrize("missing", DEMO_DEFAULTED)
def test_without_demo_defaults_an_empty_value_counts_as_missing(missing: str) -> None:
    environ = {name: PRODUCTION_LIKE[name] for name in DEMO_DEFAULTED} | {"B2C_DEMO_DEFAULTS": "false"}
    load_settings(environ)
    environ[missing] = ""
    with pytest.raises(ConfigError) as caught:
        load_settings(environ)
    assert caught.value.variable == missing


def test_without_demo_defaults_the_given_values_are_used() -> None:
    settings = load_settings({**PRODUCTION_LIKE, "B2C_DEMO_DEFAULTS": "false"})
    assert settings.mpesa.url == PRODUCTION_LIKE["B2C_MPESA_URL"]
    assert settings.mpesa.shortcode == "654321"
    assert settings.ledger.database_url == PRODUCTION_LIKE["B2C_DATABASE_URL"]
    assert settings.receiver.callback_token.reveal() != DEMO_CALLBACK_TOKEN


def test_secret_values_cover_credentials_token_and_url_passwords() -> None:
    settings = load_settings(
        {
            **PRODUCTION_LIKE,
            "B2C_AMQP_URL": "amqps://payouts:amqp%40pw@broker/payouts",
            "B2C_DATABASE_URL": "postgresql://payouts:db-pw@pg/payouts",
        }
    )
    assert set(settings.secret_values()) == {
        "sp-password",
        "initiator-password",
        PRODUCTION_LIKE["B2C_CALLBACK_TOKEN"],
        "amqp%40pw",
        "amqp@pw",
        "db-pw",
    }


LOOKUP_VALUES = {
    "B2C_LOOKUP_AFTER_SECONDS": "7",
    "B2C_LOOKUP_INTERVAL_SECONDS": "11",
    "B2C_LOOKUP_MAX_ATTEMPTS": "3",
    "B2C_LOOKUP_MAX_SECONDS": "120",
}
LOOKUP_READ = (7.0, 11.0, 3, 120.0)


def _lookup(environ: dict[str, str]) -> tuple[float, float, int, float]:
    lookup = load_settings(environ).lookup
    return (lookup.unknown_after, lookup.interval, lookup.max_attempts, lookup.max_seconds)


def test_lookup_settings_are_read_under_their_names(recwarn: pytest.WarningsRecorder) -> None:
    assert _lookup(LOOKUP_VALUES) == LOOKUP_READ
    assert not [w for w in recwarn if issubclass(w.category, DeprecationWarning)]


def test_the_old_lookup_names_still_work_and_warn(caplog: pytest.LogCaptureFixture) -> None:
    old_names = {old: LOOKUP_VALUES[new] for old, new in RENAMED.items()}
    with caplog.at_level(logging.WARNING, logger="worker.settings"), pytest.warns(DeprecationWarning) as warned:
        assert _lookup(old_names) == LOOKUP_READ
    for old, new in RENAMED.items():
        assert any(old in str(w.message) and new in str(w.message) for w in warned), old
        assert any(old in line and new in line for line in caplog.messages), old


def test_the_new_lookup_name_wins_when_both_say_the_same() -> None:
    with pytest.warns(DeprecationWarning, match="B2C_RESOLVE_MAX_ATTEMPTS"):
        settings = load_settings({"B2C_RESOLVE_MAX_ATTEMPTS": "3", "B2C_LOOKUP_MAX_ATTEMPTS": "3"})
    assert settings.lookup.max_attempts == 3


@pytest.mark.parametrize(("old", "new"), RENAMED.items())
def test_old_and_new_lookup_names_that_disagree_are_an_error(old: str, new: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings({old: "4", new: "3"})
    assert caught.value.variable == new
    assert old in str(caught.value)


def test_an_empty_old_lookup_name_counts_as_unset(recwarn: pytest.WarningsRecorder) -> None:
    assert load_settings({"B2C_RESOLVE_MAX_ATTEMPTS": "", "B2C_LOOKUP_MAX_ATTEMPTS": "3"}).lookup.max_attempts == 3
    assert not [w for w in recwarn if issubclass(w.category, DeprecationWarning)]
