"""Meta's template status webhooks pause the campaigns that use a template, and its approval lets them finish."""

from __future__ import annotations

import threading
import time
import uuid

import pytest

from sendonce import control
from sendonce.campaigns import NewCampaign, create_campaign
from sendonce.cli import main
from sendonce.config import get_settings
from sendonce.contacts import Contact, ContactList
from sendonce.local.fake_graph import WABA_ID
from tests.helpers import (
    WEBHOOK_SECRET,
    invoke_reset_stuck,
    invoke_webhook,
    load_event,
    phone,
    post_change,
    queue_rows,
    template_status,
)

NUMBER = "106540352242922"


@pytest.fixture
def meta(graph, pg_conn, aws, monkeypatch):
    """Templates checked against the fake Graph, webhooks signed with the test secret."""
    monkeypatch.setenv("WHATSAPP_BUSINESS_ACCOUNT_ID", WABA_ID)
    monkeypatch.setenv("WHATSAPP_APP_SECRET", WEBHOOK_SECRET)
    get_settings.cache_clear()
    graph.add_template("order_update", "en_US", body="Hello {{1}}")
    graph.add_template("order_update", "pt_BR", body="Olá {{1}}")
    return graph


def _campaign(aws, pg_conn, count: int, auto_resume: bool = False, language: str = "en_US", first: int = 0) -> str:
    new = NewCampaign("test", "order_update", language, NUMBER, id=str(uuid.uuid4()), auto_resume=auto_resume)
    contacts = ContactList(contacts=[Contact(phone(i), (f"name {i}",)) for i in range(first, first + count)])
    return create_campaign(pg_conn, new, contacts, aws.send_queue_url).campaign_id


def _campaign_row(pg_conn, campaign_id: str) -> tuple:
    return pg_conn.execute(
        "SELECT status, paused_by, pause_reason, paused_until - now() FROM campaigns WHERE id = %s", (campaign_id,)
    ).fetchone()



def test_paused_template_pauses_its_running_campaign_within_one_batch_then_approved_and_resume_finish_it(
    meta, pg_conn, aws, event_source, capsys
):
    # Given a running campaign of 40, and Meta pausing its template while the 5th send is being made
    campaign_id = _campaign(aws, pg_conn, 40)
    other_language = _campaign(aws, pg_conn, 3, language="pt_BR", first=100)
    answers: list[dict] = []
    paused_at: list = []
    once = threading.Lock()  # the fake answers sends on several threads

    def pause_at_fifth(to: str) -> None:
        with once:
            if len(meta.requests) >= 4 and not answers:
                answers.append(template_status("PAUSED", title="FIRST_PAUSE"))
                paused_at.append(pg_conn.execute("SELECT clock_timestamp()").fetchone()[0])

    meta.on_request = pause_at_fifth
    event_source.run_until_empty(timeout=60)

    # Then the webhook was answered 200 and the campaign paused, saying why and until when (3 h: a first pause)
    assert answers == [{"statusCode": 200, "headers": {"Content-Type": "text/plain"}, "body": "ok"}]
    status, paused_by, reason, left = _campaign_row(pg_conn, campaign_id)
    assert (status, paused_by) == ("paused", "template")
    assert reason == "template order_update (en_US) PAUSED by Meta: FIRST_PAUSE; Your WhatsApp message template first_pause."
    assert 2.9 * 3600 < left.total_seconds() <= 3 * 3600
    # ... within one batch: no row was claimed after the webhook's answer; only the batches already claimed (two
    # pollers, ten rows each) went on sending
    late = pg_conn.execute("SELECT count(*) FROM send_queue WHERE campaign_id = %s AND claimed_at > %s",
                           (campaign_id, paused_at[0])).fetchone()[0]
    assert late == 0
    sent_here = sum(meta.accepted[phone(i)] for i in range(40))
    assert 5 <= sent_here <= 30
    rows = queue_rows(pg_conn, campaign_id)
    assert sum(r["status"] == "ready" for r in rows.values()) == 40 - sent_here
    # ... and the same template in another language was not touched (its 3 rows were sent)
    assert _campaign_row(pg_conn, other_language)[0] == "running"
    assert sum(meta.accepted[phone(i)] for i in range(100, 103)) == 3

    # And resume is refused while the template is paused
    assert main(["campaign", "resume", campaign_id]) == 2
    assert "its template order_update (en_US) is PAUSED, until about" in capsys.readouterr().err

    # When Meta approves it again and the operator resumes
    assert template_status("APPROVED", title="UNPAUSE")["statusCode"] == 200
    assert "approved again at" in _campaign_row(pg_conn, campaign_id)[2]
    assert main(["campaign", "resume", campaign_id]) == 0
    event_source.run_until_empty(timeout=60)

    # Then every recipient got the message exactly once
    assert {phone(i): meta.accepted[phone(i)] for i in range(40)} == {phone(i): 1 for i in range(40)}
    assert control.status(pg_conn, campaign_id)["sent"] == 40
    assert meta.duplicates() == {}


