"""`sendonce bench`: the real sender handler against PostgreSQL, an idempotency store and a fake Graph with
latency, next to a faithful copy of the seed's per-message flow, measured in the same run.

Each sender environment is a process of its own, as each Lambda environment is: it takes whole SQS events (as
Lambda builds them) from a queue and runs the handler on them, one at a time. Everything is counted, not
guessed, in the environment itself: its CPU time (user + system of the process, all its threads, from
getrusage: what Lambda bills and sizes), PostgreSQL round trips from libpq's protocol trace, the claim's and the
finalize's time per batch (measured around the two statements on loopback: PostgreSQL's time plus ~0.1 ms),
DynamoDB requests from botocore's request events, Graph requests from the fake server's log.

The idempotency store is DynamoDB on moto (one process that answers one request at a time, so it can be what
limits the rate) or, with `idempotency_store="memory"`, Powertools' persistence layer on a dict
(`local.memory_idempotency`): the same phases without moto; the batch journal still goes to moto (one put per
batch). SQS is left out on purpose: the figures are the sender's own cost (moto's SQS slows down with queue
depth and would only add noise). The rate limiter is set to 1,000 messages/s (Meta's highest tier) so the
pipeline, not the limit, is measured.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import resource
import statistics
import time
import uuid
from dataclasses import dataclass

import httpx

from sendonce import db
from sendonce.capacity import SENDER_BATCH_SIZE
from sendonce.local import services
from sendonce.local.event_source import sqs_record
from sendonce.local.fake_graph import FakeGraph
from sendonce.migrate import migrate
from sendonce.models import QueueMessage
from sendonce.repository.campaigns import insert_campaign
from sendonce.whatsapp import template_payload

PHONE_NUMBER_ID = "106540352242922"
IDEMPOTENCY_STORES = ("dynamodb", "memory")

# The seed's flow (backend/src/services/queueProcessor.js after its fixes), one message at a time.
SEED_SELECT = "SELECT whatsapp_message_id, status FROM send_queue WHERE id = %(id)s"
SEED_STORE_WAMID = "UPDATE send_queue SET whatsapp_message_id = %(wamid)s, actual_sent_at = now() WHERE id = %(id)s"
SEED_MARK_SENT = "UPDATE send_queue SET status = 'sent', updated_at = now() WHERE id = %(id)s"


@dataclass
class BenchResult:
    """The figures `sendonce bench --json` prints."""

    messages: int
    sent: int
    deferred: int
    ambiguous: int
    messages_per_second: float
    lambda_ms_per_message: float
    cpu_ms_per_message: float
    concurrency: int
    batch_size: int
    idempotency_store: str
    pg_round_trips_per_message: float
    ddb_requests_per_message: float
    graph_requests_per_message: float
    claim_ms_per_batch: float
    finalize_ms_per_batch: float
    batch_ms_p50: float
    batch_ms_p99: float
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
        events.append({"Records": [sqs_record(str(uuid.uuid4()), QueueMessage(row_id, campaign_id, enqueue_id).body())
                                   for row_id in ids[start : start + batch]]})
    return events


def sender_handler(store: str):
    """The sender handler of a benchmark's sender process: quiet (its logs and metrics would drown the figures),
    its idempotency records in `store` (IDEMPOTENCY_STORES)."""
    logging.disable(logging.WARNING)
    os.environ["POWERTOOLS_METRICS_DISABLED"] = "true"  # no EMF lines on standard output
    from sendonce import idempotency
    from sendonce.local.lambda_runtime import load_handler

    if store == "memory":
        from sendonce.local.memory_idempotency import MemoryPersistenceLayer

        idempotency.use_persistence_store(MemoryPersistenceLayer())
    return load_handler("sender")


def _environment(jobs, results, store: str) -> None:
    """One sender environment (a process): handler invocations on the events from `jobs` until None."""
    from sendonce import idempotency, sender
    from sendonce.local.lambda_runtime import LocalContext
    from sendonce.local.pgtrace import count_round_trips

    handler = sender_handler(store)
    figures = {"round_trips": 0, "ddb_requests": 0, "claim": [], "finalize": [], "batches": [], "failed": 0}

    def count_ddb(**kwargs) -> None:
        figures["ddb_requests"] += 1

    def timed(function, name: str):
        def call(*args, **kwargs):
            started = time.perf_counter()
            try:
                return function(*args, **kwargs)
            finally:
                figures[name].append(time.perf_counter() - started)
        return call

    idempotency.get_dynamodb_client().meta.events.register("before-send.dynamodb", count_ddb)
    sender.claim_rows, sender.finalize_rows = timed(sender.claim_rows, "claim"), timed(sender.finalize_rows, "finalize")
    conn = db.get_conn()  # this environment's connection; connecting is not counted
    results.put("ready")
    usage = resource.getrusage(resource.RUSAGE_SELF)
    while (event := jobs.get()) is not None:
        started = time.perf_counter()
        with count_round_trips(conn) as trips:
            figures["failed"] += len(handler(event, LocalContext("sender"))["batchItemFailures"])
        figures["batches"].append(time.perf_counter() - started)
        figures["round_trips"] += trips.count
    after = resource.getrusage(resource.RUSAGE_SELF)
    figures["cpu_seconds"] = after.ru_utime - usage.ru_utime + after.ru_stime - usage.ru_stime
    results.put(figures)


def _run_sendonce(conn, graph: FakeGraph, messages: int, concurrency: int, batch: int, store: str) -> dict:
    campaign_id, ids = _campaign(conn, messages, "97")
    events = _events(campaign_id, ids, batch)
    graph_before = len(graph.requests)
    context = multiprocessing.get_context("spawn")  # no thread of this process (the fake Graph) is copied
    jobs, results = context.Queue(), context.Queue()
    environments = [context.Process(target=_environment, args=(jobs, results, store), daemon=True)
                    for _ in range(concurrency)]
    for process in environments:
        process.start()
    for _ in environments:
        if results.get(timeout=120) != "ready":
            raise RuntimeError("a sender environment did not start")
    started = time.perf_counter()
    for event in events:
        jobs.put(event)
    for _ in environments:
        jobs.put(None)
    figures = [results.get(timeout=600) for _ in environments]
    seconds = time.perf_counter() - started
    for process in environments:
        process.join(timeout=30)
    # Rows not sent in the run: deferred (their slot passed before their send started: the sender sends their
    # message again, delayed, which the bench does not receive) or ambiguous (no answer: reset_stuck's).
    sent, deferred, ambiguous = conn.execute(
        "SELECT count(*) FILTER (WHERE status = 'sent'), count(*) FILTER (WHERE status = 'ready'), "
        "count(*) FILTER (WHERE status = 'processing') FROM send_queue WHERE campaign_id = %s", (campaign_id,)
    ).fetchone()
    failures = sum(f["failed"] for f in figures)
    if failures or sent + deferred + ambiguous != messages:
        raise RuntimeError(f"bench run incomplete: {sent} of {messages} sent, {deferred} deferred, "
                           f"{ambiguous} ambiguous, {failures} record failures")
    batches = sorted(b for f in figures for b in f["batches"])
    return {
        "sent": sent,
        "deferred": deferred,
        "ambiguous": ambiguous,
        "seconds": seconds,
        "handler_seconds": sum(batches),
        "cpu_seconds": sum(f["cpu_seconds"] for f in figures),
        "round_trips": sum(f["round_trips"] for f in figures),
        "ddb_requests": sum(f["ddb_requests"] for f in figures),
        "graph_requests": len(graph.requests) - graph_before,
        "claim": statistics.mean(c for f in figures for c in f["claim"]),
        "finalize": statistics.mean(c for f in figures for c in f["finalize"]),
        "batch_p50": batches[len(batches) // 2],
        "batch_p99": batches[min(len(batches) - 1, int(len(batches) * 0.99))],
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
    messages: int = 2000, latency: float = 0.1, baseline_messages: int = 200, concurrency: int = 4,
    batch_size: int = SENDER_BATCH_SIZE, idempotency_store: str = "dynamodb",
) -> BenchResult:
    """Run both flows and return the figures."""
    if idempotency_store not in IDEMPOTENCY_STORES:
        raise ValueError(f"idempotency_store must be one of {', '.join(IDEMPOTENCY_STORES)}")
    graph = FakeGraph(token="bench-token", latency=latency)
    with services.local_stack("sendonce-bench", graph, moto_process=True, environ={"WHATSAPP_MAX_MPS": "1000"}) as stack:
        conn = db.connect()
        try:
            migrate(conn)
            ours = _run_sendonce(conn, graph, messages, concurrency, batch_size, idempotency_store)
            seed_seconds = _run_seed(conn, graph, baseline_messages)
        finally:
            conn.close()
        rate = ours["sent"] / ours["seconds"]
        baseline_rate = baseline_messages / seed_seconds
        return BenchResult(
            messages=messages,
            sent=ours["sent"],
            deferred=ours["deferred"],
            ambiguous=ours["ambiguous"],
            messages_per_second=round(rate, 1),
            lambda_ms_per_message=round(ours["handler_seconds"] * 1000 / messages, 2),
            cpu_ms_per_message=round(ours["cpu_seconds"] * 1000 / messages, 2),
            concurrency=concurrency,
            batch_size=batch_size,
            idempotency_store="memory (Powertools persistence layer on a dict)" if idempotency_store == "memory"
            else "dynamodb (moto)",
            pg_round_trips_per_message=round(ours["round_trips"] / messages, 3),
            ddb_requests_per_message=round(ours["ddb_requests"] / messages, 3),
            graph_requests_per_message=round(ours["graph_requests"] / messages, 3),
            claim_ms_per_batch=round(ours["claim"] * 1000, 2),
            finalize_ms_per_batch=round(ours["finalize"] * 1000, 2),
            batch_ms_p50=round(ours["batch_p50"] * 1000, 1),
            batch_ms_p99=round(ours["batch_p99"] * 1000, 1),
            baseline_messages=baseline_messages,
            baseline_messages_per_second=round(baseline_rate, 1),
            speedup_vs_seed_baseline=round(rate / baseline_rate, 1),
            graph_latency_ms=round(latency * 1000),
            duplicates=len(graph.duplicates()),
            database=stack.database,
        )
