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

Templates (`add_template`): the fake serves them as Meta's `GET /{waba_id}/message_templates` does (filters,
fields, cursor paging), and once any template was added, sends are checked against them as Meta checks them
(132001 unknown or not approved, 132015 paused, 132016 disabled, 132000 wrong number of body parameters).
`set_template_status` changes a template's status and posts Meta's `message_template_status_update` webhook;
`post_change` posts any other change (quality, category, account...) through the same signed, retried delivery.

The portfolio messaging limit (`set_messaging_limit`): readable at `GET /{phone_number_id}?fields=
whatsapp_business_manager_messaging_limit`, and enforced like Meta: a template send to a new recipient when the
moving window already holds `limit` unique recipients is accepted (200 and a WAMID) but never delivered
(`over_limit`, status chain "sent" only). GET requests have faults of their own (`plan_get`).
"""

from __future__ import annotations

import base64
import copy
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
from typing import Literal, Self
from urllib.parse import parse_qs, urlencode, urlsplit

import httpx

from sendonce.local.http_server import LoopbackServer

log = logging.getLogger(__name__)

API_VERSION = "v26.0"
WABA_ID = "102290129340398"
DISPLAY_PHONE_NUMBER = "15550783881"
_PATH = re.compile(r"^/v\d+\.\d+/(\d+)/messages$")
_TEMPLATES_PATH = re.compile(r"^/v\d+\.\d+/(\d+)/message_templates$")
_NODE_PATH = re.compile(r"^/v\d+\.\d+/(\d+)$")
# HTTP statuses Meta answers with for these codes; anything else is 400.
_HTTP_STATUS = {0: 401, 190: 401, 10: 403, 4: 429, 80007: 429, 130429: 429, 131056: 429, 1: 500, 2: 503, 131000: 500}
CHAOS_FAULTS = ("error:131000", "http:502", "error:130429", "drop", "error:131026")


class FakeGraph:
    """The fake server; use as a context manager or call `start()` / `stop()`."""

    def __init__(
        self,
        token: str = "test-token",
        latency: float = 0.0,
        chaos: float = 0.0,
        seed: int = 7,
        throttle_mps: int = 0,
        waba_id: str = WABA_ID,
        throttle_burst: float | None = None,
    ):
        self.token = token
        self.waba_id = waba_id  # the WhatsApp Business Account: its templates, and entry.id of its webhooks
        self.latency = latency
        self.chaos = chaos
        # Like Meta: messages past `throttle_mps` per second are refused with 130429 (0: no limit). Meta does
        # not document its window: by default more than `throttle_mps` in any one second (sliding) are refused;
        # with `throttle_burst` (seconds) the cap is a token bucket of throttle_mps x throttle_burst messages,
        # refilled at throttle_mps a second: the rate over time, with that much burst.
        self.throttle_mps = throttle_mps
        self.throttle_burst = throttle_burst
        self._seed = seed
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self.webhook: StatusWebhook | None = None  # set by post_statuses_to
        self.reset()

    def reset(self) -> None:
        """Forget every send, plan and hook, as a freshly started server would (the port stays).

        Templates and the messaging limit go too (no templates: any template is accepted; no limit), like a
        fresh account, so that a test's setup never leaks into the next one.
        The status webhook (`post_statuses_to`) keeps running, with its counters and undelivered statuses.
        """
        with self._lock:
            self.templates: dict[tuple[str, str], dict] = {}  # (name, language) -> Meta's list item
            self._template_ids = itertools.count(_TEMPLATE_ID_BASE)
            self._unarchived_status: dict[tuple[str, str], str] = {}  # status an ARCHIVED template returns to
            self._get_plans: deque[str] = deque()
            self.reads: list[str] = []  # the path of every authorised GET, in order (tests count reads with it)
            self.messaging_limit: int | None = None  # unique recipients per window (None: no limit)
            self.messaging_tier: str | None = "TIER_UNLIMITED"  # what GET answers (None: the field is refused)
            self.limit_window = 86400.0
            self._window: deque[tuple[float, str]] = deque()  # sends counted by the limit, oldest first
            self._in_window: Counter[str] = Counter()  # their recipients
            # Sends accepted past the limit (never delivered), per recipient.
            self.over_limit: Counter[str] = Counter()
            self.accepted_to: list[str] = []  # accepted_to[i] is the recipient of accepted_at[i]
            self.throttled = 0
            self.storms = self.stormed = 0  # 130429 storms, and the requests they refused
            self._storm_until = 0.0
            self.accepted_at: list[float] = []
            self._arrivals: list[float] = []
            self._tokens, self._refilled = float("inf"), time.monotonic()  # the throttle_burst bucket: full
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

    def plan_get(self, *faults: str) -> None:
        """Queue faults for the next GET requests (templates, number fields), consumed one per request.

        Like the sends' faults: "error:CODE" (a Graph error), "http:STATUS" (a bare status, non-JSON body),
        "drop" (close without answering), "slow:SECONDS" (answer late); afterwards GETs are answered.
        """
        for fault in faults:
            kind, _, arg = fault.partition(":")
            if not ((kind in ("error", "http") and arg.isdigit()) or fault == "drop" or kind == "slow"):
                raise ValueError(f"unknown GET fault {fault!r}: error:CODE, http:STATUS, drop or slow:SECONDS")
            if kind == "slow":
                float(arg)
        with self._lock:
            self._get_plans.extend(faults)

    def add_template(
        self,
        name: str,
        language: str = "en_US",
        *,
        body: str = "Hello {{1}}",
        status: str = "APPROVED",
        category: str = "MARKETING",
        header: str | None = None,
        named: bool = False,
        buttons: tuple[dict, ...] | list[dict] = (),
    ) -> dict:
        """Store a message template, as Meta lists it (`GET /{waba_id}/message_templates`).

        From the first template on, sends are checked against the stored ones (before: any is accepted).

        Parameters
        ----------
        name, language
            Meta's name (`^[a-z0-9_]+$`) and language code ("en_US", "en"); one template per pair.
        body
            The body text with its placeholders: "{{1}}", "{{2}}"... or, `named`, "{{first_name}}".
        status, category
            Meta's status (APPROVED, PAUSED, DISABLED, PENDING, REJECTED...) and category.
        header
            None; "IMAGE", "VIDEO", "DOCUMENT" (with an example header_handle) or "LOCATION"; else a text
            header with that text (placeholders allowed).
        named
            Placeholders are named (`parameter_format` NAMED, examples as `*_named_params`), else POSITIONAL.
        buttons
            Meta's button objects ({"type": "QUICK_REPLY", "text": "Stop"}...), as the BUTTONS component.

        Returns
        -------
        dict
            A copy of the stored template: id (a string of digits), name, language, status, category,
            parameter_format, components.
        """
        if not _TEMPLATE_NAME.match(name) or len(name) > 512:
            raise ValueError(f"template name {name!r}: Meta allows ^[a-z0-9_]+$, 512 characters at most")
        if status not in _TEMPLATE_STATUSES:
            raise ValueError(f"template status {status!r}: one of {sorted(_TEMPLATE_STATUSES)}")
        if category not in _TEMPLATE_CATEGORIES:
            raise ValueError(f"template category {category!r}: one of {sorted(_TEMPLATE_CATEGORIES)}")
        components: list[dict] = []
        if header in _MEDIA_HEADERS:
            components.append(
                {"type": "HEADER", "format": header, "example": {"header_handle": [_HEADER_HANDLE + header.lower()]}}
            )
        elif header == "LOCATION":
            components.append({"type": "HEADER", "format": "LOCATION"})  # Meta: no text, no example
        elif header is not None:
            components.append({"type": "HEADER", "format": "TEXT", "text": header, **_example("header", header, named)})
        components.append({"type": "BODY", "text": body, **_example("body", body, named)})
        if buttons:
            components.append({"type": "BUTTONS", "buttons": [dict(b) for b in buttons]})
        with self._lock:
            if (name, language) in self.templates:
                # Meta: error 100, subcode 2388024 "Content in This Language Already Exists".
                raise ValueError(f"template {name!r} already exists in {language}")
            template = {
                "name": name,
                "parameter_format": "NAMED" if named else "POSITIONAL",
                "components": components,
                "language": language,
                "status": status,
                "category": category,
                "id": str(next(self._template_ids)),
            }
            self.templates[(name, language)] = template
            return copy.deepcopy(template)

    def set_template_status(
        self,
        name: str,
        language: str,
        event: str,
        *,
        reason: str | None = "NONE",
        title: str | None = None,
        description: str | None = None,
    ) -> dict:
        """Change a template's status as Meta does, and post its `message_template_status_update` webhook.

        The status becomes the event, except: FLAGGED and LOCKED leave it as it is (a flagged template is still
        APPROVED, only at risk), REINSTATED makes it APPROVED, UNARCHIVED restores the status it had before
        ARCHIVED. The webhook is posted only when one is configured (`post_statuses_to`), through the same
        signed, retried (and, with chaos, duplicated) delivery as the statuses.

        Parameters
        ----------
        name, language
            The template (language as stored, "en_US"; the webhook carries Meta's "en-US").
        event
            Meta's event: APPROVED, ARCHIVED, UNARCHIVED, DELETED, DISABLED, FLAGGED, IN_APPEAL,
            LIMIT_EXCEEDED, LOCKED, PAUSED, PENDING, REINSTATED, PENDING_DELETION, REJECTED.
        reason
            Meta's `reason` (NONE, INVALID_FORMAT, PROMOTIONAL...; None is sent as null).
        title, description
            `other_info`. A pause always carries it (title FIRST_PAUSE by default; SECOND_PAUSE,
            RATE_LIMITING_PAUSE), so does an APPROVED that ends a pause (UNPAUSE); any event with a title does.

        Returns
        -------
        dict
            The change's `value`, as posted.
        """
        if event not in _TEMPLATE_EVENTS:
            raise ValueError(f"template event {event!r}: one of {sorted(_TEMPLATE_EVENTS)}")
        with self._lock:
            template = self.templates.get((name, language))
            if template is None:
                raise KeyError(f"no template {name!r} in {language}")
            before = template["status"]
            if event == "REINSTATED":
                template["status"] = "APPROVED"
            elif event == "UNARCHIVED":
                template["status"] = self._unarchived_status.pop((name, language), "APPROVED")
            elif event not in ("FLAGGED", "LOCKED"):
                if event == "ARCHIVED":
                    self._unarchived_status[(name, language)] = before
                template["status"] = event
            value: dict = {
                "event": event,
                "message_template_id": int(template["id"]),
                "message_template_name": name,
                "message_template_language": language.replace("_", "-"),
                "reason": reason,
                "message_template_category": template["category"],
            }
        if event == "PAUSED":
            title = title or "FIRST_PAUSE"
            description = description or _PAUSED_DESCRIPTION
        elif event == "APPROVED" and before == "PAUSED" and title is None:
            title, description = "UNPAUSE", description or _UNPAUSED_DESCRIPTION
        if event == "DISABLED":
            value["disable_info"] = {"disable_date": int(time.time())}
        if title is not None:
            value["other_info"] = {"title": title, "description": description or ""}
        if event == "REJECTED" and reason == "INVALID_FORMAT":
            value["rejection_info"] = {"reason": description or _REJECTION_REASON, "recommendation": _RECOMMENDATION}
        if self.webhook is not None:
            self.webhook.emit_change("message_template_status_update", value)
        return value

    def post_change(self, field: str, value: Mapping) -> dict:
        """Post a change of any other webhook field as Meta does (signed, retried until a 200, counted).

        For instance "message_template_quality_update", "template_category_update",
        "business_capability_update", "phone_number_quality_update" or "account_update", with the `value` in
        Meta's shape (the caller's: the fake does not check it). Returns the value posted.
        """
        assert self.webhook is not None, "post_statuses_to() first"
        value = copy.deepcopy(dict(value))
        self.webhook.emit_change(field, value)
        return value

    def set_messaging_limit(
        self,
        limit: int | None,
        *,
        tier: str | None | Literal["auto"] = "auto",
        window_seconds: float = 86400.0,
    ) -> None:
        """Set the portfolio's messaging limit: what the fake enforces, and what GET answers.

        Parameters
        ----------
        limit
            Unique recipients of template sends per moving window, shared by every phone number (the
            portfolio), as Meta counts them; None: unlimited (nothing enforced). A small number (3, 1000)
            simulates a limit in a test.
        tier
            What `GET /{phone_number_id}?fields=whatsapp_business_manager_messaging_limit` answers. "auto":
            Meta's string for the limit (250 TIER_250, 2000 TIER_2K, 10000 TIER_10K, 100000 TIER_100K, None
            TIER_UNLIMITED), or, for a limit Meta has no tier for, the field is refused as in `None`. None: the
            limit is unreadable (the GET answers error 100, as for a field the API version does not expose).
            A string: answered as it is (TIER_250, TIER_2K... or the legacy TIER_50, TIER_1K, TIER_NOT_SET).
        window_seconds
            The moving window (Meta: 24 hours; a test simulates it with a second or so).
        """
        if limit is not None and limit < 0:
            raise ValueError("limit: a number of unique recipients, or None")
        if tier == "auto":
            tier = _TIER_OF_LIMIT.get(limit)
        elif tier is not None and tier not in _TIERS:
            raise ValueError(f"tier {tier!r}: one of {sorted(_TIERS)}, None or 'auto'")
        with self._lock:
            self.messaging_limit = limit
            self.messaging_tier = tier
            self.limit_window = window_seconds

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
            retry_cap=retry_cap, workers=workers, fates=fates, timeout=timeout, waba_id=self.waba_id,
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

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- behaviour ---------------------------------------------------------------------------------

    def max_rate(self, window: float = 1.0) -> int:
        """The most sends accepted within any `window` seconds."""
        return most_within(self.accepted_at, window)

    def max_unique_in_window(self, window_seconds: float) -> int:
        """The most unique recipients of accepted sends within any `window_seconds` (half-open [t, t+window)).

        What Meta's messaging limit counts (past-limit sends included: this measures what the sender asked
        for), from `accepted_at` and `accepted_to`; one pass over the sorted sends with a sliding window.
        """
        with self._lock:
            sends = sorted(zip(self.accepted_at, self.accepted_to, strict=True))
        inside: Counter[str] = Counter()
        start, best = 0, 0
        for at, to in sends:
            inside[to] += 1
            while at - sends[start][0] >= window_seconds:
                gone = sends[start][1]
                inside[gone] -= 1
                if not inside[gone]:
                    del inside[gone]
                start += 1
            best = max(best, len(inside))
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
            if self.throttle_mps and self.throttle_burst is not None:
                now = time.monotonic()
                capacity = max(1.0, self.throttle_mps * self.throttle_burst)
                self._tokens = min(capacity, self._tokens + (now - self._refilled) * self.throttle_mps)
                self._refilled = now
                if self._tokens < 1:
                    self.throttled += 1
                    return "error:130429"
                self._tokens -= 1
            elif self.throttle_mps:
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
            now = time.monotonic()
            self.accepted[to] += 1
            self.wamids[to].append(wamid)
            self.accepted_at.append(now)
            self.accepted_to.append(to)
            index = len(self.wamids[to])
            fate = self._status_plans[to].popleft() if self._status_plans[to] else None
            if not self._within_limit(to, now):
                self.over_limit[to] += 1
                fate = "sent"  # accepted, never delivered: Meta reports it sent, then nothing
            sent = payload.get("template") or {}
            template = self.templates.get((sent.get("name"), (sent.get("language") or {}).get("code")), {})
        if self.webhook is not None:
            # Meta reports every message it accepted, whether or not the sender ever heard the answer.
            callback = payload.get("biz_opaque_callback_data")
            category = template.get("category", "MARKETING").lower()
            self.webhook.emit(wamid, to, callback, phone_number_id, index, fate, category)
        return wamid

    def _within_limit(self, to: str, now: float) -> bool:
        """Whether the messaging limit lets a send to `to` be delivered, counting it if so (lock held).

        Like Meta: unique recipients in a moving window, a recipient already in it using no more room.
        """
        if self.messaging_limit is None:
            return True
        while self._window and now - self._window[0][0] >= self.limit_window:
            gone = self._window.popleft()[1]
            self._in_window[gone] -= 1
            if not self._in_window[gone]:
                del self._in_window[gone]
        if to not in self._in_window and len(self._in_window) >= self.messaging_limit:
            return False
        self._window.append((now, to))
        self._in_window[to] += 1
        return True

    def _template_refusal(self, payload: dict) -> tuple[int, str, str] | None:
        """Meta's refusal of a send for its template, as (code, message, details); None when it may go.

        Only once templates were added (`add_template`): until then any template is accepted.
        """
        name, language = payload["template"]["name"], payload["template"]["language"]["code"]
        with self._lock:
            if not self.templates:
                return None
            template = copy.deepcopy(self.templates.get((name, language)))
        if template is None or template["status"] not in ("APPROVED", "FLAGGED", "PAUSED", "DISABLED"):
            details = f"template name ({name}) does not exist in {language}"
            return 132001, "(#132001) Template name does not exist in the translation", details
        if template["status"] == "PAUSED":
            return 132015, "(#132015) Template is Paused", _ERROR_DETAILS[132015]
        if template["status"] == "DISABLED":
            return 132016, "(#132016) Template is Disabled", _ERROR_DETAILS[132016]
        body = next(c for c in template["components"] if c["type"] == "BODY")
        expected = len(set(_placeholders(body["text"])))
        given = 0
        for component in payload["template"].get("components") or []:
            if isinstance(component, dict) and str(component.get("type", "")).lower() == "body":
                given += len(component.get("parameters") or [])
        if given != expected:
            details = f"body: number of localizable_params ({given}) does not match the expected number of params ({expected})"
            return 132000, "(#132000) Number of parameters does not match the expected number of params", details
        return None

    def _next_get_fault(self, path: str) -> str:
        with self._lock:
            self.reads.append(path)
            return self._get_plans.popleft() if self._get_plans else "ok"

    def _list_templates(self, query: Mapping[str, list[str]], base_url: str) -> dict:
        """Meta's answer to GET /{waba_id}/message_templates for a parsed query; raises ValueError if bad."""
        fields = _fields(query, _TEMPLATE_DEFAULT_FIELDS, _TEMPLATE_FIELDS, "WhatsAppBusinessHSM")
        name = _one(query, "name")
        languages = _many(query, "language")
        statuses = {s.upper() for s in _many(query, "status")}
        categories = {c.upper() for c in _many(query, "category")}
        limit = int(_one(query, "limit") or _PAGE_SIZE)
        if limit < 1:
            raise ValueError("limit")
        with self._lock:
            found = [
                copy.deepcopy(t)
                for t in self.templates.values()
                if (not name or name in t["name"])
                and (not languages or t["language"] in languages)
                and (not statuses or t["status"] in statuses)
                and (not categories or t["category"] in categories)
            ]
        start = 0
        after = _one(query, "after")
        if after:
            ids = [t["id"] for t in found]
            start = ids.index(_decode_cursor(after)) + 1  # ValueError: not a cursor of this list
        page = found[start : start + limit]
        answer: dict = {"data": [{k: t[k] for k in (*fields, "id") if k in t} for t in page]}
        if page:
            cursors = {"before": _cursor(page[0]["id"]), "after": _cursor(page[-1]["id"])}
            answer["paging"] = {"cursors": cursors}
            if start + limit < len(found):
                params = {k: v[-1] for k, v in query.items() if k not in ("after", "before", "access_token")}
                answer["paging"]["next"] = f"{base_url}?{urlencode({**params, 'after': cursors['after']})}"
        return answer

    def _number_fields(self, node_id: str, query: Mapping[str, list[str]]) -> dict:
        """Meta's answer to GET /{phone_number_id}?fields=...; raises _FieldError for a field it refuses."""
        if node_id == self.waba_id:
            fields = _fields(query, ("id", "name"), ("id", "name"), "WhatsAppBusinessAccount")
            return {**({"name": _WABA_NAME} if "name" in fields else {}), "id": node_id}
        fields = _fields(query, _NUMBER_DEFAULT_FIELDS, _NUMBER_FIELDS, "WhatsAppBusinessPhoneNumber")
        with self._lock:
            tier = self.messaging_tier
        values = {
            "display_phone_number": DISPLAY_PHONE_NUMBER,
            "verified_name": _VERIFIED_NAME,
            "quality_rating": "GREEN",
            "whatsapp_business_manager_messaging_limit": tier,
        }
        if "whatsapp_business_manager_messaging_limit" in fields and tier is None:
            raise _FieldError("whatsapp_business_manager_messaging_limit", "WhatsAppBusinessPhoneNumber")
        return {**{f: values[f] for f in fields if f != "id"}, "id": node_id}

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

        def do_POST(self) -> None:
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
            refusal = graph._template_refusal(payload)
            if refusal is not None:  # a refusal like Meta's: nothing accepted, no plan consumed
                code, message, details = refusal
                graph._log(to, f"error:{code}", payload)
                return self._error(400, code, message, details=details)
            fault = graph._next_fault(to)
            graph._log(to, fault, payload)
            kind, _, arg = fault.partition(":")
            if self._refused(kind, arg):
                return None
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

        def _refused(self, kind: str, arg: str) -> bool:
            """Answer a planned refusal ("error:CODE", "http:STATUS"); whether it was one."""
            if kind == "error":
                code = int(arg)
                self._error(_HTTP_STATUS.get(code, 400), code, f"planned error {code}")
                return True
            if kind == "http":
                self._send(int(arg), b"<html>bad gateway</html>", "text/html")
                return True
            return False

        def do_GET(self) -> None:
            """Templates (`/{waba_id}/message_templates`) and node fields (`/{phone_number_id}?fields=`)."""
            try:
                url = urlsplit(self.path)
                query = parse_qs(url.query, keep_blank_values=True, strict_parsing=bool(url.query))
            except ValueError:
                return self._error(400, 100, "Invalid parameter")
            templates, node = _TEMPLATES_PATH.match(url.path), _NODE_PATH.match(url.path)
            if not templates and not node:
                return self._error(404, 100, f"Unknown path {url.path}")
            token = self.headers.get("Authorization") or "Bearer " + (query.get("access_token") or [""])[-1]
            if token != f"Bearer {graph.token}":
                return self._error(401, 190, "Invalid OAuth access token")
            fault = graph._next_get_fault(url.path)
            kind, _, arg = fault.partition(":")
            if self._refused(kind, arg):
                return None
            if kind == "drop":
                return self._hang_up()
            if kind == "slow":
                time.sleep(float(arg))
            try:
                if templates:
                    if templates.group(1) != graph.waba_id:
                        return self._error(400, 100, _unsupported_get(templates.group(1)), subcode=33,
                                           type_="GraphMethodException")
                    host, port = self.server.server_address[:2]
                    answer = graph._list_templates(query, f"http://{host}:{port}{url.path}")
                else:
                    answer = graph._number_fields(node.group(1), query)
            except _FieldError as exc:
                return self._error(400, 100, str(exc))
            except (ValueError, KeyError, TypeError):
                return self._error(400, 100, "(#100) Invalid parameter")
            self._send(200, json.dumps(answer).encode(), "application/json")

        def _error(
            self,
            status: int,
            code: int,
            message: str,
            *,
            subcode: int | None = None,
            details: str | None = None,
            type_: str = "OAuthException",
        ) -> None:
            error: dict = {"message": message, "type": type_, "code": code}
            if details is not None:
                error["error_data"] = {"messaging_product": "whatsapp", "details": details}
            if subcode is not None:
                error["error_subcode"] = subcode
            body = {"error": {**error, "fbtrace_id": "fake"}}
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


