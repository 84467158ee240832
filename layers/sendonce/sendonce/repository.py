"""All SQL on campaigns and send_queue, as constants, and the functions that run them."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import psycopg
from psycopg.rows import dict_row, tuple_row

from sendonce.db import drop_conn
from sendonce.errors import CampaignStateError, DatabaseError
from sendonce.models import ClaimedRow, QueueMessage, SendResult

INSERT_CAMPAIGN = """
INSERT INTO campaigns (id, name, template_name, language_code, phone_number_id, components, total_recipients)
VALUES (%(id)s, %(name)s, %(template_name)s, %(language_code)s, %(phone_number_id)s, %(components)s,
        %(total_recipients)s)
"""

COPY_ROWS = "COPY send_queue (campaign_id, phone_number, params) FROM STDIN"

# Numbers that opted out are counted as cancelled from the start and never enqueued.
CANCEL_SUPPRESSED = """
UPDATE send_queue q
SET status = 'cancelled', last_error = 'suppressed: ' || s.reason
FROM suppressions s
WHERE q.campaign_id = %(campaign_id)s AND s.phone_number = q.phone_number AND q.status = 'ready'
"""

SELECT_READY_IDS = "SELECT id FROM send_queue WHERE campaign_id = %(campaign_id)s AND status = 'ready' ORDER BY id"

SELECT_CAMPAIGN_EXISTS = "SELECT status FROM campaigns WHERE id = %(campaign_id)s"

COUNTER_COLUMNS = """
campaign_id::text, name, status, pause_reason, recipients, pending, sent, delivered, read, failed, cancelled,
created_at, completed_at
"""

SELECT_COUNTERS = f"SELECT {COUNTER_COLUMNS} FROM campaign_counters WHERE campaign_id = %(campaign_id)s"

SELECT_CAMPAIGN_LIST = f"SELECT {COUNTER_COLUMNS} FROM campaign_counters ORDER BY created_at DESC LIMIT %(limit)s"

# Each control statement changes the campaign only from the states it names and returns the state it found,
# so a caller can tell "not found" from "not allowed now" in the same round trip.
PAUSE_CAMPAIGN = """
WITH found AS (SELECT id, status FROM campaigns WHERE id = %(campaign_id)s FOR UPDATE),
changed AS (
    UPDATE campaigns c SET status = 'paused', pause_reason = %(reason)s, updated_at = now()
    FROM found f WHERE c.id = f.id AND f.status = 'running'
    RETURNING c.id
)
SELECT f.status, (SELECT count(*) FROM changed)::integer FROM found f
"""

RESUME_CAMPAIGN = """
WITH found AS (SELECT id, status FROM campaigns WHERE id = %(campaign_id)s FOR UPDATE),
changed AS (
    UPDATE campaigns c SET status = 'running', pause_reason = NULL, updated_at = now()
    FROM found f WHERE c.id = f.id AND f.status = 'paused'
    RETURNING c.id
)
SELECT f.status, (SELECT count(*) FROM changed)::integer FROM found f
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

# Failed rows go back to `ready`, except: opted out (131050), hit the per-user marketing limit (131049)
# less than 24 h ago (a resend fails again and counts against the business), or carrying a WAMID.
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
rows AS (
    UPDATE send_queue q
    SET status = 'ready', claim_token = NULL, claimed_at = NULL, updated_at = now()
    FROM changed c
    WHERE q.campaign_id = c.id AND q.status = 'failed' AND q.whatsapp_message_id IS NULL
      AND q.last_error_code IS DISTINCT FROM 131050
      AND NOT (q.last_error_code = 131049 AND q.updated_at > now() - interval '24 hours')
    RETURNING q.id
)
SELECT f.status, (SELECT count(*) FROM rows)::integer FROM found f
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
    updated_at = now()
FROM campaign_counters v
WHERE v.campaign_id = c.id
  AND CASE WHEN %(campaign_id)s::uuid IS NULL
           THEN c.completed_at IS NULL OR c.completed_at > now() - interval '7 days'
           ELSE c.id = %(campaign_id)s::uuid END
