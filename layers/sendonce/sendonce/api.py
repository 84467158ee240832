"""The campaigns HTTP API (API Gateway HTTP API, payload v2): the same operations as the CLI.

Routes: POST /campaigns, GET /campaigns, GET /campaigns/{id}, GET /campaigns/{id}/failures,
POST /campaigns/{id}/pause|resume|cancel|retry-failed|export.
Errors are JSON `{"error": {"code", "message"}}` with the right 4xx; unknown ids are 404.

A contact list inline in the body (or another campaign's audience: `from_campaign` and `audience`) is created at
once (201). A list in S3 (`contacts_s3`) may hold a million rows, longer than API Gateway waits (30 s): its
header is checked, then the creation runs in an asynchronous invocation of this same function, and the answer is
202 with the campaign id to poll. An export runs the same way: 202 with the key the CSV will have in the
contacts bucket.

Creating is idempotent by a client key: the `Idempotency-Key` header (a UUID) or the body's `id` is the
campaign id. A create repeated with the same key (a retry after a lost answer) creates and enqueues nothing: it
answers 200 with the existing campaign's numbers (`"replayed": true`, `"enqueued": 0`) when the request is the
same (same fields and, for an inline list, exactly the same recipients and parameters), and 409 when the key is
reused for a different campaign. Without a key every create is a new campaign.

Every answer is bounded: invalid rows are a count plus the first `contacts.LISTED_INVALID_ROWS`, and one place
(`BoundedResolver.resolve`) caps the serialized body at `MAX_RESPONSE_BYTES`, far below Lambda's 6 MB (over it,
API Gateway answers 500 after the work was done). Inputs are checked at this boundary: ids are canonical UUIDs
before anything reaches PostgreSQL; bodies that are not UTF-8 JSON, nest deeper than `MAX_JSON_DEPTH`, or hold a
NUL character or an unpaired surrogate anywhere are 400.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import uuid
from datetime import UTC, datetime
from functools import lru_cache
from http import HTTPStatus

import boto3
from aws_lambda_powertools.event_handler import APIGatewayHttpResolver, Response, content_types
from aws_lambda_powertools.event_handler.exceptions import NotFoundError

from sendonce import campaigns, contacts, control, export, failures, s3, templates
from sendonce.config import require, send_queue_url
from sendonce.db import get_conn
from sendonce.errors import (
    CampaignInputError,
    CampaignNotFoundError,
    CampaignStateError,
    ConfigError,
    ContactsError,
    DatabaseError,
    EnqueueError,
    GraphUnavailableError,
)
from sendonce.observability import logger
from sendonce.repository.campaigns import campaign_status as stored_status

# Inline lists beyond this belong in S3 (API Gateway itself stops at 10 MB, a synchronous Lambda at 6 MB).
MAX_BODY_BYTES = 5 * 1024 * 1024
# A synchronous Lambda's answer is at most 6 MB; every answer here is far smaller by design, this is the backstop.
MAX_RESPONSE_BYTES = 1024 * 1024
# No route takes deeper JSON (components are a few levels); deeper input is refused before it is walked.
MAX_JSON_DEPTH = 20
# An error message quotes at most this much (a message may quote a field the caller sent).
MAX_MESSAGE_CHARS = 1000
IDEMPOTENCY_HEADER = "idempotency-key"
JOB_KEY = "sendonce_job"
CREATE_JOB, EXPORT_JOB = "create_campaign", "export_campaign"
# Exports are written to the contacts bucket under this prefix, one folder per campaign.
EXPORTS_PREFIX = "exports/"


class BoundedResolver(APIGatewayHttpResolver):
    """The HTTP API resolver whose every answer, errors and 404s included, fits `MAX_RESPONSE_BYTES`."""

    def resolve(self, event: dict, context) -> dict:
        """Route the event, then bound the answer (see `bounded_response`)."""
        return bounded_response(super().resolve(event, context))


def bounded_response(response: dict) -> dict:
    """`response` if its body is at most `MAX_RESPONSE_BYTES`, else an answer that is.

    An oversized JSON object keeps its status and its scalar fields (the campaign id, the counts), drops its
    lists and objects and says `"truncated": true`: the work behind it is done, and the client must still learn
    the campaign id. Anything else becomes a 500 error.
    """
    body = response.get("body")
    if not isinstance(body, str) or len(body) <= MAX_RESPONSE_BYTES // 4 or len(body.encode()) <= MAX_RESPONSE_BYTES:
        return response
    logger.error("response over the size cap", bytes=len(body.encode()), status=response.get("statusCode"))
    try:
        data = json.loads(body)
    except ValueError:
        data = None
    if isinstance(data, dict):
        kept = {k: v for k, v in data.items() if isinstance(v, (str, int, float, bool)) or v is None}
        small = json.dumps({**kept, "truncated": True})
        if len(small.encode()) <= MAX_RESPONSE_BYTES:
            return {**response, "body": small, "isBase64Encoded": False}
    error = {"error": {"code": "response_too_large", "message": "the answer was over the response size cap"}}
    return {**response, "statusCode": HTTPStatus.INTERNAL_SERVER_ERROR, "body": json.dumps(error), "isBase64Encoded": False}


app = BoundedResolver()


class RequestError(CampaignInputError):
    """The request body is not what the route takes."""


class PayloadTooLargeError(CampaignInputError):
    """The request body is over MAX_BODY_BYTES."""


def _error(status: HTTPStatus, code: str, message: str) -> Response:
    if len(message) > MAX_MESSAGE_CHARS:
        message = message[:MAX_MESSAGE_CHARS] + "..."
    return Response(
        status_code=status,
        content_type=content_types.APPLICATION_JSON,
        body=json.dumps({"error": {"code": code, "message": message}}),
    )


def _json(status: HTTPStatus, body: dict) -> Response:
    return Response(status_code=status, content_type=content_types.APPLICATION_JSON, body=json.dumps(body))


@app.exception_handler(CampaignNotFoundError)
def _not_found(exc: Exception) -> Response:
    return _error(HTTPStatus.NOT_FOUND, "not_found", str(exc))


@app.exception_handler(NotFoundError)
def _no_route(exc: Exception) -> Response:
    return _error(HTTPStatus.NOT_FOUND, "not_found", "no such route")


@app.exception_handler(PayloadTooLargeError)
def _too_large(exc: Exception) -> Response:
    return _error(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, "payload_too_large", str(exc))


@app.exception_handler([CampaignInputError, ContactsError])
def _bad_request(exc: Exception) -> Response:
    return _error(HTTPStatus.BAD_REQUEST, "bad_request", str(exc))


@app.exception_handler(CampaignStateError)
def _conflict(exc: Exception) -> Response:
    return _error(HTTPStatus.CONFLICT, "conflict", str(exc))


@app.exception_handler([DatabaseError, EnqueueError, GraphUnavailableError])
def _unavailable(exc: Exception) -> Response:
    logger.error("request failed", error=str(exc))
    return _error(HTTPStatus.SERVICE_UNAVAILABLE, "unavailable", str(exc))


def _raw_body() -> bytes:
    """The body's bytes (base64 decoded when API Gateway encoded it), at most MAX_BODY_BYTES."""
    event = app.current_event
    body = event.body or ""
    # base64 is 4/3 of the bytes: refuse an oversized body before decoding it.
    if len(body) > MAX_BODY_BYTES * (4 / 3 if event.is_base64_encoded else 4) + 4:
        raise _too_large()
    if event.is_base64_encoded:
        try:
            raw = base64.b64decode(body, validate=True)
        except (binascii.Error, ValueError):
            raise RequestError("body is not valid base64") from None
    else:
        try:
            raw = body.encode("utf-8")
        except UnicodeEncodeError:
            raise RequestError("body is not valid UTF-8 text") from None
    if len(raw) > MAX_BODY_BYTES:
        raise _too_large()
    return raw


