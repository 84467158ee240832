"""A local SQS event source mapping: batches, partial batch responses, visibility timeout, redrive.

It behaves like the Lambda poller: it receives up to `batch_size` messages, invokes the handler with an SQS
event, deletes the messages that did not fail, and leaves the failed ones to reappear after the queue's
visibility timeout. The receive count and the redrive to the DLQ after `maxReceiveCount` are the queue's
own (moto implements both).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from sendonce.local.lambda_runtime import LocalContext
from sendonce.sqs import get_sqs_client


@dataclass
class PollStats:
    """What the event source did."""

    invocations: int = 0
    records: int = 0
    failures: int = 0
    errors: int = 0


class SqsEventSource:
    """Feeds an SQS queue to a handler with `concurrency` workers, like a Lambda event source mapping."""

    def __init__(
        self,
        queue_url: str,
        handler: Callable[[dict, object], dict],
        function_name: str = "sender",
        batch_size: int = 10,
        concurrency: int = 2,
        function_timeout: float = 30.0,
        region: str = "us-east-1",
    ):
        self.queue_url = queue_url
        self.handler = handler
        self.function_name = function_name
        self.batch_size = batch_size
        self.concurrency = concurrency
        self.function_timeout = function_timeout
        self.queue_arn = get_sqs_client().get_queue_attributes(QueueUrl=queue_url, AttributeNames=["QueueArn"])[
            "Attributes"
        ]["QueueArn"]
        self.region = region
        self.stats = PollStats()
        self.before_delete: Callable[[], None] | None = None  # the local run's chaos kills a sender here
        self._lock = threading.Lock()

    def to_event(self, messages: list[dict]) -> dict:
        """The SQS event Lambda would build for these received messages."""
        return {
            "Records": [
                {
                    "messageId": m["MessageId"],
                    "receiptHandle": m["ReceiptHandle"],
                    "body": m["Body"],
                    "attributes": m.get("Attributes", {}),
                    "messageAttributes": m.get("MessageAttributes", {}),
                    "md5OfBody": m["MD5OfBody"],
                    "eventSource": "aws:sqs",
                    "eventSourceARN": self.queue_arn,
                    "awsRegion": self.region,
                }
                for m in messages
            ]
        }

    def poll_once(self, wait_seconds: int = 0) -> int:
        """Receive one batch and invoke the handler with it; return how many messages it held."""
        sqs = get_sqs_client()
        messages = sqs.receive_message(
            QueueUrl=self.queue_url,
            MaxNumberOfMessages=self.batch_size,
            WaitTimeSeconds=wait_seconds,
            AttributeNames=["All"],
            MessageAttributeNames=["All"],
        ).get("Messages", [])
        if messages:
            self.deliver(messages)
        return len(messages)

    def deliver(self, messages: list[dict]) -> None:
        """Invoke the handler with received messages, then delete those that did not fail."""
        sqs = get_sqs_client()
        event = self.to_event(messages)
        try:
            response = self.handler(event, LocalContext(self.function_name, self.function_timeout))
            failed = {f["itemIdentifier"] for f in (response or {}).get("batchItemFailures", [])}
        except Exception:  # noqa: BLE001 - a crashed invocation leaves the whole batch to the visibility timeout
            with self._lock:
                self.stats.invocations += 1
                self.stats.errors += 1
            return
        done = [m for m in messages if m["MessageId"] not in failed]
        if self.before_delete:
            self.before_delete()
        if done:
            sqs.delete_message_batch(
                QueueUrl=self.queue_url,
                Entries=[{"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]} for i, m in enumerate(done)],
            )
        with self._lock:
            self.stats.invocations += 1
            self.stats.records += len(messages)
            self.stats.failures += len(failed)

    def queue_depth(self) -> int:
        """Visible + in flight + delayed messages on this source's queue."""
        return queue_depth(self.queue_url)

    def run_until_empty(self, timeout: float = 120.0, on_batch: Callable[[int], None] | None = None) -> PollStats:
        """Run `concurrency` workers until the queue is empty (nothing visible, in flight or delayed)."""
        deadline = time.monotonic() + timeout
        stop = threading.Event()

        def worker() -> None:
            while not stop.is_set() and time.monotonic() < deadline:
                received = self.poll_once()
                if received and on_batch:
                    on_batch(received)
                if not received:
                    if self.queue_depth() == 0:
                        stop.set()
                    else:
                        time.sleep(0.2)

        threads = [threading.Thread(target=worker, name=f"esm-{i}", daemon=True) for i in range(self.concurrency)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        if not stop.is_set():
            raise TimeoutError(f"queue not empty after {timeout:.0f}s ({self.queue_depth()} messages left)")
        return self.stats


def queue_depth(queue_url: str) -> int:
    """Visible + in flight + delayed messages on a queue."""
    attributes = get_sqs_client().get_queue_attributes(QueueUrl=queue_url, AttributeNames=["All"])["Attributes"]
    return sum(
        int(attributes.get(name, 0))
        for name in (
            "ApproximateNumberOfMessages",
            "ApproximateNumberOfMessagesNotVisible",
            "ApproximateNumberOfMessagesDelayed",
        )
    )


def sqs_record(message_id: str, body: str, receipt_handle: str = "memory",
               queue_arn: str = "arn:aws:sqs:us-east-1:123456789012:send") -> dict:
    """One record of an SQS event, as Lambda builds it for a message received for the first time (the benchmarks
    hand messages to the sender without a queue)."""
    return {"messageId": message_id, "receiptHandle": receipt_handle, "body": body,
            "attributes": {"ApproximateReceiveCount": "1"}, "messageAttributes": {}, "md5OfBody": "",
            "eventSource": "aws:sqs", "eventSourceARN": queue_arn, "awsRegion": "us-east-1"}
