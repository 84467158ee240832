"""Creating a campaign and listing its rows to enqueue."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterable, Iterator

import psycopg

from sendonce.db import database_error, rows
from sendonce.errors import CampaignStateError

INSERT_CAMPAIGN = """
INSERT INTO campaigns (id, name, template_name, language_code, phone_number_id, components, total_recipients,
                       auto_resume, start_at, send_window_opens, send_window_closes, status)
VALUES (%(id)s, %(name)s, %(template_name)s, %(language_code)s, %(phone_number_id)s, %(components)s,
        %(total_recipients)s, %(auto_resume)s, %(start_at)s, %(window_opens)s, %(window_closes)s,
        CASE WHEN %(start_at)s::timestamptz > now() THEN 'scheduled' ELSE 'running' END)
"""

COPY_ROWS = "COPY send_queue (campaign_id, phone_number, params, time_zone) FROM STDIN"

# Numbers that opted out are counted as cancelled from the start and never enqueued.
CANCEL_SUPPRESSED = """
UPDATE send_queue q
SET status = 'cancelled', last_error = 'suppressed: ' || s.reason
FROM suppressions s
WHERE q.campaign_id = %(campaign_id)s AND s.phone_number = q.phone_number AND q.status = 'ready'
"""

SELECT_CAMPAIGN_STATUS = "SELECT status FROM campaigns WHERE id = %(campaign_id)s"

# The first enqueue of a new campaign: its rows have no other message yet. Rows that wait (for room in the
# messaging limit) get theirs when their wait is over (reset_stuck).
SELECT_READY_IDS = """
SELECT id FROM send_queue
WHERE campaign_id = %(campaign_id)s AND status = 'ready' AND (wait_until IS NULL OR wait_until <= now())
ORDER BY id
"""

# A re-enqueue (resume, retry-failed, `campaign enqueue`): the new messages become the rows' current ones, so
# an older message of the same row that runs out of receives later can no longer fail it. Marked by ranges of
# ids (a primary-key range scan each), so no statement holds the locks of a million rows.
SELECT_READY_ID_RANGE = """
SELECT min(id), max(id) FROM send_queue WHERE campaign_id = %(campaign_id)s AND status = 'ready'
"""
MARK_READY_IDS = """
UPDATE send_queue SET enqueue_id = %(enqueue_id)s
WHERE id >= %(low)s AND id < %(high)s AND campaign_id = %(campaign_id)s AND status = 'ready'
  AND (wait_until IS NULL OR wait_until <= now())
RETURNING id
"""
MARK_CHUNK = 10_000

# What a retried create is compared with (campaigns.replay_create).
SELECT_CAMPAIGN_FIELDS = """
SELECT name, template_name, language_code, phone_number_id, components FROM campaigns WHERE id = %(campaign_id)s
"""
SELECT_RECIPIENTS = "SELECT phone_number, params FROM send_queue WHERE campaign_id = %(campaign_id)s"
COUNT_RECIPIENTS = "SELECT count(*) FROM send_queue WHERE campaign_id = %(campaign_id)s"


# Retargeting: the rows of a campaign that make an audience, with the parameters they were sent with.
# not-delivered: failed, or sent and never reported delivered or read; not-read: sent and never reported read;
# failed: failed at the send; read: reported read. Cancelled rows (opted out, cancelled) are in none.
AUDIENCES = {
    "not-delivered": "q.status = 'failed' OR (q.status = 'sent' AND q.delivery_status IS DISTINCT FROM 'delivered' "
                     "AND q.delivery_status IS DISTINCT FROM 'read')",
    "not-read": "q.status = 'sent' AND q.delivery_status IS DISTINCT FROM 'read'",
    "failed": "q.status = 'failed'",
    "read": "q.delivery_status = 'read'",
}
# Built from the constant AUDIENCES: nothing from outside reaches the text.
SELECT_AUDIENCE = {
    name: f"SELECT q.phone_number, q.params FROM send_queue q WHERE q.campaign_id = %(campaign_id)s AND ({where}) "  # noqa: S608
          "ORDER BY q.id"
    for name, where in AUDIENCES.items()
}


def audience_rows(conn: psycopg.Connection, campaign_id: str, audience: str) -> Iterator[tuple[str, list]]:
    """Stream (phone_number, params) of the campaign's rows in `audience` (a key of AUDIENCES)."""
    try:
        with conn.transaction(), conn.cursor(name=f"audience_{uuid.uuid4().hex}") as cur:
            cur.itersize = 10_000
            cur.execute(SELECT_AUDIENCE[audience], {"campaign_id": campaign_id})
            yield from cur
    except psycopg.Error as exc:
        raise database_error(exc, "reading the audience failed") from exc