RETURNING c.id::text, c.status
"""

# Stuck rows: `processing` for longer than STUCK_AFTER_SECONDS with no WAMID (a webhook that resolved a row
# stored its WAMID and made it `sent`). SKIP LOCKED and the re-checked status make two concurrent runs reset each
# row once. A cancelled campaign's stuck rows become `cancelled` whatever the policy.
RESET_STUCK = """
WITH stuck AS (
    SELECT q.id
    FROM send_queue q
    WHERE q.status = 'processing' AND q.whatsapp_message_id IS NULL
      AND q.claimed_at < now() - make_interval(secs => %(stuck_after)s)
    ORDER BY q.claimed_at
    LIMIT %(limit)s
    FOR UPDATE OF q SKIP LOCKED
)
UPDATE send_queue q
SET status = CASE WHEN c.status = 'cancelled' THEN 'cancelled'
                  WHEN %(policy)s = 'fail' THEN 'failed' ELSE 'ready' END,
    last_error = CASE WHEN c.status = 'cancelled' THEN 'campaign cancelled'
                      WHEN %(policy)s = 'fail' THEN 'unconfirmed' ELSE q.last_error END,
    claim_token = NULL,
    claimed_at = NULL,
    updated_at = now()
FROM stuck s, campaigns c
WHERE q.id = s.id AND c.id = q.campaign_id AND q.status = 'processing' AND q.whatsapp_message_id IS NULL
RETURNING q.id, q.campaign_id::text, q.status
"""

# Messages whose retries ran out: a row still `ready` (every attempt was released as transient) becomes
# `failed`, so the campaign can finish. Rows in any other state were settled elsewhere and are left alone.
FAIL_EXHAUSTED_ROWS = """
UPDATE send_queue q
SET status = 'failed',
    last_error = 'retries_exhausted' || coalesce(': ' || q.last_error, ''),
    updated_at = now()
FROM unnest(%(ids)s::bigint[], %(campaign_ids)s::uuid[]) AS m (id, campaign_id)
WHERE q.id = m.id AND q.campaign_id = m.campaign_id AND q.status = 'ready'
RETURNING q.id
"""

SELECT_EXISTING_ROWS = """
SELECT q.id FROM send_queue q
JOIN unnest(%(ids)s::bigint[], %(campaign_ids)s::uuid[]) AS m (id, campaign_id)
  ON q.id = m.id AND q.campaign_id = m.campaign_id
"""

INSERT_DEAD_LETTERS = """
INSERT INTO dead_letters (message_id, body, attributes, reason)
SELECT * FROM unnest(%(message_ids)s::text[], %(bodies)s::text[], %(attributes)s::jsonb[], %(reasons)s::text[])
ON CONFLICT (message_id) DO NOTHING
"""

SELECT_DEAD_LETTERS = """
SELECT id, message_id, body, attributes, reason, received_at FROM dead_letters ORDER BY id DESC LIMIT %(limit)s
"""

# Webhook statuses, in a constant number of statements however many a POST holds (Meta batches up to 1,000).
# 1. Keep every status, once (Meta retries and duplicates deliveries), known WAMID or not.
INSERT_STATUSES = """
INSERT INTO message_statuses
    (whatsapp_message_id, status, occurred_at, queue_id, recipient_id, error_code, error_title)
SELECT * FROM unnest(%(wamids)s::text[], %(statuses)s::text[], %(occurred)s::timestamptz[], %(queue_ids)s::bigint[],
                     %(recipients)s::text[], %(codes)s::integer[], %(titles)s::text[])
ON CONFLICT ON CONSTRAINT message_statuses_once DO NOTHING
"""

# 2. Reconcile the ambiguous window: a status naming (by biz_opaque_callback_data) a row that has no WAMID
# proves Meta accepted that row's send. Store the WAMID and mark it sent; a row reset to `ready` (not resent
# yet) or failed as `unconfirmed` is settled too, so reset_stuck never sends it again.
RECONCILE_ROWS = """
UPDATE send_queue q
SET status = 'sent', whatsapp_message_id = s.wamid, actual_sent_at = coalesce(q.actual_sent_at, s.occurred_at),
    claim_token = NULL, last_error = NULL, last_error_code = NULL, updated_at = now()
FROM (
    SELECT DISTINCT ON (queue_id) queue_id, wamid, occurred_at
    FROM unnest(%(queue_ids)s::bigint[], %(wamids)s::text[], %(occurred)s::timestamptz[]) AS u (queue_id, wamid, occurred_at)
    WHERE queue_id IS NOT NULL
    ORDER BY queue_id, occurred_at
) s
WHERE q.id = s.queue_id AND q.whatsapp_message_id IS NULL
  AND (q.status IN ('processing', 'ready') OR (q.status = 'failed' AND q.last_error = 'unconfirmed'))
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

