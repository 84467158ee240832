"""Powertools idempotency on DynamoDB for the sender's records."""

from __future__ import annotations

from functools import lru_cache

from aws_lambda_powertools.utilities.idempotency import DynamoDBPersistenceLayer, IdempotencyConfig

from sendonce.config import get_settings, require

# The key is the row plus the enqueue run: a duplicate delivery of one enqueue is stopped, while a deliberate
# re-enqueue (reset_stuck, resume, retry-failed) carries a new enqueue_id and goes through. A key of queue_id
# alone would replay a stored "skipped" result forever.
IDEMPOTENCY_CONFIG = IdempotencyConfig(
    event_key_jmespath="[queue_id, campaign_id, enqueue_id]",
    raise_on_no_idempotency_key=True,
    expires_after_seconds=6 * 3600,
)


@lru_cache(maxsize=1)
def get_persistence_store() -> DynamoDBPersistenceLayer:
    """The DynamoDB table named by IDEMPOTENCY_TABLE (pk `id`, TTL attribute `expiration`)."""
    return DynamoDBPersistenceLayer(table_name=require(get_settings().idempotency_table, "IDEMPOTENCY_TABLE"))
