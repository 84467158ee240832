"""Contact lists: a CSV with a `phone` column and optional `param1..paramN`, read into unique E.164 rows."""

from __future__ import annotations

import csv
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from sendonce import phones
from sendonce.errors import ContactsError

_PARAM_COLUMN = re.compile(r"^param([1-9][0-9]*)$")
MAX_PARAM_LENGTH = 1024


@dataclass(frozen=True, slots=True)
class Contact:
    """One recipient: E.164 digits and the template body parameters, in order."""

    phone: str
    params: tuple[str, ...] = ()


@dataclass(frozen=True)
class InvalidRow:
    """A row that was reported and not inserted; `line` counts the header as line 1."""

    line: int
    value: str
    reason: str


@dataclass
class ContactList:
    """The outcome of reading a contact list: unique contacts, rejected rows, collapsed duplicates."""

    contacts: list[Contact] = field(default_factory=list)
    invalid: list[InvalidRow] = field(default_factory=list)
    duplicates: int = 0


def read_csv(path: str | Path, default_region: str | None = None) -> ContactList:
    """Read a contacts CSV file.

    Parameters
    ----------
    path
        A CSV file with a header row naming a `phone` column.
    default_region
        ISO 3166 country for numbers written without a country code.

    Raises
    ------
    ContactsError
        The file is missing, unreadable, empty, has no `phone` column or no valid row.
    """
    file = Path(path)
    if not file.is_file():
        raise ContactsError(f"contacts file not found: {file}")
    try:
        # Streamed: a million-row file never sits in memory as text (the contacts list is big enough).
        with file.open(encoding="utf-8-sig", newline="") as lines:
            return parse_csv(lines, source=str(file), default_region=default_region)
    except (OSError, UnicodeDecodeError) as exc:
        raise ContactsError(f"cannot read contacts file {file}: {exc}") from exc


def parse_csv(lines: Iterable[str], source: str = "contacts", default_region: str | None = None) -> ContactList:
    """Parse CSV text (an iterable of lines); see `read_csv`."""
    reader = csv.reader(lines)
    phone_at, params_at = _header(reader, source)
    return _collect(reader, phone_at, params_at, default_region, source)


def check_header(lines: Iterable[str], source: str = "contacts") -> None:
    """Raise `ContactsError` unless the first line is a usable header (a `phone` column, param1..paramN)."""
    _header(csv.reader(lines), source)


def _header(reader, source: str) -> tuple[int, list[int]]:
    header = next(reader, None)
    if header is None or not any(cell.strip() for cell in header):
        raise ContactsError(f"{source} is empty: expected a header row with a 'phone' column")
    columns = [cell.strip().lower() for cell in header]
    if "phone" not in columns:
        raise ContactsError(f"{source} has no 'phone' column (columns: {', '.join(columns) or 'none'})")
    params_at = sorted(
        (int(m.group(1)), i) for i, name in enumerate(columns) if (m := _PARAM_COLUMN.match(name))
    )
    if [n for n, _ in params_at] != list(range(1, len(params_at) + 1)):
        raise ContactsError(f"{source}: parameter columns must be param1..paramN without gaps")
    return columns.index("phone"), [i for _, i in params_at]


def from_records(records: object, default_region: str | None = None) -> ContactList:
    """Read contacts given inline (the HTTP API): a list of "phone" strings or {"phone", "params"} objects."""
    if not isinstance(records, list) or not records:
        raise ContactsError("contacts must be a non-empty list")
    result = ContactList()
    seen: set[str] = set()
    for number, record in enumerate(records, start=1):
        record = {"phone": record} if isinstance(record, str) else record
        params = record.get("params", []) if isinstance(record, dict) else None
        if not isinstance(record, dict) or not isinstance(record.get("phone"), str):
            result.invalid.append(InvalidRow(number, str(record)[:40], "expected a phone string or {'phone': ...}"))
        elif not isinstance(params, list) or not all(isinstance(p, str) for p in params):
            result.invalid.append(InvalidRow(number, record["phone"][:40], "params must be a list of strings"))
        else:
            _add(result, seen, number, record["phone"], tuple(params), default_region)
    return result


def _collect(reader, phone_at: int, params_at: list[int], default_region: str | None, source: str):
    result = ContactList()
    seen: set[str] = set()
    rows = 0
    for row in reader:
        line = reader.line_num
        if not any(cell.strip() for cell in row):
            continue
        rows += 1
        if len(row) <= max([phone_at, *params_at]):
            result.invalid.append(InvalidRow(line, ",".join(row)[:40], "missing columns"))
            continue
        params = tuple(row[i].strip() for i in params_at)
        _add(result, seen, line, row[phone_at], params, default_region)
    if rows == 0:
        raise ContactsError(f"{source} has a header but no contacts")
    return result


def _add(result: ContactList, seen: set[str], line: int, raw: str, params: tuple[str, ...], region):
    try:
        phone = phones.normalize(raw, region)
    except phones.InvalidPhoneError as exc:
        result.invalid.append(InvalidRow(line, raw.strip()[:40], str(exc)))
        return
    if any(len(p) > MAX_PARAM_LENGTH for p in params):
        result.invalid.append(InvalidRow(line, raw.strip()[:40], f"a parameter is over {MAX_PARAM_LENGTH} characters"))
        return
    if phone in seen:
        result.duplicates += 1
        return
    seen.add(phone)
    result.contacts.append(Contact(phone, params))
