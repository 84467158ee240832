"""Campaign operations: create (rows in one transaction, then enqueue) and re-enqueue."""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import psycopg

from sendonce import db, sqs
from sendonce.contacts import ContactList, InvalidRow, no_valid_contacts
from sendonce.errors import CampaignInputError, CampaignNotFoundError, DatabaseError, EnqueueError
from sendonce.models import QueueMessage
from sendonce.observability import logger
from sendonce.repository import campaigns as repository

_LANGUAGE = re.compile(r"^[a-z]{2,3}(_[A-Z]{2})?$")
_TEMPLATE = re.compile(r"^[a-z0-9_]{1,512}$")


@dataclass(frozen=True)
class NewCampaign:
    """What an operator gives to start a campaign."""

    name: str
    template_name: str
    language_code: str
    phone_number_id: str
    components: tuple[dict, ...] = ()
    id: str = field(default_factory=lambda: str(uuid.uuid4()))

    def validate(self) -> None:
        """Raise `CampaignInputError` naming the first bad field."""
        if not self.name.strip():
            raise CampaignInputError("--name must not be empty")
        if not _TEMPLATE.match(self.template_name):
            raise CampaignInputError(
                f"--template must be a template name (lowercase letters, digits, _), got {self.template_name!r}"
            )
        if not _LANGUAGE.match(self.language_code):
            raise CampaignInputError(f"--language must look like en or en_US, got {self.language_code!r}")
        if not self.phone_number_id.isdigit():
            raise CampaignInputError(f"--phone-number-id must be digits, got {self.phone_number_id!r}")
        try:
            uuid.UUID(self.id)
        except ValueError:
            raise CampaignInputError(f"campaign id must be a UUID, got {self.id!r}") from None


@dataclass(frozen=True)
class CreatedCampaign:
    """The outcome of `create_campaign`, as `campaign create --json` prints it."""

    campaign_id: str
    recipients: int
    invalid: list[InvalidRow]
    duplicates: int
    enqueued: int

    def as_json(self) -> dict:
        """The contract's `campaign create --json` object."""
        return {
            "campaign_id": self.campaign_id,
            "recipients": self.recipients,
            "invalid": len(self.invalid),
            "duplicates": self.duplicates,
            "enqueued": self.enqueued,
            "invalid_rows": [{"line": r.line, "value": r.value, "reason": r.reason} for r in self.invalid],
        }


def create_campaign(
    conn: psycopg.Connection,
    campaign: NewCampaign,
    contacts: ContactList,
    queue_url: str,
    on_progress: Callable[[int], None] | None = None,
) -> CreatedCampaign:
    """Create a campaign with one `ready` row per unique contact, then enqueue every row.

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

    Raises
    ------
    CampaignInputError, ContactsError
        Before anything is written.
    EnqueueError
        After the rows were written, when some could not be enqueued: they stay `ready`, and
        `sendonce campaign enqueue ID` finishes the job.
    """
    campaign.validate()
    if not contacts.contacts:
        raise no_valid_contacts(contacts, inline=True)
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
    }
    try:
        repository.insert_campaign(conn, fields, ((c.phone, c.params) for c in contacts.contacts))
    except DatabaseError as exc:
        if _refused_before_commit(exc):
            raise
        conn = _created_after_all(campaign_id, exc)
    logger.info(
        "campaign created",
        campaign_id=campaign_id,
        recipients=len(contacts.contacts),
        invalid=len(contacts.invalid),
        duplicates=contacts.duplicates,
    )
    # A new campaign's rows have no other message: their enqueue_id stays NULL (any of theirs is current).
    enqueue_id = uuid.uuid4().hex
    messages = (QueueMessage(i, campaign_id, enqueue_id) for i in repository.ready_row_ids(conn, campaign_id))
    enqueued = _enqueue(campaign_id, queue_url, messages, on_progress)
    return CreatedCampaign(campaign_id, len(contacts.contacts), contacts.invalid, contacts.duplicates, enqueued)


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
    try:
        campaign_id = str(uuid.UUID(campaign_id))
    except (ValueError, AttributeError, TypeError):
        raise CampaignNotFoundError(f"no campaign {campaign_id!r} (not a UUID)") from None
    if repository.campaign_status(conn, campaign_id) is None:
        raise CampaignNotFoundError(f"no campaign {campaign_id}")
    enqueue_id = enqueue_id or uuid.uuid4().hex
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
