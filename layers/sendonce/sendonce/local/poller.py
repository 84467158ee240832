"""Sender environments for the local run: each one a process polling the send queue, as Lambda's would.

A process of its own, so that a kill is a real crash: whatever the sender held in memory (a claim, WAMIDs Meta
returned, messages received but not deleted) is lost with it, and only what it wrote survives. With chaos on,
a seeded plan kills it at one of four points of a batch:

    before_claim    the messages were received; nothing written            -> SQS redelivers them
    after_claim     the rows are `processing`, no request made             -> reset_stuck (its journal entry)
    after_accept    Meta accepted a send; the results are not written      -> the status webhook, else reset_stuck
    before_delete   the results are written; the messages are not deleted  -> the redelivery finds the rows done

The parent starts a new process in its place (Lambda starts a new environment) and reads the point from the
exit status.
"""

from __future__ import annotations

import logging
import os
import random
import signal
import threading
from dataclasses import dataclass

KILL_POINTS = ("before_claim", "after_claim", "after_accept", "before_delete")
EXIT_BASE = 80  # exit status EXIT_BASE + 1 + index of the kill point
BATCH_WAIT_SECONDS = 1  # long poll: an idle environment costs a request a second


@dataclass(frozen=True)
class PollerSpec:
    """What one sender environment needs: its environment, its function's timeout, and its kill plan."""

    environ: dict[str, str]
    queue_url: str
    function_timeout: float
    kill_rate: float  # probability per batch that this batch dies (at a point chosen by the seed)
    seed: int


def killed_at(exitcode: int | None) -> str | None:
    """The kill point a poller's exit status names, if any."""
    if exitcode is not None and EXIT_BASE < exitcode <= EXIT_BASE + len(KILL_POINTS):
        return KILL_POINTS[exitcode - EXIT_BASE - 1]
    return None


class _KillPlan:
    """Per batch, whether and where to die; the hooks around the sender's steps consult it."""

    def __init__(self, rate: float, seed: int):
        self._random = random.Random(seed)
        self._rate = rate
        self.point: str | None = None

    def next_batch(self) -> None:
        self.point = self._random.choice(KILL_POINTS) if self._random.random() < self._rate else None

    def at(self, point: str) -> None:
        if self.point == point:
            os._exit(EXIT_BASE + 1 + KILL_POINTS.index(point))

    def install(self) -> None:
        """Wrap the sender's claim and the Graph adapter's send with the kill points around them."""
        from sendonce import sender, whatsapp
        from sendonce.models import Disposition

        claim_rows, send_template = sender.claim_rows, whatsapp.send_template

        def claim(*args, **kwargs):
            self.at("before_claim")
            found = claim_rows(*args, **kwargs)
            self.at("after_claim")
            return found

        def send(*args, **kwargs):
            result = send_template(*args, **kwargs)
            if result.disposition is Disposition.SENT:
                self.at("after_accept")
            return result

        sender.claim_rows, whatsapp.send_template = claim, send


def _at_least_once(handler, rate: float, seed: int, counts, queue_url: str):
    """The handler as SQS's at-least-once delivery feeds it: now and then a batch twice at once, or again later.

    A batch delivered twice at once runs in two invocations concurrently (as two environments would receive
    it); a late duplicate is the same messages sent to the queue again, delayed, with the same bodies (the
    same enqueue run), to arrive after the first delivery was done.
    """
    from sendonce.local.lambda_runtime import LocalContext
    from sendonce.sqs import get_sqs_client

    rng = random.Random(seed)

    def invoke(event: dict, context) -> dict:
        roll = rng.random()
        if roll < rate / 2:
            with counts.get_lock():
                counts[3] += 1
            second = threading.Thread(target=handler, args=(event, LocalContext("sender", context.timeout_seconds)))
            second.start()
            answer = handler(event, context)
            second.join()
            return answer
        answer = handler(event, context)
        if roll < rate:
            with counts.get_lock():
                counts[4] += 1
            get_sqs_client().send_message_batch(QueueUrl=queue_url, Entries=[
                {"Id": str(i), "MessageBody": r["body"], "DelaySeconds": rng.randint(1, 10)}
                for i, r in enumerate(event["Records"])
            ])
        return answer

    return invoke


def run(spec: PollerSpec, stop, counts) -> None:
    """Poll until `stop` (a multiprocessing Event) is set: the body of a sender environment's process.

    `counts` is a shared array the parent reads: [invocations, records, records failed, batches delivered
    twice at once, batches delivered again later].
    """
    # Ctrl-C reaches the whole process group: the parent decides when environments stop.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    os.environ.update(spec.environ)
    logging.disable(logging.WARNING)  # thousands of batches: the parent prints the progress

    from sendonce.local.event_source import SqsEventSource
    from sendonce.local.lambda_runtime import load_handler

    plan = _KillPlan(spec.kill_rate, spec.seed)
    handler = load_handler("sender")
    if spec.kill_rate:
        plan.install()
        handler = _at_least_once(handler, spec.kill_rate, spec.seed, counts, spec.queue_url)
    source = SqsEventSource(spec.queue_url, handler, function_timeout=spec.function_timeout)
    source.before_delete = lambda: plan.at("before_delete")
    while not stop.is_set():
        plan.next_batch()
        before = source.stats.failures
        if received := source.poll_once(wait_seconds=BATCH_WAIT_SECONDS):
            with counts.get_lock():
                counts[0] += 1
                counts[1] += received
                counts[2] += source.stats.failures - before
