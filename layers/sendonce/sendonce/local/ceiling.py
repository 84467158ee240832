"""`sendonce bench --ceiling`: a campaign driven at a phone number's configured limit by enough senders, against
the fake Graph with Meta's behaviour at the cap (130429 past it), and the highest limit this machine can feed.

Each sender is a process of its own (a Lambda environment: threads of one process would wake late for their
slots whenever the interpreter lock is busy). The first messages are handed to the senders from a
multiprocessing queue; rows a sender defers (no send slot within MAX_SLOT_WAIT_SECONDS, or a slot that passed
before the send started) or that Meta throttled come back through SQS (moto, in a process of its own; its queue
stays a few dozen messages deep, so its cost does not grow). The idempotency store is in memory by default
(`local.memory_idempotency`): moto's DynamoDB answers one request at a time, ~70 messages/s at two requests per
message, and would be the ceiling measured.

Meta does not document the window of its per-number cap. The fake Graph refuses a send with 130429 when its
token bucket, refilled at the limit and holding `burst` seconds of sends (half a second by default), is empty:
the rate over time, with a short burst. A sender never starts a send before its slot and never more than
MIN_SLOT_LATENESS (0.25 s) after it, so it stays within such a bucket. `most_accepted_in_one_second` shows the
stricter view (any one-second window) next to it.
"""

from __future__ import annotations

import contextlib
import math
import multiprocessing
import os
import queue
import resource
import time
import uuid

from sendonce import db, whatsapp
from sendonce.capacity import SENDER_BATCH_SIZE
from sendonce.local import services
from sendonce.local.event_source import queue_depth, sqs_record
from sendonce.local.fake_graph import FakeGraph, most_within
from sendonce.migrate import migrate
from sendonce.models import QueueMessage
from sendonce.repository.campaigns import insert_campaign

PHONE_NUMBER_ID = "106540352242922"
# The limits the search tries, up to Meta's ceiling for a number.
LADDER = (25, 50, 100, 200, 400, 600, 800, 1000)
PASSING_SHARE = 0.9  # a limit is fed when the achieved rate is at least 90% of it, with 0 throttles and duplicates
MAX_SENDERS = 48


def _sender(pending, stop, environ: dict, store: str, batch: int, reports) -> None:
    """One sender environment: batches from `pending`, then deferred and throttled rows from SQS, until `stop`.

    `reports` gets "ready" once the handler is loaded, then (CPU seconds the sending took, the start time of
    every Graph request: the senders' own view of their pace, which the fake Graph, a thread of the parent
    process on a machine as busy as this one, records with its own delays). One message at the end: a queue
    written all along and read only at the end would fill its pipe and keep the process from exiting.
    """
    os.environ.update(environ)
    from sendonce.local.bench import sender_handler
    from sendonce.local.lambda_runtime import LocalContext
    from sendonce.sqs import get_sqs_client

    handler = sender_handler(store)
    send_template = whatsapp.send_template
    starts: list[float] = []

    def timed_send(row, client=None):
        starts.append(time.time())
        return send_template(row, client)

    whatsapp.send_template = timed_send
    sqs = get_sqs_client()
    queue_url = environ["SEND_QUEUE_URL"]
    sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["QueueArn"])  # connected before the clock starts
    reports.put("ready")
    usage = resource.getrusage(resource.RUSAGE_SELF)
    while not stop.is_set():
        records = []
        with contextlib.suppress(queue.Empty):
            while len(records) < batch:
                records.append(pending.get_nowait())
        if not records:
            received = sqs.receive_message(QueueUrl=queue_url, MaxNumberOfMessages=10, VisibilityTimeout=60)
            records = [sqs_record(m["MessageId"], m["Body"], m["ReceiptHandle"]) for m in received.get("Messages", [])]
        if not records:
            time.sleep(0.05)
            continue
        response = handler({"Records": records}, LocalContext("sender", timeout_seconds=30))
        failed = {f["itemIdentifier"] for f in response["batchItemFailures"]}
        for record in records:
            # A failed record comes back after a visibility timeout (5 s here, 180 s in the stack): by then the
            # invocation that holds its row has finished, as with Lambda's poller.
            with contextlib.suppress(sqs.exceptions.ClientError):  # a stale receipt handle
                if record["receiptHandle"] == "memory":
                    if record["messageId"] in failed:
                        sqs.send_message(QueueUrl=queue_url, MessageBody=record["body"], DelaySeconds=5)
                elif record["messageId"] in failed:
                    sqs.change_message_visibility(QueueUrl=queue_url, ReceiptHandle=record["receiptHandle"],
                                                  VisibilityTimeout=5)
                else:
                    sqs.delete_message(QueueUrl=queue_url, ReceiptHandle=record["receiptHandle"])
    after = resource.getrusage(resource.RUSAGE_SELF)
    reports.put((after.ru_utime - usage.ru_utime + after.ru_stime - usage.ru_stime, starts))


