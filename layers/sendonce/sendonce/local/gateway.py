"""A local API Gateway HTTP API (Lambda proxy, payload format 2.0): HTTP on loopback, handlers in-process.

Each request becomes the event API Gateway would deliver (lower-cased headers, duplicates joined by commas,
`cookies`, decoded `queryStringParameters`, `pathParameters`, `requestContext`, a base64 body for content that
is not text), the route's handler runs in-process with a `LocalContext`, and its answer is written back as API
Gateway would write it. API Gateway's own answers are kept: 404 `{"message":"Not Found"}` for no route, 413
over the 10 MB payload quota, 500 `{"message":"Internal Server Error"}` when the function raises or answers
something malformed, 503 when it runs past the 30 s integration timeout.

Each function runs on a small pool of threads that outlive their invocations, as warm Lambda execution
environments do: sendonce keeps one PostgreSQL connection per thread, so a pool bounds the connections however
many HTTP connections come in.

`stack_gateways()` reads template.yaml and wires every `HttpApi` event of every function to its own gateway,
one per `AWS::Serverless::HttpApi`, as the deployed stack does. Not emulated: SigV4 checking on IAM-authorized
APIs (a fixed local identity is put in `requestContext.authorizer.iam`), custom domains, stages other than
`$default`, CORS, throttling.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import re
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as InvocationTimeout
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qsl, unquote, urlsplit

from sendonce.local.http_server import LoopbackServer
from sendonce.local.lambda_runtime import PROJECT_ROOT, LocalContext, load_handler

log = logging.getLogger(__name__)

TEMPLATE = PROJECT_ROOT / "template.yaml"
MAX_PAYLOAD_BYTES = 10 * 1024 * 1024  # HTTP API's request payload quota
INTEGRATION_TIMEOUT_SECONDS = 30.0  # the most an HTTP API waits for a Lambda integration
ACCOUNT_ID = "123456789012"
# What API Gateway passes to an IAM-authorized route; locally nobody signs, so it is always this identity.
LOCAL_IAM_AUTHORIZER = {
    "iam": {
        "accessKey": "ASIALOCALGATEWAY0000",
        "accountId": ACCOUNT_ID,
        "callerId": "AIDALOCALGATEWAY0000",
        "principalOrgId": None,
        "userArn": f"arn:aws:iam::{ACCOUNT_ID}:user/local",
        "userId": "AIDALOCALGATEWAY0000",
    }
}
# Bodies HTTP APIs pass as text; everything else (no Content-Type, form posts, octet streams) arrives base64.
_TEXT_TYPES = frozenset({"application/json", "application/xml", "application/javascript"})
_HOP_BY_HOP = frozenset(
    {"connection", "keep-alive", "proxy-connection", "te", "trailer", "transfer-encoding", "upgrade"}
)
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")

Handler = Callable[[dict, object], object]


@dataclass(frozen=True)
class Route:
    """One route of a gateway: `METHOD /path/{param}` (or `ANY`, `{proxy+}`) and the function behind it."""

    method: str
    path: str
    handler: Handler
    function_name: str
    timeout_seconds: float
    authorizer: dict | None = None
    _pattern: re.Pattern = field(repr=False, compare=False, default=re.compile(""))
    _names: tuple[str, ...] = field(repr=False, compare=False, default=())

    @property
    def key(self) -> str:
        """The routeKey API Gateway reports, e.g. "GET /campaigns/{id}"."""
        return "$default" if self.path == "$default" else f"{self.method} {self.path}"

    def specificity(self) -> tuple[int, int, int]:
        """Lower sorts first: literal routes, then parameters, then greedy ones; a method before ANY."""
        greedy = any(n.endswith("+") for n in self._names)
        return (self.path == "$default", greedy, len(self._names)) + (self.method == "ANY",)


class _PayloadTooLarge(Exception):
    pass


class _BadResponse(Exception):
    pass


class LocalGateway:
    """An HTTP API on 127.0.0.1 (a free port); register routes with `route`, then `start()` or use `with`.

    Parameters
    ----------
    api_id
        The API id reported in `requestContext.apiId`.
    max_body_bytes
        Larger request bodies are answered 413 without invoking anything (API Gateway's quota by default).
    integration_timeout
        Seconds to wait for a function before answering 503 (the function itself runs on, as in AWS).
    concurrency
        Execution environments (threads) per function.
    """

    def __init__(
        self,
        api_id: str = "local",
        *,
        max_body_bytes: int = MAX_PAYLOAD_BYTES,
        integration_timeout: float = INTEGRATION_TIMEOUT_SECONDS,
        concurrency: int = 8,
    ):
        self.api_id = api_id
        self.max_body_bytes = max_body_bytes
        self.integration_timeout = integration_timeout
        self.concurrency = concurrency
        self.routes: list[Route] = []
        self.calls: Counter[str] = Counter()  # invocations per routeKey
        self.errors: list[BaseException] = []  # what handlers raised, as CloudWatch would show it
        self._pools: dict[str, ThreadPoolExecutor] = {}
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None

    # -- setup --------------------------------------------------------------------------------------------

    def route(
        self,
        method: str,
        path: str,
        handler: Handler,
        *,
        function_name: str | None = None,
        timeout_seconds: float = 30.0,
        authorizer: dict | None = None,
    ) -> LocalGateway:
        """Send `METHOD path` to `handler(event, context)`, as an HttpApi event of a function does.

        Parameters
        ----------
        method
            GET, POST, ... or ANY.
        path
            "/webhook", "/campaigns/{id}", "/files/{proxy+}", or "$default" for every request no route takes.
        handler
            A Lambda handler.
        function_name
            The function's name in its context (default: the handler's module name).
        timeout_seconds
            The function's Lambda timeout (its context's remaining time).
        authorizer
            What to put in `requestContext.authorizer` (e.g. `LOCAL_IAM_AUTHORIZER`).

        Returns
        -------
        LocalGateway
            This gateway, to chain calls.
        """
        names: list[str] = []

        def param(match: re.Match) -> str:
            names.append(match.group(1))
            return "(.+)" if match.group(1).endswith("+") else "([^/]+)"

        literal_parts = re.split(r"(\{[^}]+\})", path)
        regex = "".join(
            param(re.match(r"\{(.+)\}", p)) if p.startswith("{") else re.escape(p) for p in literal_parts
        )
        pattern = re.compile(".*" if path == "$default" else regex)
        name = function_name or getattr(handler, "__module__", None) or "function"
        new = Route(method.upper(), path, handler, name, timeout_seconds, authorizer, pattern, tuple(names))
        with self._lock:
            self.routes.append(new)
            self.routes.sort(key=Route.specificity)
        return self

    # -- lifecycle ----------------------------------------------------------------------------------------

    @property
    def url(self) -> str:
        """The base URL, e.g. http://127.0.0.1:54321 (routes are paths under it)."""
        assert self._server is not None, "start() first"
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> LocalGateway:
        """Serve on 127.0.0.1, on a free port, from a background thread."""
        self._server = _Server(("127.0.0.1", 0), _handler_for(self))
        thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True
        )
        thread.name = f"gateway-{self.api_id}"
        thread.start()
        return self

    def stop(self) -> None:
        """Stop serving; invocations in progress finish on their own."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        with self._lock:
            pools, self._pools = list(self._pools.values()), {}
        for pool in pools:
            pool.shutdown(wait=False, cancel_futures=True)

    def __enter__(self) -> LocalGateway:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- requests -----------------------------------------------------------------------------------------

    def match(self, method: str, path: str) -> tuple[Route, dict[str, str]] | None:
        """The route API Gateway would pick for `method path`, and its path parameters; None for no route."""
        with self._lock:
            routes = list(self.routes)
        for candidate in routes:
            if candidate.method not in (method.upper(), "ANY") and candidate.path != "$default":
                continue
            found = candidate._pattern.fullmatch(path)
            if found:
                names = [n.rstrip("+") for n in candidate._names]
                return candidate, {n: unquote(v) for n, v in zip(names, found.groups(), strict=True)}
        return None

    def build_event(
        self,
        route: Route,
        path_parameters: dict[str, str],
        method: str,
        target: str,
        headers: list[tuple[str, str]],
        body: bytes,
        source_ip: str,
    ) -> dict:
        """The payload format 2.0 event for one request.

        Parameters
        ----------
        route, path_parameters
            What `match` returned.
        method, target
            The request line's method and target ("/path?query").
        headers
            The request's headers in order, as received.
        body
            The raw body (empty: no `body` key, as API Gateway sends for a GET).
        source_ip
            The client's address.

        Returns
        -------
        dict
            The event.
        """
        split = urlsplit(target)
        joined: dict[str, str] = {}
        cookies: list[str] = []
        for name, value in headers:
            name = name.lower()
            if name == "cookie":
                cookies += [c.strip() for c in value.split(";") if c.strip()]
            elif name not in _HOP_BY_HOP:
                joined[name] = f"{joined[name]},{value}" if name in joined else value
        host = joined.get("host", "127.0.0.1").split(":")[0]
        joined.setdefault("x-forwarded-for", source_ip)
        joined.setdefault("x-forwarded-proto", "http")
        now = time.time()
        joined.setdefault("x-amzn-trace-id", f"Root=1-{int(now):08x}-{uuid.uuid4().hex[:24]}")
        moment = datetime.fromtimestamp(now, UTC)
        event: dict = {
            "version": "2.0",
            "routeKey": route.key,
            "rawPath": split.path,
            "rawQueryString": split.query,
        }
        if cookies:
            event["cookies"] = cookies
        event["headers"] = joined
        if split.query:
            params: dict[str, str] = {}
            for name, value in parse_qsl(split.query, keep_blank_values=True):
                params[name] = f"{params[name]},{value}" if name in params else value
            event["queryStringParameters"] = params
        context: dict = {
            "accountId": ACCOUNT_ID,
            "apiId": self.api_id,
            "domainName": host,
            "domainPrefix": host.split(".")[0],
        }
        if route.authorizer is not None:
            context["authorizer"] = route.authorizer
        context["http"] = {
            "method": method,
            "path": split.path,
            "protocol": "HTTP/1.1",
            "sourceIp": source_ip,
            "userAgent": joined.get("user-agent", ""),
        }
        context.update(
            requestId=str(uuid.uuid4()),
            routeKey=route.key,
            stage="$default",
            time=f"{moment:%d}/{_MONTHS[moment.month - 1]}/{moment:%Y:%H:%M:%S} +0000",
            timeEpoch=int(now * 1000),
        )
        event["requestContext"] = context
        if path_parameters:
            event["pathParameters"] = path_parameters
        event["isBase64Encoded"] = False
        if body:
            text = _as_text(body, joined.get("content-type", ""))
            if text is None:
                event.update(body=base64.b64encode(body).decode("ascii"), isBase64Encoded=True)
            else:
                event["body"] = text
        return event

    def invoke(self, route: Route, event: dict) -> tuple[int, list[tuple[str, str]], bytes]:
        """Run the route's function on `event`: its answer as API Gateway sends it (status, headers, body)."""
        with self._lock:
            self.calls[route.key] += 1
            pool = self._pools.get(route.function_name)
            if pool is None:
                pool = self._pools[route.function_name] = ThreadPoolExecutor(
                    self.concurrency, thread_name_prefix=f"lambda-{route.function_name}"
                )
        # The context is made in the environment's thread, so queueing does not eat the function's time.
        future = pool.submit(
            lambda: route.handler(event, LocalContext(route.function_name, route.timeout_seconds))
        )
        try:
            return http_response(future.result(timeout=self.integration_timeout))
        except InvocationTimeout:
            log.warning("%s: no answer within %.0f s", route.key, self.integration_timeout)
            return _message(503, "Service Unavailable")
        except _BadResponse as exc:
            log.warning("%s: malformed function response (%s)", route.key, exc)
            return _message(500, "Internal Server Error")
        except Exception as exc:  # noqa: BLE001 - a function error is API Gateway's 500, whatever it was
            with self._lock:
                self.errors.append(exc)
            # The type only: an exception's text may carry a phone number or a secret.
            log.warning("%s: function raised %s", route.key, type(exc).__name__)
            return _message(500, "Internal Server Error")


