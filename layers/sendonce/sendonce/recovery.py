"""Recovery jobs: reset stuck rows, and account for every message whose retries ran out (the DLQ)."""

from __future__ import annotations

import uuid

import psycopg

from sendonce import repository, sqs
from sendonce.config import get_settings, send_queue_url
from sendonce.errors import EnqueueError, MalformedMessageError
from sendonce.models import QueueMessage
from sendonce.observability import logger

RESET_LIMIT = 10_000  # rows per run; the next run takes the rest


def reset_stuck(conn: psycopg.Connection, queue_url: str | None = None) -> dict:
    """Apply AMBIGUOUS_POLICY to rows stuck in `processing` longer than STUCK_AFTER_SECONDS.

    `resend` puts them back to `ready` and enqueues them again; `fail` marks them `failed` (reason
    `unconfirmed`). The rows are reset and enqueued inside one transaction: if enqueueing fails the reset is
    rolled back and the next run tries again, so a reset row never waits without a message. A sender that
    receives one of the messages before the commit waits on the row lock, then sees it `ready`.

    Returns
    -------
    dict
        {"reset": n, "failed": n, "cancelled": n, "enqueued": n}
    """
    settings = get_settings()
    queue_url = queue_url or send_queue_url()
    with conn.transaction():
        rows = repository.reset_stuck(conn, settings.stuck_after_seconds, settings.ambiguous_policy, RESET_LIMIT)
        enqueue_id = uuid.uuid4().hex
        ready = [QueueMessage(row_id, campaign_id, enqueue_id) for row_id, campaign_id, status in rows if status == "ready"]
        enqueued = sqs.send_messages(queue_url, ready) if ready else 0
    counts = {status: sum(1 for row in rows if row[2] == status) for status in ("ready", "failed", "cancelled")}
    logger.info(
        f"Reset {counts['ready']} stuck 'processing' entries to 'ready'",
        policy=settings.ambiguous_policy,
        failed=counts["failed"],
        cancelled=counts["cancelled"],
        enqueued=enqueued,
    )
    return {"reset": counts["ready"], "failed": counts["failed"], "cancelled": counts["cancelled"], "enqueued": enqueued}


def settle_dead_letters(conn: psycopg.Connection, records: list[dict]) -> dict:
    """Account for DLQ messages (raw SQS records): fail their `ready` rows, keep the rest in dead_letters.

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
    failed = repository.settle_dead_letters(conn, exhausted, unusable)
    logger.info("dead letters settled", records=len(records), rows_failed=len(failed), unusable=len(unusable))
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
