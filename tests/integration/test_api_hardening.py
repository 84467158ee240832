"""The campaigns HTTP API kept idempotent and bounded (issue 11 item 5): answers, inputs, S3 contact lists.

Every test invokes the real handler (functions/campaigns_api) with an API Gateway event from events/.
"""

from __future__ import annotations

import base64
import json
import logging

import boto3
import pytest
from sendonce import api, s3
from sendonce.local.event_source import queue_depth
from sendonce.local.lambda_runtime import LocalContext, load_handler

from tests.helpers import load_event, phone

FIELDS = {"name": "Diwali", "template": "diwali_offer", "language": "en_US", "phone_number_id": "106540352242922"}
KEY = "6f1c2a4e-8a53-4a8e-9a53-0c1f2b3d4e5f"


def _invoke(event: dict) -> dict:
    return load_handler("campaigns_api")(event, LocalContext("campaigns_api"))


def _post(body: str | dict | None, headers: dict | None = None, path: str = "/campaigns", base64_body: bool = False):
    event = load_event("campaigns_api_create.json")
    text = body if isinstance(body, str) or body is None else json.dumps(body)
    if base64_body:
        event.update(body=base64.b64encode(text.encode("latin-1")).decode(), isBase64Encoded=True)
    else:
        event["body"] = text
    event.update(rawPath=path, routeKey=f"POST {path}")
    event["requestContext"]["http"]["path"] = path
    event["headers"].update(headers or {})
    response = _invoke(event)
    return response["statusCode"], json.loads(response["body"]), response


def _get(path: str) -> tuple[int, dict]:
    event = load_event("campaigns_api_get.json")
    event.update(rawPath=path, routeKey=f"GET {path}")
    event["requestContext"]["http"].update(method="GET", path=path)
    response = _invoke(event)
    return response["statusCode"], json.loads(response["body"])


def _campaigns(pg_conn) -> int:
    return pg_conn.execute("SELECT count(*) FROM campaigns").fetchone()[0]


# 1. Bounded answers


def test_create_with_100k_invalid_numbers_answers_counts_and_a_sample(pg_conn, aws):
    # Given an inline list of one valid number and 100,000 invalid ones (the 9.8 MB answer of the incident)
    body = {**FIELDS, "contacts": [phone(1)] + [f"12{i:05d}" for i in range(100_000)]}

    # When it is created
    code, answer, response = _post(body)

    # Then the answer counts every invalid row, lists the first 20, and stays far below Lambda's 6 MB
    assert code == 201
    assert (answer["recipients"], answer["invalid"], len(answer["invalid_rows"])) == (1, 100_000, 20)
    assert answer["invalid_rows_truncated"] is True
    assert len(response["body"].encode()) <= api.MAX_RESPONSE_BYTES


def test_response_over_the_cap_keeps_scalars_and_status():
    # Given an answer whose body is over the cap (a bug elsewhere that lists too much)
    huge = {"statusCode": 201, "body": json.dumps({"campaign_id": KEY, "recipients": 3, "rows": ["x" * 100] * 20_000})}

    # When it goes through the one place that bounds answers
    bounded = api.bounded_response(huge)

    # Then it is under the cap, keeps its status, the id and counts, and says it was truncated
    assert len(bounded["body"].encode()) <= api.MAX_RESPONSE_BYTES and bounded["statusCode"] == 201
    assert json.loads(bounded["body"]) == {"campaign_id": KEY, "recipients": 3, "truncated": True}


# 2. Idempotent create


@pytest.mark.parametrize("where", ["header", "body"])
def test_create_retried_with_same_key_creates_and_enqueues_once(pg_conn, aws, where):
    # Given a create whose answer was lost, keyed by the Idempotency-Key header or the body's id
    body = {**FIELDS, "contacts": [phone(1), phone(2), "123"]}
    headers = {"Idempotency-Key": KEY} if where == "header" else {}
    if where == "body":
        body["id"] = "urn:uuid:" + KEY

    # When the client sends it again
    first = _post(body, headers)
    second = _post(body, headers)

    # Then one campaign, one set of messages, and the retry answers 200 with the same numbers
    assert first[0] == 201 and second[0] == 200
    assert first[1]["campaign_id"] == second[1]["campaign_id"] == KEY
    assert (second[1]["recipients"], second[1]["invalid"], second[1]["enqueued"]) == (2, 1, 0)
    assert second[1]["replayed"] is True
    assert _campaigns(pg_conn) == 1 and queue_depth(aws.send_queue_url) == 2


def test_create_same_key_other_body_is_409_and_writes_nothing(pg_conn, aws):
    # Given a campaign created with a key
    assert _post({**FIELDS, "contacts": [phone(1)]}, {"Idempotency-Key": KEY})[0] == 201

    # When the key is reused for other recipients
    code, answer, _ = _post({**FIELDS, "contacts": [phone(2)]}, {"Idempotency-Key": KEY})

    # Then 409, and nothing more is created or enqueued
    assert code == 409 and "already exists" in answer["error"]["message"]
    assert _campaigns(pg_conn) == 1 and queue_depth(aws.send_queue_url) == 1


