"""The WhatsApp Cloud API adapter: one keep-alive httpx client and the template send."""

from __future__ import annotations

import threading

import httpx

from sendonce import graph_errors
from sendonce.config import get_settings, is_secret_arn, require, resolve_secret
from sendonce.errors import GraphRefusedError, GraphUnavailableError
from sendonce.models import ClaimedRow, Disposition, SendResult

_client: httpx.Client | None = None
_lock = threading.Lock()


def get_http_client() -> httpx.Client:
    """The shared client: created on first use, reused across invocations so connections stay warm."""
    global _client
    with _lock:
        if _client is None or _client.is_closed:
            _client = _new_client(resolve_secret(require(get_settings().whatsapp_access_token, "WHATSAPP_ACCESS_TOKEN")))
        return _client


def _new_client(token: str) -> httpx.Client:
    settings = get_settings()
    return httpx.Client(
        base_url=settings.whatsapp_api_base_url + "/",
        headers={"Authorization": f"Bearer {token}"},
        # The connect timeout is short: a connect error is safe to retry, a read timeout is not.
        timeout=httpx.Timeout(settings.whatsapp_timeout_seconds, connect=min(3.0, settings.whatsapp_timeout_seconds)),
        # A batch's sends run at once (one thread each): a connection for each, up to batches of 100.
        limits=httpx.Limits(max_connections=100, max_keepalive_connections=100),
    )


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
    if client is not None:
        return _post(client, row)
    client = get_http_client()
    result = _post(client, row)
    if result.code == graph_errors.EXPIRED_TOKEN and (fresh := _client_after_rotation(client)) is not None:
        # The token was rotated without a redeploy: Meta refused the request (nothing was sent), so one more
        # try with the new token is safe. A second 190 halts the campaign as before.
        result = _post(fresh, row)
    return result


def _post(client: httpx.Client, row: ClaimedRow) -> SendResult:
    try:
        response = client.post(f"{row.phone_number_id}/messages", json=template_payload(row))
    except (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout) as exc:
        return SendResult(Disposition.RETRY, error=f"not sent: {type(exc).__name__}", requested=False)
    except httpx.TransportError as exc:
        return SendResult(Disposition.AMBIGUOUS, error=f"no answer after the request was sent: {type(exc).__name__}")
    return read_response(response)


def graph_get(path: str, params: dict[str, str]) -> dict:
    """GET a Graph API object (a read: safe to repeat); its JSON object.

    Raises
    ------
    GraphUnavailableError
        No answer (connect error, timeout, dropped connection), a 5xx or 429.
    GraphRefusedError
        Any other refusal; its code and message are in the text (the access token never is).
    """
    try:
        response = get_http_client().get(path, params=params)
    except httpx.TransportError as exc:
        raise GraphUnavailableError(f"the Graph API is unreachable ({type(exc).__name__})") from None
    try:
        body = response.json()
    except ValueError:
        body = None
    if response.is_success and isinstance(body, dict):
        return body
    error = body.get("error") if isinstance(body, dict) else None
    if response.status_code >= 500 or response.status_code == 429 or not isinstance(error, dict):
        raise GraphUnavailableError(f"the Graph API answered GET {path} with HTTP {response.status_code}")
    raise GraphRefusedError(
        f"the Graph API refused GET {path}: HTTP {response.status_code}, code {error.get('code')}: "
        f"{str(error.get('message'))[:200]}"
    )


def _client_after_rotation(used: httpx.Client) -> httpx.Client | None:
    """After a 190: a client with a newer token than `used` had, re-reading the secret once; None if none.

    Concurrent sends of a batch all get the 190: the first re-reads the secret and builds the new client, the
    others find it already there.
    """
    global _client
    settings = get_settings()
    if not is_secret_arn(settings.whatsapp_access_token or ""):
        return None  # a plain value cannot have been rotated under us
    with _lock:
        if _client is not None and _client is not used and not _client.is_closed:
            return _client
        token = resolve_secret(settings.whatsapp_access_token, fresh=True)
        if used.headers.get("Authorization") == f"Bearer {token}":
            return None
        _client = _new_client(token)
        return _client


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
