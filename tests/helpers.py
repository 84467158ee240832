"""Small helpers the tests share (fixtures live in the root conftest.py)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

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


_SENDER_CHILD = """
import json, sys
from sendonce.local.lambda_runtime import LocalContext, load_handler
event = json.load(open(sys.argv[1]))
load_handler("sender")(event, LocalContext("sender", timeout_seconds=float(sys.argv[2])))
sys.exit(3)  # it should have been killed before this line
"""


def kill_sender_when_accepted(event: dict, graph, to: str, folder: Path, timeout_seconds: float = 2) -> int:
    """Run the sender on `event` in a child process, SIGKILLed the moment the fake Graph accepts `to`'s send.

    `timeout_seconds` is the dead invocation's Lambda timeout (its idempotency record expires after it).
    Returns the child's exit code (-SIGKILL when it was killed as planned).
    """
    event_file = folder / "event.json"
    event_file.write_text(json.dumps(event))
    child = subprocess.Popen([sys.executable, "-c", _SENDER_CHILD, str(event_file), str(timeout_seconds)], env=dict(os.environ))
    graph.plan(to, "crash")
    graph.on_crash = lambda payload: os.kill(child.pid, signal.SIGKILL)
    return child.wait(timeout=60)
