"""The WhatsApp webhook (API Gateway HTTP API, payload v2): verified status updates and reconciliation.

GET answers Meta's verification handshake. POST is accepted only with a valid `X-Hub-Signature-256` (HMAC-SHA256
of the raw body with the app secret, compared in constant time); its statuses are stored and applied in a
constant number of statements (`repository.statuses.apply_statuses`), and the answer is a quick 200 so Meta does
not retry. Account changes (template status, messaging limit, quality: `sendonce.meta_events`) are kept and the
ones that matter applied. Anything else in the payload (incoming messages) is acknowledged and ignored, and so
are statuses older than Meta's retry window (a replayed POST: its signature is still valid, its news is not).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
from datetime import UTC, datetime, timedelta

import psycopg

from sendonce import callback, meta_events
from sendonce.config import get_settings, resolve_secret
from sendonce.db import get_conn
from sendonce.observability import count, logger, scrub
from sendonce.repository import meta as meta_repository
from sendonce.repository import statuses as repository

KNOWN_STATUSES = frozenset({"sent", "delivered", "read", "failed"})
# A pricing category or type: a short lowercase word (marketing, authentication_international, free_entry_point).
_WORD = re.compile(r"[A-Za-z_-]{1,40}")
# Meta retries an undelivered webhook for up to 7 days: a status older than that is no retry of Meta's but a
# replay of a captured (validly signed) POST, or a clock gone wrong.
STATUS_MAX_AGE = timedelta(days=7)


def _now() -> datetime:
    return datetime.now(UTC)


def _bytes(text: str) -> bytes:
    # hmac.compare_digest raises TypeError on a str that is not ASCII: compare bytes, whatever was sent
    # (surrogatepass: a lone surrogate from a JSON "\ud800" escape encodes instead of raising).
    return text.encode("utf-8", "surrogatepass")


def _response(status: int, body: str, content_type: str = "text/plain") -> dict:
    return {"statusCode": status, "headers": {"Content-Type": content_type}, "body": body}


def handle(event: dict) -> dict:
    """Route an HTTP API v2 event: GET verification or POST statuses."""
    method = event.get("requestContext", {}).get("http", {}).get("method", "")
    if method == "GET":
        return verify(event.get("queryStringParameters") or {})
    if method == "POST":
        return receive(event)
    return _response(405, "method not allowed")


def verify(params: dict) -> dict:
    """The subscription handshake: echo hub.challenge when hub.verify_token matches, 403 otherwise."""
    expected = get_settings().webhook_verify_token
    token = params.get("hub.verify_token") or ""
    if (
        params.get("hub.mode") == "subscribe"
        and expected
        and isinstance(token, str)
        and hmac.compare_digest(_bytes(token), _bytes(resolve_secret(expected)))
    ):
        return _response(200, params.get("hub.challenge", ""))
    logger.warning("webhook verification refused", mode=params.get("hub.mode"))
    return _response(403, "forbidden")


def signature_ok(raw: bytes, header: str | None, secret: str) -> bool:
    """Whether `header` is "sha256=<hex HMAC-SHA256 of raw with secret>" (constant-time comparison)."""
    if not isinstance(header, str) or not header.startswith("sha256=") or not secret:
        return False
    digest = hmac.new(secret.encode(), raw, hashlib.sha256).hexdigest()
    return hmac.compare_digest(_bytes(header[len("sha256="):].lower()), digest.encode())


def raw_body(event: dict) -> bytes:
    """The exact bytes Meta signed (API Gateway base64-encodes some bodies)."""
    body = event.get("body") or ""
    return base64.b64decode(body) if event.get("isBase64Encoded") else body.encode()


def receive(event: dict) -> dict:
    """Verify and apply a status POST; 401 and nothing stored when the signature is missing or wrong.

    A verified POST is always answered 200 (Meta retries anything else for days, holding back the good statuses
    with the bad): statuses that do not validate are skipped and logged, the others applied. Only a database
    failure answers 5xx, so that Meta delivers the POST again.
    """
    raw = raw_body(event)
    headers = {k.lower(): v for k, v in (event.get("headers") or {}).items()}
    secret = get_settings().webhook_secret()
    if not secret:
        logger.error("webhook refused: WHATSAPP_APP_SECRET is not set (or 'none'); statuses are not reconciled")
        return _response(401, "webhook disabled")
    if not signature_ok(raw, headers.get("x-hub-signature-256"), secret):
        # Whether there was one, never its value.
        logger.warning("webhook signature refused", has_signature="x-hub-signature-256" in headers)
        count("WebhookRefused")
        return _response(401, "invalid signature")
    count("WebhookAccepted")
    try:
        payload = json.loads(raw)
    except ValueError:
        logger.warning("webhook payload is not JSON; acknowledged", size=len(raw))
        return _response(200, "ok")
    conn = get_conn()
    _account_events(conn, payload)
    statuses, skipped = parse_statuses(payload, callback_key(conn))
    statuses, stale = _fresh(statuses)
    reconciled = repository.apply_statuses(conn, statuses) if statuses else 0
    logger.info("webhook statuses applied", statuses=len(statuses), skipped=skipped, stale=stale, reconciled=reconciled)
    count("WebhookStatusesApplied", len(statuses))
    count("WebhookStatusesStale", stale)
    count("ReconciledByWebhook", reconciled)
    return _response(200, "ok")


def _account_events(conn: psycopg.Connection, payload: object) -> None:
    """Keep every account change of the POST, and apply the template and messaging-limit ones (`meta_events`).

    Changes older than Meta's retry window are kept but not applied: a replayed PAUSED must not pause today's
    campaigns.
    """
    events, template_events, limit_events = meta_events.parse(payload, _now())
    if not events:
        return
    not_before = _now() - STATUS_MAX_AGE
    template_events = [e for e in template_events if e["occurred_at"] >= not_before]
    limit_events = [e for e in limit_events if e["occurred_at"] >= not_before]
    applied = meta_repository.record_events(conn, events, template_events, limit_events)
    logger.info(
        "webhook account events applied", events=len(events), new=applied["new"],
        fields=sorted({e["field"] for e in events}), campaigns_paused=applied["paused"],
        campaigns_template_approved=applied["approved"], limits_changed=applied["limits_changed"],
    )
    count("WebhookAccountEvents", len(events))
    count("CampaignsPausedByTemplate", len(applied["paused"]))


def _fresh(statuses: list[dict]) -> tuple[list[dict], int]:
    """The statuses within Meta's retry window, and how many were older (ignored, logged)."""
    not_before = _now() - STATUS_MAX_AGE
    fresh = [s for s in statuses if s["occurred_at"] >= not_before]
    stale = len(statuses) - len(fresh)
    if stale:
        oldest = min(s["occurred_at"] for s in statuses)
        logger.warning(
            "webhook statuses older than Meta's retry window ignored", stale=stale, oldest=oldest.isoformat(),
            max_age_days=STATUS_MAX_AGE.days,
        )
    return fresh, stale


