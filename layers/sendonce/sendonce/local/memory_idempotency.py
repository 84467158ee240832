"""An in-memory Powertools persistence layer, for `sendonce bench --idempotency-store memory`.

moto's DynamoDB answers one request at a time, so with DynamoDB on moto a bench measures moto. This store keeps
the records in a dict, with the DynamoDB layer's rules for an existing record (a record blocks a new one until
it expires, or, in progress, until its in-progress expiry passes), so the sender runs the same phases at the
cost of a dict. One process's records only: the bench hands each message to one sender. Never used in Lambda.
"""

from __future__ import annotations

import datetime
import threading

from aws_lambda_powertools.utilities.idempotency.exceptions import (
    IdempotencyItemAlreadyExistsError,
    IdempotencyItemNotFoundError,
)
from aws_lambda_powertools.utilities.idempotency.persistence.base import BasePersistenceLayer
from aws_lambda_powertools.utilities.idempotency.persistence.datarecord import DataRecord


class MemoryPersistenceLayer(BasePersistenceLayer):
    """Idempotency records in a dict, with DynamoDBPersistenceLayer's conditional put."""

    def __init__(self) -> None:
        super().__init__()
        self._records: dict[str, DataRecord] = {}
        self._lock = threading.Lock()

    def _get_record(self, idempotency_key) -> DataRecord:
        with self._lock:
            record = self._records.get(idempotency_key)
        if record is None:
            raise IdempotencyItemNotFoundError
        return record

    def _put_record(self, data_record: DataRecord) -> None:
        now = datetime.datetime.now()
        with self._lock:
            old = self._records.get(data_record.idempotency_key)
            if old is not None and not _expired(old, now):
                raise IdempotencyItemAlreadyExistsError(old_data_record=old)
            self._records[data_record.idempotency_key] = data_record

    def _update_record(self, data_record: DataRecord) -> None:
        with self._lock:
            self._records[data_record.idempotency_key] = data_record

    def _delete_record(self, data_record: DataRecord) -> None:
        with self._lock:
            self._records.pop(data_record.idempotency_key, None)


def _expired(record: DataRecord, now: datetime.datetime) -> bool:
    if record.expiry_timestamp is not None and record.expiry_timestamp < int(now.timestamp()):
        return True
    in_progress = record.in_progress_expiry_timestamp
    return record.status == "INPROGRESS" and in_progress is not None and in_progress < int(now.timestamp() * 1000)
