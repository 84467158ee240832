"""LocalDynamoDbServer against moto's server: the same scenarios, the same observable results.

Every scenario of the first part runs twice, through boto3, once against moto's server (the session's
`moto_server`) and once against `LocalDynamoDbServer`: the calls and expressions this project makes (Powertools'
idempotency records, the batch journal, the tests' scans and updates), and Powertools' own
DynamoDBPersistenceLayer end to end. The second part covers what only LocalDynamoDbServer does (DynamoDB's
behaviour where moto differs, other processes, concurrent writers). Nothing asserts on speed.
"""

from __future__ import annotations

import datetime as dt
import os
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator

import boto3
import pytest
from aws_lambda_powertools.utilities.idempotency import DynamoDBPersistenceLayer, IdempotencyConfig
from aws_lambda_powertools.utilities.idempotency.exceptions import (
    IdempotencyItemAlreadyExistsError,
    IdempotencyItemNotFoundError,
)
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError
from sendonce.local import services
from sendonce.local.dynamodb_server import LocalDynamoDbServer

REGION = "us-east-1"

# Powertools' condition for saving an in-progress record, exactly as its persistence layer writes it.
POWERTOOLS_CONDITION = (
    "attribute_not_exists(#id) OR #expiry < :now OR "
    "(#status = :inprogress AND attribute_exists(#in_progress_expiry) AND #in_progress_expiry < :now_in_millis)"
)
POWERTOOLS_NAMES = {
    "#id": "id",
    "#expiry": "expiration",
    "#in_progress_expiry": "in_progress_expiration",
    "#status": "status",
}



def _table_names(ddb) -> list[str]:
    """Every table, page by page (the session's moto server holds the tables of every test: more than a page)."""
    return [name for page in ddb.get_paginator("list_tables").paginate() for name in page["TableNames"]]

def _client(url: str, pool: int = 10):
    # One attempt: a retried error would hide what the server answered.
    return boto3.client(
        "dynamodb",
        endpoint_url=url,
        region_name=REGION,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
        config=Config(retries={"total_max_attempts": 1}, max_pool_connections=pool),
    )


@pytest.fixture(scope="module")
def local_dynamodb() -> Iterator[LocalDynamoDbServer]:
    """One LocalDynamoDbServer for this module (tables are named uniquely per test)."""
    with LocalDynamoDbServer() as server:
        yield server


@pytest.fixture(params=["moto", "local"])
def endpoint(request) -> str:
    """The URL of moto's server (the session's) or of LocalDynamoDbServer."""
    if request.param == "moto":
        host, port = request.getfixturevalue("moto_server").get_host_and_port()
        return f"http://{host}:{port}"
    return request.getfixturevalue("local_dynamodb").url


@pytest.fixture
def ddb(endpoint):
    """A boto3 DynamoDB client for moto's server or for LocalDynamoDbServer."""
    return _client(endpoint)


@pytest.fixture
def table(ddb) -> str:
    """A fresh table shaped like the idempotency table (services.create_aws_resources): pk `id`, TTL on."""
    return services.create_idempotency_table(ddb, f"t{uuid.uuid4().hex[:12]}-idempotency")


def _code(raised: pytest.ExceptionInfo[ClientError]) -> str:
    return raised.value.response["Error"]["Code"]


def _powertools_put(ddb, table: str, key: str, now: float, **extra: object):
    """Save an in-progress record as Powertools does: its item, condition, names, values and ALL_OLD."""
    item = {
        "id": {"S": key},
        "expiration": {"N": str(int(now) + 3600)},
        "status": {"S": "INPROGRESS"},
        "in_progress_expiration": {"N": str(int(now * 1000) + 30_000)},
    }
    return ddb.put_item(
        TableName=table,
        Item=item,
        ConditionExpression=POWERTOOLS_CONDITION,
        ExpressionAttributeNames=POWERTOOLS_NAMES,
        ExpressionAttributeValues={
            ":now": {"N": str(int(now))},
            ":now_in_millis": {"N": str(int(now * 1000))},
            ":inprogress": {"S": "INPROGRESS"},
        },
        ReturnValuesOnConditionCheckFailure="ALL_OLD",
        **extra,
    )


# --- the same scenarios on moto and on LocalDynamoDbServer ----------------------------------------------


def test_create_table_described_listed_and_ttl_enabled(ddb, table):
    # Given / When: the fixture created it as create_aws_resources does

    # Then
    description = ddb.describe_table(TableName=table)["Table"]
    assert description["TableName"] == table
    assert description["TableStatus"] == "ACTIVE"
    assert description["KeySchema"] == [{"AttributeName": "id", "KeyType": "HASH"}]
    assert description["AttributeDefinitions"] == [{"AttributeName": "id", "AttributeType": "S"}]
    assert description["BillingModeSummary"]["BillingMode"] == "PAY_PER_REQUEST"
    assert description["TableArn"] == f"arn:aws:dynamodb:{REGION}:123456789012:table/{table}"
    assert description["ItemCount"] == 0
    assert table in _table_names(ddb)
    assert ddb.describe_time_to_live(TableName=table)["TimeToLiveDescription"] == {
        "TimeToLiveStatus": "ENABLED",
        "AttributeName": "expiration",
    }


