"""`sendonce local run`: a small campaign sent end to end on embedded defaults.

PostgreSQL is embedded unless DATABASE_URL is set; SQS and DynamoDB are moto's server; Meta is the fake Graph
server; the sender handler of functions/sender/app.py is fed by the local SQS event source.
"""

from __future__ import annotations

import csv
import random
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from sendonce import campaigns, contacts, db
from sendonce.repository.control import counters as read_counters
from sendonce.local import services
from sendonce.local.event_source import SqsEventSource, queue_depth
from sendonce.local.fake_graph import FakeGraph
from sendonce.local.lambda_runtime import load_handler
from sendonce.migrate import migrate

PHONE_NUMBER_ID = "106540352242922"


@dataclass
class LocalRunReport:
    """What `local run` prints."""

    campaign_id: str
    contacts_in_file: int
    recipients: int
    invalid: int
    duplicates: int
    enqueued: int
    counters: dict
    accepted_sends: int
    recipients_sent_more_than_once: int
    graph_requests: int
    dlq_messages: int
    sender_invocations: int
    seconds: float
    database: str
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """No recipient got a message twice and every send Meta accepted is counted."""
        return self.recipients_sent_more_than_once == 0 and self.accepted_sends >= self.counters["sent"]


def write_contacts(path: Path, count: int, seed: int = 1) -> int:
    """Write a CSV of `count` unique Indian mobile numbers, plus duplicates in other formats and bad rows."""
    rng = random.Random(seed)
    numbers = rng.sample(range(10**8), count)
    rows = [[f"9198{n:08d}", f"Customer {i + 1}"] for i, n in enumerate(numbers)]
    for i, n in enumerate(numbers[: max(count // 20, 1)]):
        rows.append([f"+91 98{n:08d}" if i % 2 else f"0091-98{n:08d}", "duplicate"])
    rows += [["12345", "too short"], ["not a number", "typo"]]
    rng.shuffle(rows)
    with path.open("w", newline="") as out:
        writer = csv.writer(out)
        writer.writerow(["phone", "param1"])
        writer.writerows(rows)
    return len(rows)


def local_run(contact_count: int = 200, chaos: bool = False, concurrency: int = 2) -> LocalRunReport:
    """Run one campaign of `contact_count` contacts through the whole pipeline and report what happened."""
    started = time.monotonic()
    graph = FakeGraph(token="local-token", chaos=0.15 if chaos else 0.0)
    with services.local_stack(
        "sendonce-local", graph, visibility_timeout=2, environ={"WHATSAPP_TIMEOUT_SECONDS": "2"}
    ) as stack:
        resources = stack.resources
        conn = db.get_conn()
        migrate(conn)
        with tempfile.TemporaryDirectory() as folder:
            csv_path = Path(folder) / "contacts.csv"
            in_file = write_contacts(csv_path, contact_count)
            contact_list = contacts.read_csv(csv_path)
        new = campaigns.NewCampaign(
            name="local run", template_name="order_update", language_code="en_US", phone_number_id=PHONE_NUMBER_ID
        )
        created = campaigns.create_campaign(conn, new, contact_list, resources.send_queue_url)
        source = SqsEventSource(resources.send_queue_url, load_handler("sender"), concurrency=concurrency)
        source.run_until_empty(timeout=300)
        counters = read_counters(conn, created.campaign_id)
        dlq_depth = queue_depth(resources.dlq_url)
        report = LocalRunReport(
            campaign_id=created.campaign_id,
            contacts_in_file=in_file,
            recipients=created.recipients,
            invalid=len(created.invalid),
            duplicates=created.duplicates,
            enqueued=created.enqueued,
            counters={k: counters[k] for k in ("recipients", "pending", "sent", "failed", "cancelled", "status")},
            accepted_sends=sum(graph.accepted.values()),
            recipients_sent_more_than_once=len(graph.duplicates()),
            graph_requests=len(graph.requests),
            dlq_messages=dlq_depth,
            sender_invocations=source.stats.invocations,
            seconds=round(time.monotonic() - started, 1),
            database=stack.database,
        )
        if counters["pending"]:
            report.notes.append(
                f"{counters['pending']} rows stay pending: their answer was lost after Meta may have accepted them "
                "(ambiguous window); reset_stuck or the status webhook resolves them."
            )
        return report


def report_lines(report: LocalRunReport) -> list[str]:
    """The human-readable summary."""
    c = report.counters
    lines = [
        f"campaign {report.campaign_id} ({report.database}, {report.seconds}s)",
        f"  contacts file: {report.contacts_in_file} rows -> {report.recipients} recipients, "
        f"{report.invalid} invalid, {report.duplicates} duplicates collapsed",
        f"  enqueued: {report.enqueued} SQS messages, {report.sender_invocations} sender invocations",
        f"  counters: sent {c['sent']}, failed {c['failed']}, pending {c['pending']}, cancelled {c['cancelled']} "
        f"(status {c['status']})",
        f"  fake Graph API: {report.graph_requests} requests, {report.accepted_sends} accepted, "
        f"{report.recipients_sent_more_than_once} recipients got a message more than once",
        f"  DLQ: {report.dlq_messages} messages",
        *[f"  note: {note}" for note in report.notes],
        "OK: every recipient got the message at most once" if report.ok else "FAILED: duplicate sends",
    ]
    return lines


def report_json(report: LocalRunReport) -> dict:
    """The `--json` object."""
    return {**asdict(report), "ok": report.ok}
