"""Meta's account webhooks besides message statuses: every change is kept, and those that decide whether a
campaign can reach people are applied (docs/meta-limits.md).

- `message_template_status_update`: PAUSED, DISABLED, REJECTED or FLAGGED pauses every running campaign that uses
  the template (a pause: until about 3 h, then 6 h, by Meta's rules, which the payload does not carry); APPROVED
  or REINSTATED ends those pauses (reset_stuck resumes the campaigns that asked for it).
- `business_capability_update`, `phone_number_quality_update`: the portfolio's new messaging limit.
- `message_template_quality_update`, `template_category_update`, `account_update` and the others: kept.
"""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime, timedelta

from sendonce.messaging_limit import parse_limit

FIELDS = frozenset({
    "message_template_status_update", "message_template_quality_update", "template_category_update",
    "message_template_components_update", "phone_number_quality_update", "phone_number_name_update",
    "business_capability_update", "account_update", "account_alerts", "account_review_update",
    "security", "template_correct_category_detection",
})
# Meta's pause lengths by the pause's title ("1st instance: 3 hours; 2nd instance: 6 hours; 3rd: disabled").
PAUSE_HOURS = {"FIRST_PAUSE": 3, "SECOND_PAUSE": 6}
MAX_VALUE_BYTES = 16_384  # a change's value is a few hundred bytes; bigger ones are not Meta's


def parse(payload: object, now: datetime) -> tuple[list[dict], list[dict], list[dict]]:
    """The account changes of a webhook payload: (every change to keep, template status events, limit changes).

    A change whose shape is not Meta's is skipped (the caller logs how many); nothing here raises.
    """
    kept, templates, limits = [], [], []
    entries = payload.get("entry") if isinstance(payload, dict) else None
    for entry in entries if isinstance(entries, list) else []:
        if not isinstance(entry, dict):
            continue
        waba_id = str(entry.get("id"))[:64] if isinstance(entry.get("id"), (str, int)) else None
        at = _time(entry.get("time")) or now
        changes = entry.get("changes")
        for change in changes if isinstance(changes, list) else []:
            if not isinstance(change, dict) or change.get("field") not in FIELDS or not isinstance(change.get("value"), dict):
                continue
            field, value = change["field"], change["value"]
            text = json.dumps(value, sort_keys=True, separators=(",", ":"))
            if len(text) > MAX_VALUE_BYTES or "\\u0000" in text:
                continue
            digest = hashlib.sha256(f"{field}|{waba_id}|{at.isoformat()}|{text}".encode()).hexdigest()
            kept.append({"field": field, "waba_id": waba_id, "occurred_at": at, "value": value, "digest": digest})
            if field == "message_template_status_update" and (event := _template_event(value, waba_id, at)):
                templates.append(event)
            elif field in ("business_capability_update", "phone_number_quality_update") and (
                limit := _limit_event(value, waba_id, at)
            ):
                limits.append(limit)
    return kept, templates, limits


def _template_event(value: dict, waba_id: str | None, at: datetime) -> dict | None:
    name, language, event = value.get("message_template_name"), value.get("message_template_language"), value.get("event")
    if not all(isinstance(v, str) and 0 < len(v) <= 512 for v in (name, language, event)):
        return None
    other = value.get("other_info") if isinstance(value.get("other_info"), dict) else {}
    title = other.get("title") if isinstance(other.get("title"), str) else None
    reason = value.get("reason") if isinstance(value.get("reason"), str) and value.get("reason") != "NONE" else None
    reason = "; ".join(str(p)[:200] for p in (reason, title, other.get("description")) if p) or None
    event = event.upper()
    hours = PAUSE_HOURS.get(title or "FIRST_PAUSE") if event == "PAUSED" else None
    template_id = value.get("message_template_id")
    category = value.get("message_template_category")
    return {
        "name": name, "language": language.replace("-", "_"), "waba_id": waba_id, "event": event,
        "template_id": str(template_id) if isinstance(template_id, (int, str)) else None,
        "reason": reason, "occurred_at": at, "paused_until": at + timedelta(hours=hours) if hours else None,
        "category": category if isinstance(category, str) else None,
    }


def _limit_event(value: dict, waba_id: str | None, at: datetime) -> dict | None:
    raw = value.get("max_daily_conversations_per_business")
    if raw is None:
        raw = value.get("current_limit", value.get("max_daily_conversation_per_phone"))
    known, max_recipients, tier = parse_limit(raw)
    if not known:
        return None
    display = value.get("display_phone_number")
    display = "".join(ch for ch in display if ch.isdigit())[:20] if isinstance(display, str) else None
    return {"waba_id": waba_id, "display": display or None, "max_recipients": max_recipients, "tier": tier,
            "occurred_at": at}


def _time(value: object) -> datetime | None:
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        return None
    if isinstance(value, str) and not (value.isdigit() and len(value) <= 12):
        return None
    seconds = int(value)
    return datetime.fromtimestamp(seconds, UTC) if 0 < seconds < 2**33 else None
