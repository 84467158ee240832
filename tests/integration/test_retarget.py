"""Retargeting: a new campaign from another's results, without a CSV (`--from-campaign ID --audience A`)."""

from __future__ import annotations

import json

import pytest

from sendonce.cli import main
from sendonce.local.lambda_runtime import LocalContext, load_handler

from tests.helpers import load_event, phone, queue_rows

NUMBER = "106540352242922"


def _create(*extra: str) -> list[str]:
    return ["campaign", "create", "--name", "again", "--template", "order_update", "--language", "en_US",
            "--phone-number-id", NUMBER, *extra]


@pytest.mark.parametrize(("audience", "expected", "suppressed"), [
    ("not-delivered", [1, 4, 5], 1),
    ("not-read", [3, 4, 5], 0),
    ("failed", [1], 1),
    ("read", [2], 0),
])
def test_retargeted_campaign_sends_to_its_audience_once_with_their_parameters(
    campaign_with_results, graph, pg_conn, event_source, capsys, audience, expected, suppressed
):
    # When a campaign is created from the audience of the first
    assert main(_create("--from-campaign", campaign_with_results, "--audience", audience, "--json")) == 0
    created = json.loads(capsys.readouterr().out)
    event_source.run_until_empty(timeout=60)

    # Then exactly that audience got it, once, with the parameters the first campaign sent them; the opted-out
    # number is in the new campaign's audience but cancelled, as every create does with suppressed numbers
    assert (created["recipients"], created["enqueued"]) == (len(expected) + suppressed, len(expected))
    cancelled = queue_rows(pg_conn, created["campaign_id"]).get(phone(6))
    assert (cancelled["status"] if cancelled else None) == ("cancelled" if suppressed else None)
    assert graph.accepted == {phone(i): 1 for i in expected}
    sent_params = {r["to"]: r["payload"]["template"]["components"][0]["parameters"][0]["text"] for r in graph.requests}
    assert sent_params == {phone(i): f"name {phone(i)[-4:]}" for i in expected}


def test_retargeting_refuses_what_makes_no_sense(campaign_with_results, pg_conn, capsys, contacts_csv):
    assert main(_create("--from-campaign", campaign_with_results)) == 2
    assert "--from-campaign needs --audience" in capsys.readouterr().err
    csv = contacts_csv(["phone"], [phone(9)])
    assert main(_create("--contacts", str(csv), "--audience", "read")) == 2
    assert "--audience goes with --from-campaign" in capsys.readouterr().err
    assert main(_create("--from-campaign", "4d46271f-f3b4-4f5b-a2c7-6dbad447a845", "--audience", "read")) == 2
    assert "no campaign 4d46271f-f3b4-4f5b-a2c7-6dbad447a845 (the audience's campaign)" in capsys.readouterr().err
    # An empty audience is refused, nothing created
    pg_conn.execute("UPDATE send_queue SET delivery_status = 'read' WHERE campaign_id = %s", (campaign_with_results,))
    assert main(_create("--from-campaign", campaign_with_results, "--audience", "not-read")) == 2
    assert "has no not-read rows: nothing to send" in capsys.readouterr().err
    assert pg_conn.execute("SELECT count(*) FROM campaigns").fetchone()[0] == 1


def _api_create(body: dict) -> tuple[int, dict]:
    event = load_event("campaigns_api_create.json")
    event["body"] = json.dumps({"name": "again", "template": "order_update", "language": "en_US",
                                "phone_number_id": NUMBER, **body})
    response = load_handler("campaigns_api")(event, LocalContext("campaigns_api"))
    return response["statusCode"], json.loads(response["body"])


def test_api_retargets_the_same_audience_as_the_cli(campaign_with_results, pg_conn, aws):
    # The not-read audience through POST /campaigns: sent but not read, with their parameters
    code, created = _api_create({"from_campaign": campaign_with_results, "audience": "not-read"})
    assert (code, created["recipients"], created["enqueued"]) == (201, 3, 3)
    rows = queue_rows(pg_conn, created["campaign_id"])
    assert {n: r["params"] for n, r in rows.items()} == {phone(i): [f"name {phone(i)[-4:]}"] for i in (3, 4, 5)}

    # Refused with 400, nothing created: an unknown audience or campaign, or two sources of contacts
    before = pg_conn.execute("SELECT count(*) FROM campaigns").fetchone()[0]
    assert _api_create({"from_campaign": campaign_with_results, "audience": "everyone"})[0] == 400
    code, answer = _api_create({"from_campaign": "4d46271f-f3b4-4f5b-a2c7-6dbad447a845", "audience": "read"})
    assert (code, answer["error"]["message"]) == (
        400, "no campaign 4d46271f-f3b4-4f5b-a2c7-6dbad447a845 (the audience's campaign)")
    code, answer = _api_create({"from_campaign": campaign_with_results, "audience": "read", "contacts": [phone(9)]})
    assert code == 400 and "exactly one of contacts" in answer["error"]["message"]
    assert pg_conn.execute("SELECT count(*) FROM campaigns").fetchone()[0] == before
