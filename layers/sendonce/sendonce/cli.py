"""The `sendonce` command line."""

from __future__ import annotations

import argparse
import json
import os
import sys

from sendonce import __version__
from sendonce.config import send_queue_url
from sendonce.errors import (
    CampaignInputError,
    CampaignNotFoundError,
    CampaignStateError,
    ConfigError,
    ContactsError,
    MigrationError,
    SendonceError,
)
from sendonce.observability import logger

# Exit codes: 0 done, 1 the operation failed, 2 bad input (argparse uses 2 as well).
INPUT_ERRORS = (
    CampaignInputError, CampaignNotFoundError, CampaignStateError, ContactsError, ConfigError, MigrationError
)


def _cmd_migrate(args: argparse.Namespace) -> int:
    from sendonce import db
    from sendonce.migrate import migrate

    applied = migrate(db.get_conn())
    print("applied: " + ", ".join(applied) if applied else "database is up to date")
    return 0


def _progress(total: int, label: str, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=total, desc=label, unit="msg", file=sys.stderr, disable=not enabled, leave=False)


def _cmd_campaign_create(args: argparse.Namespace) -> int:
    from sendonce import campaigns, contacts, db

    campaign = campaigns.NewCampaign(
        name=args.name, template_name=args.template, language_code=args.language, phone_number_id=args.phone_number_id,
        **({"id": args.id} if args.id else {}),
    )
    campaign.validate()
    queue_url = send_queue_url()
    contact_list = contacts.read_csv(args.contacts, default_region=args.default_country)
    with _progress(len(contact_list.contacts), "enqueue", sys.stderr.isatty()) as bar:
        created = campaigns.create_campaign(db.get_conn(), campaign, contact_list, queue_url, on_progress=bar.update)
    if args.json:
        print(json.dumps(created.as_json()))
        return 0
    print(
        f"campaign {created.campaign_id}: {created.recipients} recipients, {len(created.invalid)} invalid, "
        f"{created.duplicates} duplicates, {created.enqueued} enqueued"
    )
    for row in created.invalid:
        print(f"  line {row.line}: {row.value!r}: {row.reason}")
    return 0


def _cmd_campaign_enqueue(args: argparse.Namespace) -> int:
    from sendonce import campaigns, db

    queue_url = send_queue_url()
    with _progress(0, "enqueue", sys.stderr.isatty()) as bar:
        sent = campaigns.enqueue_campaign(db.get_conn(), args.campaign_id, queue_url, on_progress=bar.update)
    print(f"campaign {args.campaign_id}: {sent} ready rows enqueued")
    return 0


def _print_status(counters: dict) -> None:
    reason = f" ({counters['pause_reason']})" if counters.get("pause_reason") else ""
    print(f"campaign {counters['campaign_id']} {counters['name']!r}: {counters['status']}{reason}")
    from sendonce.control import COUNTER_KEYS

    print("  " + "  ".join(f"{k:>10}" for k in COUNTER_KEYS))
    print("  " + "  ".join(f"{counters[k]:>10,}" for k in COUNTER_KEYS))


def _cmd_campaign_status(args: argparse.Namespace) -> int:
    from sendonce import control, db

    counters = control.status(db.get_conn(), args.campaign_id)
    if args.json:
        print(json.dumps(counters))
    else:
        _print_status(counters)
    return 0


def _cmd_campaign_list(args: argparse.Namespace) -> int:
    from sendonce import control, db

    rows = control.list_campaigns(db.get_conn(), args.limit)
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
    from sendonce import control, db

    conn = db.get_conn()
    action = args.action
    if action == "pause":
        result = control.pause(conn, args.campaign_id)
    elif action == "resume":
        result = control.resume(conn, args.campaign_id, send_queue_url())
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
    from sendonce import db, recovery

    print(json.dumps(recovery.reset_stuck(db.get_conn())))
    return 0


def _cmd_recompute(args: argparse.Namespace) -> int:
    from sendonce import control, db

    campaigns = control.recompute(db.get_conn())
    print(f"recomputed {len(campaigns)} campaigns, {sum(s == 'completed' for _, s in campaigns)} completed")
    return 0


