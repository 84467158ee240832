"""Meta's status webhooks end to end: the fake Graph POSTs signed statuses to the local API Gateway, which
runs the real webhook Lambda (functions/webhook/app.py) against PostgreSQL, as the deployed stack is wired."""

from __future__ import annotations

import hashlib
import hmac
import json
import time

import httpx
import pytest
from sendonce.errors import DatabaseError
from sendonce.local.gateway import LOCAL_IAM_AUTHORIZER, LocalGateway, stack_gateways
from sendonce.local.lambda_runtime import LocalContext, load_handler

from tests.helpers import WEBHOOK_SECRET, load_event, phone, queue_rows

VERIFY_TOKEN = "example-verify-token"  # the token events/webhook_verify_get.json carries


@pytest.fixture(autouse=True)
def _webhook_settings(monkeypatch):
    monkeypatch.setenv("WHATSAPP_APP_SECRET", WEBHOOK_SECRET)
    monkeypatch.setenv("WEBHOOK_VERIFY_TOKEN", VERIFY_TOKEN)


@pytest.fixture
def webhook_api():
    """The stack's WebhookHttpApi on loopback, routing GET and POST /webhook to the real webhook handler."""
    with stack_gateways(handlers={"campaigns_api": _unused})["WebhookHttpApi"] as gateway:
        yield gateway
    # A database error is the webhook's designed 5xx (Meta retries); anything else is a bug.
    assert all(isinstance(e, DatabaseError) for e in gateway.errors), gateway.errors


def _unused(event: dict, context: object) -> dict:
    raise AssertionError("only the webhook API is served here")


def _signature(body: bytes, secret: str) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def _stored_statuses(pg_conn) -> dict[tuple[str, str], int]:
    """How many times each (WAMID, status) is in message_statuses."""
    query = "SELECT whatsapp_message_id, status, count(*) FROM message_statuses GROUP BY 1, 2"
    return {(wamid, status): count for wamid, status, count in pg_conn.execute(query).fetchall()}


# -- the fake Graph's webhooks through the gateway to the webhook Lambda -------------------------------------


def test_webhook_statuses_for_lost_answers_end_rows_sent_with_metas_wamid_once(
    make_campaign, graph, pg_conn, event_source, webhook_api
):
    # Given Meta posting statuses to the stack's webhook, and two of five sends whose answer is lost after
    # Meta accepted them (the sender never learns their WAMIDs)
    graph.post_statuses_to(webhook_api.url + "/webhook", WEBHOOK_SECRET, seed=1)
    numbers = [phone(i) for i in range(1, 6)]
    graph.plan(numbers[0], "drop")
    graph.plan(numbers[1], "drop")
    for number in numbers:
        graph.plan_statuses(number, "read")
    campaign_id = make_campaign(*numbers)

    # When the queue is drained and every status Meta emitted is delivered
    event_source.run_until_empty(timeout=60)
    assert graph.wait_statuses_delivered(timeout=30)

    # Then every row is sent with the WAMID Meta gave (for the lost ones, only the webhook knew it) and read
    rows = queue_rows(pg_conn, campaign_id)
    assert [r["fault"] for r in graph.requests if r["to"] in numbers[:2]] == ["drop", "drop"]
    for number in numbers:
        row = rows[number]
        assert (row["status"], row["whatsapp_message_id"], row["delivery_status"]) == (
            "sent",
            graph.wamids[number][0],
            "read",
        )
    assert graph.accepted == dict.fromkeys(numbers, 1)

    # And reset_stuck, long after STUCK_AFTER_SECONDS, finds nothing to resend: nobody gets a second message
    pg_conn.execute("UPDATE send_queue SET claimed_at = now() - interval '1 hour'")
    assert (
        load_handler("reset_stuck")(load_event("reset_stuck_schedule.json"), LocalContext("reset_stuck"))[
            "reset"
        ]
        == 0
    )
    event_source.run_until_empty(timeout=30)
    assert graph.accepted == dict.fromkeys(numbers, 1)


