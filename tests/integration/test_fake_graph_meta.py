"""The fake Graph's templates, template webhooks and portfolio messaging limit, against Meta's formats.

Every test talks HTTP to the running fake (httpx), as the sender and the template checks do.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import random
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from sendonce.local.fake_graph import DISPLAY_PHONE_NUMBER, WABA_ID, FakeGraph

from tests.helpers import phone

PHONE_NUMBER_ID = "106540352242922"
SECRET = "meta-app-secret"


def _get(graph: FakeGraph, path: str, token: str | None = None, **params) -> httpx.Response:
    headers = {"Authorization": f"Bearer {token or graph.token}"}
    return httpx.get(f"{graph.url}/{path}", params=params, headers=headers, timeout=5)


def _templates(graph: FakeGraph, **params) -> httpx.Response:
    return _get(graph, f"{WABA_ID}/message_templates", **params)


def _send(graph: FakeGraph, to: str, name: str = "hello", language: str = "en_US", params=("Asha",)) -> httpx.Response:
    template: dict = {"name": name, "language": {"code": language}}
    if params is not None:
        template["components"] = [{"type": "body", "parameters": [{"type": "text", "text": p} for p in params]}]
    payload = {"messaging_product": "whatsapp", "recipient_type": "individual", "to": to, "type": "template",
               "template": template}
    return httpx.post(f"{graph.url}/{PHONE_NUMBER_ID}/messages", json=payload,
                      headers={"Authorization": f"Bearer {graph.token}"}, timeout=5)


class _Receiver:
    """A webhook endpoint on loopback that answers 200 and keeps every POST (body, signature header)."""

    def __init__(self) -> None:
        self.posts: list[tuple[bytes, str]] = []
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                with receiver._lock:
                    receiver.posts.append((body, self.headers.get("X-Hub-Signature-256", "")))
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        host, port = self._server.server_address[:2]
        self.url = f"http://{host}:{port}/webhook"

    def changes(self, field: str) -> list[dict]:
        """The entries of the POSTs carrying a change of `field`, in arrival order."""
        with self._lock:
            bodies = [json.loads(body) for body, _ in self.posts]
        return [e for b in bodies for e in b["entry"] if e["changes"][0]["field"] == field]

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


@pytest.fixture
def receiver():
    r = _Receiver()
    yield r
    r.close()


# -- templates: the list -------------------------------------------------------------------------------------


def test_template_list_has_metas_shape(graph):
    # Given a positional template with a text header and buttons, a named one with an image header, a location one
    graph.add_template("coupon", "en", body="Your code {{1}} expires in {{2}} days", header="Act fast, {{1}}!",
                       buttons=[{"type": "QUICK_REPLY", "text": "Unsubscribe"}])
    graph.add_template("reservation", body="See you {{day}} at {{time}}", named=True, header="IMAGE",
                       category="UTILITY")
    graph.add_template("store", header="LOCATION", body="Visit us")

    # When the templates are read with the default fields
    answer = _templates(graph)

    # Then each is in Meta's list format, ids strings of digits, in the order they were created
    assert answer.status_code == 200
    data = answer.json()["data"]
    assert data[0] == {
        "name": "coupon",
        "parameter_format": "POSITIONAL",
        "components": [
            {"type": "HEADER", "format": "TEXT", "text": "Act fast, {{1}}!", "example": {"header_text": ["example 1"]}},
            {"type": "BODY", "text": "Your code {{1}} expires in {{2}} days",
             "example": {"body_text": [["example 1", "example 2"]]}},
            {"type": "BUTTONS", "buttons": [{"type": "QUICK_REPLY", "text": "Unsubscribe"}]},
        ],
        "language": "en",
        "status": "APPROVED",
        "category": "MARKETING",
        "id": data[0]["id"],
    }
    assert data[1]["parameter_format"] == "NAMED" and data[1]["category"] == "UTILITY"
    assert data[1]["components"][0]["format"] == "IMAGE"
    assert data[1]["components"][0]["example"]["header_handle"][0].startswith("https://")
    assert data[1]["components"][1]["example"] == {"body_text_named_params": [
        {"param_name": "day", "example": "example day"}, {"param_name": "time", "example": "example time"}]}
    assert data[2]["components"] == [{"type": "HEADER", "format": "LOCATION"}, {"type": "BODY", "text": "Visit us"}]
    assert all(t["id"].isdigit() for t in data) and len({t["id"] for t in data}) == 3
    assert "next" not in answer.json()["paging"]


def test_template_name_filter_is_a_substring_match_and_pages_follow_the_after_cursor(graph):
    # Given five promo templates and two others
    for suffix in "abcde":
        graph.add_template(f"promo_{suffix}")
    graph.add_template("welcome")
    graph.add_template("big_promo_x", "pt_BR")

    # When the templates whose name holds "promo" are read two at a time, following `next`
    pages, url = [], None
    first = _templates(graph, name="promo", limit=2)
    pages.append(first.json())
    url = first.json()["paging"].get("next")
    while url:
        answer = httpx.get(url, headers={"Authorization": f"Bearer {graph.token}"}, timeout=5)
        assert answer.status_code == 200
        pages.append(answer.json())
        url = answer.json()["paging"].get("next")

    # Then three pages hold the six matches in order, each with its cursors, `next` on all but the last
    names = [[t["name"] for t in page["data"]] for page in pages]
    assert names == [["promo_a", "promo_b"], ["promo_c", "promo_d"], ["promo_e", "big_promo_x"]]
    assert ["next" in page["paging"] for page in pages] == [True, True, False]
    assert all(set(page["paging"]["cursors"]) == {"before", "after"} for page in pages)
    # And the after cursor given by hand reads the same second page
    second = _templates(graph, name="promo", limit=2, after=pages[0]["paging"]["cursors"]["after"]).json()
    assert [t["name"] for t in second["data"]] == ["promo_c", "promo_d"]
    # And `next` keeps the query (name, limit)
    query = parse_qs(urlsplit(pages[0]["paging"]["next"]).query)
    assert (query["name"], query["limit"]) == (["promo"], ["2"])


def test_template_list_returns_only_the_fields_asked_for_plus_id_and_filters_language_and_status(graph):
    graph.add_template("hello")
    graph.add_template("hello", "es")
    graph.add_template("paused_one", status="PAUSED")

    answer = _templates(graph, fields="name,status", status="approved")
    assert answer.status_code == 200
    assert [sorted(t) for t in answer.json()["data"]] == [["id", "name", "status"], ["id", "name", "status"]]
    assert [t["status"] for t in answer.json()["data"]] == ["APPROVED", "APPROVED"]
    spanish = _templates(graph, fields="language", language="es").json()["data"]
    assert [(t["language"], sorted(t)) for t in spanish] == [("es", ["id", "language"])]
    assert _templates(graph, name="nothing_like_it").json() == {"data": []}


def test_template_list_of_an_unknown_waba_is_error_100_subcode_33(graph):
    answer = _get(graph, "999999999/message_templates")
    assert answer.status_code == 400
    error = answer.json()["error"]
    assert (error["code"], error["error_subcode"], error["type"]) == (100, 33, "GraphMethodException")
    assert error["message"].startswith("Unsupported get request. Object with ID '999999999' does not exist")


def test_gets_with_a_bad_token_are_refused_with_190(graph):
    for path in (f"{WABA_ID}/message_templates", f"{PHONE_NUMBER_ID}"):
        answer = _get(graph, path, token="wrong")
        assert (answer.status_code, answer.json()["error"]["code"]) == (401, 190)


@pytest.mark.parametrize(
    "params",
    [{"limit": "0"}, {"limit": "many"}, {"fields": "name,bogus"}, {"after": "not-a-cursor"}, {"language": "[1]"}],
)
def test_a_bad_template_query_is_error_100(graph, params):
    graph.add_template("hello")
    answer = _templates(graph, **params)
    assert (answer.status_code, answer.json()["error"]["code"]) == (400, 100)


def test_planned_get_faults_are_consumed_in_order(graph):
    # Given three faults planned for GETs: a Graph error, a bare 502, a dropped connection, then a slow answer
    graph.add_template("hello")
    graph.plan_get("error:2", "http:502", "drop", "slow:0.5")

    first = _templates(graph)
    assert (first.status_code, first.json()["error"]["code"]) == (503, 2)
    second = _templates(graph)
    assert (second.status_code, second.headers["Content-Type"]) == (502, "text/html")
    with pytest.raises(httpx.RemoteProtocolError):
        _templates(graph)
    with pytest.raises(httpx.ReadTimeout):
        httpx.get(f"{graph.url}/{WABA_ID}/message_templates", headers={"Authorization": f"Bearer {graph.token}"},
                  timeout=0.2)
    # Then, the plan used up, the templates are read
    assert [t["name"] for t in _templates(graph).json()["data"]] == ["hello"]
    with pytest.raises(ValueError):
        graph.plan_get("explode")


# -- templates: sends checked against them -------------------------------------------------------------------


def test_sends_are_refused_like_meta_for_missing_paused_disabled_and_miscounted_templates(graph):
    # Before any template is added, any template is accepted (the fake's old behaviour)
    assert _send(graph, phone(1), name="anything", params=()).status_code == 200
    graph.reset()
    graph.add_template("hello", body="Hello {{1}}, your code is {{2}}")
    graph.add_template("paused", status="PAUSED")
    graph.add_template("disabled", status="DISABLED")
    graph.add_template("pending", status="PENDING")

    cases = {
        "missing": ({"name": "nope"}, 132001),
        "other language": ({"language": "en_GB", "params": ("a", "b")}, 132001),
        "pending": ({"name": "pending"}, 132001),
        "paused": ({"name": "paused"}, 132015),
        "disabled": ({"name": "disabled"}, 132016),
        "too few params": ({"params": ("a",)}, 132000),
        "no params": ({"params": None}, 132000),
    }
    for case, (kwargs, code) in cases.items():
        answer = _send(graph, phone(2), **kwargs)
        assert (case, answer.status_code, answer.json()["error"]["code"]) == (case, 400, code)
    missing = _send(graph, phone(2), name="nope").json()["error"]
    assert missing["message"] == "(#132001) Template name does not exist in the translation"
    assert missing["error_data"] == {"messaging_product": "whatsapp",
                                     "details": "template name (nope) does not exist in en_US"}

    # Refusals are not accepted (nor counted); the right send is
    assert graph.accepted == {}
    assert _send(graph, phone(2), params=("a", "b")).status_code == 200
    assert graph.accepted == {phone(2): 1}


# -- templates: status changes and their webhooks ------------------------------------------------------------


def test_set_template_status_posts_a_signed_message_template_status_update(graph, receiver):
    # Given a webhook and an approved template
    graph.post_statuses_to(receiver.url, SECRET)
    template = graph.add_template("order_update", category="UTILITY")

    # When Meta pauses it, then unpauses it
    before = int(time.time())
    paused = graph.set_template_status("order_update", "en_US", "PAUSED")
    assert _send(graph, phone(1), name="order_update").json()["error"]["code"] == 132015
    graph.set_template_status("order_update", "en_US", "APPROVED")
    assert _send(graph, phone(1), name="order_update").status_code == 200
    assert graph.wait_statuses_delivered(timeout=10)

    # Then two signed changes were posted, in Meta's shape, entry.id the WABA
    expected_pause = {
        "event": "PAUSED",
        "message_template_id": int(template["id"]),
        "message_template_name": "order_update",
        "message_template_language": "en-US",
        "reason": "NONE",
        "message_template_category": "UTILITY",
        "other_info": {"title": "FIRST_PAUSE",
                       "description": "Your WhatsApp message template has been paused because of low quality."},
    }
    assert paused == expected_pause
    entries = receiver.changes("message_template_status_update")
    # (two delivery threads: like Meta's, the webhooks may arrive in either order)
    assert sorted((e["changes"][0]["value"] for e in entries), key=lambda v: v["event"], reverse=True) == [
        expected_pause,
        {**expected_pause, "event": "APPROVED",
         "other_info": {"title": "UNPAUSE", "description": "Your WhatsApp message template has been unpaused."}},
    ]
    assert all(e["id"] == WABA_ID and before <= e["time"] <= int(time.time()) for e in entries)
    for body, signature in receiver.posts:
        assert signature == "sha256=" + hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
        assert json.loads(body)["object"] == "whatsapp_business_account"


def test_template_status_events_change_the_status_as_meta_does(graph, receiver):
    graph.post_statuses_to(receiver.url, SECRET)
    graph.add_template("hello", "en")

    def status() -> str:
        return _templates(graph, fields="status").json()["data"][0]["status"]

    graph.set_template_status("hello", "en", "FLAGGED")
    assert status() == "APPROVED"
    disabled = graph.set_template_status("hello", "en", "DISABLED")
    assert status() == "DISABLED" and isinstance(disabled["disable_info"]["disable_date"], int)
    assert "other_info" not in disabled
    assert _send(graph, phone(1), language="en").json()["error"]["code"] == 132016
    graph.set_template_status("hello", "en", "REINSTATED")
    assert status() == "APPROVED"
    graph.set_template_status("hello", "en", "ARCHIVED")
    assert status() == "ARCHIVED"
    graph.set_template_status("hello", "en", "UNARCHIVED")
    assert status() == "APPROVED"
    assert graph.wait_statuses_delivered(timeout=10)
    events = [e["changes"][0]["value"]["event"] for e in receiver.changes("message_template_status_update")]
    assert sorted(events) == sorted(["FLAGGED", "DISABLED", "REINSTATED", "ARCHIVED", "UNARCHIVED"])
    assert graph.webhook_stats()["emitted"] == 5  # the refused send has no statuses
    with pytest.raises(ValueError):
        graph.set_template_status("hello", "en", "UNPAUSED")  # not one of Meta's events


def test_post_change_delivers_any_field_and_statuses_still_flow(graph, receiver):
    graph.post_statuses_to(receiver.url, SECRET)
    graph.plan_statuses(phone(1), "read")
    assert _send(graph, phone(1), name="any").status_code == 200
    value = {"max_daily_conversations_per_business": "TIER_2K", "max_phone_numbers_per_waba": 25}
    assert graph.post_change("business_capability_update", value) == value
    assert graph.wait_statuses_delivered(timeout=10)

    assert [e["changes"][0]["value"] for e in receiver.changes("business_capability_update")] == [value]
    statuses = [s["status"] for e in receiver.changes("messages") for s in e["changes"][0]["value"]["statuses"]]
    assert sorted(statuses) == ["delivered", "read", "sent"]
    assert graph.webhook_stats()["emitted"] == 4


# -- the portfolio messaging limit ---------------------------------------------------------------------------


def test_messaging_limit_field_answers_metas_tier_or_error_100(graph):
    def read(fields: str = "whatsapp_business_manager_messaging_limit,display_phone_number") -> httpx.Response:
        return _get(graph, PHONE_NUMBER_ID, fields=fields)

    assert read().json() == {"whatsapp_business_manager_messaging_limit": "TIER_UNLIMITED",
                             "display_phone_number": DISPLAY_PHONE_NUMBER, "id": PHONE_NUMBER_ID}
    graph.set_messaging_limit(2000)
    assert read().json()["whatsapp_business_manager_messaging_limit"] == "TIER_2K"
    graph.set_messaging_limit(3, tier="TIER_250")
    assert read().json()["whatsapp_business_manager_messaging_limit"] == "TIER_250"
    graph.set_messaging_limit(1000)  # no Meta tier for it: unreadable
    unreadable = read()
    assert (unreadable.status_code, unreadable.json()["error"]["code"]) == (400, 100)
    assert "whatsapp_business_manager_messaging_limit" in unreadable.json()["error"]["message"]
    assert read("display_phone_number").json() == {"display_phone_number": DISPLAY_PHONE_NUMBER,
                                                   "id": PHONE_NUMBER_ID}
    graph.set_messaging_limit(250, tier=None)
    assert read().status_code == 400
    assert read("bogus_field").json()["error"]["code"] == 100
    with pytest.raises(ValueError):
        graph.set_messaging_limit(250, tier="TIER_3")


def test_sends_past_the_limit_are_accepted_but_never_delivered(graph, receiver):
    # Given a limit of two unique recipients a day, and a webhook
    graph.post_statuses_to(receiver.url, SECRET)
    graph.set_messaging_limit(2, tier="TIER_250")
    a, b, c, d = (phone(i) for i in range(1, 5))
    for to in (a, b, c, d):
        graph.plan_statuses(to, "read", "read")

    # When a, b, a again, c, d are sent to
    answers = [_send(graph, to) for to in (a, b, a, c, d)]

    # Then all are accepted with a WAMID, a twice using no more room, and c and d are over the limit
    assert [r.status_code for r in answers] == [200] * 5
    assert graph.accepted == {a: 2, b: 1, c: 1, d: 1}
    assert graph.over_limit == {c: 1, d: 1}
    assert graph.wait_statuses_delivered(timeout=10)
    finals = {to: [graph.final_status(w) for w in graph.wamids[to]] for to in (a, b, c, d)}
    assert finals == {a: [("read", None)] * 2, b: [("read", None)], c: [("sent", None)], d: [("sent", None)]}
    assert [s["status"] for s in graph.webhook.timeline(graph.wamids[c][0])] == ["sent"]
    assert graph.max_unique_in_window(86400) == 4  # what was asked for, over-limit sends included


def test_the_moving_window_frees_room_as_it_moves(graph):
    graph.set_messaging_limit(1, tier="TIER_250", window_seconds=0.5)
    a, b = phone(1), phone(2)
    assert _send(graph, a).status_code == 200
    assert _send(graph, b).status_code == 200  # over the limit: accepted, not delivered
    assert graph.over_limit == {b: 1}
    time.sleep(0.6)
    assert _send(graph, b).status_code == 200  # a's send left the window
    assert _send(graph, a).status_code == 200  # b now holds the only room
    assert graph.over_limit == {b: 1, a: 1}
    graph.reset()
    assert (graph.over_limit, graph.messaging_limit, graph.templates) == ({}, None, {})


def test_max_unique_in_window_on_a_constructed_sequence(graph):
    graph.accepted_at = [0.0, 1.0, 2.0, 3.0, 10.0, 10.5, 11.0]
    graph.accepted_to = ["a", "b", "a", "c", "d", "e", "d"]
    assert graph.max_unique_in_window(3.0) == 3  # [1, 4): b, a, c
    assert graph.max_unique_in_window(1.0) == 2  # [10, 11): d, e (11 is out: half-open)
    assert graph.max_unique_in_window(0.5) == 1
    assert graph.max_unique_in_window(10.0) == 5  # [1, 11): b, a, c, d, e
    assert graph.max_unique_in_window(100.0) == 5

    # Against brute force on a random sequence, unsorted as threads record it
    rng = random.Random(3)
    graph.accepted_at = [rng.uniform(0, 50) for _ in range(400)]
    graph.accepted_to = [f"r{rng.randrange(60)}" for _ in range(400)]
    sends = list(zip(graph.accepted_at, graph.accepted_to, strict=True))
    for window in (0.7, 5.0, 20.0):
        brute = max(len({to for at, to in sends if t <= at < t + window}) for t, _ in sends)
        assert graph.max_unique_in_window(window) == brute

    # And fast enough for a 20,000-send run
    graph.accepted_at = [float(i) for i in range(20_000)]
    graph.accepted_to = [f"r{i % 5000}" for i in range(20_000)]
    started = time.monotonic()
    assert graph.max_unique_in_window(1000.0) == 1000
    assert time.monotonic() - started < 2.0
