"""A campaign's failures: counted by stage and code, and the failed rows themselves."""

from __future__ import annotations

import psycopg

from sendonce.db import rows

# The send stage counts exactly the `failed` rows (the `failed` counter, by code); the delivery stage the rows
# Meta took and then reported failed (status webhooks: delivery_status, by its code). A failure without a Graph
# code (retries exhausted, unconfirmed) is counted by sendonce's own reason, the first word of its error.
FAILURES_BY_CODE = """
SELECT 'send' AS stage, q.last_error_code AS code,
       CASE WHEN q.last_error_code IS NULL THEN split_part(coalesce(q.last_error, 'unknown'), ':', 1) END AS reason,
       count(*)::integer AS rows
FROM send_queue q
WHERE q.campaign_id = %(campaign_id)s AND q.status = 'failed'
GROUP BY 1, 2, 3
UNION ALL
SELECT 'delivery', q.delivery_error_code, NULL, count(*)::integer
FROM send_queue q
WHERE q.campaign_id = %(campaign_id)s AND q.delivery_status = 'failed'
GROUP BY 1, 2, 3
ORDER BY rows DESC, stage DESC, code
"""

# The failed rows in id order, from `after` on (keyset pagination: a page costs the same however deep).
FAILED_ROWS = """
SELECT q.id, q.phone_number,
       CASE WHEN q.status = 'failed' THEN 'send' ELSE 'delivery' END AS stage,
       CASE WHEN q.status = 'failed' THEN q.last_error_code ELSE q.delivery_error_code END AS code,
       CASE WHEN q.status = 'failed' THEN q.last_error END AS error,
       CASE WHEN q.status = 'failed' THEN q.finished_at ELSE q.delivery_updated_at END AS at
FROM send_queue q
WHERE q.campaign_id = %(campaign_id)s AND q.id > %(after)s
  AND (q.status = 'failed' OR q.delivery_status = 'failed')
ORDER BY q.id
LIMIT %(limit)s
"""


def failures_by_code(conn: psycopg.Connection, campaign_id: str) -> list[dict]:
    """[{stage, code, reason, rows}], the most frequent first."""
    return rows(conn, FAILURES_BY_CODE, {"campaign_id": campaign_id}, "reading failures failed", dicts=True)


def failed_rows(conn: psycopg.Connection, campaign_id: str, limit: int, after: int = 0) -> list[dict]:
    """Up to `limit` failed rows with an id above `after`: [{id, phone_number, stage, code, error, at}]."""
    params = {"campaign_id": campaign_id, "limit": limit, "after": after}
    return rows(conn, FAILED_ROWS, params, "reading failed rows failed", dicts=True)
