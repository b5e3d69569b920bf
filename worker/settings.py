"""Typed settings, read from the environment once at start and passed down.

Nothing in the package reads ``os.environ`` except :func:`load_settings`; every bad or missing value is a
:class:`~worker.errors.ConfigError` naming its variable. Every credential has a demo default so that the
local set-up (simulator + worker + receiver) needs no configuration at all; ``B2C_DEMO_DEFAULTS=false`` (what
the Helm chart sets) turns those defaults off, so that a deployment missing one of them refuses to start
instead of paying from the demo shortcode or keeping its ledger in a pod-local SQLite file.
"""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, timedelta, timezone, tzinfo
from decimal import Decimal
from ipaddress import IPv4Network, IPv6Network, ip_network
from pathlib import Path
from typing import TypeVar
from urllib.parse import unquote, urlsplit, urlunsplit

from worker.errors import ConfigError

T = TypeVar("T")

log = logging.getLogger(__name__)

NAIROBI = timezone(timedelta(hours=3), "EAT")  # Kenya keeps no daylight saving time
HEADER_NS_OSG = "http://www.huawei.com/schema/osg/common/v2_1"
HEADER_NS_XSD = "http://www.huawei.com.cn/schema/common/v2_1"
# Demo default only: a deployment sets its own unguessable B2C_CALLBACK_TOKEN (the receiver warns otherwise).
DEMO_CALLBACK_TOKEN = "demo-callback-token-not-secret"  # noqa: S105
# The variables whose defaults only suit the local demo: required when B2C_DEMO_DEFAULTS is false.
DEMO_DEFAULTED = (
    "B2C_MPESA_URL",
    "B2C_SP_ID",
    "B2C_SP_PASSWORD",
    "B2C_SERVICE_ID",
    "B2C_INITIATOR_NAME",
    "B2C_INITIATOR_PASSWORD",
    "B2C_SHORTCODE",
    "B2C_CERT_PATH",
    "B2C_RESULT_URL",
    "B2C_QUEUE_TIMEOUT_URL",
    "B2C_AMQP_URL",
    "B2C_DATABASE_URL",
    "B2C_CALLBACK_TOKEN",
)
# Old name -> new name. The old names still work, with a warning, so a deployment can move at its own pace.
RENAMED = {
    "B2C_RESOLVE_AFTER_SECONDS": "B2C_LOOKUP_AFTER_SECONDS",
    "B2C_RESOLVE_INTERVAL_SECONDS": "B2C_LOOKUP_INTERVAL_SECONDS",
    "B2C_RESOLVE_MAX_ATTEMPTS": "B2C_LOOKUP_MAX_ATTEMPTS",
    "B2C_RESOLVE_MAX_SECONDS": "B2C_LOOKUP_MAX_SECONDS",
}


class Secret:
    """A string that never shows itself in ``repr``/``str``, so it cannot reach a log by accident."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('********')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


@dataclass(frozen=True)
class MpesaSettings:
    """How to reach and authenticate to the G2 gateway (or the simulator)."""

    url: str
    sp_id: str
    sp_password: Secret
    service_id: str
    initiator_name: str
    initiator_password: Secret
    shortcode: str
    org_name: str
    cert_path: Path
    result_url: str
    queue_timeout_url: str
    header_namespace: str
    password_uppercase: bool
    header_timezone: tzinfo
    tls_client_cert: Path | None
    tls_client_key: Path | None
    tls_ca_bundle: Path | None
    connect_timeout: float
    read_timeout: float
    retry_attempts: int
    retry_max_seconds: float
    amount_min: Decimal
    amount_max: Decimal


@dataclass(frozen=True)
class AmqpSettings:
    """RabbitMQ names and limits; the worker declares this topology itself."""

    url: str
    command_queue: str
    events_exchange: str
    dead_queue: str
    delivery_limit: int
    prefetch: int

    @property
    def safe_url(self) -> str:
        return redact_url(self.url)


@dataclass(frozen=True)
class LedgerSettings:
    """``database_url`` None means the embedded SQLite ledger at ``sqlite_path``."""

    database_url: str | None
    sqlite_path: Path

    @property
    def safe_url(self) -> str:
        return redact_url(self.database_url) if self.database_url else f"sqlite:///{self.sqlite_path}"


@dataclass(frozen=True)
class SimulatorSettings:
    private_key_path: Path | None
    initial_balance: Decimal


@dataclass(frozen=True)
class LookupSettings:
    """When and how long unknown outcomes and missing results are looked up (never turned into failures)."""

    unknown_after: float
    interval: float
    max_attempts: int
    max_seconds: float
    result_timeout: float
    confirm_success: bool


@dataclass(frozen=True)
class FlowSettings:
    """How the worker paces itself towards the gateway: delay tiers, rate limit, circuit breaker."""

    retry_delays: tuple[float, ...]
    rate_limit: float
    rate_burst: int
    breaker_threshold: int
    breaker_probe_seconds: float


@dataclass(frozen=True)
class ReceiverSettings:
    """What the callback receiver accepts: the secret path token, source networks, body size."""

    callback_token: Secret
    allowed_networks: tuple[IPv4Network | IPv6Network, ...]
    trusted_proxies: tuple[IPv4Network | IPv6Network, ...]
    max_body_bytes: int


@dataclass(frozen=True)
class Settings:
    mpesa: MpesaSettings
    amqp: AmqpSettings
    ledger: LedgerSettings
    simulator: SimulatorSettings
    lookup: LookupSettings
    flow: FlowSettings
    receiver: ReceiverSettings
    data_dir: Path
    concurrency: int
    log_level: str
    outbox_interval: float = field(default=1.0)

    def secret_values(self) -> list[str]:
        """Every value a log line or an error message must never show: the credentials, the callback token and
        the broker's and database's passwords (as written in the URL and decoded; drivers quote either)."""
        values = [
            self.mpesa.sp_password.reveal(),
            self.mpesa.initiator_password.reveal(),
            self.receiver.callback_token.reveal(),
        ]
        for url in (self.amqp.url, self.ledger.database_url):
            password = urlsplit(url).password if url else None
            if password:
                values += [password, unquote(password)]
        return values


def redact_url(url: str) -> str:
    """The URL with its password replaced, for log lines and error messages."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)[1]
    user = parts.username or ""
    return urlunsplit(parts._replace(netloc=f"{user}:***@{netloc}"))


