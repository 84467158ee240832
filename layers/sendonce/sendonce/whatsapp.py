"""The WhatsApp Cloud API adapter: one keep-alive httpx client and the template send."""

from __future__ import annotations

import threading

import httpx

from sendonce import graph_errors
from sendonce.config import get_settings, require, resolve_secret
from sendonce.models import ClaimedRow, Disposition, SendResult

_client: httpx.Client | None = None
_lock = threading.Lock()


def get_http_client() -> httpx.Client:
    """The shared client: created on first use, reused across invocations so connections stay warm."""
    global _client
    with _lock:
        if _client is None or _client.is_closed:
            settings = get_settings()
            token = resolve_secret(require(settings.whatsapp_access_token, "WHATSAPP_ACCESS_TOKEN"))
            _client = httpx.Client(
                base_url=settings.whatsapp_api_base_url + "/",
                headers={"Authorization": f"Bearer {token}"},
                # The connect timeout is short: a connect error is safe to retry, a read timeout is not.
                timeout=httpx.Timeout(settings.whatsapp_timeout_seconds, connect=min(3.0, settings.whatsapp_timeout_seconds)),
                limits=httpx.Limits(max_connections=50, max_keepalive_connections=20),
            )
        return _client


def close_http_client() -> None:
    """Close and forget the shared client (tests, settings changes)."""
    global _client
    with _lock:
        if _client is not None:
            _client.close()
        _client = None


def template_payload(row: ClaimedRow) -> dict:
    """The /messages body for a template send; `biz_opaque_callback_data` names the row for the webhooks."""
    components = [dict(c) for c in row.components if c.get("type") != "body"]
    if row.params:
        components.append({"type": "body", "parameters": [{"type": "text", "text": p} for p in row.params]})
    template: dict = {"name": row.template_name, "language": {"code": row.language_code}}
    if components:
        template["components"] = components
    return {
        "messaging_product": "whatsapp",
        "recipient_type": "individual",
        "to": row.phone_number,
        "type": "template",
        "template": template,
        "biz_opaque_callback_data": row.callback_data,
    }


def send_template(row: ClaimedRow, client: httpx.Client | None = None) -> SendResult:
    """Send one template message and classify the answer.

    Never raises for a transport or API error: the result says what happened. A connect error means the
    request never left (retry); any failure after the request was written is ambiguous, since Meta may have
    accepted it.
    """
    client = client or get_http_client()
    try:
        response = client.post(f"{row.phone_number_id}/messages", json=template_payload(row))
    except (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout) as exc:
        return SendResult(Disposition.RETRY, error=f"not sent: {type(exc).__name__}", requested=False)
    except httpx.TransportError as exc:
        return SendResult(Disposition.AMBIGUOUS, error=f"no answer after the request was sent: {type(exc).__name__}")
    return read_response(response)


def read_response(response: httpx.Response) -> SendResult:
    """Turn a Graph API answer into a `SendResult`."""
    try:
        body = response.json()
    except ValueError:
        body = None
    if response.is_success:
        try:
            return SendResult(Disposition.SENT, wamid=str(body["messages"][0]["id"]))
        except (TypeError, KeyError, IndexError):
            # Meta answered 2xx, so it may well have accepted the message: never resend blindly.
            return SendResult(Disposition.AMBIGUOUS, error=f"HTTP {response.status_code} without a message id")
    error = body.get("error") if isinstance(body, dict) else None
    code = error.get("code") if isinstance(error, dict) else None
    code = code if isinstance(code, int) else None
    detail = _error_text(error) if isinstance(error, dict) else response.text[:200]
    return SendResult(
        graph_errors.classify(code, response.status_code),
        code=code,
        error=f"HTTP {response.status_code}: {detail}",
    )


def _error_text(error: dict) -> str:
    details = (error.get("error_data") or {}).get("details") if isinstance(error.get("error_data"), dict) else None
    text = str(error.get("message") or error.get("title") or "error")
    return f"{text} ({details})" if details else text
