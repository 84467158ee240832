"""The webhook Lambda with API Gateway v2 events: signatures, forward-only statuses, reconciliation, opt-outs."""

from __future__ import annotations

import json
import signal
import time

import pytest

from sendonce import control, db, webhook
from sendonce.local.lambda_runtime import LocalContext, load_handler
from sendonce.local.pgtrace import count_round_trips
from tests.helpers import (
    WEBHOOK_SECRET,
    callback_sent_to,
    invoke_webhook,
    kill_sender_when_accepted,
    load_event,
    phone,
    post_statuses,
    queue_rows,
    receive_event,
    sleep_past_killed_invocation,
    status_update,
)

FILE_CAMPAIGN_ID = "4d46271f-f3b4-4f5b-a2c7-6dbad447a845"
@pytest.fixture(autouse=True)
def _webhook_settings(monkeypatch):
    monkeypatch.setenv("WHATSAPP_APP_SECRET", WEBHOOK_SECRET)
    monkeypatch.setenv("WEBHOOK_VERIFY_TOKEN", "example-verify-token")


def _stored_statuses(pg_conn) -> int:
    return pg_conn.execute("SELECT count(*) FROM message_statuses").fetchone()[0]


def test_webhook_get_verification_echoes_challenge_or_refuses(pg_conn):
    event = load_event("webhook_verify_get.json")
    assert invoke_webhook(event) == {"statusCode": 200, "headers": {"Content-Type": "text/plain"}, "body": "1158201444"}
    event["queryStringParameters"]["hub.verify_token"] = "guess"
    assert invoke_webhook(event)["statusCode"] == 403


def test_webhook_signed_event_file_is_applied(make_campaign, graph, pg_conn):
    # Given rows 1 and 2 of the campaign events/webhook_status_post.json speaks of, both sent
    campaign_id = make_campaign(phone(1), phone(2), campaign_id=FILE_CAMPAIGN_ID)
    pg_conn.execute(
        "UPDATE send_queue SET status = 'sent', whatsapp_message_id = 'wamid.' || id, phone_number = "
        "CASE id WHEN 1 THEN '919741771659' ELSE '919876543210' END"
    )
    event = load_event("webhook_status_post.json")
    body = json.loads(event["body"])
    wamids = [s["id"] for s in body["entry"][0]["changes"][0]["value"]["statuses"]]
    pg_conn.execute("UPDATE send_queue SET whatsapp_message_id = %s WHERE id = 1", (wamids[0],))
    pg_conn.execute("UPDATE send_queue SET whatsapp_message_id = %s WHERE id = 2", (wamids[2],))

    # When the signed event file is posted
    assert invoke_webhook(event)["statusCode"] == 200

    # Then row 1 is delivered, row 2 failed with 131050 and its number is suppressed
    rows = queue_rows(pg_conn, campaign_id)
    assert rows["919741771659"]["delivery_status"] == "delivered"
    assert (rows["919876543210"]["delivery_status"], rows["919876543210"]["delivery_error_code"]) == ("failed", 131050)
    assert pg_conn.execute("SELECT phone_number FROM suppressions").fetchall() == [("919876543210",)]
    assert _stored_statuses(pg_conn) == 3


@pytest.mark.parametrize("secret", [None, "wrong-secret"], ids=["unsigned", "forged"])
def test_webhook_unsigned_or_forged_post_is_refused_and_stores_nothing(make_campaign, graph, pg_conn, secret):
    # Given a sent row
    campaign_id = make_campaign(phone(1))
    pg_conn.execute("UPDATE send_queue SET status = 'sent', whatsapp_message_id = 'wamid.A'")

    # When a status for it arrives without a valid signature
    response = post_statuses([status_update("wamid.A", "read", 100)], secret=secret)

    # Then 401 and nothing changed or stored
    assert response["statusCode"] == 401
    assert _stored_statuses(pg_conn) == 0
    assert queue_rows(pg_conn, campaign_id)[phone(1)]["delivery_status"] is None


def test_webhook_tampered_body_is_refused(make_campaign, pg_conn):
    event = load_event("webhook_status_post.json")
    event["body"] = event["body"].replace("delivered", "read")
    assert invoke_webhook(event)["statusCode"] == 401 and _stored_statuses(pg_conn) == 0


def test_webhook_base64_body_is_verified_on_the_decoded_bytes(pg_conn):
    import base64

    event = load_event("webhook_status_post.json")
    event.update(body=base64.b64encode(event["body"].encode()).decode(), isBase64Encoded=True)
    assert invoke_webhook(event)["statusCode"] == 200 and _stored_statuses(pg_conn) == 3


