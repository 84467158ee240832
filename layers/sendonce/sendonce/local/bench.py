"""`sendonce bench`: the real sender handler against PostgreSQL, DynamoDB (moto) and a fake Graph with latency,
next to a faithful copy of the seed's per-message flow, measured in the same run.

Everything is counted, not guessed: PostgreSQL round trips from libpq's protocol trace, DynamoDB requests from
botocore's request events on the idempotency store's client, Graph requests from the fake server's log.

SQS is left out on purpose: the handler receives the SQS events Lambda would build, so the figures are the
sender's own cost (moto's SQS slows down with queue depth and would only add noise). The rate limiter is set
to 1,000 messages/s (Meta's highest tier) so the pipeline, not the limit, is measured.
"""

from __future__ import annotations

import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import httpx

from sendonce import db
from sendonce.idempotency import get_dynamodb_client
from sendonce.local import services
from sendonce.local.fake_graph import FakeGraph
from sendonce.local.lambda_runtime import LocalContext, load_handler
from sendonce.local.pgtrace import count_round_trips
from sendonce.migrate import migrate
from sendonce.models import QueueMessage
from sendonce.repository.campaigns import insert_campaign
from sendonce.whatsapp import template_payload

PHONE_NUMBER_ID = "106540352242922"

# The seed's flow (backend/src/services/queueProcessor.js after its fixes), one message at a time.
SEED_SELECT = "SELECT whatsapp_message_id, status FROM send_queue WHERE id = %(id)s"
SEED_STORE_WAMID = "UPDATE send_queue SET whatsapp_message_id = %(wamid)s, actual_sent_at = now() WHERE id = %(id)s"
SEED_MARK_SENT = "UPDATE send_queue SET status = 'sent', updated_at = now() WHERE id = %(id)s"


@dataclass
class BenchResult:
    """The figures `sendonce bench --json` prints."""

    messages: int
    messages_per_second: float
    lambda_ms_per_message: float
    concurrency: int
    pg_round_trips_per_message: float
    ddb_requests_per_message: float
    graph_requests_per_message: float
    baseline_messages: int
    baseline_messages_per_second: float
    speedup_vs_seed_baseline: float
    graph_latency_ms: int
    duplicates: int
    database: str


def _campaign(conn, count: int, prefix: str) -> tuple[str, list[int]]:
    campaign_id = str(uuid.uuid4())
    fields = {
        "id": campaign_id,
        "name": f"bench {prefix}",
        "template_name": "order_update",
        "language_code": "en_US",
        "phone_number_id": PHONE_NUMBER_ID,
        "total_recipients": count,
    }
    insert_campaign(conn, fields, ((f"91{prefix}{i:08d}", ("Asha",)) for i in range(count)))
    ids = [row[0] for row in conn.execute("SELECT id FROM send_queue WHERE campaign_id = %s ORDER BY id", (campaign_id,))]
    return campaign_id, ids


def _events(campaign_id: str, ids: list[int], batch: int = 10) -> list[dict]:
    enqueue_id = uuid.uuid4().hex
    events = []
    for start in range(0, len(ids), batch):
        records = []
        for row_id in ids[start : start + batch]:
            body = QueueMessage(row_id, campaign_id, enqueue_id).body()
            records.append(
                {"messageId": str(uuid.uuid4()), "receiptHandle": "r", "body": body, "attributes": {"ApproximateReceiveCount": "1"},
                 "messageAttributes": {}, "md5OfBody": "", "eventSource": "aws:sqs",
                 "eventSourceARN": "arn:aws:sqs:us-east-1:123456789012:bench", "awsRegion": "us-east-1"}
            )
        events.append({"Records": records})
    return events


