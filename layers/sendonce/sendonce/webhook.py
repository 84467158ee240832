"""The WhatsApp webhook (API Gateway HTTP API, payload v2): verified status updates and reconciliation.

GET answers Meta's verification handshake. POST is accepted only with a valid `X-Hub-Signature-256` (HMAC-SHA256
of the raw body with the app secret, compared in constant time); its statuses are stored and applied in a
constant number of statements (`repository.apply_statuses`), and the answer is a quick 200 so Meta does not
retry. Anything else in the payload (incoming messages, other fields) is acknowledged and ignored.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from datetime import UTC, datetime

from sendonce import repository
from sendonce.config import get_settings, resolve_secret
from sendonce.db import get_conn
from sendonce.observability import logger

KNOWN_STATUSES = frozenset({"sent", "delivered", "read", "failed"})


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
    if params.get("hub.mode") == "subscribe" and expected and hmac.compare_digest(token, resolve_secret(expected)):
        return _response(200, params.get("hub.challenge", ""))
    logger.warning("webhook verification refused", mode=params.get("hub.mode"))
    return _response(403, "forbidden")


def signature_ok(raw: bytes, header: str | None, secret: str) -> bool:
    """Whether `header` is "sha256=<hex HMAC-SHA256 of raw with secret>" (constant-time comparison)."""
    if not header or not header.startswith("sha256=") or not secret:
        return False
    digest = hmac.new(secret.encode(), raw, hashlib.sha256).hexdigest()
    return hmac.compare_digest(header[len("sha256="):].lower(), digest)


def raw_body(event: dict) -> bytes:
    """The exact bytes Meta signed (API Gateway base64-encodes some bodies)."""
    body = event.get("body") or ""
    return base64.b64decode(body) if event.get("isBase64Encoded") else body.encode()


def receive(event: dict) -> dict:
    """Verify and apply a status POST; 401 and nothing stored when the signature is missing or wrong."""
    raw = raw_body(event)
    headers = {k.lower(): v for k, v in (event.get("headers") or {}).items()}
    secret = get_settings().webhook_secret()
    if not signature_ok(raw, headers.get("x-hub-signature-256"), secret):
        logger.warning("webhook signature refused", has_signature="x-hub-signature-256" in headers)
        return _response(401, "invalid signature")
    try:
        statuses = parse_statuses(json.loads(raw))
    except (ValueError, TypeError, KeyError, AttributeError) as exc:
        logger.warning("webhook payload unreadable", error=str(exc))
        return _response(400, "payload is not a WhatsApp webhook")
    reconciled = repository.apply_statuses(get_conn(), statuses) if statuses else 0
    logger.info("webhook statuses applied", statuses=len(statuses), reconciled=reconciled)
    return _response(200, "ok")


def parse_statuses(payload: dict) -> list[dict]:
    """The status updates of a webhook payload, flattened, with our row id from biz_opaque_callback_data."""
    statuses = []
    for entry in payload["entry"]:
        for change in entry.get("changes", []):
            for status in (change.get("value") or {}).get("statuses", []):
                if status.get("status") not in KNOWN_STATUSES:
                    continue
                error = (status.get("errors") or [{}])[0]
                callback = str(status.get("biz_opaque_callback_data") or "")
                statuses.append(
                    {
                        "wamid": str(status["id"]),
                        "status": status["status"],
                        "occurred_at": datetime.fromtimestamp(int(status["timestamp"]), UTC),
                        "queue_id": int(callback) if callback.isdigit() else None,
                        "recipient_id": status.get("recipient_id"),
                        "code": error.get("code"),
                        "title": error.get("title") or error.get("message"),
                    }
                )
    return statuses
