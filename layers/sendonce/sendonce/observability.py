"""The one place where the logger and the tracer are built."""

from __future__ import annotations

from aws_lambda_powertools import Logger, Tracer

SERVICE = "sendonce"

logger = Logger(service=SERVICE)
tracer = Tracer(service=SERVICE)
