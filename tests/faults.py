"""The fault suites' shared world: fresh state per run, the normal recovery after any fault, and G2-G4.

Used by the enumeration of every statement of every handler (test_fault_enumeration.py) and the seeded soak
(test_soak.py).
"""

from __future__ import annotations

import json
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import boto3
import psycopg
import psycopg.rows
import pytest
from sendonce import campaigns, control
from sendonce.callback import sign
from sendonce.contacts import Contact, ContactList
from sendonce.local import reset_clients, services
from sendonce.local.fake_graph import FakeGraph
from sendonce.local.lambda_runtime import LocalContext, load_handler
from sendonce.local.pgproxy import PgFaultProxy
from sendonce.repository.campaigns import insert_campaign
from sendonce.sqs import get_sqs_client

from tests.helpers import (
    WEBHOOK_SECRET,
    load_event,
    phone,
    post_statuses,
    settle_received,
    status_update,
    truncate,
)

PHONE_NUMBER_ID = "106540352242922"
ACCEPTED = frozenset({"ok", "drop", "slow", "crash"})  # the fake Graph's fault kinds where Meta took the send
AMBIGUOUS = frozenset({"drop", "slow", "crash"})  # ... and where the sender never heard its answer
REPORT: list[str] = []  # printed at the end of the run by conftest's terminal summary


@dataclass
class World:
    """Everything a scenario acts on; `fresh()` gives a clean one for each injection point."""

    pg: psycopg.Connection
    database_url: str
    proxy: PgFaultProxy
    monkeypatch: pytest.MonkeyPatch
    folder: Path
    graph: FakeGraph | None = None
    aws: services.AwsResources | None = None
    campaign_ids: list[str] = field(default_factory=list)
    event: dict | None = None
    csv: Path | None = None
    statuses: list[dict] = field(default_factory=list)
    webhooks: bool = False
    allowed_blind: int = 0
    posted: set[str] = field(default_factory=set)

    def fresh(self) -> None:
        truncate(self.pg)
        if self.graph is None:
            self.graph = FakeGraph(token="fault-token").start()
            self.aws = services.create_aws_resources(f"f{uuid.uuid4().hex[:12]}", visibility_timeout=30)
        self.graph.reset()
        self.aws = fresh_queues(self.aws)
        for name, value in {
            **self.aws.environ(),
            "WHATSAPP_API_BASE_URL": self.graph.url,
            "WHATSAPP_ACCESS_TOKEN": self.graph.token,
            "WHATSAPP_TIMEOUT_SECONDS": "0.5",
            "THROTTLE_BASE_SECONDS": "0",
            "WHATSAPP_APP_SECRET": WEBHOOK_SECRET,
        }.items():
            self.monkeypatch.setenv(name, value)
        self.campaign_ids, self.event, self.csv, self.posted = [], None, None, set()
        self.allowed_blind = 0
        self.proxy.reset()
        self.direct()

    def direct(self) -> None:
        """Handlers reach PostgreSQL directly (setup, recovery)."""
        self.monkeypatch.setenv("DATABASE_URL", self.database_url)
        reset_clients()

    def proxied(self) -> None:
        """Handlers reach PostgreSQL through the fault proxy (the act)."""
        self.monkeypatch.setenv("DATABASE_URL", self.proxy.dsn)
        reset_clients()

    def campaign(self, *plans: tuple[str, ...], enqueue: bool = True, phones: list[str] | None = None) -> str:
        """A campaign with one row per plan (the fake Graph's answers to that recipient, then `ok`)."""
        first = 10 * len(self.campaign_ids)
        numbers = phones or [phone(first + i) for i in range(len(plans))]
        for number, plan in zip(numbers, plans):
            self.graph.plan(number, *plan)
        new = campaigns.NewCampaign("faults", "order_update", "en_US", PHONE_NUMBER_ID)
        contacts = ContactList(contacts=[Contact(n, ("Asha",)) for n in numbers])
        if enqueue:
            campaigns.create_campaign(self.pg, new, contacts, self.aws.send_queue_url)
        else:
            insert_campaign(self.pg, campaign_fields(new, len(numbers)), ((c.phone, c.params) for c in contacts.contacts))
        self.campaign_ids.append(new.id)
        return new.id

    def receive(self, count: int) -> dict:
        """`count` messages received from the send queue, as the event Lambda would build for them."""
        messages: list[dict] = []
        while len(messages) < count:
            messages += receive_messages(self.aws.send_queue_url)
        return sqs_event(self.aws.send_queue_url, messages)

    def rows(self) -> list[dict]:
        with self.pg.cursor(row_factory=psycopg.rows.dict_row) as cur:
            return cur.execute("SELECT * FROM send_queue ORDER BY id").fetchall()


