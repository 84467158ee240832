"""The portfolio's messaging limit: never more unique users in a moving window than the limit; the rest wait.

Time is simulated: MESSAGING_WINDOW_SECONDS shortens Meta's 24 h window to seconds, for sendonce and the fake
Graph alike (which, like Meta, accepts sends past the limit and never delivers them: `over_limit`).
"""

from __future__ import annotations

import json
import re
import time
import uuid

import pytest

from sendonce import control
from sendonce.campaigns import NewCampaign, create_campaign
from sendonce.cli import main
from sendonce.config import get_settings
from sendonce.contacts import Contact, ContactList
from sendonce.local.event_source import SqsEventSource
from tests.helpers import invoke_reset_stuck, phone

NUMBER = "106540352242922"


@pytest.fixture
def window(monkeypatch, graph) -> float:
    """A moving window of a few seconds, and sends fast enough to fill a limit of 1,000 well within it."""
    seconds = 8.0
    monkeypatch.setenv("MESSAGING_WINDOW_SECONDS", str(seconds))
    monkeypatch.setenv("WHATSAPP_MAX_MPS", "1000")
    get_settings.cache_clear()
    return seconds



def _send_until_done(event_source, pg_conn, campaign_ids: list[str], timeout: float = 150.0) -> list[dict]:
    """Drain the queue, run the schedule (which enqueues rows whose room freed), until nothing is pending.

    Returns the statuses seen while rows waited.
    """
    seen, deadline = [], time.monotonic() + timeout
    while time.monotonic() < deadline:
        event_source.run_until_empty(timeout=60)
        statuses = [control.status(pg_conn, c) for c in campaign_ids]
        if not any(s["pending"] for s in statuses):
            return seen
        seen += [s for s in statuses if s["waiting"]]
        invoke_reset_stuck()
        time.sleep(0.25)
    raise TimeoutError("rows still pending")


def test_limit_of_1000_with_2500_recipients_never_exceeds_the_window_and_the_rest_wait(
    window, graph, pg_conn, local_aws, sender_handler, contacts_csv, capsys
):
    # Given a portfolio limit of 1,000 users per window (set by the operator; Meta enforces the same)
    assert main(["limit", "set", NUMBER, "1000"]) == 0
    assert capsys.readouterr().out.startswith(f"messaging limit of {NUMBER} (portfolio {NUMBER}): 1,000 users per")
    graph.set_messaging_limit(1000, window_seconds=window)
    csv = contacts_csv(["phone", "param1"], *([phone(i), f"n{i}"] for i in range(2500)))

    # When a campaign of 2,500 is created
    assert main(["campaign", "create", "--name", "big", "--template", "order_update", "--language", "en_US",
                 "--phone-number-id", NUMBER, "--contacts", str(csv), "--json"]) == 0
    created = json.loads(capsys.readouterr().out)

    # Then it says how many fit now and when the rest will; only those are enqueued
    limit = created["messaging_limit"]
    assert (created["enqueued"], limit["fits_now"], limit["waiting"], limit["used"], limit["limit"]) == (
        1000, 1000, 1500, 0, 1000)
    assert limit["message"].startswith("1,000 of 2,500 recipients fit in the messaging limit now (0 of 1,000 used")
    assert "the other 1,500 wait for room: from about" in limit["message"]
    admitted = {r[0] for r in pg_conn.execute(
        "SELECT phone_number FROM send_queue WHERE campaign_id = %s AND wait_until IS NULL", (created["campaign_id"],))}
    assert len(admitted) == 1000

    # When everything is sent (four sender environments), the schedule releasing the waiting rows as room frees
    event_source = SqsEventSource(local_aws.send_queue_url, sender_handler, concurrency=4, function_timeout=30)
    seen = _send_until_done(event_source, pg_conn, [created["campaign_id"]])

    # Then no window ever held more than 1,000 users, Meta delivered everything (nothing past its limit), and
    # every recipient got the message exactly once
    assert graph.max_unique_in_window(window) <= 1000
    # The limit was used, not just respected: the 1,000 admitted went first, none of them held back (no timing)
    assert set(graph.accepted_to[:1000]) == admitted
    assert graph.over_limit == {}
    assert graph.accepted == {phone(i): 1 for i in range(2500)}
    assert control.status(pg_conn, created["campaign_id"])["sent"] == 2500

    # And while rows waited, status explained it
    explained = [s["messaging_limit"]["message"] for s in seen]
    assert explained, "no status was read while rows waited"
    assert re.fullmatch(
        r"waiting for the messaging limit: [\d,]+ of 1,000 used, next room at \S+ \([\d,]+ rows of this campaign wait\)",
        explained[0],
    ), explained[0]
    assert seen[0]["waiting"][0]["reason"] == "messaging limit"


