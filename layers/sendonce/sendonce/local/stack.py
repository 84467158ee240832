"""The whole stack of template.yaml on one machine, wired the way AWS wires it, for `local run` and `local up`.

    template.yaml                          here
    PostgreSQL (DATABASE_URL)              embedded PostgreSQL (pgserver), or DATABASE_URL when set
    SendQueue, DeadLetterQueue             LocalSqsServer: SQS's JSON protocol, O(log n) at any depth, in a process
    IdempotencyTable (DynamoDB)            LocalDynamoDbServer: the operations the stack uses, in a process of its own
    SenderFunction + its SQS event source  sender environments, each a process (sendonce.local.poller)
    DlqHandlerFunction + its event source  a thread polling the DLQ, invoking functions/dlq_handler
    ResetStuck / RecomputeCounters         threads on timers, invoking the handlers with events/*.json
      schedules
    WebhookHttpApi, CampaignsHttpApi       LocalGateway: HTTP API payload 2.0 events to the handlers
    graph.facebook.com                     FakeGraph: Meta's answers and faults, and signed status webhooks

Windows are scaled down so that a run takes minutes, not hours (`SCALED`): the stack's own values are in
template.yaml. Everything started here is stopped by `close()`, whatever state it is in, and every folder it
made is deleted.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import random
import secrets
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from pathlib import Path

from sendonce.local import poller, services
from sendonce.local.fake_graph import WABA_ID, FakeGraph
from sendonce.local.lambda_runtime import PROJECT_ROOT, LocalContext, load_handler

# The stack's windows, scaled down for a local run (template.yaml's values in the comments).
SCALED = {
    "STUCK_AFTER_SECONDS": "30",  # 600
    "MAX_SLOT_WAIT_SECONDS": "2",  # 10
    "WHATSAPP_TIMEOUT_SECONDS": "2",  # 10
    "WHATSAPP_MAX_MPS": "200",  # 80 (Meta's default tier); the fake Graph throttles past 250
}
SENDER_TIMEOUT = 8.0  # 30
VISIBILITY_TIMEOUT = 10  # 180
RESET_STUCK_EVERY = 5.0  # rate(5 minutes)
RECOMPUTE_EVERY = 2.0  # rate(1 minute)
GRAPH_THROTTLE_MPS = 250
STORM_EVERY = (15.0, 45.0)  # seconds between 130429 storms (chaos)
STORM_SECONDS = 1.5
STOP_SECONDS = 3.0  # how long a sender environment may take to finish its batch when the stack stops


class LocalStack:
    """Start with `open()` (or `with`), stop with `close()`; `environ()` is what a shell needs to use it."""

    def __init__(self, *, senders: int = 4, chaos: float = 0.0, seed: int = 1, prefix: str = "sendonce-local"):
        self.senders = senders
        self.chaos = chaos
        self.seed = seed
        self.prefix = f"{prefix}-{uuid.uuid4().hex[:6]}"
        self.kills: Counter[str] = Counter()
        self.counts = None  # shared by the sender environments: see poller.run
        self.timer_runs: Counter[str] = Counter()
        self.timer_errors: list[str] = []
        self.database = "DATABASE_URL"
        self._closers: list = []
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._pollers: list = []
        self._poller_starts = 0
        self._saved_environ: dict[str, str] | None = None

    # -- lifecycle --------------------------------------------------------------------------------

    def __enter__(self) -> LocalStack:
        return self.open()

    def __exit__(self, *exc) -> None:
        self.close()

    def open(self) -> LocalStack:
        """Start every service, create the stack's resources, apply the migrations, start the functions."""
        self._saved_environ = dict(os.environ)
        try:
            self._start_services()
            self._start_functions()
        except BaseException:
            self.close()
            raise
        return self

    def close(self) -> None:
        """Stop everything this stack started, newest first; never raises."""
        self._stop.set()
        while self._closers:
            name, close = self._closers.pop()
            try:
                close()
            except Exception as exc:  # noqa: BLE001 - stopping the rest matters more
                self.timer_errors.append(f"stopping {name}: {exc}")
        if self._saved_environ is not None:
            os.environ.clear()
            os.environ.update(self._saved_environ)
            self._saved_environ = None
        from sendonce.local import reset_clients

        reset_clients()

    def _on_close(self, name: str, close) -> None:
        self._closers.append((name, close))

    # -- services ---------------------------------------------------------------------------------

    def _start_services(self) -> None:
        from sendonce import db
        from sendonce.local import reset_clients
        from sendonce.local.gateway import stack_gateways
        from sendonce.migrate import migrate

        self.workdir = workdir = Path(tempfile.mkdtemp(prefix="sendonce-local-"))
        self._on_close("work folder", lambda: shutil.rmtree(workdir, ignore_errors=True))
        if not os.environ.get("DATABASE_URL"):
            server = services.start_embedded_postgres(workdir / "pg")
            self._on_close("embedded PostgreSQL", server.cleanup)
            os.environ["DATABASE_URL"] = server.get_uri()
            self.database = "embedded PostgreSQL"
        self.database_url = os.environ["DATABASE_URL"]

        # SQS and DynamoDB, each in a process of its own (they serve every sender at once).
        os.environ.update({"AWS_ACCESS_KEY_ID": "local", "AWS_SECRET_ACCESS_KEY": "local",
                           "AWS_DEFAULT_REGION": services.REGION, "AWS_REGION": services.REGION})
        os.environ.pop("AWS_ENDPOINT_URL", None)
        os.environ["AWS_ENDPOINT_URL_SQS"] = self._serve("sendonce.local.sqs_server")
        os.environ["AWS_ENDPOINT_URL_DYNAMODB"] = self._serve("sendonce.local.dynamodb_server")

        self.app_secret = secrets.token_hex(16)
        self.verify_token = secrets.token_hex(8)
        gateways = stack_gateways()
        for name, gateway in gateways.items():
            gateway.start()
            self._on_close(name, gateway.stop)
        self.api_url = gateways["CampaignsHttpApi"].url
        self.webhook_url = gateways["WebhookHttpApi"].url + "/webhook"
        self.graph = FakeGraph(token=f"local-{secrets.token_hex(8)}", chaos=self.chaos, seed=self.seed,
                               throttle_mps=GRAPH_THROTTLE_MPS)
        self.graph.post_statuses_to(self.webhook_url, self.app_secret, chaos=self.chaos, seed=self.seed)
        # The template the local campaigns use, approved in the fake WABA: `campaign create` checks it there.
        self.graph.add_template("order_update", "en_US", body="Hello {{1}}, your order is on its way.",
                                category="UTILITY")
        self.graph.start()
        self._on_close("fake Graph", self.graph.stop)

        self.resources = services.create_aws_resources(self.prefix, VISIBILITY_TIMEOUT)
        os.environ.update(
            {
                **self.resources.environ(),
                **SCALED,
                "WHATSAPP_API_BASE_URL": self.graph.url,
                "WHATSAPP_ACCESS_TOKEN": self.graph.token,
                "WHATSAPP_BUSINESS_ACCOUNT_ID": WABA_ID,
                "WHATSAPP_APP_SECRET": self.app_secret,
                "WEBHOOK_VERIFY_TOKEN": self.verify_token,
                "POWERTOOLS_TRACE_DISABLED": "true",
                # EMF metrics are printed to stdout, which the CLI keeps for its own output (--json).
                "POWERTOOLS_METRICS_DISABLED": "true",
                "POWERTOOLS_LOG_LEVEL": os.environ.get("POWERTOOLS_LOG_LEVEL", "ERROR"),
            }
        )
        reset_clients()
        conn = db.connect()
        try:
            migrate(conn)
        finally:
            conn.close()

        self.sender_database_url = self.database_url
        if self.chaos:
            from sendonce.local.pgproxy import PgFaultProxy

            # Between the senders and PostgreSQL: connections cut mid-batch, at random statements.
            self.pg_proxy = PgFaultProxy(self.database_url).start()
            self._on_close("PostgreSQL proxy", self.pg_proxy.stop)
            self.pg_proxy.chaos(self.chaos / 5, self.seed)
            self.sender_database_url = self.pg_proxy.dsn

    def _serve(self, module: str) -> str:
        """Start a stand-in (`python -m module`) in a process of its own; return its URL."""
        process = subprocess.Popen([sys.executable, "-m", module], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                   text=True)

        def stop() -> None:
            process.stdin.close()  # it stops when its stdin closes
            try:
                process.wait(STOP_SECONDS)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()

        self._on_close(module, stop)
        url = process.stdout.readline().strip()
        if not url.startswith("http://"):
            raise RuntimeError(f"{module} did not start")
        return url

    # -- functions --------------------------------------------------------------------------------

    def _start_functions(self) -> None:
        self._mp = multiprocessing.get_context("forkserver")
        # The forkserver imports the sender once; every environment (and every restart after a kill) forks
        # from it in milliseconds instead of importing boto3 and Powertools again.
        self._mp.set_forkserver_preload(["sendonce.local.poller", "sendonce.sender", "sendonce.local.event_source"])
        self._poller_stop = self._mp.Event()
        self.counts = self._mp.Array("q", 5)
        self._on_close("sender environments", self._stop_pollers)
        for _ in range(self.senders):
            self._pollers.append(self._start_poller())
        self._thread("dlq_handler", self._dlq_loop)
        self._timer("reset_stuck", "reset_stuck_schedule.json", RESET_STUCK_EVERY)
        self._timer("recompute_counters", "recompute_counters_schedule.json", RECOMPUTE_EVERY)
        if self.chaos:
            self._thread("130429 storms", self._storms)
        self._on_close("timers", self._join_threads)

    def _start_poller(self):
        self._poller_starts += 1
        spec = poller.PollerSpec(
            environ={**os.environ, "DATABASE_URL": self.sender_database_url, "AWS_LAMBDA_FUNCTION_NAME": "sender"},
            queue_url=self.resources.send_queue_url,
            function_timeout=SENDER_TIMEOUT,
            kill_rate=self.chaos / 2,
            seed=self.seed * 1000 + self._poller_starts,
        )
        process = self._mp.Process(target=poller.run, args=(spec, self._poller_stop, self.counts), daemon=True,
                                   name=f"sender-{self._poller_starts}")
        process.start()
        return process

    def supervise(self) -> None:
        """Replace sender environments that died (a chaos kill, or a crash), as Lambda starts new ones."""
        for i, process in enumerate(self._pollers):
            if process.exitcode is None or self._stop.is_set():
                continue
            self.kills[poller.killed_at(process.exitcode) or f"exit {process.exitcode}"] += 1
            process.join()
            self._pollers[i] = self._start_poller()

    def _stop_pollers(self) -> None:
        self._poller_stop.set()
        deadline = time.monotonic() + STOP_SECONDS
        for process in self._pollers:
            process.join(max(deadline - time.monotonic(), 0))
        for process in self._pollers:
            if process.is_alive():
                process.kill()
                process.join(2)

    def _thread(self, name: str, target) -> None:
        thread = threading.Thread(target=target, name=name, daemon=True)
        thread.start()
        self._threads.append(thread)

    def _join_threads(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(STOP_SECONDS)

    def _timer(self, function: str, event_file: str, every: float) -> None:
        event = json.loads((PROJECT_ROOT / "events" / event_file).read_text())
        handler = load_handler(function)

        def tick() -> None:
            while not self._stop.wait(every):
                self.invoke(function, handler, event)

        self._thread(function, tick)

    def invoke(self, function: str, handler, event: dict) -> dict | None:
        """One invocation in this process; an error is counted and logged, like a failed Lambda run."""
        try:
            answer = handler(event, LocalContext(function))
            self.timer_runs[function] += 1
            return answer
        except Exception as exc:  # noqa: BLE001 - the schedule runs it again
            self.timer_errors.append(f"{function}: {type(exc).__name__}: {str(exc)[:200]}")
            return None

    def _storms(self) -> None:
        """Now and then Meta refuses everything for a moment (130429): every sender defers what it holds."""
        rng = random.Random(self.seed)
        while not self._stop.wait(rng.uniform(*STORM_EVERY)):
            self.graph.storm(STORM_SECONDS)

    def _dlq_loop(self) -> None:
        from sendonce.local.event_source import SqsEventSource

        source = SqsEventSource(self.resources.dlq_url, load_handler("dlq_handler"), function_name="dlq_handler")
        while not self._stop.is_set():
            try:
                source.poll_once(wait_seconds=1)
            except Exception as exc:  # noqa: BLE001 - the event source retries
                self.timer_errors.append(f"dlq_handler: {type(exc).__name__}: {str(exc)[:200]}")
                self._stop.wait(1)

    # -- for a shell ------------------------------------------------------------------------------

    def environ(self) -> dict[str, str]:
        """What a shell needs to run every CLI command and reach the HTTP API against this stack."""
        names = ("DATABASE_URL", "SEND_QUEUE_URL", "DLQ_URL", "IDEMPOTENCY_TABLE", "AWS_ENDPOINT_URL_SQS",
                 "AWS_ENDPOINT_URL_DYNAMODB", "AWS_REGION", "AWS_DEFAULT_REGION", "AWS_ACCESS_KEY_ID",
                 "AWS_SECRET_ACCESS_KEY", "WHATSAPP_BUSINESS_ACCOUNT_ID", "WHATSAPP_API_BASE_URL", "WHATSAPP_ACCESS_TOKEN",
                 *SCALED)
        return {
            **{name: os.environ[name] for name in names if name in os.environ},
            "SENDONCE_API_URL": self.api_url,
            "SENDONCE_WEBHOOK_URL": self.webhook_url,
        }