class _Env:
    def __init__(self, env: Mapping[str, str]) -> None:
        self._env = env

    def text(self, name: str, default: str | None = None) -> str:
        value = self._env.get(name)
        if value is None or value == "":
            if default is None:
                raise ConfigError(name, "is required but not set")
            return default
        return value

    def optional(self, name: str) -> str | None:
        value = self._env.get(name)
        return value if value else None

    def parse(self, name: str, default: str, convert: Callable[[str], T], what: str) -> T:
        raw = self.text(name, default)
        try:
            return convert(raw)
        except (ValueError, ArithmeticError) as exc:
            raise ConfigError(name, f"{raw!r} is not {what}") from exc

    def integer(self, name: str, default: int, minimum: int = 1) -> int:
        value = self.parse(name, str(default), int, "an integer")
        if value < minimum:
            raise ConfigError(name, f"must be at least {minimum}, got {value}")
        return value

    def number(self, name: str, default: float, minimum: float = 0.0) -> float:
        value = self.parse(name, str(default), float, "a number")
        if not value >= minimum:
            raise ConfigError(name, f"must be at least {minimum}, got {value}")
        return value

    def decimal(self, name: str, default: str) -> Decimal:
        value = self.parse(name, default, Decimal, "a decimal number")
        if not value.is_finite() or value < 0:
            raise ConfigError(name, f"must be a non-negative amount, got {value}")
        return value

    def boolean(self, name: str, default: bool) -> bool:
        raw = self.text(name, "true" if default else "false").lower()
        if raw in ("1", "true", "yes", "on"):
            return True
        if raw in ("0", "false", "no", "off"):
            return False
        raise ConfigError(name, f"{raw!r} is not a boolean (true/false)")

    def path(self, name: str, default: Path | None, must_exist: bool = False) -> Path | None:
        raw = self.optional(name)
        value = Path(raw).expanduser() if raw else default
        if must_exist and value is not None and not value.is_file():
            raise ConfigError(name, f"file {value} does not exist")
        return value

    def networks(self, name: str) -> tuple[IPv4Network | IPv6Network, ...]:
        raw = self.optional(name)
        if raw is None:
            return ()
        try:
            return tuple(ip_network(part.strip(), strict=False) for part in raw.split(",") if part.strip())
        except ValueError as exc:
            raise ConfigError(name, f"{exc} (expected comma-separated CIDRs like 196.201.214.0/24)") from exc

    def seconds_list(self, name: str, default: str) -> tuple[float, ...]:
        raw = self.text(name, default)
        try:
            values = tuple(float(part) for part in raw.split(","))
        except ValueError as exc:
            raise ConfigError(name, f"{raw!r} is not a comma-separated list of seconds") from exc
        if not values or any(v <= 0 for v in values) or list(values) != sorted(values):
            raise ConfigError(name, f"{raw!r} must be positive seconds in increasing order")
        return values

    def url(self, name: str, default: str, schemes: tuple[str, ...]) -> str:
        value = self.text(name, default)
        parts = urlsplit(value)
        if parts.scheme not in schemes or not parts.netloc:
            raise ConfigError(name, f"{redact_url(value)!r} is not a {'/'.join(schemes)} URL")
        return value


