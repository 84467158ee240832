"""Every error sendonce raises on purpose, split by what the caller should do about it."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


class SendonceError(Exception):
    """Base class of sendonce's errors."""


class ConfigError(SendonceError):
    """A setting is missing or invalid."""


class DatabaseError(SendonceError):
    """PostgreSQL could not be reached or refused a statement."""


class MigrationError(SendonceError):
    """A migration file is missing, misnamed or failed to apply."""


class ContactsError(SendonceError):
    """The contacts file cannot be used at all (missing, empty, no `phone` column, no valid row).

    When no row was valid, `invalid_rows` holds them (`contacts.InvalidRow`), so that the caller can list them.
    """

    def __init__(self, message: str = "", invalid_rows: Sequence[Any] = ()) -> None:
        super().__init__(message)
        self.invalid_rows = list(invalid_rows)


class CampaignInputError(SendonceError):
    """A campaign field is missing or invalid."""


class TemplateError(CampaignInputError):
    """The template cannot send this campaign: missing in that language, not approved, other parameters."""


class GraphUnavailableError(SendonceError):
    """The Graph API could not be asked (unreachable, timed out, 5xx, 429): nothing was decided."""


class GraphRefusedError(SendonceError):
    """The Graph API refused a read (4xx with an error code: a wrong id, a token without the permission)."""


class CampaignNotFoundError(SendonceError):
    """No campaign has that id."""


class CampaignStateError(SendonceError):
    """The campaign is not in a state that allows this action (cancel a completed campaign, say)."""


class EnqueueError(SendonceError):
    """Some rows could not be put on the send queue; they stay `ready` and `campaign enqueue` finishes the job."""


class MalformedMessageError(SendonceError):
    """An SQS body is not the JSON object {"queue_id": ..., "campaign_id": ...}."""


class UnknownRowError(SendonceError):
    """An SQS message names a send_queue row that does not exist in that campaign."""


class TransientSendError(SendonceError):
    """The send did not reach Meta or Meta asked us to retry later; the row is `ready` again."""


class BatchAbortedError(SendonceError):
    """The batch could not be claimed; its rows were released and its records are retried."""


class DeliveryInFlightError(SendonceError):
    """Another delivery of this message is being handled right now; this one is retried later."""


class JournalError(SendonceError):
    """The batch journal (DynamoDB) could not be read or written."""