# 4. 131050: the user stopped marketing messages. Suppress the number; its pending rows are cancelled.
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

SELECT_STORED_TOTALS = """
SELECT total_recipients AS recipients, total_sent AS sent, total_delivered AS delivered, total_read AS read,
       total_failed AS failed, total_cancelled AS cancelled, status
FROM campaigns WHERE id = %(campaign_id)s
"""

# One statement claims the whole batch. `target` reads the rows as they were; the UPDATE re-checks
# status = 'ready' on the row it locks, so of two workers racing for a row exactly one gets it.
CLAIM_ROWS = """
WITH requested AS (
    SELECT * FROM unnest(%(ids)s::bigint[], %(campaign_ids)s::uuid[]) AS r (id, campaign_id)
),
target AS (
    SELECT q.id, q.status, q.whatsapp_message_id, c.status AS campaign_status,
           EXISTS (SELECT 1 FROM suppressions s WHERE s.phone_number = q.phone_number) AS suppressed
    FROM requested r
    JOIN send_queue q ON q.id = r.id AND q.campaign_id = r.campaign_id
    JOIN campaigns c ON c.id = q.campaign_id
),
claimed AS (
    UPDATE send_queue q
    SET status = 'processing', claim_token = %(token)s, claimed_at = now(), attempts = q.attempts + 1,
        updated_at = now()
    FROM target t
    WHERE q.id = t.id AND t.campaign_status = 'running' AND NOT t.suppressed
      AND q.status = 'ready' AND q.whatsapp_message_id IS NULL
    RETURNING q.id
),
cancelled AS (
    UPDATE send_queue q
    SET status = 'cancelled',
        last_error = CASE WHEN t.suppressed THEN 'suppressed: opted out (131050)' ELSE 'campaign cancelled' END,
        updated_at = now()
    FROM target t
    WHERE q.id = t.id AND q.status = 'ready' AND (t.campaign_status = 'cancelled' OR t.suppressed)
    RETURNING q.id
),
reserved AS (
    INSERT INTO rate_limits AS r (phone_number_id, next_slot_at, last_reserved)
    SELECT c.phone_number_id, now() + count(*) * interval '1 second' / %(default_mps)s, count(*)::integer
    FROM claimed cl
    JOIN send_queue q ON q.id = cl.id
    JOIN campaigns c ON c.id = q.campaign_id
    GROUP BY c.phone_number_id
    ON CONFLICT (phone_number_id) DO UPDATE
    SET next_slot_at = greatest(r.next_slot_at, now())
                       + excluded.last_reserved * interval '1 second' / coalesce(r.max_mps, %(default_mps)s),
        last_reserved = excluded.last_reserved
    RETURNING r.phone_number_id,
              extract(epoch FROM r.next_slot_at - now())
                - r.last_reserved::float8 / coalesce(r.max_mps, %(default_mps)s) AS start_in,
              coalesce(r.max_mps, %(default_mps)s) AS mps
)
SELECT t.id, t.status, t.whatsapp_message_id, t.campaign_status,
       cl.id IS NOT NULL AS claimed, ca.id IS NOT NULL AS cancelled,
       q.campaign_id::text AS campaign_id, q.phone_number, q.params, q.attempts + 1 AS attempt,
       c.template_name, c.language_code, c.phone_number_id, c.components,
       -- This row's send slot, in seconds from now: the batch's first slot plus its place among the batch's
       -- claimed rows for the same phone number.
       CASE WHEN cl.id IS NOT NULL THEN
           greatest(rs.start_in, 0) + (row_number() OVER (PARTITION BY cl.id IS NULL, c.phone_number_id ORDER BY t.id) - 1)
           / rs.mps::float8
       END AS send_in
FROM target t
JOIN send_queue q ON q.id = t.id
JOIN campaigns c ON c.id = q.campaign_id
LEFT JOIN claimed cl ON cl.id = t.id
LEFT JOIN cancelled ca ON ca.id = t.id
LEFT JOIN reserved rs ON rs.phone_number_id = c.phone_number_id AND cl.id IS NOT NULL
"""

