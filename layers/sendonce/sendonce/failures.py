"""Why a campaign's messages failed: by code with Meta's title, and row by row (`campaign failures`)."""

from __future__ import annotations

import psycopg

from sendonce import graph_errors
from sendonce.campaigns import canonical_campaign_id, existing_campaign
from sendonce.errors import CampaignInputError
from sendonce.observability import scrub
from sendonce.phones import mask
from sendonce.repository import failures as repository

MAX_PAGE = 1000


def breakdown(conn: psycopg.Connection, campaign_id: str) -> list[dict]:
    """Failures by stage (send: the `failed` counter; delivery: reported by Meta's webhooks) and code.

    Each item: {"stage", "code", "title", "rows"}; the send items add up to the `failed` counter.
    """
    return [
        {"stage": f["stage"], "code": f["code"], "title": graph_errors.title(f["code"], f["reason"]), "rows": f["rows"]}
        for f in repository.failures_by_code(conn, campaign_id)
    ]


def failed_rows(conn: psycopg.Connection, campaign_id: str, limit: int = 50, after: int = 0) -> dict:
    """A page of the campaign's failed rows (send or delivery), numbers masked, and the `after` of the next page.

    Raises
    ------
    CampaignNotFoundError
        No campaign has that id.
    CampaignInputError
        `limit` is not from 1 to MAX_PAGE, or `after` is negative.
    """
    campaign_id = canonical_campaign_id(campaign_id)
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_PAGE:
        raise CampaignInputError(f"limit must be from 1 to {MAX_PAGE}, got {limit!r}")
    if isinstance(after, bool) or not isinstance(after, int) or not 0 <= after < 2**63:
        raise CampaignInputError(f"after must be a row id (0 or more), got {after!r}")
    existing_campaign(conn, campaign_id)
    found = repository.failed_rows(conn, campaign_id, limit, after)
    listed = [
        {"queue_id": r["id"], "to": mask(r["phone_number"]), "stage": r["stage"], "code": r["code"],
         "title": graph_errors.title(r["code"], (r["error"] or "").split(":")[0] or None),
         "error": scrub(r["error"]) if r["error"] else None, "at": r["at"].isoformat() if r["at"] else None}
        for r in found
    ]
    return {"campaign_id": campaign_id, "rows": listed, "next_after": found[-1]["id"] if len(found) == limit else None}
