"""The CLI's first hour: every bad input or missing setting a new user meets gets one clear line and exit 2.

Each test drives the real command line (`sendonce.cli.main`, or the console script in a subprocess where a
traceback must be shown absent) against PostgreSQL and moto's SQS.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from sendonce.cli import ENVIRONMENT, main
from sendonce.local import reset_clients
from sendonce.local.event_source import queue_depth
from tests.helpers import phone, queue_rows

ARGS = ["--name", "Diwali", "--template", "diwali_offer", "--language", "en_US", "--phone-number-id", "106540352242922"]
CAMPAIGN_ID = "4d46271f-f3b4-4f5b-a2c7-6dbad447a845"
PASSWORD = "s3cret-Pa55"
# Every command that takes a campaign id, and what else it needs.
ID_COMMANDS = [
    ["campaign", "status"], ["campaign", "enqueue"], ["campaign", "pause"], ["campaign", "resume"],
    ["campaign", "cancel"], ["campaign", "retry-failed"], ["campaign", "failures"],
    ["campaign", "export"], ["campaign", "watch"],
]
# One command line per entry of the CLI's environment table (create gets its file from the test).
COMMAND_LINES = {
    "migrate": ["migrate"],
    "campaign create": ["campaign", "create", *ARGS, "--contacts", "{csv}"],
    **{" ".join(command): [*command, CAMPAIGN_ID] for command in ID_COMMANDS},
    "campaign list": ["campaign", "list"],
    "reset-stuck": ["reset-stuck"],
    "recompute": ["recompute"],
    "dlq list": ["dlq", "list"],
    "dlq redrive": ["dlq", "redrive"],
    "limit set": ["limit", "set", "123456", "1000"],
    "limit show": ["limit", "show"],
}


def _create(contacts, *extra: str) -> list[str]:
    return ["campaign", "create", *ARGS, "--contacts", str(contacts), *extra]


def _nothing_written(pg_conn, aws) -> bool:
    campaigns, rows = pg_conn.execute(
        "SELECT (SELECT count(*) FROM campaigns), (SELECT count(*) FROM send_queue)"
    ).fetchone()
    return campaigns == 0 and rows == 0 and queue_depth(aws.send_queue_url) == 0


def _one_line_error(capsys) -> str:
    """The command's stderr, which must be exactly one "sendonce: error: ..." line (and stdout empty)."""
    out, err = capsys.readouterr()
    lines = err.strip().splitlines()
    assert out == "" and len(lines) == 1 and lines[0].startswith("sendonce: error: "), (out, err)
    return lines[0]


def _json_error(capsys) -> dict:
    out = capsys.readouterr().out
    assert len(out.strip().splitlines()) == 1, out
    return json.loads(out)["error"]


def _command_line(command: str, csv_path) -> list[str]:
    return [part.replace("{csv}", str(csv_path)) for part in COMMAND_LINES[command]]


@pytest.fixture
def good_csv(contacts_csv):
    return contacts_csv(["phone", "param1"], ["919741771659", "Asha"], ["+1 415 555 2671", "Sam"])


def test_every_command_of_the_environment_table_is_exercised():
    assert set(COMMAND_LINES) == set(ENVIRONMENT)


# 1. --default-country that phonenumbers does not know.


@pytest.mark.parametrize(("country", "hint"), [("XX", "IN, US or GB"), ("UK", "UK is written GB"), ("India", "IN")])
def test_create_unknown_default_country_refused_with_nothing_written(pg_conn, aws, good_csv, capsys, country, hint):
    # When a campaign is created with a country phonenumbers does not know
    code = main(_create(good_csv, "--default-country", country))

    # Then one line naming the option, exit 2, nothing written
    line = _one_line_error(capsys)
    assert code == 2
    assert "--default-country" in line and repr(country) in line and hint in line
    assert _nothing_written(pg_conn, aws)


def test_create_default_country_in_lower_case_is_accepted(pg_conn, aws, contacts_csv, capsys):
    contacts = contacts_csv(["phone"], ["097417 71659"])
    assert main(_create(contacts, "--default-country", "in", "--json")) == 0
    assert set(queue_rows(pg_conn, json.loads(capsys.readouterr().out)["campaign_id"])) == {"919741771659"}


# 2. DATABASE_URL and the other settings: one line, exit 2 for bad input, never a traceback or a password.


