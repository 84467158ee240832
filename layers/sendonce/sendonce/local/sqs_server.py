"""A local SQS server whose every operation costs the same at any queue depth.

`sendonce local run` needs a queue that tens of thousands of messages go through, reachable from several
processes (sender pollers use boto3 with AWS_ENDPOINT_URL_SQS / AWS_ENDPOINT_URL pointing at it). moto's
server recomputes the queue's attributes, scanning every message, on each send and receive, so its cost
grows with the queue's depth; this one keeps, per queue, a heap of the messages available now (ordered by
arrival, as moto and, loosely, SQS hand them out), a heap of those that become available later (delayed or
in flight, by due time), a heap by sent time for the retention period, and counters, so that every operation
is O(log n) in the depth. Heaps are cleaned lazily: an entry whose message has since changed state is
recognised by a version number and skipped, and a heap is rebuilt once most of it is such entries.

It speaks the SQS JSON protocol that botocore uses (POST /, `X-Amz-Target: AmazonSQS.<Operation>`) and
answers errors the way AWS does for this query-compatible service: `{"__type": "com.amazonaws.sqs#<Shape>",
"message": ...}` plus an `x-amzn-query-error: <code>;Sender` header, so that boto3 raises the modelled
exception class (`client.exceptions.QueueDoesNotExist`) with the error code AWS gives
(`AWS.SimpleQueueService.NonExistentQueue`).

Semantics follow AWS and moto (the suite runs the same scenarios against both, tests/integration/
test_local_sqs.py):

- Standard queues only (FIFO queues are refused with a clear error).
- DelaySeconds (queue default or per message, 0..900), VisibilityTimeout (queue default or per receive,
  0..43200), a new receipt handle per receive, ApproximateReceiveCount incremented per receive,
  ApproximateFirstReceiveTimestamp, SentTimestamp, SenderId, message attributes with their MD5.
- Redrive, as moto does it: when a receive comes upon a message that is available again and has already
  been received maxReceiveCount times, the message is moved to the dead-letter queue instead of being
  received (so it is received exactly maxReceiveCount times from the source queue). It keeps its receive
  count, sent timestamp and message id; its next receive, from the DLQ, shows maxReceiveCount + 1.
- Receipt handles, as moto does it: DeleteMessage and ChangeMessageVisibility accept any receipt handle
  the message was ever given, not only the latest (a stale handle, from before the message was received
  again, still deletes it); deleting a message that is already deleted succeeds and does nothing; a handle
  this queue never gave is ReceiptHandleIsInvalid. AWS documents that only the latest handle deletes
  ("the request succeeds, but the message will not be deleted"); moto, which the suite has always run on,
  deletes, and code that is correct on one is correct on the other.
- Long polling (WaitTimeSeconds, or the queue's ReceiveMessageWaitTimeSeconds) returns as soon as any
  message is available, without polling: a Condition per queue is notified on every send and visibility
  change, and a waiter sleeps at most until the next delayed or in-flight message becomes available.

Deliberate differences from moto, each towards what AWS does:

- Messages past MessageRetentionPeriod are deleted (moto keeps them in the queue, invisible, forever).
- Attribute values are validated as AWS does (InvalidAttributeValue, InvalidAttributeName for unknown
  names; moto accepts unknown names and answers a malformed number with a 500); CreatedTimestamp and
  LastModifiedTimestamp are whole seconds, RedrivePolicy is returned as compact JSON.
- A RedrivePolicy naming a queue that does not exist is InvalidParameterValue (moto answers
  AWS.SimpleQueueService.NonExistentQueue).
- DeleteMessageBatch and ChangeMessageVisibilityBatch refuse more than 10 entries and repeated entry ids
  (moto refuses neither; for DeleteMessageBatch it refuses a repeated receipt handle, and so does this).
- A message body with characters outside the XML set SQS allows is InvalidMessageContents; a message moved
  to a DLQ carries the DeadLetterQueueSourceArn system attribute; a negative DelaySeconds or
  VisibilityTimeout is InvalidParameterValue.
"""

from __future__ import annotations

import base64
import hashlib
import heapq
import itertools
import json
import re
import secrets
import struct
import threading
import uuid
from collections.abc import Callable
from typing import Any

from sendonce.local.http_server import ACCOUNT_ID, REGION, AwsJsonServer, serve_until_stdin_closes

SENDER_ID = "AIDAIT2UOQQY3AUEKVGXU"  # what moto gives: a user id shaped like AWS's

MAX_BATCH_ENTRIES = 10
MAX_DELAY_SECONDS = 900
MAX_VISIBILITY_TIMEOUT = 43200
MAX_WAIT_SECONDS = 20
MAX_MESSAGE_SIZE = 1_048_576
MAX_RECEIVE = 10

_QUEUE_NAME = re.compile(r"^[A-Za-z0-9_-]{1,80}$")
_BATCH_ENTRY_ID = re.compile(r"^[A-Za-z0-9_-]{1,80}$")
# The characters SQS accepts in a body or string attribute (XML 1.0's): anything else is refused.
_INVALID_CHARACTER = re.compile("[^\x09\x0a\x0d\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")