# -- templates and the messaging limit -----------------------------------------------------------------------

_TEMPLATE_NAME = re.compile(r"^[a-z0-9_]+$")
_PLACEHOLDER = re.compile(r"\{\{\s*([^{}]+?)\s*\}\}")
_TEMPLATE_ID_BASE = 1387372356726668  # ids are strings of digits in the list, integers in webhooks
_TEMPLATE_STATUSES = frozenset({
    "APPROVED", "ARCHIVED", "DELETED", "DISABLED", "IN_APPEAL", "LIMIT_EXCEEDED", "PAUSED", "PENDING",
    "PENDING_DELETION", "REJECTED",
})
_TEMPLATE_CATEGORIES = frozenset({"AUTHENTICATION", "MARKETING", "UTILITY"})
_TEMPLATE_EVENTS = frozenset({
    "APPROVED", "ARCHIVED", "UNARCHIVED", "DELETED", "DISABLED", "FLAGGED", "IN_APPEAL", "LIMIT_EXCEEDED",
    "LOCKED", "PAUSED", "PENDING", "REINSTATED", "PENDING_DELETION", "REJECTED",
})
_MEDIA_HEADERS = ("IMAGE", "VIDEO", "DOCUMENT")
_HEADER_HANDLE = "https://scontent.whatsapp.net/v/t61.29466-34/fake-header-"
# Fields Meta lets a template list select (those the fake does not store are left out of the answer).
_TEMPLATE_FIELDS = (
    "id", "ad_account_id", "ad_adset_id", "ad_campaign_id", "ad_id", "bid_spec", "category", "components",
    "correct_category", "cta_url_link_tracking_opted_out", "degrees_of_freedom_spec", "display_format",
    "health_status", "is_primary_device_delivery_only", "is_sms_fallback_enabled", "language",
    "last_updated_time", "library_template_name", "message_send_ttl_seconds", "name", "parameter_format",
    "previous_category", "quality_score", "rejected_reason", "source", "status", "sub_category",
)
_TEMPLATE_DEFAULT_FIELDS = ("name", "parameter_format", "components", "language", "status", "category", "id")
_PAGE_SIZE = 25
_NUMBER_FIELDS = (
    "id", "display_phone_number", "verified_name", "quality_rating", "whatsapp_business_manager_messaging_limit",
)
_NUMBER_DEFAULT_FIELDS = ("verified_name", "display_phone_number", "quality_rating", "id")
_VERIFIED_NAME = "Sendonce Test"
_WABA_NAME = "Sendonce Test WABA"
_TIER_OF_LIMIT = {250: "TIER_250", 2000: "TIER_2K", 10000: "TIER_10K", 100000: "TIER_100K", None: "TIER_UNLIMITED"}
_TIERS = frozenset({*_TIER_OF_LIMIT.values(), "TIER_50", "TIER_1K", "TIER_NOT_SET"})
_ERROR_DETAILS = {
    132015: "Template is paused due to low quality so it cannot be sent in a template message.",
    132016: "Template has been paused too many times due to low quality and is now permanently disabled.",
}
_PAUSED_DESCRIPTION = "Your WhatsApp message template has been paused because of low quality."
_UNPAUSED_DESCRIPTION = "Your WhatsApp message template has been unpaused."
_REJECTION_REASON = (
    "Your template has parameters placed next to each other (like {{1}}{{2}}) without text or punctuation "
    "between them."
)
_RECOMMENDATION = "Separate parameters with descriptive text and ensure each parameter is clearly contextualized."


