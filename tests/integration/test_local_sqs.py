"""LocalSqsServer against moto's server: the same scenarios, the same observable results.

Every scenario of the first part runs twice, through boto3, once against moto's server (the session's
`moto_server`) and once against `LocalSqsServer`; the second part covers what only LocalSqsServer is for
(other processes, many concurrent clients, stopping) or what cannot be timed on moto (retention).
Timing-based waits are kept short (visibility timeouts of 1 s, long polls that end as soon as a message is
back) and nothing asserts on speed.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError
from sendonce.local.sqs_server import LocalSqsServer

REGION = "us-east-1"
ACCOUNT = "123456789012"


def _client(url: str, pool: int = 10):
    # One attempt: a retried error would hide what the server answered.
    return boto3.client(
        "sqs",
        endpoint_url=url,
        region_name=REGION,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
        config=Config(retries={"total_max_attempts": 1}, max_pool_connections=pool),
    )


@pytest.fixture(scope="module")
def local_sqs() -> Iterator[LocalSqsServer]:
    """One LocalSqsServer for this module (queues are named uniquely per test)."""
    with LocalSqsServer() as server:
        yield server


@pytest.fixture(params=["moto", "local"])
def sqs(request):
    """A boto3 SQS client for moto's server (the session's) or for LocalSqsServer."""
    if request.param == "moto":
        host, port = request.getfixturevalue("moto_server").get_host_and_port()
        return _client(f"http://{host}:{port}")
    return _client(request.getfixturevalue("local_sqs").url)


@pytest.fixture
def make_queue(sqs) -> Callable[..., str]:
    """Create a uniquely named queue with the given attributes; return its URL."""

    def create(prefix: str = "q", **attributes: object) -> str:
        name = f"{prefix}-{uuid.uuid4().hex[:12]}"
        return sqs.create_queue(QueueName=name, Attributes={k: str(v) for k, v in attributes.items()})[
            "QueueUrl"
        ]

    return create


def _counts(sqs, queue_url: str) -> tuple[int, int, int]:
    """(visible, in flight, delayed)."""
    attributes = sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["All"])["Attributes"]
    return (
        int(attributes["ApproximateNumberOfMessages"]),
        int(attributes["ApproximateNumberOfMessagesNotVisible"]),
        int(attributes["ApproximateNumberOfMessagesDelayed"]),
    )


def _arn(sqs, queue_url: str) -> str:
    return sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]


def _receive(sqs, queue_url: str, **kwargs) -> list[dict]:
    return sqs.receive_message(QueueUrl=queue_url, AttributeNames=["All"], **kwargs).get("Messages", [])


def _md5_of_attributes(attributes: dict[str, dict]) -> str:
    """The MD5 AWS documents for message attributes (computed here independently of both servers)."""
    digest = hashlib.md5(usedforsecurity=False)
    for name in sorted(attributes):
        value = attributes[name]
        for part in (name.encode(), value["DataType"].encode()):
            digest.update(struct.pack("!I", len(part)) + part)
        if "StringValue" in value:
            data = value["StringValue"].encode()
            digest.update(b"\x01" + struct.pack("!I", len(data)) + data)
        else:
            data = value["BinaryValue"]
            digest.update(b"\x02" + struct.pack("!I", len(data)) + data)
    return digest.hexdigest()


# --- the same scenarios on moto and on LocalSqsServer ----------------------------------------------------


def test_queue_created_shaped_like_aws_url_and_arn(sqs, make_queue):
    # Given / When
    url = make_queue()
    name = url.rsplit("/", 1)[1]

    # Then
    assert url.endswith(f"/{ACCOUNT}/{name}")
    assert url.startswith("http://127.0.0.1:")
    assert _arn(sqs, url) == f"arn:aws:sqs:{REGION}:{ACCOUNT}:{name}"
    assert sqs.get_queue_url(QueueName=name)["QueueUrl"] == url
    assert url in sqs.list_queues(QueueNamePrefix=name)["QueueUrls"]


def test_create_queue_same_name_same_attributes_same_queue(sqs, make_queue):
    # Given
    url = make_queue(VisibilityTimeout=5)
    name = url.rsplit("/", 1)[1]

    # When
    again = sqs.create_queue(QueueName=name, Attributes={"VisibilityTimeout": "5"})["QueueUrl"]

    # Then
    assert again == url


def test_create_queue_same_name_other_attributes_queue_name_exists(sqs, make_queue):
    # Given
    name = make_queue(VisibilityTimeout=5).rsplit("/", 1)[1]

    # When
    with pytest.raises(sqs.exceptions.QueueNameExists) as raised:
        sqs.create_queue(QueueName=name, Attributes={"VisibilityTimeout": "6"})

    # Then
    assert raised.value.response["Error"]["Code"] == "QueueAlreadyExists"


def test_send_receive_delete_message_gone_with_correct_md5(sqs, make_queue):
    # Given
    url = make_queue()
    body = '{"queue_id": 1, "text": "h\u00e9llo \u0928\u092e\u0938\u094d\u0924\u0947"}'
    sent = sqs.send_message(QueueUrl=url, MessageBody=body)

    # When
    [message] = _receive(sqs, url, MaxNumberOfMessages=10)
    sqs.delete_message(QueueUrl=url, ReceiptHandle=message["ReceiptHandle"])

    # Then
    expected_md5 = hashlib.md5(body.encode(), usedforsecurity=False).hexdigest()
    assert sent["MD5OfMessageBody"] == expected_md5
    assert (message["MessageId"], message["Body"], message["MD5OfBody"]) == (
        sent["MessageId"],
        body,
        expected_md5,
    )
    assert message["Attributes"]["ApproximateReceiveCount"] == "1"
    assert int(message["Attributes"]["SentTimestamp"]) <= int(
        message["Attributes"]["ApproximateFirstReceiveTimestamp"]
    )
    assert _receive(sqs, url) == []
    assert _counts(sqs, url) == (0, 0, 0)


def test_message_attributes_sent_received_with_correct_md5(sqs, make_queue):
    # Given
    url = make_queue()
    attributes = {
        "campaign": {"DataType": "String", "StringValue": "diwali"},
        "attempt": {"DataType": "Number", "StringValue": "3"},
        "blob": {"DataType": "Binary", "BinaryValue": b"\x00\x01\xff"},
    }

    # When
    sent = sqs.send_message(QueueUrl=url, MessageBody="x", MessageAttributes=attributes)
    [message] = _receive(sqs, url, MessageAttributeNames=["All"])

    # Then
    assert sent["MD5OfMessageAttributes"] == _md5_of_attributes(attributes)
    assert message["MD5OfMessageAttributes"] == _md5_of_attributes(attributes)
    assert message["MessageAttributes"] == attributes


def test_send_message_batch_ten_entries_all_received_once(sqs, make_queue):
    # Given
    url = make_queue()
    entries = [{"Id": f"e{i}", "MessageBody": f"body {i}"} for i in range(10)]

    # When
    answer = sqs.send_message_batch(QueueUrl=url, Entries=entries)
    received = _receive(sqs, url, MaxNumberOfMessages=10) + _receive(sqs, url, MaxNumberOfMessages=10)

    # Then
    assert sorted(s["Id"] for s in answer["Successful"]) == sorted(e["Id"] for e in entries)
    assert answer.get("Failed", []) == []
    assert all(
        s["MD5OfMessageBody"]
        == hashlib.md5(f"body {s['Id'][1:]}".encode(), usedforsecurity=False).hexdigest()
        for s in answer["Successful"]
    )
    assert sorted(m["Body"] for m in received) == sorted(e["MessageBody"] for e in entries)


@pytest.mark.parametrize(
    ("entries", "code", "exception"),
    [
        (
            [{"Id": str(i), "MessageBody": "x"} for i in range(11)],
            "AWS.SimpleQueueService.TooManyEntriesInBatchRequest",
            "TooManyEntriesInBatchRequest",
        ),
        (
            [{"Id": "a", "MessageBody": "x"}, {"Id": "a", "MessageBody": "y"}],
            "AWS.SimpleQueueService.BatchEntryIdsNotDistinct",
            "BatchEntryIdsNotDistinct",
        ),
        ([], "AWS.SimpleQueueService.EmptyBatchRequest", "EmptyBatchRequest"),
        (
            [{"Id": "not valid!", "MessageBody": "x"}],
            "AWS.SimpleQueueService.InvalidBatchEntryId",
            "InvalidBatchEntryId",
        ),
    ],
    ids=["eleven", "repeated-id", "empty", "bad-id"],
)
def test_send_message_batch_invalid_request_refused_whole(sqs, make_queue, entries, code, exception):
    # Given
    url = make_queue()

    # When
    with pytest.raises(getattr(sqs.exceptions, exception)) as raised:
        sqs.send_message_batch(QueueUrl=url, Entries=entries)

    # Then
    assert raised.value.response["Error"]["Code"] == code
    assert _counts(sqs, url) == (0, 0, 0)


def test_send_message_batch_delay_over_900_only_that_entry_failed(sqs, make_queue):
    # Given
    url = make_queue()

    # When
    answer = sqs.send_message_batch(
        QueueUrl=url,
        Entries=[{"Id": "late", "MessageBody": "x", "DelaySeconds": 901}, {"Id": "fine", "MessageBody": "y"}],
    )

    # Then
    assert [s["Id"] for s in answer["Successful"]] == ["fine"]
    [failed] = answer["Failed"]
    assert (failed["Id"], failed["Code"], failed["SenderFault"]) == ("late", "InvalidParameterValue", True)
    assert _counts(sqs, url) == (1, 0, 0)


def test_send_message_delay_over_900_invalid_parameter_value(sqs, make_queue):
    # Given
    url = make_queue()

    # When
    with pytest.raises(ClientError) as raised:
        sqs.send_message(QueueUrl=url, MessageBody="x", DelaySeconds=901)

    # Then
    assert raised.value.response["Error"]["Code"] == "InvalidParameterValue"


def test_receive_message_eleven_at_once_invalid_parameter_value(sqs, make_queue):
    # Given
    url = make_queue()

    # When
    with pytest.raises(ClientError) as raised:
        sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=11)

    # Then
    assert raised.value.response["Error"]["Code"] == "InvalidParameterValue"


def test_delete_message_batch_one_unknown_handle_others_deleted(sqs, make_queue):
    # Given
    url = make_queue()
    sqs.send_message_batch(
        QueueUrl=url, Entries=[{"Id": "a", "MessageBody": "1"}, {"Id": "b", "MessageBody": "2"}]
    )
    received = _receive(sqs, url, MaxNumberOfMessages=10)

    # When
    answer = sqs.delete_message_batch(
        QueueUrl=url,
        Entries=[{"Id": f"ok{i}", "ReceiptHandle": m["ReceiptHandle"]} for i, m in enumerate(received)]
        + [{"Id": "bogus", "ReceiptHandle": "not-a-receipt-handle"}],
    )

    # Then
    assert sorted(s["Id"] for s in answer["Successful"]) == ["ok0", "ok1"]
    [failed] = answer["Failed"]
    assert (failed["Id"], failed["Code"], failed["SenderFault"]) == ("bogus", "ReceiptHandleIsInvalid", True)
    assert _counts(sqs, url) == (0, 0, 0)


def test_delete_message_batch_empty_empty_batch_request(sqs, make_queue):
    # Given
    url = make_queue()

    # When
    with pytest.raises(sqs.exceptions.EmptyBatchRequest) as raised:
        sqs.delete_message_batch(QueueUrl=url, Entries=[])

    # Then
    assert raised.value.response["Error"]["Code"] == "AWS.SimpleQueueService.EmptyBatchRequest"


def test_send_message_delayed_invisible_until_delay_passes(sqs, make_queue):
    # Given
    url = make_queue()

    # When
    sqs.send_message(QueueUrl=url, MessageBody="later", DelaySeconds=1)
    at_once = _receive(sqs, url)
    counts_while_delayed = _counts(sqs, url)
    later = _receive(sqs, url, WaitTimeSeconds=5)

    # Then
    assert at_once == []
    assert counts_while_delayed == (0, 0, 1)
    assert [m["Body"] for m in later] == ["later"]


def test_visibility_timeout_expired_message_back_with_receive_count_2(sqs, make_queue):
    # Given
    url = make_queue(VisibilityTimeout=1)
    sqs.send_message(QueueUrl=url, MessageBody="x")
    [first] = _receive(sqs, url)

    # When
    while_invisible = _receive(sqs, url)
    counts_while_invisible = _counts(sqs, url)
    again = _receive(sqs, url, WaitTimeSeconds=5)

    # Then
    assert while_invisible == []
    assert counts_while_invisible == (0, 1, 0)
    [second] = again
    assert second["MessageId"] == first["MessageId"]
    assert second["Attributes"]["ApproximateReceiveCount"] == "2"
    assert second["ReceiptHandle"] != first["ReceiptHandle"]
    assert (
        second["Attributes"]["ApproximateFirstReceiveTimestamp"]
        == first["Attributes"]["ApproximateFirstReceiveTimestamp"]
    )


def test_receive_visibility_timeout_override_used_instead_of_queue_default(sqs, make_queue):
    # Given
    url = make_queue(VisibilityTimeout=600)
    sqs.send_message(QueueUrl=url, MessageBody="x")

    # When
    _receive(sqs, url, VisibilityTimeout=1)
    again = _receive(sqs, url, WaitTimeSeconds=5)

    # Then
    assert [m["Attributes"]["ApproximateReceiveCount"] for m in again] == ["2"]


def test_change_message_visibility_to_zero_message_receivable_again(sqs, make_queue):
    # Given
    url = make_queue(VisibilityTimeout=600)
    sqs.send_message(QueueUrl=url, MessageBody="x")
    [first] = _receive(sqs, url)

    # When
    sqs.change_message_visibility(QueueUrl=url, ReceiptHandle=first["ReceiptHandle"], VisibilityTimeout=0)
    # A short long poll: moto makes a message visible strictly after its visible-at millisecond.
    again = _receive(sqs, url, WaitTimeSeconds=2)

    # Then
    assert [(m["MessageId"], m["Attributes"]["ApproximateReceiveCount"]) for m in again] == [
        (first["MessageId"], "2")
    ]


def test_change_message_visibility_batch_unknown_handle_only_that_entry_failed(sqs, make_queue):
    # Given
    url = make_queue(VisibilityTimeout=600)
    sqs.send_message(QueueUrl=url, MessageBody="x")
    [message] = _receive(sqs, url)

    # When
    answer = sqs.change_message_visibility_batch(
        QueueUrl=url,
        Entries=[
            {"Id": "real", "ReceiptHandle": message["ReceiptHandle"], "VisibilityTimeout": 0},
            {"Id": "bogus", "ReceiptHandle": "not-a-receipt-handle", "VisibilityTimeout": 0},
        ],
    )
    again = _receive(sqs, url, WaitTimeSeconds=2)

    # Then
    assert [s["Id"] for s in answer["Successful"]] == ["real"]
    assert [(f["Id"], f["Code"]) for f in answer["Failed"]] == [("bogus", "ReceiptHandleIsInvalid")]
    assert [m["MessageId"] for m in again] == [message["MessageId"]]


def test_change_message_visibility_unknown_handle_receipt_handle_is_invalid(sqs, make_queue):
    # Given
    url = make_queue()

    # When
    with pytest.raises(sqs.exceptions.ReceiptHandleIsInvalid) as raised:
        sqs.change_message_visibility(QueueUrl=url, ReceiptHandle="not-a-receipt-handle", VisibilityTimeout=0)

    # Then
    assert raised.value.response["Error"]["Code"] == "ReceiptHandleIsInvalid"


def test_redrive_received_max_receive_count_times_then_moved_to_dlq(sqs, make_queue):
    # Given: maxReceiveCount 3; a visibility timeout of 0 on receive makes the message available at once
    dlq = make_queue("dlq")
    url = make_queue(RedrivePolicy=json.dumps({"deadLetterTargetArn": _arn(sqs, dlq), "maxReceiveCount": 3}))
    sent = sqs.send_message(QueueUrl=url, MessageBody="doomed")

    # When
    counts = [
        m["Attributes"]["ApproximateReceiveCount"]
        for _ in range(3)
        for m in _receive(sqs, url, VisibilityTimeout=0)
    ]
    fourth = _receive(sqs, url, VisibilityTimeout=0)

    # Then: received 3 times; the receive that finds it again moves it, keeping its id, body and count
    assert counts == ["1", "2", "3"]
    assert fourth == []
    assert _counts(sqs, url) == (0, 0, 0)
    assert _counts(sqs, dlq) == (1, 0, 0)
    [dead] = _receive(sqs, dlq)
    assert (dead["MessageId"], dead["Body"]) == (sent["MessageId"], "doomed")
    assert dead["Attributes"]["ApproximateReceiveCount"] == "4"


def test_redrive_policy_returned_as_given(sqs, make_queue):
    # Given
    dlq_arn = _arn(sqs, make_queue("dlq"))

    # When
    url = make_queue(RedrivePolicy=json.dumps({"deadLetterTargetArn": dlq_arn, "maxReceiveCount": 5}))
    policy = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["RedrivePolicy"])["Attributes"][
        "RedrivePolicy"
    ]

    # Then
    assert json.loads(policy) == {"deadLetterTargetArn": dlq_arn, "maxReceiveCount": 5}


def test_queue_attributes_visible_in_flight_delayed_counted_apart(sqs, make_queue):
    # Given
    url = make_queue(VisibilityTimeout=600)
    sqs.send_message_batch(
        QueueUrl=url,
        Entries=[
            {"Id": "a", "MessageBody": "a"},
            {"Id": "b", "MessageBody": "b"},
            {"Id": "c", "MessageBody": "c"},
            {"Id": "d", "MessageBody": "d", "DelaySeconds": 600},
        ],
    )

    # When
    _receive(sqs, url)

    # Then
    assert _counts(sqs, url) == (2, 1, 1)
    attributes = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["VisibilityTimeout", "DelaySeconds"])
    assert attributes["Attributes"] == {"VisibilityTimeout": "600", "DelaySeconds": "0"}


def test_set_queue_attributes_visibility_timeout_applied(sqs, make_queue):
    # Given
    url = make_queue(VisibilityTimeout=600)

    # When
    sqs.set_queue_attributes(QueueUrl=url, Attributes={"VisibilityTimeout": "1"})
    sqs.send_message(QueueUrl=url, MessageBody="x")
    _receive(sqs, url)
    again = _receive(sqs, url, WaitTimeSeconds=5)

    # Then
    assert [m["Attributes"]["ApproximateReceiveCount"] for m in again] == ["2"]


def test_long_poll_send_from_other_thread_wakes_receiver(sqs, make_queue):
    # Given: a receive long-polling an empty queue
    url = make_queue()
    received: list[dict] = []
    poller = threading.Thread(target=lambda: received.extend(_receive(sqs, url, WaitTimeSeconds=10)))
    poller.start()
    time.sleep(0.3)  # let the poll start waiting (if it starts later it still finds the message)

    # When
    sqs.send_message(QueueUrl=url, MessageBody="wake up")
    poller.join(timeout=30)

    # Then
    assert [m["Body"] for m in received] == ["wake up"]


def test_unknown_queue_any_operation_queue_does_not_exist(sqs, make_queue):
    # Given
    missing = make_queue().rsplit("/", 1)[0] + f"/missing-{uuid.uuid4().hex[:8]}"
    calls = [
        lambda: sqs.get_queue_url(QueueName=missing.rsplit("/", 1)[1]),
        lambda: sqs.send_message(QueueUrl=missing, MessageBody="x"),
        lambda: sqs.receive_message(QueueUrl=missing),
        lambda: sqs.get_queue_attributes(QueueUrl=missing, AttributeNames=["All"]),
        lambda: sqs.delete_queue(QueueUrl=missing),
    ]

    for call in calls:
        # When
        with pytest.raises(sqs.exceptions.QueueDoesNotExist) as raised:
            call()

        # Then
        assert raised.value.response["Error"]["Code"] == "AWS.SimpleQueueService.NonExistentQueue"


def test_delete_queue_then_queue_does_not_exist(sqs, make_queue):
    # Given
    url = make_queue()
    name = url.rsplit("/", 1)[1]

    # When
    sqs.delete_queue(QueueUrl=url)

    # Then
    with pytest.raises(sqs.exceptions.QueueDoesNotExist):
        sqs.get_queue_url(QueueName=name)
    assert url not in sqs.list_queues(QueueNamePrefix=name).get("QueueUrls", [])


def test_stale_receipt_handle_delete_still_deletes_message(sqs, make_queue):
    # Given: a message received twice, so its first receipt handle is no longer the latest
    url = make_queue()
    sqs.send_message(QueueUrl=url, MessageBody="x")
    [first] = _receive(sqs, url, VisibilityTimeout=0)
    [second] = _receive(sqs, url, VisibilityTimeout=600)

    # When
    sqs.delete_message(QueueUrl=url, ReceiptHandle=first["ReceiptHandle"])

    # Then: moto's behaviour, which LocalSqsServer matches: the message is gone, and deleting it again
    # with the latest handle succeeds and does nothing
    assert _counts(sqs, url) == (0, 0, 0)
    sqs.delete_message(QueueUrl=url, ReceiptHandle=second["ReceiptHandle"])
    with pytest.raises(sqs.exceptions.ReceiptHandleIsInvalid):
        sqs.delete_message(QueueUrl=url, ReceiptHandle="not-a-receipt-handle")


def test_stale_receipt_handle_change_visibility_applies_to_message(sqs, make_queue):
    # Given
    url = make_queue()
    sqs.send_message(QueueUrl=url, MessageBody="x")
    [first] = _receive(sqs, url, VisibilityTimeout=0)
    _receive(sqs, url, VisibilityTimeout=600)

    # When
    sqs.change_message_visibility(QueueUrl=url, ReceiptHandle=first["ReceiptHandle"], VisibilityTimeout=0)
    again = _receive(sqs, url, WaitTimeSeconds=2)

    # Then
    assert [m["Attributes"]["ApproximateReceiveCount"] for m in again] == ["3"]


def test_purge_queue_messages_and_their_handles_gone(sqs, make_queue):
    # Given
    url = make_queue(VisibilityTimeout=600)
    sqs.send_message_batch(QueueUrl=url, Entries=[{"Id": str(i), "MessageBody": str(i)} for i in range(5)])
    [message] = _receive(sqs, url)

    # When
    sqs.purge_queue(QueueUrl=url)

    # Then
    assert _counts(sqs, url) == (0, 0, 0)
    assert _receive(sqs, url) == []
    with pytest.raises(sqs.exceptions.ReceiptHandleIsInvalid):
        sqs.delete_message(QueueUrl=url, ReceiptHandle=message["ReceiptHandle"])


# --- LocalSqsServer only ---------------------------------------------------------------------------------


def test_local_sqs_other_process_via_endpoint_env_message_arrives(local_sqs):
    # Given: a queue, and a child process whose boto3 finds the server through AWS_ENDPOINT_URL_SQS
    sqs = _client(local_sqs.url)
    url = sqs.create_queue(QueueName=f"proc-{uuid.uuid4().hex[:12]}")["QueueUrl"]
    environ = {k: v for k, v in os.environ.items() if k != "AWS_ENDPOINT_URL"}
    environ.update(
        AWS_ENDPOINT_URL_SQS=local_sqs.url,
        AWS_ACCESS_KEY_ID="testing",
        AWS_SECRET_ACCESS_KEY="testing",
        AWS_DEFAULT_REGION=REGION,
    )
    script = (
        "import boto3, sys; boto3.client('sqs').send_message(QueueUrl=sys.argv[1], MessageBody='from child')"
    )

    # When
    subprocess.run([sys.executable, "-c", script, url], env=environ, check=True, timeout=120)

    # Then
    assert [m["Body"] for m in _receive(sqs, url, WaitTimeSeconds=5)] == ["from child"]


def test_local_sqs_concurrent_senders_and_receivers_each_message_received_once(local_sqs):
    # Given: 4 receivers long-polling while 2 senders enqueue 400 messages
    sqs = _client(local_sqs.url, pool=16)
    url = sqs.create_queue(
        QueueName=f"busy-{uuid.uuid4().hex[:12]}", Attributes={"VisibilityTimeout": "600"}
    )["QueueUrl"]
    total, seen, lock, done = 400, Counter(), threading.Lock(), threading.Event()

    def send(offset: int) -> None:
        for start in range(offset, total, 20):
            entries = [{"Id": str(i), "MessageBody": str(start + i)} for i in range(10)]
            sqs.send_message_batch(QueueUrl=url, Entries=entries)

    def receive() -> None:
        while not done.is_set():
            messages = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10, WaitTimeSeconds=1).get(
                "Messages", []
            )
            with lock:
                seen.update(m["Body"] for m in messages)
                if sum(seen.values()) >= total:
                    done.set()
            if messages:
                sqs.delete_message_batch(
                    QueueUrl=url,
                    Entries=[
                        {"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]} for i, m in enumerate(messages)
                    ],
                )

    threads = [threading.Thread(target=send, args=(o,)) for o in (0, 10)]
    threads += [threading.Thread(target=receive) for _ in range(4)]

    # When
    for thread in threads:
        thread.start()
    done.wait(timeout=120)
    done.set()
    for thread in threads:
        thread.join(timeout=30)

    # Then
    assert sorted(seen) == sorted(str(i) for i in range(total))
    assert set(seen.values()) == {1}
    assert _counts(sqs, url) == (0, 0, 0)


def test_local_sqs_retention_period_passed_message_deleted():
    # Given: a clock the test moves (moto keeps expired messages, so this is LocalSqsServer's own behaviour)
    now = [1_700_000_000.0]
    with LocalSqsServer(clock=lambda: now[0]) as server:
        sqs = _client(server.url)
        url = sqs.create_queue(QueueName="short", Attributes={"MessageRetentionPeriod": "60"})["QueueUrl"]
        sqs.send_message(QueueUrl=url, MessageBody="old")
        now[0] += 30
        sqs.send_message(QueueUrl=url, MessageBody="young")

        # When
        now[0] += 31

        # Then
        assert _counts(sqs, url) == (1, 0, 0)
        assert [m["Body"] for m in _receive(sqs, url)] == ["young"]


def test_local_sqs_stop_during_long_poll_poller_returns(local_sqs):
    # Given: a second server with a receive long-polling its empty queue
    server = LocalSqsServer().start()
    sqs = _client(server.url)
    url = sqs.create_queue(QueueName="idle")["QueueUrl"]
    outcome: list[object] = []

    def poll() -> None:
        try:
            outcome.append(sqs.receive_message(QueueUrl=url, WaitTimeSeconds=20).get("Messages", []))
        except Exception as error:  # noqa: BLE001 - a closed connection is an acceptable end too
            outcome.append(error)

    poller = threading.Thread(target=poll)
    poller.start()
    time.sleep(0.3)

    # When
    server.stop()
    poller.join(timeout=15)

    # Then: the poll ended (with no messages) instead of waiting out its 20 s
    assert not poller.is_alive()
    assert outcome and (outcome[0] == [] or isinstance(outcome[0], Exception))


def test_local_sqs_fifo_queue_refused_clearly(local_sqs):
    # Given
    sqs = _client(local_sqs.url)

    # When
    with pytest.raises(ClientError) as raised:
        sqs.create_queue(QueueName="orders.fifo", Attributes={"FifoQueue": "true"})

    # Then
    assert raised.value.response["Error"]["Code"] == "InvalidParameterValue"
    assert "FIFO" in raised.value.response["Error"]["Message"]


def test_local_sqs_unknown_attribute_invalid_attribute_name(local_sqs):
    # Given
    sqs = _client(local_sqs.url)

    # When
    with pytest.raises(sqs.exceptions.InvalidAttributeName) as raised:
        sqs.create_queue(QueueName=f"q-{uuid.uuid4().hex[:8]}", Attributes={"VisibilityTimout": "5"})

    # Then
    assert raised.value.response["Error"]["Code"] == "InvalidAttributeName"
