"""Scheduled campaigns: `--start-at` creates a `scheduled` campaign that the schedule starts when its time comes."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime, timedelta

from sendonce import control
from sendonce.cli import main
from sendonce.local.event_source import queue_depth
from tests.helpers import invoke_reset_stuck, phone

NUMBER = "106540352242922"



def _create(csv, start_at: str) -> list[str]:
    return ["campaign", "create", "--name", "later", "--template", "order_update", "--language", "en_US",
            "--phone-number-id", NUMBER, "--contacts", str(csv), "--start-at", start_at, "--json"]


def test_scheduled_campaign_waits_for_its_time_then_sends_each_once(graph, pg_conn, aws, event_source, contacts_csv,
                                                                    capsys):
    # Given a campaign scheduled 2 s ahead (in India's zone)
    csv = contacts_csv(["phone", "param1"], *([phone(i), "x"] for i in range(5)))
    start = datetime.now(UTC) + timedelta(seconds=2)
    assert main(_create(csv, start.astimezone(datetime.now().astimezone().tzinfo).isoformat())) == 0
    created = json.loads(capsys.readouterr().out)

    # Then it is scheduled, nothing is enqueued, and the schedule does not start it early
    assert created["enqueued"] == 0 and created["messaging_limit"]["message"].startswith("scheduled: starts at")
    status = control.status(pg_conn, created["campaign_id"])
    assert (status["status"], status["pending"]) == ("scheduled", 5)
    assert queue_depth(aws.send_queue_url) == 0
    assert invoke_reset_stuck()["started"] == []

    # When its time has come and the schedule runs
    time.sleep(max((start - datetime.now(UTC)).total_seconds(), 0) + 0.1)
    assert invoke_reset_stuck()["started"] == [created["campaign_id"]]
    event_source.run_until_empty(timeout=60)

    # Then every recipient got it once
    assert graph.accepted == {phone(i): 1 for i in range(5)}
    assert control.status(pg_conn, created["campaign_id"])["sent"] == 5


def test_scheduled_campaign_cancelled_before_its_time_is_never_sent(graph, pg_conn, aws, event_source, contacts_csv,
                                                                    capsys):
    csv = contacts_csv(["phone", "param1"], [phone(1), "x"])
    start = datetime.now(UTC) + timedelta(seconds=1)
    assert main(_create(csv, start.isoformat())) == 0
    campaign_id = json.loads(capsys.readouterr().out)["campaign_id"]
    assert main(["campaign", "cancel", campaign_id]) == 0
    time.sleep(1.2)
    assert invoke_reset_stuck()["started"] == []
    event_source.run_until_empty(timeout=30)
    assert graph.accepted == {}
    assert control.status(pg_conn, campaign_id)["cancelled"] == 1


def test_start_at_without_a_zone_or_in_the_past_is_refused(graph, pg_conn, aws, contacts_csv, capsys):
    csv = contacts_csv(["phone", "param1"], [phone(1), "x"])
    assert main(_create(csv, "2030-01-01T09:00:00")) == 2
    assert "--start-at needs a time zone" in capsys.readouterr().out
    assert main(_create(csv, "2020-01-01T09:00:00Z")) == 2
    assert "is in the past" in capsys.readouterr().out
    assert main(_create(csv, "tomorrow")) == 2
    assert "--start-at must be an ISO time with a zone" in capsys.readouterr().out
    assert pg_conn.execute("SELECT count(*) FROM campaigns").fetchone()[0] == 0
