"""Phone numbers: any common format in, E.164 digits out (no '+'), and a masked form for logs."""

from __future__ import annotations

import re

import phonenumbers

_NOT_DIAL_CHARS = re.compile(r"[^0-9+]")


class InvalidPhoneError(ValueError):
    """The text is not a valid phone number."""


def normalize(raw: str, default_region: str | None = None) -> str:
    """Return the E.164 digits of a phone number written in any common format.

    Parameters
    ----------
    raw
        "+91 97417 71659", "0091-9741771659", "919741771659", "(+91) 97417-71659"; national formats such
        as "097417 71659" need `default_region`.
    default_region
        ISO 3166 code ("IN") for numbers written without a country code.

    Raises
    ------
    InvalidPhoneError
        With the reason, when the text is not a valid number.
    """
    text = _NOT_DIAL_CHARS.sub("", raw)
    if not text.strip("+"):
        raise InvalidPhoneError("no digits" if raw.strip() else "empty")
    if "+" in text[1:]:
        raise InvalidPhoneError("'+' in the middle of the number")
    if text.startswith("00"):
        text = "+" + text[2:]
    candidates = [(text, default_region)] if default_region else []
    if not text.startswith("+"):
        # Digits with the country code but no '+' (how WhatsApp shows wa_id) are the most common export.
        candidates.append(("+" + text, None))
    else:
        candidates.append((text, None))
    reason = "not a phone number"
    for candidate, region in candidates:
        try:
            number = phonenumbers.parse(candidate, region)
        except phonenumbers.NumberParseException as exc:
            reason = exc._msg.rstrip(".").lower()
            continue
        if phonenumbers.is_valid_number(number):
            return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)[1:]
        reason = "not a valid number for its country"
    raise InvalidPhoneError(reason)


def time_zone(phone: str, default: str) -> str:
    """The recipient's time zone from the number (E.164 digits), or `default` when the number spans several zones
    (the USA, Russia, Brazil...) or none is known."""
    from phonenumbers import timezone

    try:
        zones = timezone.time_zones_for_number(phonenumbers.parse("+" + phone))
    except phonenumbers.NumberParseException:
        return default
    return zones[0] if len(zones) == 1 and zones[0] != timezone.UNKNOWN_TIMEZONE else default


def mask(phone: str) -> str:
    """Hide all but the last four digits, for logs: 919741771659 -> ********1659."""
    return "*" * max(len(phone) - 4, 0) + phone[-4:]
