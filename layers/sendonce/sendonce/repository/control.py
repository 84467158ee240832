"""The counters (one definition) and the campaign control statements."""

from __future__ import annotations

import psycopg

from sendonce.db import rows

COUNTER_COLUMNS = """
campaign_id::text, name, status, pause_reason, recipients, pending, sent, delivered, read, failed, cancelled,
created_at, completed_at
"""

# Built from a constant column list: nothing from outside reaches the text.
SELECT_COUNTERS = f"SELECT {COUNTER_COLUMNS} FROM campaign_counters WHERE campaign_id = %(campaign_id)s"  # noqa: S608

# Beyond the counters, for one campaign's status: what paused it, its template as Meta last reported it, the rows
# that wait (by reason), and the rows Meta answered "not now" (by code, from the send or the status webhook).
SELECT_CAMPAIGN_DETAIL = """
SELECT c.phone_number_id, c.template_name, c.language_code, c.paused_by, c.paused_until, c.auto_resume,
       c.start_at, t.status AS template_status, t.reason AS template_reason, t.category AS template_category,
       (SELECT coalesce(json_agg(w ORDER BY w.reason), '[]')
        FROM (SELECT q.wait_reason AS reason, count(*) AS rows, min(q.wait_until) AS first, max(q.wait_until) AS last
              FROM send_queue q
              WHERE q.campaign_id = c.id AND q.status = 'ready' AND q.wait_until > now()
              GROUP BY q.wait_reason) w) AS waiting,
       (SELECT coalesce(json_agg(n ORDER BY n.code), '[]')
        FROM (SELECT coalesce(q.delivery_error_code, q.last_error_code) AS code, q.status, count(*) AS rows
              FROM send_queue q
              WHERE q.campaign_id = c.id
                AND (q.last_error_code = ANY(%(codes)s) OR q.delivery_error_code = ANY(%(codes)s))
              GROUP BY 1, 2) n) AS not_now
FROM campaigns c LEFT JOIN templates t ON t.name = c.template_name AND t.language = c.language_code
WHERE c.id = %(campaign_id)s
"""

SELECT_CAMPAIGN_LIST = f"SELECT {COUNTER_COLUMNS} FROM campaign_counters ORDER BY created_at DESC LIMIT %(limit)s"  # noqa: S608

# Each control statement changes the campaign only from the states it names and returns the state it found,
# so a caller can tell "not found" from "not allowed now" in the same round trip.
PAUSE_CAMPAIGN = """
WITH found AS (SELECT id, status FROM campaigns WHERE id = %(campaign_id)s FOR UPDATE),
changed AS (
    UPDATE campaigns c
    SET status = 'paused', pause_reason = %(reason)s, paused_by = 'operator', paused_until = NULL, updated_at = now()
    FROM found f WHERE c.id = f.id AND f.status = 'running'
    RETURNING c.id
)
SELECT f.status, (SELECT count(*) FROM changed)::integer FROM found f
"""

RESUME_CAMPAIGN = """
WITH found AS (SELECT id, status FROM campaigns WHERE id = %(campaign_id)s FOR UPDATE),
changed AS (
    UPDATE campaigns c SET status = 'running', pause_reason = NULL, paused_by = NULL, paused_until = NULL, updated_at = now()
    FROM found f WHERE c.id = f.id AND f.status = 'paused'
    RETURNING c.id
)
SELECT f.status, (SELECT count(*) FROM changed)::integer FROM found f
"""

# The campaign's template as the last status event or read left it, when Meta would refuse to send it now.
SELECT_TEMPLATE_BLOCK = """
SELECT t.name, t.language, t.status, t.reason, t.paused_until
FROM campaigns c JOIN templates t ON t.name = c.template_name AND t.language = c.language_code
WHERE c.id = %(campaign_id)s AND t.status <> 'APPROVED' AND NOT (t.status = 'PAUSED' AND t.paused_until <= now())
"""

# Paused campaigns that asked to resume by themselves, whose pause is over: their template was approved again
# (or Meta's pause time passed), or a spam-limit pause ended.
SELECT_DUE_AUTO_RESUME = """
SELECT id::text, paused_by FROM campaigns
WHERE status = 'paused' AND auto_resume AND paused_by IN ('template', 'spam_limit') AND paused_until <= now()
ORDER BY paused_until
"""

# An automatic resume whose enqueue failed: paused again as it was, due again, so that the next run tries again
# (a running campaign whose rows were never enqueued would wait for an operator).
PAUSE_AGAIN = """
UPDATE campaigns
SET status = 'paused', paused_by = %(paused_by)s, paused_until = now(), updated_at = now(),
    pause_reason = 'automatic resume failed, tried again at the next run: ' || %(reason)s
WHERE id = %(campaign_id)s AND status = 'running'
"""

