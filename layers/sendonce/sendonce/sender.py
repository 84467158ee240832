"""The sender: one SQS batch -> idempotency gate per record -> one claim -> concurrent sends -> one finalize.

Each record runs in its own thread through Powertools' `idempotent_function`, so the DynamoDB calls and the
Graph API sends of a batch overlap. The threads meet twice in a `_Rendezvous`: once every record has either
passed the idempotency gate or dropped out, one statement claims all their rows; once every claimed row has
its answer from Meta, one statement finalizes them all.
"""

from __future__ import annotations

import math
import threading
import time
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from functools import lru_cache
from typing import TYPE_CHECKING

from aws_lambda_powertools.utilities.batch import BatchProcessor, EventType, process_partial_response
from aws_lambda_powertools.utilities.data_classes.sqs_event import SQSRecord
from aws_lambda_powertools.utilities.idempotency import idempotent_function

from sendonce import graph_errors, repository, sqs, whatsapp
from sendonce.config import get_settings, send_queue_url
from sendonce.db import get_conn
from sendonce.errors import (
    BatchAbortedError,
    ConfigError,
    DatabaseError,
    EnqueueError,
    TransientSendError,
    UnknownRowError,
)
from sendonce.idempotency import IDEMPOTENCY_CONFIG, get_persistence_store
from sendonce.models import CampaignStatus, ClaimedRow, Disposition, QueueMessage, RowStatus, SendResult
from sendonce.observability import logger, tracer
from sendonce.phones import mask

if TYPE_CHECKING:
    from aws_lambda_powertools.utilities.typing import LambdaContext


def process_batch(event: dict, context: LambdaContext) -> dict:
    """Send one SQS batch and return the partial batch response (`batchItemFailures`).

    The caller registers the Lambda context with `IDEMPOTENCY_CONFIG` first.
    """
    records = event.get("Records") or []
    rendezvous = _Rendezvous([r["messageId"] for r in records])
    processor = BatchProcessor(event_type=EventType.SQS, raise_on_entire_batch_failure=False)
    # One thread per record: the rendezvous needs every record in flight at once.
    with ThreadPoolExecutor(max_workers=max(len(records), 1), thread_name_prefix="record") as pool:
        futures = {r["messageId"]: pool.submit(_process_record, SQSRecord(r), rendezvous) for r in records}
        response = process_partial_response(
            event=event,
            record_handler=lambda record: futures[record.message_id].result(),
            processor=processor,
            context=context,
        )
    rendezvous.log_summary()
    return response


def _process_record(record: SQSRecord, rendezvous: _Rendezvous) -> dict:
    """Parse, then pass the idempotency gate; always tell the rendezvous when this record is done."""
    try:
        message = QueueMessage.parse(record.body, fallback_enqueue_id=record.message_id)
        data = {
            "queue_id": message.queue_id,
            "campaign_id": message.campaign_id,
            "enqueue_id": message.enqueue_id,
            "message_id": record.message_id,
        }
        return _idempotent_send()(message=data, rendezvous=rendezvous)
    except Exception as exc:
        logger.warning("record failed", message_id=record.message_id, error=str(exc), error_type=type(exc).__name__)
        raise
    finally:
        rendezvous.leave(record.message_id)


@lru_cache(maxsize=1)
def _idempotent_send():
    """`_send` behind Powertools idempotency, built on first use (the store reads its table from settings)."""
    return idempotent_function(
        data_keyword_argument="message", config=IDEMPOTENCY_CONFIG, persistence_store=get_persistence_store()
    )(_send)


@tracer.capture_method(capture_response=False)
def _send(message: dict, rendezvous: _Rendezvous) -> dict:
    """Claim (with the batch), send, finalize (with the batch); raise to have the record retried."""
    queue_message = QueueMessage(message["queue_id"], message["campaign_id"], message["enqueue_id"])
    claim = rendezvous.arrive(message["message_id"], queue_message)
    if claim is None:
        raise UnknownRowError(f"no send_queue row {queue_message.queue_id} in campaign {queue_message.campaign_id}")
    if claim.row is None:
        return {"queue_id": queue_message.queue_id, "result": "skipped", "reason": _skip_reason(claim)}
    result = rendezvous.report(claim.row.id, _safe_send(claim.row, rendezvous))
    if result.disposition is Disposition.RETRY:
        raise TransientSendError(result.error or "transient error")
    return {"queue_id": queue_message.queue_id, "result": str(result.disposition), "wamid": result.wamid}


