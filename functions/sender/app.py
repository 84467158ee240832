"""Sender Lambda: SQS batch in, partial batch response out. The work is in sendonce.sender."""

from __future__ import annotations

from typing import TYPE_CHECKING

from sendonce import sender
from sendonce.observability import logger, metrics, tracer

if TYPE_CHECKING:
    from aws_lambda_powertools.utilities.typing import LambdaContext


@logger.inject_lambda_context
@metrics.log_metrics(raise_on_empty_metrics=False)
@tracer.capture_lambda_handler(capture_response=False)
def lambda_handler(event: dict, context: LambdaContext) -> dict:
    # The idempotency gate reads the invocation's remaining time from `context` itself (sendonce.sender).
    return sender.process_batch(event, context)