def test_create_table_existing_name_resource_in_use(ddb, table):
    # When
    with pytest.raises(ClientError) as raised:
        ddb.create_table(
            TableName=table,
            KeySchema=[{"AttributeName": "id", "KeyType": "HASH"}],
            AttributeDefinitions=[{"AttributeName": "id", "AttributeType": "S"}],
            BillingMode="PAY_PER_REQUEST",
        )

    # Then
    assert _code(raised) == "ResourceInUseException"


def test_delete_table_gone_afterwards_resource_not_found(ddb, table):
    # When
    ddb.delete_table(TableName=table)

    # Then
    assert table not in _table_names(ddb)
    with pytest.raises(ddb.exceptions.ResourceNotFoundException):
        ddb.describe_table(TableName=table)


def test_put_get_delete_item_round_trip(ddb, table):
    # Given
    item = {"id": {"S": "sendonce#claim#1"}, "expiration": {"N": "1700000000"}, "state": {"S": "sending"}}

    # When
    ddb.put_item(TableName=table, Item=item)
    got = ddb.get_item(TableName=table, Key={"id": item["id"]}, ConsistentRead=True)
    deleted = ddb.delete_item(TableName=table, Key={"id": item["id"]}, ReturnValues="ALL_OLD")
    after = ddb.get_item(TableName=table, Key={"id": item["id"]}, ConsistentRead=True)

    # Then
    assert got["Item"] == item
    assert deleted["Attributes"] == item
    assert "Item" not in after


def test_put_item_existing_with_all_old_returns_previous(ddb, table):
    # Given
    ddb.put_item(TableName=table, Item={"id": {"S": "k"}, "v": {"S": "first"}})

    # When
    answer = ddb.put_item(
        TableName=table, Item={"id": {"S": "k"}, "v": {"S": "second"}}, ReturnValues="ALL_OLD"
    )

    # Then: a put replaces the whole item
    assert answer["Attributes"] == {"id": {"S": "k"}, "v": {"S": "first"}}
    assert ddb.get_item(TableName=table, Key={"id": {"S": "k"}})["Item"] == {
        "id": {"S": "k"},
        "v": {"S": "second"},
    }


def test_delete_item_missing_succeeds_without_attributes(ddb, table):
    # When
    answer = ddb.delete_item(TableName=table, Key={"id": {"S": "nothing"}}, ReturnValues="ALL_OLD")

    # Then
    assert "Attributes" not in answer


def test_conditional_put_existing_item_fails_with_old_item(ddb, table):
    # Given
    old = {"id": {"S": "k"}, "n": {"N": "11"}}
    ddb.put_item(TableName=table, Item=old)

    # When
    with pytest.raises(ddb.exceptions.ConditionalCheckFailedException) as raised:
        ddb.put_item(
            TableName=table,
            Item={"id": {"S": "k"}, "n": {"N": "12"}},
            ConditionExpression="attribute_not_exists(#i)",
            ExpressionAttributeNames={"#i": "id"},
            ReturnValuesOnConditionCheckFailure="ALL_OLD",
        )

    # Then: the old item where Powertools reads it, and nothing written
    assert _code(raised) == "ConditionalCheckFailedException"
    assert raised.value.response["Item"] == old
    assert ddb.get_item(TableName=table, Key={"id": {"S": "k"}})["Item"] == old


def test_conditional_put_without_all_old_fails_without_item(ddb, table):
    # Given
    ddb.put_item(TableName=table, Item={"id": {"S": "k"}})

    # When
    with pytest.raises(ddb.exceptions.ConditionalCheckFailedException) as raised:
        ddb.put_item(
            TableName=table,
            Item={"id": {"S": "k"}},
            ConditionExpression="attribute_not_exists(#i)",
            ExpressionAttributeNames={"#i": "id"},
        )

    # Then
    assert "Item" not in raised.value.response


def test_powertools_condition_absent_record_put(ddb, table):
    # Given
    now = time.time()

    # When
    _powertools_put(ddb, table, "absent", now)

    # Then
    item = ddb.get_item(TableName=table, Key={"id": {"S": "absent"}}, ConsistentRead=True)["Item"]
    assert item["status"] == {"S": "INPROGRESS"}


def test_powertools_condition_expired_record_replaced(ddb, table):
    # Given: a completed record whose expiry passed (TTL has not deleted it yet)
    now = time.time()
    ddb.put_item(
        TableName=table,
        Item={"id": {"S": "k"}, "expiration": {"N": str(int(now) - 10)}, "status": {"S": "COMPLETED"}},
    )

    # When
    _powertools_put(ddb, table, "k", now)

    # Then
    item = ddb.get_item(TableName=table, Key={"id": {"S": "k"}}, ConsistentRead=True)["Item"]
    assert item["status"] == {"S": "INPROGRESS"}
    assert item["expiration"] == {"N": str(int(now) + 3600)}


def test_powertools_condition_in_progress_lambda_timed_out_replaced(ddb, table):
    # Given: in progress, record not expired, but its in-progress expiry (the Lambda's timeout) passed
    now = time.time()
    ddb.put_item(
        TableName=table,
        Item={
            "id": {"S": "k"},
            "expiration": {"N": str(int(now) + 3600)},
            "status": {"S": "INPROGRESS"},
            "in_progress_expiration": {"N": str(int(now * 1000) - 1)},
        },
    )

    # When
    _powertools_put(ddb, table, "k", now)

    # Then
    item = ddb.get_item(TableName=table, Key={"id": {"S": "k"}}, ConsistentRead=True)["Item"]
    assert int(item["in_progress_expiration"]["N"]) > int(now * 1000)


