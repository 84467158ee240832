"""Recovery jobs: reset stuck rows, release rows whose wait is over, resume campaigns whose pause is over, and
account for every message whose retries ran out (the DLQ)."""

from __future__ import annotations

import time
import uuid
from collections import Counter

import psycopg

from sendonce import campaigns, control, journal, sqs
from sendonce.config import get_settings, send_queue_url
from sendonce.db import transaction
from sendonce.errors import DatabaseError, EnqueueError, MalformedMessageError
from sendonce.models import Disposition, QueueMessage, RowStatus
from sendonce.observability import count, gauge, logger, scrub
from sendonce.repository import recovery as recovery_sql
from sendonce.repository import sending as sending_sql
from sendonce.repository.sending import RowResult

RESET_LIMIT = 10_000  # rows per run; the next run takes the rest
RELEASE_CHUNK = 5_000  # waiting rows released (and enqueued) per transaction


def reset_stuck(conn: psycopg.Connection, queue_url: str | None = None) -> dict:
    """Resolve rows stuck in `processing` longer than STUCK_AFTER_SECONDS, evidence first.

    In one transaction: lock the stuck rows; read their claims in the batch journal; write the results the
    journal kept (the WAMIDs Meta returned while PostgreSQL was unreachable), guarded by the claim token;
    release the rows of claims that never started their sends; apply AMBIGUOUS_POLICY only to the rest, whose
    send may have been accepted without anybody seeing it (`resend`: back to `ready`, counted in
    `unconfirmed_resends`; `fail`: `failed`, reason `unconfirmed`); then enqueue every row now `ready`. If the
    journal cannot be read or the enqueue fails, everything is rolled back and the next run tries again, so a
    row is never resent without its evidence having been looked at, and never waits without a message.

    Returns
    -------
    dict
        {"reset": rows back to `ready`, "resent_without_evidence": of those, the ones that may have been sent,
         "recovered": rows written from the journal, "failed": n, "cancelled": n, "enqueued": n}
    """
    settings = get_settings()
    queue_url = queue_url or send_queue_url()
    enqueue_id = uuid.uuid4().hex
    with transaction(conn, "resetting stuck rows failed"):
        stuck = recovery_sql.stuck_rows(conn, settings.stuck_after_seconds, RESET_LIMIT, journal.TRUSTED_SECONDS)
        entries = journal.lookup({token for _, _, token in stuck if token})
        recovered = _write_journal_results(conn, stuck, entries, enqueue_id)
        unsent = {row_id: token is not None and token not in entries for row_id, _, token in stuck if row_id not in recovered}
        resolved = recovery_sql.resolve_stuck(conn, unsent, settings.ambiguous_policy, enqueue_id) if unsent else []
        ready = [QueueMessage(row_id, campaign_id, enqueue_id)
                 for row_id, campaign_id, status, _ in [*recovered.values(), *resolved] if status == "ready"]
        enqueued = sqs.send_messages(queue_url, ready) if ready else 0
    counts = Counter(status for _, _, status, _ in resolved)
    blind = sum(1 for *_, resent_blindly in resolved if resent_blindly)
    result = {
        "reset": len(ready),
        "resent_without_evidence": blind,
        "recovered": len(recovered),
        "failed": counts["failed"],
        "cancelled": counts["cancelled"],
        "enqueued": enqueued,
    }
    log = logger.warning if blind or counts["failed"] else logger.info
    log(f"Reset {len(ready)} stuck 'processing' entries to 'ready'", policy=settings.ambiguous_policy, **result)
    gauge("StuckRows", len(stuck))
    count("Reset", result["reset"])
    count("ResentWithoutEvidence", blind)
    count("RecoveredFromJournal", result["recovered"])
    return result


def release_waiting(conn: psycopg.Connection, queue_url: str | None = None, deadline_s: float = 120.0) -> int:
    """Enqueue the rows whose wait is over (room in the messaging limit, a "not now" answer's wait); how many.

    Chunk by chunk, each in one transaction that sends the chunk's messages before it commits: a failed send
    rolls the chunk back (its rows still wait, due, for the next run); a lost commit leaves messages whose rows
    the next run enqueues again (the claim sends each row once).
    """
    queue_url = queue_url or send_queue_url()
    released, stop_at = 0, time.monotonic() + deadline_s
    while time.monotonic() < stop_at:
        enqueue_id = uuid.uuid4().hex
        with transaction(conn, "releasing waiting rows failed"):
            due = recovery_sql.release_waiting(conn, enqueue_id, RELEASE_CHUNK)
            if due:
                sqs.send_messages(queue_url, [QueueMessage(row_id, campaign, enqueue_id) for row_id, campaign in due])
        released += len(due)
        if len(due) < RELEASE_CHUNK:
            break
    if released:
        logger.info("waiting rows released", released=released)
    count("ReleasedFromWait", released)
    return released