def _cmd_dlq_list(args: argparse.Namespace) -> int:
    from sendonce import db
    from sendonce.repository.recovery import dead_letters

    letters = dead_letters(db.get_conn(), args.limit)
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
    print(f"moved {moved} messages from the DLQ back to the send queue")
    return 0


def _cmd_bench(args: argparse.Namespace) -> int:
    from dataclasses import asdict

    from sendonce.local.bench import run_bench

    if args.messages < 10 or args.baseline_messages < 1:
        raise CampaignInputError("--messages must be at least 10 and --baseline-messages at least 1")
    result = run_bench(args.messages, args.latency_ms / 1000, args.baseline_messages, args.concurrency)
    if args.json:
        print(json.dumps(asdict(result)))
        return 0
    print(
        f"sender: {result.messages} messages, {result.concurrency} concurrent invocation(s), "
        f"Graph latency {result.graph_latency_ms} ms ({result.database})"
    )
    print(f"  {result.messages_per_second} messages/s, {result.lambda_ms_per_message} ms of handler time per message")
    print(
        f"  per message: {result.pg_round_trips_per_message} PostgreSQL round trips, "
        f"{result.ddb_requests_per_message} DynamoDB requests, {result.graph_requests_per_message} Graph requests"
    )
    print(f"seed's per-message flow: {result.baseline_messages} messages, {result.baseline_messages_per_second} messages/s")
    print(f"speedup: {result.speedup_vs_seed_baseline}x; recipients sent twice: {result.duplicates}")
    return 0


def _cmd_local_run(args: argparse.Namespace) -> int:
    from sendonce.local import run

    if args.contacts < 1:
        raise CampaignInputError("--contacts must be at least 1")
    report = run.local_run(contact_count=args.contacts, chaos=args.chaos, concurrency=args.concurrency)
    if args.json:
        print(json.dumps(run.report_json(report)))
    else:
        print("\n".join(run.report_lines(report)))
    return 0 if report.ok else 1


class _Stderr:
    """Writes to whatever sys.stderr is at the time (it is swapped under test runners)."""

    def write(self, text: str) -> int:
        return sys.stderr.write(text)

    def flush(self) -> None:
        sys.stderr.flush()


