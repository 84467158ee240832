"""Fixtures shared by every test: real PostgreSQL, moto's server, the fake Graph API, the Lambda context.

PostgreSQL: the server named by DATABASE_URL when set (a fresh database is created on it for the run and
dropped afterwards), otherwise an embedded server started here (the `pgserver` package).
"""

from __future__ import annotations

import logging
import os
import re
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg
import pytest
from psycopg import sql
from sendonce.local import reset_clients, services
from sendonce.local.event_source import SqsEventSource
from sendonce.local.fake_graph import FakeGraph
from sendonce.local.lambda_runtime import LocalContext, load_handler
from sendonce.local.pgproxy import PgFaultProxy
from sendonce.migrate import migrate

from tests.helpers import truncate

GRAPH_TOKEN = "test-token"

# Nothing in the tests may reach real AWS, whatever the machine's profile says.
os.environ.update(
    {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": services.REGION,
        "AWS_REGION": services.REGION,
        "AWS_LAMBDA_FUNCTION_NAME": "sendonce-test-sender",
        "POWERTOOLS_TRACE_DISABLED": "true",
        "POWERTOOLS_METRICS_NAMESPACE": "sendonce",
    }
)
os.environ.pop("AWS_PROFILE", None)


def _admin_dsn() -> Iterator[str]:
    if os.environ.get("DATABASE_URL"):
        yield os.environ["DATABASE_URL"]
        return
    server = services.start_embedded_postgres()
    try:
        yield server.get_uri()
    finally:
        server.cleanup()


@pytest.fixture(scope="session")
def pg_server() -> Iterator[Callable[[], str]]:
    """A factory of fresh, empty databases on the test server; all are dropped at the end of the run."""
    created: list[str] = []
    for admin in _admin_dsn():
        admin_conn = psycopg.connect(admin, autocommit=True)

        def new_database() -> str:
            name = f"sendonce_test_{uuid.uuid4().hex[:10]}"
            admin_conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
            created.append(name)
            return psycopg.conninfo.make_conninfo(admin, dbname=name)

        yield new_database
        for name in created:
            admin_conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
        admin_conn.close()


@pytest.fixture(scope="session")
def database_url(pg_server) -> str:
    """The migrated database the tests share (truncated per test by `pg_conn`)."""
    url = pg_server()
    with psycopg.connect(url, autocommit=True) as conn:
        migrate(conn)
    return url


@pytest.fixture
def pg_conn(database_url, monkeypatch) -> Iterator[psycopg.Connection]:
    """An autocommit connection to an empty, migrated database; DATABASE_URL points at it."""
    monkeypatch.setenv("DATABASE_URL", database_url)
    conn = psycopg.connect(database_url, autocommit=True)
    truncate(conn)
    yield conn
    conn.close()


@pytest.fixture
def pg_proxy(pg_conn, database_url, monkeypatch) -> Iterator[PgFaultProxy]:
    """A fault-injecting proxy in front of the test database: the handlers' DATABASE_URL points at it, while
    `pg_conn` (the test's own view) stays direct."""
    with PgFaultProxy(database_url) as proxy:
        monkeypatch.setenv("DATABASE_URL", proxy.dsn)
        reset_clients()
        yield proxy


@pytest.fixture(scope="session")
def moto_server():
    """moto's server on loopback (shared by threads and child processes); boto3 is pointed at it."""
    server = services.start_moto_server()
    yield server
    server.stop()


@pytest.fixture
def aws(moto_server, monkeypatch) -> services.AwsResources:
    """A fresh send queue (visibility timeout 1 s), DLQ and idempotency table for this test."""
    resources = services.create_aws_resources(f"t{uuid.uuid4().hex[:12]}", visibility_timeout=1)
    for name, value in resources.environ().items():
        monkeypatch.setenv(name, value)
    return resources


