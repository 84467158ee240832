"""The sender end to end: real PostgreSQL, moto's SQS and DynamoDB, the fake Graph server on loopback.

Every test counts what the fake Graph *accepted* per recipient: that is what reaches a phone.
"""

from __future__ import annotations

import json
import signal
import threading
import uuid

import pytest

from sendonce import callback
from sendonce.db import get_conn
from sendonce.local.lambda_runtime import load_handler
from sendonce.local.event_source import SqsEventSource, queue_depth
from sendonce.sqs import get_sqs_client
from tests.helpers import (
    kill_sender_when_accepted,
    load_event,
    phone,
    queue_rows,
    receive_event,
    sleep_past_killed_invocation,
)

FILE_CAMPAIGN_ID = "4d46271f-f3b4-4f5b-a2c7-6dbad447a845"


def _drain(source: SqsEventSource) -> None:
    source.run_until_empty(timeout=60)


def test_sender_events_file_sends_each_row_once(make_campaign, graph, pg_conn, sender_handler, lambda_context):
    # Given the campaign and rows that events/sender_sqs_batch.json names (ids 1 and 2 of a fresh database)
    campaign_id = make_campaign(phone(1), phone(2), campaign_id=FILE_CAMPAIGN_ID)
    event = load_event("sender_sqs_batch.json")

    # When the file is invoked, as `sam local invoke -e events/sender_sqs_batch.json` would
    response = sender_handler(event, lambda_context)

    # Then both rows are sent once, with the WAMID Meta gave and the row id as callback data
    assert response == {"batchItemFailures": []}
    rows = queue_rows(pg_conn, campaign_id)
    assert graph.accepted == {phone(1): 1, phone(2): 1}
    for number in (phone(1), phone(2)):
        assert rows[number]["status"] == "sent"
        assert rows[number]["whatsapp_message_id"] == graph.wamids[number][0]
    key = pg_conn.execute("SELECT callback_key FROM deployment").fetchone()[0]
    named = {r["payload"]["to"]: callback.verify(key, r["payload"]["biz_opaque_callback_data"]) for r in graph.requests}
    assert named == {phone(1): (campaign_id, 1), phone(2): (campaign_id, 2)}

    # And invoking the same file again (a redelivery) sends nothing more and fails nothing
    assert sender_handler(event, lambda_context) == {"batchItemFailures": []}
    assert graph.accepted == {phone(1): 1, phone(2): 1}


def test_sender_transient_error_then_success_sends_once(make_campaign, graph, pg_conn, event_source):
    # Given one recipient whose first send gets a transient error (131000, then a bare 502)
    graph.plan(phone(1), "error:131000", "http:502")
    campaign_id = make_campaign(phone(1), phone(2))

    # When the queue is drained by the event source (failed records come back after the visibility timeout)
    _drain(event_source)

    # Then everyone got exactly one message, and the retried row took three attempts
    assert graph.accepted == {phone(1): 1, phone(2): 1}
    rows = queue_rows(pg_conn, campaign_id)
    assert rows[phone(1)]["status"] == "sent" and rows[phone(1)]["attempts"] == 3
    assert rows[phone(2)]["status"] == "sent" and rows[phone(2)]["attempts"] == 1


def test_sender_permanent_error_fails_row_without_retry(make_campaign, graph, pg_conn, event_source, aws):
    # Given a recipient that is not on WhatsApp (131026)
    graph.plan(phone(1), "error:131026")
    campaign_id = make_campaign(phone(1), phone(2))

    # When the queue is drained
    _drain(event_source)

    # Then that row is failed with the code, nothing was accepted for it, and it was asked only once
    rows = queue_rows(pg_conn, campaign_id)
    assert graph.accepted == {phone(2): 1}
    assert rows[phone(1)]["status"] == "failed"
    assert rows[phone(1)]["last_error_code"] == 131026
    assert "planned error 131026" in rows[phone(1)]["last_error"]
    assert [r["to"] for r in graph.requests].count(phone(1)) == 1
    assert queue_depth(aws.dlq_url) == 0


def test_sender_dropped_connection_after_accept_leaves_row_processing(make_campaign, graph, pg_conn, event_source):
    # Given Meta accepts the message for one recipient but the connection drops before the answer
    graph.plan(phone(1), "drop")
    campaign_id = make_campaign(phone(1), phone(2))

    # When the queue is drained
    _drain(event_source)

    # Then the message was accepted once and never resent: the row stays processing, claimed, without WAMID
    assert graph.accepted == {phone(1): 1, phone(2): 1}
    row = queue_rows(pg_conn, campaign_id)[phone(1)]
    assert row["status"] == "processing"
    assert row["whatsapp_message_id"] is None and row["claim_token"] is not None
    assert "no answer after the request was sent" in row["last_error"]


