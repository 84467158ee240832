"""Coordination at Meta's ceiling (issue 14): N concurrent senders claiming and finalizing on ONE phone number.

What is measured: the sender's two statements per batch, run by N concurrent connections (N = 1 10 50 100 200
by default) against one campaign on one phone number:

* the claim, `sendonce.repository.sending.claim_rows(conn, messages, token, default_mps=1_000_000,
  max_wait=600, window=86400)` (`CLAIM_ROWS`: its `rate_limits` upsert, the UPDATE of the rows), for a batch of
  `--batch` (default 25, the stack's SQS BatchSize) `ready` rows, each message `QueueMessage(row_id, campaign_id, "bench")`, each claim a
  fresh uuid4 token (as each sender invocation has its own);
* then the finalize, `finalize_rows(conn, results, error_window=200, error_threshold=0.5)` (`FINALIZE_ROWS`),
  writing every claimed row as sent (`SendResult(Disposition.SENT, wamid="wamid.<hex>")`), no unused slots.

No Graph API call is made between the two: what is measured is the coordination in PostgreSQL (the one
`rate_limits` row every claim upserts, the row UPDATEs, the commits), not Meta's pacing. So the rate limiter
must not pace the benchmark: the number has no `max_mps` of its own and the claims pass default_mps =
1,000,000 (a slot every microsecond) and max_wait = 600 s, so every row always gets a slot. No messaging limit
is set for the number (the claim's fast path), no send window, no suppressions.

Each worker (one connection) loops: take the next batch index from a shared counter (distinct row ids per
worker, as SQS would hand out messages), claim those `--batch` rows, finalize them. Latencies are timed with
time.perf_counter around each call (client, round trip and lock waits included). A warm-up (`--warmup`, 1 s;
psycopg prepares the statements after 5 executions, as on the sender's connection) precedes the `--seconds`
(default 8) measured; a claim or finalize counts if it completed within the measured window. Messages/s =
claims/s x batch.

Workers: N connections spread over P processes (`--processes`, default min(N, 2 x cores)), each process
running its share as threads. Python's interpreter lock would otherwise serialise the client work (parsing the
claim's rows, signing callbacks) of 200 threads and add its switch interval to every latency; 200 separate
processes would only add context switches on a machine this small. The client's CPU time (all worker
processes) is reported, next to PostgreSQL's (every child of the postmaster, from /proc) and the machine's
(/proc/stat): on a 2-core machine the client and PostgreSQL share the same CPUs.

Lock waits: a separate connection samples pg_stat_activity every `--sample-ms` (50 ms) during the measured
window: backends of the benchmark waiting on a heavyweight lock (wait_event_type = 'Lock'; wait_event
`transactionid`: the upsert's conflict check or row lock waits for the transaction holding the row, `tuple`:
queued behind the first such waiter), split by the statement waiting: the claim (the only row claims share is
the number's `rate_limits` row: each worker's send_queue rows are its own) or the finalize. Reported: the
share of samples with any lock waiter, the mean number of lock waiters, and the mean backends on LWLocks, on
IO (e.g. WAL flushes at commit) and on CPU (active with no wait event).

Correctness, after each N: every row handed out was claimed by exactly one claim (no row id in two workers'
claims, attempts = 1, one claim token per claim) and is `sent` with its own WAMID; the counts are compared with
what the workers recorded. Any violation (or any statement error) is printed and the script exits with 1.

Saturation: the first N whose next N adds less than 10% messages/s (or the last N if it still grows), and the
peak; compared with Meta's ceiling of 1,000 messages/s per number.

PostgreSQL: a private throwaway cluster (initdb from `pg_config --bindir` or /usr/lib/postgresql/*/bin, as the
postgres user when run as root; max_connections=300, shared_buffers=128MB, durability settings left at their
defaults: fsync on, synchronous_commit on) on a free port of 127.0.0.1, stopped and deleted at the end.
`--database-url` (or no PostgreSQL binaries) uses DATABASE_URL / a throwaway database on the local server
instead (benchmarks/_database.py), N capped at its max_connections - 10, as the output then says.

    .venv/bin/python benchmarks/coordination.py [--connections 1 10 50 100 200] [--seconds 8] [--batch 25]
        [--processes P] [--warmup 1] [--database-url] [--quick] [--json]

`--quick`: N = 1 and 4, 1 s each, a small campaign: a smoke test. Nothing is asserted about the times.
"""