@pytest.mark.parametrize(
    ("status", "in_progress_offset_ms"),
    [("INPROGRESS", 60_000), ("COMPLETED", -60_000), ("COMPLETED", None)],
    ids=["in-progress-not-expired", "completed-old-in-progress-expiry", "completed"],
)
def test_powertools_condition_live_record_fails_with_old_item(ddb, table, status, in_progress_offset_ms):
    # Given: a record that is neither expired nor an in-progress record whose Lambda timed out
    now = time.time()
    old = {"id": {"S": "k"}, "expiration": {"N": str(int(now) + 3600)}, "status": {"S": status}}
    if in_progress_offset_ms is not None:
        old["in_progress_expiration"] = {"N": str(int(now * 1000) + in_progress_offset_ms)}
    ddb.put_item(TableName=table, Item=old)

    # When
    with pytest.raises(ddb.exceptions.ConditionalCheckFailedException) as raised:
        _powertools_put(ddb, table, "k", now)

    # Then
    assert raised.value.response["Item"] == old
    assert ddb.get_item(TableName=table, Key={"id": {"S": "k"}}, ConsistentRead=True)["Item"] == old


def test_condition_numbers_compared_numerically(ddb, table):
    # Given: 9 < 10 as numbers, but "9" > "10" as strings
    ddb.put_item(TableName=table, Item={"id": {"S": "k"}, "n": {"N": "9"}})

    # When
    ddb.put_item(
        TableName=table,
        Item={"id": {"S": "k"}, "n": {"N": "9.5"}},
        ConditionExpression="n < :ten AND n >= :nine AND n <> :other AND n = :same",
        ExpressionAttributeValues={
            ":ten": {"N": "10"},
            ":nine": {"N": "9"},
            ":other": {"N": "9.01"},
            ":same": {"N": "9.0"},
        },
    )

    # Then
    assert ddb.get_item(TableName=table, Key={"id": {"S": "k"}})["Item"]["n"] == {"N": "9.5"}


def test_condition_strings_compared_by_characters(ddb, table):
    # Given
    ddb.put_item(TableName=table, Item={"id": {"S": "k"}, "s": {"S": "9"}})

    # When
    with pytest.raises(ddb.exceptions.ConditionalCheckFailedException):
        ddb.put_item(
            TableName=table,
            Item={"id": {"S": "k"}},
            ConditionExpression="s < :ten",
            ExpressionAttributeValues={":ten": {"S": "10"}},
        )

    # Then: "9" > "10" as strings; the item is unchanged
    assert ddb.get_item(TableName=table, Key={"id": {"S": "k"}})["Item"]["s"] == {"S": "9"}


def test_condition_precedence_and_binds_tighter_than_or(ddb, table):
    # Given
    ddb.put_item(TableName=table, Item={"id": {"S": "k"}, "a": {"N": "1"}})
    values = {":one": {"N": "1"}}

    # When: a = 1 OR (q AND z) holds; (a = 1 OR q) AND z does not; NOT inverts
    ddb.put_item(
        TableName=table,
        Item={"id": {"S": "k"}, "a": {"N": "1"}},
        ConditionExpression="a = :one OR attribute_exists(q) AND attribute_exists(z)",
        ExpressionAttributeValues=values,
    )
    with pytest.raises(ddb.exceptions.ConditionalCheckFailedException):
        ddb.put_item(
            TableName=table,
            Item={"id": {"S": "k"}},
            ConditionExpression="(a = :one OR attribute_exists(q)) AND attribute_exists(z)",
            ExpressionAttributeValues=values,
        )
    with pytest.raises(ddb.exceptions.ConditionalCheckFailedException):
        ddb.put_item(
            TableName=table,
            Item={"id": {"S": "k"}},
            ConditionExpression="NOT a = :one",
            ExpressionAttributeValues=values,
        )

    # Then
    assert ddb.get_item(TableName=table, Key={"id": {"S": "k"}})["Item"] == {
        "id": {"S": "k"},
        "a": {"N": "1"},
    }


def test_condition_missing_attribute_not_equal_holds(ddb, table):
    # Given
    ddb.put_item(TableName=table, Item={"id": {"S": "k"}})

    # When: a missing attribute is not equal to anything, and not less than anything
    ddb.put_item(
        TableName=table,
        Item={"id": {"S": "k"}, "x": {"S": "1"}},
        ConditionExpression="q <> :v",
        ExpressionAttributeValues={":v": {"N": "1"}},
    )
    with pytest.raises(ddb.exceptions.ConditionalCheckFailedException):
        ddb.put_item(
            TableName=table,
            Item={"id": {"S": "k"}},
            ConditionExpression="q < :v",
            ExpressionAttributeValues={":v": {"N": "1"}},
        )

    # Then
    assert ddb.get_item(TableName=table, Key={"id": {"S": "k"}})["Item"]["x"] == {"S": "1"}


