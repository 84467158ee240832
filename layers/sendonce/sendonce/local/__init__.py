"""Local stand-ins for AWS and Meta: embedded PostgreSQL, moto, a fake Graph API and an SQS event source."""

from __future__ import annotations


def reset_clients() -> None:
    """Forget every cached setting and client, so the next use reads the environment again."""
    from sendonce import api, db, s3, sqs, webhook, whatsapp
    from sendonce.config import get_settings
    from sendonce.idempotency import get_dynamodb_client, get_persistence_store

    get_settings.cache_clear()
    sqs.get_sqs_client.cache_clear()
    s3.get_s3_client.cache_clear()
    api.get_lambda_client.cache_clear()
    get_persistence_store.cache_clear()
    get_dynamodb_client.cache_clear()
    webhook._keys.clear()
    whatsapp.close_http_client()
    db.close_all()
