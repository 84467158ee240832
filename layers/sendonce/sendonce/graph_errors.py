"""Graph API error codes, classified by what the sender must do (docs/graph-errors.md).

Matched on `error.code`, not on the HTTP status. Sources: Meta's WhatsApp Cloud API error-code, throughput and
rate-limit pages; pywa's errors module.
"""

from __future__ import annotations

from sendonce.config import get_settings
from sendonce.models import Disposition

TRANSIENT = frozenset({1, 2, 4, 80007, 130429, 131000, 131016, 131057})
# 1 message per 6 s to one user: retry that recipient after 4^X seconds.
PAIR_RATE = frozenset({131056})
# "Not now" for this user: 131049, Meta's per-user marketing limit ("wait at least 24 hours before resending";
# sooner fails again and counts against the business). The row waits, then gets one more try.
NOT_NOW = {131049: (86_400, "per-user marketing limit (131049)")}
OPTED_OUT = 131050
# 130472 (the user is in Meta's marketing message experiment) is permanent: "attempting to resend the message
# will result in the same error".
EXPERIMENT = 130472
# 131048, spam rate limit: the number may send only so much after messages were blocked or flagged. Meta gives
# no duration: the campaign pauses for SPAM_PAUSE_SECONDS at least (and resumes then if it asked to).
SPAM_LIMIT = 131048
# The template is missing or unapproved (132001), paused for low quality (132015) or disabled (132016).
TEMPLATE_HALTS = frozenset({132001, 132015, 132016})
EXPIRED_TOKEN = 190  # or revoked: re-read once when the token is a secret that may have been rotated
PERMANENT = frozenset(
    {100, 131008, 131009, 131021, 131026, 131047, OPTED_OUT, 131051, EXPERIMENT, 132000, 132005, 132007, 132012}
)
# Token, account, payment or template problems: every further send would fail the same way.
HALT = frozenset({0, 190, 10, 131005, 131031, 131037, 131042, 131045, SPAM_LIMIT, 133010, 368}) | TEMPLATE_HALTS


THROTTLED = frozenset({130429}) | PAIR_RATE


def classify(code: int | None, http_status: int) -> Disposition:
    """The disposition for a Graph error; unknown codes are permanent on 4xx and transient on 5xx or 429."""
    if code in THROTTLED:
        return Disposition.DEFER
    if code in TRANSIENT:
        return Disposition.RETRY
    if code in HALT:
        return Disposition.HALT
    if code in NOT_NOW:
        return Disposition.WAIT
    if code in PERMANENT:
        return Disposition.FAILED
    if http_status >= 500 or http_status == 429:
        return Disposition.RETRY
    return Disposition.FAILED


def defer_seconds(code: int | None, attempt: int, base: int) -> int:
    """How long a throttled row waits: 131056 (pair rate) 4^X s for that recipient, others 2^X s (X = attempt - 1).

    Capped at SQS's longest message delay (900 s).
    """
    factor = 4 if code in PAIR_RATE else 2
    return min(base * factor ** max(attempt - 1, 0), 900)


def wait_rule(code: int | None) -> tuple[int, str]:
    """A "not now" answer's wait in seconds and its reason, as the row shows it while it waits."""
    return NOT_NOW[code] if code in NOT_NOW else (0, f"Graph API error {code}")


def halt_pause(code: int) -> tuple[str, float | None]:
    """What a halt code pauses the campaign as (`campaigns.paused_by`), and for how long at least (None: until
    someone or something resumes it)."""
    if code in TEMPLATE_HALTS:
        return "template", None
    if code == SPAM_LIMIT:
        return "spam_limit", float(get_settings().spam_pause_seconds)
    return "halt", None


# Meta's titles for the codes sendonce classifies (the error-code reference's "Title"; Meta also sends it as the
# `title` of a failed status). Shown next to each code in status and `campaign failures`.
TITLES = {
    0: "AuthException",
    1: "API Unknown",
    2: "API Service",
    4: "API Too Many Calls",
    10: "Permission Denied",
    100: "Invalid parameter",
    190: "Access token has expired",
    368: "Temporarily blocked for policies violations",
    80007: "Rate limit issues",
    130429: "Rate limit hit",
    130472: "User's number is part of an experiment",
    131000: "Something went wrong",
    131005: "Access denied",
    131008: "Required parameter is missing",
    131009: "Parameter value is not valid",
    131016: "Service unavailable",
    131021: "Recipient cannot be sender",
    131026: "Message undeliverable",
    131031: "Account has been locked",
    131037: "WhatsApp provided number needs display name approval before message can be sent",
    131042: "Business eligibility payment issue",
    131045: "Incorrect certificate",
    131047: "Re-engagement message",
    131048: "Spam rate limit hit",
    131049: "This message was not delivered to maintain healthy ecosystem engagement",
    131050: "User has stopped marketing messages",
    131051: "Unsupported message type",
    131056: "(Business Account, Consumer Account) pair rate limit hit",
    131057: "Account in maintenance mode",
    132000: "Template Param Count Mismatch",
    132001: "Template does not exist",
    132005: "Template Hydrated Text Too Long",
    132007: "Template Format Character Policy Violated",
    132012: "Template Parameter Format Mismatch",
    132015: "Template is Paused",
    132016: "Template is Disabled",
    133010: "Phone number Not Registered",
}


def title(code: int | None, fallback: str | None = None) -> str:
    """Meta's title for a code; else what Meta said (`fallback`), or what sendonce's own reasons mean."""
    if code in TITLES:
        return TITLES[code]
    if fallback:
        return fallback
    return "no Graph error: " + ("sendonce's own reason (see the rows)" if code is None else f"code {code}")
