"""Template preflight: a campaign whose template cannot send it is refused before anything is written."""

from __future__ import annotations

import json
import time

import pytest
from sendonce.cli import main
from sendonce.config import get_settings
from sendonce.local.event_source import queue_depth
from sendonce.local.fake_graph import WABA_ID
from sendonce.local.lambda_runtime import LocalContext, load_handler

from tests.helpers import load_event, phone, template_status

NUMBER = "106540352242922"


@pytest.fixture
def waba(graph, monkeypatch) -> str:
    """The templates' business account, as the preflight reads it."""
    monkeypatch.setenv("WHATSAPP_BUSINESS_ACCOUNT_ID", WABA_ID)
    get_settings.cache_clear()
    return WABA_ID


def _create(csv, *extra: str, template: str = "diwali_offer", language: str = "en_US") -> list[str]:
    return ["campaign", "create", "--name", "Diwali", "--template", template, "--language", language,
            "--phone-number-id", NUMBER, "--contacts", str(csv), *extra]


def _written(pg_conn, aws) -> tuple[int, int, int]:
    campaigns, rows = pg_conn.execute(
        "SELECT (SELECT count(*) FROM campaigns), (SELECT count(*) FROM send_queue)"
    ).fetchone()
    return campaigns, rows, queue_depth(aws.send_queue_url)


def _error(capsys) -> str:
    out, err = capsys.readouterr()
    assert out == ""
    return err.strip()


def test_two_params_for_a_one_param_template_refused_before_anything_is_written(waba, graph, pg_conn, aws,
                                                                               contacts_csv, capsys):
    # Given an approved template whose body takes one parameter, and contacts that give two
    graph.add_template("diwali_offer", "en_US", body="Hi {{1}}, 20% off today")
    csv = contacts_csv(["phone", "param1", "param2"], [phone(1), "Asha", "x"], [phone(2), "Sam", "y"])

    # When the campaign is created, and checked with --dry-run
    code = main(_create(csv))
    error = _error(capsys)
    dry = main(_create(csv, "--dry-run"))
    dry_error = _error(capsys)

    # Then it is refused in one line that says why, and nothing was written, enqueued or sent
    assert code == dry == 2
    assert error == dry_error == (
        "sendonce: error: template diwali_offer (en_US) takes 1 body parameter, the contacts give 2 (param1..param2)"
    )
    assert _written(pg_conn, aws) == (0, 0, 0)
    assert graph.accepted == {}


@pytest.mark.parametrize("status", ["PENDING", "REJECTED", "PAUSED", "DISABLED"])
def test_unapproved_template_refused_before_anything_is_written(waba, graph, pg_conn, aws, contacts_csv, capsys,
                                                                status):
    graph.add_template("diwali_offer", "en_US", body="Hi {{1}}", status=status)
    csv = contacts_csv(["phone", "param1"], [phone(1), "Asha"])

    assert main(_create(csv)) == 2
    assert _error(capsys) == (
        f"sendonce: error: template diwali_offer (en_US) is {status}, not APPROVED: Meta refuses to send it"
    )
    assert _written(pg_conn, aws) == (0, 0, 0)


def test_template_missing_in_that_language_names_the_languages_it_has(waba, graph, pg_conn, aws, contacts_csv, capsys):
    graph.add_template("diwali_offer", "en", body="Hi {{1}}")
    graph.add_template("diwali_offer", "hi", body="Namaste {{1}}")
    graph.add_template("diwali_offer_2", "en_US", body="Hi {{1}}")  # Meta's name filter also matches this one
    csv = contacts_csv(["phone", "param1"], [phone(1), "Asha"])

    assert main(_create(csv)) == 2
    assert _error(capsys) == (
        "sendonce: error: template diwali_offer does not exist in language en_US (it exists in en, hi)"
    )
    assert main(_create(csv, template="no_such_template")) == 2
    assert _error(capsys).endswith(f"(no template has that name in WABA {WABA_ID})")
    assert _written(pg_conn, aws) == (0, 0, 0)


def test_named_parameters_and_header_media_are_checked(waba, graph, pg_conn, aws, contacts_csv, capsys):
    graph.add_template("named_offer", "en_US", body="Hi {{first_name}}", named=True)
    graph.add_template("image_offer", "en_US", body="Hi {{1}}", header="IMAGE")
    csv = contacts_csv(["phone", "param1"], [phone(1), "Asha"])

    assert main(_create(csv, template="named_offer")) == 2
    assert "uses named parameters ({{first_name}})" in _error(capsys)
    assert main(_create(csv, template="image_offer")) == 2
    assert "has an IMAGE header: give its media (--header-media image:URL" in _error(capsys)
    assert main(_create(csv, "--header-media", "gif:http://example.com/x.gif", template="image_offer")) == 2
    assert "--header-media must be image:, video: or document: and an https:// URL" in _error(capsys)
    assert _written(pg_conn, aws) == (0, 0, 0)

    # With its media the campaign is created, and the send carries the header
    assert main(_create(csv, "--header-media", "image:https://example.com/diwali.png", "--json",
                        template="image_offer")) == 0
    created = json.loads(capsys.readouterr().out)
    assert created["template_check"]["outcome"] == "passed"
    assert _written(pg_conn, aws) == (1, 1, 1)


