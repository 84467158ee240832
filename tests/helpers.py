"""Small helpers the tests share (fixtures live in the root conftest.py)."""

from __future__ import annotations

import json

import psycopg
import psycopg.rows

from sendonce.local.lambda_runtime import PROJECT_ROOT

EVENTS = PROJECT_ROOT / "events"


def phone(i: int) -> str:
    """A valid Indian mobile number in E.164 digits, distinct per `i`."""
    return f"91987654{i:04d}"


def load_event(name: str) -> dict:
    """An event file from events/, as `sam local invoke -e` reads it."""
    return json.loads((EVENTS / name).read_text())


def queue_rows(conn: psycopg.Connection, campaign_id: str) -> dict[str, dict]:
    """The campaign's send_queue rows by phone number."""
    with conn.cursor(row_factory=psycopg.rows.dict_row) as cur:
        cur.execute("SELECT * FROM send_queue WHERE campaign_id = %s ORDER BY id", (campaign_id,))
        return {row["phone_number"]: row for row in cur}
