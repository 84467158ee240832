"""The PostgreSQL connection, created on first use and kept for the life of the execution environment."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

import psycopg
from psycopg.rows import dict_row, tuple_row

from sendonce.config import get_settings, require, resolve_secret
from sendonce.errors import DatabaseError

_conn: psycopg.Connection | None = None
_lock = threading.Lock()


def connect(dsn: str | None = None) -> psycopg.Connection:
    """Open a new autocommit connection (the idiom psycopg recommends; transactions are explicit)."""
    settings = get_settings()
    url = resolve_secret(dsn or require(settings.database_url, "DATABASE_URL"))
    try:
        return psycopg.connect(
            url, autocommit=True, prepare_threshold=settings.pg_prepare_threshold, application_name="sendonce"
        )
    except psycopg.OperationalError as exc:
        raise DatabaseError(f"cannot connect to PostgreSQL: {exc}") from exc


def get_conn() -> psycopg.Connection:
    """Return the cached connection, reconnecting if it was closed or dropped."""
    global _conn
    with _lock:
        if _conn is None or _conn.closed or _conn.broken:
            _conn = connect()
        return _conn


def drop_conn() -> None:
    """Forget the cached connection (after an OperationalError, or in tests)."""
    global _conn
    with _lock:
        if _conn is not None:
            _conn.close()
        _conn = None


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
