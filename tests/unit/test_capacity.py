"""The capacity model's arithmetic, on worked examples computed by hand (docs/capacity.md)."""

import json
from decimal import Decimal

import pytest
from sendonce import capacity
from sendonce.capacity import Measured, format_plan


def plan(*args, batch_size: int = 10, **kwargs) -> dict:
    """The worked examples below are for batches of 10 (the stack's default is `capacity.SENDER_BATCH_SIZE`)."""
    return capacity.plan(*args, batch_size=batch_size, **kwargs)
from sendonce.cost import parse_rates

NO_CPU = Measured(cpu_ms_per_message=0.0)

RATES = parse_rates(
    {"currency": "USD", "effective": "2026-01-01", "source": "test", "default_market": "Other",
     "markets": {"India": {"calling_codes": ["91"], "marketing": Decimal("0.01"), "utility": Decimal("0.002")},
                 "Other": {"marketing": Decimal("0.05"), "utility": Decimal("0.01")}}},
    "test",
)


def test_one_million_at_1000_mps_without_cpu():
    p = plan(1_000_000, 1000, measured=NO_CPU, rates=RATES)
    assert p["campaign"]["seconds"] == 1000
    assert p["lambda"]["invocations"] == 100_000
    assert p["lambda"]["batches_per_second"] == 100
    # 0.020 claim + 10/1000 slots + 0.250 Graph + 0.020 finalize = 0.300 s; 100 batches/s x 0.3 s = 30 exactly
    assert p["lambda"]["batch_seconds"] == pytest.approx(0.300)
    assert p["lambda"]["concurrency"] == 30
    # 100,000 invocations x 0.3 s x 0.5 GB
    assert p["lambda"]["gb_seconds"] == pytest.approx(15_000)
    assert p["aws_cost"]["per_million"]["sender Lambda GB-s"] == pytest.approx(0.25, abs=1e-4)
    assert p["aws_cost"]["per_million"]["sender Lambda requests"] == pytest.approx(0.02)
    assert p["aws_cost"]["per_million"]["SQS requests"] == pytest.approx(0.12)  # 0.3 requests x $0.40
    assert p["aws_cost"]["per_million"]["DynamoDB writes"] == pytest.approx(1.3125)  # 2.1 WRU x $0.625
    # (30 - 5) / 300 per minute
    assert p["lambda"]["ramp_up_minutes"] == pytest.approx(0.08, abs=0.005)


def test_cpu_takes_a_share_of_a_vcpu_by_memory():
    # 10 messages x 5 ms = 50 ms of CPU; a full vCPU at 1,769 MB: batch 0.350 s -> 35 senders
    p = plan(1_000_000, 1000, memory_mb=1769, measured=Measured(cpu_ms_per_message=5.0), rates=RATES)
    assert p["lambda"]["batch_seconds"] == pytest.approx(0.350)
    assert p["lambda"]["concurrency"] == 35
    assert p["lambda"]["cpu_seconds"] == 5000
    # 512 MB: 50 ms / (512/1769) = 172.75 ms -> batch 0.47275 s -> 47.3 -> 48
    assert plan(1_000_000, 1000, measured=Measured(cpu_ms_per_message=5.0), rates=RATES)["lambda"]["concurrency"] == 48


def test_80_mps():
    p = plan(1_000_000, 80, measured=NO_CPU, rates=RATES)
    assert p["campaign"]["seconds"] == 12_500
    assert "80" in p["campaign"]["meta_tier"]
    # 0.020 + 10/80 + 0.250 + 0.020 = 0.415 s; 8 batches/s x 0.415 = 3.32 -> 4
    assert p["lambda"]["batch_seconds"] == pytest.approx(0.415)
    assert p["lambda"]["concurrency"] == 4
    assert p["lambda"]["sender_max_concurrency"] == 4
    assert p["lambda"]["ramp_up_minutes"] == 0
    assert p["webhook"]["concurrency"] == 12  # 80 x 3 statuses x 0.05 s
    assert p["postgresql"]["sender_round_trips_per_second"] == pytest.approx(16.0)  # 80 x 0.2