# Rows in flight (`processing`) are left to finish: their send may already be accepted, and it is counted.
CANCEL_CAMPAIGN = """
WITH found AS (SELECT id, status FROM campaigns WHERE id = %(campaign_id)s FOR UPDATE),
changed AS (
    UPDATE campaigns c SET status = 'cancelled', pause_reason = NULL, updated_at = now()
    FROM found f WHERE c.id = f.id AND f.status IN ('running', 'paused', 'draft', 'scheduled')
    RETURNING c.id
),
rows AS (
    UPDATE send_queue q SET status = 'cancelled', last_error = 'campaign cancelled', updated_at = now()
    FROM changed c WHERE q.campaign_id = c.id AND q.status = 'ready'
    RETURNING q.id
)
SELECT f.status, (SELECT count(*) FROM rows)::integer FROM found f
"""

# Failed rows go back to `ready`, as the current rows of a new enqueue run, except: opted out (131050), in Meta's
# marketing experiment (130472: a resend gets the same answer), hit the
# per-user marketing limit (131049) less than 24 h ago (a resend fails again and counts against the business),
# carrying a WAMID, or `unconfirmed` (the ambiguous policy failed them because Meta may have accepted them:
# only `include_unconfirmed` resends those). The third column counts the unconfirmed rows left alone.
# A completed campaign runs again; a paused one stays paused (resume sends the rows).
RETRY_FAILED = """
WITH found AS (SELECT id, status FROM campaigns WHERE id = %(campaign_id)s FOR UPDATE),
changed AS (
    UPDATE campaigns c
    SET status = CASE WHEN f.status = 'completed' THEN 'running' ELSE f.status END,
        completed_at = NULL, updated_at = now()
    FROM found f WHERE c.id = f.id AND f.status IN ('running', 'paused', 'completed')
    RETURNING c.id
),
candidates AS (
    SELECT q.id, q.last_error IS NOT DISTINCT FROM 'unconfirmed' AS unconfirmed
    FROM send_queue q JOIN changed c ON q.campaign_id = c.id
    WHERE q.status = 'failed' AND q.whatsapp_message_id IS NULL
      AND q.last_error_code IS DISTINCT FROM 131050
      AND q.last_error_code IS DISTINCT FROM 130472
      AND NOT (q.last_error_code IS NOT DISTINCT FROM 131049
               AND coalesce(q.finished_at, q.updated_at) > now() - interval '24 hours')
),
rows AS (
    UPDATE send_queue q
    SET status = 'ready', enqueue_id = %(enqueue_id)s, updated_at = now()
    FROM candidates k
    WHERE q.id = k.id AND (NOT k.unconfirmed OR %(include_unconfirmed)s)
    RETURNING q.id
)
SELECT f.status, (SELECT count(*) FROM rows)::integer,
       (SELECT count(*) FROM candidates WHERE unconfirmed AND NOT %(include_unconfirmed)s)::integer
FROM found f
"""

# One statement writes the snapshot of every unfinished campaign (or of one) from the shared definition.
# A running campaign with nothing pending is completed; a cancelled one gets its completed_at then. Finished
# campaigns stay in scope for 7 days, while Meta may still report delivered/read for them.
RECOMPUTE_COUNTERS = """
UPDATE campaigns c
SET total_recipients = v.recipients,
    total_sent = v.sent,
    total_failed = v.failed,
    total_delivered = v.delivered,
    total_read = v.read,
    total_cancelled = v.cancelled,
    status = CASE WHEN c.status = 'running' AND v.pending = 0 THEN 'completed' ELSE c.status END,
    completed_at = CASE
        WHEN c.completed_at IS NOT NULL THEN c.completed_at
        WHEN c.status IN ('running', 'cancelled') AND v.pending = 0 THEN now()
    END,
    progress_at = CASE
        WHEN (v.sent, v.failed, v.cancelled) IS DISTINCT FROM (c.total_sent, c.total_failed, c.total_cancelled)
          OR c.progress_at IS NULL THEN now()
        ELSE c.progress_at
    END,
    updated_at = now()
FROM campaign_counters v
WHERE v.campaign_id = c.id
  AND CASE WHEN %(campaign_id)s::uuid IS NULL
           THEN c.completed_at IS NULL OR c.completed_at > now() - interval '7 days'
           ELSE c.id = %(campaign_id)s::uuid END
RETURNING c.id::text, c.status,
          -- stalled: running, rows pending that do not wait (for the messaging limit, a 131049: that is no
          -- stall), and the counters have not moved for the window
          CASE WHEN c.status = 'running' AND v.pending > 0
                    AND c.progress_at < now() - make_interval(secs => %(stalled_after)s)
               THEN EXISTS (SELECT 1 FROM send_queue q
                            WHERE q.campaign_id = c.id AND q.status IN ('ready', 'processing')
                              AND (q.wait_until IS NULL OR q.wait_until <= now()))
               ELSE false END
"""