# The query-protocol error codes of AWS's model (its awsQueryError trait, which botocore's copy of the model
# leaves out); an error shape not listed has its own name as code.
_QUERY_ERROR_CODES = {
    "BatchEntryIdsNotDistinct": "AWS.SimpleQueueService.BatchEntryIdsNotDistinct",
    "BatchRequestTooLong": "AWS.SimpleQueueService.BatchRequestTooLong",
    "EmptyBatchRequest": "AWS.SimpleQueueService.EmptyBatchRequest",
    "InvalidBatchEntryId": "AWS.SimpleQueueService.InvalidBatchEntryId",
    "MessageNotInflight": "AWS.SimpleQueueService.MessageNotInflight",
    "PurgeQueueInProgress": "AWS.SimpleQueueService.PurgeQueueInProgress",
    "QueueDeletedRecently": "AWS.SimpleQueueService.QueueDeletedRecently",
    "QueueDoesNotExist": "AWS.SimpleQueueService.NonExistentQueue",
    "QueueNameExists": "QueueAlreadyExists",
    "TooManyEntriesInBatchRequest": "AWS.SimpleQueueService.TooManyEntriesInBatchRequest",
    "UnsupportedOperation": "AWS.SimpleQueueService.UnsupportedOperation",
}

# Queue attributes: those CreateQueue / SetQueueAttributes take, and the integer ones with their AWS ranges.
_INTEGER_ATTRIBUTES = {
    "DelaySeconds": (0, MAX_DELAY_SECONDS),
    "MaximumMessageSize": (1024, MAX_MESSAGE_SIZE),
    "MessageRetentionPeriod": (60, 1_209_600),
    "ReceiveMessageWaitTimeSeconds": (0, MAX_WAIT_SECONDS),
    "VisibilityTimeout": (0, MAX_VISIBILITY_TIMEOUT),
}
_OPAQUE_ATTRIBUTES = {"Policy", "RedriveAllowPolicy", "KmsMasterKeyId", "KmsDataKeyReusePeriodSeconds"}
_SETTABLE_ATTRIBUTES = {*_INTEGER_ATTRIBUTES, *_OPAQUE_ATTRIBUTES, "RedrivePolicy", "SqsManagedSseEnabled"}
_FIFO_ATTRIBUTES = {"FifoQueue", "ContentBasedDeduplication", "DeduplicationScope", "FifoThroughputLimit"}
_READABLE_ATTRIBUTES = {
    *_SETTABLE_ATTRIBUTES,
    *_FIFO_ATTRIBUTES,
    "ApproximateNumberOfMessages",
    "ApproximateNumberOfMessagesDelayed",
    "ApproximateNumberOfMessagesNotVisible",
    "CreatedTimestamp",
    "LastModifiedTimestamp",
    "QueueArn",
}
_SYSTEM_ATTRIBUTES = (
    "SenderId",
    "SentTimestamp",
    "ApproximateReceiveCount",
    "ApproximateFirstReceiveTimestamp",
    "AWSTraceHeader",
    "DeadLetterQueueSourceArn",
)

_READY, _DELAYED, _IN_FLIGHT = "ready", "delayed", "in flight"
# A heap is rebuilt when its stale entries outnumber its live ones by this much: amortised O(1) per entry.
_COMPACT_SLACK = 1024