# One statement finalizes the whole batch, and only rows this claim still owns: a stale worker whose rows
# were reset and claimed again can never overwrite them. Halt codes pause their campaign in the same trip.
FINALIZE_ROWS = """
WITH result AS (
    SELECT * FROM unnest(%(ids)s::bigint[], %(statuses)s::text[], %(wamids)s::text[], %(codes)s::integer[],
                         %(errors)s::text[]) AS r (id, status, wamid, code, error)
),
halted AS (
    UPDATE campaigns c
    SET status = 'paused', pause_reason = h.reason, updated_at = now()
    FROM unnest(%(halt_campaign_ids)s::uuid[], %(halt_reasons)s::text[]) AS h (campaign_id, reason)
    WHERE c.id = h.campaign_id AND c.status = 'running'
    RETURNING c.id
),
-- Over `threshold` of a campaign's last `window` final answers failed: pause it (the results of this batch
-- count from the next one on: the statement sees the rows as they were).
failing AS (
    UPDATE campaigns c
    SET status = 'paused', updated_at = now(),
        pause_reason = format('error rate: %%s of the last %%s sends failed', f.failed, f.total)
    FROM (
        SELECT b.campaign_id, count(*) AS total, count(*) FILTER (WHERE recent.status = 'failed') AS failed
        FROM unnest(%(campaign_ids)s::uuid[]) AS b (campaign_id)
        CROSS JOIN LATERAL (
            SELECT q.status FROM send_queue q
            WHERE q.campaign_id = b.campaign_id AND q.finished_at IS NOT NULL
            ORDER BY q.finished_at DESC LIMIT %(window)s
        ) recent
        GROUP BY b.campaign_id
    ) f
    WHERE c.id = f.campaign_id AND c.status = 'running' AND f.total >= %(window)s
      AND f.failed > f.total * %(threshold)s AND c.id <> ALL (%(halt_campaign_ids)s::uuid[])
    RETURNING c.id
)
UPDATE send_queue q
-- A row released after its campaign was cancelled is cancelled, not left `ready` with nothing to send it.
SET status = CASE WHEN r.status = 'ready' AND c.status = 'cancelled' THEN 'cancelled' ELSE r.status END,
    whatsapp_message_id = coalesce(r.wamid, q.whatsapp_message_id),
    actual_sent_at = CASE WHEN r.status = 'sent' THEN now() ELSE q.actual_sent_at END,
    finished_at = CASE WHEN r.status IN ('sent', 'failed') THEN now() ELSE q.finished_at END,
    last_error_code = r.code,
    last_error = r.error,
    claim_token = CASE WHEN r.status = 'processing' THEN q.claim_token END,
    updated_at = now()
FROM result r, campaigns c
WHERE q.id = r.id AND c.id = q.campaign_id AND q.claim_token = %(token)s AND q.status = 'processing'
RETURNING q.id
"""


@dataclass(frozen=True)
class ClaimOutcome:
    """One requested row after the claim: claimed (with `row`) or why not."""

    queue_id: int
    row: ClaimedRow | None
    status: str
    wamid: str | None
    campaign_status: str
    cancelled: bool


def _wrap(exc: psycopg.Error, what: str) -> DatabaseError:
    if isinstance(exc, psycopg.OperationalError):
        drop_conn()
    return DatabaseError(f"{what}: {exc}")


def _rows(conn: psycopg.Connection, statement: str, params: dict, what: str, *, dicts: bool = False) -> list:
    """Run one statement and return its rows (dicts when asked); driver errors become `DatabaseError`."""
    try:
        with conn.cursor(row_factory=dict_row if dicts else tuple_row) as cur:
            cur.execute(statement, params)
            return cur.fetchall() if cur.description else []
    except psycopg.Error as exc:
        raise _wrap(exc, what) from exc


def claim_rows(
    conn: psycopg.Connection, messages: Iterable[QueueMessage], token: uuid.UUID, default_mps: int
) -> dict[int, ClaimOutcome]:
    """Claim the `ready` rows of a batch and reserve their send slots, in one statement.

    Rows that do not exist are absent from the result.
    """
    messages = list(messages)
    params = {
        "ids": [m.queue_id for m in messages],
        "campaign_ids": [m.campaign_id for m in messages],
        "token": token,
        "default_mps": default_mps,
    }
    return {r["id"]: _claim_outcome(r) for r in _rows(conn, CLAIM_ROWS, params, "claim failed", dicts=True)}