@pytest.fixture
def local_aws(monkeypatch) -> Iterator[services.AwsResources]:
    """Like `aws`, on sendonce's own SQS and DynamoDB stand-ins, in this process: for tests that need a deep queue
    (moto's SQS slows with queue depth; the stand-ins do not)."""
    from sendonce.local.dynamodb_server import LocalDynamoDbServer
    from sendonce.local.sqs_server import LocalSqsServer

    with LocalSqsServer() as sqs_server, LocalDynamoDbServer() as dynamodb_server:
        monkeypatch.setenv("AWS_ENDPOINT_URL_SQS", sqs_server.url)
        monkeypatch.setenv("AWS_ENDPOINT_URL_DYNAMODB", dynamodb_server.url)
        reset_clients()
        resources = services.create_aws_resources(f"t{uuid.uuid4().hex[:12]}", visibility_timeout=1)
        for name, value in resources.environ().items():
            monkeypatch.setenv(name, value)
        yield resources
        reset_clients()


@pytest.fixture
def graph(monkeypatch) -> Iterator[FakeGraph]:
    """The fake Graph API on loopback; WHATSAPP_* settings point at it."""
    with FakeGraph(token=GRAPH_TOKEN) as fake:
        monkeypatch.setenv("WHATSAPP_API_BASE_URL", fake.url)
        monkeypatch.setenv("WHATSAPP_ACCESS_TOKEN", GRAPH_TOKEN)
        monkeypatch.setenv("WHATSAPP_TIMEOUT_SECONDS", "2")
        yield fake


# The recipients the tests send to (tests.helpers.phone, the README's and the event files' examples): none may
# appear whole in any log line, in any test.
_TEST_NUMBER = re.compile(r"(?<!\d)(91987654\d{4}|919741771659|919876543210)(?!\d)")
_RECORD_FIELDS = set(vars(logging.LogRecord("", 0, "", 0, "", None, None)))


@pytest.fixture(autouse=True)
def _no_phone_number_in_logs(caplog):
    """Fail a test whose captured log lines hold a full phone number (message or structured keys)."""
    yield
    for record in caplog.get_records("setup") + caplog.get_records("call"):
        extra = " ".join(str(v) for k, v in vars(record).items() if k not in _RECORD_FIELDS)
        found = _TEST_NUMBER.search(f"{record.getMessage()} {extra}")
        if found:
            pytest.fail(f"a log line holds the phone number {found.group(0)}: {record.getMessage()[:200]}")


@pytest.fixture(autouse=True)
def _fresh_clients():
    """Every test reads its own environment: no client or setting survives from the previous one."""
    reset_clients()
    yield
    reset_clients()


@pytest.fixture
def lambda_context() -> LocalContext:
    """A Lambda context with 30 s to run."""
    return LocalContext("sender", timeout_seconds=30)


@pytest.fixture
def sender_handler() -> Callable[[dict, object], dict]:
    """`functions/sender/app.py`'s lambda_handler, imported as `sam local invoke` would run it."""
    return load_handler("sender")


@pytest.fixture
def event_source(aws, sender_handler) -> SqsEventSource:
    """The local SQS event source mapping feeding the sender from this test's queue."""
    return SqsEventSource(aws.send_queue_url, sender_handler, concurrency=2, function_timeout=30)


@pytest.fixture
def contacts_csv(tmp_path) -> Callable[..., Path]:
    """Write a contacts CSV: `contacts_csv(["phone"], ["919741771659"], ...)`."""

    def write(*rows: list[str], name: str = "contacts.csv") -> Path:
        path = tmp_path / name
        path.write_text("\n".join(",".join(row) for row in rows) + "\n")
        return path

    return write


@pytest.fixture
def make_campaign(pg_conn, aws, graph) -> Callable[..., str]:
    """Create and enqueue a campaign to the given E.164 numbers; return its id."""
    from sendonce.campaigns import NewCampaign, create_campaign
    from sendonce.contacts import Contact, ContactList

    def create(*phones: str, campaign_id: str | None = None) -> str:
        new = NewCampaign("test", "order_update", "en_US", "106540352242922", id=campaign_id or str(uuid.uuid4()))
        contacts = ContactList(contacts=[Contact(p, (f"name {p[-4:]}",)) for p in phones])
        return create_campaign(pg_conn, new, contacts, aws.send_queue_url).campaign_id

    return create