def senders_for(mps: float, latency: float, batch: int) -> int:
    """Senders to feed `mps` (Little's law): batches a second x a batch's time (its slots, Meta's answer and
    ~100 ms of claim, finalize and CPU), plus two so that a sender finalizing never leaves the schedule idle."""
    batch_seconds = batch / mps + latency + 0.1
    return max(2, min(MAX_SENDERS, math.ceil(mps / batch * batch_seconds) + 2))


def run_at_limit(mps: int, senders: int | None = None, seconds: float = 10, max_wait: int = 10, latency: float = 0.1,
                 batch: int = SENDER_BATCH_SIZE, burst: float | None = 0.5, throttle_factor: float = 1.0,
                 store: str = "memory") -> dict:
    """Send one campaign of `mps` x `seconds` rows at the limit `mps`; return the figures.

    Parameters
    ----------
    burst
        The fake Graph's cap: a token bucket holding `burst` seconds of sends; None: more than
        `throttle_factor` x `mps` sends in any one second are refused.
    """
    senders = senders or senders_for(mps, latency, batch)
    rows = math.ceil(mps * seconds)
    graph = FakeGraph(token="rate-token", latency=latency, throttle_mps=math.ceil(mps * throttle_factor),
                      throttle_burst=burst)
    environ = {"WHATSAPP_MAX_MPS": str(mps), "MAX_SLOT_WAIT_SECONDS": str(max_wait), "WHATSAPP_TIMEOUT_SECONDS": "5"}
    spawn = multiprocessing.get_context("spawn")  # no thread of this process (the fake Graph) is copied
    with services.local_stack("sendonce-rate", graph, moto_process=True, environ=environ) as stack:
        conn = db.connect()
        try:
            migrate(conn)
            conn.execute("DELETE FROM rate_limits WHERE phone_number_id = %s", (PHONE_NUMBER_ID,))
            campaign_id = str(uuid.uuid4())
            fields = {"id": campaign_id, "name": "rate", "template_name": "order_update", "language_code": "en_US",
                      "phone_number_id": PHONE_NUMBER_ID, "total_recipients": rows}
            insert_campaign(conn, fields, ((f"9195{i:08d}", ("Asha",)) for i in range(rows)))
            ids = [r[0] for r in conn.execute("SELECT id FROM send_queue WHERE campaign_id = %s ORDER BY id", (campaign_id,))]
            enqueue_id = uuid.uuid4().hex
            pending, stop, reports = spawn.Queue(), spawn.Event(), spawn.Queue()
            processes = [spawn.Process(target=_sender, args=(pending, stop, dict(os.environ), store, batch, reports))
                         for _ in range(senders)]
            for process in processes:
                process.start()
            for _ in processes:  # every sender ready, then the messages: the run starts at full strength
                if reports.get(timeout=120) != "ready":
                    raise RuntimeError("a sender did not start")
            for i in ids:
                pending.put(sqs_record(str(uuid.uuid4()), QueueMessage(i, campaign_id, enqueue_id).body()))
            ahead: list[float] = []
            sent, started = 0, time.monotonic()
            while sent < rows and time.monotonic() - started < seconds * 4 + 120:
                time.sleep(0.25)
                sent, schedule = conn.execute(
                    "SELECT (SELECT count(*) FROM send_queue WHERE campaign_id = %s AND status = 'sent'), "
                    "(SELECT extract(epoch FROM next_slot_at - now()) FROM rate_limits WHERE phone_number_id = %s)",
                    (campaign_id, PHONE_NUMBER_ID),
                ).fetchone()
                ahead.append(float(schedule or 0))
            stop.set()
            pending.cancel_join_thread()  # rows left unread (a run that timed out) must not hold this process
            ends = [reports.get(timeout=60) for _ in processes]
            for process in processes:
                process.join(timeout=60)
            dead = queue_depth(stack.resources.dlq_url)
        finally:
            conn.close()
        cpu = sum(end[0] for end in ends)
        sent_at = [at for end in ends for at in end[1]]
        times = sorted(graph.accepted_at)
        rate = (len(times) - 1) / (times[-1] - times[0]) if len(times) > 1 else 0.0
        return {
            "configured_mps": mps, "achieved_mps": round(rate, 1), "achieved_share": round(rate / mps, 3),
            "throttled": graph.throttled, "duplicates": len(graph.duplicates()), "rows": rows, "sent": sent,
            "senders": senders, "batch_size": batch, "graph_latency_ms": round(latency * 1000),
            "cpu_ms_per_message": round(cpu * 1000 / max(sent, 1), 2),
            "most_started_in_one_second": most_within(sent_at),
            "most_accepted_in_one_second": graph.max_rate(),
            "schedule_most_ahead_s": round(max(ahead, default=0), 2), "dead_lettered": int(dead),
            "max_slot_wait_s": max_wait, "idempotency_store": store,
            "throttle": f"token bucket of {burst:g} s at the limit" if burst is not None
            else f"more than {throttle_factor:g} x the limit in one second", "database": stack.database,
        }


