"""The sender: one SQS batch through six phases, each with one way to fail and one way to recover.

    phase     does                                               when it fails
 1  parse     each body -> QueueMessage                          that record fails alone (it ends in the DLQ)
 2  gate      an idempotency record per delivery, and the        that record is retried; a finished duplicate
              batch journal's "this claim may send" (DynamoDB,   gets the stored result back. No journal entry:
              all at once)                                       nothing is claimed, every record is retried
 3  claim     ONE statement claims the rows, reserves slots      the claim is released on a fresh connection
                                                                 (nothing was sent) and every record retried
 4  send      concurrent Graph requests at their slots           never raises: every row gets a SendResult
 5  finalize  ONE statement writes every result; deferred rows   retried on fresh connections until the claim's
              are re-enqueued inside the same transaction        window closes, then kept in the batch journal
                                                                 for reset_stuck, which writes them
 6  settle    each idempotency record completed or released     logged; the record expires with the invocation

Only phases 2, 4 and 6 use threads (one per record); the database work runs on the caller's thread. Time: a
claim is worked on only within its window (`STUCK_AFTER_SECONDS` from the claim, and the invocation's own
deadline), so reset_stuck can never take a row whose sender is still waiting for Meta; and nothing stands
between the claim and the sends, which keep to the slots the claim booked. docs/sender-protocol.md walks
through every failure point.
"""

from __future__ import annotations

import math
import threading
import time
import traceback
import uuid
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING

from aws_lambda_powertools.utilities.batch import BatchProcessor, EventType, process_partial_response
from aws_lambda_powertools.utilities.data_classes.sqs_event import SQSRecord

from sendonce import graph_errors, idempotency, journal, sqs, whatsapp
from sendonce.config import FINALIZE_SECONDS, JOURNAL_SECONDS, get_settings, send_queue_url
from sendonce.db import get_conn, transaction
from sendonce.errors import (
    BatchAbortedError,
    ConfigError,
    DatabaseError,
    EnqueueError,
    JournalError,
    TransientSendError,
    UnknownRowError,
)
from sendonce.models import ClaimedRow, Disposition, QueueMessage, RowStatus, SendResult
from sendonce.observability import count, logger, milliseconds, scrub
from sendonce.phones import mask
from sendonce.repository.sending import ClaimOutcome, RowResult, UnusedSlots, claim_rows, finalize_rows

if TYPE_CHECKING:
    from aws_lambda_powertools.utilities.typing import LambdaContext

Outcome = dict | Exception  # what a record came to: its result, or why it is retried
MIN_SLOT_LATENESS = 0.25  # a send may start this late (or one slot interval, if longer), and no later


def process_batch(event: dict, context: LambdaContext) -> dict:
    """Send one SQS batch and return the partial batch response (`batchItemFailures`)."""
    outcomes = _Batch(context).run([SQSRecord(r) for r in event.get("Records") or []])
    return process_partial_response(
        event=event,
        record_handler=lambda record: _settled(outcomes[record.message_id]),
        processor=BatchProcessor(event_type=EventType.SQS, raise_on_entire_batch_failure=False),
        context=context,
    )


def _settled(outcome: Outcome) -> dict:
    if isinstance(outcome, Exception):
        raise outcome
    return outcome