class _FieldError(ValueError):
    """A field Meta refuses on a node: error 100, "Tried accessing nonexisting field"."""

    def __init__(self, field_name: str, node_type: str):
        super().__init__(f"(#100) Tried accessing nonexisting field ({field_name}) on node type ({node_type})")


def _placeholders(text: str) -> list[str]:
    """The placeholders of a template text, in order ("1", "2" or "first_name"...), repeats included."""
    return _PLACEHOLDER.findall(text)


def _example(kind: str, text: str, named: bool) -> dict:
    """The `example` Meta keeps for a header or body text with placeholders (nothing without any)."""
    names = list(dict.fromkeys(_placeholders(text)))
    if not names:
        return {}
    if named:
        params = [{"param_name": n, "example": f"example {n}"} for n in names]
        return {"example": {f"{kind}_text_named_params": params}}
    values = [f"example {n}" for n in names]
    return {"example": {"header_text": values} if kind == "header" else {"body_text": [values]}}


def _one(query: Mapping[str, list[str]], name: str) -> str:
    """A query parameter's value ("" when absent; the last one when repeated, as Graph takes it)."""
    return (query.get(name) or [""])[-1]


def _many(query: Mapping[str, list[str]], name: str) -> list[str]:
    """A list parameter: comma separated, or Graph's JSON array form (["en_US","en"])."""
    raw = _one(query, name)
    if raw.startswith("["):
        values = json.loads(raw)
        if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
            raise ValueError(name)
        return values
    return [v.strip() for v in raw.split(",") if v.strip()]