_keys: dict[str, str] = {}


def callback_key(conn: psycopg.Connection) -> str:
    """This database's biz_opaque_callback_data key, read once per database."""
    dsn = conn.info.dsn
    if dsn not in _keys:
        _keys[dsn] = repository.callback_key(conn)
    return _keys[dsn]


def _entries(payload: object) -> list[dict]:
    """The status objects of a payload, however malformed its envelope."""
    entries = payload.get("entry") if isinstance(payload, dict) else None
    found = []
    for entry in entries if isinstance(entries, list) else []:
        changes = entry.get("changes") if isinstance(entry, dict) else None
        for change in changes if isinstance(changes, list) else []:
            value = change.get("value") if isinstance(change, dict) else None
            statuses = value.get("statuses") if isinstance(value, dict) else None
            found += [s for s in statuses if isinstance(s, dict)] if isinstance(statuses, list) else []
    return found


def parse_statuses(payload: object, key: str) -> tuple[list[dict], int]:
    """The valid status updates of a webhook payload, flattened, and how many were skipped.

    Each status is validated alone: a bad one is logged and skipped, the others are kept. Its row is named
    only by callback data this deployment signed (`sendonce.callback`).
    """
    statuses, skipped = [], 0
    for position, status in enumerate(_entries(payload)):
        if status.get("status") not in KNOWN_STATUSES:
            continue  # other kinds (deleted, warning) are not ours to apply
        try:
            statuses.append(_status(status, key))
        except (ValueError, TypeError, OverflowError) as exc:
            skipped += 1
            # Its position in the POST, not its WAMID (WAMIDs stay out of the logs).
            logger.warning("webhook status skipped", reason=scrub(exc), position=position)
    return statuses, skipped


def _status(status: dict, key: str) -> dict:
    wamid = status.get("id")
    if not isinstance(wamid, str) or not 0 < len(wamid) <= 256:
        raise ValueError("id is not a WAMID")
    timestamp = _integer(status.get("timestamp"), 1, 2**33)
    if timestamp is None:
        raise ValueError("timestamp is not a Unix time")
    recipient = status.get("recipient_id")
    recipient = recipient if isinstance(recipient, str) and recipient.isdigit() and len(recipient) <= 20 else None
    errors = status.get("errors")
    error = errors[0] if isinstance(errors, list) and errors and isinstance(errors[0], dict) else {}
    title = error.get("title") or error.get("message")
    named = callback.verify(key, status.get("biz_opaque_callback_data"))
    if named is None and status.get("biz_opaque_callback_data"):
        logger.info("callback data not ours; status kept without a row", status=status["status"])
    return {
        "wamid": wamid,
        "status": status["status"],
        "occurred_at": datetime.fromtimestamp(timestamp, UTC),
        "campaign_id": named[0] if named else None,
        "queue_id": named[1] if named and recipient else None,
        "recipient_id": recipient,
        "code": _integer(error.get("code"), 0, 2**31 - 1),
        "title": str(title)[:512] if title is not None else None,
        **_pricing(status.get("pricing")),
    }


def _pricing(pricing: object) -> dict:
    """Meta's pricing report (per-message pricing): category, type, billable. `billable` is deprecated in newer
    Graph versions: without it, a `regular` type is billable and a `free_*` one is not."""
    pricing = pricing if isinstance(pricing, dict) else {}
    category, kind, billable = pricing.get("category"), pricing.get("type"), pricing.get("billable")
    category = category.lower() if isinstance(category, str) and _WORD.fullmatch(category) else None
    kind = kind.lower() if isinstance(kind, str) and _WORD.fullmatch(kind) else None
    if not isinstance(billable, bool):
        billable = None if kind is None else kind == "regular"
    return {"pricing_category": category, "pricing_type": kind, "billable": billable}


def _integer(value: object, low: int, high: int) -> int | None:
    """An integer (or its decimal string) within [low, high], else None."""
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        return None
    if isinstance(value, str) and not (value.isdigit() and value.isascii() and len(value) <= 19):
        return None
    number = int(value)
    return number if low <= number <= high else None
