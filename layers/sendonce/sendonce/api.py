"""The campaigns HTTP API (API Gateway HTTP API, payload v2): the same operations as the CLI.

Routes: POST /campaigns, GET /campaigns, GET /campaigns/{id}, POST /campaigns/{id}/pause|resume|cancel|retry-failed.
Errors are JSON `{"error": {"code", "message"}}` with the right 4xx; unknown ids are 404.

A contact list inline in the body is created at once (201). A list in S3 (`contacts_s3`) may hold a million
rows, longer than API Gateway waits (30 s): its header is checked, then the creation runs in an asynchronous
invocation of this same function, and the answer is 202 with the campaign id to poll.
"""

from __future__ import annotations

import json
import os
import uuid
from functools import lru_cache
from http import HTTPStatus

import boto3
from aws_lambda_powertools.event_handler import APIGatewayHttpResolver, Response, content_types
from aws_lambda_powertools.event_handler.exceptions import NotFoundError

from sendonce import campaigns, contacts, control, s3
from sendonce.repository.campaigns import campaign_status as stored_status
from sendonce.config import require, send_queue_url
from sendonce.db import get_conn
from sendonce.errors import (
    CampaignInputError,
    CampaignNotFoundError,
    CampaignStateError,
    ContactsError,
    DatabaseError,
    EnqueueError,
)
from sendonce.observability import logger

# Inline lists beyond this belong in S3 (API Gateway itself stops at 10 MB, a synchronous Lambda at 6 MB).
MAX_BODY_BYTES = 5 * 1024 * 1024
JOB_KEY = "sendonce_job"

app = APIGatewayHttpResolver()


class RequestError(CampaignInputError):
    """The request body is not what the route takes."""


class PayloadTooLargeError(CampaignInputError):
    """The request body is over MAX_BODY_BYTES."""


def _error(status: HTTPStatus, code: str, message: str) -> Response:
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


@app.exception_handler([DatabaseError, EnqueueError])
def _unavailable(exc: Exception) -> Response:
    logger.error("request failed", error=str(exc))
    return _error(HTTPStatus.SERVICE_UNAVAILABLE, "unavailable", str(exc))


def _body() -> dict:
    raw = app.current_event.decoded_body or ""
    if len(raw.encode()) > MAX_BODY_BYTES:
        raise PayloadTooLargeError(
            f"body is over {MAX_BODY_BYTES // (1024 * 1024)} MB: upload the contacts CSV to S3 and pass contacts_s3"
        )
    try:
        body = json.loads(raw)
    except ValueError as exc:
        raise RequestError(f"body is not valid JSON: {exc}") from None
    if not isinstance(body, dict):
        raise RequestError("body must be a JSON object")
    return body


def _new_campaign(body: dict) -> campaigns.NewCampaign:
    fields = {"name": "name", "template": "template_name", "language": "language_code", "phone_number_id": "phone_number_id"}
    missing = [key for key in fields if not isinstance(body.get(key), str)]
    if missing:
        raise RequestError(f"missing or not a string: {', '.join(missing)}")
    components = body.get("components", [])
    if not isinstance(components, list) or not all(isinstance(c, dict) for c in components):
        raise RequestError("components must be a list of objects")
    new = campaigns.NewCampaign(
        **{field: body[key] for key, field in fields.items()},
        components=tuple(components),
        id=str(body.get("id") or uuid.uuid4()),
    )
    new.validate()
    return new


@app.post("/campaigns")
def create_campaign() -> Response:
    body = _body()
    new = _new_campaign(body)
    region = body.get("default_country")
    if region is not None and not isinstance(region, str):
        raise RequestError("default_country must be a two-letter ISO country code")
    # Checked now: for contacts_s3 the file is read later, by the asynchronous job, which nobody watches.
    region = contacts.check_region(region, "default_country")
    if ("contacts" in body) == ("contacts_s3" in body):
        raise RequestError("give exactly one of contacts (inline list) or contacts_s3 ({bucket, key})")
    if "contacts_s3" in body:
        location = _s3_location(body["contacts_s3"])
        if stored_status(get_conn(), new.id) is not None:
            raise CampaignStateError(f"campaign {new.id} already exists")
        # Fail fast on a file that cannot be a contact list; the rows are read by the asynchronous job.
        contacts.check_header(s3.csv_lines(**location), source=f"s3://{location['bucket']}/{location['key']}")
        _start_job({"campaign": _job_campaign(new), "contacts_s3": location, "default_country": region})
        return _json(HTTPStatus.ACCEPTED, {"campaign_id": new.id, "status": "creating", "location": f"/campaigns/{new.id}"})
    contact_list = contacts.from_records(body["contacts"], default_region=region)
    created = campaigns.create_campaign(get_conn(), new, contact_list, send_queue_url())
    return _json(HTTPStatus.CREATED, created.as_json())