def _fields(query: Mapping[str, list[str]], default: tuple[str, ...], allowed: tuple[str, ...], node: str) -> list[str]:
    """The `fields` asked for (the default set when none), refusing one the node does not have."""
    asked = _many(query, "fields") or list(default)
    for name in asked:
        if name not in allowed:
            raise _FieldError(name, node)
    return asked


def _cursor(template_id: str) -> str:
    """An opaque paging cursor naming a template (Meta's are base64 too)."""
    return base64.urlsafe_b64encode(f"fake-cursor:{template_id}".encode()).decode()


def _decode_cursor(cursor: str) -> str:
    """The template id a cursor names; ValueError for anything this fake did not hand out."""
    prefix, _, template_id = base64.urlsafe_b64decode(cursor.encode()).decode().partition(":")
    if prefix != "fake-cursor" or not template_id.isdigit():
        raise ValueError("not a cursor")
    return template_id


def _unsupported_get(object_id: str) -> str:
    """Meta's message for a GET on an id that is not there (error 100, subcode 33)."""
    return (
        f"Unsupported get request. Object with ID '{object_id}' does not exist, cannot be loaded due to missing "
        "permissions, or does not support this operation. Please read the Graph API documentation at "
        "https://developers.facebook.com/docs/graph-api"
    )


