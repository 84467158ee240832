"""Fault injection at every PostgreSQL statement of every handler, then the normal recovery, then G2, G3, G4.

For each scenario (a handler and the state it acts on), a clean run through the fault proxy lists the
statements the handler sends. Then, for every statement and every cut point (before it, after it was sent,
after its reply; for the sender also with PostgreSQL unreachable for the rest of the invocation, and with the
sender process killed there), the scenario runs again from scratch with that one fault, followed by what AWS,
Meta and the operator do anyway: SQS redelivers, dlq_handler settles dead messages, reset_stuck runs once
rows are past their window, the webhook receives Meta's statuses (where the scenario says so), and the
operator runs a command that failed once more. Then, over every row:

- G2: no recipient was accepted by Meta more than once, except through a resend reset_stuck made without any
  evidence (counted in send_queue.unconfirmed_resends; allowed only where a scenario really lost an answer);
- G3: every row ended `sent`, `failed` or `cancelled`;
- G4: every row Meta accepted is counted `sent` with a WAMID Meta gave, and the counters (the view and
  campaigns.total_*) equal a count of the rows.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass

import pytest

from sendonce import journal, messaging_limit, sqs, whatsapp
from sendonce.callback import sign
from sendonce.cli import main
from sendonce.local import reset_clients, services
from sendonce.local.fake_graph import WABA_ID
from sendonce.local.lambda_runtime import LocalContext, load_handler
from sendonce.local.pgproxy import WHENS
from sendonce.models import Disposition, QueueMessage
from sendonce.repository.sending import claim_rows
from tests.faults import PHONE_NUMBER_ID, PRICING, REPORT, World, drain, settle, violations
from tests.helpers import load_event, phone, post_statuses, settle_received, status_update, template_status

pytestmark = pytest.mark.faults

# The sender's invocation in these scenarios: with a 0.5 s Graph timeout it may start sends for 0.5 s after
# its claim and keeps finalizing until 4 s after it, so a database outage costs 4 s, not the stack's 30.
ACT_TIMEOUT = 6.0

# Imports the sender once, then forks one child per kill point: a child is ready in milliseconds, not seconds.
# It has started no thread when it forks, so the children inherit no lock held by another thread.
_ZYGOTE = """
import json, os, sys
from sendonce.local.lambda_runtime import LocalContext, load_handler
handler = load_handler("sender")
for line in sys.stdin:
    request = json.loads(line)
    pid = os.fork()
    if pid == 0:
        os.dup2(os.open(os.devnull, os.O_WRONLY), 1)  # its logs would mix with the answers on stdout
        os.environ.clear()
        os.environ.update(request["env"])
        handler(request["event"], LocalContext("sender", timeout_seconds=request["timeout"]))
        os._exit(0)
    print(pid, flush=True)
    os.waitpid(pid, 0)
    print("done", flush=True)
"""


# -- scenarios ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Scenario:
    """A handler, the state it acts on, and what AWS, Meta or the operator does when it failed."""

    name: str
    setup: Callable[[World], None]
    act: Callable[[World], bool]  # through the proxy; True when it succeeded
    recover: Callable[[World, bool], None] = lambda w, ok: None
    webhooks: bool = False
    outage: bool = False  # also with PostgreSQL unreachable for the rest of the act
    kill: bool = False  # also with the sender process killed at the cut


def _sender_act(w: World) -> bool:
    w.proxied()
    response = load_handler("sender")(w.event, LocalContext("sender", timeout_seconds=ACT_TIMEOUT))
    settle_received(w.event, {f["itemIdentifier"] for f in response["batchItemFailures"]})
    return True


def _setup_sender_deferring(w: World) -> None:
    # One row sent, one transient error, one throttled (re-enqueued in the finalize's transaction), one permanent.
    w.campaign((), ("error:131000",), ("error:130429",), ("error:131026",))
    w.event = w.receive(4)


def _setup_sender_plain(w: World) -> None:
    w.campaign((), ("error:131000",), ("error:131026",))
    w.event = w.receive(3)


LIMIT_WINDOW = "0.25"  # seconds: the messaging window, simulated


def _limited(w: World, limit: int) -> None:
    """The number's portfolio may message `limit` users per LIMIT_WINDOW seconds; Meta (the fake) enforces it too."""
    w.monkeypatch.setenv("MESSAGING_WINDOW_SECONDS", LIMIT_WINDOW)
    reset_clients()
    messaging_limit.set_limit(w.pg, PHONE_NUMBER_ID, str(limit))
    w.graph.set_messaging_limit(limit, window_seconds=float(LIMIT_WINDOW))


