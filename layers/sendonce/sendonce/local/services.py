"""Local services for `sendonce local run` and the tests: embedded PostgreSQL and AWS on moto's server."""

from __future__ import annotations

import json
import logging
import os
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path

import boto3

REGION = "us-east-1"
# Values of template.yaml: keep the local queues shaped like the deployed ones.
MAX_RECEIVE_COUNT = 5


def start_embedded_postgres(data_dir: Path | None = None):
    """Start a private PostgreSQL server (the `pgserver` package) and return it; `.get_uri()` gives the DSN."""
    import pgserver

    warnings.filterwarnings("ignore", message=".*XDG_RUNTIME_DIR.*")
    folder = data_dir or Path(tempfile.mkdtemp(prefix="sendonce-pg-"))
    return pgserver.get_server(folder, cleanup_mode="delete" if data_dir is None else "stop")


def start_moto_server():
    """Start moto's server on a free loopback port and point boto3 at it (AWS_ENDPOINT_URL)."""
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one line per request otherwise
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    os.environ["AWS_ENDPOINT_URL"] = f"http://{host}:{port}"
    for name, value in {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": REGION,
        "AWS_REGION": REGION,
    }.items():
        os.environ.setdefault(name, value)
    return server


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
    table = f"{prefix}-idempotency"
    dynamodb = boto3.client("dynamodb", region_name=REGION)
    dynamodb.create_table(
        TableName=table,
        KeySchema=[{"AttributeName": "id", "KeyType": "HASH"}],
        AttributeDefinitions=[{"AttributeName": "id", "AttributeType": "S"}],
        BillingMode="PAY_PER_REQUEST",
    )
    dynamodb.update_time_to_live(
        TableName=table, TimeToLiveSpecification={"Enabled": True, "AttributeName": "expiration"}
    )
    return AwsResources(queue_url, dlq_url, table)