SELECT_STORED_TOTALS = """
SELECT total_recipients AS recipients, total_sent AS sent, total_delivered AS delivered, total_read AS read,
       total_failed AS failed, total_cancelled AS cancelled, status
FROM campaigns WHERE id = %(campaign_id)s
"""

# What a campaign's rows came to, beyond the counters: for the local run's report.
SELECT_ROW_OUTCOMES = """
SELECT array_agg(phone_number) AS numbers, coalesce(sum(attempts), 0)::bigint AS attempts,
       (SELECT coalesce(json_agg(f ORDER BY f.rows DESC), '[]')
        FROM (SELECT last_error_code AS code, coalesce(last_error, '') AS reason, count(*) AS rows
              FROM send_queue WHERE campaign_id = %(campaign_id)s AND status = 'failed'
              GROUP BY 1, 2) f) AS failures
FROM send_queue WHERE campaign_id = %(campaign_id)s
"""


def counters(conn: psycopg.Connection, campaign_id: str) -> dict | None:
    """The campaign's numbers from the one definition, `campaign_counters`; None when it does not exist."""
    found = rows(conn, SELECT_COUNTERS, {"campaign_id": campaign_id}, "reading counters failed", dicts=True)
    return found[0] if found else None


def campaign_list(conn: psycopg.Connection, limit: int = 50) -> list[dict]:
    """The newest campaigns with their numbers, from `campaign_counters`."""
    return rows(conn, SELECT_CAMPAIGN_LIST, {"limit": limit}, "listing campaigns failed", dicts=True)


def change_campaign(conn: psycopg.Connection, statement: str, campaign_id: str, **params) -> tuple | None:
    """Run one of the control statements; return (status found, rows or campaigns changed, ...), None if no campaign."""
    found = rows(conn, statement, {"campaign_id": campaign_id, **params}, "changing the campaign failed")
    return tuple(found[0]) if found else None


def recompute_counters(
    conn: psycopg.Connection, campaign_id: str | None = None, stalled_after: int = 900
) -> list[tuple[str, str, bool]]:
    """Write campaigns.total_* from `campaign_counters` (all unfinished campaigns, or one).

    Returns (id, status, stalled) per campaign: stalled when it is running with rows pending and its counters
    have not moved for `stalled_after` seconds.
    """
    params = {"campaign_id": campaign_id, "stalled_after": stalled_after}
    return rows(conn, RECOMPUTE_COUNTERS, params, "recomputing counters failed")


def stored_totals(conn: psycopg.Connection, campaign_id: str) -> dict | None:
    """The campaigns.total_* snapshot as last written by `recompute_counters`."""
    found = rows(conn, SELECT_STORED_TOTALS, {"campaign_id": campaign_id}, "reading the campaign failed", dicts=True)
    return found[0] if found else None


def row_outcomes(conn: psycopg.Connection, campaign_id: str) -> dict:
    """{"numbers": every recipient, "attempts": send attempts in all, "failures": [{code, reason, rows}]}."""
    found = rows(conn, SELECT_ROW_OUTCOMES, {"campaign_id": campaign_id}, "reading the rows failed", dicts=True)[0]
    return {**found, "numbers": found["numbers"] or []}


def template_block(conn: psycopg.Connection, campaign_id: str) -> dict | None:
    """The campaign's template when its last known status makes Meta refuse it (paused, disabled ...); else None."""
    found = rows(conn, SELECT_TEMPLATE_BLOCK, {"campaign_id": campaign_id}, "reading the template failed", dicts=True)
    return found[0] if found else None


def due_auto_resume(conn: psycopg.Connection) -> list[tuple[str, str]]:
    """(id, paused_by) of the paused campaigns with auto_resume whose pause is over."""
    return [tuple(row) for row in rows(conn, SELECT_DUE_AUTO_RESUME, {}, "reading paused campaigns failed")]


def campaign_detail(conn: psycopg.Connection, campaign_id: str, codes: list[int]) -> dict | None:
    """Pause, template, waiting rows and "not now" answers (`codes`) of one campaign; None when it does not exist."""
    found = rows(conn, SELECT_CAMPAIGN_DETAIL, {"campaign_id": campaign_id, "codes": codes},
                 "reading the campaign failed", dicts=True)
    return found[0] if found else None


def pause_again(conn: psycopg.Connection, campaign_id: str, paused_by: str, reason: str) -> None:
    """Pause a campaign whose automatic resume failed, as it was and due again (PAUSE_AGAIN)."""
    params = {"campaign_id": campaign_id, "paused_by": paused_by, "reason": reason}
    rows(conn, PAUSE_AGAIN, params, "pausing the campaign again failed")