@pytest.fixture
def campaign_with_results(make_campaign, graph, pg_conn, event_source, monkeypatch) -> str:
    """A sent campaign (tests.helpers.phone 1..6): 1 failed (131026), 2 read, 3 delivered, 4 sent and no report,
    5 sent then failed (131026, reported by the webhook), 6 failed because the user opted out (131050: the number
    is suppressed). The fake Graph is reset afterwards: its counts start from nothing."""
    from tests.helpers import phone, post_statuses, queue_rows, status_update

    monkeypatch.setenv("WHATSAPP_APP_SECRET", "example-app-secret")
    graph.plan(phone(1), "error:131026")
    graph.plan(phone(6), "error:131050")
    campaign_id = make_campaign(*(phone(i) for i in range(1, 7)))
    event_source.run_until_empty(timeout=60)
    rows = queue_rows(pg_conn, campaign_id)
    post_statuses([
        status_update(rows[phone(2)]["whatsapp_message_id"], "read", 10, to=phone(2)),
        status_update(rows[phone(3)]["whatsapp_message_id"], "delivered", 11, to=phone(3)),
        status_update(rows[phone(5)]["whatsapp_message_id"], "failed", 12, code=131026, to=phone(5)),
    ])
    graph.reset()
    return campaign_id


@pytest.fixture
def lambda_service(monkeypatch) -> Iterator:
    """The local Lambda Invoke API, with campaigns_api registered under AWS_LAMBDA_FUNCTION_NAME."""
    from sendonce.local.lambda_service import LocalLambdaService

    service = LocalLambdaService().start()
    service.register("sendonce-test-api", load_handler("campaigns_api"))
    monkeypatch.setenv("AWS_ENDPOINT_URL_LAMBDA", service.url)
    monkeypatch.setenv("AWS_LAMBDA_FUNCTION_NAME", "sendonce-test-api")
    yield service
    service.stop()


@pytest.fixture
def contacts_bucket(moto_server, monkeypatch) -> str:
    """The stack's contacts bucket (the name events/campaigns_api_create_s3.json uses), on moto."""
    import boto3

    name = "sendonce-contacts-123456789012"
    s3 = boto3.client("s3", region_name=services.REGION)
    if name not in {b["Name"] for b in s3.list_buckets()["Buckets"]}:
        s3.create_bucket(Bucket=name)
    # Empty, whatever an earlier test left there (moto lives for the session)
    for item in s3.list_objects_v2(Bucket=name).get("Contents", []):
        s3.delete_object(Bucket=name, Key=item["Key"])
    for upload in s3.list_multipart_uploads(Bucket=name).get("Uploads", []):
        s3.abort_multipart_upload(Bucket=name, Key=upload["Key"], UploadId=upload["UploadId"])
    monkeypatch.setenv("CONTACTS_BUCKET", name)
    return name


@pytest.fixture
def world(pg_conn, database_url, monkeypatch, tmp_path, moto_server):
    """The fault suites' world: the test database behind a fault proxy, a fake Graph, queues (tests/faults.py)."""
    from tests.faults import World

    with PgFaultProxy(database_url) as proxy:
        w = World(pg_conn, database_url, proxy, monkeypatch, tmp_path)
        yield w
        if w.graph:
            w.graph.stop()


def pytest_sessionfinish(session) -> None:
    """An xdist worker hands its fault report to the controller, which prints the summary."""
    from tests.faults import REPORT

    if hasattr(session.config, "workeroutput"):
        session.config.workeroutput["fault_report"] = list(REPORT)


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node, error) -> None:
    from tests.faults import REPORT

    REPORT.extend(getattr(node, "workeroutput", {}).get("fault_report", []))


def pytest_terminal_summary(terminalreporter) -> None:
    """What the fault suites ran: injection points per scenario, the soak's seed."""
    from tests.faults import REPORT

    if REPORT:
        terminalreporter.section("fault injection")
        for line in REPORT:
            terminalreporter.write_line(line)
