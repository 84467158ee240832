"""The sender's two statements: one claim and one finalize per batch (docs/sender-protocol.md)."""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

import psycopg

from sendonce import callback, graph_errors
from sendonce.db import rows
from sendonce.models import ClaimedRow, Disposition, QueueMessage, SendResult

# One statement claims the whole batch. `target` reads the rows as they were; the UPDATE re-checks
# status = 'ready' on the row it locks, so of two workers racing for a row exactly one gets it. The claiming
# message becomes the row's current one (`enqueue_id`: only the current message's exhaustion fails a row).
#
# Send slots: one schedule per phone number (`rate_limits`), slots 1/mps apart, shared by every sender. The
# statement books only the slots that fall within MAX_SLOT_WAIT_SECONDS (`reserve_send_slots`, migration 005)
# and claims only the rows that got one: the others stay `ready`, untouched, and the sender sends their
# messages again, delayed to when their place in the line of deferred rows (`line_at`) nears. So nothing is
# booked that is not about to be sent, and a sender that finds the schedule full costs the database nothing.
#
# The messaging limit comes first (`admit_recipients`, migration 007): a row to a user the portfolio may not
# message now takes no slot; it waits in the database (`wait_until`, no SQS message) until its room frees,
# and reset_stuck enqueues it then. A row still waiting is not claimed.
CLAIM_ROWS = """
WITH requested AS (
    SELECT * FROM unnest(%(ids)s::bigint[], %(campaign_ids)s::uuid[], %(enqueue_ids)s::text[], %(line_ats)s::float8[])
        AS r (id, campaign_id, enqueue_id, line_at)
),
target AS (
    SELECT q.id, q.status, q.whatsapp_message_id, c.status AS campaign_status, c.phone_number_id, r.enqueue_id,
           r.line_at, q.phone_number, q.wait_until,
           send_window_opens_at(c.send_window_opens, c.send_window_closes, q.time_zone) AS window_opens_at,
           EXISTS (SELECT 1 FROM suppressions s WHERE s.phone_number = q.phone_number) AS suppressed
    FROM requested r
    JOIN send_queue q ON q.id = r.id AND q.campaign_id = r.campaign_id
    JOIN campaigns c ON c.id = q.campaign_id
),
ready_now AS (
    SELECT t.* FROM target t
    WHERE t.campaign_status = 'running' AND NOT t.suppressed AND t.status = 'ready' AND t.whatsapp_message_id IS NULL
      AND (t.wait_until IS NULL OR t.wait_until <= now())
),
-- Quiet hours (migration 009): a row outside its recipient's send window waits for the window to open.
sendable AS (
    SELECT t.id, t.phone_number_id, t.line_at, t.phone_number FROM ready_now t WHERE t.window_opens_at IS NULL
),
-- The portfolio's messaging limit (migration 007): rows to users beyond the room left wait for their room.
admission AS MATERIALIZED (
    SELECT a.*
    FROM (SELECT array_agg(s.id ORDER BY s.line_at NULLS LAST, s.id) AS ids,
                 array_agg(s.phone_number ORDER BY s.line_at NULLS LAST, s.id) AS phones,
                 array_agg(s.phone_number_id ORDER BY s.line_at NULLS LAST, s.id) AS numbers
          FROM sendable s) b
    CROSS JOIN LATERAL admit_recipients(b.ids, b.phones, b.numbers, %(window)s) a
),
-- The rows that may be sent, in the order they get slots: back from the line first (by place), then fresh.
ranked AS (
    SELECT t.id, t.phone_number_id, t.line_at,
           row_number() OVER (PARTITION BY t.phone_number_id ORDER BY t.line_at NULLS LAST, t.id) AS place
    FROM sendable t JOIN admission a ON a.id = t.id AND a.admitted
),
demand AS (
    SELECT phone_number_id, count(*) FILTER (WHERE line_at IS NOT NULL)::integer AS in_line,
           count(*) FILTER (WHERE line_at IS NULL)::integer AS fresh
    FROM ranked GROUP BY phone_number_id
),
reserved AS (
    INSERT INTO rate_limits AS r (phone_number_id, next_slot_at, last_reserved, deferred_until, requested, requested_in_line)
    SELECT d.phone_number_id, s.next_slot_at, s.slots, s.deferred_until, d.in_line + d.fresh, d.in_line
    FROM demand d
    CROSS JOIN LATERAL reserve_send_slots(NULL, NULL, %(default_mps)s, d.in_line, d.fresh, %(max_wait)s) s
    ON CONFLICT (phone_number_id) DO UPDATE
    SET (next_slot_at, last_reserved, deferred_until, requested, requested_in_line) = (
        SELECT s.next_slot_at, s.slots, s.deferred_until, excluded.requested, excluded.requested_in_line
        FROM reserve_send_slots(r.next_slot_at, r.deferred_until, coalesce(r.max_mps, %(default_mps)s),
                                excluded.requested_in_line, excluded.requested - excluded.requested_in_line,
                                %(max_wait)s) s
    )
    RETURNING r.*
),
-- In seconds from now(), the statement's start, which the sender measures from: where this claim's slots
-- start, and where its fresh rows without a slot line up.
schedule AS (
    SELECT rs.phone_number_id, rs.next_slot_at AS reserved_until, rs.last_reserved AS slots,
           coalesce(rs.max_mps, %(default_mps)s) AS mps,
           extract(epoch FROM rs.next_slot_at - now())
               - rs.last_reserved::float8 / coalesce(rs.max_mps, %(default_mps)s) AS start_in,
           extract(epoch FROM rs.deferred_until - now())
               - greatest(rs.requested - rs.last_reserved - greatest(rs.requested_in_line - rs.last_reserved, 0), 0)::float8
                 / coalesce(rs.max_mps, %(default_mps)s) AS line_in,
           rs.requested_in_line AS in_line
    FROM reserved rs
),
slotted AS (
    SELECT k.id, k.place <= s.slots AS has_slot, s.reserved_until, s.mps,
           CASE WHEN k.place <= s.slots THEN greatest(s.start_in, 0) + (k.place - 1) / s.mps::float8
                -- No slot: the row's place in line, its own if it came back from the line.
                WHEN k.line_at IS NOT NULL THEN k.line_at - extract(epoch FROM now())
                ELSE greatest(s.line_in, 0) + (k.place - greatest(s.slots, s.in_line) - 1) / s.mps::float8
           END AS send_in
    FROM ranked k JOIN schedule s ON s.phone_number_id = k.phone_number_id
),
claimed AS (
    UPDATE send_queue q
    SET status = 'processing', claim_token = %(token)s, claimed_at = now(), attempts = q.attempts + 1,
        enqueue_id = t.enqueue_id, wait_until = NULL, wait_reason = NULL, updated_at = now()
    FROM slotted s JOIN target t ON t.id = s.id
    WHERE q.id = s.id AND s.has_slot AND q.status = 'ready' AND q.whatsapp_message_id IS NULL
    RETURNING q.id
),
waiting AS (
    UPDATE send_queue q
    SET wait_until = w.wait_until, wait_reason = w.reason, updated_at = now()
    FROM (SELECT a.id, a.wait_until, 'messaging limit' AS reason FROM admission a WHERE NOT a.admitted
          UNION ALL
          SELECT t.id, t.window_opens_at, 'send window' FROM ready_now t WHERE t.window_opens_at IS NOT NULL) w
    WHERE q.id = w.id AND q.status = 'ready' AND q.whatsapp_message_id IS NULL
    RETURNING q.id, q.wait_until, q.wait_reason
),
cancelled AS (
    UPDATE send_queue q
    SET status = 'cancelled',
        last_error = CASE WHEN t.suppressed THEN 'suppressed: opted out (131050)' ELSE 'campaign cancelled' END,
        updated_at = now()
    FROM target t
    WHERE q.id = t.id AND q.status = 'ready' AND (t.campaign_status = 'cancelled' OR t.suppressed)
    RETURNING q.id
)
SELECT t.id, t.status, t.whatsapp_message_id, t.campaign_status,
       cl.id IS NOT NULL AS claimed, ca.id IS NOT NULL AS cancelled,
       q.campaign_id::text AS campaign_id, q.phone_number, q.params, q.attempts + 1 AS attempt,
       c.template_name, c.language_code, c.phone_number_id, c.components,
       sl.has_slot, sl.send_in, sl.reserved_until, sl.mps,
       extract(epoch FROM now()) + sl.send_in AS line_at,
       d.callback_key, coalesce(w.wait_until, q.wait_until) AS wait_until,
       coalesce(w.wait_reason, q.wait_reason) AS wait_reason,
       w.id IS NOT NULL AS waits
FROM target t
JOIN send_queue q ON q.id = t.id
JOIN campaigns c ON c.id = q.campaign_id
CROSS JOIN deployment d
LEFT JOIN claimed cl ON cl.id = t.id
LEFT JOIN cancelled ca ON ca.id = t.id
LEFT JOIN slotted sl ON sl.id = t.id
LEFT JOIN waiting w ON w.id = t.id
"""

