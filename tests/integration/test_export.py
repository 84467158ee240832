"""Per-contact results: `campaign export` writes every row as CSV, and the file agrees with the counters."""

from __future__ import annotations

import csv
import io
import json
from collections import Counter

from sendonce import control
from sendonce.cli import main
from tests.helpers import phone, post_statuses, queue_rows, status_update


def test_export_has_every_row_and_agrees_with_the_counters(make_campaign, graph, pg_conn, event_source, monkeypatch,
                                                           tmp_path, capsys):
    # Given a campaign with sent, failed, delivered, read, a delivery failure and a cancelled row
    monkeypatch.setenv("WHATSAPP_APP_SECRET", "example-app-secret")
    graph.plan(phone(1), "error:131026")
    campaign_id = make_campaign(*(phone(i) for i in range(1, 7)))
    event_source.run_until_empty(timeout=60)
    rows = queue_rows(pg_conn, campaign_id)
    post_statuses([
        status_update(rows[phone(2)]["whatsapp_message_id"], "read", 10, to=phone(2)),
        status_update(rows[phone(3)]["whatsapp_message_id"], "delivered", 11, to=phone(3)),
        status_update(rows[phone(4)]["whatsapp_message_id"], "failed", 12, code=131026, to=phone(4)),
    ])
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
    assert by_phone[f"+{phone(4)}"]["delivery_status"] == "failed"
    assert by_phone[f"+{phone(4)}"]["error_title"] == "Message undeliverable"
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
