"""The ten ways a fault-injection review broke exactly-once, each reproduced end to end.

Real PostgreSQL (through a fault-injecting proxy where a connection must drop), moto's SQS and DynamoDB, the
fake Graph server counting what Meta accepted per recipient.
"""

from __future__ import annotations

import json
import threading

import psycopg
import pytest

from sendonce import control
from sendonce.callback import sign
from sendonce.cli import main
from sendonce.config import get_settings
from sendonce.errors import ConfigError
from sendonce.local.event_source import SqsEventSource, queue_depth
from sendonce.local.lambda_runtime import LocalContext, load_handler
from sendonce.sqs import get_sqs_client
from tests.helpers import (
    WEBHOOK_SECRET,
    callback_sent_to,
    deliver_event,
    load_event,
    phone,
    post_statuses,
    queue_rows,
    receive_event,
    status_update,
)

# A short invocation, so that running out the claim's window takes seconds, not the 30 s of the stack's sender.
SHORT = 8


def _reset_stuck_after_window(pg_conn) -> dict:
    """Let every claim age past STUCK_AFTER_SECONDS (600), then run reset_stuck as its schedule would."""
    pg_conn.execute("UPDATE send_queue SET claimed_at = claimed_at - interval '601 seconds' WHERE status = 'processing'")
    return load_handler("reset_stuck")(load_event("reset_stuck_schedule.json"), LocalContext("reset_stuck"))


def _wamids(pg_conn, campaign_id: str) -> dict[str, str | None]:
    return {number: row["whatsapp_message_id"] for number, row in queue_rows(pg_conn, campaign_id).items()}


@pytest.fixture
def webhook_secret(monkeypatch):
    monkeypatch.setenv("WHATSAPP_APP_SECRET", WEBHOOK_SECRET)


# 1. The incident by another road: the finalize's connection is lost after Meta accepted the batch.


def test_finalize_connection_killed_after_meta_accepted_ends_sent_without_webhook(
    make_campaign, graph, pg_conn, event_source
):
    # Given a batch of five whose sender's PostgreSQL connection is killed while Meta takes the last send
    numbers = [phone(i) for i in range(5)]
    campaign_id = make_campaign(*numbers)
    event = receive_event(event_source, 5)
    requests, lock = [], threading.Lock()

    def kill_sender_connection(to: str) -> None:
        with lock:
            requests.append(to)
            if len(requests) == 5:
                pg_conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = 'sendonce'")

    graph.on_request = kill_sender_connection

    # When the batch is handled
    failed = deliver_event(event)

    # Then every row is sent with the WAMID Meta gave, no webhook needed, and nothing is retried
    assert failed == set()
    assert _wamids(pg_conn, campaign_id) == {n: graph.wamids[n][0] for n in numbers}
    assert {r["status"] for r in queue_rows(pg_conn, campaign_id).values()} == {"sent"}

    # And neither a redelivery nor reset_stuck nor draining the queue sends anything again
    graph.on_request = None
    assert deliver_event(event) == set()
    assert _reset_stuck_after_window(pg_conn)["reset"] == 0
    event_source.run_until_empty(timeout=30)
    assert graph.accepted == {n: 1 for n in numbers}


