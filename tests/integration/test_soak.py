"""A seeded soak: every fault at once, with concurrent senders and duplicate deliveries, then G2, G3, G4.

Three senders poll the queue (a batch is now and then delivered to two of them at once); the fake Graph
answers each recipient from a random plan (transient errors, bare 502s, throttling, pair-rate limits,
permanent errors, answers lost after Meta accepted, answers too slow to wait for); every PostgreSQL statement
of every handler may lose its connection before, during or after it (the fault proxy's chaos mode); Meta's
status webhooks arrive late, duplicated and out of order, and fail to be delivered when the database does;
reset_stuck and dlq_handler run on a timer; the operator enqueues the campaign again in the middle. Windows
are scaled down (STUCK_AFTER_SECONDS=8) so the soak takes seconds.

The fault plan is repeatable by seed: SENDONCE_SOAK_SEED=<n> (printed in the run's summary) replays it; thread
scheduling still varies from run to run.
"""

from __future__ import annotations

import os
import random
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import pytest

from sendonce.callback import sign
from sendonce.cli import main
from sendonce.local.lambda_runtime import LocalContext, load_handler
from tests.faults import AMBIGUOUS, REPORT, World, drain, receive_messages, settle, sqs_event, violations
from tests.helpers import load_event, post_statuses, settle_received, status_update

pytestmark = pytest.mark.faults

SEED = int(os.environ.get("SENDONCE_SOAK_SEED", "20261129"))
ROWS = 120
GRAPH_FAULTS = ["error:131000", "http:502", "error:130429", "error:131056", "error:131026", "drop", "slow:1", "error:1"]
SENDER_TIMEOUT = 8.0


def _sender_loop(w: World, rng: random.Random, stop: threading.Event) -> None:
    """One sender's event source; a batch is sometimes delivered to a second invocation at the same time."""
    handler = load_handler("sender")
    while not stop.is_set():
        messages = receive_messages(w.aws.send_queue_url)
        if not messages:
            time.sleep(0.1)
            continue
        event = sqs_event(w.aws.send_queue_url, messages)
        copies = 2 if rng.random() < 0.15 else 1
        with ThreadPoolExecutor(copies) as pool:
            results = list(pool.map(_invoke, [handler] * copies, [event] * copies))
        settle_received(event, set().union(*results))


def _invoke(handler, event: dict) -> set[str]:
    """One invocation of the sender on `event`: the ids of the records that come back."""
    try:
        response = handler(event, LocalContext("sender", timeout_seconds=SENDER_TIMEOUT))
        return {f["itemIdentifier"] for f in response["batchItemFailures"]}
    except Exception:  # noqa: BLE001 - a crashed invocation: the whole batch comes back
        return {r["messageId"] for r in event["Records"]}


def _webhooks(w: World, rng: random.Random, key: str, campaign_id: str, ids: dict[str, int]) -> None:
    """Meta's statuses for what it accepted so far: shuffled, some twice, `delivered` often before `sent`."""
    statuses = []
    for to, wamids in list(w.graph.wamids.items()):
        for wamid in wamids:
            if wamid in w.posted or rng.random() < 0.3:  # late: next round
                continue
            callback = sign(key, campaign_id, ids[to])
            statuses += [status_update(wamid, "sent", 100, callback, to=to),
                         status_update(wamid, "delivered", 101, callback, to=to)] * rng.choice((1, 1, 2))
            w.posted.add(wamid)
    rng.shuffle(statuses)
    try:
        if statuses and post_statuses(statuses)["statusCode"] != 200:
            raise RuntimeError("webhook refused")
    except Exception:  # noqa: BLE001 - Meta retries an unanswered POST: post these again next round
        w.posted -= {s["id"] for s in statuses}


def test_soak_with_every_fault_at_once_keeps_every_guarantee(world, monkeypatch):
    # Given a campaign whose recipients each get a random plan of Graph faults, windows scaled down, and a fault
    # plan drawn from the seed
    w = world
    w.fresh()
    rng = random.Random(SEED)
    for name, value in {"STUCK_AFTER_SECONDS": "8", "MAX_SLOT_WAIT_SECONDS": "1", "WHATSAPP_MAX_MPS": "20"}.items():
        monkeypatch.setenv(name, value)
    plans = [tuple(rng.choices(GRAPH_FAULTS, k=rng.choice((0, 0, 1, 2)))) for _ in range(ROWS)]
    campaign_id = w.campaign(*plans)
    rows = w.rows()
    ids = {r["phone_number"]: r["id"] for r in rows}
    key = w.pg.execute("SELECT callback_key FROM deployment").fetchone()[0]

    # When three senders, reset_stuck, dlq_handler, the webhook and the operator all run through a proxy that
    # drops PostgreSQL connections at random statements
    w.proxied()
    w.proxy.chaos(0.15, SEED)
    stop = threading.Event()
    senders = [threading.Thread(target=_sender_loop, args=(w, random.Random(SEED + i), stop)) for i in range(3)]
    for sender in senders:
        sender.start()
    deadline = time.monotonic() + 90
    enqueued_again = False
    try:
        while time.monotonic() < deadline:
            time.sleep(1)
            _webhooks(w, rng, key, campaign_id, ids)
            try:
                load_handler("reset_stuck")(load_event("reset_stuck_schedule.json"), LocalContext("reset_stuck"))
            except Exception:  # noqa: BLE001 - the next run
                pass
            drain(w, w.aws.dlq_url, "dlq_handler")
            if not enqueued_again and rng.random() < 0.3:
                enqueued_again = main(["campaign", "enqueue", campaign_id]) == 0
            pending = w.pg.execute("SELECT count(*) FROM send_queue WHERE status IN ('ready', 'processing')").fetchone()[0]
            if not pending:
                break
    finally:
        stop.set()
        for sender in senders:
            sender.join()
        chaos_faults = len(w.proxy.faults)
        w.proxy.chaos(0, 0)
        w.proxy.heal()

    # Then, after the normal recovery, every guarantee holds; a resend without evidence happened only to a row
    # whose answer Meta's side really lost
    settle(w)
    ambiguous = Counter(r["to"] for r in w.graph.requests if r["fault"].split(":")[0] in AMBIGUOUS)
    w.allowed_blind = sum(ambiguous.values())
    found = violations(w)
    found += [f"G2: row {r['id']} resent without evidence {r['unconfirmed_resends']} times, "
              f"{ambiguous[r['phone_number']]} answers lost"
              for r in w.rows() if r["unconfirmed_resends"] > ambiguous[r["phone_number"]]]
    statuses = Counter(r["status"] for r in w.rows())
    REPORT.append(
        f"soak (SENDONCE_SOAK_SEED={SEED}): {ROWS} rows, {len(w.graph.requests)} Graph requests, "
        f"{chaos_faults} connections dropped, {sum(ambiguous.values())} answers lost, "
        f"{sum(r['unconfirmed_resends'] for r in w.rows())} resent without evidence, final {dict(statuses)}, "
        f"{len(found)} violations"
    )
    print(REPORT[-1])
    assert found == []
