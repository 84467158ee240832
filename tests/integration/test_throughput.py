"""Throughput and backpressure: the shared rate limiter, throttling without loss, halting, the error-rate pause."""

from __future__ import annotations

from sendonce import control
from sendonce.cli import main
from sendonce.local.event_source import queue_depth
from sendonce.sqs import get_sqs_client
from tests.helpers import phone, queue_rows


def test_four_senders_at_ten_per_second_never_trip_a_twenty_per_second_throttle(
    make_campaign, graph, pg_conn, event_source, monkeypatch
):
    # Given a limit of 10 messages/s for the phone number, and a Graph that throttles past 20/s
    monkeypatch.setenv("WHATSAPP_MAX_MPS", "10")
    graph.throttle_mps = 20
    numbers = [phone(i) for i in range(40)]
    campaign_id = make_campaign(*numbers)

    # When four senders drain the queue at once
    event_source.concurrency = 4
    event_source.run_until_empty(timeout=120)

    # Then Meta never throttled, the pace held, and every recipient got exactly one message
    print(f"most sends in any second: {graph.max_rate()}")
    assert graph.throttled == 0
    assert graph.max_rate() <= 15  # slots are 100 ms apart; arrival jitter can squeeze a few into one window
    assert graph.accepted == {n: 1 for n in numbers}
    assert {r["status"] for r in queue_rows(pg_conn, campaign_id).values()} == {"sent"}


def test_throttle_storm_sends_every_row_once_and_burns_no_receives(
    make_campaign, graph, pg_conn, event_source, aws, monkeypatch
):
    # Given Meta throttles everyone twice (130429) and one recipient more often than the queue's
    # maxReceiveCount (5), and another hits the pair rate limit (131056); delays shortened for the test
    monkeypatch.setenv("THROTTLE_BASE_SECONDS", "0")
    # (and a visibility timeout no loaded batch outlasts, so any record failure would be a real one)
    get_sqs_client().set_queue_attributes(QueueUrl=aws.send_queue_url, Attributes={"VisibilityTimeout": "30"})
    numbers = [phone(i) for i in range(6)]
    for number in numbers:
        graph.plan(number, "error:130429", "error:130429")
    graph.plan(phone(0), *["error:130429"] * 5)
    graph.plan(phone(1), "error:131056", "error:131056")
    campaign_id = make_campaign(*numbers)

    # When the queue is drained
    event_source.run_until_empty(timeout=120)

    # Then every row was sent exactly once, none failed, and nothing reached the DLQ
    assert graph.accepted == {n: 1 for n in numbers}
    rows = queue_rows(pg_conn, campaign_id)
    assert {r["status"] for r in rows.values()} == {"sent"}
    assert rows[phone(0)]["attempts"] == 8
    assert queue_depth(aws.dlq_url) == 0 and event_source.stats.failures == 0


def test_pair_rate_limit_backs_off_for_that_recipient_only(make_campaign, graph, pg_conn, event_source):
    # Given one recipient who hits 131056 twice (back-off 1 s, then 4 s) next to one who does not
    graph.plan(phone(1), "error:131056", "error:131056")
    make_campaign(phone(1), phone(2))

    # When the queue is drained
    event_source.run_until_empty(timeout=60)

    # Then the other recipient went at once, and the throttled one after waiting 4^X seconds each time
    asked = [r["at"] for r in graph.requests if r["to"] == phone(1)]
    assert graph.accepted == {phone(1): 1, phone(2): 1}
    assert len(asked) == 3
    assert asked[1] - asked[0] >= 0.9 and asked[2] - asked[1] >= 3.9


def test_expired_token_pauses_within_one_batch_without_failing_rows(
    make_campaign, graph, pg_conn, event_source, monkeypatch, capsys
):
    # Given 25 recipients, sends paced 20/s, and Meta answering 190 (expired token) to the second one
    monkeypatch.setenv("WHATSAPP_MAX_MPS", "20")
    numbers = [phone(i) for i in range(25)]
    campaign_id = make_campaign(*numbers)
    first_batch_second = None

    def expire_token_on_second_request(to: str) -> None:
        nonlocal first_batch_second
        if len(graph.requests) == 1 and first_batch_second is None:
            first_batch_second = to
            graph.plan(to, "error:190")

    graph.on_request = expire_token_on_second_request

    # When one sender drains the queue
    event_source.concurrency = 1
    event_source.run_until_empty(timeout=60)

    # Then the campaign paused with the reason after at most one batch, and no row failed
    counters = control.status(pg_conn, campaign_id)
    assert counters["status"] == "paused" and "190" in counters["pause_reason"]
    assert counters["failed"] == 0
    assert len(graph.requests) <= 10
    assert main(["campaign", "status", campaign_id]) == 0 and "190" in capsys.readouterr().out

    # When the token is fixed and the campaign resumed
    graph.on_request = None
    assert main(["campaign", "resume", campaign_id]) == 0
    event_source.run_until_empty(timeout=60)

    # Then it finishes with exactly one message per recipient
    assert graph.accepted == {n: 1 for n in numbers}
    assert control.status(pg_conn, campaign_id)["sent"] == 25