def test_unreachable_graph_refuses_unless_allowed_and_says_so(waba, graph, pg_conn, aws, contacts_csv, capsys):
    graph.add_template("diwali_offer", "en_US", body="Hi {{1}}")
    csv = contacts_csv(["phone", "param1"], [phone(1), "Asha"])

    # When the Graph API drops the connection, or answers 503
    graph.plan_get("drop", "http:503")
    assert main(_create(csv)) == 1
    assert "pass --allow-unchecked-template" in _error(capsys)
    assert main(_create(csv)) == 1
    assert "HTTP 503" in _error(capsys)
    assert _written(pg_conn, aws) == (0, 0, 0)

    # With the flag the campaign is created, and the output says the template was not checked
    graph.plan_get("drop")
    assert main(_create(csv, "--allow-unchecked-template", "--json")) == 0
    created = json.loads(capsys.readouterr().out)
    assert created["template_check"]["outcome"] == "unchecked"
    assert "the Graph API is unreachable" in created["template_check"]["message"]
    assert _written(pg_conn, aws) == (1, 1, 1)


def test_without_waba_the_check_is_skipped_and_said_so(graph, pg_conn, aws, contacts_csv, capsys):
    csv = contacts_csv(["phone", "param1", "param2"], [phone(1), "Asha", "x"])

    assert main(_create(csv)) == 0
    assert "template not checked: WHATSAPP_BUSINESS_ACCOUNT_ID is not set" in capsys.readouterr().out
    assert graph.reads == []


def test_template_read_once_then_cached_and_kept_current_by_the_webhook(waba, graph, pg_conn, aws, contacts_csv,
                                                                      capsys, monkeypatch):
    graph.add_template("order_update", "en_US", body="Hello {{1}}")
    csv = contacts_csv(["phone", "param1"], [phone(1), "Asha"])
    monkeypatch.setenv("WHATSAPP_APP_SECRET", "example-app-secret")

    # Two campaigns: the template is read once
    assert main(_create(csv, template="order_update")) == 0
    assert main(_create(csv, template="order_update")) == 0
    capsys.readouterr()
    assert [path for path in graph.reads if path.endswith("/message_templates")] == [f"/v26.0/{WABA_ID}/message_templates"]

    # When Meta pauses it, the next campaign is refused from what the webhook said, without another read
    template_status("PAUSED", title="FIRST_PAUSE")
    assert main(_create(csv, template="order_update")) == 2
    assert "is PAUSED: FIRST_PAUSE" in _error(capsys)
    assert len([path for path in graph.reads if path.endswith("/message_templates")]) == 1


def test_api_refuses_a_mismatched_template_with_400_and_writes_nothing(waba, graph, pg_conn, aws):
    graph.add_template("diwali_offer", "en_US", body="Hi {{1}}")
    event = load_event("campaigns_api_create.json")
    body = {"name": "Diwali", "template": "diwali_offer", "language": "en_US", "phone_number_id": NUMBER,
            "contacts": [{"phone": phone(1), "params": ["Asha", "x"]}]}
    event["body"] = json.dumps(body)

    response = load_handler("campaigns_api")(event, LocalContext("campaigns_api"))

    assert response["statusCode"] == 400
    assert json.loads(response["body"])["error"] == {
        "code": "bad_request",
        "message": "template diwali_offer (en_US) takes 1 body parameter, the contacts give 2 (param1..param2)",
    }
    assert _written(pg_conn, aws) == (0, 0, 0)


def test_api_checks_the_template_of_an_s3_list_before_starting_the_job(waba, graph, pg_conn, aws, contacts_bucket,
                                                                      lambda_service):
    # Given a contacts file in the stack's bucket whose header gives two parameters, for a one-parameter template
    import boto3

    graph.add_template("diwali_offer", "en_US", body="Hi {{1}}")
    boto3.client("s3").put_object(Bucket=contacts_bucket, Key="two.csv",
                                  Body=f"phone,param1,param2\n{phone(1)},Asha,x\n".encode())
    event = load_event("campaigns_api_create.json")
    event["body"] = json.dumps({"name": "Diwali", "template": "diwali_offer", "language": "en_US",
                                "phone_number_id": NUMBER, "contacts_s3": {"bucket": contacts_bucket, "key": "two.csv"}})

    # When it is created through the API
    response = load_handler("campaigns_api")(event, LocalContext("campaigns_api"))

    # Then the answer is the refusal (not a 202 for a job that would fail unseen), and nothing was started
    assert response["statusCode"] == 400
    assert "takes 1 body parameter, the contacts give 2" in json.loads(response["body"])["error"]["message"]
    time.sleep(1)  # (a job, had one started, would have written the campaign by now)
    assert _written(pg_conn, aws) == (0, 0, 0)