def http_response(result: object) -> tuple[int, list[tuple[str, str]], bytes]:
    """Interpret a function's answer as payload format 2.0 does: (status, headers, body).

    A dict with `statusCode` gives statusCode, headers, cookies (one Set-Cookie each) and body (base64-decoded
    when isBase64Encoded); anything else is a 200 JSON answer whose body is the value itself.

    Raises
    ------
    _BadResponse
        For answers API Gateway refuses (it then answers 500).
    """
    if not (isinstance(result, dict) and "statusCode" in result):
        body = result if isinstance(result, str) else json.dumps(result)
        return 200, [("Content-Type", "application/json")], body.encode()
    status = result["statusCode"]
    if isinstance(status, bool) or not isinstance(status, int) or not 100 <= status <= 599:
        raise _BadResponse(f"statusCode {status!r}")
    headers, cookies, body = result.get("headers") or {}, result.get("cookies") or [], result.get("body")
    if not isinstance(headers, dict) or not isinstance(cookies, list) or not isinstance(body, str | None):
        raise _BadResponse("headers, cookies or body of the wrong type")
    try:
        data = (
            base64.b64decode(body or "", validate=True)
            if result.get("isBase64Encoded")
            else (body or "").encode()
        )
    except binascii.Error as exc:
        raise _BadResponse("isBase64Encoded but the body is not base64") from exc
    pairs = [
        (str(k), str(v)) for k, v in headers.items() if str(k).lower() not in _HOP_BY_HOP | {"content-length"}
    ]
    return status, pairs + [("Set-Cookie", str(c)) for c in cookies], data