def build_parser() -> argparse.ArgumentParser:
    """The argument parser for every command."""
    parser = argparse.ArgumentParser(prog="sendonce", description="Exactly-once WhatsApp template campaigns.")
    parser.add_argument("--version", action="version", version=f"sendonce {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    commands.add_parser("migrate", help="apply the SQL migrations to DATABASE_URL").set_defaults(func=_cmd_migrate)

    campaign = commands.add_parser("campaign", help="create and control campaigns").add_subparsers(
        dest="action", required=True
    )
    create = campaign.add_parser("create", help="create a campaign from a contacts CSV and enqueue it")
    create.add_argument("--name", required=True)
    create.add_argument("--template", required=True, help="approved template name")
    create.add_argument("--language", required=True, help="template language code, e.g. en_US")
    create.add_argument("--phone-number-id", required=True, help="the WhatsApp business phone number id")
    create.add_argument("--contacts", required=True, help="CSV with a 'phone' column and optional param1..paramN")
    create.add_argument("--default-country", help="ISO country (IN, US) for numbers without a country code")
    create.add_argument("--id", help="the campaign's UUID (default: a new one); running again with it cannot create twice")
    create.add_argument("--json", action="store_true", help="print one JSON object")
    create.set_defaults(func=_cmd_campaign_create)

    enqueue = campaign.add_parser("enqueue", help="re-enqueue a campaign's ready rows (harmless to repeat)")
    enqueue.add_argument("campaign_id")
    enqueue.set_defaults(func=_cmd_campaign_enqueue)

    status = campaign.add_parser("status", help="a campaign's numbers (one definition for every view)")
    status.add_argument("campaign_id")
    status.add_argument("--json", action="store_true", help="print one JSON object")
    status.set_defaults(func=_cmd_campaign_status)

    listing = campaign.add_parser("list", help="the newest campaigns with their numbers")
    listing.add_argument("--limit", type=int, default=50)
    listing.add_argument("--json", action="store_true", help="print a JSON array")
    listing.set_defaults(func=_cmd_campaign_list)

    for action, text in (
        ("pause", "stop sending; queued messages are acknowledged unsent and kept for resume"),
        ("resume", "continue a paused campaign: re-enqueue its ready rows"),
        ("cancel", "pending rows become cancelled; sends in flight finish and are counted"),
        ("retry-failed", "failed rows back to ready and enqueued (not opted out, not 131049 < 24 h, no WAMID, "
                         "not unconfirmed)"),
    ):
        control = campaign.add_parser(action, help=text)
        control.add_argument("campaign_id")
        control.add_argument("--json", action="store_true", help="print one JSON object")
        control.set_defaults(func=_cmd_campaign_control, include_unconfirmed=False)
        if action == "retry-failed":
            control.add_argument(
                "--include-unconfirmed",
                action="store_true",
                help="also resend rows failed as `unconfirmed` (AMBIGUOUS_POLICY=fail): Meta may have accepted "
                "their first send, so those recipients may get the message twice",
            )

    maintenance = commands.add_parser("reset-stuck", help="run reset_stuck once (AMBIGUOUS_POLICY, STUCK_AFTER_SECONDS)")
    maintenance.set_defaults(func=_cmd_reset_stuck)
    commands.add_parser("recompute", help="run recompute_counters once").set_defaults(func=_cmd_recompute)

    dlq = commands.add_parser("dlq", help="messages whose retries ran out").add_subparsers(dest="action", required=True)
    dlq_list = dlq.add_parser("list", help="dead letters: DLQ messages that named no row or could not be read")
    dlq_list.add_argument("--limit", type=int, default=50)
    dlq_list.add_argument("--json", action="store_true", help="print a JSON array")
    dlq_list.set_defaults(func=_cmd_dlq_list)
    dlq.add_parser("redrive", help="move messages waiting on the DLQ back to the send queue").set_defaults(
        func=_cmd_dlq_redrive
    )

    bench = commands.add_parser("bench", help="measure the sender against the seed's per-message flow")
    bench.add_argument("--messages", type=int, default=2000, help="messages through the sender (default 2000)")
    bench.add_argument("--baseline-messages", type=int, default=200, help="messages through the seed's flow (default 200)")
    bench.add_argument(
        "--concurrency", type=int, default=4, help="concurrent sender invocations, as the event source runs them (default 4)"
    )
    bench.add_argument("--latency-ms", type=int, default=100, help="fake Graph API latency (default 100)")
    bench.add_argument("--json", action="store_true", help="print one JSON object")
    bench.set_defaults(func=_cmd_bench)

    local = commands.add_parser("local", help="run sendonce on this machine").add_subparsers(
        dest="action", required=True
    )
    run = local.add_parser("run", help="send a small campaign end to end on embedded PostgreSQL, moto, fake Graph")
    run.add_argument("--contacts", type=int, default=200, help="unique contacts to generate (default 200)")
    run.add_argument("--chaos", action="store_true", help="inject Graph API faults (5xx, 429, dropped answers)")
    run.add_argument("--concurrency", type=int, default=2, help="concurrent sender invocations (default 2)")
    run.add_argument("--json", action="store_true", help="print one JSON object")
    run.set_defaults(func=_cmd_local_run)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `sendonce` console script."""
    args = build_parser().parse_args(argv)
    # Logs are for operators and go to stderr, so stdout stays clean for --json.
    logger.registered_handler.setStream(_Stderr())
    default_level = "ERROR" if args.command in ("local", "bench") else "WARNING"
    logger.setLevel(os.environ.get("POWERTOOLS_LOG_LEVEL", default_level))
    try:
        return args.func(args)
    except INPUT_ERRORS as exc:
        print(f"sendonce: error: {exc}", file=sys.stderr)
        return 2
    except SendonceError as exc:
        print(f"sendonce: error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
