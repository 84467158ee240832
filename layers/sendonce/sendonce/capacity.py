"""Capacity and cost model: what a campaign of N recipients at R messages/s needs, and what it costs on AWS.

Pure arithmetic (no AWS, no database): `plan` returns a JSON-ready dict, `format_plan` the text `sendonce plan`
prints. The model, its formulas and which figures are measured or assumed are in docs/capacity.md. Meta's
per-message fees come from the rates file (`cost.load_rates`), never from a copy here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields, replace
from decimal import Decimal

from sendonce.config import FINALIZE_SECONDS, JOURNAL_SECONDS

# -- Meta (docs/capacity.md, "Meta's throughput") -------------------------------------------------------------
META_DEFAULT_MPS = 80  # per business phone number, by default
META_MAX_MPS = 1000  # after Meta's automatic upgrade; nothing above it exists

# -- AWS prices: us-east-1, on-demand, x86_64, without the free tier ------------------------------------------
PRICES_AS_OF = "2026-11"
PRICES = {
    "lambda_per_million_requests": 0.20,
    "lambda_per_gb_second": 0.0000166667,
    "sqs_per_million_requests": 0.40,  # standard queue; unconfirmed (docs/capacity.md)
    "dynamodb_per_million_wru": 0.625,  # on-demand, after the 2024-11-01 cut; unconfirmed
    "dynamodb_per_million_rru": 0.125,  # unconfirmed
    "api_gateway_http_per_million": 1.00,  # HTTP API, first 300M requests a month
    "cloudwatch_logs_per_gb": 0.50,  # ingestion, Standard class; unconfirmed
    "rds_proxy_per_vcpu_hour": 0.015,  # provisioned instances, at least 2 vCPUs; unconfirmed
}
HOURS_PER_MONTH = 730
GB = 1e9  # CloudWatch Logs ingestion is priced per GB; decimal GB here

# -- AWS limits -----------------------------------------------------------------------------------------------
ACCOUNT_CONCURRENCY = 1000  # the default Lambda concurrency quota of a Region
ESM_MAX_CONCURRENCY = 1000  # most batches one SQS event source mapping processes at once
ESM_START_CONCURRENCY = 5  # an SQS event source starts with five concurrent invocations ...
ESM_RAMP_PER_MINUTE = 300  # ... and adds up to 300 a minute while messages are waiting
LAMBDA_MB_PER_VCPU = 1769  # Lambda gives one full vCPU at 1,769 MB, CPU in proportion to memory below it

# -- The stack (template.yaml) and the sender's settings (config.py) ------------------------------------------
SENDER_TIMEOUT_SECONDS = 30  # SenderFunction Timeout
SENDER_BATCH_SIZE = 25  # SenderFunction's SQS event BatchSize (README, Figures: batch size)
MAX_SLOT_WAIT_SECONDS = 10  # MAX_SLOT_WAIT_SECONDS default
WHATSAPP_TIMEOUT_SECONDS = 10.0  # WHATSAPP_TIMEOUT_SECONDS default
WEBHOOK_RESERVED_CONCURRENCY = 10  # WebhookReservedConcurrency default
WEBHOOK_RATE_LIMIT = 500  # WebhookThrottlingRateLimit default, requests/s
# PostgreSQL connections besides the sender's and the webhook's (one per concurrent execution environment).
OTHER_CONNECTIONS = {
    "reset_stuck (one run at a time)": 1,
    "recompute_counters (one run at a time)": 1,
    "dlq_handler (SQS source, idle unless messages die)": 2,
    "campaigns_api (10 requests/s throttle)": 2,
    "operators (sendonce CLI, psql)": 2,
}
RDS_PROXY_THRESHOLD = 0.8  # share of max_connections above which connections need RDS Proxy
STORM_CONCURRENCY = 100  # sender environments above which RDS Proxy is advised (connection storms)
# RDS's default max_connections is LEAST(DBInstanceClassMemory / 9531392, 5000): the examples' figures below.
# Examples: max_connections estimated from the formula (DBInstanceClassMemory is below the nominal memory),
# hourly price Single-AZ on-demand.
RDS_INSTANCES = {
    "db.t4g.medium": {"memory_gib": 4, "vcpus": 2, "max_connections": 405, "usd_per_hour": 0.065},
    "db.r6g.large": {"memory_gib": 16, "vcpus": 2, "max_connections": 1725, "usd_per_hour": 0.225},
}
DEFAULT_INSTANCE = "db.t4g.medium"

# -- Assumptions (docs/capacity.md, "Assumed") ----------------------------------------------------------------
CLAIM_MS = 20.0  # the gate (idempotency puts and the journal put, in parallel) and the claim statement
FINALIZE_MS = 20.0  # the finalize statement and the settle (idempotency updates, in parallel)
SQS_ENQUEUE_PER_MESSAGE = 0.1  # SendMessageBatch of 10 at campaign create
IDLE_POLLERS = 5  # long polls (20 s) the event source keeps while the queue is empty
LONG_POLL_SECONDS = 20
STATUSES_PER_MESSAGE = 3.0  # sent, delivered, read: one webhook POST each (an upper bound)
WEBHOOK_MS = 50.0  # one status POST: signature check and one UPDATE
LOG_BYTES_PER_BATCH = 2000  # the summary line, START/END/REPORT, the metrics' EMF document
LOG_BYTES_PER_NOT_SENT = 700  # one line per row not sent
NOT_SENT_SHARE = 0.05
LOG_BYTES_PER_STATUS = 1400  # the webhook's line, START/END/REPORT and the HTTP API's access log
META_MARKETS = ("India", "Brazil", "Indonesia", "Mexico", "United Kingdom", "Germany", "North America")


@dataclass(frozen=True)
class Measured:
    """The per-message figures `sendonce bench --json` measures (README, Figures).

    Attributes
    ----------
    cpu_ms_per_message
        CPU time of the sender per message, all its threads: 7.35 ms measured by `sendonce bench --json` (batches
        of 25, DynamoDB on moto: the botocore client's CPU is the sender's; 2026-11-30, README Figures). Your own
        `sendonce bench --json` replaces it (`sendonce plan --bench FILE`).
    pg_round_trips_per_message
        PostgreSQL round trips: a claim and a finalize per batch (None: 2 / batch size; bench, batches of 25:
        0.084).
    ddb_requests_per_message
        DynamoDB requests: the idempotency put and update, and one journal put per batch (None: 2 + 1 / batch
        size; bench: 2.04).
    graph_requests_per_message
        Graph API requests (bench: 1.0).
    """

    cpu_ms_per_message: float = 7.35
    pg_round_trips_per_message: float | None = None
    ddb_requests_per_message: float | None = None
    graph_requests_per_message: float = 1.0

    def for_batch(self, batch_size: int) -> Measured:
        """These figures, the ones left None counted for batches of `batch_size`."""
        return replace(
            self,
            pg_round_trips_per_message=(2 / batch_size if self.pg_round_trips_per_message is None
                                        else self.pg_round_trips_per_message),
            ddb_requests_per_message=(2 + 1 / batch_size if self.ddb_requests_per_message is None
                                      else self.ddb_requests_per_message),
        )

    @classmethod
    def from_bench_json(cls, data: dict) -> Measured:
        """The figures of a `sendonce bench --json` document; unknown keys are ignored, missing ones default.

        Raises
        ------
        ValueError
            A figure is not a finite number from 0.
        """
        document = data if isinstance(data, dict) else None
        if document is None:
            raise ValueError("a bench document is a JSON object (sendonce bench --json)")
        values = {}
        for field in fields(cls):
            if field.name not in document:
                continue
            value = document[field.name]
            number = not isinstance(value, bool) and isinstance(value, int | float | Decimal)
            if not (number and math.isfinite(value) and value >= 0):
                raise ValueError(f"{field.name} must be a finite number from 0, got {value!r}")
            values[field.name] = float(value)
        return cls(**values)


def _usd(amount: float) -> float:
    return round(amount, 4)


def plan(
    recipients: int,
    mps: float,
    batch_size: int = SENDER_BATCH_SIZE,
    graph_latency_ms: float = 250,
    memory_mb: int = 512,
    measured: Measured = Measured(),  # frozen: one shared default is safe
    rds_max_connections: int | None = None,
    *,
    claim_ms: float = CLAIM_MS,
    finalize_ms: float = FINALIZE_MS,
    statuses_per_message: float = STATUSES_PER_MESSAGE,
    webhook_ms: float = WEBHOOK_MS,
    messages_per_month: int | None = None,
    rates=None,
) -> dict:
    """What sending `recipients` messages at `mps` needs, and what it costs on AWS next to Meta's fees.

    The sender's batch takes (seconds)::

        batch = claim_ms/1000                                  gate + claim statement
              + batch_size * cpu_ms_per_message/1000 / vcpu   the handler's CPU, vcpu = min(1, memory_mb/1769)
              + batch_size / mps                              the batch's send slots on the shared schedule
              + graph_latency_ms/1000                         the last send's answer
              + finalize_ms/1000                              finalize statement + idempotency settle

    and by Little's law the senders needed are ``ceil(mps / batch_size * batch)``. Every per-million cost is
    a count per message times a price (`PRICES`, dated `PRICES_AS_OF`); the database instance and RDS Proxy are
    fixed monthly costs, spread over `messages_per_month` (default: this campaign once a month).

    Parameters
    ----------
    recipients
        Messages in the campaign (one per recipient).
    mps
        Messages per second of the business phone number: Meta allows 80, or 1,000 once upgraded.
    batch_size
        SQS messages per sender invocation (the event source's BatchSize).
    graph_latency_ms
        Time the Graph API takes to answer a send.
    memory_mb
        The sender's MemorySize.
    measured
        Per-message figures (`Measured.from_bench_json` of `sendonce bench --json`).
    rds_max_connections
        max_connections of your database; None takes the db.t4g.medium example.
    claim_ms, finalize_ms
        Assumed time of the claim phase and of the finalize phase of a batch.
    statuses_per_message
        Status webhooks Meta sends per message (sent, delivered, read), one POST each.
    webhook_ms
        Assumed duration of one webhook invocation.
    messages_per_month
        Messages a month the fixed costs are spread over; None = `recipients`.
    rates
        A `cost.Rates`; None reads the rates file (`cost.load_rates`).

    Returns
    -------
    dict
        JSON-ready sections: campaign, lambda, postgresql, requests, aws_cost, meta_fees.

    Raises
    ------
    ValueError
        An argument out of range, mps above Meta's ceiling (1,000 per phone number) included.
    """
    if isinstance(recipients, bool) or not isinstance(recipients, int) or recipients < 1:
        raise ValueError(f"recipients must be a whole number from 1, got {recipients!r}")
    if not (isinstance(mps, int | float) and math.isfinite(mps) and mps > 0):
        raise ValueError(f"mps must be a number above 0, got {mps!r}")
    if mps > META_MAX_MPS:
        raise ValueError(
            f"mps {mps:g} is above Meta's ceiling of {META_MAX_MPS:,} messages/s per business phone number "
            f"({META_DEFAULT_MPS} by default, {META_MAX_MPS:,} after the automatic upgrade): send from more numbers"
        )
    if not (isinstance(batch_size, int) and 1 <= batch_size <= 10_000):
        raise ValueError(f"batch_size must be from 1 to 10,000 (SQS), got {batch_size!r}")
    if not (128 <= memory_mb <= 10_240):
        raise ValueError(f"memory_mb must be from 128 to 10,240 (Lambda), got {memory_mb!r}")
    for name, value in (("graph_latency_ms", graph_latency_ms), ("claim_ms", claim_ms),
                        ("finalize_ms", finalize_ms), ("statuses_per_message", statuses_per_message),
                        ("webhook_ms", webhook_ms)):
        if not (math.isfinite(value) and value >= 0):
            raise ValueError(f"{name} must be a number from 0, got {value!r}")
    if rds_max_connections is not None and rds_max_connections < 1:
        raise ValueError(f"rds_max_connections must be from 1, got {rds_max_connections!r}")
    measured = measured.for_batch(batch_size)
    monthly = messages_per_month or recipients
    millions = recipients / 1e6

    # -- the campaign -------------------------------------------------------------------------------------
    duration = recipients / mps
    tier = ("within Meta's default 80 messages/s" if mps <= META_DEFAULT_MPS
            else "needs Meta's upgrade to 1,000 messages/s (unlimited messaging limit, quality medium or higher)")

    # -- Lambda: the sender ---------------------------------------------------------------------------------
    vcpu = min(1.0, memory_mb / LAMBDA_MB_PER_VCPU)
    cpu_batch = batch_size * measured.cpu_ms_per_message / 1000 / vcpu
    slots = batch_size / mps
    batch = claim_ms / 1000 + cpu_batch + slots + graph_latency_ms / 1000 + finalize_ms / 1000
    invocations = math.ceil(recipients / batch_size)
    batches_per_second = mps / batch_size
    concurrency = math.ceil(batches_per_second * batch - 1e-9)
    ceiling = min(ESM_MAX_CONCURRENCY, ACCOUNT_CONCURRENCY - WEBHOOK_RESERVED_CONCURRENCY)
    reachable_mps = min(float(mps), ceiling * batch_size / batch)
    ramp_minutes = max(0.0, (min(concurrency, ceiling) - ESM_START_CONCURRENCY) / ESM_RAMP_PER_MINUTE)
    send_by = SENDER_TIMEOUT_SECONDS - JOURNAL_SECONDS - FINALIZE_SECONDS - WHATSAPP_TIMEOUT_SECONDS
    slot_limit = min(MAX_SLOT_WAIT_SECONDS, send_by)
    longest = MAX_SLOT_WAIT_SECONDS + WHATSAPP_TIMEOUT_SECONDS + FINALIZE_SECONDS + JOURNAL_SECONDS
    gb_seconds = invocations * batch * memory_mb / 1024
    lam = {
        "invocations": invocations,
        "batches_per_second": batches_per_second,
        "batch_seconds": round(batch, 4),
        "batch_parts_seconds": {"claim": claim_ms / 1000, "cpu": round(cpu_batch, 4), "slots": round(slots, 4),
                                "graph_latency": graph_latency_ms / 1000, "finalize": finalize_ms / 1000},
        "vcpu": round(vcpu, 4),
        "concurrency": concurrency,
        "concurrency_ceiling": ceiling,
        "reachable_mps": round(reachable_mps, 1),
        "ramp_up_minutes": round(ramp_minutes, 3),
        "sender_max_concurrency": max(2, min(concurrency, ESM_MAX_CONCURRENCY)),
        "slots_fit": slots <= slot_limit,
        "slot_limit_seconds": slot_limit,
        "timeout_holds": batch <= SENDER_TIMEOUT_SECONDS and longest <= SENDER_TIMEOUT_SECONDS,
        "longest_batch_seconds": longest,
        "timeout_seconds": SENDER_TIMEOUT_SECONDS,
        "gb_seconds": round(gb_seconds, 1),
        "cpu_seconds": round(recipients * measured.cpu_ms_per_message / 1000, 1),
    }

    # -- the status webhooks ----------------------------------------------------------------------------------
    statuses_per_second = mps * statuses_per_message
    webhook_concurrency = math.ceil(statuses_per_second * webhook_ms / 1000 - 1e-9)
    webhook_gb_seconds = recipients * statuses_per_message * webhook_ms / 1000 * memory_mb / 1024
    webhook = {
        "posts_per_second": statuses_per_second,
        "concurrency": webhook_concurrency,
        "reserved_concurrency_default": WEBHOOK_RESERVED_CONCURRENCY,
        "rate_limit_default": WEBHOOK_RATE_LIMIT,
        "fits_defaults": (webhook_concurrency <= WEBHOOK_RESERVED_CONCURRENCY
                          and statuses_per_second <= WEBHOOK_RATE_LIMIT),
        "gb_seconds": round(webhook_gb_seconds, 1),
    }

    # -- PostgreSQL ---------------------------------------------------------------------------------------
    webhook_connections = max(webhook_concurrency, WEBHOOK_RESERVED_CONCURRENCY)
    others = sum(OTHER_CONNECTIONS.values())
    connections = min(concurrency, ceiling) + webhook_connections + others
    instance = None if rds_max_connections is not None else DEFAULT_INSTANCE
    limit = rds_max_connections if rds_max_connections is not None else RDS_INSTANCES[DEFAULT_INSTANCE]["max_connections"]
    threshold = math.floor(limit * RDS_PROXY_THRESHOLD)
    reasons = []
    if connections > threshold:
        reasons.append(f"{connections:,} connections exceed {RDS_PROXY_THRESHOLD:.0%} of max_connections "
                       f"{limit:,} ({threshold:,})")
    if concurrency > STORM_CONCURRENCY:
        reasons.append(f"{concurrency:,} sender environments opening connections as Lambda scales "
                       f"(+{ESM_RAMP_PER_MINUTE}/min): connection storms")
    verdict = "needed" if connections > threshold else ("advised" if reasons else "not needed")
    examples = {}
    for name, spec in RDS_INSTANCES.items():
        examples[name] = {
            "max_connections": spec["max_connections"],
            "proxy_above": math.floor(spec["max_connections"] * RDS_PROXY_THRESHOLD),
            "instance_usd_per_month": _usd(spec["usd_per_hour"] * HOURS_PER_MONTH),
            "proxy_usd_per_month": _usd(PRICES["rds_proxy_per_vcpu_hour"] * max(2, spec["vcpus"]) * HOURS_PER_MONTH),
        }
    proxy_monthly = (examples[instance]["proxy_usd_per_month"] if instance
                     else PRICES["rds_proxy_per_vcpu_hour"] * 2 * HOURS_PER_MONTH)
    pg = {
        "connections": connections,
        "connections_parts": {"sender": min(concurrency, ceiling), "webhook": webhook_connections, **OTHER_CONNECTIONS},
        "max_connections": limit,
        "instance": instance or "yours (--max-connections)",
        "sender_round_trips_per_second": round(mps * measured.pg_round_trips_per_message, 1),
        "webhook_statements_per_second": statuses_per_second,
        "rds_proxy": {"verdict": verdict, "reasons": reasons, "threshold": threshold,
                      "usd_per_month": _usd(proxy_monthly)},
        "instances": examples,
    }

    # -- requests per message ---------------------------------------------------------------------------------
    receive = 1 / batch_size
    delete = 1 / batch_size
    sqs_per_message = SQS_ENQUEUE_PER_MESSAGE + receive + delete
    log_bytes_sender = LOG_BYTES_PER_BATCH / batch_size + NOT_SENT_SHARE * LOG_BYTES_PER_NOT_SENT
    log_bytes_webhook = statuses_per_message * LOG_BYTES_PER_STATUS
    requests = {
        "sqs": {"send_message_batch": SQS_ENQUEUE_PER_MESSAGE, "receive_message": receive,
                "delete_message_batch": delete, "total": round(sqs_per_message, 4)},
        "dynamodb": {"wru": measured.ddb_requests_per_message, "rru": 0.0},
        "lambda": {"sender": 1 / batch_size, "webhook": statuses_per_message},
        "api_gateway": statuses_per_message,
        "graph": measured.graph_requests_per_message,
        "graph_per_second": mps * measured.graph_requests_per_message,
        "log_bytes": {"sender": round(log_bytes_sender, 1), "webhook": round(log_bytes_webhook, 1)},
    }

    # -- AWS cost per million messages --------------------------------------------------------------------------
    per_message_gb_s = batch * memory_mb / 1024 / batch_size
    items = {
        "sender Lambda requests": 1e6 / batch_size * PRICES["lambda_per_million_requests"] / 1e6,
        "sender Lambda GB-s": 1e6 * per_message_gb_s * PRICES["lambda_per_gb_second"],
        "SQS requests": sqs_per_message * PRICES["sqs_per_million_requests"],
        "DynamoDB writes": measured.ddb_requests_per_message * PRICES["dynamodb_per_million_wru"],
        "sender logs": log_bytes_sender * 1e6 / GB * PRICES["cloudwatch_logs_per_gb"],
        "webhook HTTP API": statuses_per_message * PRICES["api_gateway_http_per_million"],
        "webhook Lambda requests": statuses_per_message * PRICES["lambda_per_million_requests"],
        "webhook Lambda GB-s": 1e6 * statuses_per_message * webhook_ms / 1000 * memory_mb / 1024
        * PRICES["lambda_per_gb_second"],
        "webhook logs": log_bytes_webhook * 1e6 / GB * PRICES["cloudwatch_logs_per_gb"],
    }
    items = {k: _usd(v) for k, v in items.items()}
    sender_total = _usd(sum(v for k, v in items.items() if not k.startswith("webhook")))
    variable = _usd(sum(items.values()))
    fixed = {
        f"RDS {instance} Single-AZ": (_usd(RDS_INSTANCES[instance]["usd_per_hour"] * HOURS_PER_MONTH)
                                      if instance else None),
        "RDS Proxy": _usd(proxy_monthly) if verdict != "not needed" else 0.0,
        "SQS idle long polls": _usd(IDLE_POLLERS * 30 * 86400 / LONG_POLL_SECONDS
                                    * PRICES["sqs_per_million_requests"] / 1e6),
    }
    fixed_total = _usd(sum(v for v in fixed.values() if v is not None))
    cost = {
        "prices_as_of": PRICES_AS_OF,
        "region": "us-east-1, on-demand, x86_64, free tier not deducted",
        "per_million": items,
        "per_million_sender": sender_total,
        "per_million_total": variable,
        "campaign": _usd(variable * millions),
        "fixed_per_month": fixed,
        "fixed_per_month_total": fixed_total,
        "messages_per_month": monthly,
        "per_million_with_fixed": _usd(variable + fixed_total / (monthly / 1e6)),
    }

    # -- Meta's fees ----------------------------------------------------------------------------------------
    if rates is None:
        from sendonce.cost import load_rates

        rates = load_rates()
    markets = []
    for name in META_MARKETS:
        market = rates.markets.get(name)
        if not market:
            continue
        row = {"market": name}
        for category in ("marketing", "utility"):
            rate = market.get(category)
            fee = float(rate) * 1e6 if rate is not None else None
            row[category] = fee
            row[f"aws_share_{category}"] = round(variable / fee, 6) if fee else None
        markets.append(row)
    meta = {"currency": rates.currency, "effective": rates.effective.isoformat(), "source": rates.source,
            "per_million": markets}

    return {
        "inputs": {"recipients": recipients, "mps": mps, "batch_size": batch_size,
                   "graph_latency_ms": graph_latency_ms, "memory_mb": memory_mb,
                   "rds_max_connections": rds_max_connections, "claim_ms": claim_ms, "finalize_ms": finalize_ms,
                   "statuses_per_message": statuses_per_message, "webhook_ms": webhook_ms,
                   "measured": {f.name: getattr(measured, f.name) for f in fields(measured)}},
        "campaign": {"seconds": round(duration, 1), "minutes": round(duration / 60, 2),
                     "meta_tier": tier, "meta_default_mps": META_DEFAULT_MPS, "meta_max_mps": META_MAX_MPS},
        "lambda": lam,
        "webhook": webhook,
        "postgresql": pg,
        "requests_per_message": requests,
        "aws_cost": cost,
        "meta_fees": meta,
    }


def _n(value: float, digits: int = 0) -> str:
    return f"{value:,.{digits}f}"


def _money(value: float | None) -> str:
    if value is None:
        return "n/a"
    return f"${value:,.2f}" if value >= 1 else f"${value:,.4f}"


def format_plan(p: dict) -> str:
    """The text `sendonce plan` prints: a few aligned sections, numbers with thousands separators.

    Parameters
    ----------
    p
        What `plan` returned (or its JSON read back).
    """
    i, c, lam, w, pg, rq, cost, meta = (p["inputs"], p["campaign"], p["lambda"], p["webhook"], p["postgresql"],
                                        p["requests_per_message"], p["aws_cost"], p["meta_fees"])
    parts, proxy = lam["batch_parts_seconds"], pg["rds_proxy"]
    mps = _n(i["mps"], 0 if float(i["mps"]).is_integer() else 1)
    out = [
        (f"Plan: {_n(i['recipients'])} recipients at {mps} messages/s, batches of {i['batch_size']}, "
         f"Graph latency {_n(i['graph_latency_ms'])} ms, {_n(i['memory_mb'])} MB"),
        f"  campaign      {_n(c['seconds'])} s ({_n(c['minutes'], 1)} min); {c['meta_tier']}",
        "",
        "Lambda (sender)",
        f"  invocations   {_n(lam['invocations'])} ({_n(lam['batches_per_second'], 1)} batches/s)",
        (f"  batch         {lam['batch_seconds']:.3f} s = claim {parts['claim']:.3f} + CPU {parts['cpu']:.3f} "
         f"+ slots {parts['slots']:.3f} + Graph {parts['graph_latency']:.3f} + finalize {parts['finalize']:.3f}"),
        (f"  concurrency   {_n(lam['concurrency'])} (ceiling {_n(lam['concurrency_ceiling'])}): set "
         f"SenderMaxConcurrency={lam['sender_max_concurrency']}; ramp-up {_n(lam['ramp_up_minutes'] * 60)} s "
         f"(from {ESM_START_CONCURRENCY}, +{ESM_RAMP_PER_MINUTE}/min)"),
    ]
    if lam["reachable_mps"] < i["mps"]:
        out.append(f"  !! at most {_n(lam['reachable_mps'], 1)} messages/s within the concurrency ceiling")
    out += [
        (f"  timeout       {'holds' if lam['timeout_holds'] else 'DOES NOT HOLD'}: longest batch "
         f"{lam['longest_batch_seconds']:g} s of {lam['timeout_seconds']} s; a batch's slots "
         f"{'fit' if lam['slots_fit'] else 'DO NOT FIT'} within {lam['slot_limit_seconds']:g} s"),
        f"  compute       {_n(lam['gb_seconds'])} GB-s, {_n(lam['cpu_seconds'])} CPU-s",
        "",
        "Webhook (status POSTs)",
        (f"  POSTs         {_n(w['posts_per_second'])}/s, concurrency {_n(w['concurrency'])}: "
         + ("fits" if w["fits_defaults"] else "ABOVE")
         + f" the defaults (WebhookReservedConcurrency {w['reserved_concurrency_default']}, "
         f"WebhookThrottlingRateLimit {_n(w['rate_limit_default'])}/s)"),
        "",
        "PostgreSQL",
        f"  connections   {_n(pg['connections'])} of max_connections {_n(pg['max_connections'])} ({pg['instance']})",
        (f"  round trips   {_n(pg['sender_round_trips_per_second'], 1)}/s sender + "
         f"{_n(pg['webhook_statements_per_second'])}/s webhook"),
        (f"  RDS Proxy     {proxy['verdict']}"
         + (f": {'; '.join(proxy['reasons'])}" if proxy["reasons"] else
            f" (up to {_n(proxy['threshold'])} connections)")
         + f"; {_money(proxy['usd_per_month'])}/month when used"),
        "",
        "Requests per message",
        (f"  SQS {rq['sqs']['total']:.2f}, DynamoDB WRU {rq['dynamodb']['wru']:.2f}, Lambda "
         f"{rq['lambda']['sender']:.2f} + {rq['lambda']['webhook']:.2f} webhook, HTTP API {rq['api_gateway']:.2f}, "
         f"Graph {rq['graph']:.2f}, logs {_n(rq['log_bytes']['sender'])} + {_n(rq['log_bytes']['webhook'])} B"),
        "",
        f"AWS cost per million messages (prices as of {cost['prices_as_of']}, {cost['region']})",
    ]
    rows = [*cost["per_million"].items(), ("sender path (exactly-once)", cost["per_million_sender"]),
            ("total", cost["per_million_total"])]
    width = max(len(k) for k, _ in rows)
    out += [f"  {k:<{width}}  {'$' + format(v, ',.3f'):>9}" for k, v in rows]
    out.append(f"  this campaign: {_money(cost['campaign'])}")
    fixed = [f"{k} {_money(v)}" for k, v in cost["fixed_per_month"].items() if v]
    out += [
        f"  fixed per month: {', '.join(fixed)} = {_money(cost['fixed_per_month_total'])}",
        (f"  with the fixed costs over {_n(cost['messages_per_month'])} messages a month: "
         f"{_money(cost['per_million_with_fixed'])} per million"),
        "",
        (f"Meta's fees per million messages ({meta['currency']}, rates effective {meta['effective']}; "
         f"{meta['source']}), and AWS's total as a share of them"),
    ]
    width = max((len(m["market"]) for m in meta["per_million"]), default=6)
    for m in meta["per_million"]:
        cells = []
        for category in ("marketing", "utility"):
            fee, share = m[category], m[f"aws_share_{category}"]
            cells.append(f"{category} {_money(fee):>11} (AWS {share:.3%})" if fee else f"{category} n/a")
        out.append(f"  {m['market']:<{width}}  " + "   ".join(cells))
    return "\n".join(out)
