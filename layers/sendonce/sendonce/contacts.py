"""Contact lists: a CSV with a `phone` column and optional `param1..paramN`, read into unique E.164 rows."""

from __future__ import annotations

import codecs
import csv
import io
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import phonenumbers

from sendonce import phones
from sendonce.errors import ContactsError

_PARAM_COLUMN = re.compile(r"^param([1-9][0-9]*)$")
# 9.19741771659E+11: a spreadsheet showed the number in scientific notation and saved it so, digits lost.
_SCIENTIFIC = re.compile(r"^\+?[0-9]+[.,][0-9]*[eE]\+?[0-9]+$")
MAX_PARAM_LENGTH = 1024
# Meta refuses a body parameter with a newline or tab, or more than four spaces in a row (error 132018), and an
# empty one (131008): checked here, where parameters are read, so the whole campaign is never paused by them.
_PARAM_FORBIDDEN = re.compile(r"[\n\r\t]| {5,}")
# How many invalid rows an error or a summary lists before "and N more" (the JSON output has them all).
LISTED_INVALID_ROWS = 20
# Common names that are not ISO 3166 alpha-2 codes, and what was meant.
_REGION_HINTS = {"UK": "GB", "EN": "GB", "USA": "US", "IND": "IN"}


@dataclass(frozen=True, slots=True)
class Contact:
    """One recipient: E.164 digits and the template body parameters, in order."""

    phone: str
    params: tuple[str, ...] = ()


@dataclass(frozen=True)
class InvalidRow:
    """A row that was reported and not inserted; `line` counts the header as line 1.

    `value` is the phone cell with every digit but the last four masked: enough to find the row next to its
    line number, never a whole phone number in a terminal, a log or an API answer.
    """

    line: int
    value: str
    reason: str


@dataclass
class ContactList:
    """The outcome of reading a contact list: unique contacts, rejected rows, collapsed duplicates.

    With `max_invalid`, `invalid` keeps only the first rejected rows (a bounded sample for the API and the
    asynchronous job, where a million bad rows must not sit in memory or in an answer); `invalid_count` counts
    them all either way.
    """

    contacts: list[Contact] = field(default_factory=list)
    invalid: list[InvalidRow] = field(default_factory=list)
    duplicates: int = 0
    max_invalid: int | None = None
    rejected: int = 0

    @property
    def param_count(self) -> int:
        """How many body parameters the contacts give (param1..paramN)."""
        return max((len(c.params) for c in self.contacts), default=0)

    @property
    def invalid_count(self) -> int:
        """How many rows were rejected, listed in `invalid` or not."""
        return max(self.rejected, len(self.invalid))

    def reject(self, row: InvalidRow) -> None:
        """Count a rejected row, and keep it unless the sample is full."""
        self.rejected = self.invalid_count + 1
        if self.max_invalid is None or len(self.invalid) < self.max_invalid:
            self.invalid.append(row)


def check_region(region: str | None, name: str = "default country") -> str | None:
    """Return the ISO 3166 alpha-2 code phonenumbers knows for `region` (upper-cased), or None when not given.

    Parameters
    ----------
    region
        "IN", "us", ...; None or "" means no default country.
    name
        What the caller calls it in messages ("--default-country", "default_country").

    Raises
    ------
    ContactsError
        phonenumbers does not know that country: without this, national numbers would all be rejected (or, for
        numbers with a country code, the option would be silently ignored).
    """
    if region is None or not region.strip():
        return None
    code = region.strip().upper()
    if code in phonenumbers.SUPPORTED_REGIONS:
        return code
    hint = f" ({code} is written {_REGION_HINTS[code]})" if code in _REGION_HINTS else ""
    raise ContactsError(
        f"{name} {region!r} is not an ISO 3166 country code phonenumbers knows{hint}: give two letters such as "
        "IN, US or GB"
    )


def masked(value: str) -> str:
    """`value` with every digit but the last four replaced by '*' (at most 40 characters)."""
    digits = sum(char.isdigit() for char in value)
    if digits <= 4:
        return value[:40]
    hide = digits - 4
    out = []
    for char in value:
        if hide and char.isdigit():
            char, hide = "*", hide - 1
        out.append(char)
    return "".join(out)[:40]


