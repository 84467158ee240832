"""How long sendonce's counter recompute takes on a 1,000,000-row campaign, next to the old system's method.

Measured, in the same run and on the same data:

* sendonce, all: `sendonce.control.recompute(conn)`, the one UPDATE (`repository.control.RECOMPUTE_COUNTERS`) that
  the recompute_counters Lambda runs on a schedule. It writes campaigns.total_* of every unfinished campaign
  (and of those finished less than 7 days ago) from the `campaign_counters` view, which counts each campaign
  with an index-only scan of send_queue_counting_idx.
* sendonce, one: `sendonce.control.recompute(conn, campaign_id)`, the same statement for one campaign.
* seed: the old Node.js/Supabase system's method (seed-postmortem.md, Fix #3, `flushCounterCache`):
  `SELECT status FROM send_queue WHERE campaign_id = $1`, every row fetched to the client, sent and failed
  counted in application code (`filter(...).length`), then one
  `UPDATE campaigns SET total_sent = ..., total_failed = ...`. Here with psycopg over a direct local
  connection, so it is a lower bound for the seed, which fetched the rows as JSON through Supabase's HTTP API
  (whose default limit of 1,000 rows per response would also have cut the count short; not modelled here).

The data, built with set-based SQL (INSERT ... SELECT FROM generate_series) before anything is timed:

* the measured campaign, `running`, with `--rows` rows (default 1,000,000): 90% sent (each with a unique
  WAMID; delivery_status 60% read, 30% delivered, 5% failed, 5% not reported), 5% failed, 3% ready,
  1% processing, 1% cancelled, so it is not complete and stays `running`;
* `--other-campaigns` campaigns (default 3) of `--other-rows` rows (default 200,000), completed 30 days ago,
  which the recompute of all campaigns has to skip;
* then VACUUM ANALYZE, so the visibility map allows index-only scans (autovacuum does this in production;
  rows changed since the last vacuum cost a heap fetch each).

Each method runs once as a warm-up, then `--repeat` times (default 5), the methods interleaved round by
round; the median and the minimum are printed, with the ratio seed / sendonce of the medians. Both write the
same columns of the same campaign; after the runs the totals sendonce stored, the seed's counts and the
counts the build implies are compared, and any difference is printed and makes the script exit with
status 1. Nothing is asserted about the times.

The timed connection is `psycopg.connect(url, autocommit=True)`: psycopg's default prepare_threshold (5) is
also `sendonce.db.connect`'s default (PG_PREPARE_THRESHOLD), so after a few runs the statement is prepared
on the server, as on the long-lived Lambda connection; the script reports whether PostgreSQL then used
custom or generic plans for it.

`--explain` also prints EXPLAIN (ANALYZE, BUFFERS) of: the view for the campaign; the SELECT form of the
recompute (its FROM and WHERE, all unfinished campaigns); the recompute UPDATE itself, all campaigns and one,
each in a transaction that is rolled back; and the seed's SELECT. It reports whether send_queue was read by
an index-only scan of send_queue_counting_idx and how many heap fetches that scan needed.

PostgreSQL: DATABASE_URL when set (the benchmark's campaigns are deleted afterwards; the recompute of all
campaigns also rewrites the totals of that database's other unfinished campaigns, as the scheduled Lambda
does, and is then not comparable); else a throwaway database on postgresql://postgres@127.0.0.1:5432
(dropped afterwards, also on error); else an embedded server (`sendonce.local.services`).

    .venv/bin/python benchmarks/recompute_counters_1m.py [--rows N] [--repeat K] [--explain] [--json]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import platform
import re
import statistics
import sys
import time
import uuid

import psycopg

from sendonce import control
from sendonce.repository import control as repository
from sendonce.migrate import migrate

from _database import database
from sendonce.observability import logger


# Status by n % 100, as (status, share in percent); delivery_status of a sent row by (n / 100) % 20.
RUNNING_MIX = (("sent", 90), ("failed", 5), ("ready", 3), ("processing", 1), ("cancelled", 1))
COMPLETED_MIX = (("sent", 93), ("failed", 6), ("cancelled", 1))

INSERT_CAMPAIGN = """
INSERT INTO campaigns (id, name, status, template_name, language_code, phone_number_id, total_recipients,
                       created_at, updated_at, completed_at)
