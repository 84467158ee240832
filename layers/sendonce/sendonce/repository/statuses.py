"""Webhook statuses: kept once, reconciled with their rows, applied forward-only, opt-outs suppressed."""

from __future__ import annotations

import psycopg

from sendonce.db import rows, transaction

SELECT_CALLBACK_KEY = "SELECT callback_key FROM deployment"

# A constant number of statements however many statuses a POST holds (Meta batches up to 1,000).
# 1. Keep every status, once (Meta retries and duplicates deliveries), known WAMID or not.
INSERT_STATUSES = """
INSERT INTO message_statuses
    (whatsapp_message_id, status, occurred_at, queue_id, recipient_id, error_code, error_title, pricing_category,
     pricing_type, billable)
SELECT * FROM unnest(%(wamids)s::text[], %(statuses)s::text[], %(occurred)s::timestamptz[], %(queue_ids)s::bigint[],
                     %(recipients)s::text[], %(codes)s::integer[], %(titles)s::text[], %(categories)s::text[],
                     %(types)s::text[], %(billables)s::boolean[])
ON CONFLICT ON CONSTRAINT message_statuses_once DO NOTHING
"""

# 2. Reconcile the ambiguous window: a status whose signed biz_opaque_callback_data names a row of that
# campaign, for that recipient, proves Meta accepted a send of that row. A row without WAMID (its answer was
# lost; reset to `ready` and not resent yet; failed `unconfirmed`; cancelled while in flight) stores Meta's
# WAMID and becomes `sent`, so nothing resends it and it is counted. The recipient check compares the last 8
# digits: Meta's wa_id may drop a digit the number was sent with (Brazil's, Mexico's mobile prefixes).
RECONCILE_ROWS = """
UPDATE send_queue q
SET status = 'sent', whatsapp_message_id = s.wamid, actual_sent_at = coalesce(q.actual_sent_at, s.occurred_at),
    finished_at = coalesce(q.finished_at, now()), last_error = NULL, last_error_code = NULL, updated_at = now()
FROM (
    SELECT DISTINCT ON (queue_id) queue_id, campaign_id, wamid, occurred_at, recipient
    FROM unnest(%(queue_ids)s::bigint[], %(campaign_ids)s::uuid[], %(wamids)s::text[], %(occurred)s::timestamptz[],
                %(recipients)s::text[]) AS u (queue_id, campaign_id, wamid, occurred_at, recipient)
    WHERE queue_id IS NOT NULL
    ORDER BY queue_id, occurred_at
) s
WHERE q.id = s.queue_id AND q.campaign_id = s.campaign_id AND q.whatsapp_message_id IS NULL
  AND right(q.phone_number, 8) = right(s.recipient, 8)
  AND NOT EXISTS (SELECT 1 FROM send_queue o WHERE o.whatsapp_message_id = s.wamid)
RETURNING q.id
"""

# 3. Delivery states only move forward: delivered < failed < read (a read message was delivered, whatever
# came late). Each row takes the furthest state of this POST, and only if it is further than its own.
APPLY_DELIVERY = """
UPDATE send_queue q
SET delivery_status = s.status,
    delivery_error_code = CASE WHEN s.status = 'failed' THEN s.code ELSE q.delivery_error_code END,
    delivery_updated_at = now(),
    updated_at = now()
FROM (
    SELECT DISTINCT ON (wamid) wamid, status, code,
           CASE status WHEN 'delivered' THEN 1 WHEN 'failed' THEN 2 WHEN 'read' THEN 3 END AS rank
    FROM unnest(%(wamids)s::text[], %(statuses)s::text[], %(codes)s::integer[]) AS u (wamid, status, code)
    WHERE status IN ('delivered', 'read', 'failed')
    ORDER BY wamid, CASE status WHEN 'delivered' THEN 1 WHEN 'failed' THEN 2 WHEN 'read' THEN 3 END DESC
) s
WHERE q.whatsapp_message_id = s.wamid
  AND s.rank > CASE q.delivery_status WHEN 'delivered' THEN 1 WHEN 'failed' THEN 2 WHEN 'read' THEN 3 ELSE 0 END
"""

