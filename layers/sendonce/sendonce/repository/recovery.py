"""Stuck rows (reset_stuck) and dead letters (dlq_handler)."""

from __future__ import annotations

import json
import uuid

import psycopg

from sendonce.db import rows, transaction

# Stuck rows: `processing` for longer than STUCK_AFTER_SECONDS with no WAMID (a webhook that resolved a row
# stored its WAMID and made it `sent`). Locked until reset_stuck commits; SKIP LOCKED makes two concurrent
# runs take each row once.
# The claim token only while the batch journal still keeps the claim's entry: an older row without an entry is
# not proof of an unsent claim, so it goes to the policy like any row whose sender died.
SELECT_STUCK = """
SELECT q.id, q.campaign_id::text,
       CASE WHEN q.claimed_at > now() - make_interval(secs => %(journal_keeps)s) THEN q.claim_token END
FROM send_queue q
WHERE q.status = 'processing' AND q.whatsapp_message_id IS NULL
  AND q.claimed_at < now() - make_interval(secs => %(stuck_after)s)
ORDER BY q.claimed_at
LIMIT %(limit)s
FOR UPDATE OF q SKIP LOCKED
"""

# Stuck rows the batch journal holds no results for. `unsent`: the journal proves the claim never started its
# sends, so the row goes back to `ready` whatever the policy. The others may have been accepted by Meta and
# nobody saw it: AMBIGUOUS_POLICY decides (`resend` counts the row in unconfirmed_resends, `fail` marks it
# `unconfirmed`). A cancelled campaign's rows are cancelled (a webhook may still prove them sent later).
RESOLVE_STUCK = """
UPDATE send_queue q
SET status = CASE WHEN c.status = 'cancelled' THEN 'cancelled'
                  WHEN r.unsent OR %(policy)s = 'resend' THEN 'ready'
                  ELSE 'failed' END,
    last_error = CASE WHEN c.status = 'cancelled' THEN 'campaign cancelled'
                      WHEN r.unsent THEN q.last_error
                      WHEN %(policy)s = 'resend'
                      THEN 'resent without evidence: ' || coalesce(q.last_error, 'the sender stopped')
                      ELSE 'unconfirmed' END,
    unconfirmed_resends = q.unconfirmed_resends
        + CASE WHEN c.status <> 'cancelled' AND NOT r.unsent AND %(policy)s = 'resend' THEN 1 ELSE 0 END,
    attempts = q.attempts - CASE WHEN r.unsent THEN 1 ELSE 0 END,
    enqueue_id = %(enqueue_id)s,
    updated_at = now()
FROM unnest(%(ids)s::bigint[], %(unsent)s::boolean[]) AS r (id, unsent), campaigns c
WHERE q.id = r.id AND c.id = q.campaign_id AND q.status = 'processing' AND q.whatsapp_message_id IS NULL
RETURNING q.id, q.campaign_id::text, q.status, NOT r.unsent AND q.status = 'ready' AS blind
"""

