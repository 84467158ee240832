"""Reading contact lists and normalising phone numbers (pure logic)."""

from __future__ import annotations

import pytest

from sendonce import phones
from sendonce.contacts import parse_csv
from sendonce.errors import ContactsError


@pytest.mark.parametrize(
    "raw",
    ["919741771659", "+91 97417 71659", "0091-9741771659", "(+91) 97417-71659", "+91.974.177.1659", " 919741771659 "],
)
def test_normalize_common_formats_give_e164_digits(raw):
    assert phones.normalize(raw) == "919741771659"


def test_normalize_national_format_needs_default_region():
    with pytest.raises(phones.InvalidPhoneError):
        phones.normalize("097417 71659")
    assert phones.normalize("097417 71659", "IN") == "919741771659"


@pytest.mark.parametrize(("raw", "reason"), [("", "empty"), ("abc", "no digits"), ("12345", "not a valid number"), ("+91 1234", "not a valid number"), ("+1+2", "middle")])
def test_normalize_invalid_numbers_raise_with_reason(raw, reason):
    with pytest.raises(phones.InvalidPhoneError, match=reason):
        phones.normalize(raw)


def test_mask_keeps_only_last_four_digits():
    assert phones.mask("919741771659") == "********1659"


def test_parse_csv_collapses_duplicates_and_reports_invalid_lines():
    # Given a list with a duplicate in another format, a bad number and a short row
    text = "Phone,param1\n919741771659,A\n+91 97417 71659,B\nxyz,C\n\n14155552671,D\n"

    # When parsed
    result = parse_csv(text.splitlines(keepends=True))

    # Then the first occurrence wins, the bad row is reported with its line, blank lines are ignored
    assert [(c.phone, c.params) for c in result.contacts] == [("919741771659", ("A",)), ("14155552671", ("D",))]
    assert result.duplicates == 1
    assert [(r.line, r.value) for r in result.invalid] == [(4, "xyz")]


def test_parse_csv_params_are_ordered_by_number_not_by_column():
    result = parse_csv(["phone,param2,param1\n", "919741771659,second,first\n"])
    assert result.contacts[0].params == ("first", "second")


def test_parse_csv_without_phone_column_is_refused():
    with pytest.raises(ContactsError, match="no 'phone' column"):
        parse_csv(["mobile\n", "919741771659\n"])