def test_update_item_set_like_powertools_save_success(ddb, table):
    # Given: an in-progress record
    now = time.time()
    _powertools_put(ddb, table, "k", now)

    # When: Powertools' _update_record
    answer = ddb.update_item(
        TableName=table,
        Key={"id": {"S": "k"}},
        UpdateExpression="SET #response_data = :response_data, #expiry = :expiry, #status = :status",
        ExpressionAttributeNames={"#expiry": "expiration", "#response_data": "data", "#status": "status"},
        ExpressionAttributeValues={
            ":expiry": {"N": str(int(now) + 7200)},
            ":response_data": {"S": '{"sent": true}'},
            ":status": {"S": "COMPLETED"},
        },
        ReturnValues="ALL_NEW",
    )

    # Then: set attributes replaced, the others kept
    item = ddb.get_item(TableName=table, Key={"id": {"S": "k"}}, ConsistentRead=True)["Item"]
    assert answer["Attributes"] == item
    assert item["status"] == {"S": "COMPLETED"}
    assert item["data"] == {"S": '{"sent": true}'}
    assert item["expiration"] == {"N": str(int(now) + 7200)}
    assert "in_progress_expiration" in item


def test_update_item_plain_name_like_fault_tests_sets_value(ddb, table):
    # Given
    ddb.put_item(TableName=table, Item={"id": {"S": "k"}, "in_progress_expiration": {"N": "99"}})

    # When: tests/faults.py's expire_in_flight
    ddb.update_item(
        TableName=table,
        Key={"id": {"S": "k"}},
        UpdateExpression="SET in_progress_expiration = :zero",
        ExpressionAttributeValues={":zero": {"N": "0"}},
    )

    # Then
    item = ddb.get_item(TableName=table, Key={"id": {"S": "k"}})["Item"]
    assert item["in_progress_expiration"] == {"N": "0"}


def test_update_item_missing_item_created(ddb, table):
    # When
    answer = ddb.update_item(
        TableName=table,
        Key={"id": {"S": "new"}},
        UpdateExpression="SET a = :a",
        ExpressionAttributeValues={":a": {"S": "x"}},
        ReturnValues="ALL_NEW",
    )

    # Then
    assert answer["Attributes"] == {"id": {"S": "new"}, "a": {"S": "x"}}


def test_update_item_set_and_remove_updated_old_returned(ddb, table):
    # Given
    ddb.put_item(
        TableName=table, Item={"id": {"S": "k"}, "n": {"N": "5"}, "m": {"S": "gone"}, "o": {"S": "kept"}}
    )

    # When
    answer = ddb.update_item(
        TableName=table,
        Key={"id": {"S": "k"}},
        UpdateExpression="SET n = :v REMOVE m",
        ExpressionAttributeValues={":v": {"N": "6"}},
        ReturnValues="UPDATED_OLD",
    )

    # Then
    assert answer["Attributes"] == {"n": {"N": "5"}, "m": {"S": "gone"}}
    assert ddb.get_item(TableName=table, Key={"id": {"S": "k"}})["Item"] == {
        "id": {"S": "k"},
        "n": {"N": "6"},
        "o": {"S": "kept"},
    }


def test_update_item_condition_fails_with_old_item_unchanged(ddb, table):
    # Given
    old = {"id": {"S": "k"}, "n": {"N": "6"}}
    ddb.put_item(TableName=table, Item=old)

    # When
    with pytest.raises(ddb.exceptions.ConditionalCheckFailedException) as raised:
        ddb.update_item(
            TableName=table,
            Key={"id": {"S": "k"}},
            UpdateExpression="SET n = :v",
            ConditionExpression="n > :w",
            ExpressionAttributeValues={":v": {"N": "5"}, ":w": {"N": "100"}},
            ReturnValuesOnConditionCheckFailure="ALL_OLD",
        )

    # Then
    assert raised.value.response["Item"] == old
    assert ddb.get_item(TableName=table, Key={"id": {"S": "k"}})["Item"] == old


def test_update_item_key_attribute_validation_exception(ddb, table):
    # When
    with pytest.raises(ClientError) as raised:
        ddb.update_item(
            TableName=table,
            Key={"id": {"S": "k"}},
            UpdateExpression="SET id = :v",
            ExpressionAttributeValues={":v": {"S": "other"}},
        )

    # Then
    assert _code(raised) == "ValidationException"
    assert "part of the key" in raised.value.response["Error"]["Message"]


def test_delete_item_condition_fails_item_kept(ddb, table):
    # Given
    ddb.put_item(TableName=table, Item={"id": {"S": "k"}, "status": {"S": "COMPLETED"}})

    # When
    with pytest.raises(ddb.exceptions.ConditionalCheckFailedException) as raised:
        ddb.delete_item(
            TableName=table,
            Key={"id": {"S": "k"}},
            ConditionExpression="#s = :s",
            ExpressionAttributeNames={"#s": "status"},
            ExpressionAttributeValues={":s": {"S": "INPROGRESS"}},
            ReturnValuesOnConditionCheckFailure="ALL_OLD",
        )

    # Then
    assert raised.value.response["Item"]["status"] == {"S": "COMPLETED"}
    assert "Item" in ddb.get_item(TableName=table, Key={"id": {"S": "k"}})


def test_delete_item_condition_holds_item_deleted(ddb, table):
    # Given
    ddb.put_item(TableName=table, Item={"id": {"S": "k"}})

    # When
    ddb.delete_item(TableName=table, Key={"id": {"S": "k"}}, ConditionExpression="attribute_exists(id)")

    # Then
    assert "Item" not in ddb.get_item(TableName=table, Key={"id": {"S": "k"}})