def test_numbers_of_one_portfolio_share_the_limit_and_a_user_in_the_window_uses_no_room(
    window, graph, pg_conn, aws, event_source
):
    # Given two numbers of one portfolio with a limit of 10, and two campaigns of 15 sharing 5 users
    for number in ("111", "222"):
        assert main(["limit", "set", number, "10", "--portfolio", "acme"]) == 0
    graph.set_messaging_limit(10, window_seconds=window)
    ids = []
    for number, first in (("111", 0), ("222", 10)):
        new = NewCampaign("shared", "order_update", "en_US", number, id=str(uuid.uuid4()))
        contacts = ContactList(contacts=[Contact(phone(i), (f"n{i}",)) for i in range(first, first + 15)])
        ids.append(create_campaign(pg_conn, new, contacts, aws.send_queue_url).campaign_id)

    # When both are sent to the end
    _send_until_done(event_source, pg_conn, ids)

    # Then the window never held more than 10 users across both numbers, and every row was sent once
    assert graph.max_unique_in_window(window) <= 10
    assert graph.over_limit == {}
    assert graph.accepted == {phone(i): 2 if 10 <= i < 15 else 1 for i in range(25)}


def test_unknown_limit_holds_nothing_back_and_status_says_so(graph, pg_conn, aws, event_source, make_campaign, capsys):
    campaign_id = make_campaign(*(phone(i) for i in range(5)))
    event_source.run_until_empty(timeout=60)

    status = control.status(pg_conn, campaign_id)
    assert status["sent"] == 5
    assert status["messaging_limit"] == {
        "known": False,
        "message": "messaging limit unknown (not configured and not readable from the Graph API): campaigns are not "
                   "held back",
    }
    assert main(["campaign", "status", campaign_id]) == 0
    assert "messaging limit unknown" in capsys.readouterr().out


def test_limit_read_from_the_graph_api_and_operator_settings_win(graph, pg_conn, monkeypatch, capsys):
    from sendonce import messaging_limit
    from sendonce.local.fake_graph import WABA_ID

    monkeypatch.setenv("WHATSAPP_BUSINESS_ACCOUNT_ID", WABA_ID)
    get_settings.cache_clear()

    # Unreadable (the field refused): unknown, and said so
    graph.set_messaging_limit(1000)  # no Meta tier for 1,000: the field is refused
    assert "messaging limit not read" in messaging_limit.refresh_from_graph(pg_conn, NUMBER)
    assert messaging_limit.usage(pg_conn, NUMBER)["known"] is False

    # Readable: Meta's tier, for the WABA's portfolio
    graph.set_messaging_limit(250)
    assert messaging_limit.refresh_from_graph(pg_conn, NUMBER) is None
    usage = messaging_limit.usage(pg_conn, NUMBER)
    assert (usage["limit"], usage["tier"], usage["source"], usage["portfolio_id"]) == (250, "TIER_250", "graph", WABA_ID)

    # An operator's setting is not overwritten by the next read; "unknown" forgets it
    assert main(["limit", "set", NUMBER, "TIER_2K"]) == 0
    graph.set_messaging_limit(100_000)
    assert messaging_limit.refresh_from_graph(pg_conn, NUMBER) is None
    assert messaging_limit.usage(pg_conn, NUMBER)["limit"] == 2000
    assert main(["limit", "set", NUMBER, "lots"]) == 2
    assert "--limit must be a number of users" in capsys.readouterr().err
    assert main(["limit", "set", NUMBER, "unknown"]) == 0
    assert messaging_limit.usage(pg_conn, NUMBER)["known"] is False


def test_concurrent_claims_never_both_take_the_last_room(graph, pg_conn, database_url):
    # Given a limit of one user, and two rows to two users, claimed at the same moment by two senders, many times
    import threading

    import psycopg

    from sendonce import messaging_limit
    from sendonce.models import QueueMessage
    from sendonce.repository.campaigns import insert_campaign
    from sendonce.repository.sending import claim_rows

    messaging_limit.set_limit(pg_conn, NUMBER, "1")
    campaign_id = str(uuid.uuid4())
    insert_campaign(pg_conn, {"id": campaign_id, "name": "race", "template_name": "order_update",
                              "language_code": "en_US", "phone_number_id": NUMBER, "total_recipients": 2},
                    [(phone(1), ("a",)), (phone(2), ("b",))])
    ids = [i for (i,) in pg_conn.execute("SELECT id FROM send_queue ORDER BY id")]
    conns = [psycopg.connect(database_url, autocommit=True) for _ in ids]
    try:
        for _ in range(25):
            barrier, found = threading.Barrier(2), {}

            def claim(row_id: int, conn: psycopg.Connection) -> None:
                barrier.wait()
                found[row_id] = claim_rows(conn, [QueueMessage(row_id, campaign_id, "race")], uuid.uuid4(), 80, 10,
                                           60.0)[row_id]

            threads = [threading.Thread(target=claim, args=pair) for pair in zip(ids, conns)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()

            # Then exactly one was claimed, the other waits for the room
            assert sorted((c.row is not None, c.waits_now) for c in found.values()) == [(False, True), (True, False)]
            pg_conn.execute("UPDATE send_queue SET status = 'ready', claim_token = NULL, wait_until = NULL, "
                            "wait_reason = NULL")
            pg_conn.execute("UPDATE rate_limits SET next_slot_at = now()")
    finally:
        for conn in conns:
            conn.close()