def _too_large() -> PayloadTooLargeError:
    return PayloadTooLargeError(
        f"body is over {MAX_BODY_BYTES // (1024 * 1024)} MB: upload the contacts CSV to S3 and pass contacts_s3"
    )


def _body() -> dict:
    """The request body as a JSON object whose every string PostgreSQL can store; else `RequestError` (400)."""
    raw = _raw_body()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise RequestError(f"body is not valid UTF-8 text (byte {exc.start})") from None
    try:
        body = json.loads(text)
    except RecursionError:
        raise RequestError(f"body nests deeper than {MAX_JSON_DEPTH} levels") from None
    except ValueError as exc:
        raise RequestError(f"body is not valid JSON: {str(exc)[:200]}") from None
    if not isinstance(body, dict):
        raise RequestError("body must be a JSON object")
    _check_json(body)
    return body


def _check_json(value: object) -> None:
    """Refuse nesting deeper than MAX_JSON_DEPTH, and NUL characters or unpaired surrogates in any string.

    json.loads accepts "\\u0000" and "\\ud800"; PostgreSQL refuses both (text and jsonb), after the request
    may already have changed state, with its own words and a 503. Walked without recursion.
    """
    stack: list[tuple[object, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, (dict, list)):
            if depth > MAX_JSON_DEPTH:
                raise RequestError(f"body nests deeper than {MAX_JSON_DEPTH} levels")
            if isinstance(item, dict):
                stack.extend((key, depth) for key in item)
                stack.extend((child, depth + 1) for child in item.values())
            else:
                stack.extend((child, depth + 1) for child in item)
        elif isinstance(item, str) and not campaigns.is_storable_text(item):
            raise RequestError("body has a string with a NUL character or an unpaired surrogate")


def canonical_id(value: object, what: str = "campaign id") -> str:
    """The canonical spelling of a campaign id (braces, "urn:uuid:" and hex without hyphens are accepted).

    Raises
    ------
    CampaignNotFoundError
        For a path id: no campaign can have it (404).
    RequestError
        For an id given in a body or header (400).
    """
    if not isinstance(value, str):
        value = None  # a number or an object is no id, and is not shown back
    try:
        return campaigns.canonical_campaign_id(value)
    except CampaignNotFoundError:
        if what == "campaign id":
            raise
        shown = repr(value[:64]) if isinstance(value, str) else "not a string"
        raise RequestError(f"{what} must be a UUID, got {shown}") from None


def _client_key(body: dict) -> str | None:
    """The canonical campaign id the client chose (Idempotency-Key header or body id), or None."""
    headers = {k.lower(): v for k, v in (app.current_event.headers or {}).items()}
    header = headers.get(IDEMPOTENCY_HEADER)
    key = canonical_id(header, "Idempotency-Key") if header is not None else None
    if body.get("id") is not None:
        given = canonical_id(body["id"], "id")
        if key is not None and given != key:
            raise RequestError("id and the Idempotency-Key header differ: give one, or the same UUID in both")
        key = given
    return key


def _check_components(components: object) -> tuple[dict, ...]:
    if not isinstance(components, list) or not all(isinstance(c, dict) for c in components):
        raise RequestError("components must be a list of objects")
    return tuple(components)


def _new_campaign(body: dict, campaign_id: str | None) -> campaigns.NewCampaign:
    fields = {"name": "name", "template": "template_name", "language": "language_code", "phone_number_id": "phone_number_id"}
    missing = [key for key in fields if not isinstance(body.get(key), str)]
    if missing:
        raise RequestError(f"missing or not a string: {', '.join(missing)}")
    new = campaigns.NewCampaign(
        **{field: body[key] for key, field in fields.items()},
        components=_check_components(body.get("components", [])),
        id=campaign_id or str(uuid.uuid4()),
        auto_resume=_flag(body, "auto_resume"),
        start_at=_start_at(body.get("start_at")),
        **_send_window(body),
    )
    new.validate()
    return new


def _send_window(body: dict) -> dict:
    """send_window ("09:00-20:00", each recipient's local time) and time_zone (for numbers spanning several)."""
    window, zone = body.get("send_window"), body.get("time_zone", "UTC")
    if window is not None and not (isinstance(window, str) and len(window) <= 40):
        raise RequestError("send_window must be HH:MM-HH:MM, e.g. 09:00-20:00")
    if not (isinstance(zone, str) and len(zone) <= 64):
        raise RequestError("time_zone must be an IANA time zone such as Asia/Kolkata")
    return {"send_window": campaigns.parse_send_window(window, "send_window"), "time_zone": zone}


def _start_at(value: object) -> datetime | None:
    """start_at: an ISO 8601 time with its zone, or absent."""
    if value is None:
        return None
    try:
        return datetime.fromisoformat(value) if isinstance(value, str) and len(value) <= 64 else _bad_start_at()
    except ValueError:
        return _bad_start_at()


def _bad_start_at():
    raise RequestError("start_at must be an ISO time with its zone, e.g. 2026-12-01T09:00:00+05:30")


def _flag(body: dict, name: str) -> bool:
    value = body.get(name, False)
    if not isinstance(value, bool):
        raise RequestError(f"{name} must be true or false")
    return value


def _replayed(created: campaigns.CreatedCampaign) -> Response:
    return _json(HTTPStatus.OK, {**created.as_json(max_rows=contacts.LISTED_INVALID_ROWS), "replayed": True})


@app.post("/campaigns")
def create_campaign() -> Response:
    """Create a campaign; idempotent by its client key (see the module docstring)."""
    body = _body()
    key = _client_key(body)
    new = _new_campaign(body, key)
    region = body.get("default_country")
    if region is not None and not isinstance(region, str):
        raise RequestError("default_country must be a two-letter ISO country code")
    # Checked now: for contacts_s3 the file is read later, by the asynchronous job, which nobody watches.
    region = contacts.check_region(region, "default_country")
    if sum(source in body for source in ("contacts", "contacts_s3", "from_campaign")) != 1:
        raise RequestError("give exactly one of contacts (inline list), contacts_s3 ({bucket, key}) or "
                           "from_campaign (with audience)")
    if "contacts_s3" in body:
        location = _s3_location(body["contacts_s3"])
        if key is not None and (replayed := campaigns.replay_create(get_conn(), new, None)) is not None:
            return _replayed(replayed)
        if key is None and stored_status(get_conn(), new.id) is not None:
            raise CampaignStateError(f"campaign {new.id} already exists")
        # Fail fast on a file that cannot be a contact list; the rows are read by the asynchronous job. The
        # error never quotes the header: the caller may not be allowed to read the object.
        param_count = contacts.check_header(s3.csv_lines(**location), source=_source(location), echo_header=False)
        # The template is checked now too, so that a refusal is this request's answer, not a failed job's.
        templates.preflight(get_conn(), new.template_name, new.language_code, param_count, new.components,
                            _flag(body, "allow_unchecked_template"))
        _start_job(CREATE_JOB, {"campaign": _job_campaign(new), "contacts_s3": location, "default_country": region,
                                "allow_unchecked_template": _flag(body, "allow_unchecked_template")})
        logger.info("campaign creation started", campaign_id=new.id)
        return _json(HTTPStatus.ACCEPTED, {"campaign_id": new.id, "status": "creating", "location": f"/campaigns/{new.id}"})
    if "from_campaign" in body:
        # Retargeting: another campaign's audience, with the parameters each contact was sent.
        try:
            contact_list = campaigns.audience(get_conn(), body["from_campaign"], str(body.get("audience"))[:40])
        except CampaignNotFoundError as exc:
            raise RequestError(str(exc)) from None
    else:
        contact_list = contacts.from_records(
            body["contacts"], default_region=region, max_invalid=contacts.LISTED_INVALID_ROWS
        )
    if key is not None and (replayed := campaigns.replay_create(get_conn(), new, contact_list)) is not None:
        return _replayed(replayed)
    try:
        created = campaigns.create_campaign(get_conn(), new, contact_list, send_queue_url(),
                                            allow_unchecked_template=_flag(body, "allow_unchecked_template"))
    except CampaignStateError:
        # The same key created concurrently (a retry racing the first request): answer as for a retry.
        if key is None or (replayed := campaigns.replay_create(get_conn(), new, contact_list)) is None:
            raise
        return _replayed(replayed)
    return _json(HTTPStatus.CREATED, created.as_json(max_rows=contacts.LISTED_INVALID_ROWS))


def _source(location: dict) -> str:
    return f"s3://{location['bucket']}/{location['key']}"


def _s3_location(value: object, name: str = "contacts_s3") -> dict:
    """{"bucket", "key"} if the bucket is the stack's CONTACTS_BUCKET and the key can name an object."""
    if not isinstance(value, dict) or not isinstance(value.get("bucket"), str) or not isinstance(value.get("key"), str):
        raise RequestError(f"{name} must be {{\"bucket\": ..., \"key\": ...}}")
    allowed = os.environ.get("CONTACTS_BUCKET")
    if not allowed or value["bucket"] != allowed:
        raise RequestError(f"{name}.bucket must be the stack's contacts bucket ({allowed or 'not configured'})")
    return {"bucket": value["bucket"], "key": s3.check_key(value["key"])}


def _job_campaign(new: campaigns.NewCampaign) -> dict:
    return {
        "id": new.id,
        "name": new.name,
        "template_name": new.template_name,
        "language_code": new.language_code,
        "phone_number_id": new.phone_number_id,
        "components": list(new.components),
        "auto_resume": new.auto_resume,
        "start_at": new.start_at.isoformat() if new.start_at else None,
        "send_window": "-".join(t.isoformat() for t in new.send_window) if new.send_window else None,
        "time_zone": new.time_zone,
    }


@lru_cache(maxsize=1)
def get_lambda_client():
    """The Lambda client (endpoint from AWS_ENDPOINT_URL_LAMBDA / AWS_ENDPOINT_URL when set)."""
    return boto3.client("lambda")


def _start_job(kind: str, job: dict) -> None:
    """Invoke this function asynchronously with the job (Lambda retries it twice on failure)."""
    get_lambda_client().invoke(
        FunctionName=require(os.environ.get("AWS_LAMBDA_FUNCTION_NAME"), "AWS_LAMBDA_FUNCTION_NAME"),
        InvocationType="Event",
        Payload=json.dumps({JOB_KEY: kind, **job}).encode(),
    )


def run_job(event: dict) -> dict:
    """Run an asynchronous job this function started: an export, or a creation from S3."""
    if event.get(JOB_KEY) == EXPORT_JOB:
        return run_export(event)
    return run_create(event)


def run_create(event: dict) -> dict:
    """Run an asynchronous creation started by POST /campaigns with contacts_s3.

    The payload is checked again as the API checks a request (anyone allowed to invoke the function can send
    one): the bucket must be CONTACTS_BUCKET, the key an S3 key, the campaign's fields valid. Any failure is
    logged as an error with the campaign id and raised, so that Lambda retries the job and then hands it to the
    function's asynchronous on-failure destination. A failure after the campaign was written (an enqueue error)
    leaves its rows `ready`: the retry enqueues them.

    Returns
    -------
    dict
        The `campaign create --json` object, with a sample of the invalid rows.
    """
    campaign_id = None
    try:
        new, location, region = _job_input(event)
        campaign_id = new.id
        contact_list = contacts.parse_csv(
            s3.csv_lines(**location), source=_source(location), default_region=region,
            max_invalid=contacts.LISTED_INVALID_ROWS, echo_header=False,
        )
        try:
            created = campaigns.create_campaign(get_conn(), new, contact_list, send_queue_url(),
                                                allow_unchecked_template=event.get("allow_unchecked_template") is True)
        except CampaignStateError:
            # A retried job after the campaign was written, if it is the same campaign (else this raises):
            # finish the enqueue, which is harmless to repeat (the sender's claim sends each row once).
            campaigns.replay_create(get_conn(), new, contact_list)
            return {"campaign_id": new.id, "enqueued": campaigns.enqueue_campaign(get_conn(), new.id, send_queue_url())}
        return created.as_json(max_rows=contacts.LISTED_INVALID_ROWS)
    except Exception as exc:
        logger.error(
            "campaign creation job failed", campaign_id=campaign_id, error_type=type(exc).__name__,
            error=str(exc)[:MAX_MESSAGE_CHARS],
        )
        raise


def _job_input(event: dict) -> tuple[campaigns.NewCampaign, dict, str | None]:
    """The job's campaign, S3 location and default country, validated; `RequestError` names what is wrong."""
    job_campaign = event.get("campaign")
    if not isinstance(job_campaign, dict):
        raise RequestError("job: campaign must be an object")
    _check_json(job_campaign)
    fields = ("name", "template_name", "language_code", "phone_number_id")
    if not all(isinstance(job_campaign.get(name), str) for name in fields):
        raise RequestError(f"job: campaign needs the strings {', '.join(fields)}")
    new = campaigns.NewCampaign(
        **{name: job_campaign[name] for name in fields},
        components=_check_components(job_campaign.get("components", [])),
        id=canonical_id(job_campaign.get("id"), "job campaign id"),
        auto_resume=job_campaign.get("auto_resume") is True,
        start_at=_start_at(job_campaign.get("start_at")),
        **_send_window(job_campaign),
    )
    new.validate()
    region = event.get("default_country")
    if region is not None and not isinstance(region, str):
        raise RequestError("job: default_country must be a string")
    return new, _s3_location(event.get("contacts_s3")), contacts.check_region(region, "default_country")


@app.get("/campaigns")
def list_campaigns() -> Response:
    return _json(HTTPStatus.OK, {"campaigns": control.list_campaigns(get_conn())})


@app.get("/campaigns/<campaign_id>")
def campaign_status(campaign_id: str) -> Response:
    return _json(HTTPStatus.OK, control.status(get_conn(), campaign_id))


@app.get("/campaigns/<campaign_id>/failures")
def campaign_failures(campaign_id: str) -> Response:
    """The failed rows, a page at a time: `?limit=N&after=ROW_ID` (as `campaign failures`)."""
    query = app.current_event.query_string_parameters or {}
    return _json(HTTPStatus.OK, failures.failed_rows(
        get_conn(), campaign_id, _query_int(query, "limit", 50), _query_int(query, "after", 0)
    ))


def _query_int(query: dict, name: str, default: int) -> int:
    value = query.get(name)
    if value is None:
        return default
    if not (isinstance(value, str) and value.isascii() and value.isdigit() and len(value) <= 19):
        raise RequestError(f"{name} must be a whole number, got {str(value)[:40]!r}")
    return int(value)


@app.post("/campaigns/<campaign_id>/export")
def start_export(campaign_id: str) -> Response:
    """Start writing the campaign's per-contact CSV (`campaign export`) to the contacts bucket: 202 with its key.
    The object appears when the export is complete (a multipart upload completes whole), never partly written."""
    campaign_id = campaigns.existing_campaign(get_conn(), campaign_id)
    bucket = os.environ.get("CONTACTS_BUCKET", "")
    if not bucket:
        raise ConfigError("CONTACTS_BUCKET is not set: exports go to the stack's contacts bucket")
    key = f"{EXPORTS_PREFIX}{campaign_id}/{datetime.now(UTC):%Y%m%dT%H%M%SZ}-{uuid.uuid4().hex[:8]}.csv"
    _start_job(EXPORT_JOB, {"campaign_id": campaign_id, "export_s3": {"bucket": bucket, "key": key}})
    logger.info("campaign export started", campaign_id=campaign_id)
    return _json(HTTPStatus.ACCEPTED, {"campaign_id": campaign_id, "status": "exporting",
                                       "export_s3": {"bucket": bucket, "key": key}})


def run_export(event: dict) -> dict:
    """Write a campaign's export to the key POST /campaigns/{id}/export chose; checked again as a request is (the
    bucket must be CONTACTS_BUCKET, the key under the campaign's exports folder). A failure is logged and
    raised: Lambda retries the job, which writes the whole file again."""
    campaign_id = None
    try:
        campaign_id = canonical_id(event.get("campaign_id"), "job campaign id")
        location = _s3_location(event.get("export_s3"), "export_s3")
        if not location["key"].startswith(f"{EXPORTS_PREFIX}{campaign_id}/"):
            raise RequestError(f"job: the export's key must be under {EXPORTS_PREFIX}{campaign_id}/")
        with s3.text_writer(**location) as out:
            written = export.export_csv(get_conn(), campaign_id, out)
        logger.info("campaign exported", campaign_id=campaign_id, rows=written, key=location["key"])
        return {"campaign_id": campaign_id, "rows": written, "export_s3": location}
    except Exception as exc:
        logger.error("campaign export job failed", campaign_id=campaign_id, error_type=type(exc).__name__,
                     error=str(exc)[:MAX_MESSAGE_CHARS])
        raise


@app.post("/campaigns/<campaign_id>/pause")
def pause(campaign_id: str) -> Response:
    return _json(HTTPStatus.OK, control.pause(get_conn(), campaign_id))


@app.post("/campaigns/<campaign_id>/resume")
def resume(campaign_id: str) -> Response:
    """Resume; `?force=true` even while the template is known to be paused (see control.resume)."""
    force = (app.current_event.query_string_parameters or {}).get("force") == "true"
    return _json(HTTPStatus.OK, control.resume(get_conn(), campaign_id, send_queue_url(), force=force))


@app.post("/campaigns/<campaign_id>/cancel")
def cancel(campaign_id: str) -> Response:
    return _json(HTTPStatus.OK, control.cancel(get_conn(), campaign_id))


@app.post("/campaigns/<campaign_id>/retry-failed")
def retry_failed(campaign_id: str) -> Response:
    # {"include_unconfirmed": true} also resends rows Meta may have accepted (a recipient may get it twice).
    campaign_id = canonical_id(campaign_id)
    include = (_body() if app.current_event.body else {}).get("include_unconfirmed", False)
    if not isinstance(include, bool):
        raise RequestError("include_unconfirmed must be true or false")
    return _json(HTTPStatus.OK, control.retry_failed(get_conn(), campaign_id, send_queue_url(), include))
