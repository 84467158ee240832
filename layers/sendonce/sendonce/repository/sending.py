"""The sender's two statements: one claim and one finalize per batch (ARCHITECTURE section 3)."""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

import psycopg

from sendonce import callback
from sendonce.db import rows
from sendonce.models import ClaimedRow, Disposition, QueueMessage, SendResult

# One statement claims the whole batch. `target` reads the rows as they were; the UPDATE re-checks
# status = 'ready' on the row it locks, so of two workers racing for a row exactly one gets it. The claiming
# message becomes the row's current one (`enqueue_id`: only the current message's exhaustion fails a row).
#
# Send slots: one schedule per phone number (`rate_limits`), slots 1/mps apart, shared by every sender. A claim
# reserves only the slots that fall within MAX_SLOT_WAIT_SECONDS: the rows beyond get no slot (`has_slot`
# false) and are deferred unsent, so the schedule can never run ahead of what is really sent.
CLAIM_ROWS = """
WITH requested AS (
    SELECT * FROM unnest(%(ids)s::bigint[], %(campaign_ids)s::uuid[], %(enqueue_ids)s::text[])
        AS r (id, campaign_id, enqueue_id)
),
target AS (
    SELECT q.id, q.status, q.whatsapp_message_id, c.status AS campaign_status, r.enqueue_id,
           EXISTS (SELECT 1 FROM suppressions s WHERE s.phone_number = q.phone_number) AS suppressed
    FROM requested r
    JOIN send_queue q ON q.id = r.id AND q.campaign_id = r.campaign_id
    JOIN campaigns c ON c.id = q.campaign_id
),
claimed AS (
    UPDATE send_queue q
    SET status = 'processing', claim_token = %(token)s, claimed_at = now(), attempts = q.attempts + 1,
        enqueue_id = t.enqueue_id, updated_at = now()
    FROM target t
    WHERE q.id = t.id AND t.campaign_status = 'running' AND NOT t.suppressed
      AND q.status = 'ready' AND q.whatsapp_message_id IS NULL
    RETURNING q.id, q.campaign_id
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
demand AS (
    SELECT c.phone_number_id, count(*)::integer AS n
    FROM claimed cl JOIN campaigns c ON c.id = cl.campaign_id
    GROUP BY c.phone_number_id
),
reserved AS (
    INSERT INTO rate_limits AS r (phone_number_id, next_slot_at, last_reserved, requested)
    SELECT d.phone_number_id,
           now() + least(d.n, floor(%(max_wait)s * %(default_mps)s)) * interval '1 second' / %(default_mps)s,
           least(d.n, floor(%(max_wait)s * %(default_mps)s)),
           d.n
    FROM demand d
    ON CONFLICT (phone_number_id) DO UPDATE
    -- Every expression sees the row as it was: the slots free before now + max_wait, at most what was asked.
    SET next_slot_at = greatest(r.next_slot_at, now())
            + least(excluded.requested, greatest(floor(
                  (%(max_wait)s - extract(epoch FROM greatest(r.next_slot_at, now()) - now()))
                  * coalesce(r.max_mps, %(default_mps)s)), 0))
              * interval '1 second' / coalesce(r.max_mps, %(default_mps)s),
        last_reserved = least(excluded.requested, greatest(floor(
                  (%(max_wait)s - extract(epoch FROM greatest(r.next_slot_at, now()) - now()))
                  * coalesce(r.max_mps, %(default_mps)s)), 0)),
        requested = excluded.requested
    RETURNING r.phone_number_id, r.next_slot_at AS reserved_until, r.last_reserved AS slots,
              coalesce(r.max_mps, %(default_mps)s) AS mps,
              extract(epoch FROM r.next_slot_at - now())
                - r.last_reserved::float8 / coalesce(r.max_mps, %(default_mps)s) AS start_in
),
placed AS (
    SELECT cl.id, c.phone_number_id,
           row_number() OVER (PARTITION BY c.phone_number_id ORDER BY cl.id) AS place
    FROM claimed cl JOIN campaigns c ON c.id = cl.campaign_id
)
SELECT t.id, t.status, t.whatsapp_message_id, t.campaign_status,
       cl.id IS NOT NULL AS claimed, ca.id IS NOT NULL AS cancelled,
       q.campaign_id::text AS campaign_id, q.phone_number, q.params, q.attempts + 1 AS attempt,
       c.template_name, c.language_code, c.phone_number_id, c.components,
       -- This row's slot in seconds from now (for a row without one: where it would have been).
       greatest(rs.start_in, 0) + (p.place - 1) / rs.mps::float8 AS send_in,
       p.place <= rs.slots AS has_slot, rs.reserved_until, rs.mps,
       d.callback_key
FROM target t
JOIN send_queue q ON q.id = t.id
JOIN campaigns c ON c.id = q.campaign_id
CROSS JOIN deployment d
LEFT JOIN claimed cl ON cl.id = t.id
LEFT JOIN cancelled ca ON ca.id = t.id
LEFT JOIN placed p ON p.id = t.id
LEFT JOIN reserved rs ON rs.phone_number_id = p.phone_number_id
"""

