"""The HTTP server every local stand-in runs on (SQS, DynamoDB, the Graph API, the API gateway), and the AWS
JSON protocol that the SQS and DynamoDB stand-ins share."""

from __future__ import annotations

import json
import signal
import socket
import sys
import threading
import time
import uuid
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Self


class LoopbackServer(ThreadingHTTPServer):
    """A threaded server for many clients at once, quiet about clients that went away."""

    daemon_threads = True
    block_on_close = False  # a long poll or a slow answer in progress must not hold up stop()
    # Many senders connect at once: the default backlog of 5 would refuse some of them.
    request_queue_size = 1024

    def handle_error(self, request, client_address) -> None:
        # A sender process killed mid-request (the local run's chaos) resets its connections: that is the
        # point of the exercise, not an error of the server.
        if isinstance(sys.exc_info()[1], ConnectionError):
            return
        super().handle_error(request, client_address)


def serve_until_stdin_closes(server) -> None:
    """Run a started stand-in in a process of its own: print its URL, serve until stdin closes, then stop.

    The parent that started it holds the other end of stdin: when it exits, however it exits, so does this.
    Ctrl-C reaches the whole process group; the parent decides when its services stop.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    print(server.url, flush=True)
    sys.stdin.read()
    server.stop()


ACCOUNT_ID = "123456789012"
REGION = "us-east-1"


class AwsJsonServer:
    """A stand-in for an AWS service that speaks its JSON protocol (POST /, `X-Amz-Target: <prefix><Operation>`).

    Subclasses set `target_prefix` and implement `handle` (the operation), `error_answer` (what the client gets
    for an exception), `refused_target` and `refused_json` (the service's own errors for a request it cannot
    read).
    """

    target_prefix = ""

    def __init__(
        self, account_id: str = ACCOUNT_ID, region: str = REGION, clock: Callable[[], float] | None = None
    ) -> None:
        self.account_id = account_id  # what URLs and ARNs name
        self.region = region
        self._clock = clock or time.time  # seconds since the epoch; a test may drive time itself
        self._lock = threading.Lock()  # the service's state
        self._connections: set[socket.socket] = set()
        self._connections_lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._server = LoopbackServer(("127.0.0.1", 0), _aws_json_handler(self))

    @property
    def url(self) -> str:
        """The endpoint, e.g. http://127.0.0.1:PORT (for AWS_ENDPOINT_URL_<SERVICE> or `endpoint_url`)."""
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> Self:
        """Serve in a daemon thread; return self."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._server.serve_forever, name=type(self).__name__, daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and close open connections."""
        if self._thread is not None:
            self._server.shutdown()
            self._thread.join()
            self._thread = None
        self._server.server_close()
        # Clients keep connections alive: without this their handler threads would wait on them forever.
        with self._connections_lock:
            for connection in list(self._connections):
                try:
                    connection.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def handle(self, operation: str, params: dict) -> dict:
        """Run one operation on its JSON parameters and return its JSON result (raise the service's error)."""
        raise NotImplementedError

    def error_answer(self, exc: Exception) -> tuple[int, dict, dict[str, str]]:
        """(HTTP status, body, extra headers) for an exception `handle` raised."""
        raise NotImplementedError

    def refused_target(self) -> Exception:
        """The error for a request without this service's X-Amz-Target."""
        raise NotImplementedError

    def refused_json(self) -> Exception:
        """The error for a body that is not JSON."""
        raise NotImplementedError


def _aws_json_handler(service: AwsJsonServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        # boto3 keeps connections alive; HTTP/1.0 would cost a new connection per request.
        protocol_version = "HTTP/1.1"
        # Headers and body leave in one segment (flushed after each request), without waiting for the
        # client's delayed ACK.
        wbufsize = 1 << 16
        disable_nagle_algorithm = True

        def setup(self) -> None:
            super().setup()
            with service._connections_lock:
                service._connections.add(self.connection)

        def finish(self) -> None:
            with service._connections_lock:
                service._connections.discard(self.connection)
            try:
                super().finish()
            except OSError:
                pass  # the client went away

        def log_message(self, *args: object) -> None:
            pass  # one line per request otherwise

        def do_POST(self) -> None:  # noqa: N802 - http.server's naming
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length) if length else b""
            target = self.headers.get("X-Amz-Target") or ""
            try:
                if not target.startswith(service.target_prefix):
                    raise service.refused_target()
                try:
                    params = json.loads(raw) if raw else {}
                except ValueError:
                    raise service.refused_json() from None
                status, body, headers = 200, service.handle(target[len(service.target_prefix):], params), {}
            except Exception as exc:  # noqa: BLE001 - the service's error, or a bug answered as a 500, not a hang
                status, body, headers = service.error_answer(exc)
            data = json.dumps(body, separators=(",", ":")).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/x-amz-json-1.0")
            self.send_header("Content-Length", str(len(data)))
            self.send_header("x-amzn-RequestId", str(uuid.uuid4()))
            for name, value in headers.items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:  # noqa: N802
            data = json.dumps({"service": type(service).__name__}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

    return Handler
