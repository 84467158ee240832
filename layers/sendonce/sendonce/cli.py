"""The `sendonce` command line."""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import sys
import textwrap
import time
from contextlib import contextmanager
from pathlib import Path

from sendonce import __version__
from sendonce.capacity import SENDER_BATCH_SIZE
from sendonce.config import send_queue_url
from sendonce.errors import (
    CampaignInputError,
    CampaignNotFoundError,
    CampaignStateError,
    ConfigError,
    ContactsError,
    DatabaseError,
    MigrationError,
    SendonceError,
)
from sendonce.observability import logger

# Exit codes: 0 done, 1 the operation failed, 2 bad input (argparse uses 2 as well).
INPUT_ERRORS = (
    CampaignInputError, CampaignNotFoundError, CampaignStateError, ContactsError, ConfigError, MigrationError
)

# What each command needs from the environment: the one source of every command's help epilog and of the
# check that runs before the command touches anything. "AWS" stands for a region and credentials.
AWS = "AWS"
VARIABLES = {
    "DATABASE_URL": "the PostgreSQL database, postgresql://USER:PASSWORD@HOST:5432/DBNAME or a Secrets Manager ARN",
    "SEND_QUEUE_URL": "the SQS send queue's URL, stack output SendQueueUrl",
    "DLQ_URL": "the SQS dead-letter queue's URL, stack output DeadLetterQueueUrl",
    "IDEMPOTENCY_TABLE": "the DynamoDB table that holds the batch journal, stack output IdempotencyTableName",
    AWS: "an AWS region and credentials: AWS_DEFAULT_REGION; AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or "
    "AWS_PROFILE; AWS_ENDPOINT_URL for local stand-ins",
}
ENVIRONMENT: dict[str, tuple[str, ...]] = {
    "migrate": ("DATABASE_URL",),
    "campaign create": ("DATABASE_URL", "SEND_QUEUE_URL", AWS),
    "campaign enqueue": ("DATABASE_URL", "SEND_QUEUE_URL", AWS),
    "campaign status": ("DATABASE_URL",),
    "campaign list": ("DATABASE_URL",),
    "campaign failures": ("DATABASE_URL",),
    "campaign export": ("DATABASE_URL",),
    "campaign watch": ("DATABASE_URL",),
    "campaign pause": ("DATABASE_URL",),
    "campaign resume": ("DATABASE_URL", "SEND_QUEUE_URL", AWS),
    "campaign cancel": ("DATABASE_URL",),
    "campaign retry-failed": ("DATABASE_URL", "SEND_QUEUE_URL", AWS),
    "reset-stuck": ("DATABASE_URL", "SEND_QUEUE_URL", "IDEMPOTENCY_TABLE", AWS),
    "recompute": ("DATABASE_URL",),
    "dlq list": ("DATABASE_URL",),
    "limit set": ("DATABASE_URL",),
    "limit show": ("DATABASE_URL",),
    "dlq redrive": ("DLQ_URL", "SEND_QUEUE_URL", AWS),
}
# Settings a command reads when they are set (defaults: the README's configuration table).
OPTIONAL_ENVIRONMENT = {
    "reset-stuck": ("STUCK_AFTER_SECONDS", "AMBIGUOUS_POLICY"),
    # The template preflight and the messaging limit read the Graph API when the WABA is set.
    "campaign create": ("WHATSAPP_BUSINESS_ACCOUNT_ID", "WHATSAPP_ACCESS_TOKEN", "WHATSAPP_API_BASE_URL",
                        "MESSAGING_WINDOW_SECONDS"),
}
MAX_LOCAL_CONTACTS = 200_000
MAX_BENCH_BATCH, MAX_BENCH_CONCURRENCY = 1000, 64
LOCAL_HINT = "for a local stack, `sendonce local up` prints the variables to export"
# The HTTP API's error codes (api.py), reused by --json errors so that scripts handle both alike.
ERROR_CODES = ((CampaignNotFoundError, "not_found"), (CampaignStateError, "conflict"), (INPUT_ERRORS, "bad_request"))
# libpq reports a database without sendonce's tables (never migrated) with these SQLSTATEs.
_SCHEMA_MISSING = {"42P01", "42703", "42883"}  # undefined table, column, function
_URL_PASSWORD = re.compile(r"(\b[A-Za-z][A-Za-z0-9+.-]*://[^\s:/@]*:)([^\s@]+)@")
_KEYWORD_PASSWORD = re.compile(r"(\bpassword\s*=\s*)\S+", re.IGNORECASE)


def _help(command: str, text: str) -> dict:
    """add_parser keywords: `text` as help and description, the command's environment as the epilog."""
    needs = ENVIRONMENT.get(command, ())
    lines = ["environment:"] if needs else []
    for name in needs:
        label = f"  {'AWS region, credentials' if name == AWS else name:24} "
        lines.append(textwrap.fill(
            VARIABLES[name], 100, initial_indent=label, subsequent_indent=" " * len(label),
            break_long_words=False, break_on_hyphens=False,
        ))
    optional = OPTIONAL_ENVIRONMENT.get(command, ())
    if optional:
        lines.append(f"  optional: {', '.join(optional)} (defaults in the README)")
    if needs:
        lines.append(f"({LOCAL_HINT})")
    return {
        "help": text,
        "description": text[0].upper() + text[1:] + ".",
        "epilog": "\n".join(lines) or None,
        "formatter_class": argparse.RawDescriptionHelpFormatter,
    }


def _count(number: int, noun: str) -> str:
    return f"{number:,} {noun}{'' if number == 1 else 's'}"