# One statement finalizes a batch, and only rows their claim still owns (token and `processing`): a stale
# worker can never overwrite a row that was reset or claimed again. The same trip pauses campaigns that hit a
# halt code or whose error rate crossed the threshold, and gives back send slots that were reserved but not
# used, when nobody reserved after them. reset_stuck runs it too, with results the batch journal kept.
FINALIZE_ROWS = """
WITH result AS (
    SELECT * FROM unnest(%(ids)s::bigint[], %(tokens)s::uuid[], %(statuses)s::text[], %(wamids)s::text[],
                         %(codes)s::integer[], %(errors)s::text[], %(requested)s::boolean[],
                         %(enqueue_ids)s::text[])
        AS r (id, token, status, wamid, code, error, requested, enqueue_id)
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
),
given_back AS (
    UPDATE rate_limits r
    SET next_slot_at = r.next_slot_at - g.unused * interval '1 second' / g.mps
    FROM unnest(%(slot_numbers)s::text[], %(slot_until)s::timestamptz[], %(slot_unused)s::integer[],
                %(slot_mps)s::integer[]) AS g (phone_number_id, reserved_until, unused, mps)
    WHERE r.phone_number_id = g.phone_number_id AND r.next_slot_at = g.reserved_until AND g.unused > 0
    RETURNING r.phone_number_id
)
UPDATE send_queue q
-- A row released after its campaign was cancelled is cancelled, not left `ready` with nothing to send it.
SET status = CASE WHEN r.status = 'ready' AND c.status = 'cancelled' THEN 'cancelled' ELSE r.status END,
    whatsapp_message_id = coalesce(r.wamid, q.whatsapp_message_id),
    actual_sent_at = CASE WHEN r.status = 'sent' THEN now() ELSE q.actual_sent_at END,
    finished_at = CASE WHEN r.status IN ('sent', 'failed') THEN now() ELSE q.finished_at END,
    -- attempts counts requests that may have reached Meta: the claim counted one that was never made.
    attempts = q.attempts - CASE WHEN r.requested THEN 0 ELSE 1 END,
    enqueue_id = coalesce(r.enqueue_id, q.enqueue_id),
    last_error_code = r.code,
    last_error = r.error,
    updated_at = now()
FROM result r, campaigns c
WHERE q.id = r.id AND c.id = q.campaign_id AND q.claim_token = r.token AND q.status = 'processing'
RETURNING q.id, q.campaign_id::text, q.status
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
    phone_number_id: str = ""
    reserved_until: datetime | None = None  # the end of the slots this claim reserved for the row's number
    mps: int = 0


@dataclass(frozen=True)
class RowResult:
    """What to write for one claimed row."""

    row_id: int
    campaign_id: str
    claim_token: uuid.UUID
    result: SendResult
    # The enqueue run of the message that will send a row released to `ready` (a deferral, reset_stuck).
    enqueue_id: str | None = None


@dataclass(frozen=True)
class UnusedSlots:
    """Send slots a claim reserved for rows that never made their request, to give back."""

    phone_number_id: str
    reserved_until: datetime
    count: int
    mps: int


def claim_rows(
    conn: psycopg.Connection, messages: Iterable[QueueMessage], token: uuid.UUID, default_mps: int, max_wait: float
) -> dict[int, ClaimOutcome]:
    """Claim the `ready` rows of a batch and reserve their send slots, in one statement.

    `messages` must name each row once. Rows that do not exist are absent from the result.
    """
    messages = list(messages)
    params = {
        "ids": [m.queue_id for m in messages],
        "campaign_ids": [m.campaign_id for m in messages],
        "enqueue_ids": [m.enqueue_id for m in messages],
        "token": token,
        "default_mps": default_mps,
        "max_wait": max_wait,
    }
    return {r["id"]: _claim_outcome(r) for r in rows(conn, CLAIM_ROWS, params, "claim failed", dicts=True)}


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
            has_slot=bool(r["has_slot"]),
            callback_data=callback.sign(r["callback_key"], r["campaign_id"], r["id"]),
        )
    return ClaimOutcome(
        r["id"], row, r["status"], r["whatsapp_message_id"], r["campaign_status"], r["cancelled"],
        r["phone_number_id"], r["reserved_until"], r["mps"] or 0,
    )


def finalize_rows(
    conn: psycopg.Connection,
    results: list[RowResult],
    error_window: int,
    error_threshold: float,
    unused_slots: Iterable[UnusedSlots] = (),
) -> list[tuple[int, str, str]]:
    """Write results in one statement, each guarded by its row's claim token; return (id, campaign_id, status).

    The same statement pauses the campaigns of halt codes (the first reason per campaign) and those whose
    error rate crossed the threshold, and gives back `unused_slots`.
    """
    halts: dict[str, str] = {}
    for r in results:
        if r.result.disposition is Disposition.HALT and r.result.code is not None:
            halts.setdefault(r.campaign_id, f"Graph API error {r.result.code}: {r.result.error}")
    unused = [u for u in unused_slots if u.count > 0]
    params = {
        "ids": [r.row_id for r in results],
        "tokens": [r.claim_token for r in results],
        "statuses": [str(r.result.row_status) for r in results],
        "wamids": [r.result.wamid for r in results],
        "codes": [r.result.code for r in results],
        "errors": [r.result.error for r in results],
        "requested": [r.result.requested for r in results],
        "enqueue_ids": [r.enqueue_id for r in results],
        "halt_campaign_ids": list(halts),
        "halt_reasons": list(halts.values()),
        "campaign_ids": sorted({r.campaign_id for r in results}),
        "window": error_window,
        "threshold": error_threshold,
        "slot_numbers": [u.phone_number_id for u in unused],
        "slot_until": [u.reserved_until for u in unused],
        "slot_unused": [u.count for u in unused],
        "slot_mps": [u.mps for u in unused],
    }
    return rows(conn, FINALIZE_ROWS, params, "finalize failed")