def test_batch_get_item_found_and_missing_found_only(ddb, table):
    # Given: journal-shaped items for two of three claims
    tokens = [f"sendonce#claim#{uuid.uuid4()}" for _ in range(3)]
    for token in tokens[:2]:
        ddb.put_item(TableName=table, Item={"id": {"S": token}, "state": {"S": "sending"}})

    # When
    answer = ddb.batch_get_item(
        RequestItems={table: {"Keys": [{"id": {"S": t}} for t in tokens], "ConsistentRead": True}}
    )

    # Then
    assert sorted(i["id"]["S"] for i in answer["Responses"][table]) == sorted(tokens[:2])
    assert answer["UnprocessedKeys"] == {}


def test_batch_get_item_none_found_empty_list(ddb, table):
    # When
    answer = ddb.batch_get_item(RequestItems={table: {"Keys": [{"id": {"S": "nothing"}}]}})

    # Then
    assert answer["Responses"] == {table: []}


def test_batch_get_item_hundred_keys_answered_more_refused(ddb, table):
    # Given
    for i in range(100):
        ddb.put_item(TableName=table, Item={"id": {"S": f"k{i}"}})

    # When
    answer = ddb.batch_get_item(RequestItems={table: {"Keys": [{"id": {"S": f"k{i}"}} for i in range(100)]}})
    with pytest.raises(ClientError) as raised:
        ddb.batch_get_item(RequestItems={table: {"Keys": [{"id": {"S": f"k{i}"}} for i in range(101)]}})

    # Then
    assert len(answer["Responses"][table]) == 100
    assert _code(raised) == "ValidationException"


def test_batch_get_item_duplicate_keys_validation_exception(ddb, table):
    # When
    with pytest.raises(ClientError) as raised:
        ddb.batch_get_item(RequestItems={table: {"Keys": [{"id": {"S": "a"}}, {"id": {"S": "a"}}]}})

    # Then
    assert _code(raised) == "ValidationException"
    assert raised.value.response["Error"]["Message"] == "Provided list of item keys contains duplicates"


def test_scan_projection_like_fault_tests_every_key(ddb, table):
    # Given
    for i in range(5):
        ddb.put_item(TableName=table, Item={"id": {"S": f"k{i}"}, "status": {"S": "INPROGRESS"}})

    # When: tests/faults.py's fresh_queues
    items = ddb.scan(TableName=table, ProjectionExpression="id")["Items"]

    # Then
    assert sorted(items, key=lambda i: i["id"]["S"]) == [{"id": {"S": f"k{i}"}} for i in range(5)]


@pytest.mark.parametrize(
    "call",
    [
        lambda ddb: ddb.get_item(TableName="nope-nope", Key={"id": {"S": "k"}}),
        lambda ddb: ddb.put_item(TableName="nope-nope", Item={"id": {"S": "k"}}),
        lambda ddb: ddb.delete_item(TableName="nope-nope", Key={"id": {"S": "k"}}),
        lambda ddb: ddb.batch_get_item(RequestItems={"nope-nope": {"Keys": [{"id": {"S": "k"}}]}}),
        lambda ddb: ddb.describe_table(TableName="nope-nope"),
    ],
    ids=["get", "put", "delete", "batch-get", "describe"],
)
def test_unknown_table_resource_not_found(ddb, call: Callable):
    # When
    with pytest.raises(ClientError) as raised:
        call(ddb)

    # Then
    assert _code(raised) == "ResourceNotFoundException"
    assert isinstance(raised.value, ddb.exceptions.ResourceNotFoundException)


@pytest.mark.parametrize(
    ("update", "names", "message"),
    [
        ("SET n = ", None, 'Syntax error; token: "<EOF>", near: "="'),
        ("SET n = :v,", None, 'Syntax error; token: "<EOF>", near: ","'),
        ("SET n = :v SET m = :v", None, 'The "SET" section can only be used once'),
        ("SET n = :v, n = :v", None, "Two document paths overlap"),
        ("SET status = :v", None, "Attribute name is a reserved keyword; reserved keyword: status"),
        ("SET n = :v", {"#unused": "q"}, "unused in expressions: keys: {#unused}"),
    ],
    ids=["eof", "trailing-comma", "two-sets", "overlap", "reserved-word", "unused-name"],
)
def test_update_item_malformed_expression_validation_exception(ddb, table, update, names, message):
    # Given
    extra = {"ExpressionAttributeNames": names} if names else {}

    # When
    with pytest.raises(ClientError) as raised:
        ddb.update_item(
            TableName=table,
            Key={"id": {"S": "k"}},
            UpdateExpression=update,
            ExpressionAttributeValues={":v": {"N": "1"}},
            **extra,
        )

    # Then
    assert _code(raised) == "ValidationException"
    assert message in raised.value.response["Error"]["Message"]
    assert "Item" not in ddb.get_item(TableName=table, Key={"id": {"S": "k"}})


def test_condition_reserved_word_validation_exception(ddb, table):
    # When: `status` must be written as #status (as Powertools does)
    with pytest.raises(ClientError) as raised:
        ddb.put_item(
            TableName=table,
            Item={"id": {"S": "k"}},
            ConditionExpression="status = :v",
            ExpressionAttributeValues={":v": {"S": "x"}},
        )

    # Then
    assert _code(raised) == "ValidationException"
    assert "reserved keyword: status" in raised.value.response["Error"]["Message"]


