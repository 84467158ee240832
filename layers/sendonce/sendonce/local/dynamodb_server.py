"""A local DynamoDB server for the idempotency table: every item operation O(1), a few tens of µs of CPU.

`sendonce local run` writes ~2 DynamoDB requests per message (Powertools' idempotency records and the batch
journal) from several processes (senders use boto3 with AWS_ENDPOINT_URL_DYNAMODB / AWS_ENDPOINT_URL pointing
at it). moto's server spends ~4.7 ms of CPU on each, the largest single consumer of a 2-core machine; this
one keeps each table as a dict from key to item under one lock and parses each distinct expression once.

It speaks the DynamoDB JSON protocol that botocore uses (POST /, `X-Amz-Target: DynamoDB_20120810.<Op>`,
application/x-amz-json-1.0) and answers errors as DynamoDB does: HTTP 400 and `{"__type":
"com.amazonaws.dynamodb.v20120810#<Code>", "message": ...}`, so that boto3 raises ClientError with that code
(`client.exceptions.ConditionalCheckFailedException`, ...). A failed condition with
ReturnValuesOnConditionCheckFailure=ALL_OLD carries the old item as the error's `Item` member, which botocore
copies into `exc.response["Item"]` (a modelled field of the error shape) and Powertools reads from there.

Only what this project uses, with DynamoDB's semantics (the suite runs the same scenarios against moto's
server and this one, tests/integration/test_local_dynamodb.py):

- Tables: CreateTable (a HASH key of type S, N or B; PAY_PER_REQUEST or PROVISIONED), DescribeTable,
  DeleteTable, ListTables, UpdateTimeToLive, DescribeTimeToLive. A sort key, indexes and streams are refused
  with a ValidationException that says so.
- Items: PutItem, GetItem, DeleteItem, UpdateItem (SET with `path = operand`, `operand + operand`,
  `operand - operand`, `if_not_exists(path, operand)`; REMOVE), BatchGetItem (at most 100 keys,
  UnprocessedKeys always empty), Scan (FilterExpression, ProjectionExpression, Limit, ExclusiveStartKey,
  pages of at most 1 MB, Select=COUNT). ConditionExpression on every write, ReturnValues,
  ReturnValuesOnConditionCheckFailure, ProjectionExpression on reads, ConsistentRead (every read is).
- Condition expressions: OR / AND / NOT (in that precedence, lowest first) and parentheses,
  `attribute_exists(path)`, `attribute_not_exists(path)`, `begins_with(path, operand)`, comparisons
  `= <> < <= > >=`, `BETWEEN ... AND ...` and `IN (...)` between paths (`#name`, plain names, nested
  `a.b[0]`) and `:values`, parsed by a small recursive-descent parser (no eval). Comparisons are typed as
  DynamoDB types them: numbers as decimals (`10` = `10.0`), strings and binaries by their bytes; an ordering
  between different types or on a missing attribute is false, `<>` between them is true.
- Validation as DynamoDB does it, answered as ValidationException: the key (every key attribute, of its
  type, no other, no empty value), numbers (at most 38 significant digits), empty sets, item size (400 KB),
  syntax errors (`Syntax error; token: ..., near: ...`), reserved words used as plain names, names or values
  that an expression uses but the request does not define, and ones it defines but no expression uses,
  redundant parentheses, a key attribute in an UpdateExpression, ExpressionAttributeNames/Values without
  an expression, ReturnValues a call does not take.
- TTL is recorded (DescribeTimeToLive shows it ENABLED at once, as moto does) but items are never expired:
  DynamoDB deletes expired items lazily, up to days later, and GetItem may return them until then; moto never
  deletes them. Code that is correct here must not count on their disappearance, as on AWS.

Deliberate differences from moto, each towards what DynamoDB does:

- Numbers are stored in canonical form (`1.50` reads back as `1.5`, `1e2` as `100`); moto keeps the text.
- Malformed expressions, undefined `#names` / `:values` and a comparison of a number with a string are
  ValidationExceptions (moto answers most of them with an HTML 500); unused ExpressionAttributeValues,
  ExpressionAttributeNames/Values without an expression, and a key of the wrong type are refused (moto
  accepts them).
- UpdateTimeToLive refuses to enable TTL that is already enabled ("TimeToLive is already enabled"); a table
  that does not exist is ResourceNotFoundException (moto: `ResourceNotFound`).
- DeleteTable describes the table as DELETING; no ConsumedCapacity unless ReturnConsumedCapacity asks for
  it (then 1 unit per item read or written, for the table; moto always sends some).

The per-request cost is JSON decoding and encoding plus a dict lookup: parsed expressions are cached by their
text (Powertools sends the same few strings on every call).
"""

from __future__ import annotations

import base64
import bisect
import re
import uuid
from collections.abc import Callable
from decimal import Context, Decimal, InvalidOperation
from functools import lru_cache
from typing import Any

from sendonce.local.http_server import ACCOUNT_ID, REGION, AwsJsonServer, serve_until_stdin_closes

TARGET_PREFIX = "DynamoDB_20120810."
ERROR_PREFIX = "com.amazonaws.dynamodb.v20120810#"

MAX_ITEM_BYTES = 400 * 1024
MAX_BATCH_GET_KEYS = 100
MAX_SCAN_PAGE_BYTES = 1024 * 1024
MAX_NUMBER_DIGITS = 38

_TABLE_NAME = re.compile(r"^[A-Za-z0-9_.-]{3,255}$")
_SCALAR_TYPES = {"S", "N", "B"}
_ALL_TYPES = {"S", "N", "B", "SS", "NS", "BS", "M", "L", "NULL", "BOOL"}
# DynamoDB computes with 38 significant digits; numbers outside its range are refused.
_NUMBER_CONTEXT = Context(prec=MAX_NUMBER_DIGITS)
_MAX_NUMBER = Decimal("9.9999999999999999999999999999999999999E+125")
_MIN_NUMBER = Decimal("1E-130")