def test_create_key_not_a_uuid_is_400(pg_conn, aws):
    # Given / When a key that is not a UUID
    code, answer, _ = _post({**FIELDS, "contacts": [phone(1)]}, {"Idempotency-Key": "retry-1"})

    # Then 400 and nothing written
    assert code == 400 and "Idempotency-Key" in answer["error"]["message"]
    assert _campaigns(pg_conn) == 0


# 3. Inputs


def test_path_id_in_urn_and_brace_forms_is_canonicalised(pg_conn, aws):
    # Given a campaign
    assert _post({**FIELDS, "contacts": [phone(1)]}, {"Idempotency-Key": KEY})[0] == 201

    # When it is asked for by other spellings of its id
    answers = [_get(f"/campaigns/{form}") for form in (f"urn:uuid:{KEY}", "{" + KEY.upper() + "}")]

    # Then each answers the canonical id
    assert [(code, body["campaign_id"]) for code, body in answers] == [(200, KEY), (200, KEY)]


def test_s3_create_with_urn_id_is_accepted_with_canonical_id(pg_conn, aws, contacts_bucket, lambda_service):
    # Given a contacts file and a body id in the urn form (PostgreSQL refuses that spelling)
    boto3.client("s3").put_object(Bucket=contacts_bucket, Key="c.csv", Body=f"phone\n{phone(1)}\n".encode())
    body = {**FIELDS, "id": f"urn:uuid:{KEY}", "contacts_s3": {"bucket": contacts_bucket, "key": "c.csv"}}

    # When it is posted
    code, answer, _ = _post(body)

    # Then 202 with the canonical id, and the job creates it
    assert (code, answer["campaign_id"]) == (202, KEY)
    lambda_service.wait()
    assert lambda_service.errors == [] and _campaigns(pg_conn) == 1


@pytest.mark.parametrize(
    ("body", "base64_body", "message"),
    [
        (json.dumps({**FIELDS, "name": "a\u0000b", "contacts": ["919741771659"]}), False, "NUL"),
        ('{"name": "\\ud800", "template": "t", "language": "en", "phone_number_id": "1", "contacts": ["1"]}', False,
         "surrogate"),
        (json.dumps({**FIELDS, "contacts": ["919741771659"], "components": [{"x": "\u0000"}]}), False, "NUL"),
        ('{"a": ' + "[" * 30 + "]" * 30 + "}", False, "deeper"),
        ('{"a": ' + "[" * 100_000 + "]" * 100_000 + "}", False, "deeper"),
        ('{"name": "caf\xe9"}', True, "UTF-8"),
    ],
    ids=["nul-in-name", "lone-surrogate", "nul-in-components", "deep", "very-deep", "latin1-bytes"],
)
def test_body_unstorable_or_malformed_is_400(pg_conn, aws, body, base64_body, message):
    # Given / When a body PostgreSQL could not store, or that is not UTF-8 JSON of bounded depth
    code, answer, _ = _post(body, base64_body=base64_body)

    # Then 400 naming the problem, and nothing written
    assert code == 400 and message in answer["error"]["message"], answer
    assert _campaigns(pg_conn) == 0


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("template", "diwali_offer\n"),
        ("language", "en_US\n"),
        ("phone_number_id", "١٠٦٥"),  # Arabic-Indic digits: str.isdigit says yes
    ],
    ids=["template-newline", "language-newline", "phone-id-arabic-digits"],
)
def test_campaign_field_not_matched_whole_is_400(pg_conn, aws, field, value):
    # Given / When a field that only starts like a valid one
    code, answer, _ = _post({**FIELDS, field: value, "contacts": [phone(1)]})

    # Then 400, nothing written
    assert code == 400, answer
    assert _campaigns(pg_conn) == 0


@pytest.mark.parametrize(
    ("param", "reason"),
    [("", "empty"), ("a\nb", "newline"), ("a\tb", "tab"), ("a     b", "spaces")],
    ids=["empty", "newline", "tab", "five-spaces"],
)
def test_param_meta_refuses_is_an_invalid_row(pg_conn, aws, param, reason):
    # Given one good row and one whose parameter Meta would refuse
    contacts = [{"phone": phone(1), "params": ["Asha"]}, {"phone": phone(2), "params": [param]}]

    # When it is created
    code, answer, _ = _post({**FIELDS, "contacts": contacts})

    # Then the bad row is an invalid row with the reason, and only the good one is enqueued
    assert code == 201 and (answer["recipients"], answer["invalid"]) == (1, 1)
    assert reason in answer["invalid_rows"][0]["reason"]
    assert queue_depth(aws.send_queue_url) == 1


# 4. S3 contact lists