def _setup_sender_limited(w: World) -> None:
    # Four rows for a limit of two, all enqueued (as after a resume): the claim admits two, the others wait; one
    # of the admitted gets a transient error.
    _limited(w, 2)
    campaign_id = w.campaign((), ("error:131000",), (), (), enqueue=False)
    sqs.send_messages(w.aws.send_queue_url, [QueueMessage(r["id"], campaign_id, "setup") for r in w.rows()])
    w.event = w.receive(4)


def _setup_reset_stuck_waiting(w: World) -> None:
    # Rows whose wait is over (a 131049's day, room in the limit), and an auto-resume campaign whose template was
    # approved again: the schedule enqueues the rows and resumes the campaign.
    w.campaign((), (), enqueue=False)
    w.pg.execute("UPDATE send_queue SET wait_until = now() - interval '1 s', wait_reason = 'test'")
    paused = w.campaign((), ())
    w.pg.execute("UPDATE campaigns SET status = 'paused', paused_by = 'template', auto_resume = true, "
                 "paused_until = now() - interval '1 s' WHERE id = %s", (paused,))


def _setup_template_webhook(w: World) -> None:
    w.graph.add_template("order_update", "en_US", body="Hello {{1}}")
    w.campaign((), (), ())
    w.event = {"at": int(time.time())}  # the POST's time: Meta delivers the same notification again


def _template_webhook_act(w: World) -> bool:
    w.proxied()
    try:
        return template_status("PAUSED", title="FIRST_PAUSE", at=w.event["at"])["statusCode"] == 200
    except Exception:  # noqa: BLE001 - answered 5xx: Meta delivers the POST again
        return False


def _template_webhook_recover(w: World, ok: bool) -> None:
    # Meta delivers a POST until it is answered 200 (a 200 whose reply was lost too: delivered again, harmless).
    w.direct()
    assert template_status("PAUSED", title="FIRST_PAUSE", at=w.event["at"])["statusCode"] == 200
    paused = w.pg.execute("SELECT status, paused_by FROM campaigns").fetchone()
    assert paused == ("paused", "template"), paused
    drain(w, w.aws.send_queue_url, "sender")  # acknowledged unsent
    template_status("APPROVED", at=w.event["at"] + 1)
    assert main(["campaign", "resume", w.campaign_ids[0]]) == 0
    assert w.pg.execute("SELECT count(*) FROM meta_events").fetchone()[0] == 2


def _setup_reset_stuck(w: World) -> None:
    # Four stuck rows: two whose results only the journal has (the finalize never reached PostgreSQL), one whose
    # answer Meta never gave (the sender died waiting: really ambiguous), one claimed and never sent.
    campaign_id = w.campaign((), ("error:131026",), ("drop",), (), enqueue=False)
    ids = [r["id"] for r in w.rows()]
    tokens = [uuid.uuid4() for _ in range(3)]
    claims = {}
    for token, chunk in zip(tokens, (ids[:2], ids[2:3], ids[3:])):
        messages = [QueueMessage(i, campaign_id, "setup") for i in chunk]
        claims.update(claim_rows(w.pg, messages, token, 80, 10))
    journal.begin(tokens[0])
    results = {i: whatsapp.send_template(claims[i].row) for i in ids[:2]}
    journal.record(tokens[0], results)
    journal.begin(tokens[1])
    assert whatsapp.send_template(claims[ids[2]].row).disposition is Disposition.AMBIGUOUS
    w.pg.execute("UPDATE send_queue SET claimed_at = claimed_at - interval '601 s'")
    w.allowed_blind = 1