@pytest.mark.parametrize("policy", ["resend", "fail"])
def test_database_unreachable_until_the_window_closes_keeps_wamids_for_reset_stuck(
    make_campaign, graph, pg_conn, pg_proxy, event_source, monkeypatch, policy
):
    # Given a batch of three, and PostgreSQL unreachable from the moment the sender finalizes until it gives up
    monkeypatch.setenv("AMBIGUOUS_POLICY", policy)
    numbers = [phone(i) for i in range(3)]
    campaign_id = make_campaign(*numbers)
    event = receive_event(event_source, 3)
    pg_proxy.inject(at=2, when="before", outage=True)

    # When the batch is handled
    failed = deliver_event(event, timeout=SHORT)

    # Then Meta took every send, the finalize was the statement cut, and the results went to the batch journal
    # (the records are done: a redelivery could not know more than the journal does)
    assert pg_proxy.fired.sql.lstrip().startswith("WITH result AS")  # the finalize
    assert failed == set() and graph.accepted == {n: 1 for n in numbers}
    assert {r["status"] for r in queue_rows(pg_conn, campaign_id).values()} == {"processing"}

    # When PostgreSQL is back and reset_stuck runs once the rows are past their window
    pg_proxy.heal()
    result = _reset_stuck_after_window(pg_conn)
    event_source.run_until_empty(timeout=30)

    # Then the rows are sent with Meta's WAMIDs from the journal, whatever the policy; nobody got it twice
    assert (result["recovered"], result["reset"], result["resent_without_evidence"], result["failed"]) == (3, 0, 0, 0)
    assert _wamids(pg_conn, campaign_id) == {n: graph.wamids[n][0] for n in numbers}
    assert graph.accepted == {n: 1 for n in numbers}
    assert control.status(pg_conn, campaign_id)["sent"] == 3


# 2. The claim commits but its reply is lost.


@pytest.mark.parametrize("outage", [False, True], ids=["connection-lost", "database-unreachable"])
def test_claim_reply_lost_releases_the_rows_and_nothing_is_lost(
    make_campaign, graph, pg_conn, pg_proxy, event_source, monkeypatch, outage
):
    # Given AMBIGUOUS_POLICY=fail (which used to lose such rows) and a claim whose reply never arrives
    monkeypatch.setenv("AMBIGUOUS_POLICY", "fail")
    numbers = [phone(i) for i in range(3)]
    campaign_id = make_campaign(*numbers)
    event = receive_event(event_source, 3)
    pg_proxy.inject(at=1, when="after_send", outage=outage)

    # When the batch is handled
    failed = deliver_event(event, timeout=SHORT)

    # Then nothing was sent and every record is retried
    assert pg_proxy.fired.sql.lstrip().startswith("WITH requested AS")
    assert failed == {r["messageId"] for r in event["Records"]} and graph.accepted == {}
    rows = queue_rows(pg_conn, campaign_id).values()
    if outage:
        # (the release could not reach PostgreSQL either: the rows wait, claimed; the journal keeps them unsent)
        assert {r["status"] for r in rows} == {"processing"}
    else:
        assert {(r["status"], r["attempts"]) for r in rows} == {("ready", 0)}

    # When PostgreSQL is back, SQS redelivers the batch, and reset_stuck runs once the rows are past their window
    pg_proxy.heal()
    event_source.run_until_empty(timeout=30)
    result = _reset_stuck_after_window(pg_conn)
    event_source.run_until_empty(timeout=30)

    # Then every row is sent exactly once; none was failed as unconfirmed or resent blindly
    assert (result["failed"], result["resent_without_evidence"]) == (0, 0)
    assert graph.accepted == {n: 1 for n in numbers}
    assert {r["status"] for r in queue_rows(pg_conn, campaign_id).values()} == {"sent"}


# 3. Send slots reserved for rows that were deferred were never given back: the schedule ran away.


def test_four_senders_at_five_per_second_keep_the_schedule_within_the_slot_wait(
    make_campaign, graph, pg_conn, event_source, aws, monkeypatch, database_url
):
    # Given 60 rows, a limit of 5 messages/s, MAX_SLOT_WAIT_SECONDS=2 and four senders: each batch of 10 wants
    # 2 s of the schedule, four at once want 8 s; a Graph that throttles past twice the limit
    monkeypatch.setenv("WHATSAPP_MAX_MPS", "5")
    monkeypatch.setenv("MAX_SLOT_WAIT_SECONDS", "2")
    get_sqs_client().set_queue_attributes(QueueUrl=aws.send_queue_url, Attributes={"VisibilityTimeout": "30"})
    graph.throttle_mps = 10
    numbers = [phone(i) for i in range(60)]
    campaign_id = make_campaign(*numbers)
    watcher = psycopg.connect(database_url, autocommit=True)
    ahead: list[float] = []
    lock = threading.Lock()

    def watch_schedule(to: str) -> None:
        with lock:
            ahead.append(watcher.execute("SELECT extract(epoch FROM max(next_slot_at) - now()) FROM rate_limits").fetchone()[0])

    graph.on_request = watch_schedule

    # When four senders drain the queue
    event_source.concurrency = 4
    event_source.run_until_empty(timeout=120)
    watcher.close()

    # Then everyone got exactly one message, Meta never throttled, and the shared schedule never ran more than
    # MAX_SLOT_WAIT_SECONDS ahead (the old claim booked all four batches: 8 s ahead, then ran away for good)
    sent_at = sorted(graph.accepted_at)
    print(f"60 sends in {sent_at[-1] - sent_at[0]:.1f} s: {59 / (sent_at[-1] - sent_at[0]):.2f} msg/s against 5; "
          f"schedule at most {max(ahead):.2f} s ahead")
    assert graph.accepted == {n: 1 for n in numbers} and graph.throttled == 0
    assert max(ahead) <= 2.0 + 0.2
    assert {r["status"] for r in queue_rows(pg_conn, campaign_id).values()} == {"sent"}


