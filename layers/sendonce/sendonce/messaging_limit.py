"""The business portfolio's messaging limit: how many unique users its numbers may message in a moving 24 h window.

Meta sets it per portfolio (250, 2,000, 10,000, 100,000 or unlimited), shared by all its numbers, and delivers
nothing past it without a word. sendonce knows it per phone number (`messaging_limits`): read from the Graph API
(`whatsapp_business_manager_messaging_limit`), set by an operator, or changed by the capability webhooks. The
users in the window are counted from `send_queue` across all campaigns of the portfolio (`messaging_window`,
migration 007). A number whose limit is unknown is not held back, and status says so. docs/meta-limits.md.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta

import psycopg

from sendonce import whatsapp
from sendonce.config import get_settings
from sendonce.errors import CampaignInputError, GraphRefusedError, GraphUnavailableError
from sendonce.observability import logger
from sendonce.repository import meta as repository

# Meta's tiers (older names kept: TIER_50, TIER_1K); None: unlimited.
TIERS: dict[str, int | None] = {
    "TIER_50": 50, "TIER_250": 250, "TIER_1K": 1000, "TIER_2K": 2000, "TIER_10K": 10_000, "TIER_100K": 100_000,
    "TIER_UNLIMITED": None,
}
LIMIT_FIELD = "whatsapp_business_manager_messaging_limit"
UNKNOWN = "unknown (not configured and not readable from the Graph API): campaigns are not held back"
SOURCES = {"graph": "read from the Graph API", "operator": "set by an operator", "webhook": "from Meta's webhook"}


def parse_limit(value: object) -> tuple[bool, int | None, str | None]:
    """Meta's value for a limit (TIER_2K, or a number, -1 unlimited) as (known, max recipients or None, tier)."""
    if isinstance(value, str) and value.upper() in TIERS:
        return True, TIERS[value.upper()], value.upper()
    if isinstance(value, str) and value.lstrip("-").isdigit():
        value = int(value)
    if isinstance(value, int) and not isinstance(value, bool):
        if value == -1:
            return True, None, "TIER_UNLIMITED"
        if value > 0:
            tier = next((name for name, n in TIERS.items() if n == value), None)
            return True, value, tier
    return False, None, None  # TIER_NOT_SET, or anything else


def tier_name(max_recipients: int | None) -> str:
    if max_recipients is None:
        return "unlimited"
    return f"{max_recipients:,} users per {_window_text()}"


def set_limit(conn: psycopg.Connection, phone_number_id: str, limit: str, portfolio_id: str | None = None) -> dict:
    """An operator sets a number's limit: a number, a tier (TIER_10K) or "unlimited"; "unknown" forgets it.

    Raises
    ------
    CampaignInputError
        `limit` is none of those.
    """
    if limit.strip().lower() == "unknown":
        repository.delete_limit(conn, phone_number_id)
        return {"phone_number_id": phone_number_id, "known": False}
    known, max_recipients, tier = parse_limit("TIER_UNLIMITED" if limit.strip().lower() == "unlimited" else limit.strip())
    if not known:
        raise CampaignInputError(
            f"--limit must be a number of users, a tier ({', '.join(TIERS)}), unlimited or unknown; got {limit!r}"
        )
    portfolio = portfolio_id or get_settings().whatsapp_business_account_id or phone_number_id
    repository.upsert_limit(conn, phone_number_id, portfolio, max_recipients, tier, "operator")
    logger.info("messaging limit set", phone_number_id=phone_number_id, portfolio_id=portfolio, limit=max_recipients)
    return {"phone_number_id": phone_number_id, "known": True, "portfolio_id": portfolio, "limit": max_recipients,
            "tier": tier}


def refresh_from_graph(conn: psycopg.Connection, phone_number_id: str) -> str | None:
    """Read the number's limit from the Graph API unless an operator set it; a note when it could not be read.

    Only with WHATSAPP_BUSINESS_ACCOUNT_ID (the portfolio's numbers are grouped under it).
    """
    waba_id = get_settings().whatsapp_business_account_id
    if not waba_id or repository.limit_source(conn, phone_number_id) == "operator":
        return None
    try:
        found = whatsapp.graph_get(phone_number_id, {"fields": f"{LIMIT_FIELD},display_phone_number"})
    except (GraphUnavailableError, GraphRefusedError) as exc:
        logger.warning("messaging limit not read", phone_number_id=phone_number_id, error=str(exc))
        return f"messaging limit not read: {exc}"
    known, max_recipients, tier = parse_limit(found.get(LIMIT_FIELD))
    if not known:
        return f"messaging limit not read: the Graph API gave no {LIMIT_FIELD}"
    display = found.get("display_phone_number")
    display = "".join(ch for ch in display if ch.isdigit()) if isinstance(display, str) else None
    repository.upsert_limit(conn, phone_number_id, waba_id, max_recipients, tier, "graph", display or None)
    return None


def usage(conn: psycopg.Connection, phone_number_id: str) -> dict:
    """The number's limit and the portfolio's use of it, for status and create."""
    settings = get_settings()
    found = repository.usage(conn, phone_number_id, settings.messaging_window_seconds)
    if found is None:
        return {"known": False, "message": f"messaging limit {UNKNOWN}"}
    cap = found["max_recipients"]
    next_room = found["next_room_at"]
    result = {
        "known": True, "portfolio_id": found["portfolio_id"], "limit": cap, "tier": found["tier"],
        "source": found["source"], "used": found["used"], "window_seconds": settings.messaging_window_seconds,
        "next_room_at": _iso(next_room) if cap is not None and found["used"] >= cap else None,
    }
    if cap is None:
        result["message"] = f"messaging limit: unlimited ({SOURCES[found['source']]})"
    else:
        result["message"] = (f"messaging limit: {found['used']:,} of {cap:,} used in the last {_window_text()} "
                             f"({SOURCES[found['source']]})")
    return result


def place_in_line(conn: psycopg.Connection, campaign_id: str) -> tuple[int, datetime | None, datetime | None]:
    """Rows beyond the room left wait for their place (no SQS message until then); see `place_in_messaging_line`."""
    return repository.place_in_line(conn, campaign_id, get_settings().messaging_window_seconds)


def forecast(before: dict, recipients: int, waiting: int, first: datetime | None, last: datetime | None) -> dict:
    """What `campaign create` says: how many recipients fit in the limit now, and when the rest will."""
    if not before["known"] or before["limit"] is None:
        return {**before, "fits_now": recipients, "waiting": 0}
    fits = recipients - waiting
    message = (f"{fits:,} of {recipients:,} recipients fit in the messaging limit now ({before['used']:,} of "
               f"{before['limit']:,} used in the last {_window_text()})")
    if waiting:
        message += f"; the other {waiting:,} wait for room: from about {_iso(first)}, all by about {_iso(last)}"
    return {**before, "fits_now": fits, "waiting": waiting, "first_room_at": _iso(first), "all_by": _iso(last),
            "message": message}


def _iso(at: datetime | None) -> str | None:
    return at.astimezone(UTC).isoformat(timespec="seconds") if at else None


def _window_text() -> str:
    seconds = get_settings().messaging_window_seconds
    if seconds == 86_400:
        return "24 h"
    return str(timedelta(seconds=math.ceil(seconds))) + " (MESSAGING_WINDOW_SECONDS)"