def _joined(items: list[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def check_environment(command: str) -> None:
    """Check what `command` needs from the environment (ENVIRONMENT) before it reads or writes anything.

    Parameters
    ----------
    command
        A key of ENVIRONMENT, e.g. "campaign create".

    Raises
    ------
    ConfigError
        A setting is invalid (AMBIGUOUS_POLICY, a number), or a variable the command needs is missing (all of
        them are named, with where to get them) or malformed (DATABASE_URL, a queue URL).
    """
    from sendonce import config

    # Invalid values first: they say exactly what to fix, whatever else is missing.
    settings = config.get_settings()
    needs = ENVIRONMENT[command]
    missing = [f"{name} ({VARIABLES[name]})" for name in needs if name != AWS and not getattr(settings, name.lower())]
    if AWS in needs:
        missing += config.missing_aws()
    if missing:
        raise ConfigError(f"{command} needs {_joined(missing)}, not set; {LOCAL_HINT}")
    if "DATABASE_URL" in needs:
        config.database_url()
    for name in ("SEND_QUEUE_URL", "DLQ_URL"):
        if name in needs:
            config.check_queue_url(getattr(settings, name.lower()), name)


def _conn():
    """The database connection; a failure to connect names DATABASE_URL."""
    from sendonce import db

    try:
        return db.get_conn()
    except DatabaseError as exc:
        raise DatabaseError(f"DATABASE_URL: {exc}") from exc


def _campaign_id(value: str) -> str:
    """The canonical form of a campaign id; anything else is an unknown campaign (exit 2), before any setup."""
    from sendonce.campaigns import canonical_campaign_id

    return canonical_campaign_id(value)


def _cmd_migrate(args: argparse.Namespace) -> int:
    from sendonce.migrate import migrate

    applied = migrate(_conn())
    if args.json:
        print(json.dumps({"applied": applied}))
    else:
        print("applied: " + ", ".join(applied) if applied else "database is up to date")
    return 0


def _progress(total: int, label: str, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=total, desc=label, unit="msg", file=sys.stderr, disable=not enabled, leave=False)


def _print_invalid(invalid: list) -> None:
    from sendonce.contacts import LISTED_INVALID_ROWS, invalid_lines

    lines = invalid_lines(invalid)
    if len(invalid) > LISTED_INVALID_ROWS:
        lines[-1] += " (--json lists them all)"
    for line in lines:
        print(f"  {line}")


def _cmd_campaign_create(args: argparse.Namespace) -> int:
    from sendonce import campaigns, contacts

    # The arguments and the file first: bad input is reported before any setup is needed or anything is written.
    campaign = campaigns.NewCampaign(
        name=args.name, template_name=args.template, language_code=args.language, phone_number_id=args.phone_number_id,
        components=_header_media(args.header_media), auto_resume=args.auto_resume,
        start_at=_start_at(args.start_at), send_window=campaigns.parse_send_window(args.send_window), time_zone=args.time_zone,
        **({"id": args.id} if args.id else {}),
    )
    campaign.validate()
    if args.from_campaign:
        # Retargeting: the contacts are another campaign's audience, read from the database.
        if args.audience is None:
            raise CampaignInputError("--from-campaign needs --audience (not-delivered, not-read, failed or read)")
        if not args.dry_run:
            check_environment("campaign create")
        contact_list = campaigns.audience(_conn(), args.from_campaign, args.audience)
        if not contact_list.contacts:
            raise CampaignInputError(f"campaign {args.from_campaign} has no {args.audience} rows: nothing to send")
    else:
        if args.audience is not None:
            raise CampaignInputError("--audience goes with --from-campaign")
        region = contacts.check_region(args.default_country, "--default-country")
        contact_list = contacts.read_csv(args.contacts, default_region=region)
        if not contact_list.contacts:
            raise contacts.no_valid_contacts(contact_list, args.contacts)
    if args.dry_run:
        return _dry_run(args, contact_list, campaign)
    check_environment("campaign create")
    queue_url = send_queue_url()
    conn = _conn()
    with _progress(len(contact_list.contacts), "enqueue", sys.stderr.isatty()) as bar:
        created = campaigns.create_campaign(
            conn, campaign, contact_list, queue_url, on_progress=bar.update,
            allow_unchecked_template=args.allow_unchecked_template,
        )
    if args.json:
        print(json.dumps(created.as_json()))
        return 0
    print(
        f"campaign {created.campaign_id}: {created.recipients} recipients, {len(created.invalid)} invalid, "
        f"{created.duplicates} duplicates, {created.enqueued} enqueued"
    )
    if created.template_check:
        print(f"  {created.template_check.message}")
    if created.messaging_limit:
        print(f"  {created.messaging_limit['message']}")
    if created.cost:
        print(f"  {_estimate_line(created.cost)}")
    _print_invalid(created.invalid)
    return 0


def _start_at(value: str | None):
    """--start-at as an aware datetime (ISO 8601 with a zone: 2026-12-01T09:00+05:30, ...Z)."""
    if not value:
        return None
    from datetime import datetime

    try:
        return datetime.fromisoformat(value.strip())
    except ValueError:
        raise CampaignInputError(f"--start-at must be an ISO time with a zone, e.g. 2026-12-01T09:00:00+05:30, "
                                 f"got {value[:40]!r}") from None


def _header_media(value: str | None) -> tuple[dict, ...]:
    """--header-media KIND:URL as the template's header component."""
    if not value:
        return ()
    kind, _, url = value.partition(":")
    kind = kind.strip().lower()
    if kind not in ("image", "video", "document") or not url.startswith("https://") or len(url) > 2000:
        raise CampaignInputError(f"--header-media must be image:, video: or document: and an https:// URL, got {value[:80]!r}")
    return ({"type": "header", "parameters": [{"type": kind, kind: {"link": url}}]},)


def _dry_run(args: argparse.Namespace, contact_list, campaign) -> int:
    """Print what `campaign create` would do with these arguments and this file; nothing is written, and only the
    Graph API is read (the template, when WHATSAPP_BUSINESS_ACCOUNT_ID is set)."""
    from sendonce import cost, templates
    from sendonce.campaigns import CreatedCampaign

    campaign_id = _campaign_id(args.id) if args.id else None
    check = templates.preflight(
        None, campaign.template_name, campaign.language_code, contact_list.param_count, campaign.components,
        args.allow_unchecked_template,
    )
    preview = CreatedCampaign(
        campaign_id, len(contact_list.contacts), contact_list.invalid, contact_list.duplicates, enqueued=0,
        template_check=check, cost=cost.estimate_contacts((c.phone for c in contact_list.contacts), check.category),
    )
    if args.json:
        print(json.dumps({**preview.as_json(), "dry_run": True}))
        return 0
    print(
        f"dry run: campaign {args.name.strip()!r} (template {args.template}, {args.language}) would have "
        f"{_count(preview.recipients, 'recipient')}; {_count(len(preview.invalid), 'invalid row')}, "
        f"{_count(preview.duplicates, 'duplicate')} collapsed; nothing was written"
    )
    _print_invalid(preview.invalid)
    print(check.message)
    print(_estimate_line(preview.cost))
    needs = [name if name != AWS else "an AWS region and credentials" for name in ENVIRONMENT["campaign create"]]
    print(f"without --dry-run it needs {_joined(needs)}")
    return 0


def _cmd_campaign_enqueue(args: argparse.Namespace) -> int:
    from sendonce import campaigns

    queue_url = send_queue_url()
    conn = _conn()
    with _progress(0, "enqueue", sys.stderr.isatty()) as bar:
        sent = campaigns.enqueue_campaign(conn, args.campaign_id, queue_url, on_progress=bar.update)
    if args.json:
        print(json.dumps({"campaign_id": args.campaign_id, "enqueued": sent}))
    else:
        print(f"campaign {args.campaign_id}: {sent} ready rows enqueued")
    return 0


def _print_status(counters: dict) -> None:
    reason = f" ({counters['pause_reason']})" if counters.get("pause_reason") else ""
    print(f"campaign {counters['campaign_id']} {counters['name']!r}: {counters['status']}{reason}")
    from sendonce.control import COUNTER_KEYS

    print("  " + "  ".join(f"{k:>10}" for k in COUNTER_KEYS))
    print("  " + "  ".join(f"{counters[k]:>10,}" for k in COUNTER_KEYS))
    for line in _meta_lines(counters):
        print(f"  {line}")


def _meta_lines(counters: dict) -> list[str]:
    """What Meta's limits do to the campaign, one line each (control.status's meta state)."""
    lines = []
    if counters.get("status") == "scheduled":
        lines.append(f"scheduled: starts at {counters.get('start_at')}")
    if counters.get("status") == "paused" and counters.get("paused_until"):
        auto = "; it resumes by itself then" if counters.get("auto_resume") else ""
        lines.append(f"paused until about {counters['paused_until']}{auto}")
    template = counters.get("template") or {}
    if template.get("status") not in (None, "APPROVED"):
        lines.append(f"template {template['name']} ({template['language']}): {template['status']}"
                     + (f" ({template['reason']})" if template.get("reason") else ""))
    limit = counters.get("messaging_limit")
    if limit:
        lines.append(limit["message"])
    for wait in counters.get("waiting") or []:
        if wait["reason"] != "messaging limit":
            lines.append(f"{_count(wait['rows'], 'row')} wait: {wait['reason']}, until {wait['last']}")
    for failure in counters.get("failures") or []:
        code = f"{failure['code']} " if failure["code"] is not None else ""
        lines.append(f"{failure['stage']} failures: {failure['rows']:,} x {code}{failure['title']}")
    for answer in counters.get("not_now") or []:
        lines.append(f"{_count(answer['rows'], 'row')} {answer['status']} with {answer['code']}: {answer['title']}")
    if counters.get("cost"):
        lines.append(_cost_line(counters["cost"]))
    return lines


def _estimate_line(cost: dict) -> str:
    """The estimate in one line (`cost.estimate_contacts`, `cost.campaign_cost`)."""
    if "error" in cost:
        return f"cost: unknown ({cost['error']})"
    estimate = cost["estimate"]
    assumed = ", category unknown: priced as marketing" if estimate["category_assumed"] else ""
    unpriced = f", {estimate['unpriced']:,} without a rate" if estimate["unpriced"] else ""
    return (f"cost: estimate {cost['currency']} {estimate['amount']:,.2f} for "
            f"{_count(estimate['messages'], 'message')} ({estimate['category']}{assumed}{unpriced}; "
            f"Meta's rates of {cost['rates']['effective']})")


def _cost_line(cost: dict) -> str:
    """Estimate and actual cost in one line (`cost.campaign_cost`)."""
    if "error" in cost:
        return _estimate_line(cost)
    actual, currency = cost["actual"], cost["currency"]
    line = f"{_estimate_line(cost)}; actual {currency} {actual['amount']:,.2f} for {_count(actual['messages'], 'charged message')}"
    extra = [f"{actual['free']:,} free" if actual["free"] else "",
             f"{actual['unreported']:,} delivered without a pricing report yet" if actual["unreported"] else "",
             f"{actual['unpriced']:,} without a rate" if actual["unpriced"] else ""]
    extra = [e for e in extra if e]
    return line + (f" ({', '.join(extra)})" if extra else "")


def _cmd_campaign_status(args: argparse.Namespace) -> int:
    from sendonce import control

    counters = control.status(_conn(), args.campaign_id)
    if args.json:
        print(json.dumps(counters))
    else:
        _print_status(counters)
    return 0


def _cmd_campaign_failures(args: argparse.Namespace) -> int:
    from sendonce import failures

    page = failures.failed_rows(_conn(), args.campaign_id, args.limit, args.after)
    if args.json:
        print(json.dumps(page))
        return 0
    for row in page["rows"]:
        code = row["code"] if row["code"] is not None else "-"
        print(f"{row['queue_id']:>12}  {row['to']:>15}  {row['stage']:8}  {code!s:>7}  {row['title']}"
              + (f"  ({row['error']})" if row["error"] and row["stage"] == "send" else ""))
    if not page["rows"]:
        print(f"campaign {page['campaign_id']}: no failed rows" + (f" after {args.after}" if args.after else ""))
    elif page["next_after"]:
        print(f"more: sendonce campaign failures {page['campaign_id']} --after {page['next_after']}")
    return 0


def _cmd_campaign_export(args: argparse.Namespace) -> int:
    from sendonce import export

    conn = _conn()
    if not args.output or args.output == "-":
        export.export_csv(conn, args.campaign_id, sys.stdout)
        return 0
    # Written next to the target and renamed when complete: a file named OUTPUT is always a whole export.
    target = Path(args.output)
    partial = target.with_name(f".{target.name}.partial")
    try:
        with partial.open("w", encoding="utf-8", newline="") as out, _progress(0, "export", sys.stderr.isatty()) as bar:
            written = export.export_csv(conn, args.campaign_id, out, on_progress=bar.update)
        partial.replace(target)
    finally:
        partial.unlink(missing_ok=True)
    if args.json:
        print(json.dumps({"campaign_id": args.campaign_id, "rows": written, "output": str(target)}))
    else:
        print(f"campaign {args.campaign_id}: {written:,} rows written to {target}", file=sys.stderr)
    return 0


def _watch_line(counters: dict, width: int = 30) -> str:
    """One line of `campaign watch`: status, a progress bar of the rows done, the numbers."""
    done = counters["recipients"] - counters["pending"]
    filled = int(width * done / counters["recipients"]) if counters["recipients"] else width
    line = (f"{counters['status']:9} [{'#' * filled}{'.' * (width - filled)}] {done:,}/{counters['recipients']:,}  "
            + "  ".join(f"{key} {counters[key]:,}" for key in ("sent", "delivered", "read", "failed", "cancelled",
                                                                "pending")))
    limit = counters.get("messaging_limit") or {}
    if counters.get("pause_reason"):
        line += f"  ({counters['pause_reason']})"
    elif limit.get("waiting"):
        line += f"  ({limit['message']})"
    return line


def _cmd_campaign_watch(args: argparse.Namespace) -> int:
    from sendonce import control

    conn = _conn()
    redraw = sys.stdout.isatty() and not args.json
    last = None
    while True:
        counters = control.status(conn, args.campaign_id, with_cost=False)
        line = _watch_line(counters)
        if line != last and args.json:
            print(json.dumps(counters), flush=True)  # one object per change (JSON lines)
        elif line != last:
            print(f"\r{line}\033[K" if redraw else line, end="" if redraw else "\n", flush=True)
        last = line
        # Ended: completed or cancelled, or nothing pending (recompute_counters completes it within a minute).
        if counters["status"] in ("completed", "cancelled") or (counters["pending"] == 0 and counters["status"] == "running"):
            if redraw:
                print()
            return 0
        time.sleep(args.interval)


def _cmd_campaign_list(args: argparse.Namespace) -> int:
    from sendonce import control

    rows = control.list_campaigns(_conn(), args.limit)
    if args.json:
        print(json.dumps(rows))
        return 0
    print(f"{'campaign':36}  {'status':9}  {'recipients':>10}  {'pending':>8}  {'sent':>8}  {'failed':>8}  name")
    for r in rows:
        print(
            f"{r['campaign_id']:36}  {r['status']:9}  {r['recipients']:>10,}  {r['pending']:>8,}  {r['sent']:>8,}  "
            f"{r['failed']:>8,}  {r['name']}"
        )
    return 0


def _cmd_campaign_control(args: argparse.Namespace) -> int:
    from sendonce import control

    conn = _conn()
    action = args.action
    if action == "pause":
        result = control.pause(conn, args.campaign_id)
    elif action == "resume":
        result = control.resume(conn, args.campaign_id, send_queue_url(), force=args.force)
    elif action == "cancel":
        result = control.cancel(conn, args.campaign_id)
    else:
        result = control.retry_failed(conn, args.campaign_id, send_queue_url(), args.include_unconfirmed)
    if args.json:
        print(json.dumps(result))
        return 0
    extra = {k: result[k] for k in ("enqueued", "rows_cancelled", "rows_retried", "unconfirmed_not_retried") if k in result}
    print(f"{action}: " + ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in extra.items()) if extra else f"{action}: done")
    _print_status(result)
    return 0


def _cmd_reset_stuck(args: argparse.Namespace) -> int:
    from sendonce import recovery
    from sendonce.config import get_settings

    conn = _conn()
    result = recovery.reset_stuck(conn)
    unblocked = recovery.unblock(conn)
    if args.json:
        print(json.dumps({**result, **unblocked}))
        return 0
    if unblocked["started"] or unblocked["resumed"] or unblocked["released"]:
        print(f"reset-stuck: {_count(len(unblocked['started']), 'scheduled campaign')} started, "
              f"{_count(len(unblocked['resumed']), 'campaign')} resumed (auto-resume), "
              f"{_count(unblocked['released'], 'waiting row')} enqueued")
    if not any(result.values()):
        print("reset-stuck: no stuck rows")
        return 0
    print(
        f"reset-stuck: {_count(result['reset'], 'stuck row')} back to ready, {result['enqueued']} enqueued; "
        f"{result['recovered']} written from the batch journal; {result['failed']} failed as unconfirmed; "
        f"{result['cancelled']} cancelled"
    )
    if result["resent_without_evidence"]:
        print(
            f"  {result['resent_without_evidence']} of them may have been sent already (no evidence either way; "
            f"AMBIGUOUS_POLICY={get_settings().ambiguous_policy})"
        )
    return 0


def _cmd_recompute(args: argparse.Namespace) -> int:
    from sendonce import control

    campaigns = control.recompute(_conn())
    completed = sum(s == "completed" for _, s, _ in campaigns)
    stalled = [c for c, _, is_stalled in campaigns if is_stalled]
    if args.json:
        print(json.dumps({
            "recomputed": len(campaigns),
            "completed": completed,
            "stalled": len(stalled),
            "campaigns": [{"campaign_id": str(c), "status": s, "stalled": st} for c, s, st in campaigns],
        }))
    else:
        print(f"recomputed {len(campaigns)} campaigns, {completed} completed")
        for campaign_id in stalled:
            print(f"  campaign {campaign_id} is running with rows pending and its counters have not moved")
    return 0


def _cmd_limit_set(args: argparse.Namespace) -> int:
    from sendonce import messaging_limit

    result = messaging_limit.set_limit(_conn(), args.phone_number_id, args.value, args.portfolio)
    if args.json:
        print(json.dumps(result))
    elif not result["known"]:
        print(f"messaging limit of {args.phone_number_id}: unknown (its campaigns are not held back)")
    else:
        print(f"messaging limit of {args.phone_number_id} (portfolio {result['portfolio_id']}): "
              f"{messaging_limit.tier_name(result['limit'])}")
    return 0


def _cmd_limit_show(args: argparse.Namespace) -> int:
    from sendonce import messaging_limit
    from sendonce.repository import meta

    conn = _conn()
    numbers = [args.phone_number_id] if args.phone_number_id else [r["phone_number_id"] for r in meta.limits(conn)]
    shown = [{"phone_number_id": n, **messaging_limit.usage(conn, n)} for n in numbers]
    if args.json:
        print(json.dumps(shown))
        return 0
    if not shown:
        print(f"no messaging limit is known: campaigns are not held back ({messaging_limit.UNKNOWN})")
    for limit in shown:
        print(f"{limit['phone_number_id']}: {limit['message']}"
              + (f", next room at {limit['next_room_at']}" if limit.get("next_room_at") else ""))
    return 0


def _cmd_dlq_list(args: argparse.Namespace) -> int:
    from sendonce.repository.recovery import dead_letters

    letters = dead_letters(_conn(), args.limit)
    if args.json:
        print(json.dumps(letters, default=str))
        return 0
    print(f"{len(letters)} dead letters (newest first); failed rows are listed by `campaign status` and retried by "
          "`campaign retry-failed`")
    for letter in letters:
        print(f"  {letter['received_at']:%Y-%m-%d %H:%M:%S}  {letter['message_id']}  {letter['reason']}: {letter['body'][:80]!r}")
    return 0


def _cmd_dlq_redrive(args: argparse.Namespace) -> int:
    from sendonce import recovery
    from sendonce.config import get_settings, require

    moved = recovery.redrive(require(get_settings().dlq_url, "DLQ_URL"), send_queue_url())
    if args.json:
        print(json.dumps({"moved": moved}))
    else:
        print(f"moved {moved} messages from the DLQ back to the send queue")
    return 0


def _cmd_bench(args: argparse.Namespace) -> int:
    from dataclasses import asdict

    from sendonce.local.bench import run_bench

    if not 1 <= args.batch_size <= MAX_BENCH_BATCH or not 1 <= args.concurrency <= MAX_BENCH_CONCURRENCY:
        raise CampaignInputError(f"--batch-size must be 1 to {MAX_BENCH_BATCH} and --concurrency 1 to "
                                 f"{MAX_BENCH_CONCURRENCY}")
    if args.ceiling:
        return _bench_ceiling(args)
    if args.messages < 10 or args.baseline_messages < 1:
        raise CampaignInputError("--messages must be at least 10 and --baseline-messages at least 1")
    result = run_bench(args.messages, args.latency_ms / 1000, args.baseline_messages, args.concurrency,
                       args.batch_size, args.idempotency_store or "dynamodb")
    if args.json:
        print(json.dumps(asdict(result)))
        return 0
    print(
        f"sender: {result.messages} messages in batches of {result.batch_size}, {result.concurrency} sender "
        f"environment(s), Graph latency {result.graph_latency_ms} ms, idempotency store {result.idempotency_store} "
        f"({result.database})"
    )
    if result.deferred or result.ambiguous:
        print(f"  {result.sent} sent; {result.deferred} deferred (their send slot passed before they started: sent "
              f"again later) and {result.ambiguous} without an answer (reset_stuck's)")
    print(f"  {result.messages_per_second} messages/s, {result.lambda_ms_per_message} ms of handler time and "
          f"{result.cpu_ms_per_message} ms of CPU per message")
    print(
        f"  per message: {result.pg_round_trips_per_message} PostgreSQL round trips, "
        f"{result.ddb_requests_per_message} DynamoDB requests, {result.graph_requests_per_message} Graph requests"
    )
    print(f"  per batch: claim {result.claim_ms_per_batch} ms, finalize {result.finalize_ms_per_batch} ms; "
          f"handler p50 {result.batch_ms_p50} ms, p99 {result.batch_ms_p99} ms")
    print(f"seed's per-message flow: {result.baseline_messages} messages, {result.baseline_messages_per_second} messages/s")
    print(f"speedup: {result.speedup_vs_seed_baseline}x; recipients sent twice: {result.duplicates}")
    return 0


def _bench_ceiling(args: argparse.Namespace) -> int:
    from sendonce.local import ceiling

    if args.mps is not None and not 1 <= args.mps <= 1000:
        raise CampaignInputError("--mps must be 1 to 1,000 (Meta's ceiling per number)")
    if not 1 <= args.seconds <= 600:
        raise CampaignInputError("--seconds must be 1 to 600")

    def progress(run: dict) -> None:
        if not args.json:
            verdict = "fed" if ceiling.fed(run) else "NOT fed"
            print(f"  limit {run['configured_mps']:>5,}/s: achieved {run['achieved_mps']:>7,}/s "
                  f"({run['achieved_share']:.0%}), 130429 x {run['throttled']}, sent twice {run['duplicates']}, "
                  f"{run['senders']} senders, {run['cpu_ms_per_message']} ms CPU per message, most accepted in one "
                  f"second {run['most_accepted_in_one_second']}: {verdict}", flush=True)

    if not args.json:
        print(f"ceiling run: {args.seconds:g} s per limit, Graph latency {args.latency_ms} ms, batches of "
              f"{args.batch_size}, idempotency store {args.idempotency_store or 'memory'}, the fake Graph refusing past the "
              "limit (130429)", flush=True)
    result = ceiling.ceiling(args.mps, args.seconds, args.latency_ms / 1000, args.batch_size,
                             args.idempotency_store or "memory", progress)
    if args.json:
        print(json.dumps(result))
    else:
        highest = result["highest_fed_mps"]
        print(f"highest limit fed on this machine ({result['cores']} cores): "
              f"{f'{highest:,} messages/s' if highest else 'none'}")
        print(textwrap.fill(result["extrapolation"]["method"], width=110, initial_indent="  ",
                            subsequent_indent="  "))
    return 0 if result["duplicates"] == 0 else 1


def _cmd_plan(args: argparse.Namespace) -> int:
    from sendonce import capacity

    measured = capacity.Measured()
    if args.bench:
        try:
            measured = capacity.Measured.from_bench_json(json.loads(Path(args.bench).read_text(encoding="utf-8")))
        except (OSError, ValueError) as exc:  # unreadable, not JSON (a ValueError), or not a bench document
            raise CampaignInputError(f"--bench {args.bench}: {exc}") from None
    try:
        plan = capacity.plan(args.recipients, args.mps, args.batch_size, args.graph_latency_ms, args.memory_mb,
                             measured, args.max_connections)
    except ValueError as exc:
        raise CampaignInputError(str(exc)) from None
    print(json.dumps(plan) if args.json else capacity.format_plan(plan))
    return 0


def _cmd_local_run(args: argparse.Namespace) -> int:
    from sendonce.local import run

    if not 1 <= args.contacts <= MAX_LOCAL_CONTACTS:
        raise CampaignInputError(f"--contacts must be between 1 and {MAX_LOCAL_CONTACTS:,}")
    if not 1 <= args.senders <= 32:
        raise CampaignInputError("--senders must be between 1 and 32")
    with _terminate_as_interrupt():
        report = run.local_run(contact_count=args.contacts, chaos=args.chaos, seed=args.seed, senders=args.senders,
                               progress=run.print_progress)
    if args.json:
        print(json.dumps(run.report_json(report), default=str))
    else:
        print("\n".join(run.report_lines(report)))
    return 0 if report.ok else 1


def _cmd_local_up(args: argparse.Namespace) -> int:
    from sendonce.local.up import local_up

    with _terminate_as_interrupt():
        local_up(lambda line: print(line, flush=True), senders=args.senders)
    return 0


@contextmanager
def _terminate_as_interrupt():
    """SIGTERM stops a local stack the way Ctrl-C does: everything it started is stopped and deleted."""

    def interrupt(signum, frame):
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


class _Stderr:
    """Writes to whatever sys.stderr is at the time (it is swapped under test runners)."""

    def write(self, text: str) -> int:
        return sys.stderr.write(text)

    def flush(self) -> None:
        sys.stderr.flush()


class _Parser(argparse.ArgumentParser):
    """argparse, whose usage errors become the JSON error object when the command line asks for --json."""

    json_errors = False  # set by `main` for the one command line it parses

    def error(self, message: str):
        if _Parser.json_errors:
            print(json.dumps({"error": {"code": "bad_request", "message": f"{self.prog}: {message}"}}))
            raise SystemExit(2)
        super().error(message)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser for every command."""
    parser = _Parser(
        prog="sendonce",
        description="Exactly-once WhatsApp template campaigns.",
        epilog=f"Each command's --help names the environment it needs ({LOCAL_HINT}).",
    )
    parser.add_argument("--version", action="version", version=f"sendonce {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    migrate = commands.add_parser("migrate", **_help("migrate", "apply the SQL migrations to DATABASE_URL"))
    migrate.add_argument("--json", action="store_true", help="print one JSON object")
    migrate.set_defaults(func=_cmd_migrate, environment="migrate")

    campaign = commands.add_parser("campaign", help="create and control campaigns").add_subparsers(
        dest="action", required=True
    )
    create = campaign.add_parser(
        "create", **_help("campaign create", "create a campaign from a contacts CSV and enqueue it")
    )
    create.add_argument("--name", required=True)
    create.add_argument("--template", required=True, help="approved template name")
    create.add_argument("--language", required=True, help="template language code, e.g. en_US")
    create.add_argument("--phone-number-id", required=True, help="the WhatsApp business phone number id")
    source = create.add_mutually_exclusive_group(required=True)
    source.add_argument("--contacts", help="CSV with a 'phone' column and optional param1..paramN")
    source.add_argument("--from-campaign", metavar="CAMPAIGN_ID",
                        help="retarget: the contacts of another campaign's --audience, with their parameters")
    create.add_argument("--audience", choices=("not-delivered", "not-read", "failed", "read"),
                        help="with --from-campaign: failed at the send, or never reported delivered; sent and "
                        "never reported read; failed at the send; reported read")
    create.add_argument("--default-country", help="ISO country (IN, US) for numbers without a country code")
    create.add_argument("--id", help="the campaign's UUID (default: a new one); running again with it cannot create twice")
    create.add_argument(
        "--dry-run",
        action="store_true",
        help="check the file, the arguments and (with WHATSAPP_BUSINESS_ACCOUNT_ID) the template, and print what "
        "would be created; needs no database (but --from-campaign reads it), queue or AWS, "
        "writes nothing (exit 0 if there is a valid contact, else 2)",
    )
    create.add_argument(
        "--header-media", metavar="KIND:URL",
        help="the header media of a template with an IMAGE, VIDEO or DOCUMENT header, e.g. image:https://...",
    )
    create.add_argument(
        "--start-at", metavar="TIME",
        help="start then, not now: an ISO time with its zone (2026-12-01T09:00:00+05:30); until then the campaign "
        "is `scheduled`, nothing is enqueued, and `campaign cancel` cancels it",
    )
    create.add_argument(
        "--send-window", metavar="HH:MM-HH:MM",
        help="quiet hours: send only inside this daily window of each recipient's local time (e.g. 09:00-20:00; "
        "22:00-06:00 spans midnight); the others wait for their window",
    )
    create.add_argument(
        "--time-zone", default="UTC",
        help="with --send-window: the zone of numbers that span several (the USA, Brazil...; default UTC)",
    )
    create.add_argument(
        "--auto-resume", action="store_true",
        help="resume by itself when what paused it is over (its template approved again, a spam-limit pause ended)",
    )
    create.add_argument(
        "--allow-unchecked-template", action="store_true",
        help="create it even when the Graph API cannot be reached to check the template (said in the output)",
    )
    create.add_argument("--json", action="store_true", help="print one JSON object")
    # The environment is checked after the file is read (see _cmd_campaign_create), and not for --dry-run.
    create.set_defaults(func=_cmd_campaign_create, environment=None)

    enqueue = campaign.add_parser(
        "enqueue", **_help("campaign enqueue", "re-enqueue a campaign's ready rows (harmless to repeat)")
    )
    enqueue.add_argument("campaign_id")
    enqueue.add_argument("--json", action="store_true", help="print one JSON object")
    enqueue.set_defaults(func=_cmd_campaign_enqueue, environment="campaign enqueue")

    status = campaign.add_parser(
        "status", **_help("campaign status", "a campaign's numbers (one definition for every view)")
    )
    status.add_argument("campaign_id")
    status.add_argument("--json", action="store_true", help="print one JSON object")
    status.set_defaults(func=_cmd_campaign_status, environment="campaign status")

    failures = campaign.add_parser(
        "failures", **_help("campaign failures", "the failed rows: at the send, or reported by Meta's webhooks")
    )
    failures.add_argument("campaign_id")
    failures.add_argument("--limit", type=int, default=50, help="how many (1 to 1000, default 50)")
    failures.add_argument("--after", type=int, default=0, help="rows after this row id (the page before's last)")
    failures.add_argument("--json", action="store_true", help="print one JSON object")
    failures.set_defaults(func=_cmd_campaign_failures, environment="campaign failures")

    watching = campaign.add_parser(
        "watch", **_help("campaign watch", "redraw the numbers and a progress bar until the campaign ends")
    )
    watching.add_argument("campaign_id")
    watching.add_argument("--interval", type=float, default=2.0, help="seconds between reads (0.2 to 60, default 2)")
    watching.add_argument("--json", action="store_true", help="print the numbers as one JSON object per change")
    watching.set_defaults(func=_cmd_campaign_watch, environment="campaign watch")

    exporting = campaign.add_parser(
        "export", **_help("campaign export", "every row as CSV: phone, params, status, WAMID, delivery, error")
    )
    exporting.add_argument("campaign_id")
    exporting.add_argument("--output", "-o", help="the CSV file to write (default: standard output)")
    exporting.add_argument("--json", action="store_true",
                           help="errors, and with --output the summary, as one JSON object (the CSV goes to the file)")
    exporting.set_defaults(func=_cmd_campaign_export, environment="campaign export")

    listing = campaign.add_parser("list", **_help("campaign list", "the newest campaigns with their numbers"))
    listing.add_argument("--limit", type=int, default=50, help="how many (1 to 1000, default 50)")
    listing.add_argument("--json", action="store_true", help="print a JSON array")
    listing.set_defaults(func=_cmd_campaign_list, environment="campaign list")

    for action, text in (
        ("pause", "stop sending; queued messages are acknowledged unsent and kept for resume"),
        ("resume", "continue a paused campaign: re-enqueue its ready rows"),
        ("cancel", "pending rows become cancelled; sends in flight finish and are counted"),
        ("retry-failed", ("failed rows back to ready and enqueued (not opted out, not 131049 < 24 h, no WAMID, "
                          "not unconfirmed)")),
    ):
        control = campaign.add_parser(action, **_help(f"campaign {action}", text))
        control.add_argument("campaign_id")
        control.add_argument("--json", action="store_true", help="print one JSON object")
        control.set_defaults(func=_cmd_campaign_control, include_unconfirmed=False, force=False,
                             environment=f"campaign {action}")
        if action == "resume":
            control.add_argument(
                "--force", action="store_true",
                help="resume even while its template is known to be paused, disabled or rejected (when the webhook "
                "that approved it again never came)",
            )
        if action == "retry-failed":
            control.add_argument(
                "--include-unconfirmed",
                action="store_true",
                help="also resend rows failed as `unconfirmed` (AMBIGUOUS_POLICY=fail): Meta may have accepted "
                "their first send, so those recipients may get the message twice",
            )

    maintenance = commands.add_parser(
        "reset-stuck", **_help("reset-stuck", "run reset_stuck once (AMBIGUOUS_POLICY, STUCK_AFTER_SECONDS)")
    )
    maintenance.add_argument("--json", action="store_true", help="print one JSON object")
    maintenance.set_defaults(func=_cmd_reset_stuck, environment="reset-stuck")
    recompute = commands.add_parser("recompute", **_help("recompute", "run recompute_counters once"))
    recompute.add_argument("--json", action="store_true", help="print one JSON object")
    recompute.set_defaults(func=_cmd_recompute, environment="recompute")

    dlq = commands.add_parser("dlq", help="messages whose retries ran out").add_subparsers(dest="action", required=True)
    limits = commands.add_parser(
        "limit", help="the business portfolio's messaging limit, per phone number"
    ).add_subparsers(dest="action", required=True)
    limit_set = limits.add_parser("set", **_help("limit set", "set a number's messaging limit (users per 24 h)"))
    limit_set.add_argument("phone_number_id")
    limit_set.add_argument("value", metavar="LIMIT", help="a number of users, a tier (TIER_2K ... TIER_UNLIMITED), unlimited, or "
                           "unknown (forget it: campaigns are not held back)")
    limit_set.add_argument("--portfolio", help="the business portfolio the number shares its limit with (default: "
                           "WHATSAPP_BUSINESS_ACCOUNT_ID, else the number itself)")
    limit_set.add_argument("--json", action="store_true", help="print one JSON object")
    limit_set.set_defaults(func=_cmd_limit_set, environment="limit set")
    limit_show = limits.add_parser("show", **_help("limit show", "the known limits and how much of them is used"))
    limit_show.add_argument("phone_number_id", nargs="?")
    limit_show.add_argument("--json", action="store_true", help="print a JSON array")
    limit_show.set_defaults(func=_cmd_limit_show, environment="limit show")

    dlq_list = dlq.add_parser(
        "list", **_help("dlq list", "dead letters: DLQ messages that named no row or could not be read")
    )
    dlq_list.add_argument("--limit", type=int, default=50, help="how many (1 to 1000, default 50)")
    dlq_list.add_argument("--json", action="store_true", help="print a JSON array")
    dlq_list.set_defaults(func=_cmd_dlq_list, environment="dlq list")
    redrive = dlq.add_parser(
        "redrive", **_help("dlq redrive", "move messages waiting on the DLQ back to the send queue")
    )
    redrive.add_argument("--json", action="store_true", help="print one JSON object")
    redrive.set_defaults(func=_cmd_dlq_redrive, environment="dlq redrive")

    bench = commands.add_parser("bench", help="measure the sender against the seed's per-message flow")
    bench.add_argument("--messages", type=int, default=2000, help="messages through the sender (default 2000)")
    bench.add_argument("--baseline-messages", type=int, default=200, help="messages through the seed's flow (default 200)")
    bench.add_argument(
        "--concurrency", type=int, default=4, help="concurrent sender invocations, as the event source runs them (default 4)"
    )
    bench.add_argument("--latency-ms", type=int, default=100, help="fake Graph API latency (default 100)")
    bench.add_argument("--batch-size", type=int, default=SENDER_BATCH_SIZE,
                       help=f"SQS messages per invocation (default {SENDER_BATCH_SIZE}, the stack's)")
    bench.add_argument("--idempotency-store", choices=("dynamodb", "memory"),
                       help="dynamodb: on moto (the default, but for --ceiling); memory: Powertools' persistence "
                            "layer on a dict, so moto's one-request-at-a-time server is not what is measured")
    bench.add_argument("--ceiling", action="store_true",
                       help="drive a campaign at a configured limit (--mps) with enough sender processes against the "
                            "fake Graph's cap; without --mps, find the highest limit this machine feeds")
    bench.add_argument("--mps", type=int, help="--ceiling: the limit to drive (default: search 25 ... 1,000)")
    bench.add_argument("--seconds", type=float, default=10, help="--ceiling: seconds of sending per limit (default 10)")
    bench.add_argument("--json", action="store_true", help="print one JSON object")
    bench.set_defaults(func=_cmd_bench)

    planning = commands.add_parser(
        "plan", help="capacity and cost of a campaign: Lambdas, connections, requests, AWS and Meta cost (docs/capacity.md)"
    )
    planning.add_argument("--recipients", type=int, required=True, help="messages to send")
    planning.add_argument("--mps", type=float, required=True, help="the phone number's rate (Meta: 80, or 1,000 upgraded)")
    planning.add_argument("--batch-size", type=int, default=SENDER_BATCH_SIZE,
                          help=f"SQS messages per sender invocation (default {SENDER_BATCH_SIZE}, the stack's)")
    planning.add_argument("--graph-latency-ms", type=float, default=250, help="Graph API answer time (default 250)")
    planning.add_argument("--memory-mb", type=int, default=512, help="the sender's memory (default 512)")
    planning.add_argument("--max-connections", type=int, help="PostgreSQL max_connections (default: db.t4g.medium's)")
    planning.add_argument("--bench", help="a `sendonce bench --json` output: its measured constants replace the defaults")
    planning.add_argument("--json", action="store_true", help="print one JSON object")
    planning.set_defaults(func=_cmd_plan)

    local = commands.add_parser("local", help="run sendonce on this machine").add_subparsers(
        dest="action", required=True
    )
    run = local.add_parser(
        "run",
        help="send a campaign end to end through every function of the stack, on embedded services",
        description="Send a generated campaign through every function of template.yaml on this machine (embedded "
        "PostgreSQL, a local SQS, moto's DynamoDB, the fake Graph API and its status webhooks) and report what "
        "Meta accepted against what the counters say. Needs no environment; DATABASE_URL is used when set.",
    )
    run.add_argument("--contacts", type=int, default=200, help="unique contacts to generate (default 200; the "
                     "incident's campaign had 20028)")
    run.add_argument("--chaos", action="store_true", help="inject faults: sender processes killed, PostgreSQL "
                     "connections cut, Graph errors, throttling, lost answers, webhook retries (see the README)")
    run.add_argument("--seed", type=int, default=1, help="seed of the contacts and of every chaos decision (default 1)")
    run.add_argument("--senders", type=int, default=4, help="concurrent sender environments (default 4)")
    run.add_argument("--json", action="store_true", help="print one JSON object at the end")
    run.set_defaults(func=_cmd_local_run)
    up = local.add_parser(
        "up",
        help="keep the local stack running and print the variables that point a shell at it",
        description="Start the whole local stack (as `local run` does, without a campaign) and keep it running: "
        "it prints the export lines (DATABASE_URL, SEND_QUEUE_URL, AWS endpoints and credentials, the campaigns "
        "API and webhook URLs) for every CLI command and the HTTP API. Ctrl-C stops it and deletes what it made.",
    )
    up.add_argument("--senders", type=int, default=2, help="concurrent sender environments (default 2)")
    up.set_defaults(func=_cmd_local_up)
    return parser


def _check_arguments(args: argparse.Namespace) -> None:
    """The checks every command's arguments get before its environment is looked at (ids, limits)."""
    from sendonce.control import check_limit

    if getattr(args, "campaign_id", None) is not None:
        args.campaign_id = _campaign_id(args.campaign_id)
    if getattr(args, "limit", None) is not None:
        check_limit(args.limit, "--limit")
    interval = getattr(args, "interval", None)
    if interval is not None and not 0.2 <= interval <= 60:
        raise CampaignInputError(f"--interval must be from 0.2 to 60 seconds, got {interval:g}")


def _schema_missing(exc: BaseException) -> str | None:
    """What PostgreSQL said when sendonce's tables are not there (a database never migrated); else None."""
    seen: BaseException | None = exc
    while seen is not None:
        if getattr(seen, "sqlstate", None) in _SCHEMA_MISSING:
            diag = getattr(seen, "diag", None)
            return (diag.message_primary if diag is not None else None) or str(seen).splitlines()[0]
        seen = seen.__cause__ or seen.__context__
    return None


def _failure(exc: BaseException) -> tuple[int, str, str] | None:
    """(exit code, error code, message) of an error the CLI reports in one line; None for a bug (traceback).

    The error codes are the HTTP API's: not_found, conflict, bad_request, unavailable.
    """
    for kinds, code in ERROR_CODES:
        if isinstance(exc, kinds):
            return 2, code, str(exc)
    if isinstance(exc, SendonceError):
        if missing := _schema_missing(exc):
            return 2, "bad_request", f"DATABASE_URL's database is not migrated ({missing}): run `sendonce migrate`"
        return 1, "unavailable", str(exc)
    # Driver and AWS errors that no sendonce function wrapped; only when their package is loaded at all.
    psycopg = sys.modules.get("psycopg")
    if psycopg is not None and isinstance(exc, psycopg.Error):
        return 1, "unavailable", f"PostgreSQL: {exc}"
    botocore = sys.modules.get("botocore.exceptions")
    if botocore is not None:
        setup = (botocore.NoRegionError, botocore.NoCredentialsError, botocore.PartialCredentialsError,
                 botocore.ProfileNotFound)
        if isinstance(exc, setup):
            return 2, "bad_request", f"AWS: {exc}; {LOCAL_HINT}"
        if isinstance(exc, (botocore.BotoCoreError, botocore.ClientError)):
            return 1, "unavailable", f"AWS: {exc}"
    return None


def _redact(text: str) -> str:
    """`text` without passwords: DATABASE_URL's, and any in a URL or a key=value connection string."""
    from sendonce.config import database_password

    password = database_password()
    if password and len(password) >= 3:
        text = text.replace(password, "***")
    # The placeholder in "expected postgresql://USER:PASSWORD@..." stays readable.
    text = _URL_PASSWORD.sub(lambda m: m.group(0) if m.group(2) == "PASSWORD" else f"{m.group(1)}***@", text)
    return _KEYWORD_PASSWORD.sub(r"\1***", text)


def _report(exc: BaseException, as_json: bool) -> int | None:
    """Print `exc` as one line (or one JSON object on stdout with --json); return the exit code, None for a bug."""
    failure = _failure(exc)
    if failure is None:
        return None
    exit_code, code, message = failure
    # One line: driver messages come with their own line breaks and hints.
    message = _redact(" ".join(message.split()))
    invalid = getattr(exc, "invalid_rows", [])
    if as_json:
        error: dict = {"code": code, "message": message}
        if invalid:
            error["invalid_rows"] = [{"line": r.line, "value": r.value, "reason": r.reason} for r in invalid]
        print(json.dumps({"error": error}))
    else:
        print(f"sendonce: error: {message}", file=sys.stderr)
        if invalid:
            from sendonce.contacts import invalid_lines

            for line in invalid_lines(invalid):
                print(f"  {line}", file=sys.stderr)
    return exit_code


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `sendonce` console script."""
    argv = sys.argv[1:] if argv is None else list(argv)
    # Handlers run in this process (and its children) print EMF metrics to stdout, which is the CLI's own.
    os.environ.setdefault("POWERTOOLS_METRICS_DISABLED", "true")
    _Parser.json_errors = "--json" in argv
    args = build_parser().parse_args(argv)
    # Logs are for operators and go to stderr, so stdout stays clean for --json.
    logger.registered_handler.setStream(_Stderr())
    default_level = "ERROR" if args.command in ("local", "bench") else "WARNING"
    logger.setLevel(os.environ.get("POWERTOOLS_LOG_LEVEL", default_level))
    try:
        _check_arguments(args)
        if getattr(args, "environment", None):
            check_environment(args.environment)
        return args.func(args)
    except KeyboardInterrupt:
        print("sendonce: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        exit_code = _report(exc, getattr(args, "json", False))
        if exit_code is None:
            raise
        return exit_code


if __name__ == "__main__":
    sys.exit(main())
