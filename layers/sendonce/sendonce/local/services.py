"""Local services for `sendonce local run` and the tests: embedded PostgreSQL and AWS on moto's server."""

from __future__ import annotations

import atexit
import json
import logging
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import boto3

REGION = "us-east-1"
# Values of template.yaml: keep the local queues shaped like the deployed ones.
MAX_RECEIVE_COUNT = 5


def start_embedded_postgres(data_dir: Path | None = None):
    """Start a private PostgreSQL server (the `pgserver` package) and return it; `.get_uri()` gives the DSN.

    `cleanup()` stops it and deletes its data folder (`data_dir`, which must not exist yet, or a new one).
    """
    if "XDG_RUNTIME_DIR" not in os.environ:
        # platformdirs warns when it is unset (as on CI), and pgserver keeps its lock file there, fixed when it
        # is imported and used again by its exit handler: so one folder per process, deleted after that handler
        # (exit handlers run newest first, and pgserver registers its own later than this).
        runtime = tempfile.mkdtemp(prefix="sendonce-runtime-")  # mode 0700, as required
        os.environ["XDG_RUNTIME_DIR"] = runtime
        atexit.register(shutil.rmtree, runtime, ignore_errors=True)
    import pgserver

    folder = data_dir or Path(tempfile.mkdtemp(prefix="sendonce-pg-"))
    return pgserver.get_server(folder, cleanup_mode="delete")


def start_moto_server():
    """Start moto's server on a free loopback port and point boto3 at it (AWS_ENDPOINT_URL)."""
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one line per request otherwise
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    _point_boto3_at(f"http://{host}:{port}")
    return server


class MotoProcess:
    """moto's server in a process of its own (for benchmarks: AWS is not in the caller's process either)."""

    def __init__(self) -> None:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        self._process = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline or self._process.poll() is not None:
                    raise RuntimeError("moto's server did not start") from None
                time.sleep(0.1)
        _point_boto3_at(f"http://127.0.0.1:{self.port}")

    def stop(self) -> None:
        self._process.terminate()
        self._process.wait(timeout=10)


def _point_boto3_at(url: str) -> None:
    os.environ["AWS_ENDPOINT_URL"] = url
    for name, value in {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": REGION,
        "AWS_REGION": REGION,
    }.items():
        os.environ.setdefault(name, value)


@dataclass(frozen=True)
class AwsResources:
    """What template.yaml creates that the sender needs."""

    send_queue_url: str
    dlq_url: str
    idempotency_table: str

    def environ(self) -> dict[str, str]:
        """The environment variables that name these resources."""
        return {
            "SEND_QUEUE_URL": self.send_queue_url,
            "DLQ_URL": self.dlq_url,
            "IDEMPOTENCY_TABLE": self.idempotency_table,
        }


def create_aws_resources(prefix: str, visibility_timeout: int = 180) -> AwsResources:
    """Create the send queue, its DLQ and the idempotency table, as template.yaml defines them."""
    sqs = boto3.client("sqs", region_name=REGION)
    dlq_url = sqs.create_queue(QueueName=f"{prefix}-dlq", Attributes={"MessageRetentionPeriod": "1209600"})["QueueUrl"]
    dlq_arn = sqs.get_queue_attributes(QueueUrl=dlq_url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    queue_url = sqs.create_queue(
        QueueName=f"{prefix}-send",
        Attributes={
            "VisibilityTimeout": str(visibility_timeout),
            "RedrivePolicy": json.dumps({"deadLetterTargetArn": dlq_arn, "maxReceiveCount": MAX_RECEIVE_COUNT}),
        },
    )["QueueUrl"]
    table = create_idempotency_table(boto3.client("dynamodb", region_name=REGION), f"{prefix}-idempotency")
    return AwsResources(queue_url, dlq_url, table)


def create_idempotency_table(dynamodb, name: str) -> str:
    """The idempotency table as template.yaml defines it (pk `id`, TTL on `expiration`); return its name."""
    dynamodb.create_table(
        TableName=name,
        KeySchema=[{"AttributeName": "id", "KeyType": "HASH"}],
        AttributeDefinitions=[{"AttributeName": "id", "AttributeType": "S"}],
        BillingMode="PAY_PER_REQUEST",
    )
    dynamodb.update_time_to_live(
        TableName=name, TimeToLiveSpecification={"Enabled": True, "AttributeName": "expiration"}
    )
    return name


@dataclass(frozen=True)
class LocalStack:
    """What `local_stack` set up."""

    resources: AwsResources
    database: str


@contextmanager
def local_stack(prefix: str, graph, *, moto_process: bool = False, visibility_timeout: int = 180, environ=None):
    """PostgreSQL (embedded unless DATABASE_URL), moto, the stack's queues and table, and `graph` (a FakeGraph),
    with the environment pointing at them; on exit everything is stopped and the environment restored."""
    from sendonce.local import reset_clients

    saved_environ = dict(os.environ)  # this process may go on (tests)
    embedded = None
    try:
        if not os.environ.get("DATABASE_URL"):
            embedded = start_embedded_postgres()
            os.environ["DATABASE_URL"] = embedded.get_uri()
        moto = MotoProcess() if moto_process else start_moto_server()
        graph.start()
        try:
            resources = create_aws_resources(f"{prefix}-{uuid.uuid4().hex[:8]}", visibility_timeout)
            os.environ.update(
                {
                    **resources.environ(),
                    "WHATSAPP_API_BASE_URL": graph.url,
                    "WHATSAPP_ACCESS_TOKEN": graph.token,
                    "AWS_LAMBDA_FUNCTION_NAME": f"{prefix}-sender",
                    "POWERTOOLS_TRACE_DISABLED": "true",
                    **(environ or {}),
                }
            )
            reset_clients()
            yield LocalStack(resources, "embedded PostgreSQL" if embedded else "DATABASE_URL")
        finally:
            reset_clients()
            graph.stop()
            moto.stop()
    finally:
        if embedded is not None:
            embedded.cleanup()
        os.environ.clear()
        os.environ.update(saved_environ)
