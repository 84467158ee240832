"""A campaign's rows counted for its cost: by the first digits of their numbers (the market) and Meta's category."""

from __future__ import annotations

import psycopg

from sendonce.db import rows

# planned: the rows meant to be sent (all but cancelled), priced by the template's category for the estimate.
# charged: Meta reported them billable (the status webhooks' pricing) and delivered them: Meta charges delivery.
# free: delivered, reported not billable (a free entry point, a customer service window).
# unreported: delivered without a pricing report yet.
COST_ROWS = """
SELECT left(q.phone_number, 3) AS prefix, q.pricing_category AS category,
       count(*) FILTER (WHERE q.status <> 'cancelled')::integer AS planned,
       count(*) FILTER (WHERE q.billable AND q.delivery_status IN ('delivered', 'read'))::integer AS charged,
       count(*) FILTER (WHERE NOT q.billable AND q.delivery_status IN ('delivered', 'read'))::integer AS free,
       count(*) FILTER (WHERE q.billable IS NULL AND q.delivery_status IN ('delivered', 'read'))::integer AS unreported
FROM send_queue q
WHERE q.campaign_id = %(campaign_id)s
GROUP BY 1, 2
"""


def cost_rows(conn: psycopg.Connection, campaign_id: str) -> list[dict]:
    """[{prefix, category, planned, charged, free, unreported}] for one campaign."""
    return rows(conn, COST_ROWS, {"campaign_id": campaign_id}, "reading the campaign's cost failed", dicts=True)