def _message(status: int, message: str) -> tuple[int, list[tuple[str, str]], bytes]:
    return status, [("Content-Type", "application/json")], json.dumps({"message": message}).encode()


def _as_text(body: bytes, content_type: str) -> str | None:
    """The body as API Gateway passes text, or None when it would base64-encode it."""
    media = content_type.split(";")[0].strip().lower()
    if not (media.startswith("text/") or media in _TEXT_TYPES):
        return None
    try:
        return body.decode("utf-8")
    except UnicodeDecodeError:
        return None


_Server = LoopbackServer


def _handler_for(gateway: LocalGateway) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, like API Gateway
        disable_nagle_algorithm = True  # headers and body are separate writes: no 40 ms delayed-ACK stall

        def log_message(self, *args) -> None:  # quiet
            pass

        def handle_request(self) -> None:
            split = urlsplit(self.path)
            try:
                body = self._read_body()
            except _PayloadTooLarge:
                return self._answer(*_message(413, "Request Entity Too Large"), close=True)
            except ValueError:
                return self._answer(*_message(400, "Bad Request"), close=True)
            found = gateway.match(self.command, split.path)
            if found is None:
                return self._answer(*_message(404, "Not Found"))
            route, path_parameters = found
            event = gateway.build_event(
                route,
                path_parameters,
                self.command,
                self.path,
                list(self.headers.items()),
                body,
                self.client_address[0],
            )
            self._answer(*gateway.invoke(route, event), request_id=event["requestContext"]["requestId"])

        do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = do_OPTIONS = handle_request

        def _read_body(self) -> bytes:
            limit = gateway.max_body_bytes
            if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
                chunks, size = [], 0
                while True:
                    length = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                    if length == 0:
                        while self.rfile.readline().strip():  # trailers, up to the blank line
                            pass
                        return b"".join(chunks)
                    size += length
                    if size > limit:
                        raise _PayloadTooLarge
                    chunks.append(self.rfile.read(length))
                    self.rfile.readline()
            length = int(self.headers.get("Content-Length") or 0)
            if length < 0:
                raise ValueError("negative Content-Length")
            if length > limit:
                # Read (and drop) a body up to twice the quota so the client sees the 413 rather than a reset.
                left = length if length <= 2 * limit else 0
                while left > 0:
                    chunk = self.rfile.read(min(left, 1 << 16))
                    if not chunk:
                        break
                    left -= len(chunk)
                raise _PayloadTooLarge
            return self.rfile.read(length)

        def _answer(
            self,
            status: int,
            headers: list[tuple[str, str]],
            body: bytes,
            request_id: str | None = None,
            close: bool = False,
        ) -> None:
            try:
                self.send_response(status)
                for name, value in headers:
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(body)))
                self.send_header("apigw-requestid", request_id or uuid.uuid4().hex[:16])
                if close:
                    self.send_header("Connection", "close")
                    self.close_connection = True
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(body)
            except (BrokenPipeError, ConnectionResetError):
                self.close_connection = True  # the client went away: nothing to answer

    return Handler


