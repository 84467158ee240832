"""Graph API error codes, classified by what the sender must do (docs/graph-errors.md).

Matched on `error.code`, not on the HTTP status. Sources: Meta's WhatsApp Cloud API error-code, throughput and
rate-limit pages; pywa's errors module.
"""

from __future__ import annotations

from sendonce.models import Disposition

TRANSIENT = frozenset({1, 2, 4, 80007, 130429, 131000, 131016, 131057})
# 1 message per 6 s to one user: retry that recipient after 4^X seconds.
PAIR_RATE = frozenset({131056})
# Per-user marketing limit: a resend within 24 h fails again and counts against the business.
MARKETING_LIMIT = frozenset({131049})
OPTED_OUT = 131050
EXPIRED_TOKEN = 190  # or revoked: re-read once when the token is a secret that may have been rotated
PERMANENT = frozenset(
    {100, 131008, 131009, 131021, 131026, 131047, OPTED_OUT, 131051, 130472, 132000, 132005, 132007, 132012, 132016}
)
# Token, account, payment or template problems: every further send would fail the same way.
HALT = frozenset({0, 190, 10, 131005, 131031, 131037, 131042, 131045, 131048, 132001, 132015, 133010, 368})


THROTTLED = frozenset({130429}) | PAIR_RATE


def classify(code: int | None, http_status: int) -> Disposition:
    """The disposition for a Graph error; unknown codes are permanent on 4xx and transient on 5xx or 429."""
    if code in THROTTLED:
        return Disposition.DEFER
    if code in TRANSIENT:
        return Disposition.RETRY
    if code in HALT:
        return Disposition.HALT
    if code in PERMANENT or code in MARKETING_LIMIT:
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
