"""Campaign operations: create (rows in one transaction, then enqueue) and re-enqueue."""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, time, timedelta

import psycopg

from sendonce import cost, db, messaging_limit, phones, sqs, templates
from sendonce.contacts import Contact, ContactList, InvalidRow, no_valid_contacts
from sendonce.errors import (
    CampaignInputError,
    CampaignNotFoundError,
    CampaignStateError,
    ConfigError,
    DatabaseError,
    EnqueueError,
)
from sendonce.models import QueueMessage
from sendonce.observability import logger
from sendonce.repository import campaigns as repository
from sendonce.templates import TemplateCheck

# Matched whole (fullmatch): "$" alone also matches before a final newline. ASCII only: str.isdigit and \d also
# take other scripts' digits, which Meta would refuse (or PostgreSQL would store as some other id).
_LANGUAGE = re.compile(r"[a-z]{2,3}(_[A-Z]{2})?")
_TEMPLATE = re.compile(r"[a-z0-9_]{1,512}")
_PHONE_NUMBER_ID = re.compile(r"[0-9]{1,32}")
MAX_NAME_LENGTH = 200


@dataclass(frozen=True)
class NewCampaign:
    """What an operator gives to start a campaign."""

    name: str
    template_name: str
    language_code: str
    phone_number_id: str
    components: tuple[dict, ...] = ()
    id: str = field(default_factory=lambda: str(uuid.uuid4()))
    # Resume by itself when what paused it is over (its template approved again, a spam-limit pause ended).
    auto_resume: bool = False
    # Start then (reset_stuck starts it once the time has come); None: now.
    start_at: datetime | None = None
    # Quiet hours: send only from opens to closes (closes < opens: overnight), in each recipient's local time
    # (the number's zone; `time_zone` for numbers that span several zones).
    send_window: tuple[time, time] | None = None
    time_zone: str = "UTC"

    def validate(self) -> None:
        """Raise `CampaignInputError` naming the first bad field."""
        if not self.name.strip():
            raise CampaignInputError("--name must not be empty")
        if len(self.name) > MAX_NAME_LENGTH:
            raise CampaignInputError(f"--name must be at most {MAX_NAME_LENGTH} characters")
        if not is_storable_text(self.name):
            # PostgreSQL text holds neither NUL nor an unpaired surrogate: refused here, not by the INSERT.
            raise CampaignInputError("--name must be text without NUL characters or unpaired surrogates")
        if not _TEMPLATE.fullmatch(self.template_name):
            raise CampaignInputError(
                f"--template must be a template name (lowercase letters, digits, _), got {self.template_name!r}"
            )
        if not _LANGUAGE.fullmatch(self.language_code):
            raise CampaignInputError(f"--language must look like en or en_US, got {self.language_code!r}")
        if not _PHONE_NUMBER_ID.fullmatch(self.phone_number_id):
            raise CampaignInputError(f"--phone-number-id must be digits, got {self.phone_number_id!r}")
        try:
            uuid.UUID(self.id)
        except (ValueError, TypeError, AttributeError):
            raise CampaignInputError(f"campaign id must be a UUID, got {self.id!r}") from None
        if self.start_at is not None:
            check_start_at(self.start_at)
        if self.send_window is not None:
            check_time_zone(self.time_zone)
            if self.send_window[0] == self.send_window[1]:
                raise CampaignInputError("--send-window must open and close at different times")


MAX_SCHEDULE_AHEAD = timedelta(days=365)


def check_start_at(start_at: datetime, name: str = "--start-at") -> None:
    """Raise `CampaignInputError` unless `start_at` has a time zone and lies between now and a year ahead."""
    if start_at.tzinfo is None or start_at.utcoffset() is None:
        raise CampaignInputError(f"{name} needs a time zone, e.g. 2026-12-01T09:00:00+05:30 or ...Z")
    now = datetime.now(UTC)
    if start_at < now - timedelta(minutes=1):
        raise CampaignInputError(f"{name} {start_at.isoformat()} is in the past")
    if start_at > now + MAX_SCHEDULE_AHEAD:
        raise CampaignInputError(f"{name} must be within a year, got {start_at.isoformat()}")


