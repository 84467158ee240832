"""Schema migrations: `migrations/NNN_*.sql`, applied in order, each exactly once, one process at a time."""

from __future__ import annotations

import os
import re
from pathlib import Path

import psycopg

from sendonce.errors import MigrationError
from sendonce.observability import logger

_FILE_NAME = re.compile(r"^(\d{3})_[a-z0-9_]+\.sql$")
# Any constant works; it only has to be the same for every sendonce process on the database.
ADVISORY_LOCK_KEY = 0x5E4D0C3

CREATE_MIGRATIONS_TABLE = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    version    text PRIMARY KEY,
    name       text NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
)"""
SELECT_APPLIED = "SELECT version FROM schema_migrations"
INSERT_APPLIED = "INSERT INTO schema_migrations (version, name) VALUES (%(version)s, %(name)s)"
LOCK = "SELECT pg_advisory_lock(%(key)s)"
UNLOCK = "SELECT pg_advisory_unlock(%(key)s)"


def migrations_dir() -> Path:
    """The folder of SQL files: SENDONCE_MIGRATIONS_DIR, else `migrations/` at the project root."""
    configured = os.environ.get("SENDONCE_MIGRATIONS_DIR")
    return Path(configured) if configured else Path(__file__).resolve().parents[3] / "migrations"


def migration_files(folder: Path) -> list[tuple[str, Path]]:
    """The migration files in order, as (version, path); raises `MigrationError` on a misnamed or repeated one."""
    if not folder.is_dir():
        raise MigrationError(f"migrations folder not found: {folder} (set SENDONCE_MIGRATIONS_DIR)")
    found: dict[str, Path] = {}
    for path in sorted(folder.glob("*.sql")):
        match = _FILE_NAME.match(path.name)
        if not match:
            raise MigrationError(f"migration file name must look like 001_name.sql: {path.name}")
        if match.group(1) in found:
            raise MigrationError(f"two migrations share version {match.group(1)}: {path.name}")
        found[match.group(1)] = path
    return sorted(found.items())


def migrate(conn: psycopg.Connection, folder: Path | None = None) -> list[str]:
    """Apply the migrations not yet recorded in `schema_migrations`; return the names applied.

    Safe to run twice and from several processes at once: an advisory lock serialises runners, and each file
    is applied and recorded in one transaction.

    Raises
    ------
    MigrationError
        A file is misnamed or its SQL fails (that file's changes are rolled back).
    """
    files = migration_files(folder or migrations_dir())
    applied: list[str] = []
    conn.execute(LOCK, {"key": ADVISORY_LOCK_KEY})
    try:
        conn.execute(CREATE_MIGRATIONS_TABLE)
        done = {row[0] for row in conn.execute(SELECT_APPLIED)}
        for version, path in files:
            if version in done:
                continue
            try:
                with conn.transaction():
                    conn.execute(path.read_text(encoding="utf-8"))
                    conn.execute(INSERT_APPLIED, {"version": version, "name": path.name})
            except psycopg.Error as exc:
                raise MigrationError(f"{path.name} failed: {exc}") from exc
            logger.info("applied migration", migration=path.name)
            applied.append(path.name)
    finally:
        conn.execute(UNLOCK, {"key": ADVISORY_LOCK_KEY})
    return applied
