"""Recovery jobs end to end: reset_stuck, recompute_counters and dlq_handler, invoked with their events/ files."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from sendonce import control
from sendonce.cli import main
from sendonce.idempotency import get_dynamodb_client
from sendonce.local.event_source import queue_depth
from sendonce.local.lambda_runtime import LocalContext, load_handler
from tests.helpers import load_event, phone, queue_rows

FILE_CAMPAIGN_ID = "4d46271f-f3b4-4f5b-a2c7-6dbad447a845"


def _invoke(function: str, event_file: str) -> dict:
    return load_handler(function)(load_event(event_file), LocalContext(function))


def _age_claims(pg_conn, seconds: int) -> None:
    pg_conn.execute(
        "UPDATE send_queue SET claimed_at = now() - make_interval(secs => %s) WHERE status = 'processing'", (seconds,)
    )


def test_reset_stuck_resend_waits_then_reenqueues_once(make_campaign, graph, pg_conn, event_source, monkeypatch):
    # Given a send whose answer was lost after Meta accepted it: the row is left processing
    graph.plan(phone(1), "drop")
    campaign_id = make_campaign(phone(1), phone(2))
    event_source.run_until_empty(timeout=60)
    assert queue_rows(pg_conn, campaign_id)[phone(1)]["status"] == "processing"

    # When reset_stuck runs before STUCK_AFTER_SECONDS (600 by default) has passed
    assert _invoke("reset_stuck", "reset_stuck_schedule.json")["reset"] == 0

    # Then the row is left alone
    assert queue_rows(pg_conn, campaign_id)[phone(1)]["status"] == "processing"

    # When it has been stuck for longer, under the default policy (resend)
    _age_claims(pg_conn, 601)
    result = _invoke("reset_stuck", "reset_stuck_schedule.json")
    event_source.run_until_empty(timeout=60)

    # Then it was re-enqueued and sent once more (the resend policy accepts that risk, and counts it), and
    # nothing else
    assert result == {"reset": 1, "resent_without_evidence": 1, "recovered": 0, "failed": 0, "cancelled": 0, "enqueued": 1,
                      "started": [], "resumed": [], "released": 0}
    assert queue_rows(pg_conn, campaign_id)[phone(1)]["unconfirmed_resends"] == 1
    assert graph.accepted == {phone(1): 2, phone(2): 1}
    assert queue_rows(pg_conn, campaign_id)[phone(1)]["status"] == "sent"


def test_reset_stuck_fail_policy_marks_unconfirmed_and_sends_nothing(
    make_campaign, graph, pg_conn, event_source, monkeypatch
):
    # Given a stuck row and AMBIGUOUS_POLICY=fail (at most once)
    monkeypatch.setenv("AMBIGUOUS_POLICY", "fail")
    graph.plan(phone(1), "drop")
    campaign_id = make_campaign(phone(1))
    event_source.run_until_empty(timeout=60)
    _age_claims(pg_conn, 601)

    # When reset_stuck runs
    result = _invoke("reset_stuck", "reset_stuck_schedule.json")
    event_source.run_until_empty(timeout=60)

    # Then the row is failed as unconfirmed and was not sent again
    assert result["failed"] == 1 and result["enqueued"] == 0
    row = queue_rows(pg_conn, campaign_id)[phone(1)]
    assert (row["status"], row["last_error"]) == ("failed", "unconfirmed")
    assert graph.accepted == {phone(1): 1}


RESET_CHILD = """
import json, sys
from sendonce.local.lambda_runtime import invoke
from tests.helpers import load_event
print(json.dumps(invoke("reset_stuck", load_event("reset_stuck_schedule.json"))))
"""


def test_reset_stuck_two_runs_at_once_reset_each_row_once(make_campaign, graph, pg_conn, event_source, aws):
    # Given eight stuck rows
    numbers = [phone(i) for i in range(8)]
    for number in numbers:
        graph.plan(number, "drop")
    campaign_id = make_campaign(*numbers)
    event_source.run_until_empty(timeout=60)
    _age_claims(pg_conn, 601)

    # When two reset_stuck invocations run at the same moment, each in its own process (two Lambda environments)
    runs = [
        subprocess.Popen([sys.executable, "-c", RESET_CHILD], env=dict(os.environ), stdout=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    results = [json.loads(run.communicate(timeout=60)[0].strip().splitlines()[-1]) for run in runs]

    # Then each row was reset and enqueued exactly once between them
    assert sum(r["reset"] for r in results) == 8 and sum(r["enqueued"] for r in results) == 8
    assert queue_depth(aws.send_queue_url) == 8
    event_source.run_until_empty(timeout=60)
    assert graph.accepted == {n: 2 for n in numbers}
    assert {r["status"] for r in queue_rows(pg_conn, campaign_id).values()} == {"sent"}


def test_always_transient_row_ends_in_dlq_then_failed_with_reason(make_campaign, graph, pg_conn, event_source, aws):
    # Given a recipient for whom Meta always answers 131000 (transient)
    graph.plan(phone(1), *["error:131000"] * 10)
    campaign_id = make_campaign(phone(1), phone(2))

    # When the queue is drained: five receives, then SQS moves the message to the DLQ
    event_source.run_until_empty(timeout=90)
    assert queue_depth(aws.dlq_url) == 1
    assert queue_rows(pg_conn, campaign_id)[phone(1)]["status"] == "ready"

    # When the DLQ is fed to dlq_handler the way its event source would
    from sendonce.local.event_source import SqsEventSource

    SqsEventSource(aws.dlq_url, load_handler("dlq_handler"), function_name="dlq_handler").run_until_empty(timeout=30)

    # Then the row is failed with the reason and the last error, and the campaign can finish
    row = queue_rows(pg_conn, campaign_id)[phone(1)]
    assert row["status"] == "failed"
    assert row["last_error"].startswith("retries_exhausted: HTTP 500") and row["last_error_code"] == 131000
    assert queue_depth(aws.dlq_url) == 0
    control.recompute(pg_conn)
    assert control.status(pg_conn, campaign_id)["status"] == "completed"


def test_dlq_event_file_fails_row_and_keeps_unparseable_message(make_campaign, graph, pg_conn, capsys):
    # Given the campaign events/dlq_handler_sqs.json names (row 1), still ready
    campaign_id = make_campaign(phone(1), phone(2), campaign_id=FILE_CAMPAIGN_ID)

    # When the DLQ event file is invoked: one message for row 1, one unparseable body
    result = _invoke("dlq_handler", "dlq_handler_sqs.json")

    # Then row 1 is failed, and the broken message is kept in dead_letters and listed by the CLI
    assert result == {"records": 2, "failed": 1, "unusable": 1}
    assert queue_rows(pg_conn, campaign_id)[phone(1)]["status"] == "failed"
    assert main(["dlq", "list"]) == 0
    assert "{not json" in capsys.readouterr().out

    # And a redelivery of the same batch changes nothing and stores nothing twice
    assert _invoke("dlq_handler", "dlq_handler_sqs.json")["failed"] == 0
    assert pg_conn.execute("SELECT count(*) FROM dead_letters").fetchone()[0] == 1


def test_recompute_counters_equal_the_truth_in_fake_graph(make_campaign, graph, pg_conn, event_source):
    # Given a campaign with permanent failures, transient retries and one lost answer
    graph.plan(phone(1), "error:131026")
    graph.plan(phone(2), "error:131000", "http:502")
    graph.plan(phone(3), "drop")
    numbers = [phone(i) for i in range(1, 9)]
    campaign_id = make_campaign(*numbers)
    event_source.run_until_empty(timeout=60)

    # When the scheduled recompute runs
    _invoke("recompute_counters", "recompute_counters_schedule.json")

    # Then the stored counters are what the fake Graph accepted and refused
    totals = pg_conn.execute(
        "SELECT total_recipients, total_sent, total_failed, status FROM campaigns WHERE id = %s", (campaign_id,)
    ).fetchone()
    accepted_with_wamid = sum(graph.accepted.values()) - 1  # the dropped answer is pending, not sent
    assert totals == (8, accepted_with_wamid, 1, "running")
    assert accepted_with_wamid == 6 and not graph.duplicates()


def test_dlq_redrive_moves_messages_back_and_they_send_once(make_campaign, graph, pg_conn, event_source, aws, capsys):
    # Given a campaign whose message sits on the DLQ (dlq_handler could not settle it)
    from sendonce.sqs import get_sqs_client

    campaign_id = make_campaign(phone(1))
    sqs = get_sqs_client()
    message = sqs.receive_message(QueueUrl=aws.send_queue_url, VisibilityTimeout=60)["Messages"][0]
    sqs.send_message(QueueUrl=aws.dlq_url, MessageBody=message["Body"])
    sqs.delete_message(QueueUrl=aws.send_queue_url, ReceiptHandle=message["ReceiptHandle"])

    # When the operator redrives the DLQ and the queue is drained
    assert main(["dlq", "redrive"]) == 0
    event_source.run_until_empty(timeout=60)

    # Then the DLQ is empty and the row was sent once
    assert "moved 1 messages" in capsys.readouterr().out
    assert queue_depth(aws.dlq_url) == 0
    assert graph.accepted == {phone(1): 1}
    assert queue_rows(pg_conn, campaign_id)[phone(1)]["status"] == "sent"


def test_reset_stuck_does_not_take_an_expired_journal_entry_as_proof_of_an_unsent_claim(
    make_campaign, graph, pg_conn, event_source, aws, monkeypatch
):
    # Given a row whose answer was lost after Meta accepted it, under AMBIGUOUS_POLICY=fail, stuck so long (15
    # days: reset_stuck was down) that its claim's journal entry has expired and is gone
    monkeypatch.setenv("AMBIGUOUS_POLICY", "fail")
    graph.plan(phone(1), "drop")
    campaign_id = make_campaign(phone(1))
    event_source.run_until_empty(timeout=60)
    token = queue_rows(pg_conn, campaign_id)[phone(1)]["claim_token"]
    get_dynamodb_client().delete_item(TableName=aws.idempotency_table, Key={"id": {"S": f"sendonce#claim#{token}"}})
    _age_claims(pg_conn, 15 * 24 * 3600)

    # When reset_stuck runs
    result = _invoke("reset_stuck", "reset_stuck_schedule.json")

    # Then the missing entry proves nothing: the policy decides, and the row is not sent again
    assert result["failed"] == 1 and result["reset"] == 0
    event_source.run_until_empty(timeout=30)
    assert graph.accepted == {phone(1): 1}
    assert queue_rows(pg_conn, campaign_id)[phone(1)]["last_error"] == "unconfirmed"


def test_recompute_reports_a_running_campaign_whose_counters_stopped_moving(
    make_campaign, graph, pg_conn, event_source, capsys
):
    # Given a running campaign with rows pending, recomputed once (its progress starts now)
    campaign_id = make_campaign(phone(1), phone(2))
    assert [(c, s, stalled) for c, s, stalled in control.recompute(pg_conn) if c == campaign_id] == [
        (campaign_id, "running", False)
    ]

    # When its counters have not moved for longer than STALLED_AFTER_SECONDS (900)
    pg_conn.execute("UPDATE campaigns SET progress_at = now() - interval '16 minutes' WHERE id = %s", (campaign_id,))
    capsys.readouterr()
    assert main(["recompute", "--json"]) == 0

    # Then the recompute reports it stalled
    report = json.loads(capsys.readouterr().out)
    assert report["stalled"] == 1
    assert {c["campaign_id"]: c["stalled"] for c in report["campaigns"]}[campaign_id] is True

    # and once rows are sent its progress moves again, and it completes
    event_source.run_until_empty(timeout=30)
    assert [(c, s, stalled) for c, s, stalled in control.recompute(pg_conn) if c == campaign_id] == [
        (campaign_id, "completed", False)
    ]