def test_cost_items_add_up_to_the_totals():
    p = plan(250_000, 500, rates=RATES)
    cost = p["aws_cost"]
    assert sum(cost["per_million"].values()) == pytest.approx(cost["per_million_total"], abs=1e-3)
    sender = sum(v for k, v in cost["per_million"].items() if not k.startswith("webhook"))
    assert sender == pytest.approx(cost["per_million_sender"], abs=1e-3)
    assert cost["campaign"] == pytest.approx(cost["per_million_total"] / 4, abs=1e-3)
    fixed = sum(v for v in cost["fixed_per_month"].values() if v)
    assert fixed == pytest.approx(cost["fixed_per_month_total"], abs=1e-3)
    # db.t4g.medium, 730 h x $0.065
    assert cost["fixed_per_month"]["RDS db.t4g.medium Single-AZ"] == pytest.approx(47.45)
    # spread over 250,000 messages a month = 0.25 million
    assert cost["per_million_with_fixed"] == pytest.approx(cost["per_million_total"] + fixed * 4, abs=1e-3)


def test_a_higher_rate_never_needs_fewer_senders():
    previous = 0
    for mps in range(1, 1001, 7):
        needed = plan(1_000_000, mps, rates=RATES)["lambda"]["concurrency"]
        assert needed >= previous, mps
        previous = needed
    assert previous > 1


def test_rds_proxy_verdict_flips_above_80_percent_of_max_connections():
    # sender 30 + webhook 10 (its reservation) + 8 others = 48 connections
    kwargs = {"measured": NO_CPU, "statuses_per_message": 0.0, "rates": RATES}
    below = plan(1_000_000, 1000, rds_max_connections=60, **kwargs)["postgresql"]
    assert below["connections"] == 48
    assert below["rds_proxy"]["threshold"] == 48
    assert below["rds_proxy"]["verdict"] == "not needed"
    above = plan(1_000_000, 1000, rds_max_connections=59, **kwargs)["postgresql"]
    assert above["rds_proxy"]["threshold"] == 47
    assert above["rds_proxy"]["verdict"] == "needed"
    assert plan(1_000_000, 1000, rds_max_connections=59, **kwargs)["aws_cost"]["fixed_per_month"]["RDS Proxy"] > 0


def test_rds_proxy_advised_when_lambda_scales_past_100_senders():
    # a 2 s Graph: 0.020 + 0.010 + 2.000 + 0.020 = 2.05 s x 100 batches/s = 205 senders
    p = plan(1_000_000, 1000, graph_latency_ms=2000, measured=NO_CPU, rds_max_connections=5000, rates=RATES)
    assert p["lambda"]["concurrency"] == 205
    assert p["postgresql"]["rds_proxy"]["verdict"] == "advised"
    assert p["lambda"]["ramp_up_minutes"] == pytest.approx(0.667, abs=0.001)  # (205 - 5) / 300


def test_default_instance_is_db_t4g_medium():
    p = plan(100_000, 80, rates=RATES)["postgresql"]
    assert p["max_connections"] == 405
    assert p["rds_proxy"]["threshold"] == 324
    assert p["instances"]["db.r6g.large"]["proxy_above"] == 1380
    assert p["rds_proxy"]["usd_per_month"] == pytest.approx(21.90)  # 2 vCPU x $0.015 x 730 h


@pytest.mark.parametrize("mps", [1000.5, 1001, 5000])
def test_above_metas_ceiling_is_refused(mps):
    with pytest.raises(ValueError, match="Meta's ceiling of 1,000"):
        plan(1_000_000, mps, rates=RATES)


@pytest.mark.parametrize("bad", [{"recipients": 0}, {"mps": 0}, {"mps": float("nan")}, {"batch_size": 0},
                                 {"memory_mb": 64}, {"graph_latency_ms": -1}])
def test_bad_arguments_are_refused(bad):
    args = {"recipients": 1000, "mps": 80, **bad}
    with pytest.raises(ValueError):
        plan(rates=RATES, **args)


def test_slots_that_outlast_the_slot_wait_are_reported():
    p = plan(1_000_000, 80, batch_size=1000, rates=RATES)  # 1,000 slots at 80/s = 12.5 s > 10 s
    assert p["lambda"]["slots_fit"] is False
    assert plan(1_000_000, 80, rates=RATES)["lambda"]["slots_fit"] is True
    assert plan(1_000_000, 80, rates=RATES)["lambda"]["timeout_holds"] is True  # 10 + 10 + 3 + 2 = 25 <= 30


def test_meta_fees_and_the_share_aws_takes():
    p = plan(1_000_000, 1000, rates=RATES)
    fees = {m["market"]: m for m in p["meta_fees"]["per_million"]}
    assert set(fees) == {"India"}  # the markets the rates file has
    assert fees["India"]["marketing"] == pytest.approx(10_000)
    assert fees["India"]["utility"] == pytest.approx(2_000)
    total = p["aws_cost"]["per_million_total"]
    assert fees["India"]["aws_share_marketing"] == pytest.approx(total / 10_000, rel=1e-3)
    assert p["meta_fees"]["effective"] == "2026-01-01"