@pytest.mark.parametrize(
    "url",
    ["garbage", f"mysql://user:{PASSWORD}@db.example.com/sendonce", f"postgresql//user:{PASSWORD}@db.example.com/x",
     f"postgresql://user:{PASSWORD}@db.example.com:54x2/sendonce", f"postgresql://user:{PASSWORD}%zz@host/db"],
    ids=["not-a-url", "other-scheme", "missing-colon", "bad-port", "bad-escape"],
)
def test_malformed_database_url_is_one_line_without_traceback_or_password(pg_conn, url):
    # When the console script runs with a DATABASE_URL that is not a PostgreSQL URL
    env = {**os.environ, "DATABASE_URL": url}
    run = subprocess.run(
        [sys.executable, "-m", "sendonce.cli", "campaign", "list"],
        env=env, capture_output=True, text=True, timeout=60, check=False,
    )

    # Then one line naming DATABASE_URL, exit 2, no traceback, and the password nowhere
    assert run.returncode == 2, run.stderr
    assert run.stdout == "" and len(run.stderr.strip().splitlines()) == 1, run.stderr
    assert "DATABASE_URL" in run.stderr and "Traceback" not in run.stderr
    assert PASSWORD not in run.stderr and PASSWORD[:6] not in run.stderr


@pytest.mark.parametrize("command", sorted(c for c in ENVIRONMENT if "DATABASE_URL" in ENVIRONMENT[c]))
def test_malformed_database_url_refused_by_every_command_that_connects(
    pg_conn, aws, good_csv, capsys, monkeypatch, command
):
    # Given a campaign, and then a malformed DATABASE_URL
    assert main(_create(good_csv, "--id", CAMPAIGN_ID)) == 0
    capsys.readouterr()
    monkeypatch.setenv("DATABASE_URL", f"mysql://user:{PASSWORD}@db.example.com/x")
    reset_clients()

    # When the command runs
    code = main(_command_line(command, good_csv))

    # Then one line naming DATABASE_URL and exit 2
    line = _one_line_error(capsys)
    assert code == 2 and "DATABASE_URL" in line and PASSWORD not in line


def test_unreachable_database_is_one_line_exit_1_without_password(pg_conn, aws, capsys, monkeypatch):
    # Given a well-formed DATABASE_URL where nothing listens
    monkeypatch.setenv("DATABASE_URL", f"postgresql://sendonce:{PASSWORD}@127.0.0.1:1/sendonce")

    # When listing campaigns, as text and as JSON
    code = main(["campaign", "list"])
    line = _one_line_error(capsys)
    json_code = main(["campaign", "list", "--json"])
    error = _json_error(capsys)

    # Then one line (libpq's own line breaks joined), exit 1, the variable named, the password nowhere
    assert code == json_code == 1
    assert "DATABASE_URL" in line and "cannot connect" in line and PASSWORD not in line
    assert error["code"] == "unavailable" and PASSWORD not in error["message"]


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("AMBIGUOUS_POLICY", "maybe", "AMBIGUOUS_POLICY must be one of"),
        ("WHATSAPP_MAX_MPS", "fast", "WHATSAPP_MAX_MPS must be a whole number"),
        ("WHATSAPP_MAX_MPS", "99999999999999999999", "at most"),
        ("WHATSAPP_TIMEOUT_SECONDS", "nan", "WHATSAPP_TIMEOUT_SECONDS must be a number of seconds above 0"),
        ("WHATSAPP_TIMEOUT_SECONDS", "inf", "WHATSAPP_TIMEOUT_SECONDS must be a number of seconds above 0"),
        ("ERROR_RATE_THRESHOLD", "5", "ERROR_RATE_THRESHOLD must be a share of failed sends from 0 to 1"),
        ("STUCK_AFTER_SECONDS", "-3", "STUCK_AFTER_SECONDS must be at least 1"),
        ("PG_PREPARE_THRESHOLD", "lots", "PG_PREPARE_THRESHOLD must be a whole number"),
    ],
)
@pytest.mark.parametrize("command", ["campaign list", "reset-stuck", "campaign create", "migrate"])
def test_bad_setting_is_one_line_exit_2_on_every_path(
    pg_conn, aws, good_csv, capsys, monkeypatch, name, value, message, command
):
    monkeypatch.setenv(name, value)
    code = main(_command_line(command, good_csv))
    line = _one_line_error(capsys)
    assert code == 2 and message in line
    assert _nothing_written(pg_conn, aws)