def test_sender_read_timeout_after_accept_is_ambiguous(make_campaign, graph, pg_conn, event_source, monkeypatch):
    # Given Meta accepts but answers after the client's read timeout
    monkeypatch.setenv("WHATSAPP_TIMEOUT_SECONDS", "0.5")
    graph.plan(phone(1), "slow:1.5")
    campaign_id = make_campaign(phone(1))

    # When the queue is drained
    _drain(event_source)

    # Then it is not resent and the row waits in processing for reconciliation
    assert graph.accepted == {phone(1): 1}
    assert queue_rows(pg_conn, campaign_id)[phone(1)]["status"] == "processing"


def test_sender_halt_code_pauses_campaign_and_releases_row(make_campaign, graph, pg_conn, event_source):
    # Given an expired access token (190): every send would fail the same way
    graph.plan(phone(1), "error:190")
    campaign_id = make_campaign(phone(1))

    # When the queue is drained
    _drain(event_source)

    # Then the row is released (ready, not failed) and the campaign is paused with the reason
    row = queue_rows(pg_conn, campaign_id)[phone(1)]
    assert row["status"] == "ready" and row["last_error_code"] == 190
    status, reason = pg_conn.execute("SELECT status, pause_reason FROM campaigns WHERE id = %s", (campaign_id,)).fetchone()
    assert status == "paused" and "190" in reason
    assert graph.accepted == {}


