"""The PostgreSQL connection, created on first use and kept for the life of the execution environment.

One connection per thread: a Lambda environment runs one invocation at a time on one thread, and the local
event source runs each concurrent "environment" on a thread of its own, so they never share a transaction.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

import psycopg
from psycopg.rows import dict_row, tuple_row

from sendonce.config import database_url, get_settings
from sendonce.errors import ConfigError, DatabaseError

CONNECT_TIMEOUT_SECONDS = 10
_local = threading.local()
_open: set[psycopg.Connection] = set()  # every thread's connection, so that `close_all` can reach them
_open_lock = threading.Lock()


def connect(dsn: str | None = None) -> psycopg.Connection:
    """Open a new autocommit connection (the idiom psycopg recommends; transactions are explicit)."""
    settings = get_settings()
    # Checked before psycopg sees it: psycopg's parse errors quote the whole string, password included, and
    # would carry it into every invocation's log.
    url = database_url() if dsn is None else dsn
    try:
        return psycopg.connect(
            url, autocommit=True, prepare_threshold=settings.pg_prepare_threshold, application_name="sendonce",
            # A firewalled host would otherwise hang for the OS's TCP timeout (minutes), past any Lambda's.
            connect_timeout=CONNECT_TIMEOUT_SECONDS,
        )
    except psycopg.OperationalError as exc:
        raise DatabaseError(f"cannot connect to PostgreSQL: {exc}") from None
    except psycopg.ProgrammingError:
        raise ConfigError("the database URL is not a PostgreSQL connection string") from None


def get_conn() -> psycopg.Connection:
    """Return this thread's cached connection, reconnecting if it was closed or dropped."""
    conn = getattr(_local, "conn", None)
    if conn is None or conn.closed or conn.broken:
        drop_conn()
        conn = _local.conn = connect()
        with _open_lock:
            _open.add(conn)
    return conn


def drop_conn() -> None:
    """Close and forget this thread's cached connection (after an OperationalError, or in tests)."""
    conn = getattr(_local, "conn", None)
    _local.conn = None
    if conn is not None:
        conn.close()
        with _open_lock:
            _open.discard(conn)


def close_all() -> None:
    """Close every thread's cached connection (local runs and tests, between runs: nothing may be using one)."""
    with _open_lock:
        conns = list(_open)
        _open.clear()
    for conn in conns:
        conn.close()
    _local.conn = None


def database_error(exc: psycopg.Error, what: str) -> DatabaseError:
    """`DatabaseError` for a driver error; a lost connection is dropped, so the next use reconnects."""
    if isinstance(exc, psycopg.OperationalError):
        drop_conn()
    return DatabaseError(f"{what}: {exc}")


def rows(conn: psycopg.Connection, statement: str, params: dict, what: str, *, dicts: bool = False) -> list:
    """Run one statement and return its rows (dicts when asked); driver errors become `DatabaseError`."""
    try:
        with conn.cursor(row_factory=dict_row if dicts else tuple_row) as cur:
            cur.execute(statement, params)
            return cur.fetchall() if cur.description else []
    except psycopg.Error as exc:
        raise database_error(exc, what) from exc


@contextmanager
def transaction(conn: psycopg.Connection, what: str) -> Iterator[psycopg.Connection]:
    """`conn.transaction()` whose driver errors, BEGIN and COMMIT included, become `DatabaseError`."""
    try:
        with conn.transaction():
            yield conn
    except psycopg.Error as exc:
        raise database_error(exc, what) from exc
