"""recompute_counters Lambda (EventBridge Scheduler): campaigns.total_* from the one definition."""

from __future__ import annotations

from typing import TYPE_CHECKING

from sendonce import control
from sendonce.db import get_conn
from sendonce.observability import logger, metrics, tracer

if TYPE_CHECKING:
    from aws_lambda_powertools.utilities.typing import LambdaContext


@logger.inject_lambda_context
@metrics.log_metrics(raise_on_empty_metrics=False)
@tracer.capture_lambda_handler(capture_response=False)
def lambda_handler(event: dict, context: LambdaContext) -> dict:
    campaigns = control.recompute(get_conn())
    completed = [campaign_id for campaign_id, status, _ in campaigns if status == "completed"]
    logger.info("counters recomputed", campaigns=len(campaigns), completed=len(completed))
    return {"campaigns": len(campaigns), "completed": completed}
