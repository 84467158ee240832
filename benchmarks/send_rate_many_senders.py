"""How close to a phone number's limit sendonce sends, however many senders run at once.

A campaign of `--mps` x `--seconds` rows is sent by N concurrent senders (processes, like Lambda
environments: threads of one process would wake late for their slots whenever the interpreter lock is busy)
through the real sender handler, against the fake Graph with Meta's behaviour at the cap (130429 past 1.25 x
the limit). The first messages are handed to the senders from a multiprocessing queue; rows the sender
defers (no send slot within MAX_SLOT_WAIT_SECONDS) come back through SQS (moto, in a process of its own; its
queue stays a few dozen messages deep, so its cost does not grow).

Printed per sender count: the achieved rate (sends accepted by the fake Graph, first to last) against the
limit, the most sends in any one second, Graph throttles (130429), deferrals, recipients sent twice, and how
far ahead the shared schedule ever was (it may never exceed MAX_SLOT_WAIT_SECONDS). Nothing is asserted about
the times; the script exits 1 if a recipient got a message twice or a row was not sent.

    .venv/bin/python benchmarks/send_rate_many_senders.py [--mps 20] [--max-slot-wait 2] [--senders 1 4 16 32]
        [--seconds 20] [--json]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import math
import multiprocessing
import os
import queue
import sys
import time
import uuid

from _database import database

from sendonce import db, whatsapp
from sendonce.local import services
from sendonce.local.fake_graph import FakeGraph
from sendonce.local.lambda_runtime import LocalContext, load_handler
from sendonce.migrate import migrate
from sendonce.models import QueueMessage
from sendonce.repository.campaigns import insert_campaign
from sendonce.sqs import get_sqs_client

PHONE_NUMBER_ID = "106540352242922"


def _record(message_id: str, body: str, receipt: str = "memory") -> dict:
    return {"messageId": message_id, "receiptHandle": receipt, "body": body, "attributes": {}, "messageAttributes": {},
            "md5OfBody": "", "eventSource": "aws:sqs", "eventSourceARN": "arn:aws:sqs:us-east-1:123456789012:send",
            "awsRegion": "us-east-1"}


def _sender(pending, stop, environ: dict, starts) -> None:
    """One sender environment: batches from `pending`, then deferred rows from SQS, until `stop`.

    Every Graph request's start time goes to `starts`: the senders' own view of their pace, which the fake
    Graph (a thread of the parent process, on a machine as busy as this one) records with its own delays.
    """
    os.environ.update(environ)
    logging.disable(logging.WARNING)  # a sender's logs would drown the figures
    send_template = whatsapp.send_template

    def timed_send(row, client=None):
        starts.put(time.time())
        return send_template(row, client)

    whatsapp.send_template = timed_send
    handler, sqs = load_handler("sender"), get_sqs_client()
    queue_url = environ["SEND_QUEUE_URL"]
    while not stop.is_set():
        batch = []
        with contextlib.suppress(queue.Empty):
            while len(batch) < 10:
                batch.append(pending.get_nowait())
        if not batch:
            received = sqs.receive_message(QueueUrl=queue_url, MaxNumberOfMessages=10, VisibilityTimeout=60)
            batch = [_record(m["MessageId"], m["Body"], m["ReceiptHandle"]) for m in received.get("Messages", [])]
        if not batch:
            time.sleep(0.05)
            continue
        response = handler({"Records": batch}, LocalContext("sender", timeout_seconds=30))
        failed = {f["itemIdentifier"] for f in response["batchItemFailures"]}
        for record in batch:
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


def _most_in_one_second(times: list[float]) -> int:
    times, start, best = sorted(times), 0, 0
    for end, at in enumerate(times):
        while at - times[start] >= 1.0:
            start += 1
        best = max(best, end - start + 1)
    return best


def run(senders: int, mps: int, max_wait: int, seconds: int) -> dict:
    """Send one campaign with `senders` concurrent senders; return the figures."""
    rows = mps * seconds
    graph = FakeGraph(token="rate-token", throttle_mps=math.ceil(mps * 1.25))
    environ = {"WHATSAPP_MAX_MPS": str(mps), "MAX_SLOT_WAIT_SECONDS": str(max_wait), "WHATSAPP_TIMEOUT_SECONDS": "5"}
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
            pending = multiprocessing.get_context("spawn").Queue()
            for i in ids:
                pending.put(_record(str(uuid.uuid4()), QueueMessage(i, campaign_id, enqueue_id).body()))
            stop, starts = multiprocessing.get_context("spawn").Event(), multiprocessing.get_context("spawn").Queue()
            processes = [
                multiprocessing.get_context("spawn").Process(target=_sender, args=(pending, stop, dict(os.environ), starts))
                for _ in range(senders)
            ]
            for process in processes:
                process.start()
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
            for process in processes:
                process.join(timeout=60)
            dead = get_sqs_client().get_queue_attributes(
                QueueUrl=stack.resources.dlq_url, AttributeNames=["ApproximateNumberOfMessages"]
            )["Attributes"]["ApproximateNumberOfMessages"]
        finally:
            conn.close()
        sent_at = []
        with contextlib.suppress(queue.Empty):
            while True:
                sent_at.append(starts.get(timeout=1))
        times = sorted(graph.accepted_at)
        rate = (len(times) - 1) / (times[-1] - times[0]) if len(times) > 1 else 0.0
        return {
            "senders": senders, "mps": mps, "max_slot_wait_s": max_wait, "rows": rows, "sent": sent,
            "achieved_mps": round(rate, 2), "achieved_over_limit": round(rate / mps, 3),
            "most_started_in_one_second": _most_in_one_second(sent_at),
            "most_accepted_in_one_second": graph.max_rate(), "throttled_130429": graph.throttled,
            "schedule_most_ahead_s": round(max(ahead, default=0), 2),
            "dead_lettered": int(dead), "duplicates": len(graph.duplicates()), "database": stack.database,
        }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mps", type=int, default=20)
    parser.add_argument("--max-slot-wait", type=int, default=2)
    parser.add_argument("--senders", type=int, nargs="+", default=[1, 4, 16, 32])
    parser.add_argument("--seconds", type=int, default=20, help="length of the campaign at the limit")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    results = []
    with database("sendonce_rate") as (dsn, where):
        os.environ["DATABASE_URL"] = dsn
        for senders in args.senders:
            results.append(run(senders, args.mps, args.max_slot_wait, args.seconds))
            r = results[-1]
            if not args.json:
                print(f"{senders:>3} senders: {r['achieved_mps']:>7} msg/s of {args.mps} ({r['achieved_over_limit']:.0%}), "
                      f"most sends started in one second {r['most_started_in_one_second']} "
                      f"(accepted by the fake Graph {r['most_accepted_in_one_second']}), 130429 {r['throttled_130429']}, "
                      f"schedule at most {r['schedule_most_ahead_s']} s ahead, dead-lettered {r['dead_lettered']}, "
                      f"sent twice {r['duplicates']} ({where})", flush=True)
    if args.json:
        print(json.dumps(results))
    return 0 if all(r["duplicates"] == 0 and r["sent"] == r["rows"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
