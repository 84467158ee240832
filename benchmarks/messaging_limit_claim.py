"""What the portfolio messaging limit (migration 007) costs the sender's claim, and placing a campaign in line.

Measured, for a messaging window already holding W unique users (W = 0, 10,000, 100,000; `--quick`: 0 and
10,000), each W on a fresh, migrated database:

1. The claim statement, `sendonce.repository.sending.claim_rows(conn, messages, token, default_mps=1000,
   max_wait=10, window=86400)` (`CLAIM_ROWS`), claiming a batch of 10 fresh `ready` rows of a running campaign,
   each batch its own rows, each message `QueueMessage(row_id, campaign_id, "bench")`, each claim a fresh
   uuid4 token. Four cases, on the same data:

   * (a) baseline: the campaign's phone number has no `messaging_limits` row (limit unknown):
     `admit_recipients` admits every row without looking at the window;
   * (b) admitted by the bound: a limit of W + 1,000,000: the claim takes the portfolio's advisory lock and,
     since the portfolio's bound (`messaging_usage`: the window counted once, plus what claims admitted since)
     leaves room for the batch, admits all 10 without reading the window (the first claim counts it);
   * (b') window counted: the same limit, the bound forgotten before each claim (as after a change of the
     limit, or near the limit): the claim reads the window (`messaging_window`: every send_queue row of the
     portfolio's campaigns with actual_sent_at within the window, and those `processing`) and admits all 10;
   * (c) deferred: a limit of exactly W (not for W = 0: max_recipients must be > 0): the window is full, so
     none is admitted; each row gets its `wait_until` (`messaging_room_at`) and is not claimed.

   Each claim is timed alone (time.perf_counter around `claim_rows`, client and round trip included). The
   cases run one after the other, the limit row set once per case (a change of the limit makes the next claim
   count the window again). After each claim, outside the timing, its 10 rows are reset
   (status `ready`, claim_token, claimed_at, enqueue_id, wait_until, wait_reason NULL, attempts 0): a
   `processing` row counts in the window, so the window stays at W for every claim; the rows are then
   never used again (each claim gets fresh rows, not reused ones). The number's send schedule
   (`rate_limits`) is also set back to now, so that every claim finds free send slots (10 slots of 1 ms at
   1,000 mps, within max_wait) and (a)/(b) differ only by the limit. `--warmup` rounds (default 10) run
   first, untimed, so that psycopg has prepared the statement (prepare_threshold 5, as on the sender's
   connection) and PL/pgSQL has settled on its plans; then `--claims` rounds (default 200; `--quick` 40).
   Every claim's outcome is checked: in (a) and (b) all 10 rows claimed, in (c) none, all 10 made to wait
   for the messaging limit; any other outcome is printed and makes the script exit with status 1.

   Printed: median and p95 in ms, and the ratio of each median to the baseline (a)'s median of the same W.

2. `place_in_messaging_line(campaign, 86400)` (what create/resume/enqueue run before enqueueing) for a campaign
   of `--place-rows` (default 100,000; `--quick` 10,000) `ready` rows, new users all, on the database of the
   largest W with the limit at exactly W: every row must wait, so every row gets its wait_until. Timed
   `--place-repeat` times (default 3), each time with the waits reset afterwards (wait_until, wait_reason
   NULL) and VACUUM ANALYZE send_queue, outside the timing. The function's answer (how many rows wait) is
   checked against --place-rows.

The data, built with set-based SQL (INSERT ... SELECT FROM generate_series) before anything is timed, all
on one phone number id (one portfolio when there is a limit row):

* the window: a `completed` campaign with W rows `sent`, each to a distinct phone number, with its own WAMID,
  actual_sent_at (and finished_at) spread evenly over the last hour;
* the claimed campaign, `running`: (warm-up + claims) x 3 cases x 10 `ready` rows, users not in the window;
* then VACUUM ANALYZE (autovacuum does this in production).

`--explain` loads auto_explain for the session (LOG messages sent to the client) and prints the plans, with
ANALYZE and BUFFERS, of the statements one claim of case (c) runs, nested ones included (the queries inside
admit_recipients and messaging_window), for each W, and of place_in_messaging_line's query.

PostgreSQL: DATABASE_URL when set (then one database for every W: its send_queue is added to, the window
grows across W and the figures are not those of a fresh database; the benchmark's campaigns and its
messaging_limits row are deleted afterwards); else a throwaway database per W on
postgresql://postgres@127.0.0.1:5432 (dropped afterwards, also on error); else an embedded server.

    .venv/bin/python benchmarks/messaging_limit_claim.py [--quick] [--windows 0,10000,100000] [--claims K]
        [--place-rows N] [--place-repeat R] [--explain] [--json]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
import uuid

import psycopg

from sendonce.migrate import migrate
from sendonce.models import QueueMessage
from sendonce.observability import logger
from sendonce.repository.sending import claim_rows

from _database import database

PHONE_NUMBER_ID = "106540352242922"
PORTFOLIO = "bench-portfolio"
BATCH = 10
DEFAULT_MPS = 1000
MAX_WAIT = 10.0
WINDOW_SECONDS = 86400.0
CASES = ("a", "b", "bc", "c")
CASE_LABELS = {"a": "(a) no limit row (baseline)", "b": "(b) limit W+1M: admitted by the bound",
               "bc": "(b') limit W+1M: window counted", "c": "(c) limit = W: all wait"}
FORGET_USAGE = "DELETE FROM messaging_usage"

INSERT_CAMPAIGN = """
INSERT INTO campaigns (id, name, status, template_name, language_code, phone_number_id, total_recipients,
                       created_at, updated_at, completed_at)
