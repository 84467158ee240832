"""`sendonce migrate`: each file once, in order, safe to run twice and from two processes at once."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import psycopg
import pytest

from sendonce.errors import MigrationError
from sendonce.migrate import migrate, migration_files, migrations_dir


def test_migrate_run_twice_concurrently_applies_each_file_once(pg_server):
    # Given an empty database
    url = pg_server()
    command = [sys.executable, "-m", "sendonce.cli", "migrate"]
    env = {"DATABASE_URL": url, "PATH": "/usr/bin:/bin"}

    # When two processes migrate it at the same moment
    runs = [subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    results = [(run.wait(timeout=120), *run.communicate()) for run in runs]

    # Then both succeed, one applied everything, the other found nothing to do
    assert [code for code, _, _ in results] == [0, 0], results
    outputs = sorted(out.strip() for _, out, _ in results)
    assert outputs[0].startswith("applied: 001_initial.sql")
    assert outputs[1] == "database is up to date"
    with psycopg.connect(url) as conn:
        versions = [row[0] for row in conn.execute("SELECT version FROM schema_migrations ORDER BY version")]
        assert versions == [version for version, _ in migration_files(migrations_dir())]

        # And a third run changes nothing
        assert migrate(conn) == []


def test_migrate_failing_file_rolls_back_and_reports(pg_server, tmp_path):
    # Given a folder whose second migration is broken
    (tmp_path / "001_first.sql").write_text("CREATE TABLE first_table (id int);")
    (tmp_path / "002_broken.sql").write_text("CREATE TABLE second_table (id int); SELEC 1;")
    url = pg_server()

    with psycopg.connect(url, autocommit=True) as conn:
        # When migrating
        with pytest.raises(MigrationError, match="002_broken.sql"):
            migrate(conn, tmp_path)

        # Then the first is recorded and the broken one left nothing behind
        assert [r[0] for r in conn.execute("SELECT version FROM schema_migrations")] == ["001"]
        assert conn.execute("SELECT to_regclass('second_table')").fetchone()[0] is None


def test_migration_file_names_are_checked(tmp_path: Path):
    (tmp_path / "1_bad.sql").write_text("SELECT 1;")
    with pytest.raises(MigrationError, match="001_name.sql"):
        migration_files(tmp_path)