def test_database_never_migrated_says_run_migrate_and_writes_nothing(pg_server, aws, good_csv, capsys, monkeypatch):
    # Given an empty database that was never migrated
    monkeypatch.setenv("DATABASE_URL", pg_server())

    # When a new user lists campaigns, then creates one
    list_code = main(["campaign", "list"])
    list_line = _one_line_error(capsys)
    create_code = main(_create(good_csv))
    create_line = _one_line_error(capsys)

    # Then both say to run `sendonce migrate` (never "may or may not have been created"), exit 2, nothing queued
    assert list_code == create_code == 2
    assert "sendonce migrate" in list_line and "sendonce migrate" in create_line
    assert "may or may not" not in create_line
    assert queue_depth(aws.send_queue_url) == 0


# 3. A row with more fields than the header.


def test_row_with_more_fields_than_header_is_reported_and_not_inserted(pg_conn, aws, contacts_csv, capsys):
    # Given a row whose name holds an unquoted comma, which would shift its parameters
    contacts = contacts_csv(
        ["phone", "param1"], ["919741771659", "Asha"], ["919876543210", "Kumar", " Ravi"], ["14155552671", "Sam"]
    )

    # When created
    assert main(_create(contacts, "--json")) == 0

    # Then that row is invalid by line with the reason, and only the others are inserted
    out = json.loads(capsys.readouterr().out)
    assert out["invalid_rows"] == [{"line": 3, "value": "********3210", "reason": "3 fields, the header has 2"}]
    assert set(queue_rows(pg_conn, out["campaign_id"])) == {"919741771659", "14155552671"}


def test_unclosed_quote_swallowing_rows_is_reported(pg_conn, aws, tmp_path, capsys):
    # Given a stray opening quote: every line after it would become one field
    path = tmp_path / "contacts.csv"
    path.write_text('phone,param1\n919741771659,Asha\n"919876543210,Ravi\n14155552671,Sam\n')

    # When created
    assert main(_create(path, "--json")) == 0

    # Then the swallowed lines are named, not reported as one bad number
    out = json.loads(capsys.readouterr().out)
    assert [(r["line"], r["reason"]) for r in out["invalid_rows"]] == [
        (3, "a quoted field runs over lines 3-4: is a closing quote missing?")
    ]
    assert out["recipients"] == 1


def test_number_in_scientific_notation_is_invalid_with_the_reason(pg_conn, aws, contacts_csv, capsys):
    # Given a number a spreadsheet saved as 9.19741771659E+11 (its digits are not the number's)
    contacts = contacts_csv(["phone"], ["9.19741771659E+11"], ["14155552671"])
    assert main(_create(contacts, "--json")) == 0
    out = json.loads(capsys.readouterr().out)
    assert [r["line"] for r in out["invalid_rows"]] == [2]
    assert "scientific notation" in out["invalid_rows"][0]["reason"]
    assert set(queue_rows(pg_conn, out["campaign_id"])) == {"14155552671"}


def test_nul_in_a_parameter_is_an_invalid_row_not_a_failed_create(pg_conn, aws, tmp_path, capsys):
    path = tmp_path / "contacts.csv"
    path.write_text("phone,param1\n919741771659,As\x00ha\n14155552671,Sam\n")
    assert main(_create(path, "--json")) == 0
    out = json.loads(capsys.readouterr().out)
    assert [(r["line"], r["reason"]) for r in out["invalid_rows"]] == [(2, "a parameter contains a NUL character")]
    assert set(queue_rows(pg_conn, out["campaign_id"])) == {"14155552671"}


# 4. Files that are not a usable CSV.


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("folder", "is a folder, not a CSV file"),
        (b"", "is empty"),
        (b"phone,param1\n919741771659,Asha\n9198765\xe93210,Ren\xe9e\n", "is not UTF-8 text (line 3 has the byte 0xe9)"),
        ("phone\n919741771659\n".encode("utf-16"), "is UTF-16 text: save it as CSV UTF-8"),
        (b"PK\x03\x04\x14\x00\x06\x00\x08\x00\x00\x00!\x00", "is a ZIP archive (an Excel workbook?)"),
        (b"phone;param1\n919741771659;Asha\n", "separated by ';'"),
        (b'phone\n"' + b"9" * 200_000 + b'"\n', "line 2: field larger than field limit"),
        (b"phone,param1,param1\n919741771659,a,b\n", "'param1' appears more than once"),
    ],
    ids=["folder", "empty", "latin-1", "utf-16", "xlsx", "semicolons", "huge-field", "repeated-column"],
)
def test_unusable_file_is_one_clear_line_with_nothing_written(pg_conn, aws, tmp_path, capsys, content, message):
    path = tmp_path / "contacts.csv"
    if content == "folder":
        path.mkdir()
    else:
        path.write_bytes(content)

    code = main(_create(path))

    line = _one_line_error(capsys)
    assert code == 2 and message in line and str(path) in line
    assert _nothing_written(pg_conn, aws)


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads every file, so no file is unreadable")
def test_unreadable_file_is_one_clear_line(pg_conn, aws, good_csv, capsys):
    good_csv.chmod(0)
    assert main(_create(good_csv)) == 2
    assert "permission denied" in _one_line_error(capsys)