def _claim_outcome(r: dict) -> ClaimOutcome:
    row = None
    if r["claimed"]:
        row = ClaimedRow(
            id=r["id"],
            campaign_id=r["campaign_id"],
            phone_number=r["phone_number"],
            params=tuple(r["params"]),
            template_name=r["template_name"],
            language_code=r["language_code"],
            phone_number_id=r["phone_number_id"],
            components=tuple(r["components"] or ()),
            attempt=r["attempt"],
            send_in=float(r["send_in"] or 0.0),
        )
    return ClaimOutcome(r["id"], row, r["status"], r["whatsapp_message_id"], r["campaign_status"], r["cancelled"])


def finalize_rows(
    conn: psycopg.Connection,
    token: uuid.UUID,
    results: dict[int, SendResult],
    halts: dict[str, str],
    campaign_ids: set[str],
    error_window: int,
    error_threshold: float,
) -> set[int]:
    """Write a batch's results in one statement, guarded by the claim token; return the ids written.

    The same statement pauses the campaigns in `halts` and those whose error rate crossed the threshold.
    """
    ids = list(results)
    params = {
        "campaign_ids": sorted(campaign_ids),
        "window": error_window,
        "threshold": error_threshold,
        "token": token,
        "ids": ids,
        "statuses": [str(results[i].row_status) for i in ids],
        "wamids": [results[i].wamid for i in ids],
        "codes": [results[i].code for i in ids],
        "errors": [results[i].error for i in ids],
        "halt_campaign_ids": list(halts),
        "halt_reasons": list(halts.values()),
    }
    return {row[0] for row in _rows(conn, FINALIZE_ROWS, params, "finalize failed")}


def insert_campaign(conn: psycopg.Connection, fields: dict, rows: Iterable[tuple[str, tuple[str, ...]]]) -> None:
    """Insert a campaign and COPY its rows, in one transaction: either all of it exists or none."""
    try:
        with conn.transaction(), conn.cursor() as cur:
            cur.execute(INSERT_CAMPAIGN, {**fields, "components": json.dumps(fields.get("components") or [])})
            campaign_id = uuid.UUID(fields["id"])
            with cur.copy(COPY_ROWS) as copy:
                copy.set_types(["uuid", "text", "text[]"])
                for phone, params in rows:
                    copy.write_row((campaign_id, phone, list(params)))
            cur.execute(CANCEL_SUPPRESSED, {"campaign_id": campaign_id})
    except psycopg.errors.UniqueViolation as exc:
        raise CampaignStateError(f"campaign {fields['id']} already exists") from exc
    except psycopg.Error as exc:
        raise _wrap(exc, "creating the campaign failed") from exc


def campaign_status(conn: psycopg.Connection, campaign_id: str) -> str | None:
    """The campaign's status, or None when it does not exist."""
    rows = _rows(conn, SELECT_CAMPAIGN_EXISTS, {"campaign_id": campaign_id}, "reading the campaign failed")
    return rows[0][0] if rows else None


def ready_row_ids(conn: psycopg.Connection, campaign_id: str, chunk: int = 10_000) -> Iterator[int]:
    """Stream the ids of a campaign's `ready` rows through a server-side cursor (a campaign may hold millions)."""
    try:
        with conn.transaction(), conn.cursor(name=f"ready_{uuid.uuid4().hex}") as cur:
            cur.itersize = chunk
            cur.execute(SELECT_READY_IDS, {"campaign_id": campaign_id})
            for (row_id,) in cur:
                yield row_id
    except psycopg.Error as exc:
        raise _wrap(exc, "reading ready rows failed") from exc


def counters(conn: psycopg.Connection, campaign_id: str) -> dict | None:
    """The campaign's numbers from the one definition, `campaign_counters`; None when it does not exist."""
    rows = _rows(conn, SELECT_COUNTERS, {"campaign_id": campaign_id}, "reading counters failed", dicts=True)
    return rows[0] if rows else None


def campaign_list(conn: psycopg.Connection, limit: int = 50) -> list[dict]:
    """The newest campaigns with their numbers, from `campaign_counters`."""
    return _rows(conn, SELECT_CAMPAIGN_LIST, {"limit": limit}, "listing campaigns failed", dicts=True)