from __future__ import annotations

import argparse
import contextlib
import glob
import itertools
import json
import math
import multiprocessing
import os
import platform
import queue
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid

import psycopg
from _database import database
from sendonce.capacity import SENDER_BATCH_SIZE
from sendonce.migrate import migrate
from sendonce.models import Disposition, QueueMessage, SendResult
from sendonce.observability import logger
from sendonce.repository.campaigns import insert_campaign
from sendonce.repository.sending import RowResult, claim_rows, finalize_rows

PHONE_NUMBER_ID = "106540352242922"
DEFAULT_MPS = 1_000_000  # a slot every microsecond: the limiter never paces the benchmark
MAX_WAIT = 600.0  # x DEFAULT_MPS must stay below 2^31 (reserve_send_slots' capacity is an integer)
WINDOW_SECONDS = 86400.0
ERROR_WINDOW, ERROR_THRESHOLD = 200, 0.5  # the sender's defaults (ERROR_RATE_WINDOW, ERROR_RATE_THRESHOLD)
PREPARE_THRESHOLD = 5  # the sender's default (PG_PREPARE_THRESHOLD)
APPLICATION = "sendonce-coordination-bench"
META_CEILING = 1000  # messages/s per phone number

# Rows of the one campaign, added before each N (ids contiguous: one INSERT on a private sequence's range).
INSERT_READY = """
INSERT INTO send_queue (campaign_id, phone_number, params, status, created_at, updated_at)
SELECT %(id)s, '9199' || lpad(n::text, 9, '0'), ARRAY['Customer ' || n], 'ready', now(), now()
FROM generate_series(%(first)s, %(last)s) AS n
RETURNING id
"""

# Which statement waits, by its opening (pg_stat_activity.query holds the first 1,024 bytes only).
SAMPLE = """
SELECT count(*) FILTER (WHERE a.state = 'active') AS active,
       count(*) FILTER (WHERE a.wait_event_type = 'Lock') AS lock,
       count(*) FILTER (WHERE a.wait_event_type = 'Lock' AND a.query LIKE '%%WITH requested AS%%') AS claim,
       count(*) FILTER (WHERE a.wait_event_type = 'Lock' AND a.query LIKE '%%WITH result AS%%') AS finalize,
       count(*) FILTER (WHERE a.wait_event_type = 'Lock' AND a.wait_event = 'transactionid') AS xid,
       count(*) FILTER (WHERE a.wait_event_type = 'Lock' AND a.wait_event = 'tuple') AS tuple,
       count(*) FILTER (WHERE a.wait_event_type = 'LWLock') AS lwlock,
       count(*) FILTER (WHERE a.wait_event_type = 'IO') AS io,
       count(*) FILTER (WHERE a.state = 'active' AND a.wait_event IS NULL) AS cpu
FROM pg_stat_activity a
WHERE a.application_name = %s AND a.pid <> pg_backend_pid()
"""
SAMPLE_FIELDS = ("active", "lock", "claim", "finalize", "xid", "tuple", "lwlock", "io", "cpu")

CHECK = """
SELECT count(*) AS handed_out,
       count(*) FILTER (WHERE status = 'sent') AS sent,
       count(*) FILTER (WHERE status = 'ready') AS never_claimed,
       count(*) FILTER (WHERE status NOT IN ('sent', 'ready')) AS other_status,
       count(*) FILTER (WHERE status = 'sent' AND attempts <> 1) AS attempts_not_one,
       count(DISTINCT whatsapp_message_id) AS wamids,
       count(DISTINCT claim_token) AS tokens
FROM send_queue WHERE campaign_id = %(campaign)s AND id BETWEEN %(lo)s AND %(hi)s
"""


# --- PostgreSQL: a private cluster, or the configured one ---------------------------------------------------


