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

Status webhooks (`post_statuses_to`): like Meta, the fake then reports what became of every message it
accepted, whether or not the sender heard the answer (`drop`, `crash` and `slow` included), by POSTing signed
status webhooks, late, out of order, duplicated, and retried until acknowledged (`StatusWebhook`).
"""

from __future__ import annotations

import hashlib
import heapq
import hmac
import itertools
import json
import logging
import random
import re
import socket
import threading
import time
import uuid
from collections import Counter, defaultdict, deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx

from sendonce.local.http_server import LoopbackServer

log = logging.getLogger(__name__)

API_VERSION = "v26.0"
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
        self.webhook: StatusWebhook | None = None  # set by post_statuses_to
        self.reset()

    def reset(self) -> None:
        """Forget every send, plan and hook, as a freshly started server would (the port stays).

        The status webhook (`post_statuses_to`) keeps running, with its counters and undelivered statuses.
        """
        with self._lock:
            self.throttled = 0
            self.storms = self.stormed = 0  # 130429 storms, and the requests they refused
            self._storm_until = 0.0
            self.accepted_at: list[float] = []
            self._arrivals: list[float] = []
            self.on_crash: Callable[[dict], None] | None = None
            # Called with the recipient before each send is answered (tests change plans mid-run with it).
            self.on_request: Callable[[str], None] | None = None
            self.accepted: Counter[str] = Counter()
            self.wamids: dict[str, list[str]] = defaultdict(list)
            self.requests: list[dict] = []
            self._plans: dict[str, deque[str]] = defaultdict(deque)
            self._status_plans: dict[str, deque[str]] = defaultdict(deque)
            self._random = random.Random(self._seed)

    # -- control ---------------------------------------------------------------------------------

    def plan(self, to: str, *faults: str) -> None:
        """Queue faults for one recipient (E.164 digits), consumed one per request."""
        with self._lock:
            self._plans[to].extend(faults)

    def plan_statuses(self, to: str, *fates: str) -> None:
        """Queue what becomes of the next messages accepted for `to`, one fate per accepted message.

        A fate is the chain of statuses Meta reports (`STATUS_FATES`): "read" (sent, delivered, read),
        "read-direct" (sent, read: Meta skips delivered when the message is read at once), "delivered",
        "sent", or "failed:CODE" (sent, then failed with that error). Unplanned messages draw one from
        the webhook's `fates` weights.
        """
        for fate in fates:
            _chain(fate)  # refuse a typo now, not in a delivery thread
        with self._lock:
            self._status_plans[to].extend(fates)

    def post_statuses_to(
        self,
        url: str,
        app_secret: str,
        *,
        chaos: float = 0.0,
        seed: int | None = None,
        retry_base: float = 0.2,
        retry_cap: float = 3.0,
        workers: int = 2,
        fates: Mapping[str, float] | None = None,
        timeout: float = 5.0,
    ) -> StatusWebhook:
        """From now on, report the statuses of every accepted message to `url`, as Meta's webhooks do.

        Parameters
        ----------
        url
            The webhook's callback URL (e.g. a `LocalGateway`'s url + "/webhook").
        app_secret
            The app secret that signs each POST (`X-Hub-Signature-256`).
        chaos
            Rate of Meta's delivery faults: statuses held back (out of order), delivered twice, POSTs that
            fail or whose acknowledgement is lost (both retried).
        seed
            Seeds every choice per message (default: the graph's seed), so a run can be repeated.
        retry_base, retry_cap
            A failed POST is retried after `retry_base * 2**(n-1)` seconds, at most `retry_cap`, until it is
            acknowledged with a 200 (Meta: for up to 7 days, with decreasing frequency; here scaled down).
        workers
            Concurrent POSTs.
        fates
            Weights of the fates of unplanned messages (default `STATUS_FATES`).
        timeout
            Seconds to wait for the webhook's answer before counting the POST failed.

        Returns
        -------
        StatusWebhook
            The delivery (also `self.webhook`), with its counters.
        """
        if self.webhook is not None:
            self.webhook.stop()
        self.webhook = StatusWebhook(
            url, app_secret, chaos=chaos, seed=self._seed if seed is None else seed, retry_base=retry_base,
            retry_cap=retry_cap, workers=workers, fates=fates, timeout=timeout,
        ).start()
        return self.webhook

    def wait_statuses_delivered(self, timeout: float = 30.0) -> bool:
        """Wait until every status emitted so far was acknowledged with a 200; False on `timeout`."""
        return self.webhook.wait_delivered(timeout) if self.webhook is not None else True

    def webhook_stats(self) -> dict[str, int]:
        """The status webhook's counters (`StatusWebhook.stats`); zeros when it is off."""
        return self.webhook.stats() if self.webhook is not None else StatusWebhook.empty_stats()

    def final_status(self, wamid: str) -> tuple[str, int | None]:
        """The last status Meta reports for a message it accepted, and its error code (failed only)."""
        assert self.webhook is not None, "post_statuses_to() first"
        return self.webhook.final_status(wamid)

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
        """Stop serving, and stop posting statuses (those not delivered yet are dropped)."""
        if self.webhook is not None:
            self.webhook.stop()
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

    def storm(self, seconds: float) -> None:
        """Refuse every send with 130429 for `seconds`, as Meta does when a number's throughput is exceeded."""
        with self._lock:
            self._storm_until = time.monotonic() + seconds
            self.storms += 1

    def _next_fault(self, to: str) -> str:
        with self._lock:
            if time.monotonic() < self._storm_until:
                self.stormed += 1
                return "error:130429"
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

    def _accept(self, to: str, payload: dict, phone_number_id: str = "") -> str:
        wamid = "wamid." + uuid.uuid4().hex.upper()
        with self._lock:
            self.accepted[to] += 1
            self.wamids[to].append(wamid)
            self.accepted_at.append(time.monotonic())
            index = len(self.wamids[to])
            fate = self._status_plans[to].popleft() if self._status_plans[to] else None
        if self.webhook is not None:
            # Meta reports every message it accepted, whether or not the sender ever heard the answer.
            callback = payload.get("biz_opaque_callback_data")
            self.webhook.emit(wamid, to, callback, phone_number_id, index, fate)
        return wamid

    def _log(self, to: str, fault: str, payload: dict) -> None:
        with self._lock:
            self.requests.append({"to": to, "fault": fault, "payload": payload, "at": time.time()})


_Server = LoopbackServer


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
            path = _PATH.match(self.path.split("?")[0])
            if not path:
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
            wamid = graph._accept(to, payload, path.group(1))
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


# -- status webhooks -----------------------------------------------------------------------------------------

WABA_ID = "102290129340398"
DISPLAY_PHONE_NUMBER = "15550783881"
# What becomes of an accepted message when no fate was planned for it, and how often.
STATUS_FATES: dict[str, float] = {
    "read": 0.70,
    "read-direct": 0.05,
    "delivered": 0.12,
    "sent": 0.03,
    "failed:131026": 0.07,
    "failed:131050": 0.03,
}
_CHAINS = {
    "read": ("sent", "delivered", "read"),
    "read-direct": ("sent", "read"),
    "delivered": ("sent", "delivered"),
    "sent": ("sent",),
}
_OPTED_OUT = (
    "Unable to deliver the message. This recipient has chosen to stop receiving marketing messages on "
    "WhatsApp from your business."
)
# Meta's error objects in failed statuses: code -> (title, error_data.details).
_ERRORS = {
    131026: ("Message undeliverable", "Message Undeliverable."),
    131050: (_OPTED_OUT, _OPTED_OUT),
}
_ERRORS_HREF = "https://developers.facebook.com/docs/whatsapp/cloud-api/support/error-codes/"
# Meta's times scaled down to a local run (seconds): between a message's statuses; the extra wait of a status
# held back (so later ones overtake it); before a status acknowledged once is delivered again.
_STEP = (0.02, 0.15)
_HOLD_BACK = (0.15, 0.6)
_DUPLICATE_AFTER = (0.05, 0.4)
_MAX_INJECTED = 3  # injected failures per status at most (each costs a back-off)
_MAX_BATCH = 10  # statuses per POST at most
_STATS = ("emitted", "posts", "acknowledged", "failed", "retried", "injected", "duplicated", "out_of_order")


def _chain(fate: str) -> tuple[str, ...]:
    """The statuses Meta reports, in order, for a fate ("read", "failed:131026", ...)."""
    if fate in _CHAINS:
        return _CHAINS[fate]
    kind, _, code = fate.partition(":")
    if kind == "failed" and code.isdigit():
        return ("sent", "failed")
    raise ValueError(f"unknown status fate {fate!r}: one of {sorted(_CHAINS)} or failed:CODE")


@dataclass
class _Notification:
    """One status as Meta delivers it, with what the chaos planned for it."""

    status: dict
    wamid: str
    position: int  # in its message's chain: acknowledged after a later one of the chain, it came out of order
    phone_number_id: str
    inject: int = 0  # how many of its POST attempts fail on purpose, first
    lost_ack: bool = (
        False  # how: the POST is made and answered, but the 200 is "lost" (else nothing is posted)
    )
    duplicates: int = 0  # deliveries again after it was acknowledged
    acked: bool = False


@dataclass
class _Delivery:
    """One POST's statuses; a retry sends the same bytes again, as Meta retries the same notification."""

    items: list[_Notification]
    attempt: int = 0
    body: bytes | None = field(default=None, repr=False)


class StatusWebhook:
    """Meta's status webhooks for a `FakeGraph`: signed POSTs from a few threads, retried until a 200.

    Each accepted message gets a chain of statuses (its fate), each status a planned delivery drawn from a
    random generator seeded by (seed, recipient, how many messages that recipient got before), so a run can be
    repeated whatever the threads do. With `chaos`, a status may be held back (later statuses overtake it),
    delivered again after its 200 (Meta delivers at least once), and have its first POST attempts fail on
    purpose: refused (nothing is posted) or acknowledgement lost (the webhook got it, the fake acts as if it
    did not, and redelivers it). Real failures (non-200, connection errors, timeouts) are retried alike.

    `stats()` counts: emitted (distinct statuses), posts (HTTP POSTs made), acknowledged (POSTs answered 200
    and heard), failed (attempts that failed, injected ones included), retried (attempts after a failure),
    injected, duplicated (deliveries again after a 200), out_of_order (statuses acknowledged after a later
    status of their message), pending (status deliveries not acknowledged yet).
    """

    def __init__(
        self,
        url: str,
        app_secret: str,
        *,
        chaos: float = 0.0,
        seed: int = 7,
        retry_base: float = 0.2,
        retry_cap: float = 3.0,
        workers: int = 2,
        fates: Mapping[str, float] | None = None,
        timeout: float = 5.0,
        waba_id: str = WABA_ID,
        display_phone_number: str = DISPLAY_PHONE_NUMBER,
    ):
        self.url = url
        self.chaos = chaos
        self.seed = seed
        self.retry_base = retry_base
        self.retry_cap = retry_cap
        self.workers = workers
        self.fates = dict(fates or STATUS_FATES)
        for fate in self.fates:
            _chain(fate)
        self.waba_id = waba_id
        self.display_phone_number = display_phone_number
        self._secret = app_secret.encode()
        self._client = httpx.Client(
            timeout=timeout, headers={"Content-Type": "application/json", "User-Agent": "facebookexternalua"}
        )
        self._cond = threading.Condition()
        self._heap: list[tuple[float, int, _Delivery]] = []
        self._order = itertools.count()
        self._random = random.Random(seed)  # timing of duplicates only
        self._timelines: dict[str, list[dict]] = {}
        self._acked_positions: dict[str, set[int]] = defaultdict(set)
        self._counts: Counter[str] = Counter()
        self._pending = 0
        self._stopping = False
        self._threads: list[threading.Thread] = []

    # -- control ---------------------------------------------------------------------------------------------

    def start(self) -> StatusWebhook:
        """Start the delivery threads."""
        for i in range(self.workers):
            thread = threading.Thread(target=self._work, name=f"fake-graph-webhook-{i}", daemon=True)
            self._threads.append(thread)
            thread.start()
        return self

    def stop(self, timeout: float = 0.9) -> None:
        """Stop delivering within `timeout` seconds, retries pending or not (the undelivered are dropped)."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            # A thread still inside a POST is a daemon: it is left to finish alone and delivers nothing more.
            thread.join(max(deadline - time.monotonic(), 0.0))
        self._client.close()

    def wait_delivered(self, timeout: float = 30.0) -> bool:
        """Wait until every status emitted so far was acknowledged with a 200; False on `timeout`."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._pending > 0:
                left = deadline - time.monotonic()
                if left <= 0 or self._stopping:
                    return False
                self._cond.wait(left)
        return True

    def stats(self) -> dict[str, int]:
        """The counters (see the class), pending included."""
        with self._cond:
            return {**{name: self._counts[name] for name in _STATS}, "pending": self._pending}

    @staticmethod
    def empty_stats() -> dict[str, int]:
        """The counters of a webhook that never ran."""
        return dict.fromkeys((*_STATS, "pending"), 0)

    def timeline(self, wamid: str) -> list[dict]:
        """The statuses Meta reports for a message, in the order they happened (not the order delivered)."""
        with self._cond:
            return [dict(status) for status in self._timelines[wamid]]

    def final_status(self, wamid: str) -> tuple[str, int | None]:
        """The last status of a message and its error code (None unless failed)."""
        last = self.timeline(wamid)[-1]
        return last["status"], last["errors"][0]["code"] if "errors" in last else None

    # -- emission --------------------------------------------------------------------------------------------

    def emit(
        self,
        wamid: str,
        to: str,
        callback: str | None,
        phone_number_id: str,
        index: int,
        fate: str | None = None,
    ) -> None:
        """Plan the statuses Meta will report for a message the fake accepted.

        Parameters
        ----------
        wamid, to
            The message's id and recipient (E.164 digits, Meta's `recipient_id`).
        callback
            The biz_opaque_callback_data the send carried (echoed in every status), or None.
        phone_number_id
            The business number it was sent from (the payload's `metadata`).
        index
            How many messages the recipient got so far, this one included: with `to` and the seed, it seeds
            every choice made for this message.
        fate
            A planned fate (see `FakeGraph.plan_statuses`), else one is drawn from `fates`.
        """
        rng = random.Random(f"{self.seed}|{to}|{index}")
        fate = fate or rng.choices(list(self.fates), weights=list(self.fates.values()))[0]
        due, at = time.monotonic(), int(time.time())
        planned: list[tuple[float, _Notification]] = []
        conversation = f"{rng.getrandbits(128):032x}"
        for position, name in enumerate(_chain(fate)):
            due += rng.uniform(*_STEP)
            at += rng.randint(1, 30) if position else 0  # seconds on Meta's clock: distinct, increasing
            notification = _Notification(
                self._status(wamid, name, at, to, callback, fate, conversation),
                wamid,
                position,
                phone_number_id,
            )
            held = rng.uniform(*_HOLD_BACK) if rng.random() < self.chaos else 0.0
            while notification.inject < _MAX_INJECTED and rng.random() < self.chaos:
                notification.inject += 1
            notification.lost_ack = rng.random() < 0.5
            notification.duplicates = int(rng.random() < self.chaos)
            planned.append((due + held, notification))
        with self._cond:
            if self._stopping:
                return
            self._timelines[wamid] = [n.status for _, n in planned]
            self._counts["emitted"] += len(planned)
            for when, notification in planned:
                self._schedule(when, _Delivery([notification]), new=True)
            self._cond.notify_all()

    def _status(
        self, wamid: str, name: str, at: int, to: str, callback: str | None, fate: str, conversation: str
    ) -> dict:
        """One status object in Meta's format (string timestamps; the callback data echoed if it was sent)."""
        status: dict = {"id": wamid, "status": name, "timestamp": str(at), "recipient_id": to}
        if callback is not None:
            status["biz_opaque_callback_data"] = callback
        if name == "sent":
            status["conversation"] = {
                "id": conversation,
                "expiration_timestamp": str(at + 86400),
                "origin": {"type": "marketing"},
            }
            status["pricing"] = {
                "billable": True,
                "pricing_model": "PMP",
                "category": "marketing",
                "type": "regular",
            }
        if name == "failed":
            code = int(fate.partition(":")[2])
            title, details = _ERRORS.get(code, (f"Error {code}", f"Error {code}."))
            status["errors"] = [
                {
                    "code": code,
                    "title": title,
                    "message": title,
                    "error_data": {"details": details},
                    "href": _ERRORS_HREF,
                }
            ]
        return status

    def _payload(self, items: list[_Notification]) -> bytes:
        value = {
            "messaging_product": "whatsapp",
            "metadata": {
                "display_phone_number": self.display_phone_number,
                "phone_number_id": items[0].phone_number_id,
            },
            "statuses": [n.status for n in items],
        }
        payload = {
            "object": "whatsapp_business_account",
            "entry": [{"id": self.waba_id, "changes": [{"value": value, "field": "messages"}]}],
        }
        return json.dumps(payload, separators=(",", ":")).encode()

    # -- delivery --------------------------------------------------------------------------------------------

    def _schedule(self, when: float, delivery: _Delivery, new: bool) -> None:
        """Queue a delivery (lock held); `new` ones are pending until acknowledged, retries already are."""
        heapq.heappush(self._heap, (when, next(self._order), delivery))
        if new:
            self._pending += len(delivery.items)

    def _next_due(self) -> _Delivery | None:
        """Wait for the next due delivery (lock held), merged with other new ones due for the same number."""
        while not self._stopping:
            now = time.monotonic()
            if self._heap and self._heap[0][0] <= now:
                delivery = heapq.heappop(self._heap)[2]
                number = delivery.items[0].phone_number_id
                while (
                    delivery.body is None
                    and self._heap
                    and self._heap[0][0] <= now
                    and self._heap[0][2].body is None
                    and self._heap[0][2].items[0].phone_number_id == number
                    and len(delivery.items) + len(self._heap[0][2].items) <= _MAX_BATCH
                ):
                    delivery.items += heapq.heappop(self._heap)[2].items
                return delivery
            self._cond.wait(self._heap[0][0] - now if self._heap else None)
        return None

    def _work(self) -> None:
        while True:
            with self._cond:
                delivery = self._next_due()
            if delivery is None:
                return
            outcome = self._attempt(delivery)
            with self._cond:
                if self._stopping:
                    return
                self._settle(delivery, *outcome)
                self._cond.notify_all()

    def _attempt(self, delivery: _Delivery) -> tuple[bool, bool, bool]:
        """POST a delivery (this thread owns it now): (posted, answered 200, failure injected)."""
        if delivery.body is None:
            delivery.body = self._payload(delivery.items)
        injected = [n for n in delivery.items if n.inject > 0]
        for notification in injected:
            notification.inject -= 1
        if injected and not any(n.lost_ack for n in injected):
            return False, False, True  # "connection refused": nothing reached the webhook
        signature = "sha256=" + hmac.new(self._secret, delivery.body, hashlib.sha256).hexdigest()
        try:
            answer = self._client.post(
                self.url, content=delivery.body, headers={"X-Hub-Signature-256": signature}
            )
        except Exception as exc:  # noqa: BLE001 - any transport failure (or stop() closing the client)
            log.debug("status webhook POST failed: %s", type(exc).__name__)
            return True, False, bool(injected)
        if answer.status_code != 200:
            log.debug("status webhook POST answered %s", answer.status_code)
        return True, answer.status_code == 200, bool(injected)

    def _settle(self, delivery: _Delivery, posted: bool, answered: bool, injected: bool) -> None:
        """Count an attempt (lock held): acknowledge it, or retry it after a back-off."""
        counts, now = self._counts, time.monotonic()
        counts["posts"] += posted
        counts["retried"] += delivery.attempt > 0
        counts["injected"] += injected
        if not answered or injected:
            counts["failed"] += 1
            delivery.attempt += 1
            backoff = min(self.retry_base * 2 ** (delivery.attempt - 1), self.retry_cap)
            self._schedule(now + backoff, delivery, new=False)
            return
        counts["acknowledged"] += 1
        self._pending -= len(delivery.items)
        for notification in delivery.items:
            if not notification.acked:
                notification.acked = True
                seen = self._acked_positions[notification.wamid]
                counts["out_of_order"] += any(p > notification.position for p in seen)
                seen.add(notification.position)
            for _ in range(notification.duplicates):
                again = _Notification(
                    notification.status,
                    notification.wamid,
                    notification.position,
                    notification.phone_number_id,
                    acked=True,
                )
                counts["duplicated"] += 1
                self._schedule(now + self._random.uniform(*_DUPLICATE_AFTER), _Delivery([again]), new=True)
            notification.duplicates = 0