def test_webhook_statuses_under_meta_chaos_end_at_metas_last_status_stored_once(
    make_campaign, graph, pg_conn, event_source, webhook_api
):
    # Given Meta's delivery chaos (statuses held back and overtaken, delivered twice, POSTs refused or their
    # 200 lost, all retried), every kind of fate planned (the rest drawn), lost answers and a transient error
    graph.post_statuses_to(webhook_api.url + "/webhook", WEBHOOK_SECRET, chaos=0.5, seed=11)
    numbers = [phone(i) for i in range(1, 13)]
    fates = ["read", "read-direct", "delivered", "failed:131026", "failed:131050", "sent", "read", "read"]
    for number, fate in zip(numbers, fates, strict=False):
        graph.plan_statuses(number, fate)
    graph.plan(numbers[6], "drop")
    graph.plan(numbers[9], "drop")
    graph.plan(numbers[10], "error:131000")
    campaign_id = make_campaign(*numbers)

    # When the queue is drained and every status is delivered
    event_source.run_until_empty(timeout=60)
    assert graph.wait_statuses_delivered(timeout=60)

    # Then each row is sent with Meta's WAMID, its delivery status Meta's last status (failed: with its code)
    rows = queue_rows(pg_conn, campaign_id)
    emitted: set[tuple[str, str]] = set()
    for number in numbers:
        wamid = graph.wamids[number][0]
        status, code = graph.final_status(wamid)
        row = rows[number]
        assert (row["status"], row["whatsapp_message_id"]) == ("sent", wamid)
        assert (row["delivery_status"], row["delivery_error_code"]) == (
            None if status == "sent" else status,
            code,
        )
        emitted |= {(s["id"], s["status"]) for s in graph.webhook.timeline(wamid)}

    # And message_statuses holds each status Meta emitted exactly once, however often it was delivered
    stored = _stored_statuses(pg_conn)
    assert stored.keys() == emitted
    assert set(stored.values()) == {1}

    # And the chaos happened: retries, duplicates, statuses out of order; nothing is left undelivered
    stats = graph.webhook_stats()
    assert (
        stats["retried"] > 0
        and stats["injected"] > 0
        and stats["duplicated"] > 0
        and stats["out_of_order"] > 0
    )
    assert stats["pending"] == 0 and stats["emitted"] == len(emitted)

    # And nobody got two messages; opted-out numbers (131050) are suppressed
    assert graph.duplicates() == {} and set(graph.accepted) == set(numbers)
    opted_out = {n for n in numbers if graph.final_status(graph.wamids[n][0]) == ("failed", 131050)}
    assert {p for (p,) in pg_conn.execute("SELECT phone_number FROM suppressions")} == opted_out


def test_fake_graph_statuses_refused_by_webhook_are_retried_until_stopped_promptly(
    make_campaign, graph, pg_conn, event_source, webhook_api
):
    # Given Meta signing with a secret the stack does not have
    graph.post_statuses_to(
        webhook_api.url + "/webhook", "another-apps-secret", seed=2, retry_base=0.05, retry_cap=0.2
    )
    graph.plan_statuses(phone(1), "read")
    make_campaign(phone(1))
    event_source.run_until_empty(timeout=60)

    # When its statuses are refused (401) for a while
    delivered = graph.wait_statuses_delivered(timeout=1.0)

    # Then nothing was stored, and every status is still pending and retried, none dropped
    stats = graph.webhook_stats()
    assert not delivered
    assert _stored_statuses(pg_conn) == {}
    assert stats["emitted"] == 3 and stats["pending"] == 3 and stats["acknowledged"] == 0
    assert stats["retried"] >= 3 and stats["failed"] >= stats["retried"]

    # And stopping the delivery with retries pending takes less than a second
    started = time.monotonic()
    graph.webhook.stop()
    assert time.monotonic() - started < 1.0
    assert not any(t.is_alive() for t in graph.webhook._threads)


# -- the webhook API through the gateway ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("secret", "expected", "stored"),
    [(None, 401, 0), ("wrong-secret", 401, 0), (WEBHOOK_SECRET, 200, 1)],
    ids=["unsigned", "forged", "signed"],
)
def test_gateway_webhook_post_without_valid_signature_answers_401(
    pg_conn, webhook_api, secret, expected, stored
):
    # Given a status POST as Meta sends it, unsigned, signed with another secret, or signed right
    status = {"id": "wamid.X", "status": "delivered", "timestamp": "1795896003", "recipient_id": phone(1)}
    body = json.dumps(
        {
            "object": "whatsapp_business_account",
            "entry": [
                {
                    "id": "1",
                    "changes": [
                        {
                            "field": "messages",
                            "value": {"messaging_product": "whatsapp", "statuses": [status]},
                        }
                    ],
                }
            ],
        }
    ).encode()
    headers = {"Content-Type": "application/json"}
    if secret is not None:
        headers["X-Hub-Signature-256"] = _signature(body, secret)

    # When it is posted to the webhook API
    response = httpx.post(webhook_api.url + "/webhook", content=body, headers=headers)

    # Then only the signed one is answered 200 and stored
    assert response.status_code == expected
    assert sum(_stored_statuses(pg_conn).values()) == stored


def test_gateway_webhook_get_handshake_echoes_challenge_or_answers_403(webhook_api):
    # Given Meta's subscription handshake, with the right verify token and with a guess
    params = {"hub.mode": "subscribe", "hub.verify_token": VERIFY_TOKEN, "hub.challenge": "1158201444"}

    # When both are sent to GET /webhook
    verified = httpx.get(webhook_api.url + "/webhook", params=params)
    refused = httpx.get(webhook_api.url + "/webhook", params={**params, "hub.verify_token": "guess"})

    # Then the right one gets the challenge back as text, the guess 403
    assert (verified.status_code, verified.text, verified.headers["content-type"]) == (
        200,
        "1158201444",
        "text/plain",
    )
    assert refused.status_code == 403