def parse_send_window(value: str | None, name: str = "--send-window") -> tuple[time, time] | None:
    """A send window written HH:MM-HH:MM (seconds allowed) as (opens, closes); None for none."""
    if not value:
        return None
    opens, _, closes = value.partition("-")
    try:
        return time.fromisoformat(opens.strip()), time.fromisoformat(closes.strip())
    except ValueError:
        raise CampaignInputError(f"{name} must be HH:MM-HH:MM (local time of each recipient), "
                                 f"got {value[:40]!r}") from None


def check_time_zone(name: str, flag: str = "--time-zone") -> None:
    """Raise `CampaignInputError` unless `name` is an IANA time zone (Asia/Kolkata, America/New_York, UTC)."""
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise CampaignInputError(f"{flag} must be an IANA time zone such as Asia/Kolkata, got {name[:40]!r}") from None


def canonical_campaign_id(value: object) -> str:
    """The canonical spelling of a campaign id; uuid.UUID also takes braces, "urn:uuid:" and hex without hyphens
    (PostgreSQL not all of them), so every statement and message of one action uses the same id.

    Raises
    ------
    CampaignNotFoundError
        `value` is not a UUID: no campaign can have it.
    """
    if isinstance(value, str) and len(value) > 64:
        raise CampaignNotFoundError(f"no campaign {value[:64]!r}... (not a UUID)")
    try:
        return str(uuid.UUID(value.strip() if isinstance(value, str) else value))
    except (ValueError, AttributeError, TypeError):
        raise CampaignNotFoundError(f"no campaign {value!r} (not a UUID)") from None


def existing_campaign(conn: psycopg.Connection, campaign_id: object, which: str = "") -> str:
    """The canonical id of an existing campaign.

    Raises
    ------
    CampaignNotFoundError
        No campaign has that id (`which` says which campaign was meant, e.g. " (the audience's campaign)").
    """
    campaign_id = canonical_campaign_id(campaign_id)
    if repository.campaign_status(conn, campaign_id) is None:
        raise CampaignNotFoundError(f"no campaign {campaign_id}{which}")
    return campaign_id


def is_storable_text(text: str) -> bool:
    """Whether PostgreSQL can store `text`: no NUL character, and encodable as UTF-8 (no unpaired surrogate)."""
    if "\x00" in text:
        return False
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


@dataclass(frozen=True)
class CreatedCampaign:
    """The outcome of `create_campaign`, as `campaign create --json` prints it.

    `invalid` may be a sample of the rejected rows (`ContactList.max_invalid`); `invalid_count` then counts them
    all (None: `invalid` is all of them).
    """

    campaign_id: str
    recipients: int
    invalid: list[InvalidRow]
    duplicates: int
    enqueued: int
    invalid_count: int | None = None
    template_check: TemplateCheck | None = None
    messaging_limit: dict | None = None
    cost: dict | None = None

    def as_json(self, max_rows: int | None = None) -> dict:
        """The contract's `campaign create --json` object.

        Parameters
        ----------
        max_rows
            List at most this many invalid rows (the API: an answer must stay far below Lambda's 6 MB);
            `invalid_rows_truncated` says whether some were left out. None lists every row kept.
        """
        total = len(self.invalid) if self.invalid_count is None else self.invalid_count
        listed = self.invalid if max_rows is None else self.invalid[:max_rows]
        return {
            "campaign_id": self.campaign_id,
            "recipients": self.recipients,
            "invalid": total,
            "duplicates": self.duplicates,
            "enqueued": self.enqueued,
            "invalid_rows": [{"line": r.line, "value": r.value, "reason": r.reason} for r in listed],
            **({"invalid_rows_truncated": len(listed) < total} if max_rows is not None else {}),
            **({"template_check": self.template_check.as_json()} if self.template_check else {}),
            **({"messaging_limit": self.messaging_limit} if self.messaging_limit else {}),
            **({"cost": self.cost} if self.cost else {}),
        }