def _s3_body(bucket: str, key: str) -> dict:
    return {**FIELDS, "contacts_s3": {"bucket": bucket, "key": key}}


def test_s3_object_over_size_bound_is_400_before_reading(pg_conn, aws, contacts_bucket, lambda_service, monkeypatch):
    # Given an object over the size bound (lowered for the test)
    monkeypatch.setattr(s3, "MAX_OBJECT_BYTES", 1024)
    boto3.client("s3").put_object(Bucket=contacts_bucket, Key="big.csv", Body=b"phone\n" + b"919741771659\n" * 200)

    # When it is posted
    code, answer, _ = _post(_s3_body(contacts_bucket, "big.csv"))

    # Then 400 saying it is too large, and no job started
    assert code == 400 and "MB" in answer["error"]["message"]
    lambda_service.wait()
    assert _campaigns(pg_conn) == 0


def test_s3_object_without_newline_is_400_and_never_echoed(pg_conn, aws, contacts_bucket, lambda_service):
    # Given an object of 2 MB with no newline, whose first bytes are a secret
    secret = "SECRET-TOKEN-abc123"
    boto3.client("s3").put_object(Bucket=contacts_bucket, Key="blob", Body=(secret + "x" * 2_000_000).encode())

    # When it is named as a contact list
    code, answer, _ = _post(_s3_body(contacts_bucket, "blob"))

    # Then 400 about the line length, without any of its content
    assert code == 400 and "line 1 is over" in answer["error"]["message"]
    assert secret not in json.dumps(answer)
    lambda_service.wait()
    assert _campaigns(pg_conn) == 0


@pytest.mark.parametrize(
    ("content", "message"),
    [(b"password,SECRET-hunter2\n1,2\n", "no 'phone' column")],
    ids=["no-phone-column"],
)
def test_s3_bad_header_is_400_without_the_first_line(pg_conn, aws, contacts_bucket, lambda_service, content, message):
    # Given an object whose first line is not a contacts header
    boto3.client("s3").put_object(Bucket=contacts_bucket, Key="other.csv", Body=content)

    # When it is named as a contact list
    code, answer, _ = _post(_s3_body(contacts_bucket, "other.csv"))

    # Then 400 saying what is wrong, never quoting the line
    assert code == 400 and message in answer["error"]["message"], answer
    assert "SECRET" not in json.dumps(answer) and "password" not in json.dumps(answer)


def test_s3_job_keeps_a_bounded_sample_of_invalid_rows(pg_conn, aws, contacts_bucket, monkeypatch):
    # Given a file of one valid number and 1,000 invalid ones
    monkeypatch.setenv("AWS_LAMBDA_FUNCTION_NAME", "sendonce-test-api")
    rows = ["phone", phone(1)] + [f"12{i:05d}" for i in range(1000)]
    boto3.client("s3").put_object(Bucket=contacts_bucket, Key="bad.csv", Body="\n".join(rows).encode())
    job = {api.JOB_KEY: "create_campaign", "campaign": {**_job_campaign(), "id": KEY},
           "contacts_s3": {"bucket": contacts_bucket, "key": "bad.csv"}, "default_country": None}

    # When the asynchronous job runs
    result = _invoke(job)

    # Then it counts all invalid rows and keeps only the first 20
    assert (result["recipients"], result["invalid"], len(result["invalid_rows"])) == (1, 1000, 20)


def _job_campaign() -> dict:
    return {"name": "Diwali", "template_name": "diwali_offer", "language_code": "en_US",
            "phone_number_id": "106540352242922", "components": []}


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"contacts_s3": {"bucket": "someone-elses-bucket", "key": "c.csv"}}, "contacts bucket"),
        ({"contacts_s3": {"bucket": "sendonce-contacts-123456789012", "key": "k" * 2000}}, "1024 bytes"),
        ({"campaign": {**_job_campaign(), "id": KEY, "template_name": "Bad Name"}}, "--template"),
        ({"campaign": {**_job_campaign(), "id": "not-a-uuid"}}, "UUID"),
    ],
    ids=["foreign-bucket", "long-key", "bad-template", "bad-id"],
)
def test_s3_job_invalid_payload_logs_and_raises(pg_conn, aws, contacts_bucket, caplog, change, message):
    # Given a job payload that the API would never have started
    boto3.client("s3").put_object(Bucket=contacts_bucket, Key="c.csv", Body=f"phone\n{phone(1)}\n".encode())
    job = {api.JOB_KEY: "create_campaign", "campaign": {**_job_campaign(), "id": KEY},
           "contacts_s3": {"bucket": contacts_bucket, "key": "c.csv"}, "default_country": None, **change}

    # When the job runs
    with caplog.at_level(logging.ERROR), pytest.raises(Exception, match=message):
        _invoke(job)

    # Then nothing was created and the failure was logged as an error (Lambda's on-failure destination gets it)
    assert _campaigns(pg_conn) == 0
    assert "campaign creation job failed" in caplog.text
