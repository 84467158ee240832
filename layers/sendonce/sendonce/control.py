"""Campaign control: status, list, pause, resume, cancel, retry-failed. The CLI and the HTTP API call these."""

from __future__ import annotations

import uuid

import psycopg

from sendonce import campaigns, cost, failures, messaging_limit
from sendonce.campaigns import canonical_campaign_id
from sendonce.config import get_settings
from sendonce.errors import (
    CampaignInputError,
    CampaignNotFoundError,
    CampaignStateError,
    ConfigError,
    EnqueueError,
)
from sendonce.observability import gauge, logger
from sendonce.repository import control as repository

COUNTER_KEYS = ("recipients", "pending", "sent", "delivered", "read", "failed", "cancelled")
# Most rows a listing returns: each campaign is counted on the fly.
MAX_LIST = 1000


def status(conn: psycopg.Connection, campaign_id: str, with_cost: bool = True) -> dict:
    """The campaign's numbers from the one definition (`campaign_counters`), what Meta's limits do to it, its
    failures by code and (`with_cost`: one more query over its rows) its estimated and actual cost.

    Raises
    ------
    CampaignNotFoundError
        No campaign has that id.
    """
    campaign_id = canonical_campaign_id(campaign_id)
    row = repository.counters(conn, campaign_id)
    if row is None:
        raise CampaignNotFoundError(f"no campaign {campaign_id}")
    return {**as_json(row), **_meta_state(conn, campaign_id, with_cost)}


NOT_NOW_TITLES = {
    131049: "per-user marketing limit: Meta did not deliver, to keep engagement healthy (wait 24 h)",
    130472: "user in Meta's marketing message experiment (a resend gets the same answer)",
    131048: "spam rate limit on the number (check its quality in WhatsApp Manager)",
}


def _meta_state(conn: psycopg.Connection, campaign_id: str, with_cost: bool) -> dict:
    """What Meta's limits do to the campaign: its pause, template, the messaging limit, waiting rows, "not now"."""
    detail = repository.campaign_detail(conn, campaign_id, sorted(NOT_NOW_TITLES))
    if detail is None:  # deleted meanwhile
        return {}
    limit = messaging_limit.usage(conn, detail["phone_number_id"])
    waiting = detail["waiting"]
    for_limit = sum(w["rows"] for w in waiting if w["reason"] == "messaging limit")
    if limit["known"] and limit["limit"] is not None:
        limit["waiting"] = for_limit
        if for_limit or limit["next_room_at"]:
            limit["message"] = (f"waiting for the messaging limit: {limit['used']:,} of {limit['limit']:,} used, "
                                f"next room at {limit['next_room_at'] or 'now'}"
                                + (f" ({for_limit:,} rows of this campaign wait)" if for_limit else ""))
    return {
        "paused_by": detail["paused_by"],
        "paused_until": detail["paused_until"].isoformat() if detail["paused_until"] else None,
        "auto_resume": detail["auto_resume"],
        "start_at": detail["start_at"].isoformat() if detail["start_at"] else None,
        "template": {"name": detail["template_name"], "language": detail["language_code"],
                     "status": detail["template_status"], "reason": detail["template_reason"]},
        "messaging_limit": limit,
        "waiting": waiting,
        "not_now": [{**n, "title": NOT_NOW_TITLES[n["code"]]} for n in detail["not_now"]],
        "failures": failures.breakdown(conn, campaign_id),
        **({"cost": cost.campaign_cost(conn, campaign_id, detail["template_category"])} if with_cost else {}),
    }


def as_json(row: dict) -> dict:
    """A counters row as the contract's JSON: counters, status, pause reason, id, name, timestamps."""
    return {
        "campaign_id": row["campaign_id"],
        "name": row["name"],
        "status": row["status"],
        "pause_reason": row["pause_reason"],
        **{key: row[key] for key in COUNTER_KEYS},
        "created_at": row["created_at"].isoformat(),
        "completed_at": row["completed_at"].isoformat() if row["completed_at"] else None,
    }


def list_campaigns(conn: psycopg.Connection, limit: int = 50) -> list[dict]:
    """The newest campaigns with their numbers.

    Raises
    ------
    CampaignInputError
        `limit` is not from 1 to MAX_LIST (PostgreSQL would refuse a negative one only after connecting).
    """
    check_limit(limit)
    return [as_json(row) for row in repository.campaign_list(conn, limit)]


def check_limit(limit: int, name: str = "limit") -> int:
    """Return `limit` if it is from 1 to MAX_LIST, else raise `CampaignInputError` naming it."""
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_LIST:
        raise CampaignInputError(f"{name} must be from 1 to {MAX_LIST}, got {limit!r}")
    return limit


def _change(conn: psycopg.Connection, statement: str, campaign_id: str, action: str, allowed: str, **params) -> tuple:
    """Run a control statement; return what it counted after the status it found (rows or campaigns changed, ...)."""
    campaign_id = canonical_campaign_id(campaign_id)
    result = repository.change_campaign(conn, statement, campaign_id, **params)
    if result is None:
        raise CampaignNotFoundError(f"no campaign {campaign_id}")
    found, *counted = result
    if found not in allowed.split("|"):
        raise CampaignStateError(f"cannot {action} campaign {campaign_id}: it is {found}")
    logger.info(f"campaign {action}", campaign_id=campaign_id, previous_status=found, changed=counted[0])
    return tuple(counted)