def test_slots_of_rows_not_sent_are_given_back(make_campaign, graph, pg_conn, event_source, monkeypatch):
    # Given a schedule booked 4 s ahead and an invocation of 8 s: with 2 s kept for the journal, 3 s for the
    # finalize and the Graph timeout (2 s), a send must start within 1 s of the claim; the row's slot is at 4 s
    pg_conn.execute(
        "INSERT INTO rate_limits (phone_number_id, next_slot_at) VALUES ('106540352242922', now() + interval '4 s')"
    )
    campaign_id = make_campaign(phone(1))
    event = receive_event(event_source, 1)
    booked = pg_conn.execute("SELECT next_slot_at FROM rate_limits").fetchone()[0]

    # When the sender claims it
    failed = deliver_event(event, timeout=SHORT)

    # Then it does not send after the moment its claim's window allows: it releases the row (the record is
    # retried) and gives its slot back
    assert failed == {event["Records"][0]["messageId"]} and graph.requests == []
    row = queue_rows(pg_conn, campaign_id)[phone(1)]
    assert (row["status"], row["attempts"]) == ("ready", 0)
    assert pg_conn.execute("SELECT next_slot_at FROM rate_limits").fetchone()[0] == booked


def test_row_without_a_slot_soon_is_not_claimed_and_comes_back_with_its_place_in_line(
    make_campaign, graph, pg_conn, event_source, monkeypatch
):
    # Given a schedule booked 5 s ahead and MAX_SLOT_WAIT_SECONDS=2
    monkeypatch.setenv("MAX_SLOT_WAIT_SECONDS", "2")
    pg_conn.execute(
        "INSERT INTO rate_limits (phone_number_id, next_slot_at) VALUES ('106540352242922', now() + interval '5 s')"
    )
    campaign_id = make_campaign(phone(1))
    event = receive_event(event_source, 1)
    first = json.loads(event["Records"][0]["body"])

    # When the sender gets its message
    failed = deliver_event(event, timeout=SHORT)

    # Then nothing is sent or claimed, no slot is booked for it, and the message is done: a delayed copy of it
    # (the same enqueue, with the row's place in the line of deferred rows) is on the queue instead
    assert failed == set() and graph.requests == []
    row = queue_rows(pg_conn, campaign_id)[phone(1)]
    assert (row["status"], row["attempts"]) == ("ready", 0)
    assert pg_conn.execute("SELECT next_slot_at - now() < interval '5 s' FROM rate_limits").fetchone()[0]
    copy = receive_event(event_source, 1)
    body = json.loads(copy["Records"][0]["body"])
    assert body["enqueue_id"] == first["enqueue_id"] and body["line_at"] > 0

    # and the copy, once the schedule has room, sends the row once
    assert deliver_event(copy, timeout=SHORT) == set()
    assert graph.accepted == {phone(1): 1}
    assert queue_rows(pg_conn, campaign_id)[phone(1)]["status"] == "sent"