# -- status webhooks -----------------------------------------------------------------------------------------

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
    """One status as Meta delivers it, with what the chaos planned for it.

    Or one change of another field (`field` not "messages": `status` is then the change's value, `wamid` a
    key of its own, `time` the entry's time), delivered alone in its POST.
    """

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
    field: str = "messages"
    time: int = 0


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

    Changes of other fields (`emit_change`: template status, quality...) go through the same delivery, each in
    a POST of its own, and are counted alike.

    `stats()` counts: emitted (distinct statuses and changes), posts (HTTP POSTs made), acknowledged (POSTs answered 200
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
        self._changes = itertools.count()  # keys of the changes of other fields
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
        category: str = "marketing",
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
        category
            The template's category, lowercase: the pricing category its statuses report.
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
                self._status(wamid, name, at, to, callback, fate, conversation, category),
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

    def emit_change(self, field: str, value: dict) -> None:
        """Plan the delivery of a change of another field (e.g. message_template_status_update) to the WABA.

        Posted as Meta posts it, `{"object": "whatsapp_business_account", "entry": [{"id": waba_id, "time":
        now, "changes": [{"value": value, "field": field}]}]}`, signed, retried until a 200 and, with chaos,
        held back, failed on purpose or delivered again, like a status.
        """
        with self._cond:
            key = f"change-{next(self._changes)}"
        rng = random.Random(f"{self.seed}|{key}")
        notification = _Notification(dict(value), key, 0, "", field=field, time=int(time.time()))
        held = rng.uniform(*_HOLD_BACK) if rng.random() < self.chaos else 0.0
        while notification.inject < _MAX_INJECTED and rng.random() < self.chaos:
            notification.inject += 1
        notification.lost_ack = rng.random() < 0.5
        notification.duplicates = int(rng.random() < self.chaos)
        with self._cond:
            if self._stopping:
                return
            self._counts["emitted"] += 1
            self._schedule(time.monotonic() + held, _Delivery([notification]), new=True)
            self._cond.notify_all()

    def _status(
        self, wamid: str, name: str, at: int, to: str, callback: str | None, fate: str, conversation: str,
        category: str = "marketing",
    ) -> dict:
        """One status object in Meta's format (string timestamps; the callback data echoed if it was sent).

        Per-message pricing (since 2025-07-01): sent, delivered and read carry `pricing` (a template message is
        billable, charged once delivered); failed does not."""
        status: dict = {"id": wamid, "status": name, "timestamp": str(at), "recipient_id": to}
        if callback is not None:
            status["biz_opaque_callback_data"] = callback
        if name == "sent":
            status["conversation"] = {
                "id": conversation,
                "expiration_timestamp": str(at + 86400),
                "origin": {"type": category},
            }
        if name != "failed":
            status["pricing"] = {"billable": True, "pricing_model": "PMP", "category": category, "type": "regular"}
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
        if items[0].field != "messages":
            change = items[0]
            entry = {"id": self.waba_id, "time": change.time, "changes": [{"value": change.status, "field": change.field}]}
            return json.dumps({"object": "whatsapp_business_account", "entry": [entry]}, separators=(",", ":")).encode()
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
                    and delivery.items[0].field == "messages"
                    and self._heap
                    and self._heap[0][2].items[0].field == "messages"
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
                    field=notification.field,
                    time=notification.time,
                )
                counts["duplicated"] += 1
                self._schedule(now + self._random.uniform(*_DUPLICATE_AFTER), _Delivery([again]), new=True)
            notification.duplicates = 0


def most_within(times: list[float], window: float = 1.0) -> int:
    """The most of `times` within any `window` seconds."""
    times, start, best = sorted(times), 0, 0
    for end, at in enumerate(times):
        while at - times[start] >= window:
            start += 1
        best = max(best, end - start + 1)
    return best
