"""reset_stuck Lambda (EventBridge Scheduler): stuck `processing` rows follow AMBIGUOUS_POLICY; campaigns whose
pause is over resume (auto_resume); rows whose wait is over are enqueued."""

from __future__ import annotations

from typing import TYPE_CHECKING

from sendonce import recovery
from sendonce.db import get_conn
from sendonce.observability import logger, metrics, tracer

if TYPE_CHECKING:
    from aws_lambda_powertools.utilities.typing import LambdaContext


@logger.inject_lambda_context
@metrics.log_metrics(raise_on_empty_metrics=False)
@tracer.capture_lambda_handler(capture_response=False)
def lambda_handler(event: dict, context: LambdaContext) -> dict:
    conn = get_conn()
    return {**recovery.reset_stuck(conn), **recovery.unblock(conn)}
