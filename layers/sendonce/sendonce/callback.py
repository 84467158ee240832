"""biz_opaque_callback_data: which send_queue row a message was, in a form only this deployment produces.

Meta echoes it in every status webhook of the message, so a status can name its row even when the sender
never heard Meta's answer (the ambiguous window). A bare row id would let a status of a message this stack
never sent (another stack or tool on the same app, staging against production) mark a row `sent` that was
never sent, so the data carries the campaign, the row and an HMAC-SHA256 tag keyed by this database's
`deployment.callback_key`: `sendonce:1:<campaign id>:<row id>:<tag>`.
"""

from __future__ import annotations

import hashlib
import hmac
import re

from sendonce.models import MAX_ROW_ID

_FORMAT = re.compile(r"^sendonce:1:([0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}):([1-9][0-9]{0,18}):([0-9a-f]{32})$")


def _tag(key: str, campaign_id: str, row_id: int) -> str:
    return hmac.new(key.encode(), f"1:{campaign_id}:{row_id}".encode(), hashlib.sha256).hexdigest()[:32]


def sign(key: str, campaign_id: str, row_id: int) -> str:
    """The callback data for one row."""
    return f"sendonce:1:{campaign_id}:{row_id}:{_tag(key, campaign_id, row_id)}"


def verify(key: str, data: object) -> tuple[str, int] | None:
    """(campaign id, row id) when `data` is callback data this deployment signed, else None."""
    match = _FORMAT.match(data) if isinstance(data, str) and len(data) < 128 else None
    if not match:
        return None
    campaign_id, row_id, tag = match.group(1), int(match.group(2)), match.group(3)
    if row_id > MAX_ROW_ID or not hmac.compare_digest(tag, _tag(key, campaign_id, row_id)):
        return None
    return campaign_id, row_id