VALUES (%(id)s, %(name)s, %(status)s, 'diwali_offer_2025', 'en_US', '106540352242922', %(rows)s,
        %(created_at)s, %(created_at)s, %(completed_at)s)
"""

# One INSERT ... SELECT per campaign. %(tag)s (from the campaign's random id) keeps WAMIDs unique across
# campaigns and across runs on the same database.
INSERT_ROWS = """
INSERT INTO send_queue (campaign_id, phone_number, params, status, whatsapp_message_id, actual_sent_at,
                        claim_token, claimed_at, attempts, last_error_code, last_error, delivery_status,
                        created_at, updated_at)
SELECT %(id)s, g.phone, ARRAY['Customer ' || g.n, 'DIWALI' || g.n %% 1000], g.status,
       CASE WHEN g.status = 'sent'
            THEN 'wamid.HBgM' || g.phone || 'FQIAERgS' || %(tag)s || upper(left(g.h, 18)) END,
       CASE WHEN g.status = 'sent' THEN g.at + interval '2 seconds' END,
       CASE WHEN g.status <> 'ready' AND g.status <> 'cancelled' THEN g.h::uuid END,
       CASE WHEN g.status <> 'ready' AND g.status <> 'cancelled' THEN g.at END,
       CASE g.status WHEN 'ready' THEN 0 WHEN 'cancelled' THEN 0 WHEN 'failed' THEN 1 + g.n %% 3 ELSE 1 END,
       CASE WHEN g.status = 'failed' THEN (ARRAY[131049, 131026, 131050, 130472])[1 + g.n %% 4] END,
       CASE WHEN g.status = 'failed' THEN 'message undeliverable'
            WHEN g.status = 'cancelled' THEN 'campaign cancelled' END,
       CASE WHEN g.status = 'sent' THEN
           CASE WHEN g.d < 12 THEN 'read' WHEN g.d < 18 THEN 'delivered' WHEN g.d = 18 THEN 'failed' END
       END,
       %(created_at)s, g.at + interval '1 minute'