# One statement finalizes a batch, and only rows their claim still owns (token and `processing`): a stale
# worker can never overwrite a row that was reset or claimed again. The same trip pauses campaigns that hit a
# halt code or whose error rate crossed the threshold, and gives back send slots that were reserved but not
# used, when nobody reserved after them. reset_stuck runs it too, with results the batch journal kept.
FINALIZE_ROWS = """
WITH result AS (
    SELECT * FROM unnest(%(ids)s::bigint[], %(tokens)s::uuid[], %(statuses)s::text[], %(wamids)s::text[],
                         %(codes)s::integer[], %(errors)s::text[], %(requested)s::boolean[],
                         %(enqueue_ids)s::text[], %(waits)s::float8[], %(wait_reasons)s::text[])
        AS r (id, token, status, wamid, code, error, requested, enqueue_id, wait, wait_reason)
),
-- A halt pauses the campaign, saying what paused it and, for a pause with a known end, until when.
halted AS (
    UPDATE campaigns c
    SET status = 'paused', pause_reason = h.reason, paused_by = h.paused_by,
        paused_until = now() + make_interval(secs => h.pause_seconds), updated_at = now()
    FROM unnest(%(halt_campaign_ids)s::uuid[], %(halt_reasons)s::text[], %(halt_by)s::text[],
                %(halt_seconds)s::float8[]) AS h (campaign_id, reason, paused_by, pause_seconds)
    WHERE c.id = h.campaign_id AND c.status = 'running'
    RETURNING c.id
),
-- Over `threshold` of a campaign's last `window` final answers failed: pause it (the results of this batch
-- count from the next one on: the statement sees the rows as they were).
failing AS (
    UPDATE campaigns c
    SET status = 'paused', paused_by = 'error_rate', paused_until = NULL, updated_at = now(),
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
-- What each row becomes.
decided AS (
    SELECT r.*, CASE
        -- A row released after its campaign was cancelled is cancelled, not left `ready` with nothing to send it.
        WHEN r.status = 'ready' AND c.status = 'cancelled' THEN 'cancelled'
        -- "Not now" twice in a row (131049 again after its wait): Meta keeps refusing this user; failed.
        WHEN r.status = 'ready' AND r.wait IS NOT NULL AND r.code IS NOT NULL AND r.code = q.last_error_code
            THEN 'failed'
        ELSE r.status
    END AS final
    FROM result r JOIN send_queue q ON q.id = r.id JOIN campaigns c ON c.id = q.campaign_id
),
-- 131050 at the send: the user stopped marketing messages; the number is suppressed as by the webhook (its
-- pending rows in other campaigns are cancelled when claimed, and no new campaign enqueues it).
opted_out AS (
    INSERT INTO suppressions (phone_number, reason)
    SELECT DISTINCT q.phone_number, 'opted out (131050)'
    FROM decided r JOIN send_queue q ON q.id = r.id
    WHERE r.final = 'failed' AND r.code = 131050
    ON CONFLICT (phone_number) DO NOTHING
    RETURNING phone_number
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
SET status = r.final,
    whatsapp_message_id = coalesce(r.wamid, q.whatsapp_message_id),
    actual_sent_at = CASE WHEN r.status = 'sent' THEN now() ELSE q.actual_sent_at END,
    finished_at = CASE WHEN r.final IN ('sent', 'failed') THEN now() ELSE q.finished_at END,
    wait_until = CASE WHEN r.final = 'ready' AND r.wait IS NOT NULL THEN now() + make_interval(secs => r.wait) END,
    wait_reason = CASE WHEN r.final = 'ready' AND r.wait IS NOT NULL THEN r.wait_reason END,
    -- attempts counts requests that may have reached Meta: the claim counted one that was never made.
    attempts = q.attempts - CASE WHEN r.requested THEN 0 ELSE 1 END,
    enqueue_id = coalesce(r.enqueue_id, q.enqueue_id),
    last_error_code = r.code,
    last_error = r.error,
    updated_at = now()
FROM decided r
WHERE q.id = r.id AND q.claim_token = r.token AND q.status = 'processing'
RETURNING q.id, q.campaign_id::text, q.status, q.wait_until IS NOT NULL
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
    has_slot: bool = False  # a slot was booked for it (if `row` is None all the same, another worker took the row)
    # In seconds from the claim: its slot; without one (the schedule is full), its place in the line of deferred
    # rows, which `line_at` gives as a Unix time.
    send_in: float | None = None
    line_at: float | None = None
    # Not sent before this time (a `ready` row that waits, e.g. for room in the messaging limit), and why;
    # `waits_now`: this claim made it wait (no room in the messaging limit, or outside its send window).
    wait_until: datetime | None = None
    wait_reason: str | None = None
    waits_now: bool = False


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
    conn: psycopg.Connection,
    messages: Iterable[QueueMessage],
    token: uuid.UUID,
    default_mps: int,
    max_wait: float,
    window: float = 86400.0,
) -> dict[int, ClaimOutcome]:
    """Claim the `ready` rows of a batch and reserve their send slots, in one statement.

    `messages` must name each row once. Rows that do not exist are absent from the result. `window` is the
    messaging limit's window in seconds (MESSAGING_WINDOW_SECONDS).
    """
    messages = list(messages)
    params = {
        "ids": [m.queue_id for m in messages],
        "campaign_ids": [m.campaign_id for m in messages],
        "enqueue_ids": [m.enqueue_id for m in messages],
        "line_ats": [m.line_at for m in messages],
        "token": token,
        "default_mps": default_mps,
        "max_wait": max_wait,
        "window": window,
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
            send_in=float(r["send_in"]),
            slot_seconds=1 / r["mps"],
            callback_data=callback.sign(r["callback_key"], r["campaign_id"], r["id"]),
        )
    waits = r["has_slot"] is False  # ready and sendable, but the schedule had no slot for it
    return ClaimOutcome(
        r["id"], row, r["status"], r["whatsapp_message_id"], r["campaign_status"], r["cancelled"],
        r["phone_number_id"], r["reserved_until"], r["mps"] or 0, bool(r["has_slot"]),
        r["send_in"], float(r["line_at"]) if waits else None, r["wait_until"], r["wait_reason"], r["waits"],
    )


def finalize_rows(
    conn: psycopg.Connection,
    results: list[RowResult],
    error_window: int,
    error_threshold: float,
    unused_slots: Iterable[UnusedSlots] = (),
) -> list[tuple[int, str, str, bool]]:
    """Write results in one statement, each guarded by its row's claim token; return (id, campaign_id, status, waits).

    The same statement pauses the campaigns of halt codes (the first reason per campaign) and those whose
    error rate crossed the threshold, and gives back `unused_slots`.
    """
    halts: dict[str, tuple[str, str, float | None]] = {}
    for r in results:
        if r.result.disposition is Disposition.HALT and r.result.code is not None:
            paused_by, seconds = graph_errors.halt_pause(r.result.code)
            halts.setdefault(r.campaign_id, (f"Graph API error {r.result.code}: {r.result.error}", paused_by, seconds))
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
        "waits": [float(r.result.delay) if r.result.disposition is Disposition.WAIT else None for r in results],
        "wait_reasons": [graph_errors.wait_rule(r.result.code)[1] if r.result.disposition is Disposition.WAIT else None
                         for r in results],
        "halt_campaign_ids": list(halts),
        "halt_reasons": [reason for reason, _, _ in halts.values()],
        "halt_by": [paused_by for _, paused_by, _ in halts.values()],
        "halt_seconds": [seconds for _, _, seconds in halts.values()],
        "campaign_ids": sorted({r.campaign_id for r in results}),
        "window": error_window,
        "threshold": error_threshold,
        "slot_numbers": [u.phone_number_id for u in unused],
        "slot_until": [u.reserved_until for u in unused],
        "slot_unused": [u.count for u in unused],
        "slot_mps": [u.mps for u in unused],
    }
    return rows(conn, FINALIZE_ROWS, params, "finalize failed")
