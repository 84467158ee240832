"""`sendonce local run`: the incident's campaign replayed on one machine, through every function of the stack.

A contacts CSV is generated (unique numbers, plus duplicates in other formats and invalid rows), a campaign is
created and enqueued with the CLI's own code, and the whole stack (`sendonce.local.stack`) works it off:
sender environments in processes of their own, the DLQ handler, reset_stuck and recompute_counters on timers,
and Meta's status webhooks through the local API gateway. With chaos, every fault of the incident and more is
injected, reproducibly by seed. The run ends when the campaign is `completed` (nothing pending) and every
status webhook was acknowledged; the report compares what Meta (the fake Graph) accepted with what the
counters say, next to the old system's numbers for the same campaign.
"""

from __future__ import annotations

import csv
import random
import sys
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

from sendonce import campaigns, contacts, db
from sendonce.local.stack import LocalStack
from sendonce.repository.control import counters as read_counters
from sendonce.repository.control import recompute_counters, row_outcomes, stored_totals

PHONE_NUMBER_ID = "106540352242922"
CHAOS_RATE = 0.1
PROGRESS_EVERY = 5.0
# The incident (the replaced system, November 2025): what the same campaign did there.
INCIDENT = {"contacts": 20028, "attempts": 165480, "attempts_per_contact": 8.26, "sent": 46262, "failed": 119218}


@dataclass
class LocalRunReport:
    """What `local run` found: the campaign's end, and what the fake Graph saw."""

    campaign_id: str
    contacts: int  # rows in the generated CSV
    recipients: int
    invalid: int
    duplicates_collapsed: int
    counters: dict
    stored_totals: dict
    accepted_sends: int  # sends Meta (the fake Graph) accepted, duplicates included
    accepted_histogram: dict[int, int]  # accepted sends per recipient -> recipients
    graph_requests: int
    attempts: int  # send attempts the rows record
    failures: list[dict]  # by code and reason
    faults: dict[str, int]
    kills: dict[str, int]
    sender_invocations: int
    scheduled_runs: dict[str, int]  # reset_stuck and recompute_counters runs on their timers
    elapsed_s: float
    throughput: float  # accepted sends per second of the run
    database: str
    chaos: bool
    seed: int
    finished: bool
    notes: list[str] = field(default_factory=list)
    checks: list[str] = field(default_factory=list)  # what campaign create said: the template, the messaging limit

    @property
    def duplicates(self) -> int:
        """Recipients Meta accepted the message for more than once."""
        return sum(n for times, n in self.accepted_histogram.items() if times > 1)

    @property
    def counters_match(self) -> bool:
        """The counters say what Meta saw: sent = recipients accepted, and the stored totals = the view."""
        accepted_recipients = sum(n for times, n in self.accepted_histogram.items() if times > 0)
        stored = {k: self.stored_totals[k] for k in ("sent", "failed", "cancelled", "delivered", "read")}
        return self.counters["sent"] == accepted_recipients and stored == {k: self.counters[k] for k in stored}

    @property
    def ok(self) -> bool:
        """Exactly once: every recipient accepted once or failed, nothing pending, counters true."""
        c = self.counters
        return (self.finished and self.duplicates == 0 and self.counters_match and c["pending"] == 0
                and c["sent"] + c["failed"] + c["cancelled"] == c["recipients"])


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


def plan_faults(graph, numbers: list[str], seed: int) -> None:
    """Per recipient, Meta's faults in a seeded plan (on top of the Graph's own random chaos)."""
    rng = random.Random(seed)
    plans = (
        (0.03, ("error:130429", "error:130429")),  # throughput
        (0.02, ("error:131056",)),  # pair rate limit
        (0.02, ("drop",)),  # accepted, the answer lost
        (0.01, ("slow:4",)),  # accepted, answered after the sender's timeout
        (0.01, ("error:131026",)),  # undeliverable: failed for good
        (0.005, ("error:131000",) * 6),  # transient every time: the receives run out, the DLQ fails it
    )
    for number in numbers:
        roll = rng.random()
        for share, faults in plans:
            if roll < share:
                graph.plan(number, *faults)
                break
            roll -= share