def _reset_stuck_act(w: World) -> bool:
    w.proxied()
    try:
        load_handler("reset_stuck")(load_event("reset_stuck_schedule.json"), LocalContext("reset_stuck"))
        return True
    except Exception:  # noqa: BLE001 - the next scheduled run is the recovery
        return False


def _setup_webhook(w: World) -> None:
    # A row whose answer was lost, a sent row, a sent row whose recipient then opts out, and that recipient's
    # row in another campaign, waiting.
    w.campaign((), ("drop",), ())
    drain(w, w.aws.send_queue_url, "sender")
    opted_out = w.rows()[2]["phone_number"]
    w.campaign((), enqueue=False, phones=[opted_out])


def _webhook_act(w: World) -> bool:
    rows = w.rows()
    key = w.pg.execute("SELECT callback_key FROM deployment").fetchone()[0]
    lost = rows[1]
    statuses = [
        status_update(w.graph.wamids[lost["phone_number"]][0], "sent", 100,
                      sign(key, str(lost["campaign_id"]), lost["id"]), to=lost["phone_number"]),
        status_update(rows[0]["whatsapp_message_id"], "delivered", 101, to=rows[0]["phone_number"], pricing=PRICING),
        status_update(rows[2]["whatsapp_message_id"], "failed", 102, code=131050, to=rows[2]["phone_number"]),
    ]
    w.statuses = statuses
    w.proxied()
    try:
        return post_statuses(statuses)["statusCode"] == 200
    except Exception:  # noqa: BLE001 - answered 5xx: Meta delivers the POST again
        return False


def _webhook_recover(w: World, ok: bool) -> None:
    w.direct()
    if not ok:
        assert post_statuses(w.statuses)["statusCode"] == 200
    w.allowed_blind = 0
    # Meta's pricing report was applied once the POST went through: the delivered row is billable
    delivered = w.statuses[1]["id"]
    assert w.pg.execute("SELECT billable FROM send_queue WHERE whatsapp_message_id = %s", (delivered,)).fetchone() == (True,)


def _setup_dlq(w: World) -> None:
    # A message whose receives ran out (its row still ready), an unreadable one, one naming no row.
    campaign_id = w.campaign((), enqueue=False)
    row_id = w.rows()[0]["id"]
    arn = f"arn:aws:sqs:{services.REGION}:123456789012:dlq"
    w.event = {"Records": [
        {"messageId": f"m{i}", "receiptHandle": "r", "body": body, "attributes": {"ApproximateReceiveCount": "6"},
         "messageAttributes": {}, "md5OfBody": "", "eventSource": "aws:sqs", "eventSourceARN": arn,
         "awsRegion": services.REGION}
        for i, body in enumerate([QueueMessage(row_id, campaign_id, "e1").body(), "{broken",
                                  QueueMessage(999_999, campaign_id, "e1").body()])
    ]}


def _dlq_act(w: World) -> bool:
    w.proxied()
    try:
        load_handler("dlq_handler")(w.event, LocalContext("dlq_handler"))
        return True
    except Exception:  # noqa: BLE001 - the DLQ's event source delivers the batch again
        return False


def _dlq_recover(w: World, ok: bool) -> None:
    w.direct()
    if not ok:
        load_handler("dlq_handler")(w.event, LocalContext("dlq_handler"))
    assert w.pg.execute("SELECT count(*) FROM dead_letters").fetchone()[0] == 2


CREATE_ID = "7c1e3f55-0d7a-4a8e-9d0c-3b5f6e2a1c90"


def _setup_create(w: World) -> None:
    # With the template checked (read from the Graph API, kept in the cache) and a messaging limit of two: one
    # row waits for room.
    w.monkeypatch.setenv("WHATSAPP_BUSINESS_ACCOUNT_ID", WABA_ID)
    w.graph.add_template("order_update", "en_US", body="Hello {{1}}")
    _limited(w, 2)
    w.csv = w.folder / "contacts.csv"
    w.csv.write_text("phone,param1\n" + "".join(f"+{phone(i)},Asha\n" for i in range(3)))
    w.graph.plan(phone(1), "error:131026")
    w.campaign_ids.append(CREATE_ID)