def _bindir() -> str | None:
    candidates = []
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        candidates.append(subprocess.run(["pg_config", "--bindir"], capture_output=True, text=True,
                                         timeout=10, check=True).stdout.strip())
    candidates += sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True)
    for path in candidates:
        if path and os.path.exists(os.path.join(path, "initdb")) and os.path.exists(os.path.join(path, "pg_ctl")):
            return path
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PrivateCluster:
    """initdb + pg_ctl start in a temp dir; `stop()` stops it and deletes the dir."""

    def __init__(self, bindir: str):
        self.bindir = bindir
        self.port = _free_port()
        self.dir = tempfile.mkdtemp(prefix="sendonce_coordination_")
        self.data = os.path.join(self.dir, "data")
        self.started = False
        self.as_user: list[str] = []
        if os.geteuid() == 0:  # initdb refuses root: run the cluster as the postgres user
            import pwd

            user = pwd.getpwnam("postgres")
            os.chown(self.dir, user.pw_uid, user.pw_gid)
            self.as_user = ["runuser", "-u", "postgres", "--"]

    def _run(self, *command: str) -> None:
        subprocess.run([*self.as_user, *command], cwd=self.dir, check=True, capture_output=True, text=True,
                       timeout=120)

    def start(self) -> str:
        self._run(os.path.join(self.bindir, "initdb"), "-D", self.data, "-U", "postgres", "--auth=trust",
                  "-E", "UTF8", "--no-instructions")
        settings = {"max_connections": "300", "shared_buffers": "'128MB'", "port": str(self.port),
                    "listen_addresses": "'127.0.0.1'", "unix_socket_directories": f"'{self.dir}'",
                    "synchronous_commit": "on", "fsync": "on", "log_min_messages": "warning"}
        conf = "".join(f"{k} = {v}\n" for k, v in settings.items())
        # Written by the cluster's owner (the file is theirs): append through a shell run as that user.
        self._run("sh", "-c", f"cat >> '{self.data}/postgresql.conf' <<'EOF'\n{conf}EOF")
        self._run(os.path.join(self.bindir, "pg_ctl"), "-D", self.data, "-l", os.path.join(self.dir, "log"),
                  "-w", "-t", "60", "start")
        self.started = True
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def stop(self) -> None:
        try:
            if self.started:
                self._run(os.path.join(self.bindir, "pg_ctl"), "-D", self.data, "-m", "fast", "-w", "stop")
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)


@contextlib.contextmanager
def server(use_database_url: bool):
    """Yield (dsn, description, private): a private cluster if possible, else _database.database()."""
    notes = []
    bindir = None if use_database_url else _bindir()
    if bindir:
        cluster = PrivateCluster(bindir)
        try:
            try:
                dsn = cluster.start()
            except (OSError, subprocess.SubprocessError) as exc:
                detail = getattr(exc, "stderr", "") or ""
                notes.append(f"private cluster failed ({exc} {detail.strip()[:300]})")
                dsn = None
            if dsn:
                yield dsn, (f"private cluster ({bindir}, 127.0.0.1:{cluster.port}, max_connections=300, "
                            "shared_buffers=128MB, fsync on, synchronous_commit on; deleted afterwards)"), True
                return
        finally:
            cluster.stop()
    elif not use_database_url:
        notes.append("no PostgreSQL binaries (initdb, pg_ctl) found")
    with database("sendonce_bench_coordination") as (dsn, described):
        yield dsn, "; ".join([*notes, f"shared server: {described}"]), False


# --- CPU readings from /proc ----------------------------------------------------------------------------------

TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _stat(pid: int) -> list[str] | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            text = f.read()
    except OSError:
        return None
    return text[text.rindex(")") + 2:].split()  # fields from `state` on (the name may hold spaces)


def postgres_cpu_seconds(postmaster: int | None) -> float | None:
    """utime + stime of the postmaster and all its children (backends, WAL writer, ...); None if unreadable."""
    if postmaster is None or _stat(postmaster) is None:
        return None
    total = 0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        fields = _stat(int(entry))
        if fields and (int(entry) == postmaster or int(fields[1]) == postmaster):
            total += int(fields[11]) + int(fields[12])  # utime, stime
            if int(entry) == postmaster:  # children that exited (autovacuum workers...): cutime, cstime
                total += int(fields[13]) + int(fields[14])
    return total / TICK