def fresh_queues(aws: services.AwsResources) -> services.AwsResources:
    """New, empty queues (SQS purges once a minute at most) and an emptied idempotency table."""
    sqs = get_sqs_client()
    prefix = f"f{uuid.uuid4().hex[:12]}"
    dlq_url = sqs.create_queue(QueueName=f"{prefix}-dlq")["QueueUrl"]
    queue_url = sqs.create_queue(QueueName=f"{prefix}-send", Attributes={"VisibilityTimeout": "30", "RedrivePolicy": json.dumps(
        {"deadLetterTargetArn": f"arn:aws:sqs:{services.REGION}:123456789012:{prefix}-dlq", "maxReceiveCount": 5})})["QueueUrl"]
    ddb = boto3.client("dynamodb", region_name=services.REGION)
    for item in ddb.scan(TableName=aws.idempotency_table, ProjectionExpression="id")["Items"]:
        ddb.delete_item(TableName=aws.idempotency_table, Key={"id": item["id"]})
    return services.AwsResources(queue_url, dlq_url, aws.idempotency_table)


def receive_messages(queue_url: str) -> list[dict]:
    return get_sqs_client().receive_message(
        QueueUrl=queue_url, MaxNumberOfMessages=10, VisibilityTimeout=30, AttributeNames=["All"]
    ).get("Messages", [])


def sqs_event(queue_url: str, messages: list[dict]) -> dict:
    """The SQS event Lambda builds for received messages."""
    arn = f"arn:aws:sqs:{services.REGION}:123456789012:{queue_url.rsplit('/', 1)[1]}"
    return {"Records": [
        {"messageId": m["MessageId"], "receiptHandle": m["ReceiptHandle"], "body": m["Body"],
         "attributes": m.get("Attributes", {}), "messageAttributes": {}, "md5OfBody": m["MD5OfBody"],
         "eventSource": "aws:sqs", "eventSourceARN": arn, "awsRegion": services.REGION}
        for m in messages
    ]}


def campaign_fields(new: campaigns.NewCampaign, count: int) -> dict:
    return {"id": new.id, "name": new.name, "template_name": new.template_name, "language_code": new.language_code,
            "phone_number_id": new.phone_number_id, "total_recipients": count}


# -- recovery: what happens after any fault, without anybody knowing where it struck ------------------------


def drain(w: World, queue_url: str, function: str) -> None:
    """Feed a queue to a handler until it is empty, as its event source would; failed records come back at once."""
    handler = load_handler(function)
    for _ in range(200):
        messages = receive_messages(queue_url)
        if not messages:
            attributes = get_sqs_client().get_queue_attributes(QueueUrl=queue_url, AttributeNames=["All"])["Attributes"]
            if not int(attributes["ApproximateNumberOfMessages"]) + int(attributes["ApproximateNumberOfMessagesDelayed"]):
                return
            continue
        event = sqs_event(queue_url, messages)
        try:
            response = handler(event, LocalContext(function, timeout_seconds=30))
            failed = {f["itemIdentifier"] for f in (response or {}).get("batchItemFailures", [])}
        except Exception:  # noqa: BLE001 - a failed invocation: the whole batch comes back
            failed = {m["MessageId"] for m in messages}
        settle_received(event, failed)
    raise AssertionError(f"{queue_url} never emptied")


def expire_in_flight(w: World) -> None:
    """Let the idempotency records of invocations that died run out (their Lambda timeout passed)."""
    ddb = boto3.client("dynamodb", region_name=services.REGION)
    for item in ddb.scan(TableName=w.aws.idempotency_table)["Items"]:
        if item.get("status", {}).get("S") == "INPROGRESS":
            ddb.update_item(
                TableName=w.aws.idempotency_table, Key={"id": item["id"]},
                UpdateExpression="SET in_progress_expiration = :zero", ExpressionAttributeValues={":zero": {"N": "0"}},
            )