# DynamoDB's reserved words: none may appear as a plain attribute name in an expression (only as #name).
_RESERVED_TEXT = """
    ABORT ABSOLUTE ACTION ADD AFTER AGENT AGGREGATE ALL ALLOCATE ALTER ANALYZE AND ANY ARCHIVE ARE ARRAY AS ASC
    ASCII ASENSITIVE ASSERTION ASYMMETRIC AT ATOMIC ATTACH ATTRIBUTE AUTH AUTHORIZATION AUTHORIZE AUTO AVG BACK
    BACKUP BASE BATCH BEFORE BEGIN BETWEEN BIGINT BINARY BIT BLOB BLOCK BOOLEAN BOTH BREADTH BUCKET BULK BY BYTE
    CALL CALLED CALLING CAPACITY CASCADE CASCADED CASE CAST CATALOG CHAR CHARACTER CHECK CLASS CLOB CLOSE
    CLUSTER CLUSTERED CLUSTERING CLUSTERS COALESCE COLLATE COLLATION COLLECTION COLUMN COLUMNS COMBINE COMMENT
    COMMIT COMPACT COMPILE COMPRESS CONDITION CONFLICT CONNECT CONNECTION CONSISTENCY CONSISTENT CONSTRAINT
    CONSTRAINTS CONSTRUCTOR CONSUMED CONTINUE CONVERT COPY CORRESPONDING COUNT COUNTER CREATE CROSS CUBE CURRENT
    CURSOR CYCLE DATA DATABASE DATE DATETIME DAY DEALLOCATE DEC DECIMAL DECLARE DEFAULT DEFERRABLE DEFERRED
    DEFINE DEFINED DEFINITION DELETE DELIMITED DEPTH DEREF DESC DESCRIBE DESCRIPTOR DETACH DETERMINISTIC
    DIAGNOSTICS DIRECTORIES DISABLE DISCONNECT DISTINCT DISTRIBUTE DO DOMAIN DOUBLE DROP DUMP DURATION DYNAMIC
    EACH ELEMENT ELSE ELSEIF EMPTY ENABLE END EQUAL EQUALS ERROR ESCAPE ESCAPED EVAL EVALUATE EXCEEDED EXCEPT
    EXCEPTION EXCEPTIONS EXCLUSIVE EXEC EXECUTE EXISTS EXIT EXPLAIN EXPLODE EXPORT EXPRESSION EXTENDED EXTERNAL
    EXTRACT FAIL FALSE FAMILY FETCH FIELDS FILE FILTER FILTERING FINAL FINISH FIRST FIXED FLATTERN FLOAT FOR
    FORCE FOREIGN FORMAT FORWARD FOUND FREE FROM FULL FUNCTION FUNCTIONS GENERAL GENERATE GET GLOB GLOBAL GO
    GOTO GRANT GREATER GROUP GROUPING HANDLER HASH HAVE HAVING HEAP HIDDEN HOLD HOUR IDENTIFIED IDENTITY IF
    IGNORE IMMEDIATE IMPORT IN INCLUDING INCLUSIVE INCREMENT INCREMENTAL INDEX INDEXED INDEXES INDICATOR
    INFINITE INITIALLY INLINE INNER INNTER INOUT INPUT INSENSITIVE INSERT INSTEAD INT INTEGER INTERSECT INTERVAL
    INTO INVALIDATE IS ISOLATION ITEM ITEMS ITERATE JOIN KEY KEYS LAG LANGUAGE LARGE LAST LATERAL LEAD LEADING
    LEAVE LEFT LENGTH LESS LEVEL LIKE LIMIT LIMITED LINES LIST LOAD LOCAL LOCALTIME LOCALTIMESTAMP LOCATION
    LOCATOR LOCK LOCKS LOG LOGED LONG LOOP LOWER MAP MATCH MATERIALIZED MAX MAXLEN MEMBER MERGE METHOD METRICS
    MIN MINUS MINUTE MISSING MOD MODE MODIFIES MODIFY MODULE MONTH MULTI MULTISET NAME NAMES NATIONAL NATURAL
    NCHAR NCLOB NEW NEXT NO NONE NOT NULL NULLIF NUMBER NUMERIC OBJECT OF OFFLINE OFFSET OLD ON ONLINE ONLY
    OPAQUE OPEN OPERATOR OPTION OR ORDER ORDINALITY OTHER OTHERS OUT OUTER OUTPUT OVER OVERLAPS OVERRIDE OWNER
    PAD PARALLEL PARAMETER PARAMETERS PARTIAL PARTITION PARTITIONED PARTITIONS PATH PERCENT PERCENTILE
    PERMISSION PERMISSIONS PIPE PIPELINED PLAN POOL POSITION PRECISION PREPARE PRESERVE PRIMARY PRIOR PRIVATE
    PRIVILEGES PROCEDURE PROCESSED PROJECT PROJECTION PROPERTY PROVISIONING PUBLIC PUT QUERY QUIT QUORUM RAISE
    RANDOM RANGE RANK RAW READ READS REAL REBUILD RECORD RECURSIVE REDUCE REF REFERENCE REFERENCES REFERENCING
    REGEXP REGION REINDEX RELATIVE RELEASE REMAINDER RENAME REPEAT REPLACE REQUEST RESET RESIGNAL RESOURCE
    RESPONSE RESTORE RESTRICT RESULT RETURN RETURNING RETURNS REVERSE REVOKE RIGHT ROLE ROLES ROLLBACK ROLLUP
    ROUTINE ROW ROWS RULE RULES SAMPLE SATISFIES SAVE SAVEPOINT SCAN SCHEMA SCOPE SCROLL SEARCH SECOND SECTION
    SEGMENT SEGMENTS SELECT SELF SEMI SENSITIVE SEPARATE SEQUENCE SERIALIZABLE SESSION SET SETS SHARD SHARE
    SHARED SHORT SHOW SIGNAL SIMILAR SIZE SKEWED SMALLINT SNAPSHOT SOME SOURCE SPACE SPACES SPARSE SPECIFIC
    SPECIFICTYPE SPLIT SQL SQLCODE SQLERROR SQLEXCEPTION SQLSTATE SQLWARNING START STATE STATIC STATUS STORAGE
    STORE STORED STREAM STRING STRUCT STYLE SUB SUBMULTISET SUBPARTITION SUBSTRING SUBTYPE SUM SUPER SYMMETRIC
    SYNONYM SYSTEM TABLE TABLESAMPLE TEMP TEMPORARY TERMINATED TEXT THAN THEN THROUGHPUT TIME TIMESTAMP TIMEZONE
    TINYINT TO TOKEN TOTAL TOUCH TRAILING TRANSACTION TRANSFORM TRANSLATE TRANSLATION TREAT TRIGGER TRIM TRUE
    TRUNCATE TTL TUPLE TYPE UNDER UNDO UNION UNIQUE UNIT UNKNOWN UNLOGGED UNNEST UNPROCESSED UNSIGNED UNTIL
    UPDATE UPPER URL USAGE USE USER USERS USING UUID VACUUM VALUE VALUED VALUES VARCHAR VARIABLE VARIANCE VARINT
    VARYING VIEW VIEWS VIRTUAL VOID WAIT WHEN WHENEVER WHERE WHILE WINDOW WITH WITHIN WITHOUT WORK WRAPPED WRITE
    YEAR ZONE
"""
_RESERVED_WORDS = frozenset(_RESERVED_TEXT.split())


