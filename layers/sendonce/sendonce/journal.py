"""The batch journal: one DynamoDB item per claim that every resend path reads before it resends.

- `begin(token)`, before the claim (while the idempotency records are written): nothing is claimed without
  it, so a stuck row whose claim has no journal item was provably never sent, and reset_stuck releases it
  whatever the policy.
- `record(token, results)`, only when PostgreSQL did not take a batch's results (or the release of a failed
  claim) within the claim's window: the WAMIDs Meta returned survive, and reset_stuck writes them (guarded by
  the claim token) instead of resending.
- `lookup(tokens)`, by reset_stuck.

Items live in the idempotency table under their own key prefix and expire after 14 days; reset_stuck trusts a
missing entry only for claims younger than 13 days (older rows go to the policy).
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass

from botocore.exceptions import BotoCoreError, ClientError

from sendonce.errors import JournalError
from sendonce.idempotency import get_dynamodb_client, table_name
from sendonce.models import Disposition, SendResult

KEEP_SECONDS = 14 * 24 * 3600
# How old a claim may be for a missing entry to prove that it never sent (TTL deletion is not instant, and
# clocks differ; a day of margin).
TRUSTED_SECONDS = KEEP_SECONDS - 24 * 3600
BATCH_GET_LIMIT = 100


@dataclass(frozen=True)
class Entry:
    """What the journal knows of one claim: its sends started, and maybe their results."""

    results: dict[int, SendResult] | None


def _key(token: uuid.UUID) -> dict:
    return {"id": {"S": f"sendonce#claim#{token}"}}


def _put(token: uuid.UUID, fields: dict) -> None:
    item = {**_key(token), "expiration": {"N": str(int(time.time()) + KEEP_SECONDS)}, **fields}
    try:
        get_dynamodb_client().put_item(TableName=table_name(), Item=item)
    except (BotoCoreError, ClientError) as exc:
        raise JournalError(f"writing the batch journal failed: {exc}") from exc


def begin(token: uuid.UUID) -> None:
    """Say that the sends of this claim may start now."""
    _put(token, {"state": {"S": "sending"}})


def record(token: uuid.UUID, results: dict[int, SendResult]) -> None:
    """Keep the results of a claim's sends that PostgreSQL did not take."""
    rows = {
        str(row_id): {"d": str(r.disposition), "w": r.wamid, "c": r.code, "e": r.error, "r": r.requested, "y": r.delay}
        for row_id, r in results.items()
    }
    _put(token, {"state": {"S": "results"}, "results": {"S": json.dumps(rows)}})


def _entry(item: dict) -> Entry:
    if "results" not in item:
        return Entry(results=None)
    rows = json.loads(item["results"]["S"])
    return Entry(
        results={
            int(row_id): SendResult(Disposition(r["d"]), wamid=r["w"], code=r["c"], error=r["e"], requested=r["r"],
                                    delay=r.get("y", 0))
            for row_id, r in rows.items()
        }
    )


def lookup(tokens: set[uuid.UUID]) -> dict[uuid.UUID, Entry]:
    """The journal entries of these claims (absent: the claim never started its sends).

    Raises
    ------
    JournalError
        The journal could not be read completely: the caller must not act on the claims.
    """
    found: dict[uuid.UUID, Entry] = {}
    client = get_dynamodb_client()
    ordered = sorted(tokens, key=str)
    for start in range(0, len(ordered), BATCH_GET_LIMIT):
        keys = [_key(t) for t in ordered[start : start + BATCH_GET_LIMIT]]
        for attempt in range(5):
            try:
                answer = client.batch_get_item(RequestItems={table_name(): {"Keys": keys, "ConsistentRead": True}})
            except (BotoCoreError, ClientError) as exc:
                raise JournalError(f"reading the batch journal failed: {exc}") from exc
            for item in answer.get("Responses", {}).get(table_name(), []):
                found[uuid.UUID(item["id"]["S"].rsplit("#", 1)[1])] = _entry(item)
            keys = answer.get("UnprocessedKeys", {}).get(table_name(), {}).get("Keys", [])
            if not keys:
                break
            time.sleep(0.05 * 2**attempt)
        if keys:
            raise JournalError(f"reading the batch journal failed: {len(keys)} keys left unprocessed")
    return found
