"""The one place where the logger, the tracer and the metrics are built, and the helpers that keep logs clean.

Metrics are CloudWatch embedded metric format (EMF) lines that `@metrics.log_metrics` prints to stdout at the end
of each invocation. One namespace ("sendonce") and the service dimension only: every extra dimension value is a
separate (billed) metric, so nothing per campaign or per number.
"""

from __future__ import annotations

import re
import threading
import warnings

from aws_lambda_powertools import Logger, Metrics, Tracer
from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.metrics.functions import is_metrics_disabled

SERVICE = "sendonce"
NAMESPACE = "sendonce"

logger = Logger(service=SERVICE)
tracer = Tracer(service=SERVICE)
metrics = Metrics(namespace=NAMESPACE, service=SERVICE)

# An invocation that added no metric (a GET on the webhook, an empty reset_stuck run) is normal: the flush must
# neither raise nor warn on every such invocation.
warnings.filterwarnings("ignore", message="No application metrics to publish")

# Powertools' metric set is a shared dict and the sender adds latencies from its send threads.
_lock = threading.Lock()

_DIGIT_RUN = re.compile(r"\d{7,}")


def count(name: str, value: float = 1) -> None:
    """Add `value` to the count metric `name` of this invocation; zero is not added.

    Parameters
    ----------
    name
        The metric name ("Sent", "FailedPermanent", ...).
    value
        How many: callers add a batch's total once, not once per row.
    """
    if value:
        _add(name, MetricUnit.Count, value)


def gauge(name: str, value: float) -> None:
    """Add the count metric `name` of this invocation even when it is zero: a level an alarm watches."""
    _add(name, MetricUnit.Count, value)


def milliseconds(name: str, value: float) -> None:
    """Add one latency sample, in milliseconds, to the metric `name` of this invocation.

    Parameters
    ----------
    name
        The metric name ("ClaimLatency", "GraphLatency", ...).
    value
        The duration in milliseconds.
    """
    _add(name, MetricUnit.Milliseconds, value)


def _add(name: str, unit: MetricUnit, value: float) -> None:
    # Disabled (the local stack, the CLI): nothing is added at all. Powertools does not clear a disabled
    # metric set on flush, and prints it anyway when one metric reaches 100 values, which would put EMF lines
    # on the stdout of `sendonce local run --json` and grow without bound in a long-lived local process.
    if is_metrics_disabled():
        return
    with _lock:
        metrics.add_metric(name=name, unit=unit, value=value)


def scrub(text: object) -> str:
    """Mask every run of 7 or more digits in a message (phone numbers in error texts), keeping its last 4.

    Parameters
    ----------
    text
        An error message or any value to log; converted with str().

    Returns
    -------
    str
        The text with "919741771659" written as "********1659".
    """
    return _DIGIT_RUN.sub(lambda m: "*" * (len(m.group()) - 4) + m.group()[-4:], str(text))
