"""Quiet hours: each row is sent only inside the send window of its recipient's local time."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

from sendonce import control
from sendonce.cli import main
from sendonce.local.lambda_runtime import LocalContext, load_handler

from tests.helpers import invoke_reset_stuck, load_event, phone, queue_rows

LOS_ANGELES = [f"1415555{i:04d}" for i in range(2671, 2674)]  # one zone: America/Los_Angeles


def test_rows_outside_their_window_are_sent_only_after_it_opens_each_once(graph, pg_conn, aws, event_source,
                                                                           contacts_csv, capsys):
    # Given a window that opens in Los Angeles 3 s from now and is open in India now (time simulated by
    # choosing the window: it runs from LA's now + 3 s to India's now + 10 min, local time in each)
    now = datetime.now(UTC)
    opens = (now + timedelta(seconds=3)).astimezone(ZoneInfo("America/Los_Angeles")).time().replace(microsecond=0)
    closes = (now + timedelta(minutes=10)).astimezone(ZoneInfo("Asia/Kolkata")).time().replace(microsecond=0)
    india = [phone(i) for i in range(3)]
    csv = contacts_csv(["phone", "param1"], *([n, "x"] for n in india + LOS_ANGELES))
    assert main(["campaign", "create", "--name", "quiet", "--template", "order_update", "--language", "en_US",
                 "--phone-number-id", "106540352242922", "--contacts", str(csv), "--json",
                 "--send-window", f"{opens.isoformat()}-{closes.isoformat()}"]) == 0
    created = json.loads(capsys.readouterr().out)

    # When the queue is drained at once
    assert created["enqueued"] == 3
    event_source.run_until_empty(timeout=60)

    # Then India got it, Los Angeles waits for its window, and status says how many wait
    assert graph.accepted == {n: 1 for n in india}
    waiting = control.status(pg_conn, created["campaign_id"])["waiting"]
    assert [(w["reason"], w["rows"]) for w in waiting] == [("send window", 3)]
    assert invoke_reset_stuck()["released"] == 0

    # When the window opens in Los Angeles and the schedule runs
    time.sleep(max((now + timedelta(seconds=3.2) - datetime.now(UTC)).total_seconds(), 0))
    released_at = time.monotonic()
    assert invoke_reset_stuck()["released"] == 3
    event_source.run_until_empty(timeout=60)

    # Then Los Angeles got it too, after its window opened, and every recipient once
    assert graph.accepted == {n: 1 for n in india + LOS_ANGELES}
    la_sent = [at for r, at in zip(graph.requests, graph.accepted_at) if r["to"] in LOS_ANGELES]
    assert la_sent and min(la_sent) >= released_at - 0.5
    rows = queue_rows(pg_conn, created["campaign_id"])
    assert {rows[n]["time_zone"] for n in LOS_ANGELES} == {"America/Los_Angeles"}


def test_bad_send_window_or_zone_is_refused(graph, pg_conn, aws, contacts_csv, capsys):
    csv = contacts_csv(["phone", "param1"], [phone(1), "x"])
    base = ["campaign", "create", "--name", "q", "--template", "order_update", "--language", "en_US",
            "--phone-number-id", "106540352242922", "--contacts", str(csv)]
    assert main([*base, "--send-window", "9-20"]) == 2
    assert "--send-window must be HH:MM-HH:MM" in capsys.readouterr().err
    assert main([*base, "--send-window", "09:00-20:00", "--time-zone", "Mars/Olympus"]) == 2
    assert "--time-zone must be an IANA time zone" in capsys.readouterr().err
    assert pg_conn.execute("SELECT count(*) FROM campaigns").fetchone()[0] == 0


def test_api_takes_the_send_window_and_zone(graph, pg_conn, aws):
    # Given a window closed right now in Los Angeles: it opens there in an hour
    la_now = datetime.now(UTC).astimezone(ZoneInfo("America/Los_Angeles"))
    opens, closes = (la_now + timedelta(hours=1)).time(), (la_now + timedelta(hours=2)).time()
    window = f"{opens.strftime('%H:%M')}-{closes.strftime('%H:%M')}"
    event = load_event("campaigns_api_create.json")
    event["body"] = json.dumps({"name": "quiet", "template": "order_update", "language": "en_US",
                                "phone_number_id": "106540352242922", "contacts": LOS_ANGELES,
                                "send_window": window, "time_zone": "Asia/Kolkata"})

    # When it is created through POST /campaigns
    response = load_handler("campaigns_api")(event, LocalContext("campaigns_api"))

    # Then nothing is enqueued: every row waits for its window, in its number's zone
    created = json.loads(response["body"])
    assert (response["statusCode"], created["enqueued"]) == (201, 0)
    rows = queue_rows(pg_conn, created["campaign_id"])
    assert {r["time_zone"] for r in rows.values()} == {"America/Los_Angeles"}
    assert [(w["reason"], w["rows"]) for w in control.status(pg_conn, created["campaign_id"])["waiting"]] == [
        ("send window", 3)]

    # And a bad window or zone is 400
    for bad in ({"send_window": "9-20"}, {"send_window": window, "time_zone": "Mars/Olympus"}):
        event["body"] = json.dumps({**json.loads(event["body"]), **bad})
        response = load_handler("campaigns_api")(event, LocalContext("campaigns_api"))
        assert response["statusCode"] == 400, bad