def machine_cpu() -> tuple[float, float] | None:
    """(busy, total) jiffies of all CPUs from /proc/stat."""
    try:
        with open("/proc/stat") as f:
            values = [int(v) for v in f.readline().split()[1:]]
    except OSError:
        return None
    idle = values[3] + (values[4] if len(values) > 4 else 0)
    return sum(values) - idle, sum(values)


# --- Workers ------------------------------------------------------------------------------------------------


def _worker_thread(dsn, campaign_id, first_id, batches, batch, counter, go, phase, out, ready):
    """One connection: claim/finalize batches from the shared counter until the measured window ends."""
    record = {"claim_ms": [], "finalize_ms": [], "claims": 0, "finalizes": 0, "claimed_ids": [],
              "claims_with_rows": 0, "unclaimed": 0, "finalized_not_sent": 0, "errors": [], "exhausted": False}
    try:
        conn = psycopg.connect(dsn, autocommit=True, prepare_threshold=PREPARE_THRESHOLD, application_name=APPLICATION)
    except psycopg.Error as exc:
        record["errors"].append(f"connect: {exc}")
        ready.release()
        out.append(record)
        return
    ready.release()
    go.wait()
    measure_from, measure_to = phase
    with conn:
        while time.time() < measure_to:
            with counter.get_lock():
                k = counter.value
                counter.value += 1
            if k >= batches:
                record["exhausted"] = True
                break
            ids = range(first_id + k * batch, first_id + (k + 1) * batch)
            token = uuid.uuid4()
            t0 = time.perf_counter()
            try:
                outcomes = claim_rows(conn, [QueueMessage(i, campaign_id, "bench") for i in ids], token,
                                      DEFAULT_MPS, MAX_WAIT, WINDOW_SECONDS)
            except Exception as exc:  # noqa: BLE001 - reported and counted as a violation
                record["errors"].append(f"claim: {exc}")
                continue
            t1 = time.perf_counter()
            done = time.time()
            if measure_from <= done < measure_to:
                record["claim_ms"].append((t1 - t0) * 1000)
                record["claims"] += 1
            claimed = [i for i, o in outcomes.items() if o.row is not None]
            record["unclaimed"] += batch - len(claimed)
            record["claimed_ids"].extend(claimed)
            if not claimed:
                continue
            record["claims_with_rows"] += 1
            results = [RowResult(i, campaign_id, token, SendResult(Disposition.SENT, wamid=f"wamid.{uuid.uuid4().hex}"))
                       for i in claimed]
            t2 = time.perf_counter()
            try:
                written = finalize_rows(conn, results, ERROR_WINDOW, ERROR_THRESHOLD)
            except Exception as exc:  # noqa: BLE001
                record["errors"].append(f"finalize: {exc}")
                continue
            t3 = time.perf_counter()
            if measure_from <= time.time() < measure_to:
                record["finalize_ms"].append((t3 - t2) * 1000)
                record["finalizes"] += 1
            record["finalized_not_sent"] += len(claimed) - sum(1 for w in written if w[2] == "sent")
    out.append(record)


def worker_process(threads, dsn, campaign_id, first_id, batches, batch, counter, start, times, results):
    """One process hosting `threads` connections; sends its records and CPU time back on `results`."""
    import logging

    logging.disable(logging.WARNING)
    out: list[dict] = []
    go = threading.Event()
    ready = threading.Semaphore(0)
    phase: list[float] = []
    pool = [threading.Thread(target=_worker_thread, daemon=True,
                             args=(dsn, campaign_id, first_id, batches, batch, counter, go, phase, out, ready))
            for _ in range(threads)]
    for t in pool:
        t.start()
    for _ in pool:
        ready.acquire()
    results.put(("ready", os.getpid()))
    start.wait()
    phase.extend([times[0], times[1]])
    go.set()
    time.sleep(max(0.0, times[0] - time.time()))
    cpu0 = time.process_time()
    time.sleep(max(0.0, times[1] - time.time()))
    cpu1 = time.process_time()
    for t in pool:
        t.join()
    results.put(("done", {"records": out, "cpu_seconds": cpu1 - cpu0}))