def insert_campaign(conn: psycopg.Connection, fields: dict, rows_: Iterable[tuple]) -> None:
    """Insert a campaign and COPY its rows, (phone, params[, time zone]) each, in one transaction: either all of it
    exists or none."""
    try:
        with conn.transaction(), conn.cursor() as cur:
            cur.execute(INSERT_CAMPAIGN, {**fields, "components": json.dumps(fields.get("components") or []),
                                          "auto_resume": bool(fields.get("auto_resume")),
                                          "start_at": fields.get("start_at"),
                                          "window_opens": fields.get("window_opens"),
                                          "window_closes": fields.get("window_closes")})
            campaign_id = uuid.UUID(fields["id"])
            with cur.copy(COPY_ROWS) as copy:
                copy.set_types(["uuid", "text", "text[]", "text"])
                for phone, params, *zone in rows_:
                    copy.write_row((campaign_id, phone, list(params), zone[0] if zone else None))
            cur.execute(CANCEL_SUPPRESSED, {"campaign_id": campaign_id})
    except psycopg.errors.UniqueViolation as exc:
        raise CampaignStateError(f"campaign {fields['id']} already exists") from exc
    except psycopg.Error as exc:
        raise database_error(exc, "creating the campaign failed") from exc


# Scheduled campaigns whose time has come, started one by one (each then enqueued by the caller).
START_DUE = """
UPDATE campaigns SET status = 'running', updated_at = now()
WHERE id = (SELECT id FROM campaigns WHERE status = 'scheduled' AND start_at <= now()
            ORDER BY start_at LIMIT 1 FOR UPDATE SKIP LOCKED)
RETURNING id::text
"""
# A start whose enqueue failed: scheduled again (still due), so the next run starts it again.
UNSTART = "UPDATE campaigns SET status = 'scheduled', updated_at = now() WHERE id = %(campaign_id)s AND status = 'running'"


# Quiet hours: the campaign's ready rows outside their recipient's send window wait for it to open.
WAIT_FOR_WINDOW = """
UPDATE send_queue q
SET wait_until = send_window_opens_at(c.send_window_opens, c.send_window_closes, q.time_zone),
    wait_reason = 'send window', updated_at = now()
FROM campaigns c
WHERE c.id = %(campaign_id)s AND q.campaign_id = c.id AND q.status = 'ready' AND c.send_window_opens IS NOT NULL
  AND (q.wait_until IS NULL OR q.wait_until <= now())
  AND send_window_opens_at(c.send_window_opens, c.send_window_closes, q.time_zone) IS NOT NULL
RETURNING q.id
"""


def wait_for_window(conn: psycopg.Connection, campaign_id: str) -> int:
    """Make the campaign's ready rows outside their send window wait for it; how many."""
    return len(rows(conn, WAIT_FOR_WINDOW, {"campaign_id": campaign_id}, "waiting for the send window failed"))


def start_due(conn: psycopg.Connection) -> str | None:
    """Start the next scheduled campaign whose time has come; its id, or None."""
    found = rows(conn, START_DUE, {}, "starting a scheduled campaign failed")
    return found[0][0] if found else None


def unstart(conn: psycopg.Connection, campaign_id: str) -> None:
    """Put a campaign whose start failed back to `scheduled`."""
    rows(conn, UNSTART, {"campaign_id": campaign_id}, "rescheduling the campaign failed")


def campaign_status(conn: psycopg.Connection, campaign_id: str) -> str | None:
    """The campaign's status, or None when it does not exist."""
    found = rows(conn, SELECT_CAMPAIGN_STATUS, {"campaign_id": campaign_id}, "reading the campaign failed")
    return found[0][0] if found else None


def ready_row_ids(conn: psycopg.Connection, campaign_id: str) -> Iterator[int]:
    """Stream the ids of a new campaign's `ready` rows through a server-side cursor (it may hold millions)."""
    try:
        with conn.transaction(), conn.cursor(name=f"ready_{uuid.uuid4().hex}") as cur:
            cur.itersize = 10_000
            cur.execute(SELECT_READY_IDS, {"campaign_id": campaign_id})
            yield from (row_id for (row_id,) in cur)
    except psycopg.Error as exc:
        raise database_error(exc, "reading ready rows failed") from exc


def mark_ready_rows(conn: psycopg.Connection, campaign_id: str, enqueue_id: str) -> Iterator[int]:
    """Make `enqueue_id` the current enqueue of a campaign's `ready` rows, range by range; yield their ids."""
    params = {"campaign_id": campaign_id, "enqueue_id": enqueue_id}
    low, high = rows(conn, SELECT_READY_ID_RANGE, params, "reading ready rows failed")[0]
    for start in range(low or 0, (high or -1) + 1, MARK_CHUNK):
        chunk = rows(conn, MARK_READY_IDS, {**params, "low": start, "high": start + MARK_CHUNK}, "marking ready rows failed")
        yield from sorted(row_id for (row_id,) in chunk)


def campaign_fields(conn: psycopg.Connection, campaign_id: str) -> tuple | None:
    """(name, template_name, language_code, phone_number_id, components), or None when there is no such campaign."""
    found = rows(conn, SELECT_CAMPAIGN_FIELDS, {"campaign_id": campaign_id}, "reading the campaign failed")
    return tuple(found[0]) if found else None


def campaign_recipients(conn: psycopg.Connection, campaign_id: str) -> list[tuple[str, list | None]]:
    """Every (phone_number, params) of the campaign."""
    return rows(conn, SELECT_RECIPIENTS, {"campaign_id": campaign_id}, "reading the campaign failed")


def recipient_count(conn: psycopg.Connection, campaign_id: str) -> int:
    """How many rows the campaign has."""
    return rows(conn, COUNT_RECIPIENTS, {"campaign_id": campaign_id}, "reading the campaign failed")[0][0]
