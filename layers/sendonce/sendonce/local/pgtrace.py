"""Count real PostgreSQL round trips with libpq's protocol trace: one ReadyForQuery per round trip."""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import psycopg
from psycopg import pq


@dataclass
class RoundTrips:
    """Filled in when the `count_round_trips` block ends."""

    count: int = 0
    statements: int = 0


@contextmanager
def count_round_trips(conn: psycopg.Connection) -> Iterator[RoundTrips]:
    """Trace `conn`'s protocol messages during the block and count round trips and statements sent."""
    result = RoundTrips()
    with tempfile.TemporaryFile(mode="w+") as trace:
        conn.pgconn.trace(trace.fileno())
        conn.pgconn.set_trace_flags(pq.Trace.SUPPRESS_TIMESTAMPS | pq.Trace.REGRESS_MODE)
        try:
            yield result
        finally:
            conn.pgconn.untrace()
            trace.seek(0)
            lines = trace.read().splitlines()
    result.count = sum(1 for line in lines if line.startswith("B") and "\tReadyForQuery" in line)
    result.statements = sum(1 for line in lines if line.startswith("F") and ("\tBind\t" in line or "\tQuery\t" in line))
    return result