# 4. Meta's pricing report (docs/cost.md): each row keeps the latest one of this POST (the cost counts the rows
# billable and delivered). Only when the POST has one.
APPLY_PRICING = """
UPDATE send_queue q
SET pricing_category = s.category, billable = s.billable
FROM (
    SELECT DISTINCT ON (wamid) wamid, category, billable
    FROM unnest(%(wamids)s::text[], %(occurred)s::timestamptz[], %(categories)s::text[], %(billables)s::boolean[])
        AS u (wamid, occurred_at, category, billable)
    WHERE billable IS NOT NULL
    ORDER BY wamid, occurred_at DESC
) s
WHERE q.whatsapp_message_id = s.wamid
  AND (q.pricing_category IS DISTINCT FROM s.category OR q.billable IS DISTINCT FROM s.billable)
"""

# 5. 131050: the user stopped marketing messages. Suppress the number; its pending rows are cancelled.
SUPPRESS_NUMBERS = """
WITH added AS (
    INSERT INTO suppressions (phone_number, reason)
    SELECT DISTINCT phone, 'opted out (131050)' FROM unnest(%(phones)s::text[]) AS u (phone)
    ON CONFLICT (phone_number) DO NOTHING
    RETURNING phone_number
)
UPDATE send_queue q
SET status = 'cancelled', last_error = 'suppressed: opted out (131050)', updated_at = now()
WHERE q.phone_number = ANY(%(phones)s::text[]) AND q.status = 'ready'
"""


def callback_key(conn: psycopg.Connection) -> str:
    """This database's key for biz_opaque_callback_data."""
    return rows(conn, SELECT_CALLBACK_KEY, {}, "reading the callback key failed")[0][0]


def apply_statuses(conn: psycopg.Connection, statuses: list[dict]) -> int:
    """Store a webhook POST's statuses and apply them, in one transaction of at most five statements.

    Each status is a dict with wamid, status, occurred_at, queue_id and campaign_id (both None unless its
    callback data was verified), recipient_id, code, title, pricing_category, pricing_type and billable. Returns the number of rows reconciled.
    """
    # In one order (WAMID, status) in every POST: two POSTs holding the same statuses (Meta's duplicates, sent
    # concurrently) then wait for each other on the unique index instead of deadlocking.
    statuses = sorted(statuses, key=lambda s: (s["wamid"], s["status"]))
    columns = {
        "wamids": [s["wamid"] for s in statuses],
        "statuses": [s["status"] for s in statuses],
        "occurred": [s["occurred_at"] for s in statuses],
        "queue_ids": [s["queue_id"] for s in statuses],
        "campaign_ids": [s["campaign_id"] for s in statuses],
        "recipients": [s["recipient_id"] for s in statuses],
        "codes": [s["code"] for s in statuses],
        "titles": [s["title"] for s in statuses],
        "categories": [s["pricing_category"] for s in statuses],
        "types": [s["pricing_type"] for s in statuses],
        "billables": [s["billable"] for s in statuses],
    }
    opted_out = sorted({s["recipient_id"] for s in statuses if s["code"] == 131050 and s["recipient_id"]})
    with transaction(conn, "storing statuses failed"):
        rows(conn, INSERT_STATUSES, columns, "storing statuses failed")
        reconciled = len(rows(conn, RECONCILE_ROWS, columns, "reconciling statuses failed"))
        rows(conn, APPLY_DELIVERY, columns, "applying statuses failed")
        if any(s["billable"] is not None for s in statuses):
            rows(conn, APPLY_PRICING, columns, "applying pricing failed")
        if opted_out:
            rows(conn, SUPPRESS_NUMBERS, {"phones": opted_out}, "suppressing numbers failed")
    return reconciled