def create_campaign(
    conn: psycopg.Connection,
    campaign: NewCampaign,
    contacts: ContactList,
    queue_url: str,
    on_progress: Callable[[int], None] | None = None,
    allow_unchecked_template: bool = False,
) -> CreatedCampaign:
    """Check the template, create a campaign with one `ready` row per unique contact, then enqueue the rows that fit
    in the portfolio's messaging limit now (the others wait for their room).

    Parameters
    ----------
    conn
        An autocommit connection; the campaign and its rows are written in one transaction with COPY.
    campaign
        The campaign's fields, validated here.
    contacts
        Unique, valid contacts; invalid rows and duplicates are only reported.
    queue_url
        The SQS send queue.
    on_progress
        Called with the number of messages of each finished SendMessageBatch.
    allow_unchecked_template
        Create it even when the Graph API cannot be asked about the template (said in `template_check`).

    Raises
    ------
    CampaignInputError, ContactsError
        Before anything is written (TemplateError: the template cannot send it).
    GraphUnavailableError
        The template could not be checked (nothing was written).
    EnqueueError
        After the rows were written, when some could not be enqueued: they stay `ready`, and
        `sendonce campaign enqueue ID` finishes the job.
    """
    campaign.validate()
    if not contacts.contacts:
        raise no_valid_contacts(contacts, inline=True)
    check = templates.preflight(
        conn, campaign.template_name, campaign.language_code, contacts.param_count, campaign.components,
        allow_unchecked_template,
    )
    estimate = cost.estimate_contacts((c.phone for c in contacts.contacts), check.category)
    limit_note = messaging_limit.refresh_from_graph(conn, campaign.phone_number_id)
    before = messaging_limit.usage(conn, campaign.phone_number_id)
    # One spelling of the id everywhere (uuid.UUID also takes braces, "urn:uuid:" and bare hex; PostgreSQL not all).
    campaign_id = str(uuid.UUID(campaign.id))
    fields = {
        "id": campaign_id,
        "name": campaign.name.strip(),
        "template_name": campaign.template_name,
        "language_code": campaign.language_code,
        "phone_number_id": campaign.phone_number_id,
        "components": list(campaign.components),
        "total_recipients": len(contacts.contacts),
        "auto_resume": campaign.auto_resume,
        "start_at": campaign.start_at,
        "window_opens": campaign.send_window[0] if campaign.send_window else None,
        "window_closes": campaign.send_window[1] if campaign.send_window else None,
    }
    if campaign.send_window:
        rows_ = ((c.phone, c.params, phones.time_zone(c.phone, campaign.time_zone)) for c in contacts.contacts)
    else:
        rows_ = ((c.phone, c.params) for c in contacts.contacts)
    try:
        repository.insert_campaign(conn, fields, rows_)
    except DatabaseError as exc:
        if _refused_before_commit(exc):
            raise
        conn = _created_after_all(campaign_id, exc)
    logger.info(
        "campaign created",
        campaign_id=campaign_id,
        recipients=len(contacts.contacts),
        invalid=contacts.invalid_count,
        duplicates=contacts.duplicates,
    )
    if repository.campaign_status(conn, campaign_id) == "scheduled":
        # Nothing is enqueued before its time: reset_stuck starts it then (enqueue_campaign, the limit included).
        logger.info("campaign scheduled", campaign_id=campaign_id, start_at=campaign.start_at.isoformat())
        return CreatedCampaign(
            campaign_id, len(contacts.contacts), contacts.invalid, contacts.duplicates, 0, contacts.invalid_count,
            check, {**before, "message": f"scheduled: starts at {campaign.start_at.isoformat()}"}, estimate,
        )
    outside_window = repository.wait_for_window(conn, campaign_id)
    limit = messaging_limit.forecast(before, len(contacts.contacts) - outside_window,
                                     *messaging_limit.place_in_line(conn, campaign_id))
    if limit_note:
        limit["note"] = limit_note
    # A new campaign's rows have no other message: their enqueue_id stays NULL (any of theirs is current).
    enqueue_id = uuid.uuid4().hex
    messages = (QueueMessage(i, campaign_id, enqueue_id) for i in repository.ready_row_ids(conn, campaign_id))
    enqueued = _enqueue(campaign_id, queue_url, messages, on_progress)
    return CreatedCampaign(
        campaign_id, len(contacts.contacts), contacts.invalid, contacts.duplicates, enqueued, contacts.invalid_count,
        check, limit, estimate,
    )