def _create(w: World) -> int:
    return main(["campaign", "create", "--id", CREATE_ID, "--name", "faults", "--template", "order_update",
                 "--language", "en_US", "--phone-number-id", PHONE_NUMBER_ID, "--contacts", str(w.csv)])


def _create_act(w: World) -> bool:
    w.proxied()
    return _create(w) == 0


def _create_recover(w: World, ok: bool) -> None:
    # The operator's way after an error (README): the same command again; "already exists" means the rows were
    # written, so enqueue them (harmless to repeat).
    w.direct()
    if not ok and _create(w) == 2:
        assert main(["campaign", "enqueue", CREATE_ID]) == 0


def _control(action: str, *extra: str) -> Callable[[World], bool]:
    def act(w: World) -> bool:
        w.proxied()
        return main(["campaign", action, w.campaign_ids[0], *extra]) == 0

    return act


def _rerun(action: str, then: Callable[[World], None] = lambda w: None) -> Callable[[World, bool], None]:
    def recover(w: World, ok: bool) -> None:
        w.direct()
        if not ok:
            assert main(["campaign", action, w.campaign_ids[0]]) == 0
        then(w)

    return recover


def _setup_pause(w: World) -> None:
    w.campaign((), (), ())


def _resume_after_pause(w: World) -> None:
    drain(w, w.aws.send_queue_url, "sender")  # paused: acknowledged unsent
    assert main(["campaign", "resume", w.campaign_ids[0]]) == 0


def _setup_resume(w: World) -> None:
    w.campaign((), (), ())
    assert main(["campaign", "pause", w.campaign_ids[0]]) == 0
    drain(w, w.aws.send_queue_url, "sender")


def _setup_cancel(w: World) -> None:
    # Sent rows, and rows still waiting.
    w.campaign((), ())
    drain(w, w.aws.send_queue_url, "sender")
    with w.pg.transaction():
        w.pg.execute("INSERT INTO send_queue (campaign_id, phone_number) SELECT id, %s FROM campaigns", (phone(91),))
        w.pg.execute("INSERT INTO send_queue (campaign_id, phone_number) SELECT id, %s FROM campaigns", (phone(92),))


def _setup_retry_failed(w: World) -> None:
    w.campaign(("error:131026",), (), ())
    drain(w, w.aws.send_queue_url, "sender")


def _setup_recompute(w: World) -> None:
    w.campaign((), ("error:131026",))
    drain(w, w.aws.send_queue_url, "sender")


def _recompute_act(w: World) -> bool:
    w.proxied()
    try:
        load_handler("recompute_counters")(load_event("recompute_counters_schedule.json"), LocalContext("recompute"))
        return True
    except Exception:  # noqa: BLE001 - the next scheduled run
        return False


SCENARIOS = [
    Scenario("sender (deferred row)", _setup_sender_deferring, _sender_act, outage=True, kill=True),
    Scenario("sender (deferred row, with webhooks)", _setup_sender_deferring, _sender_act, webhooks=True),
    Scenario("sender", _setup_sender_plain, _sender_act),
    Scenario("sender (messaging limit)", _setup_sender_limited, _sender_act, kill=True),
    Scenario("reset_stuck", _setup_reset_stuck, _reset_stuck_act),
    Scenario("reset_stuck (with webhooks)", _setup_reset_stuck, _reset_stuck_act, webhooks=True),
    Scenario("reset_stuck (waits over, auto-resume)", _setup_reset_stuck_waiting, _reset_stuck_act),
    Scenario("webhook", _setup_webhook, _webhook_act, _webhook_recover),
    Scenario("webhook (template status)", _setup_template_webhook, _template_webhook_act, _template_webhook_recover),
    Scenario("dlq_handler", _setup_dlq, _dlq_act, _dlq_recover),
    Scenario("campaign create", _setup_create, _create_act, _create_recover),
    Scenario("campaign pause", _setup_pause, _control("pause"), _rerun("pause", _resume_after_pause)),
    Scenario("campaign resume", _setup_resume, _control("resume"), _rerun("resume")),
    Scenario("campaign cancel", _setup_cancel, _control("cancel"), _rerun("cancel")),
    Scenario("campaign retry-failed", _setup_retry_failed, _control("retry-failed"), _rerun("retry-failed")),
    Scenario("recompute_counters", _setup_recompute, _recompute_act),
]


