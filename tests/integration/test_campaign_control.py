"""Campaign control from the CLI and the HTTP API: status, pause, resume, cancel, retry-failed.

Sends go through the real sender handler, fed by the local SQS event source, to the fake Graph server.
"""

from __future__ import annotations

import json
import threading
import time

import boto3
import pytest

from sendonce import control
from sendonce.cli import main
from sendonce.local.event_source import queue_depth
from sendonce.local.lambda_runtime import LocalContext, load_handler
from sendonce.sqs import get_sqs_client
from tests.helpers import load_event, phone, queue_rows

FILE_CAMPAIGN_ID = "4d46271f-f3b4-4f5b-a2c7-6dbad447a845"


def _cli_json(capsys, *args: str) -> dict:
    assert main([*args, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def _api(event: dict) -> tuple[int, dict]:
    response = load_handler("campaigns_api")(event, LocalContext("campaigns_api"))
    return response["statusCode"], json.loads(response["body"])


def _api_call(method: str, path: str, body: str | None = None) -> tuple[int, dict]:
    event = load_event("campaigns_api_list.json")
    event.update(rawPath=path, routeKey=f"{method} {path}", body=body)
    event["requestContext"]["http"].update(method=method, path=path)
    return _api(event)


def _receive(queue_url: str, count: int) -> list[dict]:
    messages: list[dict] = []
    while len(messages) < count:
        answer = get_sqs_client().receive_message(
            QueueUrl=queue_url, MaxNumberOfMessages=count - len(messages), VisibilityTimeout=60
        )
        messages += answer.get("Messages", [])
    return messages


def _nothing_written(pg_conn) -> bool:
    return pg_conn.execute("SELECT count(*) FROM campaigns").fetchone()[0] == 0


def test_pause_holds_and_resume_sends_each_once(make_campaign, graph, pg_conn, event_source, aws, capsys):
    # Given a running campaign of three, paused from the CLI before any message is handled (a visibility
    # timeout long enough that no message comes back while its batch is still being handled)
    get_sqs_client().set_queue_attributes(QueueUrl=aws.send_queue_url, Attributes={"VisibilityTimeout": "30"})
    numbers = [phone(i) for i in range(3)]
    campaign_id = make_campaign(*numbers)
    paused = _cli_json(capsys, "campaign", "pause", campaign_id)
    assert (paused["status"], paused["pause_reason"]) == ("paused", "paused by operator")

    # When the queue is drained while paused
    event_source.run_until_empty(timeout=60)

    # Then nothing was sent, the rows are still ready with no attempt used, and the messages were acknowledged
    # (no retry burnt, nothing in the DLQ)
    assert graph.accepted == {}
    rows = queue_rows(pg_conn, campaign_id)
    assert {(r["status"], r["attempts"]) for r in rows.values()} == {("ready", 0)}
    assert event_source.stats.failures == 0 and queue_depth(aws.dlq_url) == 0

    # When resumed from the CLI and drained again
    resumed = _cli_json(capsys, "campaign", "resume", campaign_id)
    event_source.run_until_empty(timeout=60)

    # Then every recipient got exactly one message
    assert resumed["status"] == "running" and resumed["enqueued"] == 3
    assert graph.accepted == {n: 1 for n in numbers}
    assert control.status(pg_conn, campaign_id)["sent"] == 3


def test_cancel_stops_pending_and_counts_sends_in_flight(make_campaign, graph, pg_conn, event_source, aws, capsys):
    # Given four rows, two of them being sent right now (Meta answers after 1 s)
    numbers = [phone(i) for i in range(4)]
    campaign_id = make_campaign(*numbers)
    graph.latency = 1.0
    in_flight = _receive(aws.send_queue_url, 2)
    sender = threading.Thread(target=event_source.deliver, args=(in_flight,))
    sender.start()
    deadline = time.monotonic() + 10
    while sum(r["status"] == "processing" for r in queue_rows(pg_conn, campaign_id).values()) < 2:
        assert time.monotonic() < deadline, "the two sends never started"
        time.sleep(0.05)

    # When the campaign is cancelled from the CLI
    cancelled = _cli_json(capsys, "campaign", "cancel", campaign_id)
    sender.join()
    graph.latency = 0
    event_source.run_until_empty(timeout=60)

    # Then the two pending rows were cancelled, the two in flight finished and count as sent, nothing else went
    assert cancelled["rows_cancelled"] == 2
    assert sum(graph.accepted.values()) == 2
    counters = control.status(pg_conn, campaign_id)
    assert (counters["status"], counters["sent"], counters["cancelled"], counters["pending"]) == ("cancelled", 2, 2, 0)

    # And a cancelled campaign can be neither resumed nor retried
    assert main(["campaign", "resume", campaign_id]) == 2
    assert "it is cancelled" in capsys.readouterr().err


def test_retry_failed_resends_only_retryable_failures(make_campaign, graph, pg_conn, event_source, capsys):
    # Given failures of every kind: not on WhatsApp (131026), opted out (131050), marketing limit (131049)
    # just now and 25 h ago, a failed row that has a WAMID, and a row that was sent
    graph.plan(phone(1), "error:131026")
    graph.plan(phone(2), "error:131050")
    graph.plan(phone(3), "error:131049")
    graph.plan(phone(4), "error:131049")
    graph.plan(phone(5), "error:131026")
    campaign_id = make_campaign(*(phone(i) for i in range(1, 7)))
    event_source.run_until_empty(timeout=60)
    # (a first 131049 makes the row wait 24 h; the second fails it: here as if it came just now and 25 h ago)
    waits = pg_conn.execute(
        "SELECT status, wait_reason, wait_until > now() + interval '23 hours' FROM send_queue WHERE phone_number = %s",
        (phone(3),),
    ).fetchone()
    assert waits == ("ready", "per-user marketing limit (131049)", True)
    pg_conn.execute(
        "UPDATE send_queue SET status = 'failed', wait_until = NULL, wait_reason = NULL, finished_at = now() "
        "WHERE phone_number = ANY(%s)", ([phone(3), phone(4)],),
    )
    pg_conn.execute(
        "UPDATE send_queue SET finished_at = now() - interval '25 hours' WHERE phone_number = %s", (phone(4),)
    )
    pg_conn.execute(
        "UPDATE send_queue SET whatsapp_message_id = 'wamid.OLD' WHERE phone_number = %s", (phone(5),)
    )
    assert main(["campaign", "status", campaign_id]) == 0  # the readable table works
    assert "failed" in capsys.readouterr().out

    # When retry-failed runs from the CLI and the queue is drained
    retried = _cli_json(capsys, "campaign", "retry-failed", campaign_id)
    event_source.run_until_empty(timeout=60)

    # Then only 131026 and the old 131049 were sent again; nothing already sent went twice
    assert retried["rows_retried"] == 2
    assert graph.accepted == {phone(1): 1, phone(4): 1, phone(6): 1}
    rows = queue_rows(pg_conn, campaign_id)
    assert {n: rows[n]["status"] for n in rows} == {
        phone(1): "sent", phone(2): "failed", phone(3): "failed", phone(4): "sent", phone(5): "failed", phone(6): "sent"
    }


def test_status_numbers_identical_from_cli_api_and_campaigns_row(make_campaign, graph, pg_conn, event_source, capsys):
    # Given a campaign with sent, failed, pending (answer lost) and, after a cancel, cancelled rows
    graph.plan(phone(1), "error:131026")
    graph.plan(phone(2), "drop")
    campaign_id = make_campaign(*(phone(i) for i in range(1, 6)))
    event_source.run_until_empty(timeout=60)
    pg_conn.execute("UPDATE send_queue SET delivery_status = 'read' WHERE phone_number = %s", (phone(3),))
    pg_conn.execute("UPDATE send_queue SET delivery_status = 'delivered' WHERE phone_number = %s", (phone(4),))

    # When the numbers are read from the CLI, the API, and the campaigns row after recompute
    cli = _cli_json(capsys, "campaign", "status", campaign_id)
    code, api = _api_call("GET", f"/campaigns/{campaign_id}")
    control.recompute(pg_conn)
    from sendonce.repository.control import stored_totals

    stored = stored_totals(pg_conn, campaign_id)

    # Then they agree, and they are the truth
    keys = ("recipients", "sent", "delivered", "read", "failed", "cancelled", "status")
    assert code == 200
    assert {k: cli[k] for k in keys} == {k: api[k] for k in keys} == {k: stored[k] for k in keys}
    assert (cli["recipients"], cli["pending"], cli["sent"], cli["delivered"], cli["read"], cli["failed"]) == (5, 1, 3, 2, 1, 1)
    assert cli["sent"] + cli["pending"] == sum(graph.accepted.values())
    listed = [c for c in _cli_json(capsys, "campaign", "list") if c["campaign_id"] == campaign_id]
    # (the list carries the counters; status adds what Meta's limits do to the campaign)
    assert listed == [{key: cli[key] for key in listed[0]}]


def test_recompute_completes_campaign_with_nothing_pending(make_campaign, graph, pg_conn, event_source):
    # Given a campaign whose rows are all sent
    campaign_id = make_campaign(phone(1), phone(2))
    event_source.run_until_empty(timeout=60)

    # When counters are recomputed
    control.recompute(pg_conn)

    # Then it is completed, with its totals stored
    counters = control.status(pg_conn, campaign_id)
    assert counters["status"] == "completed" and counters["completed_at"]


def test_api_event_files_drive_a_campaign(pg_conn, aws, graph, event_source):
    # Given the events/ files for every route (campaign id 4d46271f-...)
    def call(name: str) -> tuple[int, dict]:
        return _api(load_event(f"campaigns_api_{name}.json"))

    # When the campaign is created from events/campaigns_api_create.json
    code, created = call("create")

    # Then it holds the two valid, distinct numbers of the four given
    assert code == 201
    assert (created["campaign_id"], created["recipients"], created["invalid"], created["duplicates"]) == (
        FILE_CAMPAIGN_ID, 2, 1, 1
    )

    # And every other route answers for it
    assert call("get")[1]["recipients"] == 2
    assert [c["campaign_id"] for c in call("list")[1]["campaigns"]] == [FILE_CAMPAIGN_ID]
    assert call("pause")[1]["status"] == "paused"
    event_source.run_until_empty(timeout=60)
    assert graph.accepted == {}
    code, resumed = call("resume")
    assert (code, resumed["status"], resumed["enqueued"]) == (200, "running", 2)
    event_source.run_until_empty(timeout=60)
    assert graph.accepted == {"919741771659": 1, "919876543210": 1}
    assert call("retry_failed")[1]["rows_retried"] == 0
    code, cancelled = call("cancel")
    assert (code, cancelled["status"], cancelled["sent"]) == (200, "cancelled", 2)
    # the same create again (a client retrying after a lost answer): answered from what exists, nothing sent
    code, again = call("create")
    assert (code, again["replayed"], again["enqueued"]) == (200, True, 0)
    assert graph.accepted == {"919741771659": 1, "919876543210": 1}


def test_api_create_from_s3_runs_asynchronously(pg_conn, aws, graph, contacts_bucket, lambda_service, event_source):
    # Given a contacts CSV uploaded to the contacts bucket at the key events/campaigns_api_create_s3.json names
    rows = ["phone,param1"] + [f"{phone(i)},Name {i}" for i in range(25)] + ["+91 98765 40001,dup", "123,bad"]
    boto3.client("s3").put_object(Bucket=contacts_bucket, Key="uploads/diwali.csv", Body="\n".join(rows).encode())

    # When the event is posted
    code, accepted = _api(load_event("campaigns_api_create_s3.json"))

    # Then the API answers 202 with the id at once, and the asynchronous job creates and enqueues it
    assert code == 202 and accepted["status"] == "creating"
    lambda_service.wait()
    assert lambda_service.errors == []
    counters = control.status(pg_conn, accepted["campaign_id"])
    assert counters["recipients"] == 25
    event_source.run_until_empty(timeout=60)
    assert sum(graph.accepted.values()) == 25 and not graph.duplicates()


@pytest.mark.parametrize(
    ("method", "path", "body", "status", "message"),
    [
        ("POST", "/campaigns", "{not json", 400, "not valid JSON"),
        ("POST", "/campaigns", "[]", 400, "JSON object"),
        ("POST", "/campaigns", json.dumps({"name": "x"}), 400, "missing"),
        ("POST", "/campaigns", None, 400, "not valid JSON"),
        ("GET", "/campaigns/4d46271f-f3b4-4f5b-a2c7-6dbad447a845", None, 404, "no campaign"),
        ("GET", "/campaigns/not-a-uuid", None, 404, "no campaign"),
        ("POST", "/campaigns/4d46271f-f3b4-4f5b-a2c7-6dbad447a845/pause", None, 404, "no campaign"),
        ("POST", "/campaigns/4d46271f-f3b4-4f5b-a2c7-6dbad447a845/resume", None, 404, "no campaign"),
        ("DELETE", "/campaigns", None, 404, "no such route"),
    ],
)
def test_api_bad_requests_get_clear_json_errors(pg_conn, aws, method, path, body, status, message):
    code, answer = _api_call(method, path, body)
    assert code == status and message in answer["error"]["message"]
    assert _nothing_written(pg_conn)


FIELDS = {"name": "n", "template": "t", "language": "en_US", "phone_number_id": "1065"}


@pytest.mark.parametrize(
    ("body", "status", "message"),
    [
        ({**FIELDS, "contacts": []}, 400, "non-empty list"),
        ({**FIELDS, "contacts": ["123", "abc"]}, 400, "no valid contacts"),
        ({**FIELDS}, 400, "exactly one of"),
        ({**FIELDS, "template": "Bad Name", "contacts": ["919741771659"]}, 400, "--template"),
        ({**FIELDS, "contacts_s3": {"bucket": "someone-else", "key": "a.csv"}}, 400, "contacts bucket"),
        ({**FIELDS, "contacts_s3": {"bucket": "sendonce-contacts-123456789012", "key": "missing.csv"}}, 400, "cannot read"),
        ({**FIELDS, "contacts_s3": {"bucket": "sendonce-contacts-123456789012", "key": "no-phone.csv"}}, 400, "no 'phone' column"),
        ({**FIELDS, "contacts": [{"phone": "919741771659", "params": ["x" * 1024]}] * 6000}, 413, "contacts_s3"),
    ],
    ids=["empty-list", "no-valid-contact", "no-contacts", "bad-template", "foreign-bucket", "missing-file", "no-phone-column", "over-limit"],
)
def test_api_create_bad_input_writes_nothing(pg_conn, aws, contacts_bucket, lambda_service, body, status, message):
    # Given an S3 file without a phone column next to the good bucket
    boto3.client("s3").put_object(Bucket=contacts_bucket, Key="no-phone.csv", Body=b"name\nAsha\n")

    # When posting the body
    code, answer = _api_call("POST", "/campaigns", json.dumps(body))

    # Then a clear error with the right status, and nothing written or started
    assert code == status, answer
    assert message in answer["error"]["message"]
    lambda_service.wait()
    assert _nothing_written(pg_conn) and queue_depth(aws.send_queue_url) == 0
