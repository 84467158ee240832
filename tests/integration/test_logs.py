"""Log hygiene and metrics: what the handlers write, for every kind of outcome, and what they never write."""

from __future__ import annotations

import hashlib
import hmac
import io
import json
import logging
import re
import time
import uuid

import pytest
from sendonce.local.lambda_runtime import LocalContext, load_handler
from sendonce.observability import logger

from tests.helpers import (
    WEBHOOK_SECRET,
    callback_sent_to,
    deliver_event,
    invoke_webhook,
    load_event,
    phone,
    receive_event,
)

SENT, PERMANENT, TRANSIENT, THROTTLED, DROPPED, LOST, HALTED = (phone(i) for i in range(1, 8))
NUMBERS = (SENT, PERMANENT, TRANSIENT, THROTTLED, DROPPED, LOST, HALTED)
ROW_MESSAGES = {"send not completed", "skipping message", "Skipping already-sent message", "send raised"}


@pytest.fixture(autouse=True)
def _webhook_settings(monkeypatch):
    monkeypatch.setenv("WHATSAPP_APP_SECRET", WEBHOOK_SECRET)
    monkeypatch.setenv("WEBHOOK_VERIFY_TOKEN", "example-verify-token")


@pytest.fixture
def log_stream():
    """A handler on the `sendonce` logger with Powertools' own JSON formatter: its stream holds every line."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logger.registered_formatter)
    logger.addHandler(handler)
    # INFO, whatever an earlier test left (the CLI's main sets WARNING or ERROR on the shared logger).
    level = logger.log_level
    logger.setLevel("INFO")
    yield stream
    logger.setLevel(level)
    logger.removeHandler(handler)


def _signed_post(statuses: list[dict]) -> tuple[dict, str]:
    """A webhook POST of `statuses`, signed with the app secret; returns the event and its signature header."""
    body = json.dumps({"object": "whatsapp_business_account", "entry": [{"id": "1", "changes": [
        {"field": "messages", "value": {"messaging_product": "whatsapp", "statuses": statuses}}]}]})
    event = load_event("webhook_status_post.json")
    event["body"] = body
    signature = "sha256=" + hmac.new(WEBHOOK_SECRET.encode(), body.encode(), hashlib.sha256).hexdigest()
    event["headers"]["x-hub-signature-256"] = signature
    return event, signature


def _duplicate(record: dict) -> dict:
    """The same row's message again, from another enqueue (it passes the idempotency gate)."""
    body = json.loads(record["body"])
    body["enqueue_id"] = uuid.uuid4().hex
    return {**record, "messageId": str(uuid.uuid4()), "body": json.dumps(body)}


def _record_for(event: dict, pg_conn, number: str) -> dict | None:
    row_id = pg_conn.execute("SELECT id FROM send_queue WHERE phone_number = %s", (number,)).fetchone()[0]
    return next((r for r in event["Records"] if int(json.loads(r["body"])["queue_id"]) == row_id), None)


def _receive_only(event_source, pg_conn, number: str) -> dict:
    """An event with `number`'s message alone; others received meanwhile stay invisible (a retry waiting)."""
    for _ in range(20):
        if record := _record_for(receive_event(event_source, 1), pg_conn, number):
            return {"Records": [record]}
    raise AssertionError(f"no message for {number}")


def _every_outcome(make_campaign, graph, pg_conn, event_source) -> dict:
    """Run a sender batch with every outcome, a duplicate, a halt, a webhook POST, reset_stuck and dlq_handler.

    Returns the secrets and values that must never be logged.
    """
    graph.plan(PERMANENT, "error:131026")
    graph.plan(TRANSIENT, "error:131000")
    graph.plan(THROTTLED, "error:130429")
    graph.plan(DROPPED, "drop")
    graph.plan(LOST, "drop")
    graph.plan(HALTED, "error:190")
    campaign = make_campaign(SENT, PERMANENT, TRANSIENT, THROTTLED, DROPPED, LOST)
    first = receive_event(event_source, 6)
    deliver_event(first)

    # A second batch: the sent row's message again (skipped, already sent) and a campaign that halts on 190.
    halting = make_campaign(HALTED)
    second = _receive_only(event_source, pg_conn, HALTED)
    second["Records"].append(_duplicate(_record_for(first, pg_conn, SENT)))
    deliver_event(second)

    # A webhook POST about the sent row and the dropped one (reconciled), and one with a forged signature.
    wamid = graph.wamids[SENT][0]
    dropped_wamid = graph.wamids[DROPPED][0]
    now = int(time.time())
    statuses = [
        {"id": wamid, "status": "delivered", "timestamp": str(now), "recipient_id": SENT,
         "biz_opaque_callback_data": callback_sent_to(graph, SENT)},
        {"id": dropped_wamid, "status": "sent", "timestamp": str(now), "recipient_id": DROPPED,
         "biz_opaque_callback_data": callback_sent_to(graph, DROPPED)},
        {"id": "wamid.UNKNOWN", "status": "read", "timestamp": "yesterday", "recipient_id": SENT},
    ]
    event, signature = _signed_post(statuses)
    assert invoke_webhook(event)["statusCode"] == 200
    forged, _ = _signed_post(statuses)
    forged["headers"]["x-hub-signature-256"] = "sha256=" + "0" * 64
    assert invoke_webhook(forged)["statusCode"] == 401

    # reset_stuck with the lost row's claim aged past STUCK_AFTER_SECONDS, and the transient row's message
    # handed to dlq_handler as if its retries had run out.
    pg_conn.execute("UPDATE send_queue SET claimed_at = now() - interval '1 hour' WHERE status = 'processing'")
    load_handler("reset_stuck")(load_event("reset_stuck_schedule.json"), LocalContext("reset_stuck"))
    dead = {"Records": [_record_for(first, pg_conn, TRANSIENT)]}
    assert load_handler("dlq_handler")(dead, LocalContext("dlq_handler"))["records"] == 1

    params = [f"name {p[-4:]}" for p in NUMBERS]
    return {
        "campaigns": {campaign, halting},
        "secrets": [graph.token, WEBHOOK_SECRET, signature, signature[len("sha256="):], wamid, dropped_wamid,
                    *params, *(w for ws in graph.wamids.values() for w in ws)],
    }


