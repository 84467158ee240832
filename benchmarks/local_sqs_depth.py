"""What a SendMessageBatch + ReceiveMessage + DeleteMessageBatch round costs at queue depth 0 and at depth N,
on moto's server and on LocalSqsServer.

Both servers run in this process, in threads, on loopback, and are driven by the same boto3 client code, so
the figures share the client's cost (~2.5 ms of CPU per boto3 call) and differ by the servers' own. A round
sends 10 messages, receives 10 (the oldest available: at depth N, ones from the fill) and deletes those 10,
so the depth stays where it is. Printed per server: the median of each call and of the round at depth 0 and
at depth N, and the ratios; nothing is asserted.

The queue is filled to depth N through SendMessageBatch on LocalSqsServer (the time it took is printed:
it is what `sendonce campaign create` pays to enqueue a campaign). moto's queue is filled by appending to
its backend directly, because moto's SendMessage scans the whole queue (it recomputes the queue's
attributes) and filling it through its API costs O(N^2): many minutes at 20,000. `--moto-fill api` does it
anyway and prints how long it took.

At depth N a round on moto takes seconds (tens of seconds at 20,000), so fewer rounds are measured there
(`--deep-rounds`); the median is printed everywhere, which a shared machine's hiccups do not move.

    .venv/bin/python benchmarks/local_sqs_depth.py [--depth 20000] [--rounds 20] [--deep-rounds 5]
        [--moto-fill direct|api] [--json]
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import boto3
from botocore.config import Config
from sendonce.local.sqs_server import LocalSqsServer

REGION = "us-east-1"
ACCOUNT = "123456789012"
BATCH = 10
FILL_THREADS = 8


def _client(url: str):
    return boto3.client(
        "sqs",
        endpoint_url=url,
        region_name=REGION,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
        config=Config(max_pool_connections=FILL_THREADS + 2, retries={"total_max_attempts": 1}),
    )


def _body(i: int) -> str:
    # Shaped like sendonce's queue messages (sendonce.models.QueueMessage.body).
    return json.dumps({"queue_id": i, "campaign_id": str(uuid.uuid4()), "enqueue_id": str(uuid.uuid4())})


def _rounds(sqs, queue_url: str, rounds: int) -> dict[str, float]:
    """Median milliseconds of each call and of the whole round, over `rounds` rounds."""
    timings: dict[str, list[float]] = {"send_ms": [], "receive_ms": [], "delete_ms": [], "round_ms": []}
    for r in range(rounds):
        entries = [{"Id": str(i), "MessageBody": _body(r * BATCH + i)} for i in range(BATCH)]
        start = time.perf_counter()
        sqs.send_message_batch(QueueUrl=queue_url, Entries=entries)
        sent = time.perf_counter()
        messages = sqs.receive_message(QueueUrl=queue_url, MaxNumberOfMessages=BATCH).get("Messages", [])
        received = time.perf_counter()
        if messages:
            sqs.delete_message_batch(
                QueueUrl=queue_url,
                Entries=[{"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]} for i, m in enumerate(messages)],
            )
        deleted = time.perf_counter()
        timings["send_ms"].append((sent - start) * 1000)
        timings["receive_ms"].append((received - sent) * 1000)
        timings["delete_ms"].append((deleted - received) * 1000)
        timings["round_ms"].append((deleted - start) * 1000)
    return {name: round(statistics.median(values), 2) for name, values in timings.items()}


def _fill_through_api(sqs, queue_url: str, depth: int) -> float:
    """Send `depth` messages with SendMessageBatch from a few threads; return the seconds it took."""

    def send(start: int) -> None:
        entries = [{"Id": str(i), "MessageBody": _body(start + i)} for i in range(min(BATCH, depth - start))]
        answer = sqs.send_message_batch(QueueUrl=queue_url, Entries=entries)
        if answer.get("Failed"):
            raise RuntimeError(f"fill refused: {answer['Failed'][0]}")

    began = time.perf_counter()
    with ThreadPoolExecutor(FILL_THREADS) as pool:
        list(pool.map(send, range(0, depth, BATCH)))
    return time.perf_counter() - began


def _fill_moto_directly(queue_url: str, depth: int) -> float:
    from moto.sqs.models import Message, sqs_backends

    queue = sqs_backends[ACCOUNT][REGION].queues[queue_url.rsplit("/", 1)[1]]
    began = time.perf_counter()
    for i in range(depth):
        message = Message(str(uuid.uuid4()), _body(i))
        message.mark_sent()
        queue._messages.append(message)  # what add_message does for a standard queue, without its scans
    return time.perf_counter() - began


def _depth(sqs, queue_url: str) -> int:
    attributes = sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["All"])["Attributes"]
    return sum(
        int(attributes[n])
        for n in (
            "ApproximateNumberOfMessages",
            "ApproximateNumberOfMessagesNotVisible",
            "ApproximateNumberOfMessagesDelayed",
        )
    )


def measure(
    url: str, fill: Callable[[object, str, int], float], depth: int, rounds: int, deep_rounds: int
) -> dict:
    """One server's figures: rounds at depth 0, the fill, rounds at depth `depth`."""
    sqs = _client(url)
    attributes = {"VisibilityTimeout": "600"}  # nothing comes back during the run
    empty = sqs.create_queue(QueueName=f"bench-empty-{uuid.uuid4().hex[:8]}", Attributes=attributes)[
        "QueueUrl"
    ]
    _rounds(sqs, empty, 10)  # warm up: connections, boto3's caches
    at_zero = _rounds(sqs, empty, rounds)
    deep = sqs.create_queue(QueueName=f"bench-deep-{uuid.uuid4().hex[:8]}", Attributes=attributes)["QueueUrl"]
    fill_seconds = fill(sqs, deep, depth)
    actual_depth = _depth(sqs, deep)
    at_depth = _rounds(sqs, deep, deep_rounds)
    return {
        "depth_0": at_zero,
        "depth_n": at_depth,
        "depth_n_actual": actual_depth,
        "fill_seconds": round(fill_seconds, 2),
        "ratio_depth_n_over_0": round(at_depth["round_ms"] / at_zero["round_ms"], 2),
    }


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print its figures (`--json`: one JSON object)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--depth", type=int, default=20_000, help="queue depth N (default 20,000)")
    parser.add_argument("--rounds", type=int, default=20, help="rounds measured at depth 0 (default 20)")
    parser.add_argument("--deep-rounds", type=int, default=5, help="rounds measured at depth N (default 5)")
    parser.add_argument(
        "--moto-fill",
        choices=("direct", "api"),
        default="direct",
        help="fill moto's queue through its backend (default) or its API (O(N^2): slow)",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)

    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one line per request otherwise
    moto = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    moto.start()
    try:
        host, port = moto.get_host_and_port()
        moto_fill = (
            _fill_through_api
            if args.moto_fill == "api"
            else (lambda _sqs, url, n: _fill_moto_directly(url, n))
        )
        moto_figures = measure(f"http://{host}:{port}", moto_fill, args.depth, args.rounds, args.deep_rounds)
    finally:
        moto.stop()
    with LocalSqsServer() as local:
        local_figures = measure(local.url, _fill_through_api, args.depth, args.rounds, args.deep_rounds)

    result = {
        "depth": args.depth,
        "rounds": args.rounds,
        "deep_rounds": args.deep_rounds,
        "batch": BATCH,
        "moto_fill": args.moto_fill,
        "moto": moto_figures,
        "local": local_figures,
        "moto_over_local_at_depth_0": round(
            moto_figures["depth_0"]["round_ms"] / local_figures["depth_0"]["round_ms"], 2
        ),
        "moto_over_local_at_depth_n": round(
            moto_figures["depth_n"]["round_ms"] / local_figures["depth_n"]["round_ms"], 2
        ),
    }
    if args.json:
        print(json.dumps(result))
        return 0
    print(
        f"One round = SendMessageBatch x{BATCH} + ReceiveMessage x{BATCH} + DeleteMessageBatch x{BATCH}; "
        f"median of {args.rounds} rounds at depth 0 and {args.deep_rounds} at depth {args.depth}, ms"
    )
    print(f"{'server':<16}{'depth':>8}{'send':>10}{'receive':>10}{'delete':>10}{'round':>10}")
    for name, figures in (("moto", moto_figures), ("LocalSqsServer", local_figures)):
        for label, depth in (("depth_0", 0), ("depth_n", figures["depth_n_actual"])):
            row = figures[label]
            print(
                f"{name:<16}{depth:>8}{row['send_ms']:>10.2f}{row['receive_ms']:>10.2f}{row['delete_ms']:>10.2f}"
                f"{row['round_ms']:>10.2f}"
            )
    print(
        f"depth {args.depth} / depth 0: moto {moto_figures['ratio_depth_n_over_0']}x, "
        f"LocalSqsServer {local_figures['ratio_depth_n_over_0']}x"
    )
    print(
        f"moto / LocalSqsServer: {result['moto_over_local_at_depth_0']}x at depth 0, "
        f"{result['moto_over_local_at_depth_n']}x at depth {args.depth}"
    )
    print(
        f"fill to {args.depth}: LocalSqsServer {local_figures['fill_seconds']} s through SendMessageBatch "
        f"({FILL_THREADS} threads); moto {moto_figures['fill_seconds']} s "
        + (
            "through SendMessageBatch"
            if args.moto_fill == "api"
            else "appending to its backend (not its API)"
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
