"""Settings read from the environment once per execution environment."""

from __future__ import annotations

import json
import math
import os
import re
from dataclasses import dataclass
from functools import lru_cache

from sendonce.errors import ConfigError

DEFAULT_API_BASE_URL = "https://graph.facebook.com/v26.0"  # the stack sets it from GraphApiVersion
AMBIGUOUS_POLICIES = ("resend", "fail")
# What a sender keeps of a claim's window after its last send may have started: time to write the results to
# PostgreSQL (retried on fresh connections), then to the batch journal when PostgreSQL did not take them.
FINALIZE_SECONDS = 3.0
JOURNAL_SECONDS = 2.0
# WHATSAPP_APP_SECRET=none: deployed without the webhook, on purpose (the template requires a choice).
WEBHOOK_DISABLED = "none"


@dataclass(frozen=True)
class Settings:
    """sendonce's configuration; names follow the environment variables (README, Configuration)."""

    database_url: str | None
    send_queue_url: str | None
    dlq_url: str | None
    idempotency_table: str | None
    whatsapp_api_base_url: str
    whatsapp_access_token: str | None
    whatsapp_app_secret: str | None
    webhook_verify_token: str | None
    stuck_after_seconds: int
    stalled_after_seconds: int  # a running campaign whose counters have not moved for this long is stalled
    ambiguous_policy: str
    whatsapp_max_mps: int
    whatsapp_timeout_seconds: float
    # Throttled sends (130429, 131056) come back after base x 2^(attempt-1) or base x 4^(attempt-1) seconds.
    throttle_base_seconds: int
    # A claimed row whose send slot is further away than this is deferred instead of waited for.
    max_slot_wait_seconds: int
    error_rate_window: int
    error_rate_threshold: float
    # None behind a pooler that does not support prepared statements (RDS Proxy in transaction mode, PgBouncer).
    pg_prepare_threshold: int | None
    # Meta's limits (docs/meta-limits.md): the WABA whose templates the preflight reads; the messaging limit's
    # moving window (24 h; shorter only to simulate time); how long a 131048 (spam rate limit) pauses a campaign;
    # how long the preflight trusts a template it read.
    whatsapp_business_account_id: str | None = None
    messaging_window_seconds: float = 86_400.0
    spam_pause_seconds: int = 3600
    template_cache_seconds: int = 300

    def webhook_secret(self) -> str:
        """The app secret that signs webhook POSTs (resolved from Secrets Manager when an ARN); '' if unset."""
        if not self.whatsapp_app_secret or self.whatsapp_app_secret.lower() == WEBHOOK_DISABLED:
            return ""
        return resolve_secret(self.whatsapp_app_secret)

    def longest_claim_seconds(self) -> float:
        """How long a sender may hold a claim: slot wait, the send's timeout, then finalize and journal."""
        return self.max_slot_wait_seconds + self.whatsapp_timeout_seconds + FINALIZE_SECONDS + JOURNAL_SECONDS


# The values go to PostgreSQL as integer parameters: a larger one would fail there, far from its cause.
MAX_INT_SETTING = 2**31 - 1


def _int(name: str, default: int, minimum: int = 0) -> int:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"{name} must be a whole number, got {raw!r}") from None
    if value < minimum:
        raise ConfigError(f"{name} must be at least {minimum}, got {value}")
    if value > MAX_INT_SETTING:
        raise ConfigError(f"{name} must be at most {MAX_INT_SETTING}, got {raw!r}")
    return value


def _float(name: str, default: float, what: str = "a number of seconds", maximum: float = math.inf) -> float:
    raw = os.environ.get(name, "").strip()
    try:
        value = float(raw) if raw else default
    except ValueError:
        raise ConfigError(f"{name} must be {what}, got {raw!r}") from None
    # float() also takes "nan" and "inf", which pass every comparison below the wrong way.
    if not math.isfinite(value) or value <= 0:
        raise ConfigError(f"{name} must be {what} above 0, got {raw!r}")
    if value > maximum:
        raise ConfigError(f"{name} must be {what} from 0 to {maximum:g}, got {raw!r}")
    return value


def _digits(name: str) -> str | None:
    """An id made of digits (Meta's ids), or None when unset."""
    raw = os.environ.get(name, "").strip()
    if raw and not (raw.isascii() and raw.isdigit() and len(raw) <= 32):
        raise ConfigError(f"{name} must be digits (an id from WhatsApp Manager), got {raw[:40]!r}")
    return raw or None