FROM (
    SELECT n, p.phone, md5(%(tag)s || p.phone) AS h, (n / 100) %% 20 AS d,
           %(created_at)s::timestamptz + n * interval '1 millisecond' AS at,
           (%(statuses)s::text[])[1 + n %% 100] AS status
    FROM generate_series(1, %(rows)s) AS n, LATERAL (SELECT '9198' || lpad(n::text, 8, '0') AS phone) p
    OFFSET 0  -- keeps h computed once per row (a flattened subquery would repeat md5 at each use)
) g
"""

# The seed's flushCounterCache, statement for statement.
SEED_SELECT = "SELECT status FROM send_queue WHERE campaign_id = %(campaign_id)s"
SEED_UPDATE = (
    "UPDATE campaigns SET total_sent = %(sent)s, total_failed = %(failed)s WHERE id = %(campaign_id)s"
)


def seed_method(conn: psycopg.Connection, campaign_id: str) -> tuple[int, int]:
    """Fetch every status row to the client, count there, write the two totals; return (sent, failed)."""
    queue_stats = conn.execute(SEED_SELECT, {"campaign_id": campaign_id}).fetchall()
    # queueStats.filter(q => q.status === 'sent').length
    sent = len([q for q in queue_stats if q[0] == "sent"])
    failed = len([q for q in queue_stats if q[0] == "failed"])
    conn.execute(SEED_UPDATE, {"sent": sent, "failed": failed, "campaign_id": campaign_id})
    return sent, failed


def buckets(mix) -> list[str]:
    """The status of each remainder n % 100 under `mix` (index = remainder)."""
    statuses = [status for status, share in mix for _ in range(share)]
    assert len(statuses) == 100, mix
    return statuses


def expected_counts(mix, rows: int) -> dict[str, int]:
    """How many of n = 1..rows get each status (by n % 100) under `mix`."""
    statuses = buckets(mix)
    counts = dict.fromkeys(("sent", "failed", "ready", "processing", "cancelled"), 0)
    for b in range(100):
        counts[statuses[b]] += rows // 100 if b == 0 else ((rows - b) // 100 + 1 if b <= rows else 0)
    return counts


def build(conn: psycopg.Connection, rows: int, others: int, other_rows: int) -> tuple[str, list[str]]:
    """Create the measured campaign and the completed ones; return (measured id, all ids)."""
    measured = str(uuid.uuid4())
    # (id, status, mix, rows, created how long ago, completed how long ago)
    plan = [(measured, "running", RUNNING_MIX, rows, "2 hours", None)]
    plan += [
        (str(uuid.uuid4()), "completed", COMPLETED_MIX, other_rows, f"{31 + i} days", "30 days")
        for i in range(others)
    ]
    with conn.transaction():
        for number, (campaign_id, status, mix, count, created_ago, completed_ago) in enumerate(plan):
            created_at, completed_at = conn.execute(
                "SELECT now() - %s::interval, now() - %s::interval", (created_ago, completed_ago)
            ).fetchone()
            conn.execute(INSERT_CAMPAIGN, {
                "id": campaign_id, "name": f"recompute benchmark {number}", "status": status, "rows": count,
                "created_at": created_at, "completed_at": completed_at,
            })
            conn.execute(INSERT_ROWS, {
                "id": campaign_id, "tag": uuid.UUID(campaign_id).hex[:12].upper(), "rows": count,
                "created_at": created_at, "statuses": buckets(mix),
            })
    conn.execute("VACUUM ANALYZE campaigns")
    conn.execute("VACUUM ANALYZE send_queue")
    return measured, [p[0] for p in plan]


def recompute_select() -> str:
    """The recompute's FROM and WHERE as a SELECT (what the UPDATE joins campaigns with)."""
    tail = repository.RECOMPUTE_COUNTERS.split("FROM campaign_counters v", 1)[1].split("RETURNING", 1)[0]
    columns = "c.id, v.recipients, v.pending, v.sent, v.failed"
    return f"SELECT {columns}\nFROM campaigns c, campaign_counters v{tail}"


def explain(conn: psycopg.Connection, campaign_id: str) -> tuple[list[tuple[str, str]], dict]:
    """EXPLAIN (ANALYZE, BUFFERS) the statements; return [(title, plan)] and what the recompute used."""
    statements = [
        ("campaign_counters for the campaign",
         "SELECT * FROM campaign_counters WHERE campaign_id = %(campaign_id)s", {"campaign_id": campaign_id},
         False),
        ("recompute, SELECT form, all unfinished campaigns", recompute_select(), {"campaign_id": None},
         False),
        ("recompute UPDATE, all unfinished campaigns (rolled back)", repository.RECOMPUTE_COUNTERS,
         {"campaign_id": None}, True),
        ("recompute UPDATE, one campaign (rolled back)", repository.RECOMPUTE_COUNTERS,
         {"campaign_id": campaign_id}, True),
        ("seed: SELECT status", SEED_SELECT, {"campaign_id": campaign_id}, False),
    ]
    plans, found = [], {}
    for title, text, params, rollback in statements:
        with conn.transaction(force_rollback=True) if rollback else contextlib.nullcontext():
            lines = [row[0] for row in conn.execute("EXPLAIN (ANALYZE, BUFFERS) " + text, params)]
        plan = "\n".join(lines)
        plans.append((title, plan))
        if title.startswith("recompute UPDATE, all"):
            fetches = [int(n) for n in re.findall(r"Heap Fetches: (\d+)", plan)]
            found = {
                "index_only_scan": "Index Only Scan using send_queue_counting_idx" in plan,
                "heap_fetches": sum(fetches),
                "send_queue_seq_scan": "Seq Scan on send_queue" in plan,
            }
    return plans, found