# 5. A file without one valid row lists them.


def test_all_rows_invalid_lists_the_first_20_then_how_many_more(pg_conn, aws, contacts_csv, capsys):
    # Given 25 rows, none a phone number
    contacts = contacts_csv(["phone"], *([f"{i}"] for i in range(25)))

    # When created, as text and as JSON
    code = main(_create(contacts))
    err = capsys.readouterr().err.splitlines()
    json_code = main(_create(contacts, "--json"))
    error = _json_error(capsys)

    # Then the error is followed by the first 20 rows by line with their reasons, then "and 5 more"; JSON has all
    assert code == json_code == 2
    assert err[0].startswith("sendonce: error: no valid contacts in") and "25 invalid rows" in err[0]
    assert err[1] == "  line 2: '0': the string supplied did not seem to be a phone number"
    assert [line.split(":")[0] for line in err[1:21]] == [f"  line {n}" for n in range(2, 22)]
    assert err[21:] == ["  and 5 more"]
    assert error["code"] == "bad_request" and len(error["invalid_rows"]) == 25
    assert _nothing_written(pg_conn, aws)


# 6. --json errors are one JSON object with the HTTP API's codes.


@pytest.mark.parametrize("command", ID_COMMANDS, ids=lambda c: c[1])
@pytest.mark.parametrize("campaign_id", [CAMPAIGN_ID, "not-a-uuid"], ids=["unknown", "not-a-uuid"])
def test_json_error_for_unknown_campaign_on_every_id_command(pg_conn, aws, capsys, command, campaign_id):
    code = main([*command, campaign_id, "--json"])
    error = _json_error(capsys)
    assert code == 2
    assert error["code"] == "not_found" and "no campaign" in error["message"]


def test_json_errors_use_the_api_codes(pg_conn, aws, good_csv, capsys, make_campaign):
    # Given a cancelled campaign
    campaign_id = make_campaign(phone(1))
    assert main(["campaign", "cancel", campaign_id]) == 0
    capsys.readouterr()

    # Then: not allowed in its state -> conflict; the same id again -> conflict; a bad argument -> bad_request;
    # a usage error -> bad_request; all with exit 2
    assert main(["campaign", "resume", campaign_id, "--json"]) == 2
    assert _json_error(capsys)["code"] == "conflict"
    assert main(_create(good_csv, "--id", campaign_id, "--json")) == 2
    assert _json_error(capsys) == {"code": "conflict", "message": f"campaign {campaign_id} already exists"}
    assert main(_create(good_csv, "--template", "Bad Name", "--json")) == 2
    assert _json_error(capsys)["code"] == "bad_request"
    with pytest.raises(SystemExit) as usage:
        main(["campaign", "list", "--limit", "many", "--json"])
    assert usage.value.code == 2
    assert "--limit" in _json_error(capsys)["message"]


# 7. reset-stuck and recompute speak to humans unless --json.