def fed(run: dict) -> bool:
    """Whether a run fed its limit: >= 90% of it, every row sent, 0 throttles, 0 duplicates."""
    return (run["achieved_share"] >= PASSING_SHARE and run["throttled"] == 0 and run["duplicates"] == 0
            and run["sent"] == run["rows"])


def ceiling(mps: int | None = None, seconds: float = 10, latency: float = 0.1, batch: int = SENDER_BATCH_SIZE,
            store: str = "memory", on_run=None) -> dict:
    """The ceiling run: at `mps`, or up the ladder (25 ... 1,000 messages/s) until a limit is not fed.

    Returns the run at the highest limit fed (or the one run at `mps`) at the top level (`configured_mps`,
    `achieved_mps`, `throttled`, `duplicates`...), every run in `runs`, and `extrapolation`: what 1,000 messages/s
    needs by the CPU per message measured here (`capacity.plan`), since two cores feed less.
    """
    from sendonce import capacity

    runs = []
    for limit in (mps,) if mps else LADDER:
        runs.append(run_at_limit(limit, seconds=seconds, latency=latency, batch=batch, store=store))
        if on_run:
            on_run(runs[-1])
        if not fed(runs[-1]):
            break
    passed = [r for r in runs if fed(r)]
    best = passed[-1] if passed else runs[-1]
    cpu_ms = best["cpu_ms_per_message"]
    target = capacity.META_MAX_MPS
    at_target = capacity.plan(1_000_000, target, batch, latency * 1000,
                              measured=capacity.Measured(cpu_ms_per_message=cpu_ms))
    # The in-memory store leaves out the botocore client's CPU for DynamoDB: the model's default has it.
    with_dynamodb = capacity.plan(1_000_000, target, batch, latency * 1000)
    return {
        **{key: best[key] for key in ("configured_mps", "achieved_mps", "achieved_share", "throttled", "duplicates",
                                      "senders", "cpu_ms_per_message")},
        "highest_fed_mps": passed[-1]["configured_mps"] if passed else None,
        "cores": os.cpu_count(),
        "runs": runs,
        "extrapolation": {
            "target_mps": target,
            "sender_cpu_seconds_per_second": round(target * cpu_ms / 1000, 2),
            "lambda_concurrency": at_target["lambda"]["concurrency"],
            "lambda_concurrency_with_dynamodb": with_dynamodb["lambda"]["concurrency"],
            "method": (
                f"The senders used {cpu_ms} ms of CPU per message here (all their processes, from getrusage), so "
                f"{target:,} messages/s needs {target * cpu_ms / 1000:.1f} CPU-seconds every second in senders; "
                f"this machine's {os.cpu_count()} cores also run PostgreSQL, the fake Graph and moto. On Lambda "
                f"each environment has its own CPU (512 MB: 0.29 vCPU): `sendonce plan --recipients 1000000 --mps "
                f"{target}` with this CPU per message gives {at_target['lambda']['concurrency']} concurrent senders"
                + (f" ({with_dynamodb['lambda']['concurrency']} with DynamoDB's client CPU, "
                   f"{capacity.Measured().cpu_ms_per_message} ms per message: `sendonce bench`)" if store == "memory" else "")
                + ". "
                "The shared coordination (the claim's rate_limits row, the finalize) is measured apart, by "
                "benchmarks/coordination.py, up to 200 connections."
            ),
        },
    }