def unblock(conn: psycopg.Connection, queue_url: str | None = None) -> dict:
    """What the schedule does besides resetting stuck rows: start scheduled campaigns whose time has come, resume
    campaigns whose pause is over (auto_resume), then enqueue rows whose wait is over."""
    queue_url = queue_url or send_queue_url()
    return {
        "started": campaigns.start_scheduled(conn, queue_url),
        "resumed": control.auto_resume(conn, queue_url),
        "released": release_waiting(conn, queue_url),
    }


def _write_journal_results(
    conn: psycopg.Connection, stuck: list[tuple[int, str, uuid.UUID | None]], entries: dict, enqueue_id: str
) -> dict[int, tuple[int, str, str, bool]]:
    """Finalize the stuck rows whose final results the journal kept; return them as (id, campaign_id, status, False).

    An ambiguous result is not final: its row is left to the policy, like a row whose sender died.
    """
    settings = get_settings()
    results = []
    for row_id, campaign_id, token in stuck:
        entry = entries.get(token)
        result = entry.results.get(row_id) if entry and entry.results else None
        if result is not None and result.row_status != RowStatus.PROCESSING:
            # Released rows are enqueued again, except those that wait ("not now"): the schedule enqueues them.
            released = result.row_status == RowStatus.READY and result.disposition is not Disposition.WAIT
            results.append(RowResult(row_id, campaign_id, token, result, enqueue_id if released else None))
    if not results:
        return {}
    # Written in a savepoint: results that cannot be written (a bug, never a lost connection: that aborts
    # the run) leave their rows stuck and visible rather than resent.
    try:
        with transaction(conn, "writing journal results failed"):
            written = sending_sql.finalize_rows(conn, results, settings.error_rate_window, settings.error_rate_threshold)
    except DatabaseError as exc:
        if conn.broken:
            raise
        logger.error("journal results not written; rows left stuck", error=scrub(exc), rows=[r.row_id for r in results])
        return {r.row_id: (r.row_id, r.campaign_id, "processing", False) for r in results}
    # A row that waits is `ready` without a message, and stays so: the schedule enqueues it when its wait is over.
    return {row_id: (row_id, campaign_id, "waiting" if waits else status, False)
            for row_id, campaign_id, status, waits in written}


def settle_dead_letters(conn: psycopg.Connection, records: list[dict]) -> dict:
    """Account for DLQ messages (raw SQS records): fail the `ready` rows they still own, keep unusable ones.

    Returns
    -------
    dict
        {"records": n, "failed": rows failed now, "unusable": bodies that are not the contract's}
    """
    exhausted, unusable = [], []
    for record in records:
        letter = {
            "message_id": record["messageId"],
            "body": record.get("body") or "",
            "attributes": record.get("attributes") or {},
        }
        try:
            exhausted.append({**letter, "message": QueueMessage.parse(letter["body"], record["messageId"])})
        except MalformedMessageError as exc:
            unusable.append({**letter, "reason": str(exc)})
    failed = recovery_sql.settle_dead_letters(conn, exhausted, unusable)
    # Row ids, not bodies: a body that is not the contract's may hold anything, and it is kept in dead_letters.
    logger.info("dead letters settled", records=len(records), rows_failed=len(failed), unusable=len(unusable),
                failed_rows=sorted(failed))
    count("DeadLettered", len(records))
    count("FailedExhausted", len(failed))
    return {"records": len(records), "failed": len(failed), "unusable": len(unusable)}


def redrive(dlq_url: str, queue_url: str) -> int:
    """Move every message waiting on the DLQ back to the send queue; return how many moved.

    For messages dlq_handler could not settle (the DLQ alarm): once the cause is fixed, they get another
    round of receives. A message is deleted from the DLQ only after the send queue took it.
    """
    client = sqs.get_sqs_client()
    moved = 0
    while messages := client.receive_message(QueueUrl=dlq_url, MaxNumberOfMessages=10, VisibilityTimeout=60).get(
        "Messages", []
    ):
        answer = client.send_message_batch(
            QueueUrl=queue_url, Entries=[{"Id": str(i), "MessageBody": m["Body"]} for i, m in enumerate(messages)]
        )
        taken = [messages[int(entry["Id"])] for entry in answer.get("Successful", [])]
        if taken:
            client.delete_message_batch(
                QueueUrl=dlq_url, Entries=[{"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]} for i, m in enumerate(taken)]
            )
        moved += len(taken)
        if len(taken) < len(messages):
            raise EnqueueError(f"the send queue refused {len(messages) - len(taken)} messages; {moved} moved so far")
    logger.info("dlq redriven", moved=moved)
    return moved