def _prepare_threshold() -> int | None:
    raw = os.environ.get("PG_PREPARE_THRESHOLD", "").strip().lower()
    if raw in ("none", "off", "disabled"):
        return None
    return _int("PG_PREPARE_THRESHOLD", 5)


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """Read and validate the settings; cached until `get_settings.cache_clear()`.

    Raises
    ------
    ConfigError
        When a value is present but invalid.
    """
    policy = os.environ.get("AMBIGUOUS_POLICY", "resend").strip().lower() or "resend"
    if policy not in AMBIGUOUS_POLICIES:
        raise ConfigError(f"AMBIGUOUS_POLICY must be one of {', '.join(AMBIGUOUS_POLICIES)}, got {policy!r}")
    settings = Settings(
        database_url=os.environ.get("DATABASE_URL") or None,
        send_queue_url=os.environ.get("SEND_QUEUE_URL") or None,
        dlq_url=os.environ.get("DLQ_URL") or None,
        idempotency_table=os.environ.get("IDEMPOTENCY_TABLE") or None,
        whatsapp_api_base_url=(os.environ.get("WHATSAPP_API_BASE_URL") or DEFAULT_API_BASE_URL).rstrip("/"),
        whatsapp_access_token=os.environ.get("WHATSAPP_ACCESS_TOKEN") or None,
        whatsapp_app_secret=os.environ.get("WHATSAPP_APP_SECRET") or None,
        webhook_verify_token=os.environ.get("WEBHOOK_VERIFY_TOKEN") or None,
        stuck_after_seconds=_int("STUCK_AFTER_SECONDS", 600, minimum=1),
        stalled_after_seconds=_int("STALLED_AFTER_SECONDS", 900, minimum=60),
        ambiguous_policy=policy,
        whatsapp_max_mps=_int("WHATSAPP_MAX_MPS", 80, minimum=1),
        whatsapp_timeout_seconds=_float("WHATSAPP_TIMEOUT_SECONDS", 10.0),
        throttle_base_seconds=_int("THROTTLE_BASE_SECONDS", 1),
        max_slot_wait_seconds=_int("MAX_SLOT_WAIT_SECONDS", 10, minimum=1),
        error_rate_window=_int("ERROR_RATE_WINDOW", 200, minimum=1),
        # A share of failures: above 1 could never be reached, so the error-rate pause would be silently off.
        error_rate_threshold=_float("ERROR_RATE_THRESHOLD", 0.5, "a share of failed sends", maximum=1.0),
        pg_prepare_threshold=_prepare_threshold(),
        whatsapp_business_account_id=_digits("WHATSAPP_BUSINESS_ACCOUNT_ID"),
        messaging_window_seconds=_float("MESSAGING_WINDOW_SECONDS", 86_400.0, maximum=30 * 86_400.0),
        spam_pause_seconds=_int("SPAM_PAUSE_SECONDS", 3600, minimum=1),
        template_cache_seconds=_int("TEMPLATE_CACHE_SECONDS", 300),
    )
    # reset_stuck treats a row as stuck after STUCK_AFTER_SECONDS: a window shorter than a sender may hold its
    # claim would resend a row whose first send is still waiting for its answer.
    if settings.stuck_after_seconds <= settings.longest_claim_seconds():
        raise ConfigError(
            f"STUCK_AFTER_SECONDS ({settings.stuck_after_seconds}) must be more than a sender may hold a claim: "
            f"MAX_SLOT_WAIT_SECONDS + WHATSAPP_TIMEOUT_SECONDS + {FINALIZE_SECONDS + JOURNAL_SECONDS:g} = "
            f"{settings.longest_claim_seconds():g} s; a shorter window resends rows whose send is still in flight"
        )
    return settings


def require(value: str | None, name: str) -> str:
    """Return a setting that must be present, or raise `ConfigError` naming its variable."""
    if not value:
        raise ConfigError(f"{name} is not set")
    return value


def send_queue_url() -> str:
    """SEND_QUEUE_URL, which every operation that enqueues needs; raises `ConfigError` when unset."""
    return require(get_settings().send_queue_url, "SEND_QUEUE_URL")


def resolve_secret(value: str, fresh: bool = False) -> str:
    """Return `value`, or the secret it names when it is a Secrets Manager ARN.

    Cached by Powertools for 5 minutes; `fresh` reads it again (after a rotation made the cached one fail).
    """
    if not is_secret_arn(value):
        return value
    from aws_lambda_powertools.utilities.parameters import get_secret

    return get_secret(value, max_age=300, force_fetch=fresh)


# libpq's sslmode values; any other is refused only when connecting, which would look like an outage.
_SSL_MODES = ("disable", "allow", "prefer", "require", "verify-ca", "verify-full")
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")
# A quoted piece of the value in libpq's message may hold the password: it is never repeated.
_QUOTED = re.compile(r'"([^"]*)"')


def database_url() -> str:
    """DATABASE_URL (the secret it names, when an ARN), checked before anything connects.

    Returns
    -------
    str
        The connection string.

    Raises
    ------
    ConfigError
        DATABASE_URL is unset, malformed, or names a secret that cannot be read. No message shows the password.
    """
    raw = require(get_settings().database_url, "DATABASE_URL")
    if not is_secret_arn(raw):
        check_database_url(raw)
        return raw
    from aws_lambda_powertools.utilities.parameters.exceptions import GetParameterError
    from botocore.exceptions import BotoCoreError

    try:
        url = _from_rds_secret(resolve_secret(raw))
    except (GetParameterError, BotoCoreError) as exc:  # Powertools wraps boto3's errors, but not a missing region
        raise ConfigError(f"DATABASE_URL names a Secrets Manager secret that cannot be read: {exc}") from None
    check_database_url(url, "the secret DATABASE_URL names")
    return url


