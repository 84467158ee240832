"""The S3 adapter: stream a contacts CSV without holding the file in memory, within size bounds.

Errors never quote the object's content: any caller of the API may name any key of the contacts bucket, so an
error that echoed a line would let it read the first line of files it was never given.
"""

from __future__ import annotations

import codecs
from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache

import boto3
from botocore.exceptions import BotoCoreError, ClientError

from sendonce.errors import ContactsError

# A million-contact CSV with a few parameters is about 40 MB; more is not a contact list this stack can create
# within one Lambda's 15 minutes anyway.
MAX_OBJECT_BYTES = 50 * 1024 * 1024
# One CSV line: a phone and parameters of at most 1,024 characters each. A file without newlines (a binary, or
# "\r"-only line ends) would otherwise be buffered whole: 17 MB took 698 MB of memory.
MAX_LINE_BYTES = 256 * 1024
# S3 keys are at most 1,024 bytes of UTF-8.
MAX_KEY_BYTES = 1024
_CHUNK_BYTES = 64 * 1024


@lru_cache(maxsize=1)
def get_s3_client():
    """The S3 client (endpoint from AWS_ENDPOINT_URL_S3 / AWS_ENDPOINT_URL when set)."""
    return boto3.client("s3")


def check_key(key: str) -> str:
    """Return `key` if it can name an S3 object (1 to 1,024 bytes of UTF-8, no NUL), else raise `ContactsError`."""
    try:
        size = len(key.encode("utf-8"))
    except UnicodeEncodeError:
        raise ContactsError("contacts_s3.key is not valid Unicode text") from None
    if not 1 <= size <= MAX_KEY_BYTES or "\x00" in key:
        raise ContactsError(f"contacts_s3.key must be 1 to {MAX_KEY_BYTES} bytes without NUL")
    return key


def csv_lines(bucket: str, key: str) -> Iterator[str]:
    """The lines of s3://bucket/key as text (line ends kept), streamed and bounded.

    Parameters
    ----------
    bucket, key
        The object; its size (HeadObject) must be at most `MAX_OBJECT_BYTES`.

    Raises
    ------
    ContactsError
        The object cannot be read, is too large, has a line over `MAX_LINE_BYTES`, or is not UTF-8 text. The
        message names the line number, never its content.
    """
    source = f"s3://{bucket}/{check_key(key)}"
    client = get_s3_client()
    try:
        size = client.head_object(Bucket=bucket, Key=key)["ContentLength"]
        if size > MAX_OBJECT_BYTES:
            raise ContactsError(
                f"{source} is {size / 1024 / 1024:.1f} MB, over the {MAX_OBJECT_BYTES // (1024 * 1024)} MB a contact "
                "list may have: split it into several campaigns"
            )
        body = client.get_object(Bucket=bucket, Key=key)["Body"]
    except ClientError as exc:
        code = exc.response.get("Error", {}).get("Code", "")
        raise ContactsError(f"cannot read {source}: {code or 'error'}") from exc
    except BotoCoreError as exc:
        raise ContactsError(f"cannot read {source}: {type(exc).__name__}") from exc
    try:
        yield from _lines(body, source)
    finally:
        body.close()


def _lines(body, source: str) -> Iterator[str]:
    """Split a byte stream into decoded lines; '\\n' never occurs inside a UTF-8 sequence, so each line decodes
    on its own, and a bad byte is reported by its line number."""
    pending = b""
    line = 0
    total = 0
    while True:
        try:
            chunk = body.read(_CHUNK_BYTES)
        except (BotoCoreError, OSError) as exc:
            raise ContactsError(f"cannot read {source}: {type(exc).__name__}") from exc
        total += len(chunk)
        if total > MAX_OBJECT_BYTES:
            # The object was replaced by a larger one after HeadObject.
            raise ContactsError(f"{source} is over {MAX_OBJECT_BYTES // (1024 * 1024)} MB")
        *complete, pending = (pending + chunk).split(b"\n")
        for raw in complete:
            line += 1
            yield _decode(raw + b"\n", line, source)
        if not chunk:
            if pending:
                line += 1
                yield _decode(pending, line, source)
            return
        if len(pending) > MAX_LINE_BYTES:
            raise ContactsError(
                f"{source} line {line + 1} is over {MAX_LINE_BYTES // 1024} KB: is it a CSV file with one contact "
                "per line (line ends '\\n' or '\\r\\n')?"
            )


def _decode(raw: bytes, line: int, source: str) -> str:
    if len(raw) > MAX_LINE_BYTES + 1:
        raise ContactsError(f"{source} line {line} is over {MAX_LINE_BYTES // 1024} KB")
    if line == 1 and raw.startswith(codecs.BOM_UTF8):
        raw = raw[len(codecs.BOM_UTF8):]
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ContactsError(f"{source} is not UTF-8 text (line {line}): save it as CSV UTF-8") from None


# A multipart upload's parts are 5 MB at least (but the last); 8 MB parts hold 80 GB in S3's 10,000 parts.
PART_BYTES = 8 * 1024 * 1024


class _PartWriter:
    """A text stream uploaded to S3 in parts as it is written: memory holds one part, whatever the size."""

    def __init__(self, bucket: str, key: str, content_type: str) -> None:
        self.bucket, self.key, self.content_type = bucket, key, content_type
        self.buffer = bytearray()
        self.parts: list[dict] = []
        self.upload_id: str | None = None

    def write(self, text: str) -> int:
        self.buffer += text.encode("utf-8")
        if len(self.buffer) >= PART_BYTES:
            self.upload_part()
        return len(text)

    def upload_part(self) -> None:
        client = get_s3_client()
        if self.upload_id is None:
            self.upload_id = client.create_multipart_upload(
                Bucket=self.bucket, Key=self.key, ContentType=self.content_type
            )["UploadId"]
        number = len(self.parts) + 1
        answer = client.upload_part(Bucket=self.bucket, Key=self.key, UploadId=self.upload_id, PartNumber=number,
                                    Body=bytes(self.buffer))
        self.parts.append({"PartNumber": number, "ETag": answer["ETag"]})
        self.buffer.clear()

    def complete(self) -> None:
        client = get_s3_client()
        if self.upload_id is None:
            client.put_object(Bucket=self.bucket, Key=self.key, Body=bytes(self.buffer), ContentType=self.content_type)
            return
        if self.buffer:
            self.upload_part()
        client.complete_multipart_upload(Bucket=self.bucket, Key=self.key, UploadId=self.upload_id,
                                         MultipartUpload={"Parts": self.parts})

    def abort(self) -> None:
        if self.upload_id is not None:
            get_s3_client().abort_multipart_upload(Bucket=self.bucket, Key=self.key, UploadId=self.upload_id)


@contextmanager
def text_writer(bucket: str, key: str, content_type: str = "text/csv; charset=utf-8") -> Iterator[_PartWriter]:
    """A writable text stream that becomes s3://bucket/key only when the block ends without an error: the object
    appears whole or not at all (a failed upload is aborted, its parts deleted)."""
    writer = _PartWriter(bucket, check_key(key), content_type)
    try:
        yield writer
    except BaseException:
        writer.abort()
        raise
    writer.complete()