def test_sender_same_batch_delivered_twice_at_once_sends_once(make_campaign, graph, pg_conn, event_source, lambda_context):
    # Given five rows and one batch of their messages, delivered to two concurrent invocations at once
    graph.latency = 0.3
    numbers = [phone(i) for i in range(5)]
    campaign_id = make_campaign(*numbers)
    event = receive_event(event_source, 5)
    responses: list[dict] = []
    barrier = threading.Barrier(2)

    def invoke() -> None:
        barrier.wait()
        responses.append(event_source.handler(event, lambda_context))

    # When both invocations run concurrently
    threads = [threading.Thread(target=invoke) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    # Then each recipient got exactly one message, every row is sent, and a record failed in at most one
    # invocation (the in-flight duplicate is retried, never both dropped)
    assert graph.accepted == {n: 1 for n in numbers}
    assert {r["status"] for r in queue_rows(pg_conn, campaign_id).values()} == {"sent"}
    failed = [{f["itemIdentifier"] for f in r["batchItemFailures"]} for r in responses]
    assert not (failed[0] & failed[1])

    # And redelivering the failed ones later sends nothing more
    retry = {"Records": [r for r in event["Records"] if r["messageId"] in failed[0] | failed[1]]}
    if retry["Records"]:
        assert event_source.handler(retry, lambda_context) == {"batchItemFailures": []}
    assert graph.accepted == {n: 1 for n in numbers}


def test_sender_enqueued_twice_and_drained_concurrently_sends_once(make_campaign, graph, pg_conn, event_source, aws):
    # Given a campaign whose rows are all enqueued a second time (two messages per row, different enqueue ids)
    from sendonce.campaigns import enqueue_campaign

    numbers = [phone(i) for i in range(8)]
    campaign_id = make_campaign(*numbers)
    enqueue_campaign(pg_conn, campaign_id, aws.send_queue_url)

    # When four concurrent workers drain the queue
    event_source.concurrency = 4
    _drain(event_source)

    # Then every recipient got exactly one message
    assert graph.accepted == {n: 1 for n in numbers}
    assert {r["status"] for r in queue_rows(pg_conn, campaign_id).values()} == {"sent"}


def test_sender_poison_message_fails_alone(make_campaign, graph, pg_conn, event_source, lambda_context):
    # Given a batch with two good messages and three bodies that are not the contract's
    campaign_id = make_campaign(phone(1), phone(2))
    event = receive_event(event_source, 2)
    poison = [
        dict(event["Records"][0], messageId=f"poison-{i}", body=body)
        for i, body in enumerate(
            ["not json", json.dumps({"queue_id": "x", "campaign_id": campaign_id}), json.dumps({"queue_id": "999999", "campaign_id": campaign_id})]
        )
    ]
    event["Records"] += poison

    # When the batch is handled
    response = event_source.handler(event, lambda_context)

    # Then only the poison records fail, and the good rows are sent
    assert {f["itemIdentifier"] for f in response["batchItemFailures"]} == {"poison-0", "poison-1", "poison-2"}
    assert graph.accepted == {phone(1): 1, phone(2): 1}
    assert {r["status"] for r in queue_rows(pg_conn, campaign_id).values()} == {"sent"}


def test_sender_poison_message_ends_in_dlq_after_five_receives(make_campaign, graph, event_source, aws):
    # Given a malformed message on the queue next to a good one
    make_campaign(phone(1))
    get_sqs_client().send_message(QueueUrl=aws.send_queue_url, MessageBody="{broken")

    # When the queue is drained (visibility timeout 1 s, maxReceiveCount 5)
    _drain(event_source)

    # Then the good row was sent once and the poison message sits in the DLQ, untouched
    assert graph.accepted == {phone(1): 1}
    dead = get_sqs_client().receive_message(QueueUrl=aws.dlq_url, MessageAttributeNames=["All"])["Messages"]
    assert [m["Body"] for m in dead] == ["{broken"]



def test_sender_killed_after_meta_accepted_and_redelivered_sends_once(
    make_campaign, graph, pg_conn, event_source, lambda_context, tmp_path
):
    # Given a sender process that will be killed the moment Meta accepts its message
    campaign_id = make_campaign(phone(1))
    event = receive_event(event_source, 1)

    # When it runs and dies (SIGKILL: no cleanup of any kind)
    assert kill_sender_when_accepted(event, graph, phone(1), tmp_path) == -signal.SIGKILL

    # Then the row is left processing with no WAMID, and Meta accepted it once
    assert graph.accepted == {phone(1): 1}
    assert queue_rows(pg_conn, campaign_id)[phone(1)]["status"] == "processing"

    # When SQS redelivers at once: the idempotency record of the dead invocation is still in progress
    first = event_source.handler(event, lambda_context)

    # Then the record fails (to be retried later) and nothing is sent
    assert [f["itemIdentifier"] for f in first["batchItemFailures"]] == [event["Records"][0]["messageId"]]
    assert graph.accepted == {phone(1): 1}

    # When it is redelivered after the dead invocation's time ran out
    sleep_past_killed_invocation(pg_conn, queue_rows(pg_conn, campaign_id)[phone(1)]["id"])
    second = event_source.handler(event, lambda_context)

    # Then the record is acknowledged without a send: the row is not ready, so the claim skips it
    assert second == {"batchItemFailures": []}
    assert graph.accepted == {phone(1): 1}
    row = queue_rows(pg_conn, campaign_id)[phone(1)]
    assert row["status"] == "processing" and row["attempts"] == 1


def test_sender_duplicate_row_in_one_batch_sends_once(make_campaign, graph, pg_conn, event_source, lambda_context):
    # Given one batch holding two different messages for the same row (two enqueue runs)
    campaign_id = make_campaign(phone(1))
    event = receive_event(event_source, 1)
    copy = dict(event["Records"][0], messageId=str(uuid.uuid4()))
    body = json.loads(copy["body"])
    copy["body"] = json.dumps({**body, "enqueue_id": uuid.uuid4().hex})
    event["Records"].append(copy)

    # When it is handled
    response = event_source.handler(event, lambda_context)

    # Then one message went out and both records are done
    assert response == {"batchItemFailures": []}
    assert graph.accepted == {phone(1): 1}
    assert queue_rows(pg_conn, campaign_id)[phone(1)]["status"] == "sent"


@pytest.mark.parametrize("threshold, prepared", [("none", False), ("1", True)], ids=["pooler", "default"])
def test_sender_behind_a_transaction_pooler_prepares_nothing_on_the_server(
    make_campaign, graph, pg_conn, event_source, lambda_context, monkeypatch, threshold, prepared
):
    # Given PG_PREPARE_THRESHOLD=none, as behind RDS Proxy or PgBouncer in transaction mode (a prepared
    # statement would live on a server connection the next transaction may not get); the default as control
    monkeypatch.setenv("PG_PREPARE_THRESHOLD", threshold)
    make_campaign(*[phone(i) for i in range(6)])
    handler = load_handler("sender")

    # When the sender handles several batches on its connection (the same statements again and again)
    for _ in range(6):
        messages = get_sqs_client().receive_message(QueueUrl=event_source.queue_url, MaxNumberOfMessages=1)["Messages"]
        handler(event_source.to_event(messages), lambda_context)

    # Then its connection holds no server-side prepared statement (and with the default, it does)
    count = get_conn().execute("SELECT count(*) FROM pg_prepared_statements").fetchone()[0]
    assert (count > 0) is prepared
    assert graph.accepted == {phone(i): 1 for i in range(6)}