@pytest.mark.parametrize(
    ("item", "message"),
    [
        ({"other": {"S": "a"}}, "Missing the key id in the item"),
        ({"id": {"N": "1"}}, "Type mismatch for key id expected: S actual: N"),
        ({"id": {"S": "a"}, "n": {"N": "abc"}}, "The parameter cannot be converted to a numeric value: abc"),
    ],
    ids=["missing-key", "key-type", "bad-number"],
)
def test_put_item_invalid_item_validation_exception(ddb, table, item, message):
    # When
    with pytest.raises(ClientError) as raised:
        ddb.put_item(TableName=table, Item=item)

    # Then
    assert _code(raised) == "ValidationException"
    assert message in raised.value.response["Error"]["Message"]


def test_get_item_extra_key_attribute_validation_exception(ddb, table):
    # When
    with pytest.raises(ClientError) as raised:
        ddb.get_item(TableName=table, Key={"id": {"S": "a"}, "x": {"S": "b"}})

    # Then
    assert _code(raised) == "ValidationException"
    assert raised.value.response["Error"]["Message"] == "The provided key element does not match the schema"


def test_put_item_return_values_all_new_validation_exception(ddb, table):
    # When
    with pytest.raises(ClientError) as raised:
        ddb.put_item(TableName=table, Item={"id": {"S": "a"}}, ReturnValues="ALL_NEW")

    # Then
    assert _code(raised) == "ValidationException"


# --- Powertools' persistence layer end to end, on both ---------------------------------------------------


@pytest.fixture
def store(ddb, table) -> DynamoDBPersistenceLayer:
    """Powertools' DynamoDB persistence layer configured as sendonce.idempotency configures it."""
    layer = DynamoDBPersistenceLayer(table_name=table, boto3_client=ddb)
    layer.configure(
        IdempotencyConfig(
            event_key_jmespath="[queue_id, campaign_id, enqueue_id]",
            raise_on_no_idempotency_key=True,
            expires_after_seconds=6 * 3600,
        ),
        key_prefix="sendonce.sender",
    )
    return layer


def test_powertools_layer_in_progress_then_duplicate_refused_with_record(store):
    # Given
    data = {"queue_id": 1, "campaign_id": "c", "enqueue_id": str(uuid.uuid4())}
    store.save_inprogress(data=data, remaining_time_in_millis=30_000)

    # When
    with pytest.raises(IdempotencyItemAlreadyExistsError) as raised:
        store.save_inprogress(data=data, remaining_time_in_millis=30_000)

    # Then: the old record came back with the failed put (no second read needed)
    assert raised.value.old_data_record is not None
    assert raised.value.old_data_record.status == "INPROGRESS"
    assert store.get_record(data=data).status == "INPROGRESS"


def test_powertools_layer_success_then_duplicate_gets_result(store):
    # Given
    data = {"queue_id": 2, "campaign_id": "c", "enqueue_id": str(uuid.uuid4())}
    store.save_inprogress(data=data, remaining_time_in_millis=30_000)

    # When
    store.save_success(data=data, result={"disposition": "sent", "wamid": "wamid.1"})
    with pytest.raises(IdempotencyItemAlreadyExistsError) as raised:
        store.save_inprogress(data=data, remaining_time_in_millis=30_000)

    # Then
    record = store.get_record(data=data)
    assert record.status == "COMPLETED"
    assert record.response_json_as_dict() == {"disposition": "sent", "wamid": "wamid.1"}
    assert raised.value.old_data_record.status == "COMPLETED"


def test_powertools_layer_deleted_record_saved_again(store):
    # Given
    data = {"queue_id": 3, "campaign_id": "c", "enqueue_id": str(uuid.uuid4())}
    store.save_inprogress(data=data, remaining_time_in_millis=30_000)

    # When
    store.delete_record(data=data, exception=RuntimeError("released"))

    # Then
    with pytest.raises(IdempotencyItemNotFoundError):
        store.get_record(data=data)
    store.save_inprogress(data=data, remaining_time_in_millis=30_000)
    assert store.get_record(data=data).status == "INPROGRESS"


def test_powertools_layer_lambda_timed_out_record_taken_over(store):
    # Given: an in-progress record whose Lambda had 1 ms left
    data = {"queue_id": 4, "campaign_id": "c", "enqueue_id": str(uuid.uuid4())}
    store.save_inprogress(data=data, remaining_time_in_millis=1)
    time.sleep(0.01)

    # When: another delivery tries after that
    store.save_inprogress(data=data, remaining_time_in_millis=30_000)

    # Then
    record = store.get_record(data=data)
    assert record.in_progress_expiry_timestamp > int(dt.datetime.now().timestamp() * 1000)


# --- sendonce's own journal, on both ---------------------------------------------------------------------


def test_journal_begin_record_lookup_round_trip(endpoint, table, monkeypatch):
    # Given: sendonce's clients pointed at this server and table
    from sendonce import journal
    from sendonce.local import reset_clients
    from sendonce.models import Disposition, SendResult

    monkeypatch.setenv("AWS_ENDPOINT_URL_DYNAMODB", endpoint)
    monkeypatch.setenv("IDEMPOTENCY_TABLE", table)
    reset_clients()
    try:
        begun, recorded, absent = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
        result = SendResult(Disposition("sent"), wamid="wamid.x", code=None, error=None, requested=True)

        # When
        journal.begin(begun)
        journal.begin(recorded)
        journal.record(recorded, {7: result})
        found = journal.lookup({begun, recorded, absent})
    finally:
        monkeypatch.undo()
        reset_clients()

    # Then
    assert set(found) == {begun, recorded}
    assert found[begun].results is None
    assert found[recorded].results == {7: result}