def test_auto_resume_campaign_resumes_by_itself_when_its_template_is_approved_again(meta, pg_conn, aws, event_source):
    # Given an auto-resume campaign paused by its template before anything was sent
    campaign_id = _campaign(aws, pg_conn, 12, auto_resume=True)
    template_status("PAUSED", title="SECOND_PAUSE")
    event_source.run_until_empty(timeout=60)
    status, paused_by, _, left = _campaign_row(pg_conn, campaign_id)
    assert (status, paused_by) == ("paused", "template") and 5.9 * 3600 < left.total_seconds() <= 6 * 3600
    assert meta.accepted == {}
    assert invoke_reset_stuck()["resumed"] == []  # not before the pause is over

    # When the template is approved and the schedule runs
    template_status("APPROVED")
    assert invoke_reset_stuck()["resumed"] == [campaign_id]
    event_source.run_until_empty(timeout=60)

    # Then it finished, each recipient once
    assert meta.accepted == {phone(i): 1 for i in range(12)}
    assert control.status(pg_conn, campaign_id)["status"] == "running"  # until recompute completes it
    assert _campaign_row(pg_conn, campaign_id)[1] is None


def test_the_event_file_pauses_the_campaigns_of_its_template(meta, pg_conn, aws):
    # events/webhook_template_status.json, as `sam local invoke WebhookFunction -e ...` sends it
    campaign_id = _campaign(aws, pg_conn, 2)

    assert invoke_webhook(load_event("webhook_template_status.json"))["statusCode"] == 200

    assert _campaign_row(pg_conn, campaign_id)[:2] == ("paused", "template")


def test_auto_resume_whose_enqueue_fails_is_paused_again_and_retried_by_the_next_run(
    meta, pg_conn, aws, event_source, monkeypatch
):
    # Given an auto-resume campaign paused by its template, approved again, and SQS refusing the enqueue once
    campaign_id = _campaign(aws, pg_conn, 4, auto_resume=True)
    template_status("PAUSED", title="FIRST_PAUSE")
    event_source.run_until_empty(timeout=60)
    template_status("APPROVED")
    monkeypatch.setenv("SEND_QUEUE_URL", aws.send_queue_url + "-gone")
    get_settings.cache_clear()
    from sendonce.sqs import get_sqs_client

    get_sqs_client.cache_clear()

    # When the schedule runs: the resume fails, and the campaign is paused again, due, saying why
    assert invoke_reset_stuck()["resumed"] == []
    status, paused_by, reason, left = _campaign_row(pg_conn, campaign_id)
    assert (status, paused_by) == ("paused", "template") and left.total_seconds() <= 0
    assert reason.startswith("automatic resume failed, tried again at the next run: ")

    # When SQS is back, the next run resumes it, and every recipient gets the message once
    monkeypatch.setenv("SEND_QUEUE_URL", aws.send_queue_url)
    get_settings.cache_clear()
    assert invoke_reset_stuck()["resumed"] == [campaign_id]
    event_source.run_until_empty(timeout=60)
    assert meta.accepted == {phone(i): 1 for i in range(4)}


