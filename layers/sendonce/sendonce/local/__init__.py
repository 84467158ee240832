"""Local stand-ins for AWS and Meta: embedded PostgreSQL, moto, a fake Graph API and an SQS event source."""