def local_run(contact_count: int = 200, chaos: bool = False, seed: int = 1, senders: int = 4,
              progress=None) -> LocalRunReport:
    """Run one campaign of `contact_count` contacts through the whole stack and report what happened.

    `progress(line)` gets a progress line every few seconds. Stops (and cleans up) on KeyboardInterrupt.
    """
    started = time.monotonic()
    with LocalStack(senders=senders, chaos=CHAOS_RATE if chaos else 0.0, seed=seed) as stack:
        conn = db.get_conn()
        csv_path = Path(stack.workdir) / "contacts.csv"
        in_file = write_contacts(csv_path, contact_count, seed)
        contact_list = contacts.read_csv(csv_path)
        if chaos:
            plan_faults(stack.graph, [c.phone for c in contact_list.contacts], seed)
        new = campaigns.NewCampaign(
            name="local run", template_name="order_update", language_code="en_US", phone_number_id=PHONE_NUMBER_ID
        )
        created = campaigns.create_campaign(conn, new, contact_list, stack.resources.send_queue_url)
        deadline = started + 120 + contact_count * 0.05
        finished = _wait_for_end(stack, conn, created.campaign_id, deadline, started, progress)
        outcomes = row_outcomes(conn, created.campaign_id)
        counters = read_counters(conn, created.campaign_id)
        histogram = Counter(stack.graph.accepted.get(number, 0) for number in outcomes["numbers"])
        elapsed = time.monotonic() - started
        report = LocalRunReport(
            campaign_id=created.campaign_id,
            contacts=in_file,
            recipients=created.recipients,
            invalid=len(created.invalid),
            duplicates_collapsed=created.duplicates,
            counters={k: counters[k] for k in ("recipients", "pending", "sent", "delivered", "read", "failed",
                                               "cancelled", "status")},
            stored_totals=stored_totals(conn, created.campaign_id),
            accepted_sends=sum(stack.graph.accepted.values()),
            accepted_histogram=dict(sorted(histogram.items())),
            graph_requests=len(stack.graph.requests),
            attempts=outcomes["attempts"],
            failures=outcomes["failures"],
            faults=_faults(stack),
            kills=dict(stack.kills),
            sender_invocations=stack.counts[0],
            scheduled_runs=dict(stack.timer_runs),
            elapsed_s=round(elapsed, 1),
            throughput=round(sum(stack.graph.accepted.values()) / elapsed, 1),
            database=stack.database,
            chaos=chaos,
            seed=seed,
            finished=finished,
        )
        report.notes += stack.timer_errors[:10]
        report.checks = [created.template_check.message] if created.template_check else []
        report.checks += [created.messaging_limit["message"]] if created.messaging_limit else []
        if not finished:
            report.notes.insert(0, f"did not finish in {deadline - started:.0f} s: {counters['pending']} rows pending")
        return report


def _wait_for_end(stack: LocalStack, conn, campaign_id: str, deadline: float, started: float, progress) -> bool:
    """Until the campaign is completed and Meta's statuses are all delivered (True), or the deadline (False)."""
    last_print = 0.0
    while time.monotonic() < deadline:
        stack.supervise()
        counters = read_counters(conn, campaign_id)
        now = time.monotonic()
        if progress and now - last_print >= PROGRESS_EVERY:
            last_print = now
            elapsed = now - started
            progress(f"sent {counters['sent']} · failed {counters['failed']} · pending {counters['pending']} · "
                     f"{elapsed:.0f} s · {counters['sent'] / elapsed:.0f} msg/s")
        if counters["pending"] == 0 and counters["status"] == "completed":
            stack.graph.wait_statuses_delivered(timeout=max(deadline - time.monotonic(), 1))
            # One more recompute, so the stored totals include the last statuses.
            recompute_counters(conn, campaign_id)
            return True
        time.sleep(0.5)
    return False


def _faults(stack: LocalStack) -> dict[str, int]:
    """Faults injected, by kind."""
    found: Counter[str] = Counter()
    for request in stack.graph.requests:
        kind, _, arg = request["fault"].partition(":")
        if kind != "ok":
            found[f"graph {arg if kind == 'error' else kind}"] += 1
    if stack.graph.storms:
        found["graph 130429 storms"] = stack.graph.storms
    found["SQS batch delivered twice at once"] = stack.counts[3]
    found["SQS batch delivered again later"] = stack.counts[4]
    for point, n in stack.kills.items():
        found[f"sender killed {point}"] += n
    if getattr(stack, "pg_proxy", None):
        found["PostgreSQL connection cut"] = len(stack.pg_proxy.faults)
    stats = stack.graph.webhook_stats()
    for kind in ("injected", "retried", "duplicated", "out_of_order"):
        found[f"webhook {kind.replace('_', ' ')}"] += stats[kind]
    return dict(sorted((kind, n) for kind, n in found.items() if n))