def test_shipped_rates_file_is_used_by_default():
    p = plan(1_000_000, 80)
    markets = {m["market"] for m in p["meta_fees"]["per_million"]}
    assert {"India", "Brazil", "Germany", "North America"} <= markets


def test_from_bench_json_reads_the_bench_keys():
    bench = {"messages": 2000, "cpu_ms_per_message": 7.5, "pg_round_trips_per_message": 0.204,
             "ddb_requests_per_message": 2.1, "graph_requests_per_message": 1.0, "database": "pgserver"}
    assert Measured.from_bench_json(bench) == Measured(7.5, 0.204, 2.1, 1.0)
    assert Measured.from_bench_json({"cpu_ms_per_message": 3}) == Measured(cpu_ms_per_message=3.0)
    assert Measured.from_bench_json({}) == Measured()
    for bad in ({"cpu_ms_per_message": "fast"}, {"ddb_requests_per_message": True},
                {"pg_round_trips_per_message": -1}, [1, 2]):
        with pytest.raises(ValueError):
            Measured.from_bench_json(bad)


def test_measured_figures_drive_the_costs():
    p = plan(1_000_000, 1000, measured=Measured(ddb_requests_per_message=4.0, pg_round_trips_per_message=0.5),
             rates=RATES)
    assert p["aws_cost"]["per_million"]["DynamoDB writes"] == pytest.approx(2.5)
    assert p["postgresql"]["sender_round_trips_per_second"] == pytest.approx(500)


def test_plan_is_json_and_formats():
    p = plan(1_000_000, 1000, measured=Measured(cpu_ms_per_message=5.0), rates=RATES)
    assert json.loads(json.dumps(p)) == p
    text = format_plan(p)
    assert "1,000,000 recipients at 1,000 messages/s" in text
    assert "100,000" in text
    assert "SenderMaxConcurrency=48" in text
    assert "prices as of 2026-11" in text
    assert "India" in text


def test_plan_command_prints_the_plan_and_reads_a_bench_file(tmp_path, capsys):
    from sendonce.cli import main

    bench = tmp_path / "bench.json"
    bench.write_text(json.dumps({"cpu_ms_per_message": 2.5, "pg_round_trips_per_message": 0.2,
                                 "ddb_requests_per_message": 2.1, "graph_requests_per_message": 1.0, "messages": 9}))
    assert main(["plan", "--recipients", "1000000", "--mps", "1000", "--batch-size", "10", "--bench", str(bench),
                 "--json"]) == 0
    planned = json.loads(capsys.readouterr().out)
    assert planned["lambda"]["invocations"] == 100_000 and planned["inputs"]["measured"]["cpu_ms_per_message"] == 2.5
    assert main(["plan", "--recipients", "1000000", "--mps", "80"]) == 0
    assert "Lambda (sender)" in capsys.readouterr().out
    assert main(["plan", "--recipients", "10", "--mps", "1001"]) == 2
    assert "above Meta's ceiling" in capsys.readouterr().err


def test_the_models_batch_size_is_the_stacks():
    import re
    from pathlib import Path

    from sendonce.capacity import SENDER_BATCH_SIZE

    template = (Path(__file__).resolve().parents[2] / "template.yaml").read_text()
    event = template[template.index("SendQueueBatch:"):]
    assert int(re.search(r"BatchSize: (\d+)", event).group(1)) == SENDER_BATCH_SIZE
    # SQS hands a Lambda more than 10 messages only with a batching window
    assert SENDER_BATCH_SIZE <= 10 or re.search(r"MaximumBatchingWindowInSeconds: [1-9]", event[:600])


def test_round_trips_and_requests_follow_the_batch_size_unless_measured():
    # A claim and a finalize per batch, two idempotency writes per message and a journal put per batch
    requests = capacity.plan(1_000_000, 1000, batch_size=25, rates=RATES)["requests_per_message"]
    assert (requests["dynamodb"]["wru"], capacity.plan(1_000_000, 1000, batch_size=25, rates=RATES)
            ["postgresql"]["sender_round_trips_per_second"]) == (2.04, 80.0)
    measured = Measured(pg_round_trips_per_message=0.5, ddb_requests_per_message=3.0)
    assert capacity.plan(1_000_000, 1000, batch_size=25, measured=measured, rates=RATES)["requests_per_message"][
        "dynamodb"]["wru"] == 3.0
