"""`sendonce campaign create` and `campaign enqueue` through the CLI, against PostgreSQL and moto's SQS."""

from __future__ import annotations

import json

import pytest

from sendonce.cli import main
from sendonce.local.event_source import queue_depth
from tests.helpers import queue_rows

ARGS = ["--name", "Diwali", "--template", "diwali_offer", "--language", "en_US", "--phone-number-id", "106540352242922"]


def _create(contacts, *extra: str) -> list[str]:
    return ["campaign", "create", *ARGS, "--contacts", str(contacts), *extra]


def _nothing_written(pg_conn, aws) -> bool:
    campaigns, rows = pg_conn.execute(
        "SELECT (SELECT count(*) FROM campaigns), (SELECT count(*) FROM send_queue)"
    ).fetchone()
    return campaigns == 0 and rows == 0 and queue_depth(aws.send_queue_url) == 0


def test_create_duplicates_in_other_formats_and_invalid_rows_json_counts(pg_conn, aws, contacts_csv, capsys):
    # Given a CSV with one number in four formats, another twice, and three rows that are not numbers
    contacts = contacts_csv(
        ["phone", "param1", "param2"],
        ["919741771659", "Asha", "10%"],
        ["+91 97417 71659", "Asha again", "10%"],
        ["0091-9741771659", "Asha thrice", "10%"],
        ["(+91) 97417-71659", "Asha 4", "10%"],
        ["+1 (415) 555-2671", "Sam", "15%"],
        ["14155552671", "Sam again", "15%"],
        ["12345", "short", "x"],
        ["not a phone", "typo", "x"],
        ["", "empty", "x"],
        ["+44 7911 123456", "Olivia", "20%"],
    )

    # When the campaign is created with --json
    code = main(_create(contacts, "--json"))

    # Then the counts are right, invalid rows are named by line, and one message per recipient is queued
    assert code == 0
    out = json.loads(capsys.readouterr().out)
    assert (out["recipients"], out["invalid"], out["duplicates"], out["enqueued"]) == (3, 3, 4, 3)
    assert [r["line"] for r in out["invalid_rows"]] == [8, 9, 10]
    rows = queue_rows(pg_conn, out["campaign_id"])
    assert set(rows) == {"919741771659", "14155552671", "447911123456"}
    assert rows["919741771659"]["params"] == ["Asha", "10%"]
    assert {r["status"] for r in rows.values()} == {"ready"}
    assert queue_depth(aws.send_queue_url) == 3


def test_create_default_country_reads_national_numbers(pg_conn, aws, contacts_csv, capsys):
    # Given national-format numbers
    contacts = contacts_csv(["phone"], ["097417 71659"], ["98765 43210"])

    # When created with --default-country IN
    assert main(_create(contacts, "--default-country", "IN", "--json")) == 0

    # Then they are stored as E.164 digits
    out = json.loads(capsys.readouterr().out)
    assert set(queue_rows(pg_conn, out["campaign_id"])) == {"919741771659", "919876543210"}


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "not found"),
        ("", "is empty"),
        ("phone\n", "no contacts"),
        ("name,email\nAsha,a@example.com\n", "no 'phone' column"),
        ("phone\n12345\nabc\n", "no valid contacts"),
        ("phone,param2\n919741771659,x\n", "param1..paramN"),
    ],
    ids=["missing", "empty", "header-only", "no-phone-column", "no-valid-row", "param-gap"],
)
def test_create_bad_file_refused_with_nothing_written(pg_conn, aws, tmp_path, capsys, content, message):
    # Given a contacts file that cannot be used
    path = tmp_path / "contacts.csv"
    if content is not None:
        path.write_text(content)

    # When creating a campaign from it
    code = main(_create(path))

    # Then a one-line error (a file without one valid row lists them below it), exit code 2, and nothing in the
    # database or on the queue
    first, *listed = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert message in first and first.startswith("sendonce: error:")
    assert all(line.startswith("  line ") for line in listed)
    assert _nothing_written(pg_conn, aws)


@pytest.mark.parametrize(
    ("flag", "value", "message"),
    [("--template", "Diwali Offer!", "--template"), ("--language", "english", "--language"),
     ("--phone-number-id", "abc", "--phone-number-id"), ("--name", "  ", "--name")],
)
def test_create_bad_arguments_refused_with_nothing_written(pg_conn, aws, contacts_csv, capsys, flag, value, message):
    # Given a good file but a bad argument
    contacts = contacts_csv(["phone"], ["919741771659"])
    args = _create(contacts)
    args[args.index(flag) + 1] = value

    # When creating
    code = main(args)

    # Then it is refused with the argument named
    assert code == 2
    assert message in capsys.readouterr().err
    assert _nothing_written(pg_conn, aws)


def test_create_missing_argument_is_a_usage_error(pg_conn, aws, capsys):
    # When a required argument is missing, Then argparse exits 2 with usage
    with pytest.raises(SystemExit) as exit_info:
        main(["campaign", "create", "--name", "x"])
    assert exit_info.value.code == 2
    assert "required" in capsys.readouterr().err


def test_create_enqueue_failure_keeps_rows_ready_and_enqueue_finishes(pg_conn, aws, contacts_csv, capsys, monkeypatch):
    # Given the send queue URL is wrong, so enqueueing fails after the rows were written
    contacts = contacts_csv(["phone"], ["919741771659"], ["919876543210"])
    monkeypatch.setenv("SEND_QUEUE_URL", aws.send_queue_url + "-missing")

    # When creating the campaign
    code = main(_create(contacts))

    # Then it fails, says how to finish, and the rows are ready
    err = capsys.readouterr().err
    assert code == 1
    assert "sendonce campaign enqueue" in err
    campaign_id = err.split("sendonce campaign enqueue ")[1].split("`")[0]
    assert {r["status"] for r in queue_rows(pg_conn, campaign_id).values()} == {"ready"}

    # When the operator fixes the URL and runs `campaign enqueue` (twice: harmless)
    from sendonce.local import reset_clients

    monkeypatch.setenv("SEND_QUEUE_URL", aws.send_queue_url)
    reset_clients()
    assert main(["campaign", "enqueue", campaign_id]) == 0
    assert main(["campaign", "enqueue", campaign_id]) == 0

    # Then every ready row has its messages
    assert "2 ready rows enqueued" in capsys.readouterr().out
    assert queue_depth(aws.send_queue_url) == 4


def test_enqueue_unknown_campaign_is_refused(pg_conn, aws, capsys):
    assert main(["campaign", "enqueue", "4d46271f-f3b4-4f5b-a2c7-6dbad447a845"]) == 2
    assert "no campaign" in capsys.readouterr().err
    assert main(["campaign", "enqueue", "not-a-uuid"]) == 2
