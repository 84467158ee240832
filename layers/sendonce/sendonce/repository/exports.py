"""Every row of a campaign, for the per-contact export, streamed from a server-side cursor."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import psycopg
from psycopg.rows import tuple_row

from sendonce.db import database_error, rows

COUNT_PARAMS = "SELECT coalesce(max(cardinality(params)), 0) FROM send_queue WHERE campaign_id = %(campaign_id)s"

EXPORT_ROWS = """
SELECT q.phone_number, q.params, q.status, q.whatsapp_message_id, q.actual_sent_at, q.delivery_status,
       q.delivery_updated_at, coalesce(q.delivery_error_code, q.last_error_code), q.last_error, q.pricing_category,
       q.billable
FROM send_queue q
WHERE q.campaign_id = %(campaign_id)s
ORDER BY q.id
"""


def param_count(conn: psycopg.Connection, campaign_id: str) -> int:
    """The most body parameters a row of the campaign has."""
    return rows(conn, COUNT_PARAMS, {"campaign_id": campaign_id}, "reading the campaign failed")[0][0]


def export_rows(conn: psycopg.Connection, campaign_id: str, batch: int = 10_000) -> Iterator[tuple]:
    """Stream the campaign's rows in id order, `batch` at a time, from one snapshot (a server-side cursor)."""
    try:
        with conn.transaction(), conn.cursor(name=f"export_{uuid.uuid4().hex}", row_factory=tuple_row) as cur:
            cur.itersize = batch
            cur.execute(EXPORT_ROWS, {"campaign_id": campaign_id})
            yield from cur
    except psycopg.Error as exc:
        raise database_error(exc, "exporting the campaign failed") from exc