def test_webhook_duplicates_and_out_of_order_statuses_end_forward(make_campaign, graph, pg_conn):
    # Given two sent rows
    campaign_id = make_campaign(phone(1), phone(2))
    pg_conn.execute("UPDATE send_queue SET status = 'sent', whatsapp_message_id = 'wamid.' || id")

    # When row 1 gets read before delivered, each twice, and row 2 gets delivered then failed
    post_statuses([status_update("wamid.1", "read", 200), status_update("wamid.1", "read", 200)])
    post_statuses([status_update("wamid.1", "delivered", 150), status_update("wamid.2", "delivered", 150)])
    post_statuses([status_update("wamid.1", "delivered", 150), status_update("wamid.2", "failed", 160, code=131026)])

    # Then read is not downgraded, the failure keeps its code, and each distinct status is stored once
    rows = queue_rows(pg_conn, campaign_id)
    assert rows[phone(1)]["delivery_status"] == "read"
    assert (rows[phone(2)]["delivery_status"], rows[phone(2)]["delivery_error_code"]) == ("failed", 131026)
    assert _stored_statuses(pg_conn) == 4
    counters = control.status(pg_conn, campaign_id)
    assert (counters["delivered"], counters["read"]) == (1, 1)


def test_webhook_unknown_wamid_is_kept(pg_conn):
    assert post_statuses([status_update("wamid.NOBODY", "delivered", 5)])["statusCode"] == 200
    assert pg_conn.execute("SELECT whatsapp_message_id FROM message_statuses").fetchall() == [("wamid.NOBODY",)]


def test_webhook_resolves_lost_answer_and_reset_stuck_never_resends(make_campaign, graph, pg_conn, event_source):
    # Given a send whose answer was lost after Meta accepted it (row processing, no WAMID)
    graph.plan(phone(1), "drop")
    campaign_id = make_campaign(phone(1))
    event_source.run_until_empty(timeout=60)
    assert queue_rows(pg_conn, campaign_id)[phone(1)]["status"] == "processing"
    wamid = graph.wamids[phone(1)][0]

    # When Meta's status webhook arrives, naming the row through biz_opaque_callback_data
    assert post_statuses([status_update(wamid, "sent", 100, callback_sent_to(graph, phone(1)), to=phone(1))])["statusCode"] == 200

    # Then the row is sent with Meta's WAMID
    row = queue_rows(pg_conn, campaign_id)[phone(1)]
    assert (row["status"], row["whatsapp_message_id"]) == ("sent", wamid)

    # And reset_stuck, long after STUCK_AFTER_SECONDS, does not touch it
    pg_conn.execute("UPDATE send_queue SET claimed_at = now() - interval '1 hour'")
    assert load_handler("reset_stuck")(load_event("reset_stuck_schedule.json"), LocalContext("reset_stuck"))["reset"] == 0
    event_source.run_until_empty(timeout=30)
    assert graph.accepted == {phone(1): 1}


def test_webhook_after_sender_killed_ends_sent_with_metas_wamid(make_campaign, graph, pg_conn, event_source, tmp_path):
    # Given a sender process killed the moment Meta accepted its message
    campaign_id = make_campaign(phone(1))
    event = receive_event(event_source, 1)
    assert kill_sender_when_accepted(event, graph, phone(1), tmp_path) == -signal.SIGKILL
    row = queue_rows(pg_conn, campaign_id)[phone(1)]
    assert row["status"] == "processing"

    # When the delivered webhook arrives (before the sent one: out of order)
    wamid = graph.wamids[phone(1)][0]
    post_statuses([status_update(wamid, "delivered", 101, callback_sent_to(graph, phone(1)), to=phone(1))])
    post_statuses([status_update(wamid, "sent", 100, callback_sent_to(graph, phone(1)), to=phone(1))])

    # Then the row is sent and delivered with the WAMID Meta gave, and a redelivery sends nothing
    row = queue_rows(pg_conn, campaign_id)[phone(1)]
    assert (row["status"], row["whatsapp_message_id"], row["delivery_status"]) == ("sent", wamid, "delivered")
    sleep_past_killed_invocation(pg_conn, row["id"])
    assert event_source.handler(event, LocalContext("sender")) == {"batchItemFailures": []}
    assert graph.accepted == {phone(1): 1}


def test_webhook_opt_out_suppresses_number_in_create_and_sender(make_campaign, graph, pg_conn, event_source):
    # Given a campaign still waiting to send to a number that then opts out (131050 on another message)
    pending_campaign = make_campaign(phone(1), phone(2))
    post_statuses([status_update("wamid.OTHER", "failed", 100, code=131050, to=phone(1))])

    # When that campaign is sent and a new campaign to the same number is created
    event_source.run_until_empty(timeout=60)
    new_campaign = make_campaign(phone(1), phone(3))
    event_source.run_until_empty(timeout=60)

    # Then the number got nothing; its rows are cancelled with the reason and counted
    assert graph.accepted == {phone(2): 1, phone(3): 1}
    for campaign_id in (pending_campaign, new_campaign):
        row = queue_rows(pg_conn, campaign_id)[phone(1)]
        assert (row["status"], row["last_error"]) == ("cancelled", "suppressed: opted out (131050)")
        assert control.status(pg_conn, campaign_id)["cancelled"] == 1