class DynamoDbError(Exception):
    """An error answered to the client: its code, a message, the HTTP status, and the old item if asked."""

    def __init__(self, code: str, message: str, status: int = 400, item: dict | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.status = status
        self.item = item


def _validation(message: str) -> DynamoDbError:
    return DynamoDbError("ValidationException", message)


def _not_found(detail: str = "") -> DynamoDbError:
    return DynamoDbError("ResourceNotFoundException", "Requested resource not found" + detail)


def _unsupported(what: str) -> DynamoDbError:
    return _validation(f"LocalDynamoDbServer does not support {what}.")


# --- attribute values ------------------------------------------------------------------------------------


def _number(text: Any, where: str = "") -> str:
    """The canonical text of a DynamoDB number (as DynamoDB returns it), or the ValidationException it gives."""
    if not isinstance(text, str):
        raise _validation(f"The parameter cannot be converted to a numeric value{where}")
    try:
        value = Decimal(text)
    except InvalidOperation:
        raise _validation(f"The parameter cannot be converted to a numeric value: {text}") from None
    if not value.is_finite():
        raise _validation(f"The parameter cannot be converted to a numeric value: {text}")
    if value.is_zero():
        return "0"
    normal = value.normalize(Context(prec=1000))
    if len(normal.as_tuple().digits) > MAX_NUMBER_DIGITS:
        raise _validation("Attempting to store more than 38 significant digits in a Number")
    if abs(normal) > _MAX_NUMBER:
        raise _validation(
            "Number overflow. Attempting to store a number with magnitude larger than supported range"
        )
    if abs(normal) < _MIN_NUMBER:
        raise _validation(
            "Number underflow. Attempting to store a number with magnitude smaller than supported range"
        )
    return format(normal, "f")


def _binary(value: Any) -> str:
    if not isinstance(value, str):
        raise _validation("One or more parameter values were invalid: Invalid binary value")
    try:
        base64.b64decode(value, validate=True)
    except ValueError:
        raise _validation("One or more parameter values were invalid: Invalid binary value") from None
    return value


_SET_NAMES = {"SS": "string", "NS": "number", "BS": "binary"}


def _value(value: Any, name: str) -> dict:
    """A checked copy of an AttributeValue, numbers in canonical form (`name` names it in errors)."""
    if not isinstance(value, dict) or not value:
        raise _validation(
            "Supplied AttributeValue is empty, must contain exactly one of the supported datatypes"
        )
    if len(value) != 1:
        raise _validation(
            "Supplied AttributeValue has more than one datatypes set, must contain exactly one of the supported "
            "datatypes"
        )
    [(kind, data)] = value.items()
    if kind == "S":
        if not isinstance(data, str):
            raise _validation(f"One or more parameter values were invalid: Invalid string value for {name}")
        return value
    if kind == "N":
        return {"N": _number(data)}
    if kind == "B":
        return {"B": _binary(data)}
    if kind in _SET_NAMES:
        if not isinstance(data, list) or not data:
            raise _validation(
                f"One or more parameter values were invalid: An {_SET_NAMES[kind]} set  may not be empty"
            )
        if kind == "NS":
            members = [_number(v) for v in data]
            unique = {Decimal(m) for m in members}
        else:
            members = [_binary(v) if kind == "BS" else v for v in data]
            if kind == "SS" and not all(isinstance(v, str) for v in members):
                raise _validation(f"One or more parameter values were invalid: Invalid string set for {name}")
            unique = set(members)
        if len(unique) != len(members):
            raise _validation(
                f"One or more parameter values were invalid: Input collection {data} contains duplicates."
            )
        return {kind: members}
    if kind == "M":
        if not isinstance(data, dict):
            raise _validation(f"One or more parameter values were invalid: Invalid map value for {name}")
        return {"M": {k: _value(v, k) for k, v in data.items()}}
    if kind == "L":
        if not isinstance(data, list):
            raise _validation(f"One or more parameter values were invalid: Invalid list value for {name}")
        return {"L": [_value(v, name) for v in data]}
    if kind == "NULL":
        if data is not True:
            raise _validation(
                "One or more parameter values were invalid: Null attribute value types must have the value of true"
            )
        return value
    if kind == "BOOL":
        if not isinstance(data, bool):
            raise _validation(f"One or more parameter values were invalid: Invalid boolean value for {name}")
        return value
    raise _validation(f"Supplied AttributeValue has an unknown datatype: {kind}")


def _size(name: str, value: dict) -> int:
    """DynamoDB's size of one attribute (name and value), as its documentation counts it."""
    [(kind, data)] = value.items()
    size = len(name.encode())
    if kind == "S":
        return size + len(data.encode())
    if kind == "N":
        return size + _number_size(data)
    if kind == "B":
        return size + len(base64.b64decode(data))
    if kind == "SS":
        return size + sum(len(v.encode()) for v in data)
    if kind == "NS":
        return size + sum(_number_size(v) for v in data)
    if kind == "BS":
        return size + sum(len(base64.b64decode(v)) for v in data)
    if kind == "M":
        return size + 3 + sum(1 + _size(k, v) for k, v in data.items())
    if kind == "L":
        return size + 3 + sum(1 + _size("", v) for v in data)
    return size + 1  # NULL, BOOL


def _number_size(text: str) -> int:
    return (len(text.replace("-", "").replace(".", "").strip("0")) + 1) // 2 + 1


def _item_size(item: dict) -> int:
    return sum(_size(name, value) for name, value in item.items())


def _bytes_of(value: dict) -> bytes | None:
    """The bytes DynamoDB orders a scalar by (None: not orderable)."""
    if "S" in value:
        return value["S"].encode()
    if "B" in value:
        return base64.b64decode(value["B"])
    return None


def _equal(a: dict, b: dict) -> bool:
    """DynamoDB's `=`: same type and same value (numbers as decimals, sets unordered)."""
    [(kind, x)] = a.items()
    [(other, y)] = b.items()
    if kind != other:
        return False
    if kind == "N":
        return Decimal(x) == Decimal(y)
    if kind == "B":
        return base64.b64decode(x) == base64.b64decode(y)
    if kind == "NS":
        return {Decimal(v) for v in x} == {Decimal(v) for v in y}
    if kind == "BS":
        return {base64.b64decode(v) for v in x} == {base64.b64decode(v) for v in y}
    if kind == "SS":
        return set(x) == set(y)
    if kind == "M":
        return x.keys() == y.keys() and all(_equal(x[k], y[k]) for k in x)
    if kind == "L":
        return len(x) == len(y) and all(_equal(p, q) for p, q in zip(x, y))
    return x == y


def _ordered(a: dict | None, b: dict | None) -> tuple[Any, Any] | None:
    """Two values as comparable Python values, or None when DynamoDB's ordering of them is false."""
    if a is None or b is None:
        return None
    if "N" in a and "N" in b:
        return Decimal(a["N"]), Decimal(b["N"])
    if ("S" in a and "S" in b) or ("B" in a and "B" in b):
        return _bytes_of(a), _bytes_of(b)
    return None


# --- expressions -----------------------------------------------------------------------------------------

_TOKEN = re.compile(
    r"\s*(?:(?P<name>#[A-Za-z0-9_]+)|(?P<value>:[A-Za-z0-9_]+)|(?P<word>[A-Za-z_][A-Za-z0-9_]*)"
    r"|(?P<index>\[\s*[0-9]+\s*\])|(?P<op><>|<=|>=|[=<>(),.+-])|(?P<bad>\S))"
)
_EOF = "<EOF>"
_COMPARATORS = {"=", "<>", "<", "<=", ">", ">="}
_CONDITION_FUNCTIONS = {"attribute_exists", "attribute_not_exists", "begins_with"}
_KNOWN_FUNCTIONS = {
    *_CONDITION_FUNCTIONS,
    "attribute_type",
    "contains",
    "size",
    "if_not_exists",
    "list_append",
}


class _Parsed:
    """A parsed expression: its tree, and the #names and :values it uses."""

    __slots__ = ("names", "tree", "values")

    def __init__(self, tree: Any, names: frozenset[str], values: frozenset[str]) -> None:
        self.tree = tree
        self.names = names
        self.values = values


class _Parser:
    """Recursive descent over one expression; trees are tuples, paths are tuples of str (name) / int (index).

    Operands are ("path", elements) or ("value", ":v"), element names still as written (#name or plain).
    """

    def __init__(self, text: str, kind: str) -> None:
        self.text = text
        self.kind = kind  # ConditionExpression, UpdateExpression, ProjectionExpression, FilterExpression
        self.tokens: list[tuple[str, str, int, int]] = []  # (type, text, start, end)
        for match in _TOKEN.finditer(text):
            group = match.lastgroup
            if group is None:
                break
            if group == "bad":
                self.tokens = [*self.tokens, ("op", match.group(group), match.start(group), match.end(group))]
                self._fail_at(len(self.tokens) - 1)
            self.tokens.append((group, match.group(group), match.start(group), match.end(group)))
        self.position = 0
        self.names: set[str] = set()
        self.values: set[str] = set()

    # --- tokens ----------------------------------------------------------------------------------------

    def _peek(self, offset: int = 0) -> tuple[str, str, int, int] | None:
        index = self.position + offset
        return self.tokens[index] if index < len(self.tokens) else None

    def _is(self, text: str, offset: int = 0) -> bool:
        token = self._peek(offset)
        if token is None:
            return False
        if token[0] == "word":
            return token[1].upper() == text
        return token[0] == "op" and token[1] == text

    def _take(self, text: str) -> None:
        if not self._is(text):
            self._fail_at(self.position)
        self.position += 1

    def _fail_at(self, index: int) -> None:
        """DynamoDB's syntax error: the offending token, and the text from the token before it to it (from it to
        the one after it when it is the first)."""
        if index >= len(self.tokens):
            token = _EOF
            near = self.text[self.tokens[-1][2] :].strip() if self.tokens else ""
        else:
            token = self.tokens[index][1]
            first, last = (index - 1, index) if index > 0 else (index, min(index + 1, len(self.tokens) - 1))
            near = self.text[self.tokens[first][2] : self.tokens[last][3]]
        raise _validation(f'Invalid {self.kind}: Syntax error; token: "{token}", near: "{near}"')

    def _error(self, message: str) -> DynamoDbError:
        return _validation(f"Invalid {self.kind}: {message}")

    def done(self) -> None:
        if self.position != len(self.tokens):
            self._fail_at(self.position)

    # --- operands --------------------------------------------------------------------------------------

    def path(self) -> tuple:
        elements: list[Any] = [self._element()]
        while True:
            token = self._peek()
            if token is not None and token[0] == "op" and token[1] == ".":
                self.position += 1
                elements.append(self._element())
            elif token is not None and token[0] == "index":
                self.position += 1
                elements.append(int(token[1].strip("[] ")))
            else:
                return ("path", tuple(elements))

    def _element(self) -> str:
        token = self._peek()
        if token is None or token[0] not in ("name", "word"):
            self._fail_at(self.position)
        self.position += 1
        if token[0] == "name":
            self.names.add(token[1])
        elif token[1].upper() in _RESERVED_WORDS:
            raise self._error(f"Attribute name is a reserved keyword; reserved keyword: {token[1]}")
        return token[1]

    def operand(self) -> tuple:
        token = self._peek()
        if token is None:
            self._fail_at(self.position)
        if token[0] == "value":
            self.position += 1
            self.values.add(token[1])
            return ("value", token[1])
        if token[0] == "word" and self._is("(", 1):
            return self._function()
        return self.path()

    def _function(self) -> tuple:
        name = self._peek()[1]
        if name not in _KNOWN_FUNCTIONS:
            raise self._error(f"Invalid function name; function: {name}")
        self.position += 2  # the name and "("
        arguments = [self.operand()]
        while self._is(","):
            self.position += 1
            arguments.append(self.operand())
        self._take(")")
        return ("function", name, tuple(arguments))

    # --- conditions ------------------------------------------------------------------------------------

    def condition(self) -> tuple:
        left = self._and()
        while self._is("OR"):
            self.position += 1
            left = ("or", left, self._and())
        return left

    def _and(self) -> tuple:
        left = self._not()
        while self._is("AND"):
            self.position += 1
            left = ("and", left, self._not())
        return left

    def _not(self) -> tuple:
        if self._is("NOT"):
            self.position += 1
            return ("not", self._not())
        return self._primary()

    def _primary(self) -> tuple:
        if self._is("("):
            self.position += 1
            if self._is("("):
                # DynamoDB refuses `((...))` outright, whatever is inside.
                depth, index = 0, self.position
                while index < len(self.tokens):
                    text = self.tokens[index][1]
                    depth += text == "(" and self.tokens[index][0] == "op"
                    depth -= text == ")" and self.tokens[index][0] == "op"
                    if depth == 0:
                        break
                    index += 1
                if index + 1 < len(self.tokens) and self.tokens[index + 1][1] == ")":
                    raise self._error("The expression has redundant parentheses;")
            inner = self.condition()
            self._take(")")
            return inner
        left = self.operand()
        if left[0] == "function" and left[1] in _CONDITION_FUNCTIONS:
            return self._condition_function(left)
        if left[0] == "function" and left[1] in ("contains", "attribute_type"):
            raise _unsupported(f"the function {left[1]} in a {self.kind}")
        token = self._peek()
        if token is not None and token[0] == "op" and token[1] in _COMPARATORS:
            self.position += 1
            right = self.operand()
            self._check_operand(right, token[1])
            self._check_operand(left, token[1])
            return ("compare", token[1], left, right)
        if self._is("BETWEEN"):
            self.position += 1
            low = self.operand()
            self._take("AND")
            high = self.operand()
            for operand in (left, low, high):
                self._check_operand(operand, "BETWEEN")
            return ("between", left, low, high)
        if self._is("IN"):
            self.position += 1
            self._take("(")
            options = [self.operand()]
            while self._is(","):
                self.position += 1
                options.append(self.operand())
            self._take(")")
            return ("in", left, tuple(options))
        self._fail_at(self.position)
        raise AssertionError  # unreachable: _fail_at raises

    def _check_operand(self, operand: tuple, operator: str) -> None:
        if operand[0] == "function":
            if operand[1] in _CONDITION_FUNCTIONS:
                raise self._error(
                    f"The function is not allowed to be used this way in an expression; function: {operand[1]}"
                )
            raise _unsupported(f"the function {operand[1]} in a {self.kind}")

    def _condition_function(self, call: tuple) -> tuple:
        _kind, name, arguments = call
        expected = 2 if name == "begins_with" else 1
        if len(arguments) != expected:
            raise self._error(
                f"Incorrect number of operands for operator or function; operator or function: {name}, "
                f"number of operands: {len(arguments)}"
            )
        if arguments[0][0] != "path":
            raise self._error(f"Operator or function requires a document path; operator or function: {name}")
        if name == "begins_with":
            self._check_operand(arguments[1], name)
            return ("begins_with", arguments[0], arguments[1])
        return (name, arguments[0])

    # --- updates ---------------------------------------------------------------------------------------

    def update(self) -> tuple:
        sets: list[tuple] = []
        removes: list[tuple] = []
        seen: set[str] = set()
        if not self.tokens:
            raise self._error("The expression can not be empty;")
        while self.position < len(self.tokens):
            token = self._peek()
            section = token[1].upper() if token[0] == "word" else ""
            if section not in ("SET", "REMOVE", "ADD", "DELETE"):
                self._fail_at(self.position)
            if section in seen:
                raise _validation(
                    f'1 validation error detected: Invalid UpdateExpression: The "{section}" section can only be '
                    "used once in an update expression;"
                )
            if section in ("ADD", "DELETE"):
                raise _unsupported(f"{section} in an UpdateExpression (only SET and REMOVE)")
            seen.add(section)
            self.position += 1
            while True:
                if section == "SET":
                    target = self.path()
                    self._take("=")
                    sets.append((target, self._set_value()))
                else:
                    removes.append(self.path())
                if not self._is(","):
                    break
                self.position += 1
        return ("update", tuple(sets), tuple(removes))

    def _set_value(self) -> tuple:
        left = self._set_operand()
        if self._is("+") or self._is("-"):
            operator = self._peek()[1]
            self.position += 1
            return ("arithmetic", operator, left, self._set_operand())
        return left

    def _set_operand(self) -> tuple:
        operand = self.operand()
        if operand[0] == "function":
            name, arguments = operand[1], operand[2]
            if name == "list_append":
                raise _unsupported("list_append in an UpdateExpression")
            if name != "if_not_exists":
                raise self._error(f"The function is not allowed in an update expression; function: {name}")
            if len(arguments) != 2 or arguments[0][0] != "path":
                raise self._error(
                    "Incorrect number of operands for operator or function; operator or function: if_not_exists, "
                    f"number of operands: {len(arguments)}"
                )
        return operand

    def projection(self) -> tuple:
        paths = [self.path()]
        while self._is(","):
            self.position += 1
            paths.append(self.path())
        return ("projection", tuple(paths))


@lru_cache(maxsize=1024)
def _parse(kind: str, text: str) -> _Parsed:
    """Parse an expression once; the same text (with other names and values) reuses the tree."""
    if not text.strip():
        raise _validation(f"Invalid {kind}: The expression can not be empty;")
    parser = _Parser(text, kind)
    if kind == "UpdateExpression":
        tree = parser.update()
    elif kind == "ProjectionExpression":
        tree = parser.projection()
    else:
        tree = parser.condition()
    parser.done()
    return _Parsed(tree, frozenset(parser.names), frozenset(parser.values))


class _Expressions:
    """The expressions of one request, checked together against its ExpressionAttributeNames/Values."""

    def __init__(self, params: dict, kinds: dict[str, str]) -> None:
        names = params.get("ExpressionAttributeNames")
        values = params.get("ExpressionAttributeValues")
        self.parsed: dict[str, _Parsed] = {}
        for parameter, kind in kinds.items():
            text = params.get(parameter)
            if text is None:
                continue
            if not isinstance(text, str):
                raise _validation(f"{parameter} must be a string")
            self.parsed[parameter] = _parse(kind, text)
        if names is not None and not isinstance(names, dict):
            raise _validation("ExpressionAttributeNames must be a map")
        if values is not None and not isinstance(values, dict):
            raise _validation("ExpressionAttributeValues must be a map")
        if not self.parsed:
            if names is not None:
                raise _validation("ExpressionAttributeNames can only be specified when using expressions")
            if values is not None:
                raise _validation("ExpressionAttributeValues can only be specified when using expressions")
        if names is not None and not names:
            raise _validation("ExpressionAttributeNames must not be empty")
        if values is not None and not values:
            raise _validation("ExpressionAttributeValues must not be empty")
        self.names: dict[str, str] = names or {}
        self.values: dict[str, dict] = {}
        for key, value in (values or {}).items():
            try:
                self.values[key] = _value(value, key)
            except DynamoDbError as error:
                raise _validation(
                    f"ExpressionAttributeValues contains invalid value: {error.message} for key {key}"
                ) from None
        used_names: set[str] = set()
        used_values: set[str] = set()
        for parameter, parsed in self.parsed.items():
            kind = kinds[parameter]
            for name in sorted(parsed.names):
                if name not in self.names:
                    raise _validation(
                        f"Invalid {kind}: An expression attribute name used in the document path is not defined; "
                        f"attribute name: {name}"
                    )
            for value in sorted(parsed.values):
                if value not in self.values:
                    raise _validation(
                        f"Invalid {kind}: An expression attribute value used in expression is not defined; "
                        f"attribute value: {value}"
                    )
            used_names |= parsed.names
            used_values |= parsed.values
        unused = sorted(set(self.names) - used_names)
        if unused:
            raise _validation(
                f"Value provided in ExpressionAttributeNames unused in expressions: keys: {{{', '.join(unused)}}}"
            )
        unused = sorted(set(self.values) - used_values)
        if unused:
            raise _validation(
                f"Value provided in ExpressionAttributeValues unused in expressions: keys: {{{', '.join(unused)}}}"
            )

    def tree(self, parameter: str) -> Any:
        parsed = self.parsed.get(parameter)
        return parsed.tree if parsed is not None else None

    def resolve(self, path: tuple) -> tuple:
        """A path with its #names replaced by the attribute names they stand for."""
        return tuple(self.names[e] if isinstance(e, str) and e.startswith("#") else e for e in path)

    # --- evaluation ------------------------------------------------------------------------------------

    def lookup(self, item: dict | None, path: tuple) -> dict | None:
        if item is None:
            return None
        elements = self.resolve(path)
        value = item.get(elements[0])
        for element in elements[1:]:
            if value is None:
                return None
            if isinstance(element, int):
                items = value.get("L")
                value = items[element] if items is not None and element < len(items) else None
            else:
                members = value.get("M")
                value = members.get(element) if members is not None else None
        return value

    def operand(self, item: dict | None, operand: tuple) -> dict | None:
        if operand[0] == "value":
            return self.values[operand[1]]
        return self.lookup(item, operand[1])

    def holds(self, tree: tuple, item: dict | None) -> bool:
        """Whether the condition holds for the item (None: no item)."""
        kind = tree[0]
        if kind == "or":
            return self.holds(tree[1], item) or self.holds(tree[2], item)
        if kind == "and":
            return self.holds(tree[1], item) and self.holds(tree[2], item)
        if kind == "not":
            return not self.holds(tree[1], item)
        if kind == "attribute_exists":
            return self.lookup(item, tree[1][1]) is not None
        if kind == "attribute_not_exists":
            return self.lookup(item, tree[1][1]) is None
        if kind == "compare":
            return self._compare(tree[1], self.operand(item, tree[2]), self.operand(item, tree[3]))
        if kind == "between":
            value = self.operand(item, tree[1])
            low, high = self.operand(item, tree[2]), self.operand(item, tree[3])
            return self._compare(">=", value, low) and self._compare("<=", value, high)
        if kind == "in":
            value = self.operand(item, tree[1])
            return value is not None and any(
                (option := self.operand(item, o)) is not None and _equal(value, option) for o in tree[2]
            )
        if kind == "begins_with":
            value, prefix = self.operand(item, tree[1]), self.operand(item, tree[2])
            pair = _ordered(value, prefix)
            return pair is not None and not isinstance(pair[0], Decimal) and pair[0].startswith(pair[1])
        raise AssertionError(f"unknown condition {kind}")

    @staticmethod
    def _compare(operator: str, left: dict | None, right: dict | None) -> bool:
        if operator == "=":
            return left is not None and right is not None and _equal(left, right)
        if operator == "<>":
            # As in DynamoDB (and moto): a missing attribute is not equal to anything.
            return not (left is not None and right is not None and _equal(left, right))
        pair = _ordered(left, right)
        if pair is None:
            return False
        a, b = pair
        return {"<": a < b, "<=": a <= b, ">": a > b, ">=": a >= b}[operator]

    def check_values(self, tree: tuple, kind: str) -> None:
        """Refuse, before any item is read, an ordering whose :value operand has a type it cannot order."""
        if tree is None:
            return
        if tree[0] in ("or", "and"):
            self.check_values(tree[1], kind)
            self.check_values(tree[2], kind)
        elif tree[0] == "not":
            self.check_values(tree[1], kind)
        elif tree[0] in ("compare", "between", "begins_with"):
            operator = (
                tree[1] if tree[0] == "compare" else tree[0].upper() if tree[0] == "between" else tree[0]
            )
            if operator in ("=", "<>"):
                return
            operands = tree[2:] if tree[0] == "compare" else tree[1:]
            for operand in operands:
                if operand[0] == "value":
                    [value_type] = self.values[operand[1]]
                    allowed = {"S", "B"} if operator == "begins_with" else _SCALAR_TYPES
                    if value_type not in allowed:
                        raise _validation(
                            f"Invalid {kind}: Incorrect operand type for operator or function; operator or "
                            f"function: {operator}, operand type: {value_type}"
                        )


def _project(expressions: _Expressions, tree: tuple | None, item: dict) -> dict:
    """The attributes a ProjectionExpression names (top-level ones, and nested map members)."""
    if tree is None:
        return item
    result: dict = {}
    for path in tree[1]:
        elements = expressions.resolve(path[1])
        if any(isinstance(e, int) for e in elements):
            raise _unsupported("list indexes in a ProjectionExpression")
        value = expressions.lookup(item, path[1])
        if value is None:
            continue
        target = result
        for element in elements[:-1]:
            target = target.setdefault(element, {"M": {}})["M"]
        target[elements[-1]] = value
    return result


# --- tables ----------------------------------------------------------------------------------------------


class _Table:
    """One table: items by key, their sizes, and what DescribeTable tells. Used under the server's lock."""

    def __init__(self, name: str, key_name: str, key_type: str, params: dict, arn: str, now: float) -> None:
        self.name = name
        self.key_name = key_name
        self.key_type = key_type
        self.arn = arn
        self.created = round(now, 3)
        self.billing_mode = params.get("BillingMode") or "PROVISIONED"
        throughput = params.get("ProvisionedThroughput") or {}
        self.read_capacity = int(throughput.get("ReadCapacityUnits", 0))
        self.write_capacity = int(throughput.get("WriteCapacityUnits", 0))
        self.items: dict[Any, dict] = {}
        self.sizes: dict[Any, int] = {}
        self.total_size = 0
        self.ttl_attribute: str | None = None
        self.ttl_enabled = False

    def describe(self, status: str = "ACTIVE") -> dict:
        description: dict[str, Any] = {
            "AttributeDefinitions": [{"AttributeName": self.key_name, "AttributeType": self.key_type}],
            "TableName": self.name,
            "KeySchema": [{"AttributeName": self.key_name, "KeyType": "HASH"}],
            "TableStatus": status,
            "CreationDateTime": self.created,
            "ProvisionedThroughput": {
                "NumberOfDecreasesToday": 0,
                "ReadCapacityUnits": self.read_capacity,
                "WriteCapacityUnits": self.write_capacity,
            },
            "TableSizeBytes": self.total_size,
            "ItemCount": len(self.items),
            "TableArn": self.arn,
            "TableId": str(uuid.uuid5(uuid.NAMESPACE_URL, self.arn)),
            "DeletionProtectionEnabled": False,
        }
        if self.billing_mode == "PAY_PER_REQUEST":
            description["BillingModeSummary"] = {"BillingMode": "PAY_PER_REQUEST"}
        return description

    def key_of(self, key: Any) -> Any:
        """The dict key of a request's Key, checked as DynamoDB checks it."""
        if not isinstance(key, dict) or set(key) != {self.key_name}:
            raise _validation("The provided key element does not match the schema")
        value = key[self.key_name]
        if not isinstance(value, dict) or set(value) != {self.key_type}:
            raise _validation("The provided key element does not match the schema")
        return self._key_value(value)

    def _key_value(self, value: dict) -> Any:
        data = value[self.key_type]
        if self.key_type == "N":
            return Decimal(_number(data))
        if self.key_type == "B":
            data = base64.b64decode(_binary(data))
        elif not isinstance(data, str):
            raise _validation("The provided key element does not match the schema")
        if not data:
            raise _validation(
                "One or more parameter values are not valid. The AttributeValue for a key attribute cannot contain "
                f"an empty {'string' if self.key_type == 'S' else 'binary'} value. Key: {self.key_name}"
            )
        return data

    def item_key(self, item: dict) -> Any:
        """The dict key of an item to store (checked: it has the key attribute, of its type)."""
        value = item.get(self.key_name)
        if value is None:
            raise _validation(
                f"One or more parameter values were invalid: Missing the key {self.key_name} in the item"
            )
        [value_type] = value
        if value_type != self.key_type:
            raise _validation(
                "One or more parameter values were invalid: Type mismatch for key "
                f"{self.key_name} expected: {self.key_type} actual: {value_type}"
            )
        return self._key_value(value)

    def store(self, key: Any, item: dict) -> None:
        size = _item_size(item)
        if size > MAX_ITEM_BYTES:
            raise _validation("Item size has exceeded the maximum allowed size")
        self.total_size += size - self.sizes.get(key, 0)
        self.items[key] = item
        self.sizes[key] = size

    def remove(self, key: Any) -> dict | None:
        item = self.items.pop(key, None)
        if item is not None:
            self.total_size -= self.sizes.pop(key)
        return item


def _sort_key(key: Any) -> Any:
    return key.encode() if isinstance(key, str) else key


class LocalDynamoDbServer(AwsJsonServer):
    """DynamoDB on loopback over its JSON protocol: tables as dicts, O(1) per item operation.

    Parameters
    ----------
    account_id, region
        What table ARNs name.
    clock
        Seconds since the epoch for creation times; `time.time` unless a test drives time itself.

    Examples
    --------
    >>> with LocalDynamoDbServer() as ddb:                                   # doctest: +SKIP
    ...     client = boto3.client("dynamodb", endpoint_url=ddb.url, region_name="us-east-1")
    """

    def __init__(
        self, account_id: str = ACCOUNT_ID, region: str = REGION, clock: Callable[[], float] | None = None
    ) -> None:
        super().__init__(account_id, region, clock)
        self._tables: dict[str, _Table] = {}
        self._operations: dict[str, Callable[[dict], dict]] = {
            "CreateTable": self._create_table,
            "DescribeTable": self._describe_table,
            "DeleteTable": self._delete_table,
            "ListTables": self._list_tables,
            "UpdateTimeToLive": self._update_time_to_live,
            "DescribeTimeToLive": self._describe_time_to_live,
            "PutItem": self._put_item,
            "GetItem": self._get_item,
            "DeleteItem": self._delete_item,
            "UpdateItem": self._update_item,
            "BatchGetItem": self._batch_get_item,
            "Scan": self._scan,
        }

    # --- lifecycle -------------------------------------------------------------------------------------

    target_prefix = TARGET_PREFIX

    def error_answer(self, exc: Exception) -> tuple[int, dict, dict[str, str]]:
        """A `DynamoDbError` as DynamoDB answers it (with the old item when asked); anything else a 500."""
        if isinstance(exc, DynamoDbError):
            body: dict[str, Any] = {"__type": ERROR_PREFIX + exc.code, "message": exc.message}
            if exc.item is not None:
                body["Item"] = exc.item
            return exc.status, body, {}
        return 500, {"__type": ERROR_PREFIX + "InternalServerError", "message": f"{type(exc).__name__}: {exc}"}, {}

    def refused_target(self) -> Exception:
        return DynamoDbError(
            "UnknownOperationException",
            f"LocalDynamoDbServer speaks only the DynamoDB JSON protocol (X-Amz-Target: {TARGET_PREFIX}<Operation>).",
        )

    def refused_json(self) -> Exception:
        return DynamoDbError("SerializationException", "The request body is not valid JSON.")

    # --- dispatch --------------------------------------------------------------------------------------

    def handle(self, operation: str, params: dict) -> dict:
        """Run one operation on its JSON parameters and return its JSON result.

        Raises
        ------
        DynamoDbError
            What the client is answered when the request is refused.
        """
        method = self._operations.get(operation)
        if method is None:
            raise DynamoDbError(
                "UnknownOperationException",
                f"LocalDynamoDbServer does not implement {operation or '(none)'}.",
            )
        if not isinstance(params, dict):
            raise _validation("The request body must be a JSON object.")
        for legacy in (
            "Expected",
            "AttributeUpdates",
            "AttributesToGet",
            "ScanFilter",
            "ConditionalOperator",
        ):
            if legacy in params:
                raise _unsupported(f"the legacy parameter {legacy} (use expressions)")
        return method(params)

    def _table(self, params: dict) -> _Table:
        """The table a request names; call under the lock."""
        name = params.get("TableName")
        table = self._tables.get(name) if isinstance(name, str) else None
        if table is None:
            raise _not_found()
        return table

    # --- tables ----------------------------------------------------------------------------------------

    def _create_table(self, params: dict) -> dict:
        name = params.get("TableName")
        if not isinstance(name, str) or not _TABLE_NAME.match(name):
            raise _validation(
                f"1 validation error detected: Value '{name}' at 'tableName' failed to satisfy constraint: Member "
                "must satisfy regular expression pattern: [a-zA-Z0-9_.-]+ and have length between 3 and 255"
            )
        for refused in ("GlobalSecondaryIndexes", "LocalSecondaryIndexes", "StreamSpecification"):
            if params.get(refused):
                raise _unsupported(refused)
        schema = params.get("KeySchema") or []
        definitions = params.get("AttributeDefinitions") or []
        if len(schema) != 1 or not isinstance(schema[0], dict) or schema[0].get("KeyType") != "HASH":
            raise _unsupported("this KeySchema: only a single HASH key (no sort key)")
        key_name = schema[0].get("AttributeName")
        types = {d.get("AttributeName"): d.get("AttributeType") for d in definitions if isinstance(d, dict)}
        if set(types) != {key_name}:
            raise _validation(
                "One or more parameter values were invalid: Number of attributes in KeySchema does not exactly "
                "match number of attributes defined in AttributeDefinitions"
            )
        if types[key_name] not in _SCALAR_TYPES:
            raise _validation(
                f"1 validation error detected: Value '{types[key_name]}' at 'attributeDefinitions.1.member."
                "attributeType' failed to satisfy constraint: Member must satisfy enum value set: [B, N, S]"
            )
        billing = params.get("BillingMode") or "PROVISIONED"
        throughput = params.get("ProvisionedThroughput")
        if billing == "PROVISIONED" and not (
            throughput and throughput.get("ReadCapacityUnits") and throughput.get("WriteCapacityUnits")
        ):
            raise _validation(
                "One or more parameter values were invalid: ReadCapacityUnits and WriteCapacityUnits must both be "
                "specified when BillingMode is PROVISIONED"
            )
        if billing == "PAY_PER_REQUEST" and throughput:
            raise _validation(
                "One or more parameter values were invalid: Neither ReadCapacityUnits nor WriteCapacityUnits can "
                "be specified when BillingMode is PAY_PER_REQUEST"
            )
        if billing not in ("PROVISIONED", "PAY_PER_REQUEST"):
            raise _validation(f"Invalid BillingMode: {billing}")
        with self._lock:
            if name in self._tables:
                raise DynamoDbError("ResourceInUseException", f"Table already exists: {name}")
            arn = f"arn:aws:dynamodb:{self.region}:{self.account_id}:table/{name}"
            table = _Table(name, key_name, types[key_name], params, arn, self._clock())
            self._tables[name] = table
            return {"TableDescription": table.describe()}

    def _describe_table(self, params: dict) -> dict:
        with self._lock:
            name = params.get("TableName")
            table = self._tables.get(name) if isinstance(name, str) else None
            if table is None:
                raise _not_found(f": Table: {name} not found")
            return {"Table": table.describe()}

    def _delete_table(self, params: dict) -> dict:
        with self._lock:
            name = params.get("TableName")
            table = self._tables.pop(name, None) if isinstance(name, str) else None
            if table is None:
                raise _not_found(f": Table: {name} not found")
            return {"TableDescription": table.describe("DELETING")}

    def _list_tables(self, params: dict) -> dict:
        limit = params.get("Limit", 100)
        if not isinstance(limit, int) or not 1 <= limit <= 100:
            raise _validation(
                f"1 validation error detected: Value '{limit}' at 'limit' failed to satisfy constraint: Member must "
                "have value less than or equal to 100"
            )
        start = params.get("ExclusiveStartTableName")
        with self._lock:
            names = sorted(self._tables)
        if start is not None:
            names = [n for n in names if n > start]
        result: dict[str, Any] = {"TableNames": names[:limit]}
        if len(names) >= limit:  # a full page: there may be more (moto and DynamoDB say so even when not)
            result["LastEvaluatedTableName"] = names[limit - 1]
        return result

    def _update_time_to_live(self, params: dict) -> dict:
        spec = params.get("TimeToLiveSpecification")
        if (
            not isinstance(spec, dict)
            or not isinstance(spec.get("Enabled"), bool)
            or not spec.get("AttributeName")
        ):
            raise _validation("TimeToLiveSpecification must have Enabled and AttributeName")
        with self._lock:
            table = self._table(params)
            if spec["Enabled"] and table.ttl_enabled:
                raise _validation("TimeToLive is already enabled")
            if not spec["Enabled"] and not table.ttl_enabled:
                raise _validation("TimeToLive is already disabled")
            # Recorded only: DynamoDB deletes expired items lazily (days later at worst), and reads may
            # return them until then; this server keeps them, as moto does.
            table.ttl_enabled = spec["Enabled"]
            table.ttl_attribute = spec["AttributeName"]
        return {
            "TimeToLiveSpecification": {"Enabled": spec["Enabled"], "AttributeName": spec["AttributeName"]}
        }

    def _describe_time_to_live(self, params: dict) -> dict:
        with self._lock:
            table = self._table(params)
            description: dict[str, Any] = {"TimeToLiveStatus": "ENABLED" if table.ttl_enabled else "DISABLED"}
            if table.ttl_attribute is not None:
                description["AttributeName"] = table.ttl_attribute
        return {"TimeToLiveDescription": description}

    # --- items -----------------------------------------------------------------------------------------

    @staticmethod
    def _return_values(params: dict, allowed: tuple[str, ...]) -> str:
        value = params.get("ReturnValues", "NONE")
        if value not in allowed:
            raise _validation("Return values set to invalid value")
        return value

    @staticmethod
    def _on_failure(params: dict) -> bool:
        value = params.get("ReturnValuesOnConditionCheckFailure", "NONE")
        if value not in ("NONE", "ALL_OLD"):
            raise _validation(
                f"1 validation error detected: Value '{value}' at 'returnValuesOnConditionCheckFailure' failed to "
                "satisfy constraint: Member must satisfy enum value set: [ALL_OLD, NONE]"
            )
        return value == "ALL_OLD"

    @staticmethod
    def _check_condition(expressions: _Expressions, old: dict | None, all_old: bool) -> None:
        tree = expressions.tree("ConditionExpression")
        if tree is not None and not expressions.holds(tree, old):
            raise DynamoDbError(
                "ConditionalCheckFailedException",
                "The conditional request failed",
                item=old if all_old and old is not None else None,
            )

    @staticmethod
    def _consumed(params: dict, table: _Table, units: float) -> dict:
        if params.get("ReturnConsumedCapacity") in ("TOTAL", "INDEXES"):
            return {"ConsumedCapacity": {"TableName": table.name, "CapacityUnits": units}}
        return {}

    def _put_item(self, params: dict) -> dict:
        returns = self._return_values(params, ("NONE", "ALL_OLD"))
        all_old = self._on_failure(params)
        raw = params.get("Item")
        if not isinstance(raw, dict):
            raise _validation(
                "1 validation error detected: Value null at 'item' failed to satisfy constraint"
            )
        item = {name: _value(value, name) for name, value in raw.items()}
        expressions = _Expressions(params, {"ConditionExpression": "ConditionExpression"})
        expressions.check_values(expressions.tree("ConditionExpression"), "ConditionExpression")
        with self._lock:
            table = self._table(params)
            key = table.item_key(item)
            old = table.items.get(key)
            self._check_condition(expressions, old, all_old)
            table.store(key, item)
            result = self._consumed(params, table, 1.0)
        if returns == "ALL_OLD" and old is not None:
            result["Attributes"] = old
        return result

    def _get_item(self, params: dict) -> dict:
        expressions = _Expressions(params, {"ProjectionExpression": "ProjectionExpression"})
        with self._lock:
            table = self._table(params)
            item = table.items.get(table.key_of(params.get("Key")))
            result = self._consumed(params, table, 1.0)
        if item is not None:
            result["Item"] = _project(expressions, expressions.tree("ProjectionExpression"), item)
        return result

    def _delete_item(self, params: dict) -> dict:
        returns = self._return_values(params, ("NONE", "ALL_OLD"))
        all_old = self._on_failure(params)
        expressions = _Expressions(params, {"ConditionExpression": "ConditionExpression"})
        expressions.check_values(expressions.tree("ConditionExpression"), "ConditionExpression")
        with self._lock:
            table = self._table(params)
            key = table.key_of(params.get("Key"))
            self._check_condition(expressions, table.items.get(key), all_old)
            old = table.remove(key)
            result = self._consumed(params, table, 1.0)
        if returns == "ALL_OLD" and old is not None:
            result["Attributes"] = old
        return result

    def _update_item(self, params: dict) -> dict:
        returns = self._return_values(params, ("NONE", "ALL_OLD", "UPDATED_OLD", "ALL_NEW", "UPDATED_NEW"))
        all_old = self._on_failure(params)
        if params.get("UpdateExpression") is None:
            raise _unsupported("an UpdateItem without UpdateExpression")
        expressions = _Expressions(
            params, {"UpdateExpression": "UpdateExpression", "ConditionExpression": "ConditionExpression"}
        )
        expressions.check_values(expressions.tree("ConditionExpression"), "ConditionExpression")
        _kind, sets, removes = expressions.tree("UpdateExpression")
        targets = [expressions.resolve(path[1]) for path, _value_tree in sets]
        targets += [expressions.resolve(path[1]) for path in removes]
        for target in targets:
            if len(target) > 1:
                raise _unsupported("nested paths in an UpdateExpression (only top-level attributes)")
        names = [t[0] for t in targets]
        for index, name in enumerate(names):
            if name in names[:index]:
                raise _validation(
                    "Invalid UpdateExpression: Two document paths overlap with each other; must remove or rewrite "
                    f"one of these paths; path one: [{name}], path two: [{name}]"
                )
        with self._lock:
            table = self._table(params)
            if table.key_name in names:
                raise _validation(
                    "One or more parameter values were invalid: Cannot update attribute "
                    f"{table.key_name}. This attribute is part of the key"
                )
            key = table.key_of(params.get("Key"))
            old = table.items.get(key)
            self._check_condition(expressions, old, all_old)
            new = (
                dict(old)
                if old is not None
                else {table.key_name: _value(params["Key"][table.key_name], "key")}
            )
            # Every value is computed from the old item before any is assigned, as DynamoDB does.
            values = [
                (name, self._evaluate(expressions, tree, old)) for name, (_path, tree) in zip(names, sets)
            ]
            for name, value in values:
                new[name] = value
            for name in names[len(sets) :]:
                new.pop(name, None)
            table.store(key, new)
            result = self._consumed(params, table, 1.0)
        if returns == "ALL_OLD" and old is not None:
            result["Attributes"] = old
        elif returns == "ALL_NEW":
            result["Attributes"] = new
        elif returns in ("UPDATED_OLD", "UPDATED_NEW"):
            source = old if returns == "UPDATED_OLD" else new
            attributes = {name: source[name] for name in names if source is not None and name in source}
            if attributes:
                result["Attributes"] = attributes
        return result

    @staticmethod
    def _evaluate(expressions: _Expressions, tree: tuple, item: dict | None) -> dict:
        """The value a SET action assigns."""
        if tree[0] == "arithmetic":
            left = LocalDynamoDbServer._evaluate(expressions, tree[2], item)
            right = LocalDynamoDbServer._evaluate(expressions, tree[3], item)
            if "N" not in left or "N" not in right:
                raise _validation("An operand in the update expression has an incorrect data type")
            a, b = Decimal(left["N"]), Decimal(right["N"])
            total = _NUMBER_CONTEXT.add(a, b) if tree[1] == "+" else _NUMBER_CONTEXT.subtract(a, b)
            return {"N": _number(str(total))}
        if tree[0] == "function":  # if_not_exists(path, operand)
            existing = expressions.lookup(item, tree[2][0][1])
            return (
                existing
                if existing is not None
                else LocalDynamoDbServer._evaluate(expressions, tree[2][1], item)
            )
        value = expressions.operand(item, tree)
        if value is None:
            raise _validation(
                "The provided expression refers to an attribute that does not exist in the item"
            )
        return value

    def _batch_get_item(self, params: dict) -> dict:
        requests = params.get("RequestItems")
        if not isinstance(requests, dict) or not requests:
            raise _validation(
                "1 validation error detected: Value null at 'requestItems' failed to satisfy constraint: Member must "
                "have length greater than or equal to 1"
            )
        total = 0
        plans = []
        for name, request in requests.items():
            keys = request.get("Keys") if isinstance(request, dict) else None
            if not isinstance(keys, list) or not keys:
                raise _validation(
                    f"1 validation error detected: Value at 'requestItems.{name}.member.keys' failed to satisfy "
                    "constraint: Member must have length greater than or equal to 1"
                )
            if len(keys) > MAX_BATCH_GET_KEYS:
                raise _validation(
                    f"1 validation error detected: Value at 'requestItems.{name}.member.keys' failed to satisfy "
                    f"constraint: Member must have length less than or equal to {MAX_BATCH_GET_KEYS}"
                )
            total += len(keys)
            plans.append(
                (name, keys, _Expressions(request, {"ProjectionExpression": "ProjectionExpression"}))
            )
        if total > MAX_BATCH_GET_KEYS:
            raise _validation("Too many items requested for the BatchGetItem call")
        responses: dict[str, list] = {}
        with self._lock:
            for name, keys, expressions in plans:
                table = self._table({"TableName": name})
                wanted = [table.key_of(k) for k in keys]
                if len(set(wanted)) != len(wanted):
                    raise _validation("Provided list of item keys contains duplicates")
                found = [table.items.get(k) for k in wanted]
                tree = expressions.tree("ProjectionExpression")
                responses[name] = [_project(expressions, tree, item) for item in found if item is not None]
        # Everything is processed at once: no throttling here, hence no UnprocessedKeys.
        return {"Responses": responses, "UnprocessedKeys": {}}

    def _scan(self, params: dict) -> dict:
        for refused in ("IndexName", "Segment", "TotalSegments"):
            if refused in params:
                raise _unsupported(f"{refused} in a Scan")
        select = params.get("Select", "ALL_ATTRIBUTES")
        if select not in ("ALL_ATTRIBUTES", "COUNT", "SPECIFIC_ATTRIBUTES"):
            raise _unsupported(f"Select={select}")
        limit = params.get("Limit")
        if limit is not None and (not isinstance(limit, int) or limit < 1):
            raise _validation(
                f"1 validation error detected: Value '{limit}' at 'limit' failed to satisfy constraint: Member must "
                "have value greater than or equal to 1"
            )
        expressions = _Expressions(
            params, {"FilterExpression": "FilterExpression", "ProjectionExpression": "ProjectionExpression"}
        )
        expressions.check_values(expressions.tree("FilterExpression"), "FilterExpression")
        condition = expressions.tree("FilterExpression")
        projection = expressions.tree("ProjectionExpression")
        with self._lock:
            table = self._table(params)
            # A stable order (by key) so that ExclusiveStartKey resumes correctly even if items changed between
            # pages; DynamoDB's order (by hash) is not promised to anybody either.
            keys = sorted(table.items, key=_sort_key)
            start = 0
            if params.get("ExclusiveStartKey") is not None:
                after = _sort_key(table.key_of(params["ExclusiveStartKey"]))
                start = bisect.bisect_right([_sort_key(k) for k in keys], after)
            items, scanned, page_bytes, last = [], 0, 0, None
            for key in keys[start:]:
                if limit is not None and scanned >= limit or page_bytes >= MAX_SCAN_PAGE_BYTES:
                    break
                item = table.items[key]
                scanned += 1
                page_bytes += table.sizes[key]
                last = key
                if condition is None or expressions.holds(condition, item):
                    items.append(_project(expressions, projection, item))
            more = start + scanned < len(keys)
            key_name, key_type = table.key_name, table.key_type
        result: dict[str, Any] = {"Count": len(items), "ScannedCount": scanned}
        if select != "COUNT":
            result["Items"] = items
        if more and last is not None:
            encoded = (
                _number(str(last))
                if key_type == "N"
                else base64.b64encode(last).decode()
                if key_type == "B"
                else last
            )
            result["LastEvaluatedKey"] = {key_name: {key_type: encoded}}
        return result


if __name__ == "__main__":
    serve_until_stdin_closes(LocalDynamoDbServer().start())