def test_error_rate_over_threshold_pauses_campaign(make_campaign, graph, pg_conn, event_source, monkeypatch):
    # Given a window of 10 results and most recipients failing permanently
    monkeypatch.setenv("ERROR_RATE_WINDOW", "10")
    numbers = [phone(i) for i in range(40)]
    for number in numbers[:30]:
        graph.plan(number, "error:131026")
    campaign_id = make_campaign(*numbers)

    # When one sender drains the queue
    event_source.concurrency = 1
    event_source.run_until_empty(timeout=60)

    # Then the campaign paused on its error rate before sending everything
    counters = control.status(pg_conn, campaign_id)
    assert counters["status"] == "paused"
    assert counters["pause_reason"].startswith("error rate:")
    assert counters["pending"] > 0


def test_bench_json_counts_round_trips_and_requests(capsys, monkeypatch, database_url):
    # Given a small bench run on the test database (fast Graph: the figures, not the timing, are checked)
    import json

    monkeypatch.setenv("DATABASE_URL", database_url)

    # When it runs with --json
    assert main(["bench", "--messages", "40", "--baseline-messages", "5", "--latency-ms", "20", "--batch-size", "10",
                 "--json"]) == 0
    result = json.loads(capsys.readouterr().out)

    # Then every figure is there, counted: two statements per batch of 10, two DynamoDB requests per message
    # (idempotency put and update) and one per batch (the journal), one Graph request per message, nobody sent twice
    assert result["messages"] == 40 and result["duplicates"] == 0
    assert result["pg_round_trips_per_message"] == 0.2
    assert result["ddb_requests_per_message"] == 2.1
    assert result["graph_requests_per_message"] == 1.0
    assert result["idempotency_store"] == "dynamodb (moto)" and result["batch_size"] == 10
    for key in ("messages_per_second", "lambda_ms_per_message", "cpu_ms_per_message", "claim_ms_per_batch",
                "finalize_ms_per_batch", "baseline_messages_per_second", "speedup_vs_seed_baseline"):
        assert result[key] > 0


def test_bench_with_the_memory_store_and_batches_of_20_counts_what_is_left(capsys, monkeypatch, database_url):
    # Given the in-memory idempotency store (no DynamoDB request but the journal's) and batches of 20
    import json

    monkeypatch.setenv("DATABASE_URL", database_url)
    assert main(["bench", "--messages", "40", "--baseline-messages", "5", "--latency-ms", "20", "--batch-size", "20",
                 "--idempotency-store", "memory", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)

    # Then two statements per batch of 20, one journal put per batch, and every row sent once
    assert result["idempotency_store"].startswith("memory") and result["batch_size"] == 20
    assert (result["sent"], result["duplicates"]) == (40, 0)
    assert result["pg_round_trips_per_message"] == 0.1
    assert result["ddb_requests_per_message"] == 0.05
    assert result["cpu_ms_per_message"] > 0


def test_ceiling_run_feeds_a_small_limit_without_throttles_or_duplicates(capsys, monkeypatch, database_url):
    # Given a limit this machine feeds easily, against the fake Graph's cap at that limit
    import json

    monkeypatch.setenv("DATABASE_URL", database_url)
    assert main(["bench", "--ceiling", "--mps", "20", "--seconds", "3", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)

    # Then every row went out once, none throttled, at the limit; the extrapolation to 1,000/s says how
    assert (result["configured_mps"], result["throttled"], result["duplicates"]) == (20, 0, 0)
    assert result["runs"][0]["sent"] == result["runs"][0]["rows"] == 60
    assert 0 < result["achieved_mps"] <= 20 * 1.2
    assert result["extrapolation"]["lambda_concurrency"] > 0 and "CPU" in result["extrapolation"]["method"]