# --- One N -----------------------------------------------------------------------------------------------------


def percentile(samples: list[float], q: float) -> float | None:
    if not samples:
        return None
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


def sampler(dsn: str, until: float, every: float, samples: list[tuple], start_at: float) -> None:
    with psycopg.connect(dsn, autocommit=True, application_name="sendonce-coordination-sampler") as conn:
        conn.execute(SAMPLE, (APPLICATION,)).fetchone()
        time.sleep(max(0.0, start_at - time.time()))
        while time.time() < until:
            t = time.time()
            samples.append(conn.execute(SAMPLE, (APPLICATION,)).fetchone())
            time.sleep(max(0.0, every - (time.time() - t)))


def add_rows(conn: psycopg.Connection, campaign_id: str, offset: int, count: int) -> tuple[int, int]:
    """Add `count` ready rows to the campaign; return (first id, number added). The ids must be contiguous."""
    with conn.transaction():
        ids = [r[0] for r in conn.execute(INSERT_READY, {"id": campaign_id, "first": offset + 1,
                                                         "last": offset + count})]
        conn.execute("UPDATE campaigns SET total_recipients = total_recipients + %s WHERE id = %s",
                     (count, campaign_id))
    lo, hi = min(ids), max(ids)
    if hi - lo + 1 != len(ids):
        raise RuntimeError(f"row ids not contiguous: {len(ids)} rows in {lo}..{hi}")
    conn.execute("VACUUM ANALYZE send_queue")
    conn.execute("VACUUM ANALYZE rate_limits")
    return lo, len(ids)


