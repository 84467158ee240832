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
import json
import os
import sys

from _database import database

from sendonce.local.ceiling import run_at_limit


def run(senders: int, mps: int, max_wait: int, seconds: int) -> dict:
    """Send one campaign with `senders` concurrent senders; return the figures."""
    r = run_at_limit(mps, senders, seconds, max_wait, latency=0.0, batch=10, burst=None, throttle_factor=1.25,
                     store="dynamodb")
    return {"senders": senders, "mps": mps, "max_slot_wait_s": max_wait, "rows": r["rows"], "sent": r["sent"],
            "achieved_mps": r["achieved_mps"], "achieved_over_limit": r["achieved_share"],
            "most_started_in_one_second": r["most_started_in_one_second"],
            "most_accepted_in_one_second": r["most_accepted_in_one_second"], "throttled_130429": r["throttled"],
            "schedule_most_ahead_s": r["schedule_most_ahead_s"], "dead_lettered": r["dead_lettered"],
            "duplicates": r["duplicates"], "database": r["database"]}


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
