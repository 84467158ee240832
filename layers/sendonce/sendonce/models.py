"""The domain's value types: queue messages, claimed rows and what a send came to."""

from __future__ import annotations

import json
import re
import uuid
from dataclasses import dataclass
from enum import StrEnum

from sendonce.errors import MalformedMessageError

# send_queue.id is a PostgreSQL bigint: a larger id is a malformed message, never a failed claim statement.
MAX_ROW_ID = 2**63 - 1
_ENQUEUE_ID = re.compile(r"^[A-Za-z0-9_.:-]{1,128}$")


class RowStatus(StrEnum):
    """send_queue.status."""

    READY = "ready"
    PROCESSING = "processing"
    SENT = "sent"
    FAILED = "failed"
    CANCELLED = "cancelled"


class CampaignStatus(StrEnum):
    """campaigns.status."""

    RUNNING = "running"
    PAUSED = "paused"
    CANCELLED = "cancelled"
    COMPLETED = "completed"


class Disposition(StrEnum):
    """What the sender does with a row after one send attempt (docs/graph-errors.md)."""

    SENT = "sent"  # Meta accepted: store the WAMID
    FAILED = "failed"  # permanent for this recipient: never retried
    RETRY = "retry"  # provably not sent: back to `ready`, the message is retried
    AMBIGUOUS = "ambiguous"  # may have been accepted: stays `processing` until reconciled or reset
    HALT = "halt"  # sending on would fail for everyone: row back to `ready`, campaign paused
    DEFER = "defer"  # throttled (or no send slot soon): row back to `ready`, a new message after `delay` s
    # Meta said "not now" for this user (131049): row back to `ready`, waiting `delay` s in the database without
    # an SQS message (reset_stuck enqueues it then); the same answer again fails it.
    WAIT = "wait"


@dataclass(frozen=True)
class QueueMessage:
    """The SQS body: which row to send, and which enqueue this message belongs to."""

    queue_id: int
    campaign_id: str
    # One id per enqueue run: duplicate deliveries of a run share it, a deliberate re-enqueue gets a new one.
    enqueue_id: str
    # A row deferred for want of a send slot: its place in the line of deferred rows (Unix time, the database's
    # clock), kept when it comes back and finds no slot again.
    line_at: float | None = None

    @classmethod
    def parse(cls, body: str | None, fallback_enqueue_id: str) -> QueueMessage:
        """Parse an SQS body; raise `MalformedMessageError` saying what is wrong."""
        try:
            data = json.loads(body or "")
        except ValueError:
            raise MalformedMessageError(f"body is not JSON: {(body or '')[:60]!r}") from None
        if not isinstance(data, dict):
            raise MalformedMessageError("body is not a JSON object")
        queue_id = data.get("queue_id")
        digits = str(queue_id).lstrip("0") if isinstance(queue_id, (int, str)) and not isinstance(queue_id, bool) else ""
        if not (digits.isdecimal() and digits.isascii() and len(digits) <= 19 and int(digits) <= MAX_ROW_ID):
            raise MalformedMessageError(f"queue_id must be an integer from 1 to {MAX_ROW_ID}, got {str(queue_id)[:40]!r}")
        try:
            campaign_id = str(uuid.UUID(str(data.get("campaign_id"))[:64]))
        except ValueError:
            raise MalformedMessageError(f"campaign_id must be a UUID, got {str(data.get('campaign_id'))[:40]!r}") from None
        enqueue_id = data.get("enqueue_id") or fallback_enqueue_id
        if not isinstance(enqueue_id, str) or not _ENQUEUE_ID.match(enqueue_id):
            raise MalformedMessageError(f"enqueue_id must be 1 to 128 letters, digits or _.:-, got {str(enqueue_id)[:40]!r}")
        line_at = data.get("line_at")
        if line_at is not None and (isinstance(line_at, bool) or not isinstance(line_at, (int, float))
                                    or not 0 < line_at < 1e11):
            raise MalformedMessageError(f"line_at must be a Unix time, got {str(line_at)[:40]!r}")
        return cls(int(digits), campaign_id, enqueue_id, None if line_at is None else float(line_at))

    def idempotency_data(self) -> dict:
        """What the idempotency layer keys a delivery on: the row and the enqueue run."""
        return {"queue_id": self.queue_id, "campaign_id": self.campaign_id, "enqueue_id": self.enqueue_id}

    def body(self) -> str:
        """The SQS body for this message."""
        body = {"queue_id": str(self.queue_id), "campaign_id": self.campaign_id, "enqueue_id": self.enqueue_id}
        if self.line_at is not None:
            body["line_at"] = round(self.line_at, 3)
        return json.dumps(body)


@dataclass(frozen=True)
class ClaimedRow:
    """A send_queue row this worker owns until finalize, with what the template send needs."""

    id: int
    campaign_id: str
    phone_number: str
    params: tuple[str, ...]
    template_name: str
    language_code: str
    phone_number_id: str
    components: tuple[dict, ...] = ()
    attempt: int = 1  # this claim's attempt number (1 = first)
    send_in: float = 0.0  # seconds from the claim until this row's send slot (the rate limiter)
    slot_seconds: float = 0.0  # the schedule's slot interval, 1 / messages per second
    callback_data: str = ""  # biz_opaque_callback_data: names the row, signed (sendonce.callback)


@dataclass(frozen=True)
class SendResult:
    """What one Graph API call came to."""

    disposition: Disposition
    wamid: str | None = None
    code: int | None = None
    error: str | None = None
    delay: int = 0  # DEFER: seconds before the new message becomes visible
    # Whether a request may have reached Meta (send_queue.attempts counts only those).
    requested: bool = True

    @property
    def row_status(self) -> RowStatus:
        """The row status finalize writes for this result."""
        return {
            Disposition.SENT: RowStatus.SENT,
            Disposition.FAILED: RowStatus.FAILED,
            Disposition.AMBIGUOUS: RowStatus.PROCESSING,
        }.get(self.disposition, RowStatus.READY)