def pause(conn: psycopg.Connection, campaign_id: str, reason: str = "paused by operator") -> dict:
    """Pause a running campaign (pausing a paused one is a no-op); the sender acknowledges its messages unsent."""
    campaign_id = canonical_campaign_id(campaign_id)
    _change(conn, repository.PAUSE_CAMPAIGN, campaign_id, "pause", "running|paused", reason=reason)
    return status(conn, campaign_id)


def resume(conn: psycopg.Connection, campaign_id: str, queue_url: str, force: bool = False) -> dict:
    """Resume a paused (or running) campaign and enqueue its `ready` rows, which the pause left unsent.

    Refused while its template is known to be paused, disabled or rejected (every send would fail), unless
    `force`: when the status webhook that approved it again never came.
    """
    campaign_id = canonical_campaign_id(campaign_id)
    block = None if force else repository.template_block(conn, campaign_id)
    if block:
        until = f", until about {block['paused_until'].isoformat(timespec='minutes')}" if block["paused_until"] else ""
        raise CampaignStateError(
            f"cannot resume campaign {campaign_id}: its template {block['name']} ({block['language']}) is "
            f"{block['status']}{until} (Meta refuses to send it); it can resume when Meta approves it again "
            "(campaigns created with --auto-resume do by themselves), or with --force"
        )
    _change(conn, repository.RESUME_CAMPAIGN, campaign_id, "resume", "paused|running")
    return {**status(conn, campaign_id), "enqueued": campaigns.enqueue_campaign(conn, campaign_id, queue_url)}


def cancel(conn: psycopg.Connection, campaign_id: str) -> dict:
    """Cancel: pending rows become `cancelled`; a send already in flight finishes and is counted."""
    campaign_id = canonical_campaign_id(campaign_id)
    (rows,) = _change(conn, repository.CANCEL_CAMPAIGN, campaign_id, "cancel", "running|paused|draft|scheduled|cancelled")
    return {**status(conn, campaign_id), "rows_cancelled": rows}


def retry_failed(conn: psycopg.Connection, campaign_id: str, queue_url: str, include_unconfirmed: bool = False) -> dict:
    """Put the retryable failed rows back to `ready` and enqueue every `ready` row of the campaign.

    Not retried: opted-out recipients (131050), the per-user marketing limit (131049) hit less than 24 h ago,
    any row with a WAMID, and, unless `include_unconfirmed`, rows the ambiguous policy failed as `unconfirmed`:
    Meta may have accepted their first send, so a resend may reach the recipient twice. Every ready row is
    enqueued, not only those retried now, so running it again after an error finishes the job.
    """
    campaign_id = canonical_campaign_id(campaign_id)
    enqueue_id = uuid.uuid4().hex
    rows, unconfirmed = _change(
        conn, repository.RETRY_FAILED, campaign_id, "retry failed rows of", "running|paused|completed",
        enqueue_id=enqueue_id, include_unconfirmed=include_unconfirmed,
    )
    if unconfirmed:
        logger.warning("unconfirmed rows not retried", campaign_id=campaign_id, unconfirmed=unconfirmed)
    enqueued = campaigns.enqueue_campaign(conn, campaign_id, queue_url, enqueue_id=enqueue_id)
    return {**status(conn, campaign_id), "rows_retried": rows, "unconfirmed_not_retried": unconfirmed, "enqueued": enqueued}


def auto_resume(conn: psycopg.Connection, queue_url: str) -> list[str]:
    """Resume the paused campaigns that asked for it (auto_resume) once their pause is over; their ids.

    A campaign that cannot resume (its state changed meanwhile) is logged and left alone.
    """
    resumed = []
    for campaign_id, paused_by in repository.due_auto_resume(conn):
        try:
            resume(conn, campaign_id, queue_url)
        except (CampaignStateError, CampaignNotFoundError) as exc:
            logger.warning("campaign not resumed automatically", campaign_id=campaign_id, error=str(exc))
            continue
        except (EnqueueError, ConfigError) as exc:
            # Resumed, but its rows were not all enqueued: paused again, due, for the next run (repeating an
            # enqueue is harmless: the claim sends each row once).
            logger.error("automatic resume failed; tried again at the next run", campaign_id=campaign_id,
                         error=str(exc)[:500])
            repository.pause_again(conn, campaign_id, paused_by, str(exc)[:500])
            continue
        logger.info("campaign resumed automatically", campaign_id=campaign_id)
        resumed.append(campaign_id)
    return resumed


def recompute(conn: psycopg.Connection, campaign_id: str | None = None) -> list[tuple[str, str, bool]]:
    """Write campaigns.total_* from the shared definition; completes running campaigns with nothing pending.

    Returns (campaign id, status, stalled) for each campaign recomputed; the stalled ones (running, rows pending,
    counters unchanged for STALLED_AFTER_SECONDS) are counted in the CampaignsWithoutProgress metric.
    """
    campaigns = repository.recompute_counters(
        conn, canonical_campaign_id(campaign_id) if campaign_id else None, get_settings().stalled_after_seconds
    )
    stalled = [campaign for campaign, _, is_stalled in campaigns if is_stalled]
    if stalled:
        logger.warning("campaigns without progress", campaigns=stalled[:20], count=len(stalled))
    gauge("CampaignsWithoutProgress", len(stalled))
    return campaigns
