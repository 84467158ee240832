"""A WhatsApp Cloud API stand-in: a real HTTP server on loopback with planned faults.

It counts every send it *accepted* per recipient, which is how tests catch duplicates: a message Meta
accepted reaches the phone whether or not the sender ever heard the answer.

Faults, planned per recipient and consumed in order (afterwards the recipient gets `ok`):

- `ok`: accept and answer 200 with a new WAMID.
- `error:CODE`: refuse with a Graph error body carrying `CODE` (HTTP status as Meta uses for it).
- `http:STATUS`: refuse with a bare HTTP status and a non-JSON body (a load balancer's 502, say).
- `drop`: accept, then close the connection without answering (the ambiguous window).
- `slow:SECONDS`: accept, wait, then answer 200 (a read timeout on the client is ambiguous too).
- `crash`: accept, call `on_crash(payload)` (a test kills the sender process there), then close.
"""

from __future__ import annotations

import json
import random
import re
import socket
import threading
import time
import uuid
from collections import Counter, defaultdict, deque
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

API_VERSION = "v23.0"
_PATH = re.compile(r"^/v\d+\.\d+/(\d+)/messages$")
# HTTP statuses Meta answers with for these codes; anything else is 400.
_HTTP_STATUS = {0: 401, 190: 401, 10: 403, 4: 429, 80007: 429, 130429: 429, 131056: 429, 1: 500, 2: 503, 131000: 500}
CHAOS_FAULTS = ("error:131000", "http:502", "error:130429", "drop", "error:131026")


class FakeGraph:
    """The fake server; use as a context manager or call `start()` / `stop()`."""

    def __init__(
        self, token: str = "test-token", latency: float = 0.0, chaos: float = 0.0, seed: int = 7, throttle_mps: int = 0
    ):
        self.token = token
        self.latency = latency
        self.chaos = chaos
        # Like Meta: more than `throttle_mps` messages in one second are refused with 130429 (0: no limit).
        self.throttle_mps = throttle_mps
        self._seed = seed
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self.reset()

    def reset(self) -> None:
        """Forget every send, plan and hook, as a freshly started server would (the port stays)."""
        with self._lock:
            self.throttled = 0
            self.accepted_at: list[float] = []
            self._arrivals: list[float] = []
            self.on_crash: Callable[[dict], None] | None = None
            # Called with the recipient before each send is answered (tests change plans mid-run with it).
            self.on_request: Callable[[str], None] | None = None
            self.accepted: Counter[str] = Counter()
            self.wamids: dict[str, list[str]] = defaultdict(list)
            self.requests: list[dict] = []
            self._plans: dict[str, deque[str]] = defaultdict(deque)
            self._random = random.Random(self._seed)

    # -- control ---------------------------------------------------------------------------------

    def plan(self, to: str, *faults: str) -> None:
        """Queue faults for one recipient (E.164 digits), consumed one per request."""
        with self._lock:
            self._plans[to].extend(faults)

    @property
    def url(self) -> str:
        """The base URL to use as WHATSAPP_API_BASE_URL."""
        assert self._server is not None, "start() first"
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}/{API_VERSION}"

    def duplicates(self) -> dict[str, int]:
        """Recipients that were accepted more than once, with their counts."""
        return {to: n for to, n in self.accepted.items() if n > 1}

    def start(self) -> FakeGraph:
        """Serve on 127.0.0.1 on a free port, in a background thread."""
        self._server = _Server(("127.0.0.1", 0), _handler_for(self))
        threading.Thread(target=self._server.serve_forever, name="fake-graph", daemon=True).start()
        return self

    def stop(self) -> None:
        """Stop serving."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> FakeGraph:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- behaviour ---------------------------------------------------------------------------------

    def max_rate(self, window: float = 1.0) -> int:
        """The most sends accepted within any `window` seconds."""
        times = sorted(self.accepted_at)
        start, best = 0, 0
        for end, at in enumerate(times):
            while at - times[start] >= window:
                start += 1
            best = max(best, end - start + 1)
        return best

    def _next_fault(self, to: str) -> str:
        with self._lock:
            if self.throttle_mps:
                now = time.monotonic()
                recent = [at for at in self._arrivals if now - at < 1.0]
                if len(recent) >= self.throttle_mps:
                    self.throttled += 1
                    return "error:130429"
                self._arrivals = [*recent, now]
            if self._plans[to]:
                return self._plans[to].popleft()
            if self.chaos and self._random.random() < self.chaos:
                return self._random.choice(CHAOS_FAULTS)
        return "ok"

    def _accept(self, to: str, payload: dict) -> str:
        wamid = "wamid." + uuid.uuid4().hex.upper()
        with self._lock:
            self.accepted[to] += 1
            self.wamids[to].append(wamid)
            self.accepted_at.append(time.monotonic())
        return wamid

    def _log(self, to: str, fault: str, payload: dict) -> None:
        with self._lock:
            self.requests.append({"to": to, "fault": fault, "payload": payload, "at": time.time()})


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128  # the default backlog of 5 refuses connections when many senders open at once


def _handler_for(graph: FakeGraph) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, like graph.facebook.com
        # Headers and body go out in separate writes: without TCP_NODELAY, Nagle's algorithm and delayed ACKs
        # add ~40 ms to every answer on a kept-alive connection.
        disable_nagle_algorithm = True

        def log_message(self, *args) -> None:  # quiet
            pass

        def do_POST(self) -> None:  # noqa: N802 - http.server's naming
            raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            if not _PATH.match(self.path.split("?")[0]):
                return self._error(404, 100, f"Unknown path {self.path}")
            if self.headers.get("Authorization") != f"Bearer {graph.token}":
                return self._error(401, 190, "Invalid OAuth access token")
            try:
                payload = json.loads(raw)
                to = payload["to"]
                assert payload["messaging_product"] == "whatsapp" and payload["type"] == "template"
                assert payload["template"]["name"] and payload["template"]["language"]["code"]
            except (ValueError, KeyError, TypeError, AssertionError):
                return self._error(400, 100, "Invalid parameter")
            if graph.latency:
                time.sleep(graph.latency)
            if graph.on_request:
                graph.on_request(to)
            fault = graph._next_fault(to)
            graph._log(to, fault, payload)
            kind, _, arg = fault.partition(":")
            if kind == "error":
                code = int(arg)
                return self._error(_HTTP_STATUS.get(code, 400), code, f"planned error {code}")
            if kind == "http":
                return self._send(int(arg), b"<html>bad gateway</html>", "text/html")
            wamid = graph._accept(to, payload)
            if kind == "drop":
                return self._hang_up()
            if kind == "crash":
                if graph.on_crash:
                    graph.on_crash(payload)
                return self._hang_up()
            if kind == "slow":
                time.sleep(float(arg))
            body = {"messaging_product": "whatsapp", "contacts": [{"input": to, "wa_id": to}], "messages": [{"id": wamid}]}
            self._send(200, json.dumps(body).encode(), "application/json")

        def _error(self, status: int, code: int, message: str) -> None:
            body = {"error": {"message": message, "type": "OAuthException", "code": code, "fbtrace_id": "fake"}}
            self._send(status, json.dumps(body).encode(), "application/json")

        def _send(self, status: int, body: bytes, content_type: str) -> None:
            try:
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
            except (BrokenPipeError, ConnectionResetError):
                self.close_connection = True  # the client gave up (read timeout): nothing to answer

        def _hang_up(self) -> None:
            self.close_connection = True
            try:
                self.connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    return Handler