def _renamed(environ: Mapping[str, str]) -> Mapping[str, str]:
    """``environ`` with every deprecated name read as its new one (the new one wins; a conflict is an error)."""
    values = dict(environ)
    for old, new in RENAMED.items():
        value = environ.get(old)
        if not value:
            continue
        current = environ.get(new)
        if current and current != value:
            raise ConfigError(new, f"is {current!r} but the deprecated {old} says {value!r}: set only {new}")
        message = f"{old} is deprecated and will be removed: set {new} instead"
        warnings.warn(message, DeprecationWarning, stacklevel=3)
        log.warning(message)
        values[new] = current or value
    return values


def load_settings(environ: Mapping[str, str] | None = None) -> Settings:  # noqa: C901 - a flat list of independent checks, one per setting
    """Read and validate every setting; raise ConfigError naming the first bad variable."""
    env = _Env(_renamed(os.environ if environ is None else environ))
    if not env.boolean("B2C_DEMO_DEFAULTS", True):
        missing = [name for name in DEMO_DEFAULTED if env.optional(name) is None]
        if missing:
            reason = "required, because B2C_DEMO_DEFAULTS=false turns their demo defaults off"
            raise ConfigError(", ".join(missing), reason)
    data_dir = Path(env.text("B2C_DATA_DIR", str(Path.home() / ".local" / "state" / "mpesa-b2c"))).expanduser()

    shortcode = env.text("B2C_SHORTCODE", "600000")
    if not shortcode.isdigit() or not 5 <= len(shortcode) <= 7:
        raise ConfigError("B2C_SHORTCODE", f"{shortcode!r} is not a 5-7 digit shortcode")
    org_name = env.text("B2C_ORG_NAME", "mpesab2c")
    if not org_name.isalnum():
        raise ConfigError("B2C_ORG_NAME", "must be letters and digits only (it goes into OriginatorConversationID)")

    namespace_choice = env.text("B2C_HEADER_NAMESPACE", "osg")
    namespaces = {"osg": HEADER_NS_OSG, "xsd": HEADER_NS_XSD}
    if namespace_choice not in namespaces:
        raise ConfigError("B2C_HEADER_NAMESPACE", f"{namespace_choice!r} is neither 'osg' nor 'xsd'")

    # PROTOCOL §2: the XSD says UTC, many integrators sent Nairobi time; which the gateway checks is unconfirmed.
    zone_choice = env.text("B2C_HEADER_TIMEZONE", "utc")
    header_zones: dict[str, tzinfo] = {"utc": UTC, "nairobi": NAIROBI}
    if zone_choice not in header_zones:
        raise ConfigError("B2C_HEADER_TIMEZONE", f"{zone_choice!r} is neither 'utc' nor 'nairobi'")

    amount_min = env.decimal("B2C_AMOUNT_MIN", "10")
    amount_max = env.decimal("B2C_AMOUNT_MAX", "250000")
    if amount_min > amount_max:
        raise ConfigError("B2C_AMOUNT_MIN", f"{amount_min} is above B2C_AMOUNT_MAX {amount_max}")

    tls_cert = env.path("B2C_TLS_CLIENT_CERT", None, must_exist=True)
    tls_key = env.path("B2C_TLS_CLIENT_KEY", None, must_exist=True)
    if (tls_cert is None) != (tls_key is None):
        raise ConfigError("B2C_TLS_CLIENT_KEY", "B2C_TLS_CLIENT_CERT and B2C_TLS_CLIENT_KEY go together")

    mpesa = MpesaSettings(
        url=env.url("B2C_MPESA_URL", "http://127.0.0.1:8310/mminterface/request", ("http", "https")),
        sp_id=env.text("B2C_SP_ID", "107031"),
        sp_password=Secret(env.text("B2C_SP_PASSWORD", "demo-sp-password")),
        service_id=env.text("B2C_SERVICE_ID", "107031000"),
        initiator_name=env.text("B2C_INITIATOR_NAME", "apiop37"),
        initiator_password=Secret(env.text("B2C_INITIATOR_PASSWORD", "demo-initiator-password")),
        shortcode=shortcode,
        org_name=org_name,
        cert_path=env.path("B2C_CERT_PATH", data_dir / "mpesa-cert.pem") or data_dir / "mpesa-cert.pem",
        result_url=env.url("B2C_RESULT_URL", "http://127.0.0.1:8320/mpesa/result", ("http", "https")),
        queue_timeout_url=env.url(
            "B2C_QUEUE_TIMEOUT_URL", "http://127.0.0.1:8320/mpesa/queue-timeout", ("http", "https")
        ),
        header_namespace=namespaces[namespace_choice],
        password_uppercase=env.boolean("B2C_SP_PASSWORD_UPPERCASE", True),
        header_timezone=header_zones[zone_choice],
        tls_client_cert=tls_cert,
        tls_client_key=tls_key,
        tls_ca_bundle=env.path("B2C_TLS_CA_BUNDLE", None, must_exist=True),
        connect_timeout=env.number("B2C_CONNECT_TIMEOUT", 5.0, minimum=0.1),
        read_timeout=env.number("B2C_READ_TIMEOUT", 30.0, minimum=0.1),
        retry_attempts=env.integer("B2C_RETRY_ATTEMPTS", 4),
        retry_max_seconds=env.number("B2C_RETRY_MAX_SECONDS", 20.0, minimum=0.0),
        amount_min=amount_min,
        amount_max=amount_max,
    )
    amqp = AmqpSettings(
        url=env.url("B2C_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/%2F", ("amqp", "amqps")),
        command_queue=env.text("B2C_COMMAND_QUEUE", "payouts.commands"),
        events_exchange=env.text("B2C_EVENTS_EXCHANGE", "payouts.events"),
        dead_queue=env.text("B2C_DEAD_QUEUE", "payouts.dead"),
        delivery_limit=env.integer("B2C_DELIVERY_LIMIT", 20),
        prefetch=env.integer("B2C_PREFETCH", 32),
    )
    database_url = env.optional("B2C_DATABASE_URL")
    if database_url is not None and urlsplit(database_url).scheme not in ("postgresql", "postgres"):
        raise ConfigError("B2C_DATABASE_URL", f"{redact_url(database_url)!r} is not a postgresql:// URL")
    ledger = LedgerSettings(
        database_url=database_url,
        sqlite_path=env.path("B2C_SQLITE_PATH", data_dir / "ledger.sqlite3") or data_dir / "ledger.sqlite3",
    )
    simulator = SimulatorSettings(
        private_key_path=env.path("B2C_SIM_PRIVATE_KEY", None, must_exist=True),
        initial_balance=env.decimal("B2C_SIM_BALANCE", "10000000"),
    )
    lookup = LookupSettings(
        unknown_after=env.number("B2C_LOOKUP_AFTER_SECONDS", 30.0, minimum=0.0),
        interval=env.number("B2C_LOOKUP_INTERVAL_SECONDS", 60.0, minimum=0.1),
        max_attempts=env.integer("B2C_LOOKUP_MAX_ATTEMPTS", 5),
        max_seconds=env.number("B2C_LOOKUP_MAX_SECONDS", 3600.0, minimum=1.0),
        result_timeout=env.number("B2C_RESULT_TIMEOUT_SECONDS", 300.0, minimum=0.1),
        confirm_success=env.boolean("B2C_CONFIRM_SUCCESS", False),
    )
    flow = FlowSettings(
        retry_delays=env.seconds_list("B2C_RETRY_DELAYS", "5,30,120,600"),
        rate_limit=env.number("B2C_RATE_LIMIT", 0.0, minimum=0.0),
        rate_burst=env.integer("B2C_RATE_BURST", 1),
        breaker_threshold=env.integer("B2C_BREAKER_THRESHOLD", 5),
        breaker_probe_seconds=env.number("B2C_BREAKER_PROBE_SECONDS", 30.0, minimum=0.1),
    )
    token = env.text("B2C_CALLBACK_TOKEN", DEMO_CALLBACK_TOKEN)
    if len(token) < 16 or not all(c.isalnum() or c in "-_" for c in token):
        raise ConfigError("B2C_CALLBACK_TOKEN", "must be at least 16 characters of letters, digits, - or _")
    receiver = ReceiverSettings(
        callback_token=Secret(token),
        allowed_networks=env.networks("B2C_CALLBACK_ALLOWED_NETWORKS"),
        trusted_proxies=env.networks("B2C_TRUSTED_PROXIES"),
        max_body_bytes=env.integer("B2C_CALLBACK_MAX_BYTES", 64 * 1024, minimum=1024),
    )
    log_level = env.text("B2C_LOG_LEVEL", "INFO").upper()
    if log_level not in ("DEBUG", "INFO", "WARNING", "ERROR"):
        raise ConfigError("B2C_LOG_LEVEL", f"{log_level!r} is not DEBUG, INFO, WARNING or ERROR")
    return Settings(
        mpesa=mpesa,
        amqp=amqp,
        ledger=ledger,
        simulator=simulator,
        lookup=lookup,
        flow=flow,
        receiver=receiver,
        data_dir=data_dir,
        concurrency=env.integer("B2C_CONCURRENCY", 16),
        log_level=log_level,
        outbox_interval=env.number("B2C_OUTBOX_INTERVAL", 1.0, minimum=0.05),
    )