class _Batch:
    """One invocation's batch: the phases in order, and the deadlines that bound them."""

    def __init__(self, context: LambdaContext):
        self.settings = get_settings()
        self.token = uuid.uuid4()
        self.remaining_ms: Callable[[], int] = context.get_remaining_time_in_millis
        self.deadline = time.monotonic() + self.remaining_ms() / 1000
        self.halted = threading.Event()  # set by the first halt code: sends still waiting are not made
        self.counts: Counter[str] = Counter()
        self.outcomes: dict[str, Outcome] = {}
        self.requeued: set[str] = set()  # deliveries sent again for later: their idempotency records are released

    def run(self, records: list[SQSRecord]) -> dict[str, Outcome]:
        # Every line of this batch names its claim: the journal and reset_stuck speak of claims too.
        logger.append_keys(claim=str(self.token))
        try:
            messages = self._parse(records)
            with ThreadPoolExecutor(max_workers=len(records) + 1, thread_name_prefix="record") as pool:
                journal_entry = pool.submit(self._journal_begin)
                gated = self._gate(pool, messages)
                owners = self._owners(gated, journal_entry.result())
                claims = self._claim(owners)
                if claims is not None:
                    rows = {c.row.id: c.row for c in claims.values() if c and c.row}
                    results = self._send(pool, rows)
                    self._requeue(owners, claims)
                    self._finalize(rows, claims, results)
                    self._outcomes(owners, claims, results)
                self._settle(pool, gated)
            self._log_summary(len(records))
            self._add_metrics()
        finally:
            # The logger outlives the invocation (warm starts): the next batch has its own claim.
            logger.remove_keys(["claim"])
        return self.outcomes

    # 1. parse ---------------------------------------------------------------------------------------------

    def _parse(self, records: list[SQSRecord]) -> dict[str, QueueMessage]:
        messages = {}
        for record in records:
            try:
                messages[record.message_id] = QueueMessage.parse(record.body, fallback_enqueue_id=record.message_id)
            except Exception as exc:  # noqa: BLE001 - any body that is not the contract's fails alone
                self._fail(record.message_id, exc)
        return messages

    # 2. gate ----------------------------------------------------------------------------------------------

    def _gate(self, pool: ThreadPoolExecutor, messages: dict[str, QueueMessage]) -> dict[str, QueueMessage]:
        """Enter every delivery into the idempotency store; return those that go on."""
        remaining = self.remaining_ms()

        def enter(message: QueueMessage) -> dict | None | Exception:
            try:
                return idempotency.enter(message, remaining)
            except Exception as exc:  # noqa: BLE001 - in flight elsewhere, or the store failed: retried later
                return exc

        gated = {}
        for message_id, answer in zip(messages, pool.map(enter, messages.values())):
            if answer is None:
                gated[message_id] = messages[message_id]
            elif isinstance(answer, Exception):
                self._fail(message_id, answer, messages[message_id])
            else:
                self.counts["replayed"] += 1
                self.outcomes[message_id] = answer
        return gated

    def _journal_begin(self) -> JournalError | None:
        """Write the journal entry that lets this claim send (nothing is claimed without it)."""
        try:
            journal.begin(self.token)
        except JournalError as exc:
            logger.warning("batch journal unavailable; claiming nothing", error=scrub(exc))
            return exc
        return None

    def _owners(self, gated: dict[str, QueueMessage], journal_error: JournalError | None) -> dict[str, QueueMessage]:
        """The messages whose rows to claim: one per row (another for the same row is skipped), if any may send."""
        owners: dict[str, QueueMessage] = {}
        seen: set[int] = set()
        for message_id, message in gated.items():
            if journal_error:
                self._fail(message_id, journal_error, message)
            elif message.queue_id in seen:
                self._skip(message_id, message, "another message of this batch has the row")
            else:
                seen.add(message.queue_id)
                owners[message_id] = message
        return owners

    # 3. claim ---------------------------------------------------------------------------------------------

    def _claim(self, owners: dict[str, QueueMessage]) -> dict[str, ClaimOutcome | None] | None:
        """Claim every owner's row in one statement; None when the claim failed (it is released)."""
        # Measured before the statement, whose now() (claimed_at, and the base of the slots it returns) is later
        # by the request's one-way trip only: deadlines derived from it are on the safe side of reset_stuck's, and
        # sends keep to their slots however long the reply took (a lock wait, a busy process), instead of a whole
        # batch sliding into the next sender's slots.
        self.slots_from = claim_started = time.monotonic()
        self.hold_until = min(self.deadline, claim_started + self.settings.stuck_after_seconds)
        self.finalize_by = self.hold_until - JOURNAL_SECONDS
        self.send_by = self.finalize_by - FINALIZE_SECONDS - self.settings.whatsapp_timeout_seconds
        if not owners:
            return {}
        try:
            found = claim_rows(
                get_conn(), owners.values(), self.token, self.settings.whatsapp_max_mps,
                self.settings.max_slot_wait_seconds, self.settings.messaging_window_seconds,
            )
        except DatabaseError as exc:
            # The claim may have committed with its reply lost: release whatever this token holds. No send was
            # started, so nothing can be lost; if even the release fails, the journal keeps it for reset_stuck.
            logger.warning("claim failed; releasing it on a fresh connection", error=scrub(exc), rows=len(owners))
            unsent = SendResult(Disposition.RETRY, error=f"not sent: claim failed ({exc})", requested=False)
            released = [RowResult(m.queue_id, m.campaign_id, self.token, unsent) for m in owners.values()]
            if not self._write_until_deadline(released)[0]:
                self._keep_in_journal({r.row_id: unsent for r in released})
            for message_id, message in owners.items():
                self._fail(message_id, BatchAbortedError(f"claim failed: {exc}"), message)
            return None
        finally:
            milliseconds("ClaimLatency", (time.monotonic() - claim_started) * 1000)
        claims = {message_id: found.get(message.queue_id) for message_id, message in owners.items()}
        for message_id, claim in claims.items():
            message = owners[message_id]
            if claim is None:
                self._fail(message_id, UnknownRowError(f"no send_queue row {message.queue_id} in campaign "
                                                       f"{message.campaign_id}"), message)
            elif claim.waits_now:
                self._wait(message_id, message, claim)
            elif claim.row is None and claim.line_at is None:
                self._skip(message_id, message, _skip_reason(claim), claim.phone_number_id, already_sent=bool(claim.wamid))
        return claims

    def _requeue(self, owners: dict[str, QueueMessage], claims: dict[str, ClaimOutcome | None]) -> None:
        """Rows the full schedule had no slot for: their messages again, delayed until their place in line nears.

        They come back when their place is half a window away, before the rows behind them fill the window. A
        copy is the same delivery, later: it keeps the enqueue id (the row's current message stays current) and
        its place in line, and the idempotency record is released so that it passes the gate.
        """
        waiting = {i: c for i, c in claims.items() if c and c.row is None and c.line_at is not None}
        if not waiting:
            return
        half_window = self.settings.max_slot_wait_seconds / 2
        copies = [
            (QueueMessage(c.queue_id, owners[i].campaign_id, owners[i].enqueue_id, c.line_at),
             min(max(math.ceil(c.send_in - half_window), 1), 900))
            for i, c in waiting.items()
        ]
        try:
            sqs.send_delayed(send_queue_url(), copies)
        except (EnqueueError, ConfigError) as exc:
            for message_id in waiting:
                self._fail(message_id, TransientSendError(f"no send slot soon, and SQS refused the deferral: {exc}"),
                           owners[message_id])
            return
        for message_id, claim in waiting.items():
            self.counts["defer_no_slot"] += 1
            self.requeued.add(message_id)
            self.outcomes[message_id] = {"queue_id": claim.queue_id, "result": "deferred", "reason": "no send slot soon"}

    # 4. send ----------------------------------------------------------------------------------------------

    def _send(self, pool: ThreadPoolExecutor, rows: dict[int, ClaimedRow]) -> dict[int, SendResult]:
        return dict(zip(rows, pool.map(self._send_one, rows.values())))

    def _send_one(self, row: ClaimedRow) -> SendResult:
        """Wait for the row's slot, send, classify; never raises."""
        settings = self.settings
        slot_at = self.slots_from + row.send_in
        if slot_at > self.send_by:
            return SendResult(Disposition.RETRY, error="not sent: the claim's window was ending", requested=False)
        if self.halted.wait(timeout=max(slot_at - time.monotonic(), 0)):
            return SendResult(Disposition.HALT, error="not sent: the batch halted on an earlier error", requested=False)
        if time.monotonic() - slot_at > max(row.slot_seconds, MIN_SLOT_LATENESS):
            # This process ran late (a pause, a busy machine): sent now, it would take another sender's slot.
            return SendResult(Disposition.DEFER, error="not sent: its send slot had passed", delay=1, requested=False)
        started = time.monotonic()
        try:
            result = whatsapp.send_template(row)
        except Exception as exc:  # noqa: BLE001 - the request may have left: never resend blindly
            # The frames without the exception's text, which may quote the request (number, parameters).
            logger.error(
                "send raised", **_row_keys(row), error_type=type(exc).__name__,
                traceback="".join(traceback.format_tb(exc.__traceback__)),
            )
            return SendResult(Disposition.AMBIGUOUS, error=f"sender error: {type(exc).__name__}")
        finally:
            milliseconds("GraphLatency", (time.monotonic() - started) * 1000)
        if result.disposition is Disposition.HALT:
            self.halted.set()
        elif result.disposition is Disposition.DEFER:
            delay = graph_errors.defer_seconds(result.code, row.attempt, settings.throttle_base_seconds)
            result = SendResult(Disposition.DEFER, code=result.code, error=result.error, delay=delay)
        elif result.disposition is Disposition.WAIT:
            result = SendResult(Disposition.WAIT, code=result.code, error=result.error,
                                delay=graph_errors.wait_rule(result.code)[0])
        return result

    # 5. finalize ------------------------------------------------------------------------------------------

    def _finalize(
        self, rows: dict[int, ClaimedRow], claims: dict[str, ClaimOutcome | None], results: dict[int, SendResult]
    ) -> None:
        if not results:
            return
        enqueue_id = uuid.uuid4().hex  # the deferred rows' new messages
        row_results = [
            RowResult(row_id, rows[row_id].campaign_id, self.token, result,
                      enqueue_id if result.disposition is Disposition.DEFER else None)
            for row_id, result in results.items()
        ]
        started = time.monotonic()
        written, row_results = self._write_until_deadline(row_results, _unused_slots(claims, results))
        milliseconds("FinalizeLatency", (time.monotonic() - started) * 1000)
        # What was written is what the records answer: a deferral SQS refused became a retry of its message.
        results.update({r.row_id: r.result for r in row_results})
        if not written:
            self._keep_in_journal(results)

    def _keep_in_journal(self, results: dict[int, SendResult]) -> None:
        """PostgreSQL did not take the results within the claim's window: the journal keeps them for reset_stuck."""
        try:
            journal.record(self.token, results)
            logger.warning("results kept in the batch journal for reset_stuck", rows=len(results))
        except JournalError as exc:
            # Row ids, never WAMIDs: the sent rows' statuses come back through the webhook, whose callback
            # data names the row, and reset_stuck's policy settles the rest.
            logger.error(
                "results lost: neither PostgreSQL nor the batch journal took them",
                error=scrub(exc),
                sent_rows=sorted(row_id for row_id, r in results.items() if r.wamid),
                rows=sorted(results),
            )

    def _write_until_deadline(
        self, row_results: list[RowResult], unused: list[UnusedSlots] | None = None
    ) -> tuple[bool, list[RowResult]]:
        """Finalize, retried on fresh connections until `finalize_by` (safe: each write is token-guarded).

        Returns whether it was written, and the results as last tried.
        """
        pause = 0.05
        while True:
            try:
                self._write(row_results, unused or [])
                return True, row_results
            except (EnqueueError, ConfigError) as exc:
                logger.warning("deferred rows not re-enqueued; their messages are retried instead", error=scrub(exc))
                row_results = [_undeferred(r) for r in row_results]
            except DatabaseError as exc:
                if time.monotonic() + pause >= self.finalize_by:
                    logger.warning("finalize failed; the claim's window is closing", error=scrub(exc))
                    return False, row_results
                logger.warning("finalize failed; retrying on a fresh connection", error=scrub(exc))
                time.sleep(pause)
                pause = min(pause * 2, 1.0)

    def _write(self, row_results: list[RowResult], unused: list[UnusedSlots]) -> None:
        settings = self.settings
        conn = get_conn()
        deferred = [(QueueMessage(r.row_id, r.campaign_id, r.enqueue_id), r.result.delay)
                    for r in row_results if r.enqueue_id]
        if not deferred:
            finalize_rows(conn, row_results, settings.error_rate_window, settings.error_rate_threshold, unused)
            return
        # Released and re-enqueued atomically: a new message that arrives before the commit waits on the row
        # lock, then finds the row `ready`; if SQS refuses, nothing was released.
        with transaction(conn, "finalize failed"):
            finalize_rows(conn, row_results, settings.error_rate_window, settings.error_rate_threshold, unused)
            sqs.send_delayed(send_queue_url(), deferred)

    def _outcomes(
        self, owners: dict[str, QueueMessage], claims: dict[str, ClaimOutcome | None], results: dict[int, SendResult]
    ) -> None:
        for message_id, claim in claims.items():
            if claim is None or claim.row is None:
                continue
            result = results[claim.row.id]
            self.counts[str(result.disposition)] += 1
            if result.disposition is Disposition.DEFER:
                # Meta's throttling answers carry a code; a send slot that passed before the send does not.
                self.counts["defer_throttled" if result.code is not None else "defer_no_slot"] += 1
            if result.disposition is Disposition.RETRY:
                self.outcomes[message_id] = TransientSendError(result.error or "transient error")
            else:
                self.outcomes[message_id] = {
                    "queue_id": owners[message_id].queue_id, "result": str(result.disposition), "wamid": result.wamid
                }
            if result.disposition is not Disposition.SENT:
                logger.info(
                    "send not completed", **_row_keys(claim.row), to=mask(claim.row.phone_number),
                    disposition=str(result.disposition), code=result.code, error=scrub(result.error),
                )

    # 6. settle --------------------------------------------------------------------------------------------

    def _settle(self, pool: ThreadPoolExecutor, gated: dict[str, QueueMessage]) -> None:
        """Complete the idempotency record of every delivery that passed the gate, or release it for a retry."""

        def settle(item: tuple[str, QueueMessage]) -> None:
            message_id, message = item
            outcome = self.outcomes[message_id]
            try:
                if isinstance(outcome, Exception) or message_id in self.requeued:
                    idempotency.release(message, outcome)
                else:
                    idempotency.complete(message, outcome)
            except Exception as exc:  # noqa: BLE001 - the record expires with this invocation anyway
                logger.warning("idempotency record not settled", campaign_id=message.campaign_id,
                               queue_id=message.queue_id, error=scrub(exc))

        list(pool.map(settle, gated.items()))

    # outcomes ---------------------------------------------------------------------------------------------

    def _fail(self, message_id: str, exc: Exception, message: QueueMessage | None = None) -> None:
        """The record is retried (its message comes back), or fails alone when its body is unusable."""
        self.counts["unknown" if isinstance(exc, UnknownRowError) else "retried"] += 1
        # A body that did not parse names no row: the message id is all there is.
        keys = {"campaign_id": message.campaign_id, "queue_id": message.queue_id} if message else {}
        logger.warning("record failed", message_id=message_id, **keys, error=scrub(exc), error_type=type(exc).__name__)
        self.outcomes[message_id] = exc

    def _wait(self, message_id: str, message: QueueMessage, claim: ClaimOutcome) -> None:
        """No room in the messaging limit, or outside the send window: the row waits in the database (reset_stuck
        enqueues it when its wait is over), and this message is done."""
        self.counts["waiting_limit" if claim.wait_reason == "messaging limit" else "waiting_window"] += 1
        until = claim.wait_until.isoformat() if claim.wait_until else None
        logger.info("waiting", reason=claim.wait_reason, campaign_id=message.campaign_id, queue_id=message.queue_id,
                    phone_number_id=claim.phone_number_id, wait_until=until)
        self.outcomes[message_id] = {"queue_id": message.queue_id, "result": "waiting", "reason": claim.wait_reason,
                                     "wait_until": until}

    def _skip(
        self, message_id: str, message: QueueMessage, reason: str, phone_number_id: str = "", already_sent: bool = False
    ) -> None:
        """The row is not sent by this record: already sent, cancelled, paused, or another record's."""
        self.counts["skipped"] += 1
        if already_sent:
            self.counts["skipped_already_sent"] += 1
        # The row id, not its WAMID: the WAMID is in the row, and is not for the logs.
        logger.info(
            "Skipping already-sent message" if already_sent else "skipping message",
            campaign_id=message.campaign_id, queue_id=message.queue_id, phone_number_id=phone_number_id or None,
            reason=reason,
        )
        self.outcomes[message_id] = {"queue_id": message.queue_id, "result": "skipped", "reason": reason}

    def _log_summary(self, records: int) -> None:
        """The one line per batch the operators grep for."""
        c = self.counts
        logger.info(
            f"{c['sent']} sent, {c['failed']} failed, {c['skipped']} skipped (already sent)",
            sent=c["sent"], failed=c["failed"], skipped=c["skipped"], retried=c["retry"] + c["retried"],
            ambiguous=c["ambiguous"], halted=c["halt"], deferred=c["defer_throttled"] + c["defer_no_slot"],
            waiting=c["waiting_limit"] + c["waiting_window"] + c["wait"],
            unknown=c["unknown"], replayed=c["replayed"], records=records,
        )

    def _add_metrics(self) -> None:
        """The batch's counts, added once (Powertools flushes them at the end of the invocation)."""
        c = self.counts
        count("Sent", c["sent"])
        count("FailedPermanent", c["failed"])
        count("FailedHalt", c["halt"])
        count("Ambiguous", c["ambiguous"])
        count("SkippedAlreadySent", c["skipped_already_sent"])
        count("DeferredThrottle", c["defer_throttled"])
        count("DeferredNoSlot", c["defer_no_slot"])
        count("WaitingForMessagingLimit", c["waiting_limit"])
        count("WaitingNotNow", c["wait"])