def run_n(ctx, dsn: str, admin: psycopg.Connection, campaign_id: str, offset: int, n: int, processes: int,
          batch: int, seconds: float, warmup: float, guess: float, sample_every: float, postmaster: int | None):
    """Run N connections once; return (figures, rows added, problems)."""
    batches = math.ceil(guess * (seconds + warmup + 1) * 1.5) + n
    first_id, added = add_rows(admin, campaign_id, offset, batches * batch)
    counter = ctx.Value("q", 0)
    start = ctx.Event()
    times = ctx.Array("d", 2)
    results = ctx.Queue()
    shares = [n // processes + (1 if i < n % processes else 0) for i in range(processes)]
    procs = [ctx.Process(target=worker_process, daemon=True,
                         args=(k, dsn, campaign_id, first_id, batches, batch, counter, start, times, results))
             for k in shares if k]
    for p in procs:
        p.start()
    problems: list[str] = []
    for _ in procs:
        results.get(timeout=180)  # ('ready', pid): its connections are open
    measure_from = time.time() + 0.3 + warmup
    measure_to = measure_from + seconds
    times[0], times[1] = measure_from, measure_to
    samples: list[tuple] = []
    sample_thread = threading.Thread(target=sampler, args=(dsn, measure_to, sample_every, samples, measure_from))
    sample_thread.start()
    start.set()
    time.sleep(max(0.0, measure_from - time.time()))
    pg0, m0 = postgres_cpu_seconds(postmaster), machine_cpu()
    time.sleep(max(0.0, measure_to - time.time()))
    pg1, m1 = postgres_cpu_seconds(postmaster), machine_cpu()
    records: list[dict] = []
    client_cpu = 0.0
    for _ in procs:
        try:
            _kind, payload = results.get(timeout=300)
        except queue.Empty:
            problems.append(f"N={n}: a worker process did not report")
            continue
        records += payload["records"]
        client_cpu += payload["cpu_seconds"]
    for p in procs:
        p.join(timeout=30)
    sample_thread.join()

    claim_ms = [x for r in records for x in r["claim_ms"]]
    finalize_ms = [x for r in records for x in r["finalize_ms"]]
    claims = sum(r["claims"] for r in records)
    errors = [e for r in records for e in r["errors"]]
    exhausted = any(r["exhausted"] for r in records)

    # Correctness: what the workers recorded against the rows.
    handed_out = min(counter.value, batches) * batch
    claimed_ids = [i for r in records for i in r["claimed_ids"]]
    unique_claimed = set(claimed_ids)
    if len(unique_claimed) != len(claimed_ids):
        problems.append(f"N={n}: {len(claimed_ids) - len(unique_claimed)} rows claimed by more than one claim")
    check = admin.execute(CHECK, {"campaign": campaign_id, "lo": first_id, "hi": first_id + handed_out - 1}).fetchone()
    handed, sent, never, other, multi, wamids, tokens = check
    claims_with_rows = sum(r["claims_with_rows"] for r in records)
    if handed != handed_out:
        problems.append(f"N={n}: {handed} rows in the handed-out range, expected {handed_out}")
    if sent != len(unique_claimed) or never or other:
        problems.append(f"N={n}: {len(unique_claimed)} rows claimed, {sent} sent, {never} never claimed, "
                        f"{other} in another status")
    if multi:
        problems.append(f"N={n}: {multi} sent rows with attempts <> 1 (claimed more than once)")
    if wamids != sent:
        problems.append(f"N={n}: {sent} sent rows but {wamids} distinct WAMIDs")
    if tokens != claims_with_rows:
        problems.append(f"N={n}: {claims_with_rows} claims claimed rows but the rows hold {tokens} claim tokens")
    not_sent = sum(r["finalized_not_sent"] for r in records)
    if not_sent:
        problems.append(f"N={n}: {not_sent} claimed rows not written as sent by their finalize")
    if errors:
        problems.append(f"N={n}: {len(errors)} statement errors, e.g. {errors[0][:300]}")
    if exhausted:
        problems.append(f"N={n}: the {batches * batch:,} rows prepared ran out before the window ended")

    means = {f: (sum(s[i] for s in samples) / len(samples) if samples else None) for i, f in enumerate(SAMPLE_FIELDS)}
    figures = {
        "connections": n,
        "processes": len(procs),
        "claims": claims,
        "claims_per_second": round(claims / seconds, 1),
        "messages_per_second": round(claims * batch / seconds, 1),
        "claim_p50_ms": _round(percentile(claim_ms, 0.50)),
        "claim_p99_ms": _round(percentile(claim_ms, 0.99)),
        "finalize_p50_ms": _round(percentile(finalize_ms, 0.50)),
        "finalize_p99_ms": _round(percentile(finalize_ms, 0.99)),
        "cycle_p50_ms": _round(percentile([a + b for a, b in zip(claim_ms, finalize_ms)], 0.50)),
        "lock_wait_share": round(sum(1 for s in samples if s[1]) / len(samples), 3) if samples else None,
        "mean_lock_waiters": _round(means["lock"]),
        "mean_lock_waiters_in_claim": _round(means["claim"]),
        "mean_lock_waiters_in_finalize": _round(means["finalize"]),
        "mean_waiting_on_transactionid": _round(means["xid"]),
        "mean_waiting_on_tuple": _round(means["tuple"]),
        "mean_active": _round(means["active"]),
        "mean_on_cpu": _round(means["cpu"]),
        "mean_lwlock": _round(means["lwlock"]),
        "mean_io": _round(means["io"]),
        "samples": len(samples),
        "postgres_cpu_cores": round((pg1 - pg0) / seconds, 2) if pg0 is not None and pg1 is not None else None,
        "client_cpu_cores": round(client_cpu / seconds, 2),
        "machine_busy_share": (round((m1[0] - m0[0]) / (m1[1] - m0[1]), 3)
                               if m0 and m1 and m1[1] > m0[1] else None),
        "errors": len(errors),
        "rows_prepared": added,
        "rows_claimed": len(unique_claimed),
        "correct": not problems,
    }
    return figures, added, problems


def _round(value: float | None, digits: int = 2) -> float | None:
    return None if value is None else round(value, digits)


def saturation(runs: list[dict]) -> dict:
    """The first N whose next N adds less than 10% messages/s; the peak; against Meta's 1,000/s."""
    if not runs:
        return {}
    point = runs[-1]
    for a, b in itertools.pairwise(runs):
        if b["messages_per_second"] < a["messages_per_second"] * 1.10:
            point = a
            break
    peak = max(runs, key=lambda r: r["messages_per_second"])
    still_growing = point is runs[-1] and len(runs) > 1
    return {
        "connections": point["connections"],
        "messages_per_second": point["messages_per_second"],
        "still_growing_at_largest_n": still_growing,
        "peak_connections": peak["connections"],
        "peak_messages_per_second": peak["messages_per_second"],
        "meta_ceiling": META_CEILING,
        "peak_above_meta_ceiling": peak["messages_per_second"] >= META_CEILING,
        "lock_wait_share_at_peak": peak["lock_wait_share"],
        "mean_lock_waiters_at_peak": peak["mean_lock_waiters"],
        "machine_busy_share_at_peak": peak["machine_busy_share"],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--connections", type=int, nargs="+", help="N values (default 1 10 50 100 200)")
    parser.add_argument("--seconds", type=float, help="measured seconds per N (default 8, --quick 1)")
    parser.add_argument("--warmup", type=float, help="unmeasured seconds before each N (default 1, --quick 0.3)")
    parser.add_argument("--batch", type=int, default=SENDER_BATCH_SIZE,
                        help=f"rows per claim (default {SENDER_BATCH_SIZE}, the stack's SQS batch)")
    parser.add_argument("--processes", type=int,
                        help="worker processes the N connections are spread over (default min(N, 2 x cores))")
    parser.add_argument("--sample-ms", type=float, default=50, help="pg_stat_activity sampling period (ms)")
    parser.add_argument("--database-url", action="store_true",
                        help="use DATABASE_URL / the local server instead of a private cluster")
    parser.add_argument("--quick", action="store_true", help="smoke run: N = 1 and 4, 1 s each")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)
    connections = args.connections or ([1, 4] if args.quick else [1, 10, 50, 100, 200])
    seconds = args.seconds or (1.0 if args.quick else 8.0)
    warmup = args.warmup if args.warmup is not None else (0.3 if args.quick else 1.0)
    if min(connections) < 1 or seconds <= 0 or warmup < 0 or not 1 <= args.batch <= 100:
        parser.error("N at least 1, --seconds > 0, --warmup >= 0, --batch 1..100")
    cores = os.cpu_count() or 1
    logger.setLevel("WARNING")

    problems: list[str] = []
    runs: list[dict] = []
    notes: list[str] = []
    ctx = multiprocessing.get_context("spawn")
    with server(args.database_url) as (dsn, described, private):
        with psycopg.connect(dsn, autocommit=True) as admin:
            migrate(admin)
            version = admin.execute("SHOW server_version").fetchone()[0]
            max_connections = int(admin.execute("SHOW max_connections").fetchone()[0])
            settings = dict(admin.execute(
                "SELECT name, setting FROM pg_settings WHERE name IN "
                "('fsync', 'synchronous_commit', 'shared_buffers', 'wal_sync_method', 'max_connections')"))
            backend = admin.execute("SELECT pg_backend_pid()").fetchone()[0]
            fields = _stat(backend)
            postmaster = int(fields[1]) if fields else None
            if postmaster is None:
                notes.append("PostgreSQL's CPU not readable (server not on this machine)")
            cap = max_connections - 10
            if any(n > cap for n in connections):
                notes.append(f"N capped at {cap} (max_connections {max_connections} - 10)")
                connections = sorted({min(n, cap) for n in connections})
            campaign_id = str(uuid.uuid4())
            insert_campaign(admin, {"id": campaign_id, "name": "coordination benchmark",
                                    "template_name": "diwali_offer_2025", "language_code": "en_US",
                                    "phone_number_id": PHONE_NUMBER_ID, "total_recipients": 0}, [])
            try:
                offset = 0
                guess = 1500.0  # claims/s the rows are prepared for; raised to twice the best seen
                for n in connections:
                    processes = max(1, min(n, args.processes or 2 * cores))
                    for attempt in range(2):
                        figures, added, found = run_n(ctx, dsn, admin, campaign_id, offset, n, processes,
                                                      args.batch, seconds, warmup, guess, args.sample_ms / 1000,
                                                      postmaster)
                        offset += added
                        ran_out = any("ran out" in p for p in found)
                        guess = max(guess, 2 * figures["claims_per_second"])
                        if not ran_out or attempt:
                            break
                        guess *= 2
                    runs.append(figures)
                    problems += found
                    if not args.json:
                        print(f"N={n}: {figures['messages_per_second']:,.0f} messages/s", file=sys.stderr)
            finally:
                if not private:
                    admin.execute("DELETE FROM campaigns WHERE id = %s", (campaign_id,))
                    admin.execute("DELETE FROM rate_limits WHERE phone_number_id = %s", (PHONE_NUMBER_ID,))

    sat = saturation(runs)
    output = {
        "postgres": f"PostgreSQL {version}, {described}",
        "postgres_settings": settings,
        "private_cluster": private,
        "cores": cores,
        "cpu_note": f"client and PostgreSQL share the same {cores} CPUs",
        "batch": args.batch,
        "seconds": seconds,
        "warmup_seconds": warmup,
        "default_mps": DEFAULT_MPS,
        "max_wait": MAX_WAIT,
        "workers": "N connections over min(N, --processes or 2 x cores) processes, threads within each",
        "python": platform.python_version(),
        "psycopg": psycopg.__version__,
        "notes": notes,
        "runs": runs,
        "saturation": sat,
        "correct": not problems,
        "problems": problems,
    }
    if args.json:
        print(json.dumps(output, indent=2))
    else:
        print(f"PostgreSQL {version}: {described}")
        print(f"{cores} cores shared by the client and PostgreSQL; batch {args.batch}; {seconds:g} s measured per N "
              f"after {warmup:g} s warm-up; default_mps {DEFAULT_MPS:,}, max_wait {MAX_WAIT:g} s")
        for note in notes:
            print(f"note: {note}")
        print(f"\n{'N':>4} {'proc':>4} {'claims/s':>9} {'msgs/s':>8} {'claim p50':>9} {'p99':>7} {'fin p50':>8} "
              f"{'p99':>7} {'lock%':>6} {'waiters':>7} {'claim':>6} {'on cpu':>6} {'io':>5} {'pg cpu':>6} "
              f"{'cli cpu':>7} {'busy%':>5}")
        for r in runs:
            print(f"{r['connections']:>4} {r['processes']:>4} {r['claims_per_second']:>9,.0f} "
                  f"{r['messages_per_second']:>8,.0f} {_fmt(r['claim_p50_ms']):>9} {_fmt(r['claim_p99_ms']):>7} "
                  f"{_fmt(r['finalize_p50_ms']):>8} {_fmt(r['finalize_p99_ms']):>7} "
                  f"{_fmt(r['lock_wait_share'] and r['lock_wait_share'] * 100, 0):>6} {_fmt(r['mean_lock_waiters'], 1):>7} "
                  f"{_fmt(r['mean_lock_waiters_in_claim'], 1):>6} {_fmt(r['mean_on_cpu'], 1):>6} "
                  f"{_fmt(r['mean_io'], 1):>5} {_fmt(r['postgres_cpu_cores']):>6} {_fmt(r['client_cpu_cores']):>7} "
                  f"{_fmt(r['machine_busy_share'] and r['machine_busy_share'] * 100, 0):>5}")
        print("(latencies in ms; lock%: share of samples with a backend waiting on a lock; waiters: mean lock waiters,"
              " 'claim' those in a claim statement (the rate_limits row); pg/cli cpu in cores; busy%: the machine's CPUs)")
        if sat:
            print("\nsaturation: " + (f"none within the N measured (still +10% or more at N={sat['connections']})"
                                       if sat["still_growing_at_largest_n"] else
                                       f"messages/s stops growing (< +10% to the next N) at N={sat['connections']} "
                                       f"({sat['messages_per_second']:,.0f} messages/s)")
                  + f"; peak {sat['peak_messages_per_second']:,.0f} messages/s at N={sat['peak_connections']}, "
                  f"{'above' if sat['peak_above_meta_ceiling'] else 'BELOW'} Meta's {META_CEILING:,} messages/s")
        print(f"correctness: {'every claimed row sent exactly once' if not problems else 'VIOLATED'}")
    for problem in problems[:20]:
        print(f"VIOLATION: {problem}", file=sys.stderr)
    return 1 if problems else 0


def _fmt(value, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


if __name__ == "__main__":
    sys.exit(main())