VALUES (%(id)s, %(name)s, %(status)s, 'diwali_offer_2025', 'en_US', %(number)s, %(rows)s,
        now() - interval '2 hours', now() - interval '2 hours',
        CASE WHEN %(status)s = 'completed' THEN now() END)
"""

# W sent rows, one per user; actual_sent_at spread over the last hour. %(tag)s keeps WAMIDs unique per run.
INSERT_SENT = """
INSERT INTO send_queue (campaign_id, phone_number, params, status, whatsapp_message_id, actual_sent_at,
                        finished_at, claim_token, claimed_at, attempts, delivery_status, created_at, updated_at)
SELECT %(id)s, g.phone, ARRAY['Customer ' || g.n], 'sent',
       'wamid.HBgM' || g.phone || 'FQIAERgS' || %(tag)s || upper(left(md5(g.phone), 18)),
       g.at, g.at, gen_random_uuid(), g.at - interval '1 second', 1, 'delivered',
       now() - interval '2 hours', g.at
FROM (
    SELECT n, %(prefix)s || lpad(n::text, 8, '0') AS phone,
           now() - interval '1 hour' * n / %(rows)s AS at
    FROM generate_series(1, %(rows)s) AS n
) g
"""

INSERT_READY = """
INSERT INTO send_queue (campaign_id, phone_number, params, status, created_at, updated_at)
SELECT %(id)s, %(prefix)s || lpad(n::text, 8, '0'), ARRAY['Customer ' || n], 'ready', now(), now()
FROM generate_series(1, %(rows)s) AS n
"""

SET_LIMIT = """
INSERT INTO messaging_limits (phone_number_id, portfolio_id, max_recipients, tier, source)
VALUES (%(number)s, %(portfolio)s, %(cap)s, 'TIER_BENCH', 'operator')
ON CONFLICT (phone_number_id) DO UPDATE SET max_recipients = excluded.max_recipients, updated_at = now()
"""
DROP_LIMIT = "DELETE FROM messaging_limits WHERE phone_number_id = %(number)s"

RESET_ROWS = """
UPDATE send_queue
SET status = 'ready', claim_token = NULL, claimed_at = NULL, attempts = 0, enqueue_id = NULL,
    wait_until = NULL, wait_reason = NULL, updated_at = now()