def invalid_lines(invalid: list[InvalidRow], limit: int = LISTED_INVALID_ROWS) -> list[str]:
    """The first `limit` invalid rows as "line N: 'value': reason", then "and N more" if there are others."""
    lines = [f"line {row.line}: {row.value!r}: {row.reason}" for row in invalid[:limit]]
    if len(invalid) > limit:
        lines.append(f"and {len(invalid) - limit} more")
    return lines


def param_problem(params: Iterable[str]) -> str | None:
    """Why Meta would refuse these template body parameters, or None when they are fine.

    Parameters
    ----------
    params
        The row's parameters, in order (already stripped by the CSV reader).

    Returns
    -------
    str or None
        The reason, naming the parameter (1-based), for an `InvalidRow`.
    """
    for number, param in enumerate(params, start=1):
        if not param.strip():
            return f"parameter {number} is empty (Meta refuses an empty template parameter)"
        if len(param) > MAX_PARAM_LENGTH:
            return f"a parameter is over {MAX_PARAM_LENGTH} characters (parameter {number})"
        if "\x00" in param:
            # PostgreSQL text cannot hold NUL: one such row would fail the whole campaign's COPY.
            return "a parameter contains a NUL character"
        if _has_lone_surrogate(param):
            # JSON allows "\ud800", UTF-8 (and so PostgreSQL) cannot encode it.
            return f"parameter {number} contains an unpaired surrogate (not valid Unicode text)"
        if _PARAM_FORBIDDEN.search(param):
            return f"parameter {number} has a newline, a tab or more than 4 spaces in a row (Meta refuses it)"
    return None


