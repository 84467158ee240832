"""Small helpers the tests share (fixtures live in the root conftest.py)."""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psycopg
import psycopg.rows
from sendonce.local.lambda_runtime import PROJECT_ROOT, LocalContext, load_handler
from sendonce.sqs import get_sqs_client

EVENTS = PROJECT_ROOT / "events"


def truncate(conn: psycopg.Connection) -> None:
    """Empty every table a test writes (the schema and the deployment's callback key stay)."""
    conn.execute(
        "TRUNCATE campaigns, send_queue, dead_letters, message_statuses, suppressions, rate_limits, templates, "
        "meta_events, messaging_limits, messaging_usage RESTART IDENTITY CASCADE"
    )


def phone(i: int) -> str:
    """A valid Indian mobile number in E.164 digits, distinct per `i`."""
    return f"91987654{i:04d}"


# Status times are offsets from an hour ago: inside Meta's retry window, which the webhook enforces (older
# statuses are ignored), whenever the suite runs.
STATUS_EPOCH = int(time.time()) - 3600


def load_event(name: str) -> dict:
    """An event file from events/, as `sam local invoke -e` reads it.

    The signed webhook POSTs are brought up to date: their statuses moved to the last hour (in their order), a
    template event's time to now, and the body signed again with the secret it was signed with, so that they do
    not age out of Meta's retry window.
    """
    event = json.loads((EVENTS / name).read_text())
    if name not in ("webhook_status_post.json", "webhook_template_status.json"):
        return event
    body = json.loads(event["body"])
    if name == "webhook_status_post.json":
        statuses = body["entry"][0]["changes"][0]["value"]["statuses"]
        first = min(int(s["timestamp"]) for s in statuses)
        for status in statuses:
            status["timestamp"] = str(STATUS_EPOCH + int(status["timestamp"]) - first)
    else:
        body["entry"][0]["time"] = int(time.time())
    event["body"] = json.dumps(body)
    event["headers"]["x-hub-signature-256"] = "sha256=" + hmac.new(
        WEBHOOK_SECRET.encode(), event["body"].encode(), hashlib.sha256
    ).hexdigest()
    return event


def queue_rows(conn: psycopg.Connection, campaign_id: str) -> dict[str, dict]:
    """The campaign's send_queue rows by phone number."""
    with conn.cursor(row_factory=psycopg.rows.dict_row) as cur:
        cur.execute("SELECT * FROM send_queue WHERE campaign_id = %s ORDER BY id", (campaign_id,))
        return {row["phone_number"]: row for row in cur}


_SENDER_CHILD = """
import json, sys
from sendonce.local.lambda_runtime import LocalContext, load_handler
event = json.load(open(sys.argv[1]))
load_handler("sender")(event, LocalContext("sender", timeout_seconds=float(sys.argv[2])))
sys.exit(3)  # it should have been killed before this line
"""


KILLED_SENDER_TIMEOUT = 8.0


def kill_sender_when_accepted(
    event: dict, graph, to: str, folder: Path, timeout_seconds: float = KILLED_SENDER_TIMEOUT
) -> int:
    """Run the sender on `event` in a child process, SIGKILLed the moment the fake Graph accepts `to`'s send.

    `timeout_seconds` is the dead invocation's Lambda timeout (its idempotency records expire after it; a few
    seconds at least, or the sender keeps too little of its window to send at all).
    Returns the child's exit code (-SIGKILL when it was killed as planned).
    """
    event_file = folder / "event.json"
    event_file.write_text(json.dumps(event))
    child = subprocess.Popen([sys.executable, "-c", _SENDER_CHILD, str(event_file), str(timeout_seconds)], env=dict(os.environ))
    graph.plan(to, "crash")
    graph.on_crash = lambda payload: os.kill(child.pid, signal.SIGKILL)
    return child.wait(timeout=60)


def sleep_past_killed_invocation(conn: psycopg.Connection, row_id: int, timeout_seconds: float = KILLED_SENDER_TIMEOUT) -> None:
    """Sleep until the killed invocation that claimed `row_id` would have timed out (by the database's clock)."""
    left = conn.execute(
        "SELECT extract(epoch FROM claimed_at + make_interval(secs => %s) - clock_timestamp()) FROM send_queue WHERE id = %s",
        (timeout_seconds + 0.5, row_id),
    ).fetchone()[0]
    time.sleep(max(float(left), 0))


WEBHOOK_SECRET = "example-app-secret"  # the app secret events/webhook_status_post.json is signed with


def invoke_reset_stuck() -> dict:
    """One scheduled run of reset_stuck, invoked with its event file as `sam local invoke` would."""
    return load_handler("reset_stuck")(load_event("reset_stuck_schedule.json"), LocalContext("reset_stuck"))