PRICING = {"billable": True, "pricing_model": "PMP", "category": "marketing", "type": "regular"}


def post_accepted(w: World) -> None:
    """Meta's `sent` status for every send it accepted, with the callback data the sender gave it."""
    statuses = []
    for request in w.graph.requests:
        to = request["to"]
        for wamid in w.graph.wamids.get(to, []):
            if wamid not in w.posted:
                w.posted.add(wamid)
                statuses.append(status_update(wamid, "sent", 100, request["payload"]["biz_opaque_callback_data"], to=to,
                                              pricing=PRICING))
    if statuses:
        assert post_statuses(statuses)["statusCode"] == 200


def settle(w: World) -> None:
    """Redeliveries, dead letters, webhooks (if any), reset_stuck past the window, until nothing is pending."""
    w.direct()
    for _ in range(10):
        expire_in_flight(w)
        drain(w, w.aws.send_queue_url, "sender")
        drain(w, w.aws.dlq_url, "dlq_handler")
        if w.webhooks:
            post_accepted(w)
        w.pg.execute("UPDATE send_queue SET claimed_at = claimed_at - interval '601 s' WHERE status = 'processing'")
        load_handler("reset_stuck")(load_event("reset_stuck_schedule.json"), LocalContext("reset_stuck"))
        pending, wait = w.pg.execute(
            "SELECT count(*), extract(epoch FROM min(wait_until) - now()) FROM send_queue "
            "WHERE status IN ('ready', 'processing')"
        ).fetchone()
        if not pending:
            break
        if wait is not None and 0 < wait <= 5:
            time.sleep(float(wait) + 0.05)  # time passes: the next run finds the rows' wait over
    control.recompute(w.pg)


def violations(w: World) -> list[str]:
    """What breaks G2, G3 or G4, in words."""
    key = w.pg.execute("SELECT callback_key FROM deployment").fetchone()[0]
    accepted: Counter[str] = Counter(
        r["payload"]["biz_opaque_callback_data"] for r in w.graph.requests if r["fault"].split(":")[0] in ACCEPTED
    )
    found = []
    rows = w.rows()
    for r in rows:
        times = accepted[sign(key, str(r["campaign_id"]), r["id"])]
        where = f"row {r['id']} ({r['status']}, {r['last_error']!r})"
        if r["status"] not in ("sent", "failed", "cancelled"):
            found.append(f"G3: {where} never ended")
        if times > 1 + r["unconfirmed_resends"]:
            found.append(f"G2: {where} accepted {times} times, {r['unconfirmed_resends']} blind resends")
        if times and r["status"] != "sent":
            found.append(f"G4: {where} accepted by Meta but not counted sent")
        if r["status"] == "sent" and r["whatsapp_message_id"] not in w.graph.wamids.get(r["phone_number"], []):
            found.append(f"G4: {where} sent with a WAMID Meta never gave")
    if w.graph.over_limit:
        found.append(f"limit: Meta took {sum(w.graph.over_limit.values())} sends past the portfolio's messaging limit")
    blind = sum(r["unconfirmed_resends"] for r in rows)
    if blind > w.allowed_blind:
        found.append(f"G2: {blind} resends without evidence, {w.allowed_blind} allowed")
    for campaign_id in w.campaign_ids:
        view = control.status(w.pg, campaign_id)
        mine = [r for r in rows if str(r["campaign_id"]) == campaign_id]
        counted = {s: sum(r["status"] == s for r in mine) for s in ("sent", "failed", "cancelled")}
        if {s: view[s] for s in counted} != counted or view["recipients"] != len(mine):
            found.append(f"G4: counters {view} against rows {counted}")
        stored = w.pg.execute(
            "SELECT total_sent, total_failed, total_cancelled FROM campaigns WHERE id = %s", (campaign_id,)
        ).fetchone()
        if stored != (view["sent"], view["failed"], view["cancelled"]):
            found.append(f"G4: campaigns.total_* {stored} against the view {view}")
    return found