# -- the gateway itself --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("api", "function", "event_file"),
    [
        ("WebhookHttpApi", "webhook", "webhook_status_post.json"),
        ("WebhookHttpApi", "webhook", "webhook_verify_get.json"),
        ("CampaignsHttpApi", "campaigns_api", "campaigns_api_get.json"),
        ("CampaignsHttpApi", "campaigns_api", "campaigns_api_create.json"),
    ],
)
def test_gateway_event_for_the_files_request_has_the_files_shape(api, function, event_file):
    # Given the stack's gateways with a handler that records the events it gets
    expected = load_event(event_file)
    seen: list[dict] = []
    handlers = dict.fromkeys(
        ("webhook", "campaigns_api"), lambda event, context: seen.append(event) or {"statusCode": 204}
    )
    http = expected["requestContext"]["http"]
    query = f"?{expected['rawQueryString']}" if expected["rawQueryString"] else ""

    # When the request the event file describes is made over HTTP
    with stack_gateways(handlers=handlers)[api] as gateway:
        response = httpx.request(
            http["method"],
            gateway.url + expected["rawPath"] + query,
            content=expected.get("body", "").encode(),
            headers={k: v for k, v in expected["headers"].items() if k != "host"},
        )

    # Then the event has the file's keys, at every level, and the same request values
    assert response.status_code == 204
    (event,) = seen
    assert event.keys() == expected.keys()
    assert event["requestContext"].keys() == expected["requestContext"].keys()
    assert event["requestContext"]["http"].keys() == http.keys()
    assert event["headers"].keys() >= expected["headers"].keys()
    assert {k: event["headers"][k] for k in expected["headers"] if k != "host"} == {
        k: v for k, v in expected["headers"].items() if k != "host"
    }
    for key in (
        "version",
        "routeKey",
        "rawPath",
        "rawQueryString",
        "queryStringParameters",
        "pathParameters",
        "body",
        "isBase64Encoded",
    ):
        assert event.get(key) == expected.get(key), key
    assert event["requestContext"]["routeKey"] == expected["routeKey"]
    assert event["requestContext"]["http"]["method"] == http["method"]
    if "authorizer" in expected["requestContext"]:
        assert event["requestContext"]["authorizer"] == LOCAL_IAM_AUTHORIZER
        assert LOCAL_IAM_AUTHORIZER["iam"].keys() == expected["requestContext"]["authorizer"]["iam"].keys()


def test_gateway_binary_body_is_base64_encoded_and_base64_answer_decoded():
    # Given a route whose function echoes the body it got, base64-encoded as payload format 2.0 allows
    seen: list[dict] = []

    def echo(event: dict, context: object) -> dict:
        seen.append(event)
        return {
            "statusCode": 200,
            "headers": {"Content-Type": "application/octet-stream"},
            "body": event["body"],
            "isBase64Encoded": True,
            "cookies": ["a=1", "b=2"],
        }

    # When bytes that are not text are posted
    with LocalGateway().route("POST", "/files/{name}", echo) as gateway:
        response = httpx.post(
            gateway.url + "/files/x%20y", content=b"\x00\xffbin", headers={"Content-Type": "image/png"}
        )

    # Then the function got them base64-encoded; the client gets the decoded bytes, one Set-Cookie per cookie
    assert (seen[0]["isBase64Encoded"], seen[0]["body"], seen[0]["pathParameters"]) == (
        True,
        "AP9iaW4=",
        {"name": "x y"},
    )
    assert response.content == b"\x00\xffbin"
    assert response.headers.get_list("set-cookie") == ["a=1", "b=2"]


@pytest.mark.parametrize(
    ("method", "path", "body", "expected", "message"),
    [
        ("POST", "/boom", b"{}", 500, "Internal Server Error"),
        ("POST", "/echo", b"x" * 2048, 413, "Request Entity Too Large"),
        ("GET", "/echo", b"", 404, "Not Found"),
        ("POST", "/nowhere", b"{}", 404, "Not Found"),
    ],
    ids=["function-raises", "body-over-quota", "wrong-method", "no-route"],
)
def test_gateway_request_it_cannot_serve_answers_as_api_gateway(method, path, body, expected, message):
    # Given a gateway with a 1 KB payload quota, a function that raises and one that answers
    calls: list[dict] = []

    def boom(event: dict, context: object) -> dict:
        raise RuntimeError("database unavailable")

    gateway = (
        LocalGateway(max_body_bytes=1024)
        .route("POST", "/boom", boom)
        .route("POST", "/echo", lambda event, context: calls.append(event) or {"statusCode": 200})
    )

    # When the request is made
    with gateway:
        response = httpx.request(method, gateway.url + path, content=body)

    # Then API Gateway's own answer comes back and nothing else ran
    assert (response.status_code, response.json()) == (expected, {"message": message})
    assert calls == []
    assert len(gateway.errors) == (expected == 500)
