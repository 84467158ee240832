"""How long `sendonce campaign create` takes for a 1,000,000-contact CSV, phase by phase.

The issue asks that a million-contact campaign be created and enqueued inside one Lambda's 15 minutes (900 s).
This script does what `sendonce campaign create` does, with the package's own functions, and times:

1. `contacts.read_csv`: parse, normalise every number to E.164, collapse duplicates;
2. `repository.campaigns.insert_campaign`: the campaign row and COPY of every recipient, in one transaction;
3. `campaigns.enqueue_campaign`: stream the ready row ids through a server-side cursor and call
   SendMessageBatch (10 messages each) with `sqs.IN_FLIGHT` calls in flight;

and prints each phase's seconds and rows/s, the total against 900 s, and the peak RSS (a Lambda's memory is
limited). The generated CSV has N unique mobiles plus 1% duplicates written in other formats and a few invalid
rows; generating it is not timed.

PostgreSQL: DATABASE_URL when set (the benchmark campaign is deleted afterwards); else a throwaway database on
postgresql://postgres@127.0.0.1:5432 (dropped afterwards); else an embedded server.

SQS: real SQS is not reachable here, and moto's SQS slows down as the queue grows, so the queue is a minimal
stand-in: an HTTP server that answers SendMessageBatch (the AWS JSON 1.0 protocol recent botocore uses, or the
query/XML protocol of botocore releases that still use it) with every entry successful after a simulated
service latency (`--sqs-latency-ms`, default 20 ms, a typical round trip inside a region), and counts the
messages it took. It runs in a child process, as SQS runs on other machines, so its CPU does not compete with
the enqueuer's GIL; boto3 finds it through AWS_ENDPOINT_URL_SQS.

    .venv/bin/python benchmarks/create_campaign_1m.py [--contacts N] [--sqs-latency-ms MS] [--json]
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import hashlib
import json
import multiprocessing
import os
import platform
import resource
import sys
import tempfile
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs
from xml.sax.saxutils import escape

import botocore
import psycopg
from sendonce import campaigns, contacts, db, sqs
from sendonce.repository import campaigns as repository
from sendonce.local import reset_clients
from sendonce.migrate import migrate

from _database import database
from sendonce.observability import logger

LAMBDA_LIMIT_SECONDS = 900
DUPLICATE_EVERY = 100  # 1% duplicates, in other formats
INVALID_EVERY = 10_000
# i -> (A * i + B) mod 10**8 is a permutation (A is coprime with 10**8): unique numbers without a set in memory.
A, B = 48_271_593, 12_345_678


def write_contacts(path: Path, count: int) -> tuple[int, int, int]:
    """Write `count` unique mobiles, plus duplicates and invalid rows; return (rows, duplicates, invalid)."""
    duplicates = invalid = 0
    with path.open("w", newline="") as out:
        writer = csv.writer(out)
        writer.writerow(["phone", "param1"])
        for i in range(count):
            writer.writerow([f"9198{(A * i + B) % 10**8:08d}", f"Customer {i}"])
            if i % DUPLICATE_EVERY == DUPLICATE_EVERY - 1:
                earlier = (A * (i // 2) + B) % 10**8
                writer.writerow(
                    [f"+91 98{earlier:08d}" if duplicates % 2 else f"0091-98{earlier:08d}", "dup"]
                )
                duplicates += 1
            if i % INVALID_EVERY == 0:
                writer.writerow(["12345" if invalid % 2 else "not a number", "invalid"])
                invalid += 1
    return count + duplicates + invalid, duplicates, invalid


class SqsStandIn(BaseHTTPRequestHandler):
    """Answers SendMessageBatch: every entry successful, after `latency` seconds; counts messages taken."""

    protocol_version = "HTTP/1.1"  # keep-alive, as boto3 uses with SQS
    disable_nagle_algorithm = True  # else delayed ACKs add ~40 ms to each answer
    latency = 0.0
    messages = calls = None  # multiprocessing.Value, shared with the parent

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", 0))).decode()
        if self.headers.get("X-Amz-Target") == "AmazonSQS.SendMessageBatch":  # AWS JSON 1.0
            entries = [(e["Id"], e["MessageBody"]) for e in json.loads(body)["Entries"]]
            time.sleep(self.latency)
            answer = json.dumps(
                {"Successful": [self._entry(key, text) for key, text in entries], "Failed": []}
            )
            self._count(len(entries))
            return self._reply(200, "application/x-amz-json-1.0", answer)
        form = {k: v[0] for k, v in parse_qs(body).items()}
        if form.get("Action") == "SendMessageBatch":  # query protocol, XML answer
            prefix = "SendMessageBatchRequestEntry"
            n = sum(1 for k in form if k.startswith(prefix) and k.endswith(".Id"))
            entries = [(form[f"{prefix}.{i}.Id"], form[f"{prefix}.{i}.MessageBody"]) for i in range(1, n + 1)]
            time.sleep(self.latency)
            results = "".join(
                "<SendMessageBatchResultEntry>"
                + "".join(f"<{k}>{escape(v)}</{k}>" for k, v in self._entry(key, text).items())
                + "</SendMessageBatchResultEntry>"
                for key, text in entries
            )
            answer = (
                '<SendMessageBatchResponse xmlns="http://queue.amazonaws.com/doc/2012-11-05/">'
                f"<SendMessageBatchResult>{results}</SendMessageBatchResult>"
                f"<ResponseMetadata><RequestId>{uuid.uuid4()}</RequestId></ResponseMetadata>"
                "</SendMessageBatchResponse>"
            )
            self._count(len(entries))
            return self._reply(200, "text/xml", answer)
        error = {"__type": "com.amazonaws.sqs#UnsupportedOperation", "message": "only SendMessageBatch"}
        self._reply(400, "application/x-amz-json-1.0", json.dumps(error))

    @staticmethod
    def _entry(key: str, text: str) -> dict:
        return {
            "Id": key,
            "MessageId": str(uuid.uuid4()),
            "MD5OfMessageBody": hashlib.md5(text.encode()).hexdigest(),
        }

    def _count(self, n: int) -> None:
        with self.messages.get_lock():
            self.messages.value += n
            self.calls.value += 1

    def _reply(self, status: int, content_type: str, text: str) -> None:
        data = text.encode()
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


class _Server(ThreadingHTTPServer):
    request_queue_size = 128
    daemon_threads = True


@contextlib.contextmanager
def sqs_stand_in(latency_ms: float):
    """Serve the stand-in from a child process; yield (queue_url, messages, calls)."""
    ctx = multiprocessing.get_context("fork")  # before any thread exists
    SqsStandIn.latency = latency_ms / 1000
    SqsStandIn.messages, SqsStandIn.calls = ctx.Value("q", 0), ctx.Value("q", 0)
    server = _Server(("127.0.0.1", 0), SqsStandIn)
    child = ctx.Process(target=server.serve_forever, daemon=True)
    child.start()
    server.socket.close()  # the child accepts
    try:
        yield (
            f"http://127.0.0.1:{server.server_port}/123456789012/bench",
            SqsStandIn.messages,
            SqsStandIn.calls,
        )
    finally:
        child.terminate()
        child.join()


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


@contextlib.contextmanager
def phase(figures: dict, name: str):
    """Record the phase's wall seconds, this process's CPU seconds (all threads) and the peak RSS after it."""
    wall, cpu = time.perf_counter(), time.process_time()
    yield
    figures[f"{name}_seconds"] = time.perf_counter() - wall
    figures[f"{name}_cpu_seconds"] = time.process_time() - cpu
    figures[f"peak_rss_mb_after_{name}"] = peak_rss_mb()


def run(count: int, latency_ms: float) -> dict:
    """Generate the CSV, create and enqueue the campaign as the CLI does, and return the figures."""
    logger.setLevel("WARNING")  # the package logs one JSON line per phase to stdout
    with sqs_stand_in(latency_ms) as (queue_url, received, calls), database("sendonce_bench") as (dsn, described):
        os.environ.update(
            AWS_ENDPOINT_URL_SQS=queue_url.rsplit("/", 2)[0],
            AWS_ACCESS_KEY_ID="bench",
            AWS_SECRET_ACCESS_KEY="bench",
            AWS_DEFAULT_REGION="us-east-1",
            AWS_REGION="us-east-1",
        )
        reset_clients()
        with tempfile.TemporaryDirectory(prefix="sendonce-bench-") as folder, db.connect(dsn) as conn:
            migrate(conn)
            csv_path = Path(folder) / "contacts.csv"
            started = time.perf_counter()
            csv_rows, duplicates, invalid = write_contacts(csv_path, count)
            figures = {
                "csv_generate_seconds": time.perf_counter() - started,
                "peak_rss_mb_before": peak_rss_mb(),
            }

            with phase(figures, "read_csv"):
                contact_list = contacts.read_csv(csv_path)

            # What campaigns.create_campaign does, phase by phase.
            campaign = campaigns.NewCampaign(
                name="benchmark",
                template_name="order_update",
                language_code="en_US",
                phone_number_id="1065403522",
            )
            campaign.validate()
            fields = {
                "id": campaign.id,
                "name": campaign.name,
                "template_name": campaign.template_name,
                "language_code": campaign.language_code,
                "phone_number_id": campaign.phone_number_id,
                "components": [],
                "total_recipients": len(contact_list.contacts),
            }
            with phase(figures, "copy"):
                repository.insert_campaign(conn, fields, ((c.phone, c.params) for c in contact_list.contacts))
            with phase(figures, "enqueue"):
                enqueued = campaigns.enqueue_campaign(conn, campaign.id, queue_url)

            if described == "DATABASE_URL":
                conn.execute("DELETE FROM campaigns WHERE id = %s", (campaign.id,))
            server_version = conn.info.server_version
        reset_clients()

    recipients = len(contact_list.contacts)
    checks = {
        "recipients": (recipients, count),
        "duplicates": (contact_list.duplicates, duplicates),
        "invalid": (len(contact_list.invalid), invalid),
        "enqueued": (enqueued, recipients),
        "sqs_messages_received": (received.value, enqueued),
    }
    total = figures["read_csv_seconds"] + figures["copy_seconds"] + figures["enqueue_seconds"]
    return {
        "contacts": count,
        "csv_rows": csv_rows,
        "recipients": recipients,
        "duplicates": contact_list.duplicates,
        "invalid": len(contact_list.invalid),
        "enqueued": enqueued,
        "sqs_messages_received": received.value,
        "sqs_calls": calls.value,
        **{k: round(v, 2) for k, v in figures.items()},
        "total_seconds": round(total, 2),
        "lambda_limit_seconds": LAMBDA_LIMIT_SECONDS,
        "share_of_lambda_limit": round(total / LAMBDA_LIMIT_SECONDS, 3),
        "peak_rss_mb": round(peak_rss_mb(), 1),
        "sqs_latency_ms": latency_ms,
        "in_flight": sqs.IN_FLIGHT,
        "batch": sqs.BATCH,
        "sqs_protocol": sqs.get_sqs_client().meta.service_model.protocol,
        "database": f"{described}, PostgreSQL {server_version // 10000}.{server_version % 10000}",
        "versions": {
            "python": platform.python_version(),
            "botocore": botocore.__version__,
            "psycopg": psycopg.__version__,
        },
        "cpus": os.cpu_count(),
        "load_average_1m_at_end": round(os.getloadavg()[0], 2),  # other work on the machine skews the figures
        "mismatches": {k: {"got": got, "expected": want} for k, (got, want) in checks.items() if got != want},
    }


def print_table(r: dict) -> None:
    n = r["recipients"]
    print(
        f"campaign create + enqueue: {r['contacts']:,} contacts ({r['csv_rows']:,} CSV rows: "
        f"{r['duplicates']:,} duplicates, {r['invalid']:,} invalid)"
    )
    print(
        f"database: {r['database']}; SQS stand-in: {r['sqs_protocol']} protocol, {r['sqs_latency_ms']:g} ms "
        f"per SendMessageBatch, {r['in_flight']} in flight; {r['cpus']} CPUs\n"
    )
    print(f"{'phase':<44}{'seconds':>9}{'CPU s':>9}{'rows/s':>10}{'peak RSS MB':>13}")
    for label, name, rows in [
        ("read_csv (parse, normalise, dedupe)", "read_csv", r["csv_rows"]),
        ("insert_campaign (COPY, one transaction)", "copy", n),
        (f"enqueue_campaign ({r['sqs_calls']:,} SendMessageBatch)", "enqueue", n),
    ]:
        seconds = r[f"{name}_seconds"]
        print(
            f"{label:<44}{seconds:>9.2f}{r[f'{name}_cpu_seconds']:>9.2f}{rows / seconds:>10,.0f}"
            f"{r[f'peak_rss_mb_after_{name}']:>13.0f}"
        )
    print(
        f"{'total':<44}{r['total_seconds']:>9.2f}{'':>9}{n / r['total_seconds']:>10,.0f}{r['peak_rss_mb']:>13.0f}"
    )
    print(
        f"\nLambda limit {r['lambda_limit_seconds']} s: the total is {r['share_of_lambda_limit']:.1%} of it "
        f"({r['lambda_limit_seconds'] / r['total_seconds']:.1f}x headroom). Peak RSS {r['peak_rss_mb']:.0f} MB "
        f"({r['peak_rss_mb_before']:.0f} MB before read_csv). CSV generation (untimed): "
        f"{r['csv_generate_seconds']:.1f} s. Load average at the end: {r['load_average_1m_at_end']}."
    )
    if r["mismatches"]:
        print(f"MISMATCH: {r['mismatches']}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--contacts", type=int, default=1_000_000, help="unique contacts (default 1,000,000)")
    parser.add_argument(
        "--sqs-latency-ms", type=float, default=20.0, help="simulated SendMessageBatch latency"
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args()
    if not 0 < args.contacts <= 10**8:
        parser.error("--contacts must be between 1 and 100,000,000")
    result = run(args.contacts, args.sqs_latency_ms)
    if args.json:
        print(json.dumps(result))
    else:
        print_table(result)
    return 1 if result["mismatches"] else 0


if __name__ == "__main__":
    sys.exit(main())