# -- template.yaml ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TemplateRoute:
    """One HttpApi event of a function in template.yaml."""

    api: str  # the AWS::Serverless::HttpApi's logical id
    method: str
    path: str
    function: str  # the directory under functions/
    timeout_seconds: float
    iam: bool  # the route is IAM-authorized


def load_template(template: Path = TEMPLATE) -> dict:
    """A SAM template as data, CloudFormation's short forms kept as they are (`!Ref X` -> {"Ref": "X"})."""
    import yaml  # only the local tooling and the tests read the template

    class Loader(yaml.SafeLoader):
        pass

    def intrinsic(loader: yaml.SafeLoader, suffix: str, node: yaml.Node) -> dict:
        if isinstance(node, yaml.ScalarNode):
            return {suffix: loader.construct_scalar(node)}
        if isinstance(node, yaml.SequenceNode):
            return {suffix: loader.construct_sequence(node, deep=True)}
        return {suffix: loader.construct_mapping(node, deep=True)}

    Loader.add_multi_constructor("!", intrinsic)
    return yaml.load(template.read_text(), Loader=Loader)  # noqa: S506 - SafeLoader, plus inert intrinsics


def template_routes(template: Path = TEMPLATE) -> list[TemplateRoute]:
    """Every HttpApi event of every function of a SAM template, as the deployed stack routes them.

    Parameters
    ----------
    template
        The SAM template (the project's template.yaml by default).

    Returns
    -------
    list[TemplateRoute]
        In template order.
    """
    document = load_template(template)
    resources = document.get("Resources") or {}
    default_timeout = ((document.get("Globals") or {}).get("Function") or {}).get("Timeout", 3)
    found = []
    for logical_id, resource in resources.items():
        if resource.get("Type") != "AWS::Serverless::Function":
            continue
        properties = resource.get("Properties") or {}
        if properties.get("Handler") != "app.lambda_handler":
            raise ValueError(
                f"{logical_id}: load_handler runs app.lambda_handler, not {properties.get('Handler')}"
            )
        function = Path(properties["CodeUri"]).name
        for event in (properties.get("Events") or {}).values():
            if event.get("Type") != "HttpApi":
                continue
            spec = event.get("Properties") or {}
            api_ref = spec.get("ApiId")
            api = (
                api_ref.get("Ref") if isinstance(api_ref, dict) else "ServerlessHttpApi"
            )  # SAM's implicit API
            api_auth = ((resources.get(api) or {}).get("Properties") or {}).get("Auth") or {}
            authorizer = (spec.get("Auth") or {}).get("Authorizer") or api_auth.get("DefaultAuthorizer")
            found.append(
                TemplateRoute(
                    api,
                    str(spec.get("Method", "ANY")).upper(),
                    spec.get("Path", "$default"),
                    function,
                    float(properties.get("Timeout", default_timeout)),
                    authorizer == "AWS_IAM",
                )
            )
    return found


def stack_gateways(
    handlers: Mapping[str, Handler] | None = None, template: Path = TEMPLATE, **options
) -> dict[str, LocalGateway]:
    """One gateway per HttpApi of the template, with its functions' routes registered (not started).

    Parameters
    ----------
    handlers
        Handlers by function directory ("webhook", "campaigns_api"); the others are loaded from functions/.
    template
        The SAM template.
    **options
        `LocalGateway` keyword arguments for every gateway.

    Returns
    -------
    dict[str, LocalGateway]
        By the HttpApi's logical id, e.g. {"WebhookHttpApi": ..., "CampaignsHttpApi": ...}.
    """
    gateways: dict[str, LocalGateway] = {}
    for spec in template_routes(template):
        gateway = gateways.get(spec.api) or gateways.setdefault(
            spec.api, LocalGateway(spec.api.lower(), **options)
        )
        handler = (handlers or {}).get(spec.function) or load_handler(spec.function)
        gateway.route(
            spec.method,
            spec.path,
            handler,
            function_name=spec.function,
            timeout_seconds=spec.timeout_seconds,
            authorizer=LOCAL_IAM_AUTHORIZER if spec.iam else None,
        )
    return gateways
