"""The S3 adapter: stream a contacts CSV without holding the file in memory."""

from __future__ import annotations

import codecs
from collections.abc import Iterator
from functools import lru_cache

import boto3
from botocore.exceptions import BotoCoreError, ClientError

from sendonce.errors import ContactsError


@lru_cache(maxsize=1)
def get_s3_client():
    """The S3 client (endpoint from AWS_ENDPOINT_URL_S3 / AWS_ENDPOINT_URL when set)."""
    return boto3.client("s3")


def csv_lines(bucket: str, key: str) -> Iterator[str]:
    """The lines of s3://bucket/key as text, streamed; raises `ContactsError` if it cannot be read."""
    try:
        body = get_s3_client().get_object(Bucket=bucket, Key=key)["Body"]
    except ClientError as exc:
        code = exc.response.get("Error", {}).get("Code", "")
        raise ContactsError(f"cannot read s3://{bucket}/{key}: {code or exc}") from exc
    except BotoCoreError as exc:
        raise ContactsError(f"cannot read s3://{bucket}/{key}: {exc}") from exc
    yield from codecs.getreader("utf-8-sig")(body)
