"""How long `sendonce campaign export` takes on a 1,000,000-row campaign, and how much memory it needs.

Measured, on the same data, each in a child process of its own (so that its peak RSS is its own, read from
getrusage(RUSAGE_CHILDREN) after it exits):

* sendonce: `sendonce campaign export ID --output FILE`, the CLI as an operator runs it: rows streamed from a
  server-side cursor 10,000 at a time (`sendonce.export`), written as they come;
* baseline: the same CSV written after `fetchall()` of the same SELECT (every row in memory first), the way an
  export without a cursor works.

The data: the campaign `benchmarks/recompute_counters_1m.py` builds (`--rows`, default 1,000,000: 90% sent with
WAMIDs and delivery statuses, 5% failed with codes, the rest ready, processing, cancelled), built with set-based
SQL before anything is timed. Both files are compared (same bytes) and their rows counted against the
campaign's counters (`campaign_counters`); a difference is printed and makes the script exit with status 1.
Nothing is asserted about the times.

    .venv/bin/python benchmarks/export_1m.py [--rows N] [--json]

PostgreSQL: DATABASE_URL when set, else a throwaway database on 127.0.0.1:5432, else an embedded server.
"""

from __future__ import annotations

import argparse
import csv
import filecmp
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _database import database  # noqa: E402
from recompute_counters_1m import build  # noqa: E402

from sendonce.migrate import migrate  # noqa: E402

# The baseline: the same file, from every row fetched at once.
_BASELINE = """
import sys, psycopg
from sendonce import export
from sendonce.repository import exports
dsn, campaign_id, path = sys.argv[1:]
conn = psycopg.connect(dsn, autocommit=True)
params = exports.param_count(conn, campaign_id)
everything = conn.execute(exports.EXPORT_ROWS, {"campaign_id": campaign_id}).fetchall()
exports.export_rows = lambda conn, campaign_id, batch=0: iter(everything)  # the same writer, fed from the list
with open(path, "w", encoding="utf-8", newline="") as out:
    export.export_csv(conn, campaign_id, out)
"""


def _child(argv: list[str], env: dict) -> tuple[float, float]:
    """Run a child to its end: (seconds, its peak RSS in MB)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    started = time.perf_counter()
    subprocess.run(argv, check=True, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    elapsed = time.perf_counter() - started
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    # ru_maxrss of RUSAGE_CHILDREN is the largest of all children so far: each child must outgrow the last to
    # show, so the streamed export (the smaller) runs first.
    return elapsed, max(peak, before) / 1024


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    sendonce_cli = str(Path(sys.executable).with_name("sendonce"))
    with database("sendonce_bench_export") as (dsn, where), tempfile.TemporaryDirectory() as folder:
        with psycopg.connect(dsn, autocommit=True) as conn:
            migrate(conn)
            started = time.perf_counter()
            campaign_id, _ = build(conn, args.rows, 0, 0)
            built = time.perf_counter() - started
            counters = conn.execute(
                "SELECT recipients, sent, failed, cancelled FROM campaign_counters WHERE campaign_id = %s",
                (campaign_id,),
            ).fetchone()
        env = {**os.environ, "DATABASE_URL": dsn, "POWERTOOLS_METRICS_DISABLED": "true"}
        streamed, baseline = Path(folder) / "streamed.csv", Path(folder) / "baseline.csv"
        stream_s, stream_mb = _child([sendonce_cli, "campaign", "export", campaign_id, "--output", str(streamed)], env)
        base_s, base_mb = _child([sys.executable, "-c", _BASELINE, dsn, campaign_id, str(baseline)], env)
        problems = []
        if not filecmp.cmp(streamed, baseline, shallow=False):
            problems.append("the two files differ")
        with streamed.open(encoding="utf-8") as f:
            statuses = Counter(row["status"] for row in csv.DictReader(f))
        found = (sum(statuses.values()), statuses["sent"], statuses["failed"], statuses["cancelled"])
        if found != tuple(counters):
            problems.append(f"the file has (rows, sent, failed, cancelled) {found}, the counters {tuple(counters)}")
        size_mb = streamed.stat().st_size / 1e6
    figures = {
        "rows": args.rows, "database": where, "build_seconds": round(built, 1), "file_mb": round(size_mb, 1),
        "streamed": {"seconds": round(stream_s, 2), "peak_rss_mb": round(stream_mb), "rows_per_s": round(args.rows / stream_s)},
        "baseline_fetchall": {"seconds": round(base_s, 2), "peak_rss_mb": round(base_mb)},
        "memory_ratio": round(base_mb / stream_mb, 1), "problems": problems,
    }
    if args.json:
        print(json.dumps(figures))
    else:
        print(f"{args.rows:,} rows ({where}; built in {built:.0f} s), {size_mb:.0f} MB of CSV")
        print(f"  sendonce campaign export (streamed):  {stream_s:6.1f} s  peak RSS {stream_mb:5.0f} MB  "
              f"{args.rows / stream_s:,.0f} rows/s")
        print(f"  fetchall, then write (baseline):      {base_s:6.1f} s  peak RSS {base_mb:5.0f} MB  "
              f"({base_mb / stream_mb:.1f}x the memory)")
        for problem in problems:
            print(f"  PROBLEM: {problem}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