def test_deferral_that_sqs_refuses_leaves_the_row_ready_and_its_message_retried(
    make_campaign, graph, pg_conn, event_source, monkeypatch
):
    # Given a row Meta throttles (130429: the row is deferred with a delayed copy of its message), and a send
    # queue URL that SQS does not know
    graph.plan(phone(1), "error:130429")
    campaign_id = make_campaign(phone(1))
    event = receive_event(event_source, 1)
    monkeypatch.setenv("SEND_QUEUE_URL", event_source.queue_url + "-gone")
    get_settings.cache_clear()

    # When the sender handles the message
    failed = deliver_event(event, timeout=SHORT)

    # Then the message itself is retried (its record failed), and the row is `ready` for it, not stranded in
    # `processing` or left `ready` with no message
    assert failed == {event["Records"][0]["messageId"]}
    row = queue_rows(pg_conn, campaign_id)[phone(1)]
    assert (row["status"], row["last_error_code"]) == ("ready", 130429)
    monkeypatch.setenv("SEND_QUEUE_URL", event_source.queue_url)
    get_settings.cache_clear()
    event_source.run_until_empty(timeout=30)
    assert graph.accepted == {phone(1): 1}


# 4. retry-failed skipped rows without an error code, and resent `unconfirmed` rows.


def test_retry_failed_retries_rows_without_code_and_leaves_unconfirmed_rows_alone(
    make_campaign, graph, pg_conn, event_source, aws, monkeypatch, capsys
):
    # Given a row failed with no error code (a bare 502 five times, then the DLQ) and a row failed as
    # `unconfirmed` (its answer was lost; AMBIGUOUS_POLICY=fail), next to a sent one
    monkeypatch.setenv("AMBIGUOUS_POLICY", "fail")
    graph.plan(phone(1), *["http:502"] * 5)
    graph.plan(phone(2), "drop")
    campaign_id = make_campaign(phone(1), phone(2), phone(3))
    event_source.run_until_empty(timeout=60)
    SqsEventSource(aws.dlq_url, load_handler("dlq_handler"), function_name="dlq_handler").run_until_empty(timeout=30)
    _reset_stuck_after_window(pg_conn)
    rows = queue_rows(pg_conn, campaign_id)
    assert (rows[phone(1)]["status"], rows[phone(1)]["last_error_code"]) == ("failed", None)
    assert (rows[phone(2)]["status"], rows[phone(2)]["last_error"]) == ("failed", "unconfirmed")

    # When retry-failed runs and the queue is drained
    capsys.readouterr()  # only the command's own output
    assert main(["campaign", "retry-failed", campaign_id, "--json"]) == 0
    retried = json.loads(capsys.readouterr().out)
    event_source.run_until_empty(timeout=60)

    # Then the row without a code was sent; the unconfirmed one was not resent, and the answer says so
    assert (retried["rows_retried"], retried["unconfirmed_not_retried"]) == (1, 1)
    assert graph.accepted == {phone(1): 1, phone(2): 1, phone(3): 1}
    assert queue_rows(pg_conn, campaign_id)[phone(2)]["status"] == "failed"

    # When the operator asks for the unconfirmed rows too, knowing what it risks
    assert main(["campaign", "retry-failed", campaign_id, "--include-unconfirmed", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["rows_retried"] == 1
    event_source.run_until_empty(timeout=60)

    # Then it is sent again (this recipient may now have it twice: the risk the flag names)
    assert graph.accepted[phone(2)] == 2
    assert queue_rows(pg_conn, campaign_id)[phone(2)]["status"] == "sent"


# 5. The DLQ handler failed rows that a newer message had just been enqueued for.


def test_dead_message_superseded_by_a_newer_enqueue_does_not_fail_the_row(
    make_campaign, graph, pg_conn, event_source, aws
):
    # Given a message whose five receives all met a transient error: it waits on the DLQ, its row `ready`
    graph.plan(phone(1), *["error:131000"] * 5)
    campaign_id = make_campaign(phone(1))
    event_source.run_until_empty(timeout=60)
    assert queue_depth(aws.dlq_url) == 1

    # When the operator re-enqueues the campaign before dlq_handler handles the dead message
    assert main(["campaign", "enqueue", campaign_id]) == 0
    SqsEventSource(aws.dlq_url, load_handler("dlq_handler"), function_name="dlq_handler").run_until_empty(timeout=30)

    # Then the row is left to the new message, which sends it once
    assert queue_rows(pg_conn, campaign_id)[phone(1)]["status"] == "ready"
    event_source.run_until_empty(timeout=60)
    assert graph.accepted == {phone(1): 1}
    assert queue_rows(pg_conn, campaign_id)[phone(1)]["status"] == "sent"


# 6. A signed status of a message this stack never sent marked a `ready` row `sent`.


def test_status_of_a_message_this_stack_never_sent_reconciles_nothing(
    make_campaign, graph, pg_conn, event_source, webhook_secret
):
    # Given two rows waiting to be sent
    campaign_id = make_campaign(phone(1), phone(2))
    rows = queue_rows(pg_conn, campaign_id)
    key = pg_conn.execute("SELECT callback_key FROM deployment").fetchone()[0]

    # When signed statuses arrive naming them in ways this deployment never wrote: a bare row id (another tool),
    # another deployment's signed data (staging on the same app), this deployment's data with another recipient
    assert post_statuses([
        status_update("wamid.A", "sent", 100, str(rows[phone(1)]["id"]), to=phone(1)),
        status_update("wamid.B", "sent", 100, sign("another-key", campaign_id, rows[phone(1)]["id"]), to=phone(1)),
        status_update("wamid.C", "sent", 100, sign(key, campaign_id, rows[phone(2)]["id"]), to="919999999999"),
    ])["statusCode"] == 200

    # Then no row was marked sent: both are still sent, once each, with their own WAMIDs; the statuses are kept
    assert {r["status"] for r in queue_rows(pg_conn, campaign_id).values()} == {"ready"}
    event_source.run_until_empty(timeout=30)
    assert graph.accepted == {phone(1): 1, phone(2): 1}
    assert _wamids(pg_conn, campaign_id) == {phone(1): graph.wamids[phone(1)][0], phone(2): graph.wamids[phone(2)][0]}
    assert pg_conn.execute("SELECT count(*) FROM message_statuses").fetchone()[0] == 3


# 7. One odd status in a verified POST answered 5xx, and Meta retried the whole POST for days.


def test_verified_post_with_malformed_statuses_applies_the_others_and_answers_200(make_campaign, pg_conn, webhook_secret):
    # Given two sent rows
    campaign_id = make_campaign(phone(1), phone(2))
    pg_conn.execute("UPDATE send_queue SET status = 'sent', whatsapp_message_id = 'wamid.' || phone_number")
    good = status_update(f"wamid.{phone(1)}", "delivered", 100, to=phone(1))
    code_as_text = {**status_update(f"wamid.{phone(2)}", "failed", 100, to=phone(2)), "errors": [{"code": "oops"}]}
    huge_callback = status_update("wamid.X", "sent", 100, "9" * 30, to=phone(1))
    bad_time = status_update("wamid.Y", "read", 100, to=phone(1)) | {"timestamp": "yesterday"}
    no_id = {"status": "read", "timestamp": "100"}

    # When they arrive in one verified POST with statuses that do not validate
    response = post_statuses([good, code_as_text, huge_callback, bad_time, no_id, "not an object"])

    # Then 200; the valid statuses are applied (a code that is no number is dropped), the invalid ones skipped
    assert response["statusCode"] == 200
    rows = queue_rows(pg_conn, campaign_id)
    assert rows[phone(1)]["delivery_status"] == "delivered"
    assert (rows[phone(2)]["delivery_status"], rows[phone(2)]["delivery_error_code"]) == ("failed", None)
    stored = {w for (w,) in pg_conn.execute("SELECT whatsapp_message_id FROM message_statuses")}
    assert stored == {f"wamid.{phone(1)}", f"wamid.{phone(2)}", "wamid.X"}


def test_verified_post_that_is_not_json_is_acknowledged(pg_conn, webhook_secret):
    import hashlib
    import hmac

    event = load_event("webhook_status_post.json")
    event["body"] = "{truncated"
    event["headers"]["x-hub-signature-256"] = "sha256=" + hmac.new(WEBHOOK_SECRET.encode(), b"{truncated", hashlib.sha256).hexdigest()
    assert load_handler("webhook")(event, LocalContext("webhook"))["statusCode"] == 200


# 8. A queue_id beyond bigint failed the whole batch's claim, and the DLQ handler's transaction.


def test_queue_id_beyond_bigint_fails_alone_in_the_sender_and_the_dlq_handler(
    make_campaign, graph, pg_conn, event_source
):
    # Given a batch with two good messages and one whose queue_id does not fit PostgreSQL's bigint
    campaign_id = make_campaign(phone(1), phone(2))
    event = receive_event(event_source, 2)
    huge = dict(event["Records"][0], messageId="huge", body=json.dumps({"queue_id": str(2**63), "campaign_id": campaign_id}))
    event["Records"].append(huge)

    # When the sender handles it
    failed = deliver_event(event)

    # Then only that record failed; the good rows were sent
    assert failed == {"huge"} and graph.accepted == {phone(1): 1, phone(2): 1}

    # And when it reaches the DLQ next to a message for a row still ready, only the good one fails its row
    ready_campaign = make_campaign(phone(3))
    ready_event = receive_event(event_source, 1)
    result = load_handler("dlq_handler")({"Records": [huge, *ready_event["Records"]]}, LocalContext("dlq_handler"))
    assert (result["failed"], result["unusable"]) == (1, 1)
    assert queue_rows(pg_conn, ready_campaign)[phone(3)]["status"] == "failed"
    assert pg_conn.execute("SELECT message_id FROM dead_letters").fetchall() == [("huge",)]


# 9. A cancelled campaign's ambiguous send, later proven by the webhook, stayed `cancelled`, uncounted.


def test_cancelled_campaigns_send_proven_by_webhook_is_counted_sent(
    make_campaign, graph, pg_conn, event_source, webhook_secret
):
    # Given a send whose answer was lost, then the campaign cancelled and its stuck row cancelled by reset_stuck
    graph.plan(phone(1), "drop")
    campaign_id = make_campaign(phone(1), phone(2))
    event_source.run_until_empty(timeout=30)
    assert main(["campaign", "cancel", campaign_id]) == 0
    assert _reset_stuck_after_window(pg_conn)["cancelled"] == 1

    # When Meta's status for that send arrives
    wamid = graph.wamids[phone(1)][0]
    post_statuses([status_update(wamid, "sent", 100, callback_sent_to(graph, phone(1)), to=phone(1))])

    # Then the row is sent with Meta's WAMID and counted as sent
    row = queue_rows(pg_conn, campaign_id)[phone(1)]
    assert (row["status"], row["whatsapp_message_id"]) == ("sent", wamid)
    counters = control.status(pg_conn, campaign_id)
    assert (counters["sent"], counters["cancelled"], counters["pending"]) == (2, 0, 0)


# 10. STUCK_AFTER_SECONDS below a sender's in-flight time let reset_stuck resend a send still in flight.


def test_stuck_window_shorter_than_a_claim_is_refused_by_every_function(monkeypatch, pg_conn, capsys):
    # Given a window shorter than the slot wait plus a send's timeout
    monkeypatch.setenv("STUCK_AFTER_SECONDS", "15")
    monkeypatch.setenv("MAX_SLOT_WAIT_SECONDS", "10")
    monkeypatch.setenv("WHATSAPP_TIMEOUT_SECONDS", "10")

    # Then the settings are refused, saying why; reset_stuck and the sender refuse to run
    with pytest.raises(ConfigError, match="STUCK_AFTER_SECONDS \\(15\\) must be more than"):
        get_settings()
    assert main(["reset-stuck"]) == 2
    assert "still in flight" in capsys.readouterr().err
    with pytest.raises(ConfigError):
        load_handler("sender")(load_event("sender_sqs_batch.json"), LocalContext("sender"))