WHERE id = ANY(%s)
"""
RESET_SCHEDULE = "UPDATE rate_limits SET next_slot_at = now(), deferred_until = NULL WHERE phone_number_id = %s"

PLACE = "SELECT waiting, first_room, last_room FROM place_in_messaging_line(%s, %s)"
RESET_WAITS = """
UPDATE send_queue SET wait_until = NULL, wait_reason = NULL, updated_at = now()
WHERE campaign_id = %s AND wait_until IS NOT NULL
"""


def set_case(conn: psycopg.Connection, case: str, window_users: int) -> bool:
    """Put the limit row in the state of `case`; False if the case cannot be set up (a limit of 0)."""
    if case == "a":
        conn.execute(DROP_LIMIT, {"number": PHONE_NUMBER_ID})
        return True
    cap = window_users + 1_000_000 if case in ("b", "bc") else window_users
    if cap <= 0:
        return False
    conn.execute(SET_LIMIT, {"number": PHONE_NUMBER_ID, "portfolio": PORTFOLIO, "cap": cap})
    return True


def insert_campaign(conn: psycopg.Connection, name: str, status: str, rows: int) -> str:
    campaign_id = str(uuid.uuid4())
    conn.execute(INSERT_CAMPAIGN, {"id": campaign_id, "name": name, "status": status, "number": PHONE_NUMBER_ID,
                                   "rows": rows})
    return campaign_id


def build(conn: psycopg.Connection, window_users: int, pool: int) -> tuple[list[str], str, list[int]]:
    """The window's campaign and the claimed one; return (campaign ids, claimed campaign, its row ids)."""
    with conn.transaction():
        sent = insert_campaign(conn, "messaging window", "completed", window_users)
        if window_users:
            conn.execute(INSERT_SENT, {"id": sent, "rows": window_users, "prefix": "9198",
                                       "tag": uuid.UUID(sent).hex[:12].upper()})
        claimed = insert_campaign(conn, "claimed", "running", pool)
        conn.execute(INSERT_READY, {"id": claimed, "rows": pool, "prefix": "9197"})
    ids = [r[0] for r in conn.execute(
        "SELECT id FROM send_queue WHERE campaign_id = %s ORDER BY id", (claimed,))]
    conn.execute("VACUUM ANALYZE campaigns")
    conn.execute("VACUUM ANALYZE send_queue")
    conn.execute("VACUUM ANALYZE messaging_limits")
    return [sent, claimed], claimed, ids


def check(case: str, outcomes: dict, batch: list[int]) -> str | None:
    """What is wrong with one claim's outcome, if anything."""
    if sorted(outcomes) != sorted(batch):
        return f"case {case}: outcomes for {sorted(outcomes)}, asked for {sorted(batch)}"
    claimed = sum(o.row is not None for o in outcomes.values())
    waiting = sum(o.waits_now for o in outcomes.values())
    want = (BATCH, 0) if case in ("a", "b", "bc") else (0, BATCH)
    if (claimed, waiting) != want:
        return f"case {case}: {claimed} claimed and {waiting} made to wait, expected {want[0]} and {want[1]}"
    return None


class Notices:
    """Collect the server's LOG/NOTICE messages (auto_explain's plans) sent to this connection."""

    def __init__(self, conn: psycopg.Connection):
        self.messages: list[str] = []
        conn.add_notice_handler(lambda d: self.messages.append(d.message_primary))

    def take(self) -> list[str]:
        taken, self.messages = self.messages, []
        return taken


def auto_explain(conn: psycopg.Connection, on: bool) -> None:
    if on:
        conn.execute("LOAD 'auto_explain'")
        for setting, value in (("auto_explain.log_min_duration", "0"), ("auto_explain.log_analyze", "on"),
                               ("auto_explain.log_buffers", "on"), ("auto_explain.log_nested_statements", "on"),
                               ("auto_explain.log_timing", "on"), ("client_min_messages", "log")):
            conn.execute(f"SET {setting} = {value}")
    else:
        conn.execute("SET auto_explain.log_min_duration = -1")
        conn.execute("SET client_min_messages = notice")


