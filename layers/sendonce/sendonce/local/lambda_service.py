"""A local stand-in for the Lambda Invoke API, so asynchronous self-invocations run in-process.

`AWS_ENDPOINT_URL_LAMBDA` points boto3 at it. An `Event` invocation is answered 202 at once and runs the
registered handler in a thread, as Lambda's asynchronous invocation does; `RequestResponse` runs it inline.
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from sendonce.local.lambda_runtime import LocalContext

_PATH = re.compile(r"^/2015-03-31/functions/([^/]+)/invocations$")


class LocalLambdaService:
    """Serves the Invoke API on loopback for the functions registered with `register`."""

    def __init__(self) -> None:
        self.functions: dict[str, Callable[[dict, object], dict]] = {}
        self.errors: list[BaseException] = []
        self._threads: list[threading.Thread] = []
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    @property
    def invocations(self) -> int:
        """How many asynchronous invocations were started."""
        return len(self._threads)

    def register(self, name: str, handler: Callable[[dict, object], dict]) -> None:
        self.functions[name] = handler

    def start(self) -> LocalLambdaService:
        threading.Thread(target=self._server.serve_forever, name="lambda-service", daemon=True).start()
        return self

    def wait(self, timeout: float = 120) -> None:
        """Wait for every asynchronous invocation started so far to finish."""
        for thread in list(self._threads):
            thread.join(timeout)

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def _run(self, name: str, event: dict) -> dict:
        try:
            return self.functions[name](event, LocalContext(name, timeout_seconds=900))
        except BaseException as exc:  # noqa: BLE001 - recorded for the test to see, as CloudWatch would
            self.errors.append(exc)
            raise

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        service = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def do_POST(self) -> None:  # noqa: N802
                match = _PATH.match(self.path.split("?")[0])
                payload = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)) or b"{}")
                name = match.group(1) if match else ""
                if name not in service.functions:
                    return self._answer(404, {"Type": "User", "message": f"Function not found: {name}"})
                if self.headers.get("X-Amz-Invocation-Type") == "Event":
                    thread = threading.Thread(target=lambda: _quietly(service._run, name, payload), daemon=True)
                    service._threads.append(thread)
                    thread.start()
                    return self._answer(202, None)
                return self._answer(200, service._run(name, payload))

            def _answer(self, status: int, body: dict | None) -> None:
                data = b"" if body is None else json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        return Handler


def _quietly(function: Callable, *args) -> None:
    try:
        function(*args)
    except BaseException:  # noqa: BLE001 - already recorded in LocalLambdaService.errors
        pass