def audience(conn: psycopg.Connection, source_id: str, name: str) -> ContactList:
    """Retargeting: the contacts of another campaign's audience (`repository.campaigns.AUDIENCES`), with the
    parameters each was sent with, for a new campaign (its create dedupes, suppresses and checks the template).

    Raises
    ------
    CampaignInputError
        `name` is not an audience.
    CampaignNotFoundError
        No campaign has that id.
    """
    if name not in repository.AUDIENCES:
        raise CampaignInputError(f"audience must be one of {', '.join(repository.AUDIENCES)}, got {name!r}")
    source_id = existing_campaign(conn, source_id, " (the audience's campaign)")
    return ContactList(contacts=[Contact(phone, tuple(params or ())) for phone, params in
                                 repository.audience_rows(conn, source_id, name)])


def start_scheduled(conn: psycopg.Connection, queue_url: str) -> list[str]:
    """Start every scheduled campaign whose time has come (running, its rows enqueued); their ids.

    A start whose enqueue fails is scheduled again, still due, and this run stops: the next one starts it.
    """
    started = []
    while (campaign_id := repository.start_due(conn)) is not None:
        try:
            enqueue_campaign(conn, campaign_id, queue_url)
        except (EnqueueError, ConfigError) as exc:
            logger.error("scheduled campaign not started; tried again at the next run", campaign_id=campaign_id,
                         error=str(exc)[:500])
            repository.unstart(conn, campaign_id)
            break
        logger.info("scheduled campaign started", campaign_id=campaign_id)
        started.append(campaign_id)
    return started


def replay_create(
    conn: psycopg.Connection, campaign: NewCampaign, contacts: ContactList | None = None
) -> CreatedCampaign | None:
    """What a create that already happened came to: the answer for a retried create with the same id.

    A client retries a create whose answer it lost (a timeout, a dropped connection) with the same id; the
    campaign must then be neither created nor enqueued again. The retry is the same request when the
    campaign's fields are the same and, when `contacts` is given, its rows are exactly those contacts.

    Parameters
    ----------
    conn
        A connection.
    campaign
        The retried request's fields; its id is canonical.
    contacts
        The retried request's contacts, or None when they are not known yet (an S3 list read later).

    Returns
    -------
    CreatedCampaign or None
        None when no campaign has that id; else the stored campaign's recipients, this request's invalid rows
        and duplicates, and `enqueued` 0 (its messages were sent by the first create).

    Raises
    ------
    CampaignStateError
        A campaign with that id exists and differs from the request: the id was reused for another campaign.
    """
    found = repository.campaign_fields(conn, campaign.id)
    if found is None:
        return None
    name, template_name, language_code, phone_number_id, components = found
    same = (name, template_name, language_code, phone_number_id, list(components or [])) == (
        campaign.name.strip(), campaign.template_name, campaign.language_code, campaign.phone_number_id,
        list(campaign.components),
    )
    recipients = None
    if same and contacts is not None:
        stored = repository.campaign_recipients(conn, campaign.id)
        recipients = len(stored)
        same = {(phone, tuple(params or ())) for phone, params in stored} == {
            (c.phone, c.params) for c in contacts.contacts
        } and recipients == len(contacts.contacts)
    if not same:
        raise CampaignStateError(
            f"campaign {campaign.id} already exists with other fields or contacts: use a new id (or "
            "Idempotency-Key) for a new campaign"
        )
    if recipients is None:
        recipients = repository.recipient_count(conn, campaign.id)
    logger.info("campaign create replayed", campaign_id=campaign.id)
    if contacts is None:
        return CreatedCampaign(campaign.id, recipients, [], 0, 0)
    return CreatedCampaign(
        campaign.id, recipients, contacts.invalid, contacts.duplicates, 0, contacts.invalid_count
    )