# --- LocalDynamoDbServer only ----------------------------------------------------------------------------


@pytest.fixture
def local_ddb(local_dynamodb):
    return _client(local_dynamodb.url, pool=16)


@pytest.fixture
def local_table(local_ddb) -> str:
    name = f"l{uuid.uuid4().hex[:12]}"
    local_ddb.create_table(
        TableName=name,
        KeySchema=[{"AttributeName": "id", "KeyType": "HASH"}],
        AttributeDefinitions=[{"AttributeName": "id", "AttributeType": "S"}],
        BillingMode="PAY_PER_REQUEST",
    )
    return name


@pytest.mark.parametrize(
    ("condition", "names", "values", "message"),
    [
        ("attribute_not_exists(#i", {"#i": "id"}, None, 'Syntax error; token: "<EOF>", near: "#i"'),
        ("attribute_not_exists(#i)", None, None, "attribute name used in the document path is not defined"),
        ("n = :v", None, None, "attribute value used in expression is not defined; attribute value: :v"),
        ("n == :v", None, {":v": {"N": "1"}}, 'Syntax error; token: "=", near: "=="'),
        ("bogus(n)", None, None, "Invalid function name; function: bogus"),
        ("((n = :v))", None, {":v": {"N": "1"}}, "redundant parentheses"),
        ("n = :v", None, {":v": {"N": "1"}, ":w": {"N": "2"}}, "unused in expressions: keys: {:w}"),
        ("", None, None, "The expression can not be empty"),
        ("n < :v", None, {":v": {"BOOL": True}}, "Incorrect operand type for operator or function"),
        ("size(n) > :v", None, {":v": {"N": "1"}}, "LocalDynamoDbServer does not support the function size"),
    ],
    ids=[
        "unclosed",
        "undefined-name",
        "undefined-value",
        "double-equals",
        "unknown-function",
        "redundant-parens",
        "unused-value",
        "empty",
        "bool-ordering",
        "unsupported-size",
    ],
)
def test_local_dynamodb_malformed_condition_validation_exception(
    local_ddb, local_table, condition, names, values, message
):
    # Given: DynamoDB answers these with ValidationException (moto with an HTML 500, or not at all)
    extra: dict = {}
    if names:
        extra["ExpressionAttributeNames"] = names
    if values:
        extra["ExpressionAttributeValues"] = values

    # When
    with pytest.raises(ClientError) as raised:
        local_ddb.put_item(
            TableName=local_table, Item={"id": {"S": "k"}}, ConditionExpression=condition, **extra
        )

    # Then
    assert _code(raised) == "ValidationException"
    assert message in raised.value.response["Error"]["Message"]


def test_local_dynamodb_number_against_string_ordering_false(local_ddb, local_table):
    # Given
    local_ddb.put_item(TableName=local_table, Item={"id": {"S": "k"}, "n": {"N": "10"}})

    # When: DynamoDB's ordering between different types is false (moto raises a TypeError: HTML 500)
    with pytest.raises(local_ddb.exceptions.ConditionalCheckFailedException):
        local_ddb.put_item(
            TableName=local_table,
            Item={"id": {"S": "k"}},
            ConditionExpression="n < :v",
            ExpressionAttributeValues={":v": {"S": "11"}},
        )

    # Then
    assert local_ddb.get_item(TableName=local_table, Key={"id": {"S": "k"}})["Item"]["n"] == {"N": "10"}


def test_local_dynamodb_numbers_stored_canonical(local_ddb, local_table):
    # When
    local_ddb.put_item(
        TableName=local_table,
        Item={"id": {"S": "k"}, "a": {"N": "1.50"}, "b": {"N": "1e2"}, "c": {"N": "-0.0"}},
    )

    # Then: as DynamoDB returns them (moto returns the text it was given)
    item = local_ddb.get_item(TableName=local_table, Key={"id": {"S": "k"}})["Item"]
    assert (item["a"], item["b"], item["c"]) == ({"N": "1.5"}, {"N": "100"}, {"N": "0"})


def test_local_dynamodb_expired_items_kept_and_returned(local_ddb, local_table):
    # Given: TTL enabled and an item whose expiration is long past
    local_ddb.update_time_to_live(
        TableName=local_table, TimeToLiveSpecification={"Enabled": True, "AttributeName": "expiration"}
    )
    local_ddb.put_item(TableName=local_table, Item={"id": {"S": "k"}, "expiration": {"N": "1"}})

    # When
    item = local_ddb.get_item(TableName=local_table, Key={"id": {"S": "k"}}, ConsistentRead=True).get("Item")

    # Then: DynamoDB deletes expired items lazily and may still return them; this server never deletes them
    assert item == {"id": {"S": "k"}, "expiration": {"N": "1"}}


def test_local_dynamodb_ttl_enabled_twice_validation_exception(local_ddb, local_table):
    # Given
    spec = {"Enabled": True, "AttributeName": "expiration"}
    local_ddb.update_time_to_live(TableName=local_table, TimeToLiveSpecification=spec)

    # When
    with pytest.raises(ClientError) as raised:
        local_ddb.update_time_to_live(TableName=local_table, TimeToLiveSpecification=spec)

    # Then
    assert _code(raised) == "ValidationException"
    assert raised.value.response["Error"]["Message"] == "TimeToLive is already enabled"


