"""The database a benchmark runs on: DATABASE_URL, else a throwaway database on the local server, else embedded."""

from __future__ import annotations

import contextlib
import os
import uuid

import psycopg
from psycopg import sql

ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/postgres"


@contextlib.contextmanager
def database(prefix: str = "sendonce_bench"):
    """Yield (dsn, description): DATABASE_URL, else a throwaway database on ADMIN_URL, else embedded."""
    if os.environ.get("DATABASE_URL"):
        yield os.environ["DATABASE_URL"], "DATABASE_URL"
        return
    try:
        admin = psycopg.connect(ADMIN_URL, autocommit=True, connect_timeout=3)
    except psycopg.OperationalError:
        admin = None
    if admin is None:
        from sendonce.local.services import start_embedded_postgres

        server = start_embedded_postgres()
        try:
            yield server.get_uri(), "embedded PostgreSQL (pgserver)"
        finally:
            server.cleanup()
        return
    name = f"{prefix}_{uuid.uuid4().hex[:8]}"
    with admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        try:
            yield ADMIN_URL.rsplit("/", 1)[0] + f"/{name}", f"throwaway database {name} on 127.0.0.1:5432"
        finally:
            admin.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(name)))