def _safe_send(row: ClaimedRow, rendezvous: _Rendezvous) -> SendResult:
    """Wait for the row's send slot, send, and classify; never raises, so the rendezvous always hears back."""
    settings = get_settings()
    if row.send_in > settings.max_slot_wait_seconds:
        # The shared schedule is booked further ahead than is worth waiting for inside one invocation.
        return SendResult(Disposition.DEFER, error="no send slot soon", delay=math.ceil(row.send_in))
    if rendezvous.halted.wait(timeout=max(rendezvous.claimed_at + row.send_in - time.monotonic(), 0)):
        return SendResult(Disposition.HALT, error="not sent: the batch halted on an earlier error")
    try:
        result = whatsapp.send_template(row)
    except Exception as exc:  # noqa: BLE001 - the row must be finalized whatever happened
        logger.exception("send raised", queue_id=row.id)
        return SendResult(Disposition.AMBIGUOUS, error=f"sender error: {type(exc).__name__}")
    if result.disposition is Disposition.HALT:
        rendezvous.halted.set()
    elif result.disposition is Disposition.DEFER:
        delay = graph_errors.defer_seconds(result.code, row.attempt, settings.throttle_base_seconds)
        result = SendResult(Disposition.DEFER, code=result.code, error=result.error, delay=delay)
    return result


def _skip_reason(claim: repository.ClaimOutcome) -> str:
    if claim.cancelled:
        return "cancelled (campaign cancelled or number suppressed)"
    if claim.status == RowStatus.READY:
        return f"campaign {claim.campaign_status}"
    if claim.wamid:
        return "already sent"
    return f"row is {claim.status}"