def percentile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, max(0, int(round(q * len(ordered) + 0.5)) - 1))]


def measure_window(dsn: str, window_users: int, claims: int, warmup: int, explain: bool,
                   place_rows: int | None, place_repeat: int) -> tuple[dict, list[str], list[tuple[str, str]]]:
    """Build one W, time the claims (and place_in_messaging_line if place_rows); return (figures, problems, plans)."""
    problems: list[str] = []
    plans: list[tuple[str, str]] = []
    rounds = warmup + claims
    with psycopg.connect(dsn, autocommit=True) as conn:
        notices = Notices(conn)
        started = time.perf_counter()
        campaign_ids, claimed, ids = build(conn, window_users, rounds * BATCH * len(CASES))
        build_seconds = time.perf_counter() - started
        try:
            batches = {case: [ids[(k * len(CASES) + i) * BATCH:(k * len(CASES) + i + 1) * BATCH]
                              for i in range(rounds)] for k, case in enumerate(CASES)}
            cases = [case for case in CASES if set_case(conn, case, window_users)]
            samples: dict[str, list[float]] = {case: [] for case in cases}
            window_seen = None
            # One case after the other, its limit set once (a change of the limit makes the next claim count the
            # window again): (b) then shows the claims the bound admits, (b') forgets the bound before each claim.
            for case in cases:
                set_case(conn, case, window_users)
                for i in range(rounds):
                    conn.execute(RESET_SCHEDULE, (PHONE_NUMBER_ID,))
                    if case == "bc":
                        conn.execute(FORGET_USAGE)
                    batch = batches[case][i]
                    messages = [QueueMessage(row_id, claimed, "bench") for row_id in batch]
                    token = uuid.uuid4()
                    t0 = time.perf_counter()
                    outcomes = claim_rows(conn, messages, token, DEFAULT_MPS, MAX_WAIT, WINDOW_SECONDS)
                    elapsed = (time.perf_counter() - t0) * 1000
                    conn.execute(RESET_ROWS, (batch,))
                    problem = check(case, outcomes, batch)
                    if problem:
                        problems.append(f"W={window_users:,} round {i}: {problem}")
                    if i >= warmup:
                        samples[case].append(elapsed)
                    if case == "b" and i == rounds - 1:
                        window_seen = conn.execute("SELECT count(*) FROM messaging_window(%s, %s)",
                                                   (PORTFOLIO, WINDOW_SECONDS)).fetchone()[0]
            if window_seen is not None and window_seen != window_users:
                problems.append(f"W={window_users:,}: messaging_window holds {window_seen:,} users, "
                                f"expected {window_users:,}")

            if explain and "c" in cases:
                set_case(conn, "c", window_users)
                conn.execute(RESET_SCHEDULE, (PHONE_NUMBER_ID,))
                batch = batches["c"][0]
                notices.take()
                auto_explain(conn, True)
                claim_rows(conn, [QueueMessage(r, claimed, "bench") for r in batch], uuid.uuid4(),
                           DEFAULT_MPS, MAX_WAIT, WINDOW_SECONDS)
                auto_explain(conn, False)
                conn.execute(RESET_ROWS, (batch,))
                plans.append((f"one claim of case (c), W={window_users:,}", "\n\n".join(notices.take())))

            prepared = conn.execute(
                "SELECT generic_plans, custom_plans FROM pg_prepared_statements WHERE statement LIKE %s",
                ("%admit_recipients(b.ids%",),
            ).fetchone()
            figures = {
                "window_users": window_users,
                "build_seconds": round(build_seconds, 2),
                "claims": claims,
                "warmup": warmup,
                "claim_prepared_plans": ({"generic": prepared[0], "custom": prepared[1]} if prepared
                                         else "not prepared"),
                "cases": {},
            }
            base = statistics.median(samples["a"])
            for case in CASES:
                if case not in samples:
                    figures["cases"][case] = None
                    continue
                median = statistics.median(samples[case])
                figures["cases"][case] = {
                    "median_ms": round(median, 3),
                    "p95_ms": round(percentile(samples[case], 0.95), 3),
                    "min_ms": round(min(samples[case]), 3),
                    "ratio_to_a": round(median / base, 2),
                }

            if place_rows:
                figures["place_in_line"], place_problems, place_plans = place_in_line(
                    conn, notices, window_users, place_rows, place_repeat, explain)
                problems += place_problems
                plans += place_plans
                campaign_ids.append(figures["place_in_line"].pop("campaign_id"))
        finally:
            if not dsn_is_throwaway(dsn):
                conn.execute("DELETE FROM campaigns WHERE id = ANY(%s::uuid[])", (campaign_ids,))
                conn.execute(DROP_LIMIT, {"number": PHONE_NUMBER_ID})
    return figures, problems, plans


