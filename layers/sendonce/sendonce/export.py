"""Per-contact results: every row of a campaign as CSV, streamed (flat memory however many rows)."""

from __future__ import annotations

import csv
from collections.abc import Callable
from typing import TextIO

import psycopg

from sendonce import cost, graph_errors
from sendonce.campaigns import existing_campaign
from sendonce.repository import exports as repository

COLUMNS = ("phone", "status", "wamid", "sent_at", "delivery_status", "delivery_at", "error_code", "error_title",
           "error", "pricing_category", "billable", "cost")


def export_csv(conn: psycopg.Connection, campaign_id: str, out: TextIO,
               on_progress: Callable[[int], None] | None = None) -> int:
    """Write the campaign's rows to `out` as CSV (E.164 phone with '+', param1..paramN, results); return how many.

    The rows come from one snapshot, so the file agrees with itself; counted by status they are the counters
    of that moment (`campaign_counters` counts the same rows).

    Raises
    ------
    CampaignNotFoundError
        No campaign has that id.
    ConfigError
        The rates file (the `cost` column: Meta's rate for a row reported billable and delivered) cannot be used.
    """
    campaign_id = existing_campaign(conn, campaign_id)
    rates = cost.load_rates()
    params = repository.param_count(conn, campaign_id)
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(("phone", *(f"param{i}" for i in range(1, params + 1)), *COLUMNS[1:]))
    written = 0
    for (phone, values, status, wamid, sent_at, delivery, delivery_at, code, error, category,
         billable) in repository.export_rows(conn, campaign_id):
        values = list(values or ())
        title = graph_errors.title(code, (error or "").split(":")[0] or None) if code is not None or error else ""
        charged = cost.row_cost(rates, phone, category, bool(billable) and delivery in ("delivered", "read"))
        writer.writerow((
            f"+{phone}", *values, *([""] * (params - len(values))), status, wamid or "",
            sent_at.isoformat() if sent_at else "", delivery or "", delivery_at.isoformat() if delivery_at else "",
            "" if code is None else code, title, error or "", category or "",
            "" if billable is None else str(billable).lower(), "" if charged is None else charged,
        ))
        written += 1
        if on_progress and written % 10_000 == 0:
            on_progress(10_000)
    return written

