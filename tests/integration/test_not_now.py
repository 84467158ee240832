"""Meta's answers that mean "not now": each with its waiting rule, and status says so (docs/graph-errors.md)."""

from __future__ import annotations

from sendonce import control
from sendonce.cli import main
from sendonce.local.lambda_runtime import LocalContext, load_handler
from sendonce.models import QueueMessage
from tests.helpers import deliver_event, invoke_reset_stuck, phone, queue_rows, receive_event



def test_per_user_marketing_limit_waits_24_hours_without_a_message_then_tries_once_more(
    make_campaign, graph, pg_conn, event_source, aws, capsys
):
    # Given Meta's per-user marketing limit (131049) for one recipient, twice, and for another once
    graph.plan(phone(1), "error:131049", "error:131049")
    graph.plan(phone(2), "error:131049")
    campaign_id = make_campaign(phone(1), phone(2), phone(3))
    event_source.run_until_empty(timeout=60)

    # Then both wait 24 h, `ready` with no message (the queue is empty), and status says so
    rows = queue_rows(pg_conn, campaign_id)
    for number in (phone(1), phone(2)):
        assert (rows[number]["status"], rows[number]["wait_reason"]) == ("ready", "per-user marketing limit (131049)")
    assert event_source.queue_depth() == 0
    status = control.status(pg_conn, campaign_id)
    assert (status["pending"], status["sent"]) == (2, 1)
    assert [(w["reason"], w["rows"]) for w in status["waiting"]] == [("per-user marketing limit (131049)", 2)]
    assert status["not_now"] == [{"code": 131049, "status": "ready", "rows": 2,
                                  "title": control.NOT_NOW_TITLES[131049]}]
    assert main(["campaign", "status", campaign_id]) == 0
    assert "2 rows wait: per-user marketing limit (131049), until" in capsys.readouterr().out
    assert invoke_reset_stuck()["released"] == 0  # not before the 24 h
    # ... and a dead message of a waiting row (its receives ran out while it was sent) does not fail it
    waiting_row = rows[phone(2)]
    dead = {"Records": [{"messageId": "dead-1", "receiptHandle": "r", "attributes": {"ApproximateReceiveCount": "6"},
                         "body": QueueMessage(waiting_row["id"], campaign_id, waiting_row["enqueue_id"] or "x").body()}]}
    assert load_handler("dlq_handler")(dead, LocalContext("dlq_handler")) is not None
    assert queue_rows(pg_conn, campaign_id)[phone(2)]["status"] == "ready"
    # ... and rows that wait are no stall, however long the counters stay still
    pg_conn.execute("UPDATE campaigns SET progress_at = now() - interval '2 hours'")
    assert control.recompute(pg_conn, campaign_id) == [(campaign_id, "running", False)]

    # When the 24 h are over (moved into the past) and the schedule runs
    pg_conn.execute("UPDATE send_queue SET wait_until = now() - interval '1 second' WHERE wait_until IS NOT NULL")
    assert invoke_reset_stuck()["released"] == 2

    # (pending rows that no longer wait are a stall, once the counters stayed still long enough)
    pg_conn.execute("UPDATE campaigns SET progress_at = now() - interval '2 hours'")
    assert control.recompute(pg_conn, campaign_id) == [(campaign_id, "running", True)]
    event_source.run_until_empty(timeout=60)

    # Then the one Meta took now is sent; the one refused again is failed, not retried a third time
    rows = queue_rows(pg_conn, campaign_id)
    assert {n: r["status"] for n, r in rows.items()} == {phone(1): "failed", phone(2): "sent", phone(3): "sent"}
    assert rows[phone(1)]["last_error_code"] == 131049
    assert graph.accepted == {phone(2): 1, phone(3): 1}
    assert sum(1 for r in graph.requests if r["to"] == phone(1)) == 2


def test_spam_rate_limit_pauses_the_campaign_for_the_pause_then_auto_resume_finishes_it(
    graph, pg_conn, aws, event_source, monkeypatch
):
    import uuid

    from sendonce.campaigns import NewCampaign, create_campaign
    from sendonce.contacts import Contact, ContactList

    # Given an auto-resume campaign, and the number hitting Meta's spam rate limit (131048) on its first send
    monkeypatch.setenv("SPAM_PAUSE_SECONDS", "120")
    new = NewCampaign("spam", "order_update", "en_US", "106540352242922", id=str(uuid.uuid4()), auto_resume=True)
    contacts = ContactList(contacts=[Contact(phone(i), ("x",)) for i in range(5)])
    for i in range(5):
        graph.plan(phone(i), "error:131048")
    campaign_id = create_campaign(pg_conn, new, contacts, aws.send_queue_url).campaign_id
    event_source.run_until_empty(timeout=60)

    # Then it is paused by the spam limit for 120 s, nothing was sent, nothing failed
    status = control.status(pg_conn, campaign_id)
    assert (status["status"], status["paused_by"], status["failed"], status["pending"]) == ("paused", "spam_limit", 0, 5)
    assert "131048" in status["pause_reason"]
    assert invoke_reset_stuck()["resumed"] == []

    # When the pause is over (moved into the past), the schedule resumes it and it finishes, each once
    pg_conn.execute("UPDATE campaigns SET paused_until = now() - interval '1 second' WHERE id = %s", (campaign_id,))
    graph.reset()
    assert invoke_reset_stuck()["resumed"] == [campaign_id]
    event_source.run_until_empty(timeout=60)
    assert graph.accepted == {phone(i): 1 for i in range(5)}


def test_experiment_answer_fails_and_retry_failed_never_resends_it(make_campaign, graph, pg_conn, event_source, aws):
    graph.plan(phone(1), "error:130472")
    campaign_id = make_campaign(phone(1), phone(2))
    event_source.run_until_empty(timeout=60)

    assert queue_rows(pg_conn, campaign_id)[phone(1)]["status"] == "failed"
    assert control.status(pg_conn, campaign_id)["not_now"][0]["code"] == 130472
    assert control.retry_failed(pg_conn, campaign_id, aws.send_queue_url)["rows_retried"] == 0
    event_source.run_until_empty(timeout=60)
    assert sum(1 for r in graph.requests if r["to"] == phone(1)) == 1


def test_a_wait_kept_in_the_batch_journal_still_waits_24_hours(make_campaign, graph, pg_conn, pg_proxy, event_source):
    # Given a 131049 answer whose result PostgreSQL never took (unreachable from the finalize on): the journal has it
    graph.plan(phone(1), "error:131049")
    campaign_id = make_campaign(phone(1), phone(2))
    event = receive_event(event_source, 2)
    pg_proxy.inject(at=2, when="before", outage=True)
    assert deliver_event(event, timeout=8) == set()
    assert {r["status"] for r in queue_rows(pg_conn, campaign_id).values()} == {"processing"}

    # When PostgreSQL is back and reset_stuck writes the journal's results
    pg_proxy.heal()
    pg_conn.execute("UPDATE send_queue SET claimed_at = claimed_at - interval '601 seconds'")
    result = invoke_reset_stuck()

    # Then the row waits its 24 h without a message (not resent at once), and the other is sent
    assert (result["recovered"], result["enqueued"]) == (2, 0)
    row = queue_rows(pg_conn, campaign_id)[phone(1)]
    assert (row["status"], row["wait_reason"]) == ("ready", "per-user marketing limit (131049)")
    assert event_source.queue_depth() == 0
    assert sum(1 for r in graph.requests if r["to"] == phone(1)) == 1