def test_disabled_template_pauses_for_good(meta, pg_conn, aws, event_source, capsys):
    campaign_id = _campaign(aws, pg_conn, 3, auto_resume=True)
    template_status("DISABLED")
    event_source.run_until_empty(timeout=60)

    assert _campaign_row(pg_conn, campaign_id)[:2] == ("paused", "template")
    assert _campaign_row(pg_conn, campaign_id)[3] is None  # no end: nothing resumes it by itself
    assert invoke_reset_stuck()["resumed"] == []
    assert main(["campaign", "resume", campaign_id]) == 2
    assert "is DISABLED (Meta refuses to send it)" in capsys.readouterr().err
    # --force is the operator's way out (the send then meets Meta's own answer, 132016, which pauses again)
    meta.set_template_status("order_update", "en_US", "DISABLED")
    assert main(["campaign", "resume", campaign_id, "--force"]) == 0
    event_source.run_until_empty(timeout=60)
    assert meta.accepted == {}
    assert _campaign_row(pg_conn, campaign_id)[:2] == ("paused", "template")
    assert "132016" in _campaign_row(pg_conn, campaign_id)[2]


def test_template_events_late_duplicated_replayed_or_malformed_change_nothing_wrongly(meta, pg_conn, aws):
    campaign_id = _campaign(aws, pg_conn, 2)
    now = int(time.time())

    # An APPROVED, then the older PAUSED it followed arriving late: the newer state stands
    template_status("APPROVED", at=now)
    template_status("PAUSED", title="FIRST_PAUSE", at=now - 60)
    assert _campaign_row(pg_conn, campaign_id)[0] == "running"

    # A PAUSED replayed from 8 days ago is kept, not applied
    template_status("PAUSED", title="FIRST_PAUSE", at=now - 8 * 86400)
    assert _campaign_row(pg_conn, campaign_id)[0] == "running"

    # Malformed changes are acknowledged and skipped
    assert post_change("message_template_status_update", {"event": "PAUSED"})["statusCode"] == 200
    assert post_change("message_template_status_update", {"message_template_name": ["x"], "event": 3})["statusCode"] == 200
    assert _campaign_row(pg_conn, campaign_id)[0] == "running"

    # The same PAUSED delivered twice (Meta retries) is kept once and pauses once
    for _ in range(2):
        assert template_status("PAUSED", title="FIRST_PAUSE", at=now + 1)["statusCode"] == 200
    assert _campaign_row(pg_conn, campaign_id)[0] == "paused"
    kept = pg_conn.execute(
        "SELECT count(*), count(DISTINCT digest) FROM meta_events WHERE field = 'message_template_status_update'"
    ).fetchone()
    # APPROVED, the late PAUSED, the replayed PAUSED, two malformed ones, and the PAUSED delivered twice, once
    assert kept == (6, 6)


def test_every_account_event_is_kept_and_capability_updates_change_the_limit(meta, pg_conn, monkeypatch):
    # Given a number whose limit was read from the Graph API (TIER_2K)
    from sendonce import messaging_limit

    meta.set_messaging_limit(2000)
    assert messaging_limit.refresh_from_graph(pg_conn, NUMBER) is None
    assert messaging_limit.usage(pg_conn, NUMBER)["limit"] == 2000

    # When Meta raises the portfolio's limit, and reports quality, category and account changes
    post_change("business_capability_update", {"max_daily_conversations_per_business": "TIER_10K",
                                               "max_phone_numbers_per_waba": 25})
    post_change("message_template_quality_update", {"previous_quality_score": "GREEN", "new_quality_score": "YELLOW",
                                                    "message_template_id": 1, "message_template_name": "order_update",
                                                    "message_template_language": "en-US"})
    post_change("template_category_update", {"message_template_id": 1, "message_template_name": "order_update",
                                             "message_template_language": "en-US", "previous_category": "UTILITY",
                                             "new_category": "MARKETING"})
    post_change("account_update", {"event": "ACCOUNT_VIOLATION", "violation_info": {"violation_type": "ADULT"}})

    # Then the limit is Meta's new one, and every event is kept
    limit = messaging_limit.usage(pg_conn, NUMBER)
    assert (limit["limit"], limit["tier"], limit["source"]) == (10_000, "TIER_10K", "webhook")
    fields = [f for (f,) in pg_conn.execute("SELECT field FROM meta_events ORDER BY id")]
    assert fields == ["business_capability_update", "message_template_quality_update", "template_category_update",
                      "account_update"]