def invoke_webhook(event: dict) -> dict:
    """The webhook handler, invoked as `sam local invoke` would."""
    return load_handler("webhook")(event, LocalContext("webhook"))


def post_statuses(statuses: list[dict], secret: str | None = WEBHOOK_SECRET) -> dict:
    """POST a status payload to the webhook handler, signed with `secret` (None: unsigned)."""
    body = json.dumps({"object": "whatsapp_business_account", "entry": [{"id": "1", "changes": [
        {"field": "messages", "value": {"messaging_product": "whatsapp", "statuses": statuses}}]}]})
    event = load_event("webhook_status_post.json")
    event["body"] = body
    event["headers"].pop("x-hub-signature-256")
    if secret is not None:
        event["headers"]["x-hub-signature-256"] = "sha256=" + hmac.new(secret.encode(), body.encode(), hashlib.sha256).hexdigest()
    return invoke_webhook(event)


def post_change(field: str, value: dict, at: int | None = None, waba_id: str = "102290129340398",
                secret: str = WEBHOOK_SECRET) -> dict:
    """POST one account change (template status, capability ...) to the webhook handler, signed, as Meta sends it.

    `at`: the entry's time (Unix seconds; default now).
    """
    entry = {"id": waba_id, "time": int(time.time()) if at is None else at, "changes": [{"value": value, "field": field}]}
    body = json.dumps({"object": "whatsapp_business_account", "entry": [entry]})
    event = load_event("webhook_status_post.json")
    event["body"] = body
    event["headers"]["x-hub-signature-256"] = "sha256=" + hmac.new(secret.encode(), body.encode(), hashlib.sha256).hexdigest()
    return invoke_webhook(event)


def template_status(event: str, name: str = "order_update", language: str = "en-US", title: str | None = None,
                    at: int | None = None, reason: str = "NONE") -> dict:
    """POST a message_template_status_update as Meta sends it (language in Meta's hyphen form)."""
    value = {"event": event, "message_template_id": 1689556908129832, "message_template_name": name,
             "message_template_language": language, "reason": reason, "message_template_category": "MARKETING"}
    if title:
        value["other_info"] = {"title": title, "description": f"Your WhatsApp message template {title.lower()}."}
    return post_change("message_template_status_update", value, at)


def status_update(
    wamid: str, status: str, at: int, callback: str | None = None, code: int | None = None, to: str = "",
    pricing: dict | None = None,
) -> dict:
    """One status object as Meta sends it in a webhook (`pricing`: Meta's pricing object, as given)."""
    update = {"id": wamid, "status": status, "timestamp": str(STATUS_EPOCH + at), "recipient_id": to}
    if callback is not None:
        update["biz_opaque_callback_data"] = callback
    if code is not None:
        update["errors"] = [{"code": code, "title": f"error {code}"}]
    if pricing is not None:
        update["pricing"] = pricing
    return update


def callback_sent_to(graph, to: str) -> str:
    """The biz_opaque_callback_data the sender gave Meta with its first message to `to`."""
    return next(r["payload"]["biz_opaque_callback_data"] for r in graph.requests if r["to"] == to)


def receive_event(source, count: int) -> dict:
    """Receive `count` messages from the source's queue and build the event Lambda would deliver for them."""
    messages: list[dict] = []
    while len(messages) < count:
        answer = get_sqs_client().receive_message(QueueUrl=source.queue_url, MaxNumberOfMessages=10, VisibilityTimeout=60)
        messages += answer.get("Messages", [])
    return source.to_event(messages)


def deliver_event(event: dict, timeout: float = 30) -> set[str]:
    """Invoke the sender on received messages as the event source would; return the ids of failed records.

    Done messages are deleted; failed ones become visible again at once (as if their visibility timeout
    passed).
    """
    response = load_handler("sender")(event, LocalContext("sender", timeout_seconds=timeout))
    failed = {f["itemIdentifier"] for f in response["batchItemFailures"]}
    settle_received(event, failed)
    return failed


def settle_received(event: dict, failed: set[str]) -> None:
    """What the poller does after an invocation: delete the done messages, let the failed ones come back."""
    sqs = get_sqs_client()
    urls: dict[str, str] = {}
    for record in event["Records"]:
        name = record["eventSourceARN"].rsplit(":", 1)[1]
        queue_url = urls.get(name) or urls.setdefault(name, sqs.get_queue_url(QueueName=name)["QueueUrl"])
        try:
            if record["messageId"] in failed:
                sqs.change_message_visibility(QueueUrl=queue_url, ReceiptHandle=record["receiptHandle"], VisibilityTimeout=0)
            else:
                sqs.delete_message(QueueUrl=queue_url, ReceiptHandle=record["receiptHandle"])
        except sqs.exceptions.ClientError:
            pass  # a stale receipt handle: the message was received again since