def change_campaign(conn: psycopg.Connection, statement: str, campaign_id: str, **params) -> tuple[str, int] | None:
    """Run one of the control statements; return (status found, rows or campaigns changed), None if no campaign."""
    rows = _rows(conn, statement, {"campaign_id": campaign_id, **params}, "changing the campaign failed")
    return (rows[0][0], rows[0][1]) if rows else None


def recompute_counters(conn: psycopg.Connection, campaign_id: str | None = None) -> list[tuple[str, str]]:
    """Write campaigns.total_* from `campaign_counters` (all unfinished campaigns, or one); return (id, status)."""
    return _rows(conn, RECOMPUTE_COUNTERS, {"campaign_id": campaign_id}, "recomputing counters failed")


def stored_totals(conn: psycopg.Connection, campaign_id: str) -> dict | None:
    """The campaigns.total_* snapshot as last written by `recompute_counters`."""
    rows = _rows(conn, SELECT_STORED_TOTALS, {"campaign_id": campaign_id}, "reading the campaign failed", dicts=True)
    return rows[0] if rows else None


def reset_stuck(conn: psycopg.Connection, stuck_after: int, policy: str, limit: int) -> list[tuple[int, str, str]]:
    """Reset stuck rows in the current transaction; return (id, campaign_id, new status) for each."""
    params = {"stuck_after": stuck_after, "policy": policy, "limit": limit}
    return _rows(conn, RESET_STUCK, params, "resetting stuck rows failed")


def settle_dead_letters(conn: psycopg.Connection, exhausted: list[dict], unusable: list[dict]) -> set[int]:
    """Fail the `ready` rows of exhausted messages; keep unusable ones and those naming no row in dead_letters.

    Both lists hold {message_id, body, attributes} dicts; `exhausted` ones also a parsed `message` and
    `unusable` ones a `reason`. One transaction; returns the ids of the rows failed now.
    """
    ids = {
        "ids": [d["message"].queue_id for d in exhausted],
        "campaign_ids": [d["message"].campaign_id for d in exhausted],
    }
    try:
        with conn.transaction():
            failed = {row[0] for row in conn.execute(FAIL_EXHAUSTED_ROWS, ids)}
            existing = {row[0] for row in conn.execute(SELECT_EXISTING_ROWS, ids)}
            letters = unusable + [
                {**d, "reason": "no such row"} for d in exhausted if d["message"].queue_id not in existing
            ]
            if letters:
                conn.execute(
                    INSERT_DEAD_LETTERS,
                    {
                        "message_ids": [d["message_id"] for d in letters],
                        "bodies": [d["body"] for d in letters],
                        "attributes": [json.dumps(d["attributes"]) for d in letters],
                        "reasons": [d["reason"] for d in letters],
                    },
                )
    except psycopg.Error as exc:
        raise _wrap(exc, "settling dead letters failed") from exc
    return failed


def dead_letters(conn: psycopg.Connection, limit: int = 50) -> list[dict]:
    """The newest dead letters."""
    return _rows(conn, SELECT_DEAD_LETTERS, {"limit": limit}, "reading dead letters failed", dicts=True)


def apply_statuses(conn: psycopg.Connection, statuses: list[dict]) -> int:
    """Store a webhook POST's statuses and apply them, in one transaction of at most four statements.

    Each status is a dict with wamid, status, occurred_at, queue_id, recipient_id, code, title. Returns the
    number of rows reconciled (their WAMID was unknown until now).
    """
    columns = {
        "wamids": [s["wamid"] for s in statuses],
        "statuses": [s["status"] for s in statuses],
        "occurred": [s["occurred_at"] for s in statuses],
        "queue_ids": [s["queue_id"] for s in statuses],
        "recipients": [s["recipient_id"] for s in statuses],
        "codes": [s["code"] for s in statuses],
        "titles": [s["title"] for s in statuses],
    }
    opted_out = sorted({s["recipient_id"] for s in statuses if s["code"] == 131050 and s["recipient_id"]})
    try:
        with conn.transaction():
            conn.execute(INSERT_STATUSES, columns)
            reconciled = conn.execute(RECONCILE_ROWS, columns).rowcount
            conn.execute(APPLY_DELIVERY, columns)
            if opted_out:
                conn.execute(SUPPRESS_NUMBERS, {"phones": opted_out})
    except psycopg.Error as exc:
        raise _wrap(exc, "storing statuses failed") from exc
    return reconciled