# Messages whose receives ran out: a row still `ready` (every attempt was released as transient) becomes
# `failed`, so the campaign can finish; but only while that message is the row's current one. A row that a
# later enqueue (retry-failed, resume, a deferral, reset_stuck) or a later claim made another message's is
# left to that message. Rows in any other state were settled elsewhere.
FAIL_EXHAUSTED_ROWS = """
UPDATE send_queue q
SET status = 'failed',
    last_error = 'retries_exhausted' || coalesce(': ' || q.last_error, ''),
    updated_at = now()
FROM unnest(%(ids)s::bigint[], %(campaign_ids)s::uuid[], %(enqueue_ids)s::text[]) AS m (id, campaign_id, enqueue_id)
WHERE q.id = m.id AND q.campaign_id = m.campaign_id AND q.status = 'ready'
  AND (q.enqueue_id IS NULL OR q.enqueue_id = m.enqueue_id)
  -- A row that waits (messaging limit, 131049) belongs to the schedule, which enqueues it when its wait is over.
  AND q.wait_until IS NULL
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


# Rows whose wait is over (room in the messaging limit freed, a 131049's 24 h passed), in running campaigns: a
# new enqueue run is theirs. The caller sends their messages before it commits, so a row never leaves its wait
# without one. SKIP LOCKED: two runs take each row once.
RELEASE_WAITING = """
WITH due AS (
    SELECT q.id
    FROM send_queue q JOIN campaigns c ON c.id = q.campaign_id
    WHERE q.wait_until <= now() AND q.status = 'ready' AND c.status = 'running'
    ORDER BY q.wait_until
    LIMIT %(limit)s
    FOR UPDATE OF q SKIP LOCKED
)
UPDATE send_queue q
SET wait_until = NULL, wait_reason = NULL, enqueue_id = %(enqueue_id)s, updated_at = now()
FROM due WHERE q.id = due.id
RETURNING q.id, q.campaign_id::text
"""


def release_waiting(conn: psycopg.Connection, enqueue_id: str, limit: int) -> list[tuple[int, str]]:
    """End the wait of up to `limit` due rows (inside the caller's transaction); (id, campaign_id) of each."""
    return rows(conn, RELEASE_WAITING, {"enqueue_id": enqueue_id, "limit": limit}, "releasing waiting rows failed")


def stuck_rows(
    conn: psycopg.Connection, stuck_after: int, limit: int, journal_keeps: int
) -> list[tuple[int, str, uuid.UUID | None]]:
    """Lock the stuck rows (inside the caller's transaction); return (id, campaign_id, claim_token) for each.

    The token is None for claims older than `journal_keeps` seconds, whose journal entry may have expired.
    """
    params = {"stuck_after": stuck_after, "limit": limit, "journal_keeps": journal_keeps}
    return rows(conn, SELECT_STUCK, params, "reading stuck rows failed")


def resolve_stuck(
    conn: psycopg.Connection, unsent: dict[int, bool], policy: str, enqueue_id: str
) -> list[tuple[int, str, str, bool]]:
    """Release, resend, fail or cancel stuck rows; return (id, campaign_id, new status, resent blindly)."""
    params = {"ids": list(unsent), "unsent": list(unsent.values()), "policy": policy, "enqueue_id": enqueue_id}
    return rows(conn, RESOLVE_STUCK, params, "resetting stuck rows failed")


def settle_dead_letters(conn: psycopg.Connection, exhausted: list[dict], unusable: list[dict]) -> set[int]:
    """Fail the rows of exhausted messages still current; keep unusable ones and those naming no row.

    Both lists hold {message_id, body, attributes} dicts; `exhausted` ones also a parsed `message` and
    `unusable` ones a `reason`. One transaction; returns the ids of the rows failed now.
    """
    params = {
        "ids": [d["message"].queue_id for d in exhausted],
        "campaign_ids": [d["message"].campaign_id for d in exhausted],
        "enqueue_ids": [d["message"].enqueue_id for d in exhausted],
    }
    with transaction(conn, "settling dead letters failed"):
        failed = {row[0] for row in rows(conn, FAIL_EXHAUSTED_ROWS, params, "settling dead letters failed")}
        existing = {row[0] for row in rows(conn, SELECT_EXISTING_ROWS, params, "settling dead letters failed")}
        letters = unusable + [{**d, "reason": "no such row"} for d in exhausted if d["message"].queue_id not in existing]
        if letters:
            letter_params = {
                "message_ids": [d["message_id"] for d in letters],
                "bodies": [d["body"] for d in letters],
                "attributes": [json.dumps(d["attributes"]) for d in letters],
                "reasons": [d["reason"] for d in letters],
            }
            rows(conn, INSERT_DEAD_LETTERS, letter_params, "settling dead letters failed")
    return failed


def dead_letters(conn: psycopg.Connection, limit: int = 50) -> list[dict]:
    """The newest dead letters."""
    return rows(conn, SELECT_DEAD_LETTERS, {"limit": limit}, "reading dead letters failed", dicts=True)