def _row_keys(row: ClaimedRow) -> dict:
    """What names a row in a log line: never its number (masked separately) nor its parameters."""
    return {"campaign_id": row.campaign_id, "queue_id": row.id, "phone_number_id": row.phone_number_id}


def _skip_reason(claim: ClaimOutcome) -> str:
    if claim.cancelled:
        return "cancelled (campaign cancelled or number suppressed)"
    if claim.status == RowStatus.READY and claim.campaign_status == "running" and claim.wait_until:
        return f"waiting until {claim.wait_until.isoformat()} ({claim.wait_reason})"
    if claim.status == RowStatus.READY:
        return f"campaign {claim.campaign_status}"
    if claim.wamid:
        return "already sent"
    return f"row is {claim.status}"


def _undeferred(r: RowResult) -> RowResult:
    """A deferred row whose new message could not be sent: released for its current message's retry."""
    if r.result.disposition is not Disposition.DEFER:
        return r
    result = SendResult(Disposition.RETRY, code=r.result.code, error=r.result.error, requested=r.result.requested)
    return RowResult(r.row_id, r.campaign_id, r.claim_token, result)


def _unused_slots(claims: dict[str, ClaimOutcome | None], results: dict[int, SendResult]) -> list[UnusedSlots]:
    """Per phone number, the last slots of this claim whose rows never made their request.

    Only the unused end of the claim's slots can go back: a slot in the middle (a missed one) is followed by
    slots this claim used, and the next claim would book them a second time.
    """
    by_number: dict[str, list[ClaimOutcome]] = {}
    for claim in claims.values():
        if claim and claim.has_slot:
            by_number.setdefault(claim.phone_number_id, []).append(claim)
    unused = []
    for number, slotted in by_number.items():
        slotted.sort(key=lambda c: c.send_in)
        # A slotted row without `row` lost the race for it to another worker: its slot is unused too.
        tail = len(slotted) - next(
            (i for i in range(len(slotted), 0, -1) if slotted[i - 1].row and results[slotted[i - 1].row.id].requested),
            0,
        )
        if tail:
            unused.append(UnusedSlots(number, slotted[0].reserved_until, tail, slotted[0].mps))
    return unused