def _run_sendonce(conn, graph: FakeGraph, messages: int, concurrency: int) -> dict:
    campaign_id, ids = _campaign(conn, messages, "97")
    events = _events(campaign_id, ids)
    handler = load_handler("sender")
    ddb_requests = 0

    def count_ddb(**kwargs) -> None:
        nonlocal ddb_requests
        ddb_requests += 1

    get_dynamodb_client().meta.events.register("before-send.dynamodb", count_ddb)
    graph_before = len(graph.requests)
    handler_seconds = 0.0
    round_trips = 0
    lock = threading.Lock()

    def invoke(event: dict) -> int:
        nonlocal handler_seconds, round_trips
        sender_conn = db.get_conn()  # this "environment's" connection (one per thread); connecting is not counted
        started = time.perf_counter()
        with count_round_trips(sender_conn) as trips:
            failed = len(handler(event, LocalContext("sender"))["batchItemFailures"])
        with lock:
            handler_seconds += time.perf_counter() - started
            round_trips += trips.count
        return failed

    with ThreadPoolExecutor(max_workers=concurrency) as lambdas:
        started = time.perf_counter()
        failures = sum(lambdas.map(invoke, events))
        seconds = time.perf_counter() - started
    sent = conn.execute(
        "SELECT count(*) FROM send_queue WHERE campaign_id = %s AND status = 'sent'", (campaign_id,)
    ).fetchone()[0]
    if failures or sent != messages:
        raise RuntimeError(f"bench run incomplete: {sent} of {messages} sent, {failures} record failures")
    return {
        "seconds": seconds,
        "handler_seconds": handler_seconds,
        "round_trips": round_trips,
        "ddb_requests": ddb_requests,
        "graph_requests": len(graph.requests) - graph_before,
    }


def _run_seed(conn, graph: FakeGraph, messages: int) -> float:
    """The seed's loop: SELECT, send, UPDATE WAMID, UPDATE status, one message after another."""
    campaign_id, ids = _campaign(conn, messages, "96")
    rows = {
        row[0]: row[1]
        for row in conn.execute("SELECT id, phone_number FROM send_queue WHERE campaign_id = %s", (campaign_id,))
    }
    from sendonce.models import ClaimedRow

    with httpx.Client(base_url=graph.url + "/", headers={"Authorization": f"Bearer {graph.token}"}, timeout=10) as client:
        started = time.perf_counter()
        for row_id in ids:
            wamid, _status = conn.execute(SEED_SELECT, {"id": row_id}).fetchone()
            if wamid:
                continue
            row = ClaimedRow(row_id, campaign_id, rows[row_id], ("Asha",), "order_update", "en_US", PHONE_NUMBER_ID)
            answer = client.post(f"{PHONE_NUMBER_ID}/messages", json=template_payload(row)).json()
            conn.execute(SEED_STORE_WAMID, {"wamid": answer["messages"][0]["id"], "id": row_id})
            conn.execute(SEED_MARK_SENT, {"id": row_id})
        return time.perf_counter() - started


def run_bench(
    messages: int = 2000, latency: float = 0.1, baseline_messages: int = 200, concurrency: int = 4
) -> BenchResult:
    """Run both flows and return the figures."""
    graph = FakeGraph(token="bench-token", latency=latency)
    with services.local_stack("sendonce-bench", graph, moto_process=True, environ={"WHATSAPP_MAX_MPS": "1000"}) as stack:
        conn = db.connect()
        try:
            migrate(conn)
            ours = _run_sendonce(conn, graph, messages, concurrency)
            seed_seconds = _run_seed(conn, graph, baseline_messages)
        finally:
            conn.close()
        rate = messages / ours["seconds"]
        baseline_rate = baseline_messages / seed_seconds
        return BenchResult(
            messages=messages,
            messages_per_second=round(rate, 1),
            lambda_ms_per_message=round(ours["handler_seconds"] * 1000 / messages, 2),
            concurrency=concurrency,
            pg_round_trips_per_message=round(ours["round_trips"] / messages, 3),
            ddb_requests_per_message=round(ours["ddb_requests"] / messages, 3),
            graph_requests_per_message=round(ours["graph_requests"] / messages, 3),
            baseline_messages=baseline_messages,
            baseline_messages_per_second=round(baseline_rate, 1),
            speedup_vs_seed_baseline=round(rate / baseline_rate, 1),
            graph_latency_ms=round(latency * 1000),
            duplicates=len(graph.duplicates()),
            database=stack.database,
        )
