"""Settings read from the environment once per execution environment."""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import lru_cache

from sendonce.errors import ConfigError

DEFAULT_API_BASE_URL = "https://graph.facebook.com/v23.0"
AMBIGUOUS_POLICIES = ("resend", "fail")
# What a sender keeps of a claim's window after its last send may have started: time to write the results to
# PostgreSQL (retried on fresh connections), then to the batch journal when PostgreSQL did not take them.
FINALIZE_SECONDS = 3.0
JOURNAL_SECONDS = 2.0
# WHATSAPP_APP_SECRET=none: deployed without the webhook, on purpose (the template requires a choice).
WEBHOOK_DISABLED = "none"


@dataclass(frozen=True)
class Settings:
    """sendonce's configuration; names follow the environment variables of ARCHITECTURE section 7."""

    database_url: str | None
    send_queue_url: str | None
    dlq_url: str | None
    idempotency_table: str | None
    whatsapp_api_base_url: str
    whatsapp_access_token: str | None
    whatsapp_app_secret: str | None
    webhook_verify_token: str | None
    stuck_after_seconds: int
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

    def webhook_secret(self) -> str:
        """The app secret that signs webhook POSTs (resolved from Secrets Manager when an ARN); '' if unset."""
        if not self.whatsapp_app_secret or self.whatsapp_app_secret.lower() == WEBHOOK_DISABLED:
            return ""
        return resolve_secret(self.whatsapp_app_secret)

    def longest_claim_seconds(self) -> float:
        """How long a sender may hold a claim: slot wait, the send's timeout, then finalize and journal."""
        return self.max_slot_wait_seconds + self.whatsapp_timeout_seconds + FINALIZE_SECONDS + JOURNAL_SECONDS


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
    return value


def _float(name: str, default: float) -> float:
    raw = os.environ.get(name, "").strip()
    try:
        value = float(raw) if raw else default
    except ValueError:
        raise ConfigError(f"{name} must be a number of seconds, got {raw!r}") from None
    if value <= 0:
        raise ConfigError(f"{name} must be positive, got {raw!r}")
    return value


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
        ambiguous_policy=policy,
        whatsapp_max_mps=_int("WHATSAPP_MAX_MPS", 80, minimum=1),
        whatsapp_timeout_seconds=_float("WHATSAPP_TIMEOUT_SECONDS", 10.0),
        throttle_base_seconds=_int("THROTTLE_BASE_SECONDS", 1),
        max_slot_wait_seconds=_int("MAX_SLOT_WAIT_SECONDS", 10, minimum=1),
        error_rate_window=_int("ERROR_RATE_WINDOW", 200, minimum=1),
        error_rate_threshold=_float("ERROR_RATE_THRESHOLD", 0.5),
        pg_prepare_threshold=_prepare_threshold(),
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


def resolve_secret(value: str) -> str:
    """Return `value`, or the secret it names when it is a Secrets Manager ARN (cached by Powertools for 5 min)."""
    if not (value.startswith("arn:") and ":secretsmanager:" in value):
        return value
    from aws_lambda_powertools.utilities.parameters import get_secret

    return get_secret(value, max_age=300)
