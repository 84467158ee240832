"""The sender's idempotency gate: Powertools' persistence layer on DynamoDB, used phase by phase.

A record enters the gate before its row is claimed and leaves it once its outcome is known: completed with a
result that a later duplicate delivery gets back, or released so a redelivery runs again. The key is the row
plus the enqueue run: a duplicate delivery of one enqueue is stopped, while a deliberate re-enqueue
(reset_stuck, resume, retry-failed, a deferral) carries a new enqueue_id and goes through. A key of queue_id
alone would replay a stored "skipped" result forever.
"""

from __future__ import annotations

from functools import lru_cache

import boto3
from aws_lambda_powertools.utilities.idempotency import DynamoDBPersistenceLayer, IdempotencyConfig
from aws_lambda_powertools.utilities.idempotency.exceptions import (
    IdempotencyItemAlreadyExistsError,
    IdempotencyItemNotFoundError,
)
from aws_lambda_powertools.utilities.idempotency.persistence.base import BasePersistenceLayer
from botocore.config import Config

from sendonce.config import get_settings, require
from sendonce.errors import DeliveryInFlightError
from sendonce.models import QueueMessage

IDEMPOTENCY_CONFIG = IdempotencyConfig(
    event_key_jmespath="[queue_id, campaign_id, enqueue_id]",
    raise_on_no_idempotency_key=True,
    expires_after_seconds=6 * 3600,
)
# Fixed, so every function and every test names the same records, whatever the Lambda is called.
KEY_PREFIX = "sendonce.sender"


@lru_cache(maxsize=1)
def get_dynamodb_client():
    """The DynamoDB client of the idempotency table (endpoint from AWS_ENDPOINT_URL_DYNAMODB when set).

    Timeouts are short: a sender must know within its claim's window whether a write happened.
    """
    return boto3.client(
        "dynamodb", config=Config(connect_timeout=2, read_timeout=3, retries={"max_attempts": 3, "mode": "standard"})
    )


def table_name() -> str:
    """IDEMPOTENCY_TABLE: idempotency records and the batch journal (pk `id`, TTL attribute `expiration`)."""
    return require(get_settings().idempotency_table, "IDEMPOTENCY_TABLE")


@lru_cache(maxsize=1)
def get_persistence_store() -> BasePersistenceLayer:
    """Powertools' DynamoDB persistence layer on IDEMPOTENCY_TABLE (or the store `use_persistence_store` gave),
    configured with IDEMPOTENCY_CONFIG."""
    store = _other_store or DynamoDBPersistenceLayer(table_name=table_name(), boto3_client=get_dynamodb_client())
    store.configure(IDEMPOTENCY_CONFIG, key_prefix=KEY_PREFIX)
    return store


_other_store: BasePersistenceLayer | None = None


def use_persistence_store(store: BasePersistenceLayer | None) -> None:
    """Keep the records in `store` instead of DynamoDB (`sendonce bench --idempotency-store memory`); None: back to
    DynamoDB. Local tools only: a deployed sender always uses IDEMPOTENCY_TABLE."""
    global _other_store
    _other_store = store
    get_persistence_store.cache_clear()


def enter(message: QueueMessage, remaining_ms: int) -> dict | None:
    """Mark a delivery in progress until the invocation's end; None to go on, or an earlier delivery's result.

    Raises
    ------
    DeliveryInFlightError
        Another delivery of the same message is in progress: this record is retried later.
    """
    data = message.idempotency_data()
    store = get_persistence_store()
    try:
        store.save_inprogress(data=data, remaining_time_in_millis=remaining_ms)
        return None
    except IdempotencyItemAlreadyExistsError as exc:
        try:
            record = exc.old_data_record or store.get_record(data=data)
        except IdempotencyItemNotFoundError:
            record = None
        if record is not None and record.status == "COMPLETED":
            return record.response_json_as_dict()
    raise DeliveryInFlightError(f"another delivery of row {message.queue_id} (enqueue {message.enqueue_id}) is in flight")


def complete(message: QueueMessage, result: dict) -> None:
    """Store the delivery's result: a later duplicate gets it back and sends nothing."""
    get_persistence_store().save_success(data=message.idempotency_data(), result=result)


def release(message: QueueMessage, reason: object) -> None:
    """Forget the delivery, so that its redelivery (or a delayed copy) runs again."""
    get_persistence_store().delete_record(data=message.idempotency_data(), exception=reason)