def _from_rds_secret(secret: str) -> str:
    """A connection string from the JSON secret RDS manages ({"username", "password", "host", "port", "dbname"})."""
    if not secret.lstrip().startswith("{"):
        return secret
    from psycopg.conninfo import make_conninfo

    try:
        fields = json.loads(secret)
        return make_conninfo(
            host=fields["host"], port=str(fields.get("port") or 5432), user=fields["username"],
            password=fields["password"], dbname=fields.get("dbname") or "postgres",
        )
    except (ValueError, TypeError, KeyError) as exc:
        raise ConfigError(
            "the secret DATABASE_URL names is JSON but not an RDS database secret (username, password, host, "
            f"port, dbname): {type(exc).__name__}"
        ) from None


def check_database_url(url: str, name: str = "DATABASE_URL") -> None:
    """Raise `ConfigError` unless `url` is a libpq connection string (URI or key=value) with usable values.

    Parameters
    ----------
    url
        postgresql://USER:PASSWORD@HOST:PORT/DBNAME, or "host=... dbname=...".
    name
        What to call it in the message.
    """
    from psycopg import ProgrammingError
    from psycopg.conninfo import conninfo_to_dict

    expected = "expected postgresql://USER:PASSWORD@HOST:5432/DBNAME"
    scheme = _SCHEME.match(url)
    if scheme and scheme.group(1).lower() not in ("postgresql", "postgres"):
        raise ConfigError(f"{name} must start with postgresql://, not {scheme.group(1)}://: {expected}")
    try:
        params = conninfo_to_dict(url)
    except ProgrammingError as exc:
        reason = _QUOTED.sub(lambda m: m.group(0) if len(m.group(1)) < 2 else '"..."', " ".join(str(exc).split()))
        raise ConfigError(f"{name} is not a PostgreSQL connection string ({reason}): {expected}") from None
    for port in str(params.get("port") or "").split(","):
        if port and not (port.isdigit() and 0 < int(port) < 65536):
            raise ConfigError(f"{name}: the port must be a number from 1 to 65535, got {port!r}")
    sslmode = params.get("sslmode")
    if sslmode is not None and sslmode not in _SSL_MODES:
        raise ConfigError(f"{name}: sslmode must be one of {', '.join(_SSL_MODES)}, got {sslmode!r}")


def database_password() -> str | None:
    """The password in DATABASE_URL, if any: what error messages must never show."""
    # From the environment, not the settings: it must work while the settings themselves are refused.
    raw = os.environ.get("DATABASE_URL") or ""
    if not raw or is_secret_arn(raw):
        return None
    from psycopg import ProgrammingError
    from psycopg.conninfo import conninfo_to_dict

    try:
        return conninfo_to_dict(raw).get("password") or None
    except ProgrammingError:  # malformed: check_database_url redacts its own message
        return None


def check_queue_url(url: str, name: str) -> None:
    """Raise `ConfigError` unless `url` looks like an SQS queue URL (people give the ARN or the name)."""
    if url.startswith("arn:"):
        raise ConfigError(f"{name} must be the queue's URL (https://sqs.REGION.amazonaws.com/ACCOUNT/NAME), not its ARN")
    if not url.startswith(("https://", "http://")):
        raise ConfigError(
            f"{name} must be the queue's URL (https://sqs.REGION.amazonaws.com/ACCOUNT/NAME), got {url[:60]!r}"
        )


def missing_aws() -> list[str]:
    """What boto3 lacks to call AWS (or a local stand-in): a region, credentials. Empty when both are there.

    Checked before a command writes anything: without them every SQS call fails after the rows were written.

    Raises
    ------
    ConfigError
        The AWS configuration itself is broken (AWS_PROFILE names no profile, say).
    """
    import boto3
    from botocore.exceptions import BotoCoreError

    try:
        session = boto3.session.Session()
        region = session.region_name
        credentials = session.get_credentials()
    except BotoCoreError as exc:
        raise ConfigError(f"the AWS configuration cannot be used: {exc}") from None
    missing = []
    if not region:
        # boto3 reads AWS_DEFAULT_REGION (Lambda sets both); AWS_REGION alone is a common near miss.
        alone = "; AWS_REGION is set, but boto3 does not read it" if os.environ.get("AWS_REGION") else ""
        missing.append(f"an AWS region (AWS_DEFAULT_REGION, or region in the AWS profile{alone})")
    if credentials is None:
        missing.append("AWS credentials (AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or AWS_PROFILE)")
    return missing


def is_secret_arn(value: str) -> bool:
    """Whether a setting names a Secrets Manager secret instead of holding the value."""
    return value.startswith("arn:") and ":secretsmanager:" in value