@pytest.fixture(scope="module")
def zygote():
    """A process that forks senders on request (see _ZYGOTE)."""
    process = subprocess.Popen([sys.executable, "-c", _ZYGOTE], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    yield process
    process.stdin.close()
    process.wait(timeout=30)


def _kill_act(w: World, zygote: subprocess.Popen, at: int, when: str) -> None:
    """The sender in a process of its own, SIGKILLed at the cut (no cleanup of any kind)."""
    w.proxied()
    child: list[int] = []
    w.proxy.inject(at=at, when=when, on_fault=lambda statement: os.kill(child[0], signal.SIGKILL))
    # A longer invocation than ACT_TIMEOUT: a child has no client yet (cold start) and is killed anyway.
    zygote.stdin.write(json.dumps({"env": dict(os.environ), "event": w.event, "timeout": ACT_TIMEOUT + 4}) + "\n")
    zygote.stdin.flush()
    child.append(int(zygote.stdout.readline()))
    assert zygote.stdout.readline().strip() == "done"
    settle_received(w.event, {r["messageId"] for r in w.event["Records"]})  # all of them come back


def _run_point(
    w: World, scenario: Scenario, at: int | None, when: str | None, mode: str, zygote: subprocess.Popen | None = None
) -> list[str]:
    """One injection point from scratch: setup, the act with its fault, recovery, settle; its violations."""
    w.fresh()
    w.webhooks = scenario.webhooks
    scenario.setup(w)
    if mode == "kill":
        # Killed after the journal said its sends may start, the sender may have had any row accepted and
        # nobody saw it: those resends are the policy's, and counted.
        w.allowed_blind = len(w.event["Records"])
        _kill_act(w, zygote, at, when)
        ok = False
    else:
        if at is not None:
            w.proxy.inject(at=at, when=when, outage=mode == "outage")
        ok = scenario.act(w)
        if at is not None and w.proxy.fired is None:
            return [f"the fault at statement {at} never fired"]
    w.proxy.heal()
    scenario.recover(w, ok)
    settle(w)
    return violations(w)


@pytest.mark.parametrize("scenario", SCENARIOS, ids=[s.name for s in SCENARIOS])
def test_every_statement_of_the_handler_survives_a_dropped_connection(world, zygote, scenario):
    # Given the scenario run once without a fault, listing its statements (and the invariants holding)
    assert _run_point(world, scenario, None, None, "clean") == []
    statements = [s.sql.strip().split("\n")[0][:60] for s in world.proxy.statements]
    assert statements, "the act sent no statement through the proxy"

    # When it runs again from scratch with the connection cut at each statement, each cut point, and (where the
    # handler retries within its invocation) PostgreSQL gone for the rest of it, or the sender process killed
    modes = ["blip"] + ["outage"] * scenario.outage + ["kill"] * scenario.kill
    points = [(at, when, mode) for mode in modes for at in range(1, len(statements) + 1) for when in WHENS]
    failures = {}
    for at, when, mode in points:
        found = _run_point(world, scenario, at, when, mode, zygote)
        if found:
            failures[f"{mode} {when} statement {at} ({statements[at - 1]})"] = found

    # Then, after the normal recovery, no point broke G2, G3 or G4
    REPORT.append(f"{scenario.name}: {len(statements)} statements, {len(points)} injection points, "
                  f"{len(failures)} broke an invariant")
    print(REPORT[-1])
    assert failures == {}
