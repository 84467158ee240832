"""Why messages failed: status breaks failures down by code with Meta's title; `campaign failures` lists them."""

from __future__ import annotations

import json

from sendonce import control
from sendonce.cli import main
from sendonce.local.lambda_runtime import LocalContext, load_handler
from tests.helpers import load_event, phone, post_statuses, queue_rows, status_update


def _api(path: str, query: dict | None = None) -> tuple[int, dict]:
    event = load_event("campaigns_api_get.json")
    event.update(rawPath=path, routeKey="GET /campaigns/{id}/failures", queryStringParameters=query,
                 rawQueryString="&".join(f"{k}={v}" for k, v in (query or {}).items()))
    event["requestContext"]["http"].update(method="GET", path=path)
    response = load_handler("campaigns_api")(event, LocalContext("campaigns_api"))
    return response["statusCode"], json.loads(response["body"])


def test_failures_by_code_with_titles_add_up_to_the_counters_and_list_row_by_row(
    make_campaign, graph, pg_conn, event_source, monkeypatch, capsys
):
    # Given two undeliverable numbers and an opted-out one at the send, and a sent message Meta then reported
    # failed (131026) through the status webhook
    monkeypatch.setenv("WHATSAPP_APP_SECRET", "example-app-secret")
    graph.plan(phone(1), "error:131026")
    graph.plan(phone(2), "error:131026")
    graph.plan(phone(3), "error:131050")
    campaign_id = make_campaign(*(phone(i) for i in range(1, 7)))
    event_source.run_until_empty(timeout=60)
    sent = queue_rows(pg_conn, campaign_id)[phone(4)]
    assert post_statuses([status_update(sent["whatsapp_message_id"], "failed", 10, code=131026, to=phone(4))])[
        "statusCode"] == 200

    # When status is read
    status = control.status(pg_conn, campaign_id)

    # Then failures are broken down by stage and code with Meta's titles, and the send ones add up to `failed`
    assert status["failures"] == [
        {"stage": "send", "code": 131026, "title": "Message undeliverable", "rows": 2},
        {"stage": "send", "code": 131050, "title": "User has stopped marketing messages", "rows": 1},
        {"stage": "delivery", "code": 131026, "title": "Message undeliverable", "rows": 1},
    ]
    assert sum(f["rows"] for f in status["failures"] if f["stage"] == "send") == status["failed"] == 3
    assert main(["campaign", "status", campaign_id]) == 0
    assert "send failures: 2 x 131026 Message undeliverable" in capsys.readouterr().out

    # And `campaign failures` lists the rows, numbers masked, a page at a time
    assert main(["campaign", "failures", campaign_id, "--limit", "2", "--json"]) == 0
    first = json.loads(capsys.readouterr().out)
    assert [(r["to"], r["stage"], r["code"]) for r in first["rows"]] == [
        ("********0001", "send", 131026), ("********0002", "send", 131026)]
    assert main(["campaign", "failures", campaign_id, "--after", str(first["next_after"]), "--json"]) == 0
    rest = json.loads(capsys.readouterr().out)
    assert [(r["to"], r["stage"], r["code"], r["title"]) for r in rest["rows"]] == [
        ("********0003", "send", 131050, "User has stopped marketing messages"),
        ("********0004", "delivery", 131026, "Message undeliverable")]
    assert rest["next_after"] is None
    assert main(["campaign", "failures", campaign_id]) == 0
    assert phone(1) not in capsys.readouterr().out

    # And the API answers the same pages
    assert _api(f"/campaigns/{campaign_id}/failures", {"limit": "2"}) == (200, first)
    code, error = _api(f"/campaigns/{campaign_id}/failures", {"limit": "0"})
    assert (code, error["error"]["code"]) == (400, "bad_request")
    assert _api(f"/campaigns/{campaign_id}/failures", {"limit": "x"})[0] == 400