def enqueue_campaign(
    conn: psycopg.Connection,
    campaign_id: str,
    queue_url: str,
    on_progress: Callable[[int], None] | None = None,
    enqueue_id: str | None = None,
) -> int:
    """Put one SQS message on the queue for each of the campaign's `ready` rows; return how many.

    Harmless to repeat: the sender's claim lets only one message per row send it. Each run has its own
    enqueue id (or `enqueue_id`), so the idempotency layer lets a deliberate re-enqueue through, and it becomes
    the rows' current enqueue: an older message of theirs that runs out of receives no longer fails them.

    Raises
    ------
    CampaignNotFoundError
        No campaign has that id.
    EnqueueError
        Some messages could not be sent; their rows stay `ready` and the message says how to finish.
    """
    campaign_id = existing_campaign(conn, campaign_id)
    enqueue_id = enqueue_id or uuid.uuid4().hex
    repository.wait_for_window(conn, campaign_id)  # rows outside their send window wait for it, without a message
    messaging_limit.place_in_line(conn, campaign_id)  # rows beyond the room left wait, without a message
    messages = (QueueMessage(i, campaign_id, enqueue_id) for i in repository.mark_ready_rows(conn, campaign_id, enqueue_id))
    return _enqueue(campaign_id, queue_url, messages, on_progress)


def _enqueue(
    campaign_id: str, queue_url: str, messages: Iterable[QueueMessage], on_progress: Callable[[int], None] | None
) -> int:
    try:
        sent = sqs.send_messages(queue_url, messages, on_progress)
    except EnqueueError as exc:
        raise EnqueueError(
            f"{exc}. The rows not enqueued stay ready: run `sendonce campaign enqueue {campaign_id}` "
            "to finish (harmless to repeat)."
        ) from exc
    logger.info("campaign enqueued", campaign_id=campaign_id, enqueued=sent)
    return sent


def _refused_before_commit(exc: DatabaseError) -> bool:
    """Whether PostgreSQL refused a statement as written (SQLSTATE class 42: a table missing because the database
    was never migrated, no privilege): that is decided before anything runs, so the create surely did not commit."""
    sqlstate = getattr(exc.__cause__, "sqlstate", None) or ""
    return sqlstate.startswith("42")


def _created_after_all(campaign_id: str, exc: DatabaseError) -> psycopg.Connection:
    """After a failed create, whether it committed anyway (its reply lost): a fresh connection, or raise.

    Without this, the operator's natural retry would create a second campaign for the same recipients.
    """
    try:
        conn = db.get_conn()
        exists = repository.campaign_status(conn, campaign_id) is not None
    except DatabaseError:
        raise DatabaseError(
            f"{exc}. Campaign {campaign_id} may or may not have been created: check with `sendonce campaign status "
            f"{campaign_id}`; if it exists run `sendonce campaign enqueue {campaign_id}`, else create it again "
            f"with --id {campaign_id}."
        ) from exc
    if not exists:
        raise DatabaseError(f"{exc}. Nothing was created: run the same command again.") from exc
    logger.warning("campaign was created although the reply was lost", campaign_id=campaign_id)
    return conn