def test_reset_stuck_and_recompute_print_lines_and_json_on_request(pg_conn, aws, capsys, make_campaign):
    make_campaign(phone(1))

    assert main(["reset-stuck"]) == 0
    assert capsys.readouterr().out == "reset-stuck: no stuck rows\n"
    assert main(["reset-stuck", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == {
        "reset": 0, "resent_without_evidence": 0, "recovered": 0, "failed": 0, "cancelled": 0, "enqueued": 0,
        "started": [], "resumed": [], "released": 0,
    }
    assert main(["recompute"]) == 0
    assert capsys.readouterr().out == "recomputed 1 campaigns, 0 completed\n"
    assert main(["recompute", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["recomputed"] == 1


def test_reset_stuck_human_lines_say_what_was_reset(pg_conn, aws, capsys, make_campaign):
    # Given a row stuck in processing long ago without a journal entry's token (the sender died before it)
    campaign_id = make_campaign(phone(1))
    pg_conn.execute(
        "UPDATE send_queue SET status = 'processing', claimed_at = now() - interval '1 hour' WHERE campaign_id = %s",
        (campaign_id,),
    )

    # When reset-stuck runs without --json
    assert main(["reset-stuck"]) == 0

    # Then a readable line, not JSON
    out = capsys.readouterr().out
    assert out.startswith("reset-stuck: 1 stuck row back to ready, 1 enqueued"), out


# 8. create reads the file before it needs any setup; --dry-run needs none at all.


def _no_environment(monkeypatch) -> None:
    for name in ("DATABASE_URL", "SEND_QUEUE_URL", "DLQ_URL", "IDEMPOTENCY_TABLE", "AWS_REGION", "AWS_DEFAULT_REGION",
                 "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent/aws-config")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent/aws-credentials")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    reset_clients()


def test_create_reports_a_bad_file_before_asking_for_any_setup(tmp_path, capsys, monkeypatch):
    _no_environment(monkeypatch)
    path = tmp_path / "contacts.csv"
    path.write_text("mobile\n919741771659\n")
    assert main(_create(path)) == 2
    assert "no 'phone' column" in _one_line_error(capsys)


def test_create_without_setup_names_every_missing_variable_and_local_up(good_csv, capsys, monkeypatch):
    _no_environment(monkeypatch)
    assert main(_create(good_csv)) == 2
    line = _one_line_error(capsys)
    for needed in ("DATABASE_URL", "SEND_QUEUE_URL", "AWS region", "AWS credentials", "sendonce local up"):
        assert needed in line


def test_create_without_region_writes_nothing(pg_conn, aws, good_csv, capsys, monkeypatch):
    # Given everything but a region: before, the rows were written and then every SQS call failed
    for name in ("AWS_REGION", "AWS_DEFAULT_REGION"):
        monkeypatch.delenv(name)
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent/aws-config")
    monkeypatch.setenv("AWS_REGION", "us-east-1")  # what Lambda sets, but boto3 does not read

    assert main(_create(good_csv)) == 2
    line = _one_line_error(capsys)
    assert "an AWS region (AWS_DEFAULT_REGION" in line and "AWS_REGION is set, but boto3 does not read it" in line
    assert pg_conn.execute("SELECT count(*) FROM campaigns").fetchone()[0] == 0


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [("SEND_QUEUE_URL", "arn:aws:sqs:us-east-1:123456789012:sendonce-SendQueue", "not its ARN"),
     ("SEND_QUEUE_URL", "sendonce-SendQueue", "must be the queue's URL")],
)
def test_create_with_a_queue_name_instead_of_its_url_writes_nothing(
    pg_conn, aws, good_csv, capsys, monkeypatch, name, value, message
):
    monkeypatch.setenv(name, value)
    assert main(_create(good_csv)) == 2
    assert message in _one_line_error(capsys)
    assert _nothing_written(pg_conn, aws)


def test_dry_run_needs_no_setup_and_prints_what_would_be_created(contacts_csv, capsys, monkeypatch):
    # Given no database, queue or AWS at all
    _no_environment(monkeypatch)
    contacts = contacts_csv(
        ["phone", "param1"], ["919741771659", "Asha"], ["+91 97417 71659", "Asha"], ["12345", "x"],
        ["14155552671", "Sam", "extra"], ["447911123456", "Olivia"],
    )

    # When checked with --dry-run, as text and JSON
    code = main(_create(contacts, "--dry-run", "--id", CAMPAIGN_ID.upper()))
    out = capsys.readouterr().out.splitlines()
    json_code = main(_create(contacts, "--dry-run", "--json"))
    preview = json.loads(capsys.readouterr().out)

    # Then what would be created, the invalid rows with their reasons, the duplicates collapsed; exit 0
    assert code == json_code == 0
    assert out[0] == (
        "dry run: campaign 'Diwali' (template diwali_offer, en_US) would have 2 recipients; 2 invalid rows, "
        "1 duplicate collapsed; nothing was written"
    )
    assert out[1:3] == ["  line 4: '*2345': not a valid number for its country",
                        "  line 5: '*******2671': 3 fields, the header has 2"]
    assert out[3] == "template not checked: WHATSAPP_BUSINESS_ACCOUNT_ID is not set"
    assert out[4].startswith("cost: estimate USD ") and "for 2 messages (marketing, category unknown" in out[4]
    assert "DATABASE_URL" in out[5]
    assert preview.pop("cost")["estimate"]["messages"] == 2
    assert preview == {
        "campaign_id": None, "recipients": 2, "invalid": 2, "duplicates": 1, "enqueued": 0, "dry_run": True,
        "invalid_rows": [{"line": 4, "value": "*2345", "reason": "not a valid number for its country"},
                         {"line": 5, "value": "*******2671", "reason": "3 fields, the header has 2"}],
        "template_check": {"outcome": "skipped", "message": "template not checked: WHATSAPP_BUSINESS_ACCOUNT_ID is not set"},
    }


def test_dry_run_writes_nothing_and_fails_without_a_valid_contact(pg_conn, aws, contacts_csv, good_csv, capsys):
    assert main(_create(good_csv, "--dry-run")) == 0
    assert _nothing_written(pg_conn, aws)
    capsys.readouterr()

    bad = contacts_csv(["phone"], ["12345"], name="bad.csv")
    assert main(_create(bad, "--dry-run", "--json")) == 2
    assert _json_error(capsys)["invalid_rows"] == [{"line": 2, "value": "*2345", "reason": "not a valid number for its country"}]
    assert main(_create(good_csv, "--dry-run", "--id", "nope")) == 2
    assert "must be a UUID" in _one_line_error(capsys)


# 9. Help names the environment; a missing variable says which and how to get it locally.


@pytest.mark.parametrize(
    ("command", "named", "not_named"),
    [
        (["campaign", "create"], ["DATABASE_URL", "SEND_QUEUE_URL", "AWS region, credentials"], ["DLQ_URL"]),
        (["migrate"], ["DATABASE_URL"], ["SEND_QUEUE_URL", "AWS region"]),
        (["campaign", "status"], ["DATABASE_URL"], ["SEND_QUEUE_URL"]),
        (["campaign", "resume"], ["DATABASE_URL", "SEND_QUEUE_URL", "AWS region"], []),
        (["reset-stuck"], ["IDEMPOTENCY_TABLE", "AMBIGUOUS_POLICY"], []),
        (["dlq", "redrive"], ["DLQ_URL", "SEND_QUEUE_URL"], ["DATABASE_URL"]),
    ],
)
def test_help_names_the_environment_each_command_needs(capsys, command, named, not_named):
    with pytest.raises(SystemExit) as done:
        main([*command, "--help"])
    assert done.value.code == 0
    epilog = capsys.readouterr().out.split("environment:")[1]
    assert all(name in epilog for name in named) and not any(name in epilog for name in not_named)
    assert "sendonce local up" in epilog


@pytest.mark.parametrize("command", sorted(ENVIRONMENT))
def test_missing_variable_named_with_how_to_get_it_locally(good_csv, capsys, monkeypatch, command):
    _no_environment(monkeypatch)
    assert main(_command_line(command, good_csv)) == 2
    line = _one_line_error(capsys)
    needed = [name for name in ENVIRONMENT[command] if name != "AWS"]
    assert f"{command} needs " in line and all(name in line for name in needed)
    assert "`sendonce local up` prints the variables" in line


# Sweep: limits, ids.


@pytest.mark.parametrize("limit", ["-1", "0", "1001", "99999999999999999999"])
@pytest.mark.parametrize("command", [["campaign", "list"], ["dlq", "list"]], ids=["campaign", "dlq"])
def test_limit_out_of_range_is_refused_before_connecting(capsys, monkeypatch, command, limit):
    _no_environment(monkeypatch)
    assert main([*command, "--limit", limit]) == 2
    assert "--limit must be from 1 to 1000" in _one_line_error(capsys)


@pytest.mark.parametrize("command", ID_COMMANDS, ids=lambda c: c[1])
def test_id_that_is_not_a_uuid_is_refused_before_any_setup(capsys, monkeypatch, command):
    _no_environment(monkeypatch)
    assert main([*command, "12345"]) == 2
    assert "no campaign '12345' (not a UUID)" in _one_line_error(capsys)


def test_other_spellings_of_a_uuid_are_one_campaign(pg_conn, aws, good_csv, capsys):
    # Given a campaign created with --id as a URN (uuid.UUID takes it, PostgreSQL does not)
    assert main(_create(good_csv, "--id", f"urn:uuid:{CAMPAIGN_ID}", "--json")) == 0
    assert json.loads(capsys.readouterr().out)["campaign_id"] == CAMPAIGN_ID

    # Then every command finds it by any spelling, and enqueue works
    assert main(["campaign", "status", "{" + CAMPAIGN_ID.upper() + "}", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["recipients"] == 2
    assert main(["campaign", "enqueue", CAMPAIGN_ID.replace("-", ""), "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == {"campaign_id": CAMPAIGN_ID, "enqueued": 2}
