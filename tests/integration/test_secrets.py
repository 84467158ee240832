"""Secrets: read from Secrets Manager (moto), rotated without a redeploy, and never shown in an error."""

from __future__ import annotations

import uuid

import boto3
import psycopg
import pytest

from sendonce import db
from sendonce.errors import ConfigError
from sendonce.local import reset_clients
from sendonce.local.lambda_runtime import LocalContext, load_handler
from tests.helpers import load_event, phone, queue_rows

PASSWORD = "s3cr3t-pw-9f1c"


def _secret(value: str) -> str:
    """A new secret named sendonce/... on moto; its ARN."""
    client = boto3.client("secretsmanager")
    return client.create_secret(Name=f"sendonce/test-{uuid.uuid4().hex[:8]}", SecretString=value)["ARN"]


@pytest.mark.parametrize("url", [f"postgresql//app:{PASSWORD}@db.example/sendonce", f"postgresql://app:{PASSWORD}@db.example:99999/x"])
def test_malformed_database_url_fails_the_invocation_without_the_password(url, monkeypatch, capsys, caplog):
    # Given a DATABASE_URL with a typo (psycopg's parse error would quote it whole)
    monkeypatch.setenv("DATABASE_URL", url)
    reset_clients()

    # When a function that connects is invoked
    with pytest.raises(ConfigError) as failure:
        load_handler("recompute_counters")(load_event("recompute_counters_schedule.json"), LocalContext("recompute"))

    # Then it fails with a message, a traceback and logs that do not hold the password
    captured = capsys.readouterr()
    assert PASSWORD not in str(failure.value) and PASSWORD not in repr(failure.value.__cause__)
    assert PASSWORD not in captured.out + captured.err + caplog.text


def test_connection_string_psycopg_cannot_parse_is_refused_without_the_password():
    # Given a connection string handed to connect() directly (the proxy, the tests), unparsable
    # When it connects / Then the error does not repeat it
    with pytest.raises(ConfigError) as failure:
        db.connect(f"host=db.example password={PASSWORD} port")
    assert PASSWORD not in str(failure.value) and failure.value.__cause__ is None


def test_database_url_naming_an_rds_json_secret_connects(pg_conn, aws, database_url, monkeypatch):
    # Given the JSON secret RDS manages for the test database, and DATABASE_URL naming it
    fields = psycopg.conninfo.conninfo_to_dict(database_url)
    secret = (
        '{"engine": "postgres", "username": "%s", "password": "%s", "host": "%s", "port": %s, "dbname": "%s"}'
        % (fields.get("user", "postgres"), fields.get("password", ""), fields.get("host", "127.0.0.1"),
           fields.get("port", 5432), fields["dbname"])
    )
    monkeypatch.setenv("DATABASE_URL", _secret(secret))
    reset_clients()

    # When a connection is opened
    conn = db.connect()

    # Then it reaches that database
    assert conn.execute("SELECT current_database()").fetchone()[0] == fields["dbname"]
    conn.close()


def test_token_rotated_without_redeploy_is_read_again_once_and_the_send_goes_through(
    make_campaign, graph, pg_conn, event_source, monkeypatch
):
    # Given the access token in Secrets Manager, and a first send with it
    client = boto3.client("secretsmanager")
    arn = _secret(graph.token)
    monkeypatch.setenv("WHATSAPP_ACCESS_TOKEN", arn)
    reset_clients()
    first = make_campaign(phone(1))
    event_source.run_until_empty(timeout=30)
    assert queue_rows(pg_conn, first)[phone(1)]["status"] == "sent"

    # When the token is rotated (Meta now refuses the old one with 190, and the secret holds the new one)
    graph.token = "rotated-" + uuid.uuid4().hex
    client.put_secret_value(SecretId=arn, SecretString=graph.token)
    second = make_campaign(phone(2))
    event_source.run_until_empty(timeout=30)

    # Then the sender re-read the secret once and sent with the new token: one refusal, one acceptance, and the
    # campaign was not paused
    assert [r["fault"] for r in graph.requests if r["to"] == phone(2)] == ["ok"]
    assert graph.accepted[phone(2)] == 1
    assert queue_rows(pg_conn, second)[phone(2)]["status"] == "sent"
    assert pg_conn.execute("SELECT status FROM campaigns WHERE id = %s", (second,)).fetchone()[0] == "running"


def test_token_that_is_not_rotated_still_halts_on_190(make_campaign, graph, pg_conn, event_source, monkeypatch):
    # Given the token in Secrets Manager, and Meta refusing it (expired, and nobody rotated it)
    monkeypatch.setenv("WHATSAPP_ACCESS_TOKEN", _secret(graph.token))
    reset_clients()
    graph.token = "something-else"
    campaign_id = make_campaign(phone(1))

    # When the sender tries
    event_source.run_until_empty(timeout=30)

    # Then the campaign is paused with the reason, the row untouched
    status, reason = pg_conn.execute("SELECT status, pause_reason FROM campaigns WHERE id = %s", (campaign_id,)).fetchone()
    assert status == "paused" and "190" in (reason or "")
    assert queue_rows(pg_conn, campaign_id)[phone(1)]["status"] == "ready"