def _has_lone_surrogate(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def no_valid_contacts(result: ContactList, source: str = "the contact list", inline: bool = False) -> ContactsError:
    """The error for a list without one valid contact; it carries the invalid rows for the caller to list.

    With `inline`, the message itself lists the first rows (for callers that show only a message: the API).
    """
    message = f"no valid contacts in {source} ({result.invalid_count} invalid rows): nothing was created"
    if inline and result.invalid:
        message += ": " + "; ".join(invalid_lines(result.invalid))
    return ContactsError(message, invalid_rows=result.invalid)


def read_csv(path: str | Path, default_region: str | None = None) -> ContactList:
    """Read a contacts CSV file.

    Parameters
    ----------
    path
        A CSV file (UTF-8) with a header row naming a `phone` column; a pipe or `/dev/stdin` works too.
    default_region
        ISO 3166 country for numbers written without a country code.

    Raises
    ------
    ContactsError
        The country is unknown; the file is missing, a folder, unreadable, not UTF-8 text, empty, has no `phone`
        column or a line the CSV reader cannot take.
    """
    region = check_region(default_region)
    file = Path(path)
    if file.is_dir():
        raise ContactsError(f"{file} is a folder, not a CSV file")
    try:
        # Opened once (a pipe cannot be read twice) and streamed: a million-row file never sits in memory as text.
        with file.open("rb") as raw:
            _check_text(raw.peek(4)[:4], file)
            with io.TextIOWrapper(raw, encoding="utf-8-sig", newline="") as lines:
                return parse_csv(lines, source=str(file), default_region=region)
    except FileNotFoundError:
        raise ContactsError(f"contacts file not found: {file}") from None
    except PermissionError:
        raise ContactsError(f"cannot read {file}: permission denied") from None
    except ContactsError as exc:
        if isinstance(exc.__cause__, UnicodeDecodeError):
            raise _not_utf8(file, exc.__cause__) from None
        raise
    except OSError as exc:
        raise ContactsError(f"cannot read {file}: {exc.strerror or exc}") from None


def _check_text(start: bytes, file: Path) -> None:
    """Refuse the files people export by mistake, by their first bytes, with what to do instead."""
    if start.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        raise ContactsError(f"{file} is UTF-16 text: save it as CSV UTF-8 (Excel: 'CSV UTF-8 (Comma delimited)')")
    if start.startswith(b"PK\x03\x04"):
        raise ContactsError(f"{file} is a ZIP archive (an Excel workbook?), not a CSV file: save it as CSV UTF-8")


def _not_utf8(file: Path, exc: UnicodeDecodeError) -> ContactsError:
    """Name the first line that is not UTF-8: the decoder only knows its position in a buffered chunk."""
    if not file.is_file():  # a pipe cannot be read again
        return ContactsError(f"{file} is not UTF-8 text ({exc.reason}): save it as CSV UTF-8")
    with file.open("rb") as raw:
        for line, text in enumerate(raw, start=1):
            try:
                text.decode("utf-8")
            except UnicodeDecodeError as bad:
                byte = text[bad.start]
                return ContactsError(
                    f"{file} is not UTF-8 text (line {line} has the byte 0x{byte:02x}): save it as CSV UTF-8, "
                    "or convert it, e.g. iconv -f latin1 -t utf-8"
                )
    return ContactsError(f"{file} is not UTF-8 text ({exc.reason}): save it as CSV UTF-8")


def parse_csv(
    lines: Iterable[str],
    source: str = "contacts",
    default_region: str | None = None,
    max_invalid: int | None = None,
    echo_header: bool = True,
) -> ContactList:
    """Parse CSV text (an iterable of lines); see `read_csv`.

    `max_invalid` bounds the invalid rows kept (see `ContactList`); without `echo_header` an error never
    quotes the file's header (an S3 object's first line is not the caller's to read).

    Raises
    ------
    ContactsError
        As `read_csv`; a text that is not UTF-8 raises it with the `UnicodeDecodeError` as its cause.
    """
    region = check_region(default_region)
    reader = csv.reader(lines)
    try:
        phone_at, params_at, width = _header(reader, source, echo_header)
        return _collect(reader, phone_at, params_at, width, region, source, max_invalid)
    except UnicodeDecodeError as exc:
        raise ContactsError(f"{source} is not UTF-8 text (after line {reader.line_num}): save it as CSV UTF-8") from exc
    except csv.Error as exc:
        # The reader cannot go on after it (a field over its size limit, a line ending inside a field).
        raise ContactsError(f"{source} line {max(reader.line_num, 1)}: {exc}") from None


def check_header(lines: Iterable[str], source: str = "contacts", echo_header: bool = True) -> int:
    """Raise `ContactsError` unless the first line is a usable header (a `phone` column, param1..paramN); return N.

    Without `echo_header` the message never quotes the header's cells.
    """
    reader = csv.reader(lines)
    try:
        return len(_header(reader, source, echo_header)[1])
    except UnicodeDecodeError as exc:
        raise ContactsError(f"{source} is not UTF-8 text: save it as CSV UTF-8") from exc
    except csv.Error as exc:
        raise ContactsError(f"{source} line 1: {exc}") from None


def _header(reader, source: str, echo: bool = True) -> tuple[int, list[int], int]:
    """(index of `phone`, indexes of param1..paramN in order, number of fields) of the header row."""
    header = next(reader, None)
    if header is None or not any(cell.strip() for cell in header):
        raise ContactsError(f"{source} is empty: expected a header row with a 'phone' column")
    columns = [cell.strip().lower() for cell in header]
    if "phone" not in columns:
        hint = ""
        if len(columns) == 1 and (separator := next((s for s in ";\t|" if s in columns[0]), None)):
            # Excel in many locales saves "CSV" with semicolons; the whole header is then one column.
            hint = f"; the columns seem to be separated by {separator!r}: save it comma-separated"
        listed = f" (columns: {', '.join(columns) or 'none'})" if echo else f" ({len(columns)} columns)"
        raise ContactsError(f"{source} has no 'phone' column{listed}{hint}")
    named = [name for name in columns if name == "phone" or _PARAM_COLUMN.match(name)]
    repeated = sorted({name for name in named if named.count(name) > 1})
    if repeated:
        what = repeated[0] if echo or repeated[0] == "phone" or _PARAM_COLUMN.match(repeated[0]) else "a column"
        raise ContactsError(f"{source}: the column {what!r} appears more than once in the header")
    params_at = sorted(
        (int(m.group(1)), i) for i, name in enumerate(columns) if (m := _PARAM_COLUMN.match(name))
    )
    if [n for n, _ in params_at] != list(range(1, len(params_at) + 1)):
        raise ContactsError(f"{source}: parameter columns must be param1..paramN without gaps")
    return columns.index("phone"), [i for _, i in params_at], len(header)


def from_records(records: object, default_region: str | None = None, max_invalid: int | None = None) -> ContactList:
    """Read contacts given inline (the HTTP API): a list of "phone" strings or {"phone", "params"} objects.

    `max_invalid` bounds the invalid rows kept (see `ContactList`).
    """
    region = check_region(default_region, "default_country")
    if not isinstance(records, list) or not records:
        raise ContactsError("contacts must be a non-empty list")
    result = ContactList(max_invalid=max_invalid)
    seen: set[str] = set()
    for number, record in enumerate(records, start=1):
        record = {"phone": record} if isinstance(record, str) else record
        params = record.get("params", []) if isinstance(record, dict) else None
        if not isinstance(record, dict) or not isinstance(record.get("phone"), str):
            result.reject(InvalidRow(number, masked(str(record)), "expected a phone string or {'phone': ...}"))
        elif not isinstance(params, list) or not all(isinstance(p, str) for p in params):
            result.reject(InvalidRow(number, masked(record["phone"]), "params must be a list of strings"))
        else:
            _add(result, seen, number, record["phone"], tuple(params), region)
    return result


def _rows(reader) -> Iterator[tuple[int, int, list[str]]]:
    """(first line, last line, fields) of each record: a quoted field may run over several lines."""
    end = reader.line_num
    for row in reader:
        start, end = end + 1, reader.line_num
        yield start, end, row


def _collect(
    reader, phone_at: int, params_at: list[int], width: int, region: str | None, source: str, max_invalid: int | None
):
    result = ContactList(max_invalid=max_invalid)
    seen: set[str] = set()
    rows = 0
    needed = max([phone_at, *params_at]) + 1
    for start, line, row in _rows(reader):
        if not any(cell.strip() for cell in row):
            continue
        rows += 1
        raw = row[phone_at] if len(row) > phone_at else ""
        if line > start and any("\n" in cell or "\r" in cell for cell in row):
            # A quote opened and not closed swallows the rows after it into one field: say so, not "bad number".
            first = next((text for text in ",".join(row).splitlines() if text.strip()), "")
            result.reject(
                InvalidRow(start, masked(first.strip()), f"a quoted field runs over lines {start}-{line}: is a closing "
                           "quote missing?")
            )
            continue
        if len(row) > width or len(row) < needed:
            # More fields than the header: an unquoted comma (in a name, say) that shifts every parameter after
            # it, so the row is refused rather than sent with the wrong text.
            reason = f"{len(row)} field{'s' if len(row) != 1 else ''}, the header has {width}"
            result.reject(InvalidRow(line, masked(raw.strip()), reason))
            continue
        params = tuple(row[i].strip() for i in params_at)
        _add(result, seen, line, raw, params, region)
    if rows == 0:
        raise ContactsError(f"{source} has a header but no contacts")
    return result


def _add(result: ContactList, seen: set[str], line: int, raw: str, params: tuple[str, ...], region):
    if _SCIENTIFIC.match(raw.strip()):
        # Its digits would be read as some other number, or a wrong one that happens to be valid.
        reason = "written in scientific notation (a spreadsheet's format): make the phone column text, export again"
        result.reject(InvalidRow(line, masked(raw.strip()), reason))
        return
    try:
        phone = phones.normalize(raw, region)
    except phones.InvalidPhoneError as exc:
        result.reject(InvalidRow(line, masked(raw.strip()), str(exc)))
        return
    if problem := param_problem(params):
        result.reject(InvalidRow(line, masked(raw.strip()), problem))
        return
    if phone in seen:
        result.duplicates += 1
        return
    seen.add(phone)
    result.contacts.append(Contact(phone, params))