def test_logs_are_json_without_numbers_secrets_or_wamids(make_campaign, graph, pg_conn, event_source, capsys, log_stream):
    # When a batch with every outcome, a webhook POST, reset_stuck and dlq_handler run
    found = _every_outcome(make_campaign, graph, pg_conn, event_source)
    stream = log_stream
    captured = capsys.readouterr()
    lines = stream.getvalue().splitlines()
    everything = stream.getvalue() + captured.out + captured.err

    # Then every line is JSON
    records = [json.loads(line) for line in lines]
    assert records
    for line in captured.out.splitlines():
        json.loads(line)

    # And no full number, no digit run of 7 or more that is part of one
    for run in re.findall(r"\d{7,}", everything):
        assert not any(run in number or number in run for number in NUMBERS), run

    # And no token, app secret, signature, template parameter or WAMID
    for secret in found["secrets"]:
        assert secret not in everything, secret
    assert "wamid." not in everything.lower()

    # And every sender line about a row names its campaign and row (and its number id when it was claimed)
    about_rows = [r for r in records if r["message"] in ROW_MESSAGES or "queue_id" in r]
    assert {r["message"] for r in about_rows} >= {"send not completed", "Skipping already-sent message"}
    for record in about_rows:
        assert record.get("campaign_id") in found["campaigns"] and isinstance(record.get("queue_id"), int), record
    for record in (r for r in about_rows if r["message"] == "send not completed"):
        assert record["phone_number_id"] == "106540352242922" and set(record["to"][:-4]) == {"*"}
    dispositions = {r["disposition"] for r in about_rows if r["message"] == "send not completed"}
    assert dispositions == {"failed", "retry", "defer", "ambiguous", "halt"}


def _emf(out: str) -> list[dict]:
    return [doc for doc in map(json.loads, (line for line in out.splitlines() if line.startswith('{"_aws"')))]


def _values(documents: list[dict]) -> dict[str, float]:
    """Metric name -> the sum of its values over the EMF documents."""
    totals: dict[str, float] = {}
    for doc in documents:
        for directive in doc["_aws"]["CloudWatchMetrics"]:
            assert directive["Namespace"] == "sendonce" and directive["Dimensions"] == [["service"]]
            for metric in directive["Metrics"]:
                value = doc[metric["Name"]]
                totals[metric["Name"]] = totals.get(metric["Name"], 0) + sum(value if isinstance(value, list) else [value])
    return totals


def test_metrics_of_a_batch_are_emitted_as_emf(make_campaign, graph, pg_conn, event_source, capsys, monkeypatch):
    # Given metrics enabled (the CLI and the local stack disable them)
    monkeypatch.setenv("POWERTOOLS_METRICS_DISABLED", "false")
    monkeypatch.delenv("POWERTOOLS_DEV", raising=False)
    capsys.readouterr()

    # When a batch with every outcome, a webhook POST, reset_stuck and dlq_handler run
    _every_outcome(make_campaign, graph, pg_conn, event_source)
    totals = _values(_emf(capsys.readouterr().out))

    # Then the counts are the batch's
    expected = {
        "Sent": 1, "FailedPermanent": 1, "Ambiguous": 2, "DeferredThrottle": 1, "FailedHalt": 1,
        "SkippedAlreadySent": 1, "WebhookAccepted": 1, "WebhookRefused": 1, "WebhookStatusesApplied": 2,
        "ReconciledByWebhook": 1, "ResentWithoutEvidence": 1, "Reset": 1, "DeadLettered": 1, "FailedExhausted": 1,
    }
    assert {name: totals.get(name) for name in expected} == expected
    # And every send, claim and finalize was timed
    for latency in ("ClaimLatency", "FinalizeLatency", "GraphLatency"):
        assert totals.get(latency, 0) > 0, latency


def test_metrics_disabled_print_nothing(make_campaign, graph, pg_conn, event_source, capsys, monkeypatch):
    # Given metrics disabled, as the local stack and the CLI run them
    monkeypatch.setenv("POWERTOOLS_METRICS_DISABLED", "true")
    campaign = make_campaign(*(phone(i) for i in range(1, 4)))
    capsys.readouterr()

    # When a batch is sent
    deliver_event(receive_event(event_source, 3))

    # Then stdout has log lines only, no EMF
    out = capsys.readouterr().out
    assert campaign and '"_aws"' not in out