def report_lines(report: LocalRunReport) -> list[str]:
    """The human-readable summary: the run next to the incident."""
    c = report.counters
    per_contact = report.attempts / report.recipients if report.recipients else 0
    lines = [
        f"campaign {report.campaign_id} ({report.database}, {report.elapsed_s} s, "
        f"{'chaos, seed ' + str(report.seed) if report.chaos else 'no chaos'})",
        f"  contacts file: {report.contacts} rows -> {report.recipients} recipients, {report.invalid} invalid, "
        f"{report.duplicates_collapsed} duplicates collapsed",
        *(f"  {check}" for check in report.checks),
        "",
        f"  {'':34}{'this run':>14}{'the incident':>16}",
        f"  {'contacts':34}{report.recipients:>14,}{INCIDENT['contacts']:>16,}",
        f"  {'send attempts':34}{report.attempts:>14,}{INCIDENT['attempts']:>16,}",
        f"  {'attempts per contact':34}{per_contact:>14.2f}{INCIDENT['attempts_per_contact']:>16.2f}",
        f"  {'accepted by Meta':34}{report.accepted_sends:>14,}{'?':>16}",
        f"  {'recipients who got it twice+':34}{report.duplicates:>14,}{'many, 2-10x':>16}",
        f"  {'counted sent':34}{c['sent']:>14,}{INCIDENT['sent']:>16,}",
        f"  {'counted failed':34}{c['failed']:>14,}{INCIDENT['failed']:>16,}",
        f"  {'pending':34}{c['pending']:>14,}{'':>16}",
        "",
        "  accepted sends per recipient: "
        + ", ".join(f"{times}x: {n:,}" for times, n in report.accepted_histogram.items()),
        f"  counters (view): sent {c['sent']}, delivered {c['delivered']}, read {c['read']}, failed {c['failed']}, "
        f"cancelled {c['cancelled']}, status {c['status']}; stored totals "
        f"{'equal' if report.counters_match else 'DIFFER: ' + str(report.stored_totals)}",
        f"  sender invocations {report.sender_invocations:,}, Graph requests {report.graph_requests:,}, "
        f"throughput {report.throughput} accepted/s; on timers: "
        + ", ".join(f"{name} {n}x" for name, n in sorted(report.scheduled_runs.items())),
    ]
    if report.failures:
        lines.append("  failed, by reason:")
        lines += [f"    {f['rows']:>6,}  {f['code'] or '-'}  {f['reason']}" for f in report.failures]
    if report.faults:
        lines.append("  faults injected: " + ", ".join(f"{k} {v}" for k, v in report.faults.items()))
    lines += [f"  note: {note}" for note in report.notes]
    lines.append(_verdict(report))
    return lines


def _verdict(report: LocalRunReport) -> str:
    c = report.counters
    if report.ok:
        return (f"EXACTLY ONCE: every one of {c['recipients']:,} recipients got the message once ({c['sent']:,}) "
                f"or is failed with its reason ({c['failed']:,}); nothing pending; counters equal Meta's record")
    problems = []
    if report.duplicates:
        problems.append(f"{report.duplicates} recipients got it more than once")
    if c["pending"] or not report.finished:
        problems.append(f"{c['pending']} rows still pending")
    if not report.counters_match:
        problems.append("the counters differ from what Meta accepted")
    return "NOT PROVEN: " + "; ".join(problems)


def report_json(report: LocalRunReport) -> dict:
    """The `--json` object."""
    c = report.counters
    return {
        **asdict(report),
        "accepted_histogram": {str(k): v for k, v in report.accepted_histogram.items()},
        "duplicates": report.duplicates,
        "sent": c["sent"],
        "failed": c["failed"],
        "pending": c["pending"],
        "counters_match": report.counters_match,
        "incident": INCIDENT,
        "ok": report.ok,
    }


def print_progress(line: str) -> None:
    """Progress goes to stderr, so that stdout holds only the report (or the JSON object)."""
    print(f"  {line}", file=sys.stderr, flush=True)
