"""Per-contact results: `campaign export` writes every row as CSV, and the file agrees with the counters."""

from __future__ import annotations

import csv
import io
import json
from collections import Counter

import boto3
import pytest
from sendonce import api, control, s3
from sendonce.cli import main
from sendonce.local.lambda_runtime import LocalContext, load_handler

from tests.helpers import load_event, phone, queue_rows


def test_export_has_every_row_and_agrees_with_the_counters(campaign_with_results, pg_conn, tmp_path, capsys):
    # Given a campaign with sent, failed, delivered, read, a delivery failure and a cancelled row
    campaign_id = campaign_with_results
    rows = queue_rows(pg_conn, campaign_id)
    pg_conn.execute("INSERT INTO send_queue (campaign_id, phone_number, params, status, last_error) "
                    "VALUES (%s, %s, '{x}', 'cancelled', 'campaign cancelled')", (campaign_id, phone(7)))

    # When it is exported to a file
    target = tmp_path / "results.csv"
    assert main(["campaign", "export", campaign_id, "--output", str(target)]) == 0
    assert "7 rows written to" in capsys.readouterr().err
    exported = list(csv.DictReader(target.open(encoding="utf-8")))

    # Then every row is there once, with its results, and counted by status it is the counters
    assert list(exported[0]) == ["phone", "param1", "status", "wamid", "sent_at", "delivery_status", "delivery_at",
                                 "error_code", "error_title", "error", "pricing_category", "billable", "cost"]
    assert sorted(r["phone"] for r in exported) == sorted(f"+{phone(i)}" for i in range(1, 8))
    by_phone = {r["phone"]: r for r in exported}
    assert (by_phone[f"+{phone(1)}"]["status"], by_phone[f"+{phone(1)}"]["error_code"],
            by_phone[f"+{phone(1)}"]["error_title"]) == ("failed", "131026", "Message undeliverable")
    assert by_phone[f"+{phone(2)}"]["wamid"] == rows[phone(2)]["whatsapp_message_id"]
    assert by_phone[f"+{phone(5)}"]["delivery_status"] == "failed"
    assert by_phone[f"+{phone(5)}"]["error_title"] == "Message undeliverable"
    assert by_phone[f"+{phone(2)}"]["param1"] == f"name {phone(2)[-4:]}"
    status = control.status(pg_conn, campaign_id)
    statuses = Counter(r["status"] for r in exported)
    deliveries = Counter(r["delivery_status"] for r in exported)
    assert (statuses["sent"], statuses["failed"], statuses["cancelled"], len(exported)) == (
        status["sent"], status["failed"], status["cancelled"], status["recipients"])
    assert (deliveries["read"], deliveries["delivered"] + deliveries["read"]) == (status["read"], status["delivered"])

    # And to standard output the same rows; with --json a summary of the file
    assert main(["campaign", "export", campaign_id]) == 0
    assert list(csv.DictReader(io.StringIO(capsys.readouterr().out))) == exported
    assert main(["campaign", "export", campaign_id, "--output", str(target), "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == {"campaign_id": campaign_id, "rows": 7, "output": str(target)}


def test_export_of_an_unknown_campaign_writes_no_file(pg_conn, tmp_path, capsys):
    target = tmp_path / "results.csv"
    assert main(["campaign", "export", "4d46271f-f3b4-4f5b-a2c7-6dbad447a845", "--output", str(target)]) == 2
    assert "no campaign" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


# -- the API's export: to the contacts bucket, by an asynchronous job ---------------------------------------


def _post_export(campaign_id: str) -> tuple[int, dict]:
    event = load_event("campaigns_api_export.json")
    path = f"/campaigns/{campaign_id}/export"
    event.update(rawPath=path, pathParameters={"id": campaign_id})
    event["requestContext"]["http"]["path"] = path
    response = load_handler("campaigns_api")(event, LocalContext("campaigns_api"))
    return response["statusCode"], json.loads(response["body"])


def test_api_export_writes_the_csv_to_the_contacts_bucket(make_campaign, graph, pg_conn, event_source,
                                                          contacts_bucket, lambda_service, capsys):
    # Given a campaign that was sent, one row failed
    graph.plan(phone(2), "error:131026")
    campaign_id = make_campaign(*(phone(i) for i in range(1, 5)))
    event_source.run_until_empty(timeout=60)

    # When the API is asked for its export (as `sam local invoke -e events/campaigns_api_export.json`)
    code, answer = _post_export(campaign_id)
    lambda_service.wait()

    # Then 202 with the key, under the campaign's folder; the job wrote there the same CSV `campaign export` prints
    assert (code, answer["status"], answer["export_s3"]["bucket"]) == (202, "exporting", contacts_bucket)
    assert answer["export_s3"]["key"].startswith(f"exports/{campaign_id}/") and lambda_service.errors == []
    body = boto3.client("s3").get_object(Bucket=contacts_bucket, Key=answer["export_s3"]["key"])["Body"].read()
    assert main(["campaign", "export", campaign_id]) == 0
    assert body.decode() == capsys.readouterr().out
    assert Counter(r["status"] for r in csv.DictReader(io.StringIO(body.decode()))) == {"sent": 3, "failed": 1}


def test_api_export_of_an_unknown_campaign_is_404_and_starts_nothing(pg_conn, contacts_bucket, lambda_service):
    code, answer = _post_export("4d46271f-f3b4-4f5b-a2c7-6dbad447a845")
    lambda_service.wait()
    assert code == 404 and answer["error"]["code"] == "not_found"
    assert lambda_service.invocations == 0
    assert "Contents" not in boto3.client("s3").list_objects_v2(Bucket=contacts_bucket)


def test_export_job_refuses_a_key_outside_the_campaigns_folder(make_campaign, pg_conn, contacts_bucket):
    # Anyone allowed to invoke the function can send a job: it may only write the campaign's own exports
    campaign_id = make_campaign(phone(1))
    job = {api.JOB_KEY: api.EXPORT_JOB, "campaign_id": campaign_id,
           "export_s3": {"bucket": contacts_bucket, "key": "contacts/big.csv"}}
    with pytest.raises(api.RequestError, match="must be under exports/"):
        load_handler("campaigns_api")(job, LocalContext("campaigns_api"))
    with pytest.raises(api.RequestError, match="must be the stack's contacts bucket"):
        load_handler("campaigns_api")({**job, "export_s3": {"bucket": "other", "key": f"exports/{campaign_id}/x.csv"}},
                                      LocalContext("campaigns_api"))
    assert "Contents" not in boto3.client("s3").list_objects_v2(Bucket=contacts_bucket)


def test_s3_writer_uploads_in_parts_and_leaves_nothing_when_it_fails(contacts_bucket):
    client = boto3.client("s3")
    line = "x" * 99 + "\n"
    lines = (s3.PART_BYTES * 3 // 2) // len(line)  # a part and a half

    # A large text becomes one object, written in parts (memory holds one part)
    with s3.text_writer(contacts_bucket, "exports/big.csv") as out:
        for _ in range(lines):
            out.write(line)
        assert len(out.parts) == 1
    assert client.head_object(Bucket=contacts_bucket, Key="exports/big.csv")["ContentLength"] == lines * len(line)

    # A failure half-way leaves no object, and no parts behind
    with pytest.raises(RuntimeError), s3.text_writer(contacts_bucket, "exports/broken.csv") as out:
        for _ in range(lines):
            out.write(line)
        raise RuntimeError("the database went away")
    assert [o["Key"] for o in client.list_objects_v2(Bucket=contacts_bucket)["Contents"]] == ["exports/big.csv"]
    assert client.list_multipart_uploads(Bucket=contacts_bucket).get("Uploads", []) == []