def timings(samples: list[float]) -> dict:
    return {"median_ms": round(statistics.median(samples), 2), "min_ms": round(min(samples), 2)}


def run(rows: int, repeat: int, others: int, other_rows: int, with_plans: bool) -> tuple[dict, list, list]:
    """Build, measure, verify; return (figures, plans, mismatches)."""
    logger.setLevel("WARNING")
    problems: list[str] = []
    with database("sendonce_bench_recompute") as (dsn, described):
        with psycopg.connect(dsn, autocommit=True) as admin:
            migrate(admin)
        with psycopg.connect(dsn, autocommit=True) as conn:
            ids: list[str] = []
            try:
                started = time.perf_counter()
                campaign_id, ids = build(conn, rows, others, other_rows)
                build_seconds = time.perf_counter() - started
                sizes = conn.execute(
                    "SELECT pg_relation_size('send_queue'), pg_relation_size('send_queue_counting_idx')"
                ).fetchone()

                methods = {
                    "sendonce_recompute": lambda: control.recompute(conn),
                    "sendonce_recompute_one": lambda: control.recompute(conn, campaign_id),
                    "seed_method": lambda: seed_method(conn, campaign_id),
                }
                samples: dict[str, list[float]] = {name: [] for name in methods}
                results = {name: fn() for name, fn in methods.items()}  # warm-up
                for _ in range(repeat):
                    for name, fn in methods.items():
                        started = time.perf_counter()
                        results[name] = fn()
                        samples[name].append((time.perf_counter() - started) * 1000)

                # After prepare_threshold runs psycopg prepares the statement; did the server keep custom
                # plans (the campaign_id IS NULL test folded away) or switch to a generic plan?
                prepared = conn.execute(
                    "SELECT generic_plans, custom_plans FROM pg_prepared_statements WHERE statement LIKE %s",
                    ("%UPDATE campaigns c%SET total_recipients%",),
                ).fetchone()
                recomputed = dict(results["sendonce_recompute"])
                skipped = set(ids) - {campaign_id}
                if campaign_id not in recomputed or skipped & set(recomputed):
                    problems.append(f"recompute of all campaigns touched {sorted(recomputed)}: expected "
                                    f"{campaign_id} and none of {sorted(skipped)} (completed 30 days ago)")
                control.recompute(conn, campaign_id)  # the seed wrote last; read what sendonce stores
                stored = repository.stored_totals(conn, campaign_id)
                seed_sent, seed_failed = results["seed_method"]
                expected = expected_counts(RUNNING_MIX, rows)
                for key, seed_value in (("sent", seed_sent), ("failed", seed_failed)):
                    if not stored[key] == seed_value == expected[key]:
                        problems.append(f"{key}: sendonce stored {stored[key]}, seed counted {seed_value}, "
                                        f"the build made {expected[key]}")
                if stored["recipients"] != rows or stored["cancelled"] != expected["cancelled"]:
                    problems.append(f"sendonce stored recipients={stored['recipients']} "
                                    f"cancelled={stored['cancelled']}, "
                                    f"expected {rows} and {expected['cancelled']}")
                if stored["status"] != "running":
                    problems.append(f"campaign status is {stored['status']}, "
                                    "expected running (rows are pending)")

                plans, plan_facts = explain(conn, campaign_id) if with_plans else ([], {})
                server_version = conn.execute("SHOW server_version").fetchone()[0]
            finally:
                if described == "DATABASE_URL" and ids:
                    conn.execute("DELETE FROM campaigns WHERE id = ANY(%s::uuid[])", (ids,))

    seed = statistics.median(samples["seed_method"])
    figures = {
        "rows": rows,
        "other_campaigns": others,
        "campaigns_recomputed_by_all": len(recomputed),
        "other_rows_each": other_rows,
        "build_seconds": round(build_seconds, 2),
        "send_queue_mb": round(sizes[0] / 2**20, 1),
        "send_queue_counting_idx_mb": round(sizes[1] / 2**20, 1),
        "repeat": repeat,
        **{f"{name}_ms": timings(s)["median_ms"] for name, s in samples.items()},
        **{f"{name}_min_ms": timings(s)["min_ms"] for name, s in samples.items()},
        "speedup": round(seed / statistics.median(samples["sendonce_recompute"]), 2),
        "speedup_one": round(seed / statistics.median(samples["sendonce_recompute_one"]), 2),
        "counts": {"sent": stored["sent"], "failed": stored["failed"], "seed_sent": seed_sent,
                   "seed_failed": seed_failed},
        "counts_match": not problems,
        "recompute_prepared_plans": (
            {"generic": prepared[0], "custom": prepared[1]} if prepared else "not prepared (too few runs)"
        ),
        **({"plan": plan_facts} if plan_facts else {}),
        "database": described,
        "server_version": server_version,
        "python": platform.python_version(),
        "psycopg": psycopg.__version__,
    }
    return figures, plans, problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000, help="rows of the measured campaign")
    parser.add_argument("--repeat", type=int, default=5, help="timed runs of each method, after one warm-up")
    parser.add_argument("--other-campaigns", type=int, default=3, help="completed campaigns to skip")
    parser.add_argument("--other-rows", type=int, default=200_000, help="rows of each completed campaign")
    parser.add_argument("--explain", action="store_true", help="print EXPLAIN (ANALYZE, BUFFERS) of the SQL")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)
    if not 1 <= args.rows <= 99_999_999 or args.repeat < 1 or not 0 <= args.other_campaigns <= 9:
        parser.error("--rows must be 1..99,999,999, --repeat at least 1, --other-campaigns 0..9")

    figures, plans, problems = run(
        args.rows, args.repeat, args.other_campaigns, args.other_rows, args.explain
    )
    if args.json:
        if plans:
            figures["explain"] = {title: plan for title, plan in plans}
        print(json.dumps(figures, indent=2))
    else:
        print(f"database: {figures['database']} (PostgreSQL {figures['server_version']})")
        print(f"built {figures['rows']:,} rows + {figures['other_campaigns']} completed campaigns x "
              f"{figures['other_rows_each']:,} rows in {figures['build_seconds']:.1f} s "
              f"(send_queue {figures['send_queue_mb']} MB, send_queue_counting_idx "
              f"{figures['send_queue_counting_idx_mb']} MB)")
        if figures["campaigns_recomputed_by_all"] != 1:
            print(f"note: recompute(conn) wrote {figures['campaigns_recomputed_by_all']} campaigns (the "
                  "database's other unfinished ones too): not comparable with the seed's one campaign")
        print(f"\n{'method':<44} {'median ms':>10} {'min ms':>10}")
        for name, label in (
            ("sendonce_recompute", "sendonce recompute(conn), all unfinished"),
            ("sendonce_recompute_one", "sendonce recompute(conn, campaign_id)"),
            ("seed_method", "seed: SELECT status, count in client, UPDATE"),
        ):
            print(f"{label:<44} {figures[name + '_ms']:>10.1f} {figures[name + '_min_ms']:>10.1f}")
        print(f"\nseed / sendonce (all): {figures['speedup']}x   "
              f"seed / sendonce (one): {figures['speedup_one']}x   "
              f"(medians of {args.repeat} runs each after a warm-up)")
        counts = figures["counts"]
        print(f"counts: sent {counts['sent']:,} failed {counts['failed']:,} "
              f"({'both methods agree' if not problems else 'MISMATCH'})")
        print(f"recompute statement, server-side prepared plans: {figures['recompute_prepared_plans']}")
        if "plan" in figures:
            facts = figures["plan"]
            print(f"recompute plan: index-only scan on send_queue_counting_idx: {facts['index_only_scan']}, "
                  f"heap fetches: {facts['heap_fetches']}, "
                  f"seq scan on send_queue: {facts['send_queue_seq_scan']}")
        for title, plan in plans:
            print(f"\n--- EXPLAIN (ANALYZE, BUFFERS): {title}\n{plan}")
    for problem in problems:
        print(f"MISMATCH: {problem}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
