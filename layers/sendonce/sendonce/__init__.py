"""sendonce: exactly-once WhatsApp Cloud API template campaigns on AWS Lambda, SQS and PostgreSQL."""

__version__ = "0.1.0"