def _s3_location(value: object) -> dict:
    if not isinstance(value, dict) or not isinstance(value.get("bucket"), str) or not isinstance(value.get("key"), str):
        raise RequestError("contacts_s3 must be {\"bucket\": ..., \"key\": ...}")
    allowed = os.environ.get("CONTACTS_BUCKET")
    if value["bucket"] != allowed:
        raise RequestError(f"contacts_s3.bucket must be the stack's contacts bucket ({allowed or 'not configured'})")
    return {"bucket": value["bucket"], "key": value["key"]}


def _job_campaign(new: campaigns.NewCampaign) -> dict:
    return {
        "id": new.id,
        "name": new.name,
        "template_name": new.template_name,
        "language_code": new.language_code,
        "phone_number_id": new.phone_number_id,
        "components": list(new.components),
    }


@lru_cache(maxsize=1)
def get_lambda_client():
    """The Lambda client (endpoint from AWS_ENDPOINT_URL_LAMBDA / AWS_ENDPOINT_URL when set)."""
    return boto3.client("lambda")


def _start_job(job: dict) -> None:
    """Invoke this function asynchronously with the job (Lambda retries it twice on failure)."""
    get_lambda_client().invoke(
        FunctionName=require(os.environ.get("AWS_LAMBDA_FUNCTION_NAME"), "AWS_LAMBDA_FUNCTION_NAME"),
        InvocationType="Event",
        Payload=json.dumps({JOB_KEY: "create_campaign", **job}).encode(),
    )
    logger.info("campaign creation started", campaign_id=job["campaign"]["id"])


def run_job(event: dict) -> dict:
    """Run an asynchronous creation started by POST /campaigns with contacts_s3."""
    job_campaign = event["campaign"]
    new = campaigns.NewCampaign(**{**job_campaign, "components": tuple(job_campaign["components"])})
    location = event["contacts_s3"]
    contact_list = contacts.parse_csv(
        s3.csv_lines(**location), source=f"s3://{location['bucket']}/{location['key']}", default_region=event.get("default_country")
    )
    try:
        created = campaigns.create_campaign(get_conn(), new, contact_list, send_queue_url())
    except CampaignStateError:
        # A retried job after the campaign was written: finish the enqueue, which is harmless to repeat.
        return {"campaign_id": new.id, "enqueued": campaigns.enqueue_campaign(get_conn(), new.id, send_queue_url())}
    return created.as_json()


@app.get("/campaigns")
def list_campaigns() -> Response:
    return _json(HTTPStatus.OK, {"campaigns": control.list_campaigns(get_conn())})


@app.get("/campaigns/<campaign_id>")
def campaign_status(campaign_id: str) -> Response:
    return _json(HTTPStatus.OK, control.status(get_conn(), campaign_id))


@app.post("/campaigns/<campaign_id>/pause")
def pause(campaign_id: str) -> Response:
    return _json(HTTPStatus.OK, control.pause(get_conn(), campaign_id))


@app.post("/campaigns/<campaign_id>/resume")
def resume(campaign_id: str) -> Response:
    return _json(HTTPStatus.OK, control.resume(get_conn(), campaign_id, send_queue_url()))


@app.post("/campaigns/<campaign_id>/cancel")
def cancel(campaign_id: str) -> Response:
    return _json(HTTPStatus.OK, control.cancel(get_conn(), campaign_id))


@app.post("/campaigns/<campaign_id>/retry-failed")
def retry_failed(campaign_id: str) -> Response:
    # {"include_unconfirmed": true} also resends rows Meta may have accepted (a recipient may get it twice).
    include = (_body() if app.current_event.body else {}).get("include_unconfirmed", False)
    if not isinstance(include, bool):
        raise RequestError("include_unconfirmed must be true or false")
    return _json(HTTPStatus.OK, control.retry_failed(get_conn(), campaign_id, send_queue_url(), include))
