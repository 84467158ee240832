"""The fault-injecting PostgreSQL proxy: statement counting and the three cut points, on a real server."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict

from sendonce.local.pgproxy import WHENS, Fault, PgFaultProxy, Statement

INSERT = "INSERT INTO t (a) VALUES (%s)"
INSERT_SQL = "INSERT INTO t (a) VALUES ($1)"


@pytest.fixture(scope="module")
def url(pg_server) -> str:
    """A database of its own for this module."""
    return pg_server()


@pytest.fixture
def table(url) -> str:
    """An empty table `t (a int)`; returns the direct (unproxied) DSN."""
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("DROP TABLE IF EXISTS t; CREATE TABLE t (a int)")
    return url


@pytest.fixture
def proxy(table) -> Iterator[PgFaultProxy]:
    """A started proxy in front of the test database."""
    with PgFaultProxy(table) as proxy:
        yield proxy


def rows(url: str) -> list[int]:
    """The values in `t`, read over a direct connection."""
    with psycopg.connect(url, autocommit=True) as conn:
        return [a for (a,) in conn.execute("SELECT a FROM t ORDER BY a")]


def connect(proxy: PgFaultProxy, **kwargs) -> psycopg.Connection:
    """An autocommit connection through the proxy."""
    return psycopg.connect(proxy.dsn, autocommit=True, connect_timeout=5, **kwargs)


def test_dsn_points_at_proxy_and_keeps_other_params():
    # Given an upstream URI with credentials, a database and extra parameters
    upstream = "postgresql://alice:s3cret@db.example:6543/app?application_name=x&sslmode=require"

    # When the proxy is started in front of it
    with PgFaultProxy(upstream) as proxy:
        params, port = conninfo_to_dict(proxy.dsn), proxy.port

    # Then only host, port and sslmode change
    assert params == {
        "user": "alice",
        "password": "s3cret",
        "dbname": "app",
        "application_name": "x",
        "host": "127.0.0.1",
        "port": str(port),
        "sslmode": "disable",
    }


def test_record_mode_statements_are_numbered_round_trips_with_their_sql(proxy, table):
    # Given a client using plain statements, a transaction, executemany and COPY through the proxy
    with connect(proxy) as conn:
        conn.execute("SELECT 1")
        conn.execute(INSERT, (1,))
        with conn.transaction():
            conn.execute(INSERT, (2,))
        with conn.cursor() as cur:
            # When it runs them
            cur.executemany(INSERT, [(3,), (4,), (5,)])
            with cur.copy("COPY t (a) FROM STDIN") as copy:
                for a in (6, 7):
                    copy.write_row((a,))

    # Then each round trip is one statement: BEGIN/COMMIT are simple queries, executemany is one pipeline,
    # COPY (its data included) is one
    assert [(s.sql, s.kind) for s in proxy.statements] == [
        ("SELECT 1", "simple"),
        (INSERT_SQL, "extended"),
        ("BEGIN", "simple"),
        (INSERT_SQL, "extended"),
        ("COMMIT", "simple"),
        (INSERT_SQL, "extended"),
        ("COPY t (a) FROM STDIN", "copy"),
    ]
    assert [s.number for s in proxy.statements] == [1, 2, 3, 4, 5, 6, 7]
    assert len({s.connection for s in proxy.statements}) == 1
    assert rows(table) == [1, 2, 3, 4, 5, 6, 7]
    assert proxy.fired is None


def test_reset_statements_numbering_restarts_from_one(proxy):
    # Given statements already recorded
    with connect(proxy) as conn:
        conn.execute("SELECT 1")
        proxy.reset()

        # When more run after reset()
        conn.execute("SELECT 2")

    # Then numbering starts over
    assert proxy.statements == [Statement(1, proxy.statements[0].connection, "SELECT 2", "simple")]


def test_before_cut_statement_never_runs_and_client_gets_operational_error(proxy, table):
    # Given a cut before statement 2
    seen: list[Statement] = []
    proxy.inject(at=2, when="before", on_fault=seen.append)
    with connect(proxy) as conn:
        conn.execute("SELECT 1")

        # When statement 2 is sent
        with pytest.raises(psycopg.OperationalError):
            conn.execute(INSERT, (1,))

    # Then the server never ran it, and the fault fired once, at it
    assert rows(table) == []
    assert proxy.fired == seen[0]
    assert (proxy.fired.number, proxy.fired.sql) == (2, INSERT_SQL)


def test_after_send_cut_autocommit_insert_runs_and_client_gets_operational_error(proxy, table):
    # Given a cut after statement 1 was sent; on_fault looks at the table at the moment of the cut
    seen: list[tuple[Statement, list[int]]] = []
    proxy.inject(at=1, when="after_send", on_fault=lambda s: seen.append((s, rows(table))))

    # When an autocommit INSERT runs through it
    with connect(proxy) as conn, pytest.raises(psycopg.OperationalError):
        conn.execute(INSERT, (1,))

    # Then the server committed it before the cut, yet the client only saw a lost server
    assert seen == [(Statement(1, seen[0][0].connection, INSERT_SQL, "extended"), [1])]
    assert rows(table) == [1]


def test_after_send_cut_on_commit_transaction_is_committed(proxy, table):
    # Given a cut after COMMIT (statement 3: BEGIN, INSERT, COMMIT) was sent
    proxy.inject(at=3, when="after_send")

    # When a transaction commits through it
    with connect(proxy) as conn, pytest.raises(psycopg.OperationalError):
        with conn.transaction():
            conn.execute(INSERT, (1,))

    # Then the server ran COMMIT: the row is there although the client got an error
    assert proxy.fired.sql == "COMMIT"
    assert rows(table) == [1]


def test_after_send_cut_on_insert_in_transaction_is_rolled_back(proxy, table):
    # Given a cut after the INSERT (statement 2) of a transaction was sent
    proxy.inject(at=2, when="after_send")

    # When the transaction runs through it
    with connect(proxy) as conn, pytest.raises(psycopg.OperationalError):
        with conn.transaction():
            conn.execute(INSERT, (1,))

    # Then the server ran the INSERT but never got COMMIT: nothing is there
    assert proxy.fired.sql == INSERT_SQL
    assert rows(table) == []


def test_after_reply_cut_client_gets_result_then_connection_is_closed(proxy, table):
    # Given a cut after the reply to statement 1
    proxy.inject(at=1, when="after_reply")

    with connect(proxy) as conn:
        # When an INSERT ... RETURNING runs through it
        result = conn.execute("INSERT INTO t (a) VALUES (%s) RETURNING a", (1,)).fetchone()

        # Then the client has its answer, and the next statement finds the connection gone (and never runs)
        assert result == (1,)
        with pytest.raises(psycopg.OperationalError):
            conn.execute(INSERT, (2,))
    assert rows(table) == [1]
    assert [s.number for s in proxy.statements] == [1]


def test_outage_cut_refuses_connections_until_heal(proxy):
    # Given another live connection and an outage starting at statement 1
    bystander = connect(proxy)
    proxy.inject(at=1, when="before", outage=True)

    # When the cut happens
    with connect(proxy) as conn, pytest.raises(psycopg.OperationalError):
        conn.execute("SELECT 1")

    # Then live connections are gone and new ones are refused until heal()
    with pytest.raises(psycopg.OperationalError):
        bystander.execute("SELECT 1")
    bystander.close()
    assert proxy.in_outage
    with pytest.raises(psycopg.OperationalError):
        connect(proxy)
    proxy.heal()
    with connect(proxy) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)


def test_after_send_cut_during_copy_rows_are_committed_and_client_gets_operational_error(proxy, table):
    # Given a cut after the COPY statement (data included) was sent
    proxy.inject(at=1, when="after_send")

    # When a COPY FROM STDIN runs through it in autocommit
    with connect(proxy) as conn, pytest.raises(psycopg.OperationalError):
        with conn.cursor() as cur, cur.copy("COPY t (a) FROM STDIN") as copy:
            for a in (1, 2, 3):
                copy.write_row((a,))

    # Then the server got every row and committed, the client only saw a lost server
    assert proxy.fired.kind == "copy"
    assert rows(table) == [1, 2, 3]


def _chaos_run(proxy: PgFaultProxy, seed: int, statements: int) -> tuple[list[Fault], list[int]]:
    """Run `statements` SELECTs under chaos, reconnecting after each cut; return faults and failed indexes."""
    proxy.reset()
    proxy.chaos(0.3, seed)
    failed = []
    conn = connect(proxy)
    for i in range(statements):
        try:
            conn.execute("SELECT %s", (i,))
        except psycopg.OperationalError:
            failed.append(i)
            conn.close()
            conn = connect(proxy)
    conn.close()
    proxy.chaos(0, 0)
    return proxy.faults, failed


def test_chaos_same_seed_same_statements_give_same_faults(proxy):
    # Given two runs of the same statements under chaos with the same seed
    first = _chaos_run(proxy, seed=42, statements=40)

    # When run again
    second = _chaos_run(proxy, seed=42, statements=40)

    # Then the same statements were cut at the same points, and all three points occurred
    assert first == second
    faults, failed = first
    assert {f.when for f in faults} == set(WHENS)
    assert len(failed) == len(faults)
    assert _chaos_run(proxy, seed=43, statements=40)[0] != faults


def test_prepared_statements_sql_is_looked_up_from_earlier_parse(proxy):
    # Given a client that prepares every statement (a Parse round trip, then Bind-only round trips)
    proxy.inject(at=4, when="before")
    with connect(proxy, prepare_threshold=0) as conn:
        # When the same query runs twice, and a third time into a cut
        conn.execute("SELECT %s::int", (1,))
        conn.execute("SELECT %s::int", (2,))
        with pytest.raises(psycopg.OperationalError):
            conn.execute("SELECT %s::int", (3,))

    # Then every statement is recorded with the SQL text, even the Bind-only one cut before its first message
    assert [s.sql for s in proxy.statements] == ["SELECT $1::int"] * 4
    assert proxy.fired.sql == "SELECT $1::int"


def test_cancel_request_is_forwarded_to_server(proxy):
    # Given a long query running through the proxy
    with connect(proxy) as conn:
        timer = threading.Timer(0.2, conn.cancel_safe)
        timer.start()

        # When the client cancels it
        started = time.monotonic()
        with pytest.raises(psycopg.errors.QueryCanceled):
            conn.execute("SELECT pg_sleep(10)")

        # Then the server cancelled it, and the connection still works
        assert time.monotonic() - started < 5
        assert conn.execute("SELECT 1").fetchone() == (1,)
        timer.join()


def test_stop_closes_live_connections_without_hanging(table):
    # Given a live connection through a proxy
    proxy = PgFaultProxy(table).start()
    conn = connect(proxy)

    # When the proxy stops
    started = time.monotonic()
    proxy.stop()

    # Then it did so at once and the client finds the server gone
    assert time.monotonic() - started < 2
    with pytest.raises(psycopg.OperationalError):
        conn.execute("SELECT 1")
    conn.close()