class SqsError(Exception):
    """An error answered to the client: the error shape's name, a message, and the HTTP status."""

    def __init__(self, shape: str, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.shape = shape
        self.message = message
        self.status = status

    @property
    def query_code(self) -> str:
        """The code boto3 shows as `Error.Code` (what the query protocol called this error)."""
        return _QUERY_ERROR_CODES.get(self.shape, self.shape)


def _queue_does_not_exist() -> SqsError:
    return SqsError("QueueDoesNotExist", "The specified queue does not exist.")


def _invalid_parameter(message: str) -> SqsError:
    return SqsError("InvalidParameterValue", message)


def _md5(data: bytes) -> str:
    return hashlib.md5(data, usedforsecurity=False).hexdigest()


def _md5_of_attributes(attributes: dict[str, dict]) -> str:
    """The MD5 SQS gives for message attributes: per name in order, length-prefixed name, type and value."""
    digest = hashlib.md5(usedforsecurity=False)

    def put(data: bytes) -> None:
        digest.update(struct.pack("!I", len(data)))
        digest.update(data)

    for name in sorted(attributes):
        value = attributes[name]
        put(name.encode())
        put(value["DataType"].encode())
        if "StringValue" in value:
            digest.update(b"\x01")
            put(value["StringValue"].encode())
        else:
            digest.update(b"\x02")
            put(base64.b64decode(value["BinaryValue"]))
    return digest.hexdigest()


def _validate_attributes(attributes: Any, kind: str = "message") -> dict[str, dict]:
    if attributes is None:
        return {}
    if not isinstance(attributes, dict):
        raise _invalid_parameter(f"The {kind} attributes must be a map.")
    for name, value in attributes.items():
        if not isinstance(value, dict) or not value.get("DataType"):
            raise _invalid_parameter(
                f"The message attribute '{name}' must contain non-empty message attribute type."
            )
        data_type = value["DataType"]
        base = data_type.split(".", 1)[0]
        if base not in ("String", "Number", "Binary"):
            raise _invalid_parameter(
                f"The message attribute '{name}' has an invalid message attribute type, the set of supported type "
                "prefixes is Binary, Number, and String."
            )
        field = "BinaryValue" if base == "Binary" else "StringValue"
        if not value.get(field):
            raise _invalid_parameter(
                f"The message attribute '{name}' must contain non-empty message attribute value for message "
                f"attribute type '{data_type}'."
            )
        if field == "BinaryValue":
            try:
                base64.b64decode(value[field], validate=True)
            except (ValueError, TypeError):
                raise _invalid_parameter(
                    f"The message attribute '{name}' has an invalid binary value."
                ) from None
    return {
        name: {k: v for k, v in value.items() if k in ("DataType", "StringValue", "BinaryValue")}
        for name, value in attributes.items()
    }


def _integer(value: Any, name: str, low: int, high: int) -> int:
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise _invalid_parameter(
            f"Value {value} for parameter {name} is invalid. Reason: must be an integer."
        ) from None
    if not low <= number <= high:
        raise _invalid_parameter(
            f"Value {value} for parameter {name} is invalid. Reason: must be between {low} and {high}."
        )
    return number


def _check_body(body: Any, max_size: int) -> str:
    """The body if SQS would take it, else the error SQS gives (as SqsError)."""
    if not isinstance(body, str) or not body:
        raise SqsError("MissingParameter", "The request must contain the parameter MessageBody.")
    bad = _INVALID_CHARACTER.search(body)
    if bad:
        raise SqsError(
            "InvalidMessageContents",
            f"Invalid binary character '#x{ord(bad.group()):X}' was found in the message body, the set of allowed "
            "characters is #x9 | #xA | #xD | #x20 to #xD7FF | #xE000 to #xFFFD | #x10000 to #x10FFFF",
        )
    if len(body.encode()) > max_size:
        raise _invalid_parameter(
            f"One or more parameters are invalid. Reason: Message must be shorter than {max_size} bytes."
        )
    return body


class _Message:
    """One message and where it stands in its queue."""

    __slots__ = (
        "attributes",
        "body",
        "dlq_source",
        "due",
        "first_receive_ms",
        "handles",
        "id",
        "md5",
        "queue",
        "receive_count",
        "received_at",
        "sent_at",
        "sent_ms",
        "seq",
        "state",
        "system_attributes",
        "version",
    )

    def __init__(self, body: str, attributes: dict, system_attributes: dict, now: float) -> None:
        self.id = str(uuid.uuid4())
        self.body = body
        self.md5 = _md5(body.encode())
        self.attributes = attributes
        self.system_attributes = system_attributes
        self.sent_at = now
        self.sent_ms = int(now * 1000)
        self.first_receive_ms: int | None = None
        self.receive_count = 0
        self.received_at = now
        self.handles: list[str] = []
        self.queue: _Queue | None = None
        self.seq = 0
        self.state = _READY
        self.version = 0
        self.due = 0.0
        self.dlq_source: str | None = None


class _Queue:
    """A standard queue. Every method runs under the server's lock."""

    def __init__(self, name: str, arn: str, url: str, lock: threading.Lock, now: float) -> None:
        self.name = name
        self.arn = arn
        self.url = url
        self.created = int(now)
        self.last_modified = int(now)
        self.attributes: dict[str, Any] = {
            "DelaySeconds": 0,
            "MaximumMessageSize": MAX_MESSAGE_SIZE,
            "MessageRetentionPeriod": 345_600,
            "ReceiveMessageWaitTimeSeconds": 0,
            "VisibilityTimeout": 30,
            "SqsManagedSseEnabled": "true",
        }
        self.redrive: dict[str, Any] | None = None
        self.messages: dict[str, _Message] = {}
        self.handles: dict[str, _Message] = {}  # every receipt handle a message here was ever given
        self.deleted_handles: set[str] = set()  # those of deleted messages: deleting again is a no-op
        self.ready: list[tuple[int, int, _Message]] = []  # (seq, version, message): available now
        self.timed: list[tuple[float, int, int, _Message]] = []  # (due, seq, version, message): later
        self.expiry: list[tuple[float, int, _Message]] = []  # (sent_at, seq, message): for retention
        self.counts = {_READY: 0, _DELAYED: 0, _IN_FLIGHT: 0}
        self.sequence = itertools.count(1)
        self.changed = threading.Condition(lock)  # notified whenever a message may have become receivable
        self.deleted = False

    # --- state transitions ---------------------------------------------------------------------------

    def add(self, message: _Message, delay: float, now: float) -> None:
        message.queue = self
        message.seq = next(self.sequence)
        self.messages[message.id] = message
        for handle in message.handles:
            self.handles[handle] = message
        heapq.heappush(self.expiry, (message.sent_at, message.seq, message))
        if delay > 0:
            self._set_later(message, _DELAYED, now + delay)
        else:
            self._set_ready(message)
        self.changed.notify_all()

    def remove(self, message: _Message, tombstone: bool) -> None:
        """Take a message out; `tombstone`: its receipt handles stay valid for a (no-op) delete."""
        self._leave_state(message)
        del self.messages[message.id]
        message.queue = None
        for handle in message.handles:
            self.handles.pop(handle, None)
        if tombstone:
            self.deleted_handles.update(message.handles)

    def purge(self) -> None:
        """Drop every message at once (O(1)): the containers are replaced, so nothing reaches them again; as
        in moto, their receipt handles become invalid (not tombstoned)."""
        self.messages, self.handles = {}, {}
        self.ready, self.timed, self.expiry = [], [], []
        self.counts = {_READY: 0, _DELAYED: 0, _IN_FLIGHT: 0}

    def make_later(self, message: _Message, state: str, due: float) -> None:
        self._leave_state(message)
        self._set_later(message, state, due)
        self.changed.notify_all()  # waiters recompute how long to sleep

    def make_ready(self, message: _Message) -> None:
        self._leave_state(message)
        self._set_ready(message)
        self.changed.notify_all()

    def _set_ready(self, message: _Message) -> None:
        message.state = _READY
        message.version += 1
        self.counts[_READY] += 1
        heapq.heappush(self.ready, (message.seq, message.version, message))

    def _set_later(self, message: _Message, state: str, due: float) -> None:
        message.state = state
        message.version += 1
        message.due = due
        self.counts[state] += 1
        heapq.heappush(self.timed, (due, message.seq, message.version, message))

    def _leave_state(self, message: _Message) -> None:
        self.counts[message.state] -= 1
        message.version += 1  # whatever heap entry the message had is stale from now on
        self._compact()  # every stale entry is made here, so this is where the heaps are kept small

    def _live(self, message: _Message, version: int) -> bool:
        return message.queue is self and message.version == version

    def _compact(self) -> None:
        # Each heap is filtered (not rebuilt from all messages) once its stale entries outnumber its live
        # ones: the work is then at most twice the stale entries dropped, O(1) amortised per operation.
        if len(self.ready) > 2 * self.counts[_READY] + _COMPACT_SLACK:
            self.ready = [entry for entry in self.ready if self._live(entry[2], entry[1])]
            heapq.heapify(self.ready)
        if len(self.timed) > 2 * (self.counts[_DELAYED] + self.counts[_IN_FLIGHT]) + _COMPACT_SLACK:
            self.timed = [entry for entry in self.timed if self._live(entry[3], entry[2])]
            heapq.heapify(self.timed)
        if len(self.expiry) > 2 * len(self.messages) + _COMPACT_SLACK:
            self.expiry = [
                entry for entry in self.expiry if entry[2].queue is self and entry[2].seq == entry[1]
            ]
            heapq.heapify(self.expiry)

    # --- time ----------------------------------------------------------------------------------------

    def advance(self, now: float) -> None:
        """Make available what is due, and drop what is past the retention period."""
        # self.timed and self.expiry are read afresh on each turn: _leave_state() may filter them anew.
        while self.timed and self.timed[0][0] <= now:
            _due, _seq, version, message = heapq.heappop(self.timed)
            if self._live(message, version):
                self._leave_state(message)
                self._set_ready(message)
        retention = self.attributes["MessageRetentionPeriod"]
        while self.expiry and self.expiry[0][0] + retention <= now:
            _sent, seq, message = heapq.heappop(self.expiry)
            if message.queue is self and message.seq == seq:
                self.remove(message, tombstone=True)

    def next_due(self) -> float | None:
        """When the next delayed or in-flight message becomes available (None: there is none)."""
        timed = self.timed
        while timed and not self._live(timed[0][3], timed[0][2]):
            heapq.heappop(timed)
        return timed[0][0] if timed else None

    def pop_ready(self) -> _Message | None:
        ready = self.ready
        while ready:
            _seq, version, message = heapq.heappop(ready)
            if self._live(message, version):
                return message
        return None

    # --- attributes ----------------------------------------------------------------------------------

    def attribute_values(self) -> dict[str, str]:
        values = {
            "ApproximateNumberOfMessages": str(self.counts[_READY]),
            "ApproximateNumberOfMessagesDelayed": str(self.counts[_DELAYED]),
            "ApproximateNumberOfMessagesNotVisible": str(self.counts[_IN_FLIGHT]),
            "CreatedTimestamp": str(self.created),
            "LastModifiedTimestamp": str(self.last_modified),
            "QueueArn": self.arn,
        }
        values.update({name: str(value) for name, value in self.attributes.items()})
        if self.redrive is not None:
            values["RedrivePolicy"] = json.dumps(self.redrive, separators=(",", ":"))
        return values


class LocalSqsServer(AwsJsonServer):
    """SQS on loopback over the JSON protocol, O(log n) per operation in the queue's depth.

    Parameters
    ----------
    account_id, region
        What queue URLs and ARNs name.
    clock
        Seconds since the epoch; `time.time` unless a test drives time itself (long polls still sleep in
        real time).

    Examples
    --------
    >>> with LocalSqsServer() as sqs:                                       # doctest: +SKIP
    ...     client = boto3.client("sqs", endpoint_url=sqs.url, region_name="us-east-1")
    """

    def __init__(
        self, account_id: str = ACCOUNT_ID, region: str = REGION, clock: Callable[[], float] | None = None
    ) -> None:
        super().__init__(account_id, region, clock)
        self._queues: dict[str, _Queue] = {}
        self._queues_by_arn: dict[str, _Queue] = {}
        self._stopping = False
        self._operations: dict[str, Callable[[dict], dict]] = {
            "CreateQueue": self._create_queue,
            "GetQueueUrl": self._get_queue_url,
            "ListQueues": self._list_queues,
            "DeleteQueue": self._delete_queue,
            "GetQueueAttributes": self._get_queue_attributes,
            "SetQueueAttributes": self._set_queue_attributes,
            "SendMessage": self._send_message,
            "SendMessageBatch": self._send_message_batch,
            "ReceiveMessage": self._receive_message,
            "DeleteMessage": self._delete_message,
            "DeleteMessageBatch": self._delete_message_batch,
            "ChangeMessageVisibility": self._change_message_visibility,
            "ChangeMessageVisibilityBatch": self._change_message_visibility_batch,
            "PurgeQueue": self._purge_queue,
        }

    # --- lifecycle -----------------------------------------------------------------------------------

    target_prefix = "AmazonSQS."

    def stop(self) -> None:
        """Stop serving: long polls in progress return at once, open connections are closed."""
        with self._lock:
            self._stopping = True
            for queue in self._queues.values():
                queue.changed.notify_all()
        super().stop()

    def error_answer(self, exc: Exception) -> tuple[int, dict, dict[str, str]]:
        """An `SqsError` as AWS answers it (boto3 reads the query protocol's code from a header); else a 500."""
        if isinstance(exc, SqsError):
            body = {"__type": f"com.amazonaws.sqs#{exc.shape}", "message": exc.message}
            return exc.status, body, {"x-amzn-query-error": f"{exc.query_code};Sender"}
        return 500, {"__type": "com.amazonaws.sqs#InternalFailure", "message": f"{type(exc).__name__}: {exc}"}, {}

    def refused_target(self) -> Exception:
        return SqsError(
            "UnsupportedOperation",
            "LocalSqsServer speaks only the SQS JSON protocol (X-Amz-Target: AmazonSQS.<Operation>).",
        )

    def refused_json(self) -> Exception:
        return SqsError("InvalidParameterValue", "The request body is not valid JSON.")

    def queue_url(self, name: str) -> str:
        """The URL of queue `name` (whether or not it exists)."""
        return f"{self.url}/{self.account_id}/{name}"

    # --- dispatch ------------------------------------------------------------------------------------

    def handle(self, operation: str, params: dict) -> dict:
        """Run one operation on its JSON parameters and return its JSON result.

        Raises
        ------
        SqsError
            What the client is answered when the request is refused.
        """
        method = self._operations.get(operation)
        if method is None:
            raise SqsError(
                "UnsupportedOperation", f"LocalSqsServer does not implement {operation or '(none)'}."
            )
        if not isinstance(params, dict):
            raise _invalid_parameter("The request body must be a JSON object.")
        return method(params)

    def _queue(self, params: dict) -> _Queue:
        """The queue a request names by QueueUrl (or by bare name, as AWS allows); call under the lock."""
        url = params.get("QueueUrl")
        if not isinstance(url, str) or not url:
            raise SqsError("MissingParameter", "The request must contain the parameter QueueUrl.")
        queue = self._queues.get(url.rstrip("/").rsplit("/", 1)[-1])
        if queue is None:
            raise _queue_does_not_exist()
        return queue

    # --- queues --------------------------------------------------------------------------------------

    def _parse_attributes(self, attributes: Any, creating: bool) -> tuple[dict[str, Any], Any]:
        """Validated queue attributes, and the redrive policy (`...` when not given, None to remove it)."""
        if attributes is None:
            attributes = {}
        if not isinstance(attributes, dict):
            raise _invalid_parameter("Attributes must be a map.")
        values: dict[str, Any] = {}
        redrive: Any = ...
        for name, value in attributes.items():
            if name == "FifoQueue" and creating and str(value).lower() == "false":
                continue
            if name in _FIFO_ATTRIBUTES:
                raise SqsError(
                    "InvalidAttributeName", f"Unknown Attribute {name}. (LocalSqsServer has no FIFO queues)"
                )
            if name not in _SETTABLE_ATTRIBUTES:
                raise SqsError("InvalidAttributeName", f"Unknown Attribute {name}.")
            if name in _INTEGER_ATTRIBUTES:
                low, high = _INTEGER_ATTRIBUTES[name]
                try:
                    number = int(value)
                except (TypeError, ValueError):
                    number = None
                if number is None or not low <= number <= high:
                    raise SqsError("InvalidAttributeValue", f"Invalid value for the parameter {name}.")
                values[name] = number
            elif name == "RedrivePolicy":
                redrive = self._parse_redrive(value)
            elif name == "SqsManagedSseEnabled":
                values[name] = str(value).lower()
            else:
                values[name] = str(value)
        return values, redrive

    def _parse_redrive(self, value: Any) -> dict[str, Any] | None:
        if value in ("", None, {}):
            return None
        try:
            policy = json.loads(value) if isinstance(value, str) else dict(value)
        except (TypeError, ValueError):
            policy = None
        invalid = f"Value {value} for parameter RedrivePolicy is invalid. Reason: "
        if not isinstance(policy, dict):
            raise _invalid_parameter(invalid + "Redrive policy is not a dict or valid json.")
        if not policy:
            return None
        target = policy.get("deadLetterTargetArn")
        if not isinstance(target, str) or not target:
            raise _invalid_parameter(invalid + "Redrive policy does not contain deadLetterTargetArn.")
        try:
            max_receive = int(policy.get("maxReceiveCount"))
        except (TypeError, ValueError):
            raise _invalid_parameter(invalid + "Redrive policy does not contain maxReceiveCount.") from None
        if not 1 <= max_receive <= 1000:
            raise _invalid_parameter(
                invalid + "Invalid value for maxReceiveCount: must be between 1 and 1000."
            )
        if target not in self._queues_by_arn:
            raise _invalid_parameter(invalid + "Dead letter target does not exist.")
        return {"deadLetterTargetArn": target, "maxReceiveCount": max_receive}

    def _create_queue(self, params: dict) -> dict:
        name = params.get("QueueName")
        if not isinstance(name, str) or not name:
            raise SqsError("MissingParameter", "The request must contain the parameter QueueName.")
        if name.endswith(".fifo"):
            raise _invalid_parameter("LocalSqsServer has no FIFO queues.")
        if not _QUEUE_NAME.match(name):
            raise _invalid_parameter(
                "Can only include alphanumeric characters, hyphens, or underscores. 1 to 80 in length"
            )
        with self._lock:
            values, redrive = self._parse_attributes(params.get("Attributes"), creating=True)
            queue = self._queues.get(name)
            if queue is not None:
                # Idempotent as in AWS: same name, same values for the attributes given -> same queue.
                differs = any(queue.attributes.get(key) != value for key, value in values.items())
                if differs or (redrive is not ... and redrive != queue.redrive):
                    raise SqsError("QueueNameExists", "The specified queue already exists.")
                return {"QueueUrl": queue.url}
            now = self._clock()
            arn = f"arn:aws:sqs:{self.region}:{self.account_id}:{name}"
            queue = _Queue(name, arn, self.queue_url(name), self._lock, now)
            queue.attributes.update(values)
            if redrive is not ...:
                queue.redrive = redrive
            self._queues[name] = queue
            self._queues_by_arn[arn] = queue
            return {"QueueUrl": queue.url}

    def _get_queue_url(self, params: dict) -> dict:
        with self._lock:
            queue = self._queues.get(params.get("QueueName") or "")
            if queue is None:
                raise _queue_does_not_exist()
            return {"QueueUrl": queue.url}

    def _list_queues(self, params: dict) -> dict:
        prefix = params.get("QueueNamePrefix") or ""
        with self._lock:
            urls = [self._queues[name].url for name in sorted(self._queues) if name.startswith(prefix)]
        max_results = params.get("MaxResults")
        if max_results is None:
            return {"QueueUrls": urls[:1000]} if urls else {}
        # Paginated only when asked, as AWS does; the token is where the next page starts.
        size = _integer(max_results, "MaxResults", 1, 1000)
        token = params.get("NextToken")
        try:
            start = int(base64.b64decode(token).decode()) if token else 0
        except (ValueError, TypeError):
            raise _invalid_parameter("Invalid NextToken value.") from None
        result: dict[str, Any] = {"QueueUrls": urls[start : start + size]}
        if start + size < len(urls):
            result["NextToken"] = base64.b64encode(str(start + size).encode()).decode()
        return result

    def _delete_queue(self, params: dict) -> dict:
        with self._lock:
            queue = self._queue(params)
            del self._queues[queue.name]
            del self._queues_by_arn[queue.arn]
            queue.deleted = True
            queue.changed.notify_all()  # its long polls end with QueueDoesNotExist
        return {}

    def _get_queue_attributes(self, params: dict) -> dict:
        names = params.get("AttributeNames") or []
        with self._lock:
            queue = self._queue(params)
            unknown = next((n for n in names if n != "All" and n not in _READABLE_ATTRIBUTES), None)
            if unknown is not None:
                raise SqsError("InvalidAttributeName", f"Unknown Attribute {unknown}.")
            if not names:
                return {}
            queue.advance(self._clock())
            values = queue.attribute_values()
        if "All" not in names:
            values = {name: values[name] for name in names if name in values}
        return {"Attributes": values} if values else {}

    def _set_queue_attributes(self, params: dict) -> dict:
        with self._lock:
            queue = self._queue(params)
            values, redrive = self._parse_attributes(params.get("Attributes"), creating=False)
            queue.attributes.update(values)
            if redrive is not ...:
                queue.redrive = redrive
            queue.last_modified = int(self._clock())
            queue.changed.notify_all()
        return {}

    def _purge_queue(self, params: dict) -> dict:
        with self._lock:
            queue = self._queue(params)
            queue.purge()
        return {}

    # --- sending -------------------------------------------------------------------------------------

    def _new_message(self, queue: _Queue, entry: dict, now: float) -> tuple[_Message, int]:
        """A message from a SendMessage request or batch entry, and its delay; SqsError if refused."""
        body = _check_body(entry.get("MessageBody"), queue.attributes["MaximumMessageSize"])
        delay = entry.get("DelaySeconds")
        if delay is None:
            delay = queue.attributes["DelaySeconds"]
        else:
            try:
                delay = int(delay)
            except (TypeError, ValueError):
                delay = -1
            if not 0 <= delay <= MAX_DELAY_SECONDS:
                raise _invalid_parameter(
                    f"Value {entry.get('DelaySeconds')} for parameter DelaySeconds is invalid. "
                    "Reason: DelaySeconds must be >= 0 and <= 900."
                )
        attributes = _validate_attributes(entry.get("MessageAttributes"))
        system_attributes = _validate_attributes(entry.get("MessageSystemAttributes"), "system")
        return _Message(body, attributes, system_attributes, now), delay

    @staticmethod
    def _sent(message: _Message) -> dict:
        result = {"MessageId": message.id, "MD5OfMessageBody": message.md5}
        if message.attributes:
            result["MD5OfMessageAttributes"] = _md5_of_attributes(message.attributes)
        if message.system_attributes:
            result["MD5OfMessageSystemAttributes"] = _md5_of_attributes(message.system_attributes)
        return result

    def _send_message(self, params: dict) -> dict:
        with self._lock:
            queue = self._queue(params)
            now = self._clock()
            message, delay = self._new_message(queue, params, now)
            queue.advance(now)
            queue.add(message, delay, now)
        return self._sent(message)

    def _send_message_batch(self, params: dict) -> dict:
        entries = _batch_entries(params, "SendMessageBatchRequestEntry")
        total = sum(len(str(e.get("MessageBody") or "").encode()) for e in entries)
        if total > MAX_MESSAGE_SIZE:
            raise SqsError(
                "BatchRequestTooLong",
                f"Batch requests cannot be longer than {MAX_MESSAGE_SIZE} bytes. You have sent {total} bytes.",
            )
        successful, failed = [], []
        with self._lock:
            queue = self._queue(params)
            now = self._clock()
            queue.advance(now)
            for entry in entries:
                try:
                    message, delay = self._new_message(queue, entry, now)
                except SqsError as error:
                    failed.append(_failure(entry["Id"], error))
                    continue
                queue.add(message, delay, now)
                successful.append({"Id": entry["Id"], **self._sent(message)})
        return {"Successful": successful, "Failed": failed}

    # --- receiving -----------------------------------------------------------------------------------

    def _receive_message(self, params: dict) -> dict:
        count = params.get("MaxNumberOfMessages")
        count = 1 if count is None else _integer(count, "MaxNumberOfMessages", 1, MAX_RECEIVE)
        wanted = set(params.get("AttributeNames") or []) | set(
            params.get("MessageSystemAttributeNames") or []
        )
        system_names = (
            _SYSTEM_ATTRIBUTES if "All" in wanted else tuple(n for n in _SYSTEM_ATTRIBUTES if n in wanted)
        )
        attribute_filter = _attribute_filter(params.get("MessageAttributeNames") or [])
        with self._lock:
            queue = self._queue(params)
            wait = params.get("WaitTimeSeconds")
            wait = queue.attributes["ReceiveMessageWaitTimeSeconds"] if wait is None else wait
            wait = _integer(wait, "WaitTimeSeconds", 0, MAX_WAIT_SECONDS)
            visibility = params.get("VisibilityTimeout")
            visibility = queue.attributes["VisibilityTimeout"] if visibility is None else visibility
            visibility = _integer(visibility, "VisibilityTimeout", 0, MAX_VISIBILITY_TIMEOUT)
            deadline = self._clock() + wait
            while True:
                now = self._clock()
                messages = self._receive(queue, count, visibility, now, system_names, attribute_filter)
                if messages or now >= deadline or self._stopping:
                    break
                due = queue.next_due()
                timeout = deadline - now if due is None else min(deadline - now, max(due - now, 0.001))
                queue.changed.wait(timeout)
                if queue.deleted:
                    raise _queue_does_not_exist()
        return {"Messages": messages} if messages else {}

    def _receive(
        self,
        queue: _Queue,
        count: int,
        visibility: int,
        now: float,
        system_names: tuple[str, ...],
        attribute_filter: Callable[[str], bool],
    ) -> list[dict]:
        queue.advance(now)
        received: list[dict] = []
        redrive = queue.redrive
        while len(received) < count:
            message = queue.pop_ready()
            if message is None:
                break
            if redrive is not None and message.receive_count >= redrive["maxReceiveCount"]:
                dlq = self._queues_by_arn.get(redrive["deadLetterTargetArn"])
                if dlq is not None and dlq is not queue:
                    # moto's moment: the receive that finds it available again moves it instead.
                    queue.remove(message, tombstone=False)
                    message.dlq_source = queue.arn
                    dlq.advance(now)
                    dlq.add(message, 0, now)
                    continue
            message.receive_count += 1
            if message.first_receive_ms is None:
                message.first_receive_ms = int(now * 1000)
            message.received_at = now
            handle = secrets.token_urlsafe(48)
            message.handles.append(handle)
            queue.handles[handle] = message
            # A visibility timeout of 0 makes it available again from the next request on, not within this
            # one (which would hand the same message out twice).
            queue.make_later(message, _IN_FLIGHT, now + visibility)
            received.append(self._received(message, handle, system_names, attribute_filter))
        return received

    @staticmethod
    def _received(
        message: _Message, handle: str, system_names: tuple[str, ...], attribute_filter: Callable[[str], bool]
    ) -> dict:
        result: dict[str, Any] = {
            "MessageId": message.id,
            "ReceiptHandle": handle,
            "MD5OfBody": message.md5,
            "Body": message.body,
        }
        if system_names:
            values = {
                "SenderId": SENDER_ID,
                "SentTimestamp": str(message.sent_ms),
                "ApproximateReceiveCount": str(message.receive_count),
                "ApproximateFirstReceiveTimestamp": str(message.first_receive_ms),
            }
            trace = message.system_attributes.get("AWSTraceHeader")
            if trace:
                values["AWSTraceHeader"] = trace.get("StringValue", "")
            if message.dlq_source:
                values["DeadLetterQueueSourceArn"] = message.dlq_source
            result["Attributes"] = {name: values[name] for name in system_names if name in values}
        attributes = {name: value for name, value in message.attributes.items() if attribute_filter(name)}
        if attributes:
            result["MessageAttributes"] = attributes
            result["MD5OfMessageAttributes"] = _md5_of_attributes(attributes)
        return result

    # --- deleting and visibility ---------------------------------------------------------------------

    def _delete(self, queue: _Queue, handle: Any) -> None:
        if handle in queue.deleted_handles:
            return  # already deleted: AWS and moto both answer success
        message = queue.handles.get(handle) if isinstance(handle, str) else None
        if message is None:
            raise SqsError("ReceiptHandleIsInvalid", "The input receipt handle is invalid.")
        queue.remove(message, tombstone=True)

    def _delete_message(self, params: dict) -> dict:
        with self._lock:
            queue = self._queue(params)
            queue.advance(self._clock())
            self._delete(queue, params.get("ReceiptHandle"))
        return {}

    def _delete_message_batch(self, params: dict) -> dict:
        entries = _batch_entries(params, "DeleteMessageBatchRequestEntry")
        seen: set[str] = set()
        for entry in entries:
            # moto refuses a receipt handle given twice, as if it were a repeated id.
            if entry.get("ReceiptHandle") in seen:
                raise SqsError("BatchEntryIdsNotDistinct", f"Id {entry['Id']} repeated.")
            seen.add(entry.get("ReceiptHandle"))
        successful, failed = [], []
        with self._lock:
            queue = self._queue(params)
            queue.advance(self._clock())
            for entry in entries:
                try:
                    self._delete(queue, entry.get("ReceiptHandle"))
                except SqsError:
                    failed.append(
                        {
                            "Id": entry["Id"],
                            "SenderFault": True,
                            "Code": "ReceiptHandleIsInvalid",
                            "Message": f'The input receipt handle "{entry.get("ReceiptHandle")}" is not a valid '
                            "receipt handle.",
                        }
                    )
                    continue
                successful.append({"Id": entry["Id"]})
        return {"Successful": successful, "Failed": failed}

    def _change_visibility(self, queue: _Queue, handle: Any, timeout: Any, now: float) -> None:
        timeout = _integer(timeout, "VisibilityTimeout", 0, MAX_VISIBILITY_TIMEOUT)
        message = queue.handles.get(handle) if isinstance(handle, str) else None
        if message is None:
            raise SqsError("ReceiptHandleIsInvalid", "The input receipt handle is invalid.")
        if now + timeout - message.received_at > MAX_VISIBILITY_TIMEOUT:
            raise _invalid_parameter(
                f"Value {timeout} for parameter VisibilityTimeout is invalid. Reason: Total VisibilityTimeout "
                f"for the message is beyond the limit [{MAX_VISIBILITY_TIMEOUT} seconds]"
            )
        if timeout == 0:
            queue.make_ready(message)
        else:
            queue.make_later(message, _IN_FLIGHT, now + timeout)

    def _change_message_visibility(self, params: dict) -> dict:
        with self._lock:
            queue = self._queue(params)
            now = self._clock()
            queue.advance(now)
            self._change_visibility(queue, params.get("ReceiptHandle"), params.get("VisibilityTimeout"), now)
        return {}

    def _change_message_visibility_batch(self, params: dict) -> dict:
        entries = _batch_entries(params, "ChangeMessageVisibilityBatchRequestEntry")
        successful, failed = [], []
        with self._lock:
            queue = self._queue(params)
            now = self._clock()
            queue.advance(now)
            for entry in entries:
                try:
                    self._change_visibility(
                        queue, entry.get("ReceiptHandle"), entry.get("VisibilityTimeout"), now
                    )
                except SqsError as error:
                    failed.append(_failure(entry["Id"], error))
                    continue
                successful.append({"Id": entry["Id"]})
        return {"Successful": successful, "Failed": failed}


def _batch_entries(params: dict, kind: str) -> list[dict]:
    """A batch request's entries, checked as SQS checks them before doing any."""
    entries = params.get("Entries")
    if not entries:
        raise SqsError("EmptyBatchRequest", f"There should be at least one {kind} in the request.")
    if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
        raise _invalid_parameter("Entries must be a list of objects.")
    if len(entries) > MAX_BATCH_ENTRIES:
        raise SqsError(
            "TooManyEntriesInBatchRequest",
            f"Maximum number of entries per request are {MAX_BATCH_ENTRIES}. You have sent {len(entries)}.",
        )
    seen: set[str] = set()
    for entry in entries:
        entry_id = entry.get("Id")
        if not isinstance(entry_id, str) or not _BATCH_ENTRY_ID.match(entry_id):
            raise SqsError(
                "InvalidBatchEntryId",
                "A batch entry id can only contain alphanumeric characters, hyphens and underscores. "
                "It can be at most 80 letters long.",
            )
        if entry_id in seen:
            raise SqsError("BatchEntryIdsNotDistinct", f"Id {entry_id} repeated.")
        seen.add(entry_id)
    return entries


def _failure(entry_id: str, error: SqsError) -> dict:
    return {"Id": entry_id, "SenderFault": True, "Code": error.query_code, "Message": error.message}


def _attribute_filter(names: list[str]) -> Callable[[str], bool]:
    """Which message attributes a receive asked for: `All`, `.*`, exact names, or `prefix.*`."""
    if "All" in names or ".*" in names:
        return lambda name: True
    exact = {n for n in names if not n.endswith(".*")}
    prefixes = tuple(n[:-2] for n in names if n.endswith(".*"))
    return lambda name: name in exact or (bool(prefixes) and name.startswith(prefixes))


if __name__ == "__main__":
    serve_until_stdin_closes(LocalSqsServer().start())