def test_webhook_thousand_statuses_take_the_same_statements_as_ten(pg_conn):
    # Given 1,000 sent rows (written directly: 1,000 messages would only slow moto's SQS down)
    from sendonce.repository.campaigns import insert_campaign

    fields = {"id": FILE_CAMPAIGN_ID, "name": "big", "template_name": "t", "language_code": "en", "phone_number_id": "1",
              "total_recipients": 1000}
    insert_campaign(pg_conn, fields, ((phone(i), ()) for i in range(1000)))
    pg_conn.execute("UPDATE send_queue SET status = 'sent', whatsapp_message_id = 'wamid.' || id")

    def round_trips(count: int, status: str) -> int:
        conn = db.get_conn()
        with count_round_trips(conn) as trips:
            started = time.perf_counter()
            assert post_statuses([status_update(f"wamid.{i}", status, 100) for i in range(1, count + 1)])["statusCode"] == 200
            print(f"{count} statuses: {(time.perf_counter() - started) * 1000:.0f} ms")
        return trips.count

    # When 10 and then 1,000 statuses are posted (round trips counted in libpq's protocol trace)
    webhook.callback_key(db.get_conn())  # connect and read the callback key (once per database) first
    small, large = round_trips(10, "delivered"), round_trips(1000, "read")

    # Then both take the same, constant number of round trips (BEGIN, 3 statements, COMMIT)
    assert small == large == 5
    assert pg_conn.execute("SELECT count(*) FROM send_queue WHERE delivery_status = 'read'").fetchone()[0] == 1000


@pytest.mark.parametrize(
    "signature", ["sha256=" + "é" * 64, "sha256=\u00ff", "sha256=\ud800", "é"], ids=["accented", "latin1", "surrogate", "bare"]
)
def test_webhook_non_ascii_signature_is_refused_not_a_500(pg_conn, signature):
    # Given the signed event file, its signature replaced with text that is not ASCII
    event = load_event("webhook_status_post.json")
    event["headers"]["x-hub-signature-256"] = signature

    # When it is posted, then 401 (hmac.compare_digest would raise TypeError on such a str) and nothing stored
    assert invoke_webhook(event)["statusCode"] == 401 and _stored_statuses(pg_conn) == 0


@pytest.mark.parametrize("token", ["vérify", "\ud800", "example-verify-tokén"])
def test_webhook_non_ascii_verify_token_is_forbidden_not_a_500(pg_conn, token):
    event = load_event("webhook_verify_get.json")
    event["queryStringParameters"]["hub.verify_token"] = token
    assert invoke_webhook(event)["statusCode"] == 403


def test_webhook_non_ascii_configured_verify_token_still_matches(pg_conn, monkeypatch):
    # A verify token chosen with an accent works too: the comparison is of bytes, not of ASCII-only str.
    monkeypatch.setenv("WEBHOOK_VERIFY_TOKEN", "jeton-vérifié")
    event = load_event("webhook_verify_get.json")
    event["queryStringParameters"]["hub.verify_token"] = "jeton-vérifié"
    assert invoke_webhook(event)["statusCode"] == 200


def test_webhook_statuses_older_than_metas_retry_window_are_ignored(make_campaign, graph, pg_conn):
    # Given two sent rows
    campaign_id = make_campaign(phone(1), phone(2))
    pg_conn.execute("UPDATE send_queue SET status = 'sent', whatsapp_message_id = 'wamid.' || id")
    now = int(time.time())
    week = int(webhook.STATUS_MAX_AGE.total_seconds())

    # When a POST holds a status for row 1 from just inside the 7 days, and one for row 2 from just outside
    # (absolute Unix times, written out: status_update's times are the other tests' to choose)
    response = post_statuses([
        {"id": "wamid.1", "status": "delivered", "timestamp": str(now - week + 60), "recipient_id": ""},
        {"id": "wamid.2", "status": "read", "timestamp": str(now - week - 60), "recipient_id": ""},
    ])

    # Then the POST is acknowledged, the recent status applied and stored, the old one neither
    assert response["statusCode"] == 200
    rows = queue_rows(pg_conn, campaign_id)
    assert (rows[phone(1)]["delivery_status"], rows[phone(2)]["delivery_status"]) == ("delivered", None)
    assert pg_conn.execute("SELECT whatsapp_message_id FROM message_statuses").fetchall() == [("wamid.1",)]