def dsn_is_throwaway(dsn: str) -> bool:
    return "/sendonce_bench_limit_" in dsn


def place_in_line(conn: psycopg.Connection, notices: Notices, window_users: int, rows: int, repeat: int,
                  explain: bool) -> tuple[dict, list[str], list[tuple[str, str]]]:
    """Time place_in_messaging_line for a campaign of `rows` new users with the window full (limit = W)."""
    problems: list[str] = []
    plans: list[tuple[str, str]] = []
    set_case(conn, "c", window_users)
    with conn.transaction():
        campaign_id = insert_campaign(conn, "placed in line", "running", rows)
        conn.execute(INSERT_READY, {"id": campaign_id, "rows": rows, "prefix": "9196"})
    conn.execute("VACUUM ANALYZE campaigns")
    conn.execute("VACUUM ANALYZE send_queue")
    seconds: list[float] = []
    for i in range(repeat):
        started = time.perf_counter()
        waiting, first_room, last_room = conn.execute(PLACE, (campaign_id, WINDOW_SECONDS)).fetchone()
        seconds.append(time.perf_counter() - started)
        if waiting != rows:
            problems.append(f"place_in_messaging_line run {i}: {waiting:,} rows wait, expected {rows:,}")
        conn.execute(RESET_WAITS, (campaign_id,))
        conn.execute("VACUUM ANALYZE send_queue")
    if explain:
        notices.take()
        auto_explain(conn, True)
        conn.execute(PLACE, (campaign_id, WINDOW_SECONDS)).fetchone()
        auto_explain(conn, False)
        conn.execute(RESET_WAITS, (campaign_id,))
        plans.append((f"place_in_messaging_line, {rows:,} rows, W={window_users:,}", "\n\n".join(notices.take())))
    return {
        "campaign_id": campaign_id,
        "rows": rows,
        "window_users": window_users,
        "limit": window_users,
        "repeat": repeat,
        "seconds": [round(s, 3) for s in seconds],
        "median_seconds": round(statistics.median(seconds), 3),
        "min_seconds": round(min(seconds), 3),
        "waiting": waiting,
        "first_room": first_room.isoformat() if first_room else None,
        "last_room": last_room.isoformat() if last_room else None,
    }, problems, plans


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: W 0 and 10,000, 40 claims, place_in_line of 10,000 rows")
    parser.add_argument("--windows", help="comma-separated W (users in the window); default 0,10000,100000")
    parser.add_argument("--claims", type=int, help="timed claims per case and W (default 200, --quick 40)")
    parser.add_argument("--warmup", type=int, default=10, help="untimed rounds first (default 10)")
    parser.add_argument("--place-rows", type=int,
                        help="rows of the campaign placed in line (default 100,000, --quick 10,000; 0: skip)")
    parser.add_argument("--place-repeat", type=int, default=3, help="timed runs of place_in_messaging_line")
    parser.add_argument("--explain", action="store_true",
                        help="print the plans (auto_explain, ANALYZE, BUFFERS) of a case (c) claim and of place")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)
    windows = ([int(w) for w in args.windows.split(",")] if args.windows
               else [0, 10_000] if args.quick else [0, 10_000, 100_000])
    claims = args.claims or (40 if args.quick else 200)
    place_rows = args.place_rows if args.place_rows is not None else (10_000 if args.quick else 100_000)
    if (any(not 0 <= w <= 99_999_999 for w in windows) or claims < 1 or args.warmup < 0
            or not 0 <= place_rows <= 99_999_999 or args.place_repeat < 1):
        parser.error("W must be 0..99,999,999, --claims and --place-repeat at least 1, --warmup at least 0")
    logger.setLevel("WARNING")

    results: list[dict] = []
    problems: list[str] = []
    plans: list[tuple[str, str]] = []
    server_version = None
    largest = max(windows)
    for w in windows:
        place = place_rows if (w == largest and w > 0) else 0
        with database("sendonce_bench_limit") as (dsn, described):
            with psycopg.connect(dsn, autocommit=True) as admin:
                migrate(admin)
                server_version = admin.execute("SHOW server_version").fetchone()[0]
            figures, found, shown = measure_window(dsn, w, claims, args.warmup, args.explain, place,
                                                   args.place_repeat)
        results.append(figures)
        problems += found
        plans += shown
    place_figures = next((r.pop("place_in_line") for r in results if "place_in_line" in r), None)

    output = {
        "windows": results,
        "place_in_line": place_figures,
        "batch": BATCH, "default_mps": DEFAULT_MPS, "max_wait": MAX_WAIT, "window_seconds": WINDOW_SECONDS,
        "rows_reset_after_each_claim": True,
        "outcomes_as_expected": not problems,
        "database": described,
        "server_version": server_version,
        "python": platform.python_version(),
        "psycopg": psycopg.__version__,
    }
    if args.json:
        if plans:
            output["explain"] = {title: plan for title, plan in plans}
        print(json.dumps(output, indent=2))
    else:
        print(f"database: {described} (PostgreSQL {server_version}), fresh per W"
              if described and described != "DATABASE_URL" else f"database: {described}")
        print(f"claim_rows: batches of {BATCH} fresh ready rows, default_mps={DEFAULT_MPS}, max_wait={MAX_WAIT:g}, "
              f"window={WINDOW_SECONDS:g} s; {claims} timed claims per case after {args.warmup} warm-up rounds; "
              "rows reset after each claim")
        for r in results:
            print(f"W={r['window_users']:,}: built in {r['build_seconds']:.1f} s; "
                  f"claim statement's server-side plans: {r['claim_prepared_plans']}")
        print(f"\n{'W':>9}  {'case':<38} {'median ms':>10} {'p95 ms':>10} {'min ms':>10} {'x (a)':>7}")
        for r in results:
            for case in CASES:
                c = r["cases"][case]
                if c is None:
                    print(f"{r['window_users']:>9,}  {CASE_LABELS[case]:<38} {'n/a (a limit of 0 is not allowed)':>41}")
                    continue
                print(f"{r['window_users']:>9,}  {CASE_LABELS[case]:<38} {c['median_ms']:>10.2f} {c['p95_ms']:>10.2f} "
                      f"{c['min_ms']:>10.2f} {c['ratio_to_a']:>7.2f}")
        if place_figures:
            p = place_figures
            print(f"\nplace_in_messaging_line: {p['rows']:,} ready rows, window {p['window_users']:,} users, limit "
                  f"{p['limit']:,} (all wait): median {p['median_seconds']:.3f} s, min {p['min_seconds']:.3f} s "
                  f"(runs: {', '.join(f'{s:.3f}' for s in p['seconds'])}); {p['waiting']:,} rows wait, "
                  f"rooms {p['first_room']} .. {p['last_room']}")
        else:
            print("\nplace_in_messaging_line: not measured (needs a W > 0 and --place-rows > 0)")
        print(f"outcomes: {'as expected' if not problems else 'NOT AS EXPECTED'}")
        for title, plan in plans:
            print(f"\n--- auto_explain (ANALYZE, BUFFERS): {title}\n{plan}")
    for problem in problems[:20]:
        print(f"UNEXPECTED: {problem}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
