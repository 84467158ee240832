"""Campaigns API Lambda: HTTP API routes, plus the asynchronous creation jobs it starts. Work is in sendonce.api."""

from __future__ import annotations

from typing import TYPE_CHECKING

from sendonce import api
from sendonce.observability import logger, metrics, tracer

if TYPE_CHECKING:
    from aws_lambda_powertools.utilities.typing import LambdaContext


@logger.inject_lambda_context
@metrics.log_metrics(raise_on_empty_metrics=False)
@tracer.capture_lambda_handler(capture_response=False)
def lambda_handler(event: dict, context: LambdaContext) -> dict:
    if api.JOB_KEY in event:
        return api.run_job(event)
    return api.app.resolve(event, context)
