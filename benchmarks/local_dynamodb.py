"""What the sender's DynamoDB requests cost on moto's server and on LocalDynamoDbServer, per request.

One message's pattern, as `sendonce local run` makes it: Powertools' conditional put of the in-progress record
(ConditionExpression, names, values, ReturnValuesOnConditionCheckFailure=ALL_OLD), its update to COMPLETED
(save_success's SET), and the batch journal's put. Each server runs in a process of its own (moto's as
`services.MotoProcess`, LocalDynamoDbServer as `python -m sendonce.local.dynamodb_server`), as in a local run,
so that its CPU time can be read from /proc (Linux; elsewhere only latency and the client's CPU are printed).
The same boto3 client code drives both, one request at a time.

Printed per server: the median and mean latency of a request, the client's and the server's CPU per request,
and the ratios moto / local; nothing is asserted. `--json` prints the figures as one JSON object.

    .venv/bin/python benchmarks/local_dynamodb.py [--messages 500] [--warmup 50] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Callable

import boto3
from botocore.config import Config
from sendonce.local import services

REGION = "us-east-1"
CONDITION = (
    "attribute_not_exists(#id) OR #expiry < :now OR "
    "(#status = :inprogress AND attribute_exists(#in_progress_expiry) AND #in_progress_expiry < :now_in_millis)"
)
NAMES = {
    "#id": "id",
    "#expiry": "expiration",
    "#in_progress_expiry": "in_progress_expiration",
    "#status": "status",
}


def _client(url: str):
    return boto3.client(
        "dynamodb",
        endpoint_url=url,
        region_name=REGION,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
        config=Config(retries={"total_max_attempts": 1}),
    )


def _cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds of a process (all its threads) so far, from /proc; None where there is none."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    # After the command name: state is field 3, utime and stime are fields 14 and 15 (1-based, whole line).
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _create_table(ddb) -> str:
    return services.create_idempotency_table(ddb, f"bench-{uuid.uuid4().hex[:8]}-idempotency")


def _message_requests(ddb, table: str, i: int) -> list[Callable[[], object]]:
    """The three requests one message makes (Powertools put, Powertools update, journal put)."""
    now = time.time()
    key = f"sendonce.sender#{uuid.uuid4().hex}"
    token = uuid.uuid4()
    return [
        lambda: ddb.put_item(
            TableName=table,
            Item={
                "id": {"S": key},
                "expiration": {"N": str(int(now) + 6 * 3600)},
                "status": {"S": "INPROGRESS"},
                "in_progress_expiration": {"N": str(int(now * 1000) + 170_000)},
            },
            ConditionExpression=CONDITION,
            ExpressionAttributeNames=NAMES,
            ExpressionAttributeValues={
                ":now": {"N": str(int(now))},
                ":now_in_millis": {"N": str(int(now * 1000))},
                ":inprogress": {"S": "INPROGRESS"},
            },
            ReturnValuesOnConditionCheckFailure="ALL_OLD",
        ),
        lambda: ddb.update_item(
            TableName=table,
            Key={"id": {"S": key}},
            UpdateExpression="SET #response_data = :response_data, #expiry = :expiry, #status = :status",
            ExpressionAttributeNames={"#expiry": "expiration", "#response_data": "data", "#status": "status"},
            ExpressionAttributeValues={
                ":expiry": {"N": str(int(now) + 6 * 3600)},
                ":response_data": {"S": json.dumps({"disposition": "sent", "wamid": f"wamid.{i}"})},
                ":status": {"S": "COMPLETED"},
            },
        ),
        lambda: ddb.put_item(
            TableName=table,
            Item={
                "id": {"S": f"sendonce#claim#{token}"},
                "expiration": {"N": str(int(now) + 14 * 24 * 3600)},
                "state": {"S": "sending"},
            },
        ),
    ]


def measure(url: str, pid: int, messages: int, warmup: int) -> dict[str, float | None]:
    """Latency and CPU per request of `messages` messages' requests, after `warmup` messages."""
    ddb = _client(url)
    table = _create_table(ddb)
    for i in range(warmup):
        for request in _message_requests(ddb, table, i):
            request()
    latencies: list[float] = []
    server_before = _cpu_seconds(pid)
    client_before = time.process_time()
    wall_before = time.perf_counter()
    for i in range(messages):
        for request in _message_requests(ddb, table, i):
            start = time.perf_counter()
            request()
            latencies.append((time.perf_counter() - start) * 1000)
    wall = time.perf_counter() - wall_before
    client_cpu = time.process_time() - client_before
    server_after = _cpu_seconds(pid)
    requests = len(latencies)
    server_cpu = None if server_before is None or server_after is None else server_after - server_before
    return {
        "requests": requests,
        "median_ms": statistics.median(latencies),
        "mean_ms": wall * 1000 / requests,
        "p95_ms": statistics.quantiles(latencies, n=20)[-1],
        "client_cpu_ms": client_cpu * 1000 / requests,
        "server_cpu_ms": None if server_cpu is None else server_cpu * 1000 / requests,
    }


class _LocalProcess:
    """LocalDynamoDbServer in a process of its own; it serves until its stdin closes."""

    def __init__(self) -> None:
        self._process = subprocess.Popen(
            [sys.executable, "-m", "sendonce.local.dynamodb_server"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        self.url = self._process.stdout.readline().strip()
        if not self.url:
            raise RuntimeError("LocalDynamoDbServer did not start")
        self.pid = self._process.pid

    def stop(self) -> None:
        self._process.stdin.close()
        self._process.wait(timeout=10)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--messages", type=int, default=500, help="messages measured (3 requests each)")
    parser.add_argument("--warmup", type=int, default=50, help="messages sent first, not measured")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args()

    results: dict[str, dict] = {}
    moto = services.MotoProcess()
    try:
        # The benchmark reaches into MotoProcess for its pid: the only way to read the server's CPU time.
        results["moto"] = measure(
            f"http://127.0.0.1:{moto.port}", moto._process.pid, args.messages, args.warmup
        )
    finally:
        moto.stop()
    local = _LocalProcess()
    try:
        results["local"] = measure(local.url, local.pid, args.messages, args.warmup)
    finally:
        local.stop()
    ratios = {
        key: results["moto"][key] / results["local"][key]
        for key in ("median_ms", "mean_ms", "p95_ms", "client_cpu_ms", "server_cpu_ms")
        if results["moto"][key] is not None and results["local"][key]
    }

    if args.json:
        print(json.dumps({"messages": args.messages, "results": results, "ratios_moto_over_local": ratios}))
        return
    print(f"{args.messages} messages x 3 requests (Powertools put + update, journal put), one at a time")
    print(f"{'':8}{'median ms':>11}{'mean ms':>10}{'p95 ms':>9}{'client CPU ms':>15}{'server CPU ms':>15}")
    for name, figures in results.items():
        server = figures["server_cpu_ms"]
        print(
            f"{name:8}{figures['median_ms']:>11.2f}{figures['mean_ms']:>10.2f}{figures['p95_ms']:>9.2f}"
            f"{figures['client_cpu_ms']:>15.2f}{'n/a' if server is None else f'{server:.3f}':>15}"
        )
    print(
        f"{'moto/local':10}"
        + "  ".join(f"{key.removesuffix('_ms')} {value:.1f}x" for key, value in ratios.items())
    )


if __name__ == "__main__":
    main()