class _Rendezvous:
    """Where a batch's record threads meet for the one claim and the one finalize."""

    def __init__(self, message_ids: list[str]):
        self.token = uuid.uuid4()
        self._cond = threading.Condition()
        self._expected = set(message_ids)
        self._settled: set[str] = set()
        self._arrivals: dict[str, QueueMessage] = {}
        self._claims: dict[str, repository.ClaimOutcome | None] | None = None
        self._reports: dict[int, SendResult] = {}
        self._final: dict[int, SendResult] | None = None
        self._error: Exception | None = None
        self.counts: Counter[str] = Counter()
        # Set by the first halt code: sends still waiting for their slot are released untouched.
        self.halted = threading.Event()
        self.claimed_at = time.monotonic()

    def arrive(self, message_id: str, message: QueueMessage) -> repository.ClaimOutcome | None:
        """Join the claim; block until it ran and return this message's outcome (None: no such row)."""
        with self._cond:
            self._arrivals[message_id] = message
            self._settle(message_id)
            self._cond.wait_for(lambda: self._claims is not None or self._error is not None)
            if self._error is not None:
                raise BatchAbortedError(str(self._error)) from self._error
            return self._claims[message_id]

    def leave(self, message_id: str) -> None:
        """Called when a record's work ends, however it ends; a record that never arrived drops out here."""
        with self._cond:
            if message_id not in self._settled:
                self._settle(message_id)
                return
            claim = (self._claims or {}).get(message_id)
            if claim and claim.row and claim.row.id not in self._reports and self._final is None:
                self._record(claim.row.id, SendResult(Disposition.AMBIGUOUS, error="sender thread ended early"))

    def report(self, row_id: int, result: SendResult) -> SendResult:
        """Hand in a claimed row's send result; block until the batch is finalized and return it."""
        with self._cond:
            self._record(row_id, result)
            self._cond.wait_for(lambda: self._final is not None or self._error is not None)
            if self._final is None:
                raise BatchAbortedError(str(self._error)) from self._error
            return self._final[row_id]

    # The methods below run with the lock held. The database work is done under it too: by then every
    # other thread of the batch is waiting for exactly that result.

    def _settle(self, message_id: str) -> None:
        self._settled.add(message_id)
        if self._settled >= self._expected and self._claims is None:
            try:
                self._claims = self._claim()
            except DatabaseError as exc:
                self._error = exc
            if self._claims is not None and not self._claimed_ids():
                self._final = {}
            self._cond.notify_all()

    def _record(self, row_id: int, result: SendResult) -> None:
        self._reports[row_id] = result
        if set(self._reports) >= self._claimed_ids():
            try:
                self._finalize()
            except DatabaseError as exc:
                self._error = exc
            self._cond.notify_all()

    def _claimed_ids(self) -> set[int]:
        return {c.row.id for c in (self._claims or {}).values() if c and c.row}

    def _claim(self) -> dict[str, repository.ClaimOutcome | None]:
        if not self._arrivals:
            return {}
        outcomes = repository.claim_rows(
            get_conn(), self._arrivals.values(), self.token, get_settings().whatsapp_max_mps
        )
        self.claimed_at = time.monotonic()
        claims: dict[str, repository.ClaimOutcome | None] = {}
        owners: set[int] = set()
        for message_id, message in self._arrivals.items():
            outcome = outcomes.get(message.queue_id)
            if outcome and outcome.row and outcome.row.id in owners:
                # Two messages for one row in the same batch: only the first one sends it.
                outcome = repository.ClaimOutcome(outcome.queue_id, None, "processing", None, outcome.campaign_status, False)
            elif outcome and outcome.row:
                owners.add(outcome.row.id)
            claims[message_id] = outcome
            self._count_skip(outcome)
        return claims

    def _count_skip(self, outcome: repository.ClaimOutcome | None) -> None:
        if outcome is None:
            self.counts["unknown"] += 1
        elif outcome.row is None:
            self.counts["skipped"] += 1
            if outcome.wamid:
                logger.info(
                    f"Skipping already-sent message {outcome.queue_id} (WAMID: {outcome.wamid})",
                    queue_id=outcome.queue_id,
                )
            else:
                logger.info("skipping message", queue_id=outcome.queue_id, reason=_skip_reason(outcome))

    def _finalize(self) -> None:
        settings = get_settings()
        halts: dict[str, str] = {}
        rows = {c.row.id: c.row for c in self._claims.values() if c and c.row}
        for row_id, result in self._reports.items():
            if result.disposition is Disposition.HALT and result.code is not None:
                halts.setdefault(rows[row_id].campaign_id, f"Graph API error {result.code}: {result.error}")
        written = repository.finalize_rows(
            get_conn(),
            self.token,
            self._reports,
            halts,
            campaign_ids={row.campaign_id for row in rows.values()},
            error_window=settings.error_rate_window,
            error_threshold=settings.error_rate_threshold,
        )
        self._defer(rows)
        for row_id, result in self._reports.items():
            self.counts[str(result.disposition)] += 1
            if row_id not in written:
                logger.warning("row was reclaimed before finalize; result not written", queue_id=row_id)
            if result.disposition is not Disposition.SENT:
                logger.info(
                    "send not completed",
                    queue_id=row_id,
                    to=mask(rows[row_id].phone_number),
                    disposition=str(result.disposition),
                    code=result.code,
                    error=result.error,
                )
        for campaign_id, reason in halts.items():
            logger.warning("campaign paused", campaign_id=campaign_id, status=CampaignStatus.PAUSED, reason=reason)
        self._final = dict(self._reports)

    def _defer(self, rows: dict[int, ClaimedRow]) -> None:
        """Re-enqueue deferred rows as new messages with their delay, so throttling never uses up receives.

        The rows are `ready` by now; if SQS refuses, their records fail instead and SQS redelivers the
        original messages, which claim the rows again.
        """
        deferred = {row_id: r for row_id, r in self._reports.items() if r.disposition is Disposition.DEFER}
        if not deferred:
            return
        enqueue_id = uuid.uuid4().hex
        messages = [(QueueMessage(row_id, rows[row_id].campaign_id, enqueue_id), r.delay) for row_id, r in deferred.items()]
        try:
            sqs.send_delayed(send_queue_url(), messages)
        except (EnqueueError, ConfigError) as exc:
            logger.warning("could not re-enqueue deferred rows; their messages will be retried", error=str(exc))
            for row_id in deferred:
                self._reports[row_id] = SendResult(Disposition.RETRY, error=f"deferred, re-enqueue failed: {exc}")

    def log_summary(self) -> None:
        """The one line per batch the operators grep for."""
        c = self.counts
        logger.info(
            f"{c['sent']} sent, {c['failed']} failed, {c['skipped']} skipped (already sent)",
            sent=c["sent"],
            failed=c["failed"],
            skipped=c["skipped"],
            retried=c["retry"],
            ambiguous=c["ambiguous"],
            halted=c["halt"],
            deferred=c["defer"],
            unknown=c["unknown"],
            records=len(self._expected),
        )
