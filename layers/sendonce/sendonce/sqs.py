"""The SQS adapter: put send_queue rows on the send queue, many SendMessageBatch calls in flight."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from functools import lru_cache
from itertools import islice

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from sendonce.errors import EnqueueError
from sendonce.models import QueueMessage

BATCH = 10  # SendMessageBatch's limit
# boto3 costs ~2.5 ms of CPU per call: 32 in flight keeps a 50 ms SendMessageBatch round trip busy.
IN_FLIGHT = 32
ATTEMPTS = 4
# Retrying these cannot help: stop at once so the operator sees the cause.
FATAL_CODES = frozenset(
    {"AWS.SimpleQueueService.NonExistentQueue", "QueueDoesNotExist", "AccessDenied", "AccessDeniedException",
     "InvalidClientTokenId", "UnrecognizedClientException", "KMS.AccessDeniedException"}
)


@lru_cache(maxsize=1)
def get_sqs_client():
    """The SQS client (endpoint from AWS_ENDPOINT_URL_SQS / AWS_ENDPOINT_URL when set)."""
    return boto3.client(
        "sqs", config=Config(max_pool_connections=IN_FLIGHT + 4, retries={"max_attempts": 5, "mode": "standard"})
    )


def _chunks(items: Iterable[QueueMessage], size: int) -> Iterator[list[QueueMessage]]:
    iterator = iter(items)
    while chunk := list(islice(iterator, size)):
        yield chunk


def _send_chunk(queue_url: str, chunk: list[QueueMessage]) -> int:
    """Send up to 10 messages, retrying the entries SQS refused; raise `EnqueueError` if some never go."""
    pending = {str(i): m for i, m in enumerate(chunk)}
    problem = ""
    for attempt in range(ATTEMPTS):
        if attempt:
            time.sleep(0.2 * 2**attempt)
        try:
            answer = get_sqs_client().send_message_batch(
                QueueUrl=queue_url,
                Entries=[{"Id": key, "MessageBody": m.body()} for key, m in pending.items()],
            )
        except ClientError as exc:
            problem = exc.response.get("Error", {}).get("Code", str(exc))
            if problem in FATAL_CODES:
                break
            continue
        except BotoCoreError as exc:
            problem = str(exc)
            continue
        failed = {f["Id"]: f.get("Code", "") for f in answer.get("Failed", [])}
        pending = {key: m for key, m in pending.items() if key in failed}
        if not pending:
            return len(chunk)
        problem = ", ".join(sorted(set(failed.values())))
    raise EnqueueError(f"SQS did not take {len(pending)} messages: {problem}")


def send_messages(
    queue_url: str, messages: Iterable[QueueMessage], on_progress: Callable[[int], None] | None = None
) -> int:
    """Enqueue messages and return how many were sent.

    Several SendMessageBatch calls stay in flight at once and the input is consumed lazily, so a
    million-row campaign never sits in memory.

    Raises
    ------
    EnqueueError
        A batch could not be sent after retries; the error says how many went before it stopped.
    """
    sent = 0
    with ThreadPoolExecutor(max_workers=IN_FLIGHT, thread_name_prefix="enqueue") as pool:
        running: set[Future] = set()
        try:
            for chunk in _chunks(messages, BATCH):
                if len(running) >= IN_FLIGHT * 2:
                    done, running = wait(running, return_when=FIRST_COMPLETED)
                    sent += _collect(done, on_progress)
                running.add(pool.submit(_send_chunk, queue_url, chunk))
            sent += _collect(wait(running)[0], on_progress)
        except EnqueueError as exc:
            for future in running:
                future.cancel()
            raise EnqueueError(f"{exc} (about {sent} were enqueued before it stopped)") from exc
    return sent


def _collect(done: set[Future], on_progress: Callable[[int], None] | None) -> int:
    sent = sum(future.result() for future in done)
    if on_progress:
        on_progress(sent)
    return sent


def send_delayed(queue_url: str, messages: list[tuple[QueueMessage, int]]) -> None:
    """Send a few messages, each with its own delay (seconds, at most 900); raise `EnqueueError` on failure."""
    client = get_sqs_client()
    for start in range(0, len(messages), BATCH):
        chunk = messages[start : start + BATCH]
        try:
            answer = client.send_message_batch(
                QueueUrl=queue_url,
                Entries=[
                    {"Id": str(i), "MessageBody": m.body(), "DelaySeconds": min(max(delay, 0), 900)}
                    for i, (m, delay) in enumerate(chunk)
                ],
            )
        except (BotoCoreError, ClientError) as exc:
            raise EnqueueError(f"SQS refused delayed messages: {exc}") from exc
        if answer.get("Failed"):
            raise EnqueueError(f"SQS refused {len(answer['Failed'])} delayed messages")