@pytest.mark.parametrize(
    "extra",
    [
        {
            "KeySchema": [
                {"AttributeName": "id", "KeyType": "HASH"},
                {"AttributeName": "sk", "KeyType": "RANGE"},
            ],
            "AttributeDefinitions": [
                {"AttributeName": "id", "AttributeType": "S"},
                {"AttributeName": "sk", "AttributeType": "S"},
            ],
        },
        {
            "GlobalSecondaryIndexes": [
                {
                    "IndexName": "by-x",
                    "KeySchema": [{"AttributeName": "x", "KeyType": "HASH"}],
                    "Projection": {"ProjectionType": "ALL"},
                }
            ],
            "AttributeDefinitions": [
                {"AttributeName": "id", "AttributeType": "S"},
                {"AttributeName": "x", "AttributeType": "S"},
            ],
        },
    ],
    ids=["sort-key", "global-index"],
)
def test_local_dynamodb_unsupported_table_refused_clearly(local_ddb, extra):
    # Given
    params = {
        "TableName": f"u{uuid.uuid4().hex[:12]}",
        "KeySchema": [{"AttributeName": "id", "KeyType": "HASH"}],
        "AttributeDefinitions": [{"AttributeName": "id", "AttributeType": "S"}],
        "BillingMode": "PAY_PER_REQUEST",
        **extra,
    }

    # When
    with pytest.raises(ClientError) as raised:
        local_ddb.create_table(**params)

    # Then
    assert _code(raised) == "ValidationException"
    assert "LocalDynamoDbServer does not support" in raised.value.response["Error"]["Message"]


def test_local_dynamodb_update_arithmetic_and_if_not_exists_applied(local_ddb, local_table):
    # Given
    local_ddb.put_item(TableName=local_table, Item={"id": {"S": "k"}, "n": {"N": "1.5"}})

    # When
    answer = local_ddb.update_item(
        TableName=local_table,
        Key={"id": {"S": "k"}},
        UpdateExpression="SET n = n + :one, m = if_not_exists(m, :zero), o = n - :one",
        ExpressionAttributeValues={":one": {"N": "1"}, ":zero": {"N": "0"}},
        ReturnValues="UPDATED_NEW",
    )

    # Then: every value computed from the old item
    assert answer["Attributes"] == {"n": {"N": "2.5"}, "m": {"N": "0"}, "o": {"N": "0.5"}}


def test_local_dynamodb_scan_pages_by_limit_every_item_once(local_ddb, local_table):
    # Given
    for i in range(25):
        local_ddb.put_item(
            TableName=local_table, Item={"id": {"S": f"k{i:02d}"}, "even": {"BOOL": i % 2 == 0}}
        )

    # When
    seen, start = [], None
    while True:
        page = local_ddb.scan(
            TableName=local_table,
            Limit=10,
            FilterExpression="even = :t",
            ExpressionAttributeValues={":t": {"BOOL": True}},
            **({"ExclusiveStartKey": start} if start else {}),
        )
        seen += [i["id"]["S"] for i in page["Items"]]
        start = page.get("LastEvaluatedKey")
        if not start:
            break

    # Then
    assert sorted(seen) == [f"k{i:02d}" for i in range(0, 25, 2)]


def test_local_dynamodb_concurrent_conditional_puts_exactly_one_wins(local_dynamodb, local_table):
    # Given: 8 threads racing Powertools' save for the same 50 keys
    ddb = _client(local_dynamodb.url, pool=16)
    wins: list[str] = []
    lock = threading.Lock()
    now = time.time()

    def race() -> None:
        for i in range(50):
            try:
                _powertools_put(ddb, local_table, f"k{i}", now)
            except ddb.exceptions.ConditionalCheckFailedException:
                continue
            with lock:
                wins.append(f"k{i}")

    threads = [threading.Thread(target=race) for _ in range(8)]

    # When
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)

    # Then
    assert sorted(wins) == sorted(f"k{i}" for i in range(50))


def test_local_dynamodb_other_process_via_endpoint_env_item_written(local_dynamodb, local_ddb, local_table):
    # Given: a child process whose boto3 finds the server through AWS_ENDPOINT_URL_DYNAMODB
    environ = {k: v for k, v in os.environ.items() if k != "AWS_ENDPOINT_URL"}
    environ.update(
        AWS_ENDPOINT_URL_DYNAMODB=local_dynamodb.url,
        AWS_ACCESS_KEY_ID="testing",
        AWS_SECRET_ACCESS_KEY="testing",
        AWS_DEFAULT_REGION=REGION,
    )
    script = (
        "import boto3, sys; boto3.client('dynamodb').put_item(TableName=sys.argv[1], "
        "Item={'id': {'S': 'from-child'}})"
    )

    # When
    subprocess.run([sys.executable, "-c", script, local_table], env=environ, check=True, timeout=120)

    # Then
    assert "Item" in local_ddb.get_item(TableName=local_table, Key={"id": {"S": "from-child"}})


def test_local_dynamodb_stop_open_connections_closed():
    # Given: a second server with a kept-alive connection
    server = LocalDynamoDbServer().start()
    ddb = _client(server.url)
    ddb.list_tables()

    # When
    server.stop()

    # Then: the client cannot reach it any more
    with pytest.raises(BotoCoreError):  # connection refused or closed, depending on timing
        ddb.list_tables()
