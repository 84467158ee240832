"""What sendonce knows of Meta's side: templates (preflight cache, status events), account events, messaging limits."""

from __future__ import annotations

import json
from datetime import datetime

import psycopg

from sendonce.db import rows, transaction

# -- templates -------------------------------------------------------------------------------------------------

SELECT_TEMPLATE = """
SELECT name, language, status, category, parameter_format, components, reason, paused_until, template_id,
       fetched_at > now() - make_interval(secs => %(ttl)s) AS fresh
FROM templates WHERE name = %(name)s AND language = %(language)s
"""

# What the Graph API answered is the template's state now: it replaces what events said before.
STORE_TEMPLATES = """
INSERT INTO templates (name, language, waba_id, template_id, status, category, parameter_format, components,
                       fetched_at, updated_at)
SELECT * , now(), now()
FROM unnest(%(names)s::text[], %(languages)s::text[], %(waba_ids)s::text[], %(ids)s::text[], %(statuses)s::text[],
            %(categories)s::text[], %(formats)s::text[], %(components)s::jsonb[])
ON CONFLICT (name, language) DO UPDATE
SET waba_id = excluded.waba_id, template_id = excluded.template_id, status = excluded.status,
    category = excluded.category, parameter_format = excluded.parameter_format, components = excluded.components,
    reason = CASE WHEN excluded.status = templates.status THEN templates.reason END,
    paused_until = CASE WHEN excluded.status = 'PAUSED' THEN templates.paused_until END,
    fetched_at = now(), updated_at = now()
"""

# -- account events (webhooks) ---------------------------------------------------------------------------------

INSERT_EVENTS = """
INSERT INTO meta_events (field, waba_id, occurred_at, value, digest)
SELECT * FROM unnest(%(fields)s::text[], %(waba_ids)s::text[], %(times)s::timestamptz[], %(values)s::jsonb[],
                     %(digests)s::text[])
ON CONFLICT (digest) DO NOTHING
RETURNING digest
"""

# A template's status events, applied in one statement: each template takes its newest event of the POST, and
# only if it is newer than the last one applied (Meta retries, and delivers out of order). A template that
# stops being sendable (PAUSED, DISABLED, REJECTED, FLAGGED) pauses every running campaign that uses it; one
# that is sendable again (APPROVED, REINSTATED) ends the template pauses of its campaigns: `paused_until` = now,
# so that reset_stuck resumes those that asked for it (auto_resume) and `resume` accepts the others.
APPLY_TEMPLATE_EVENTS = """
WITH event AS (
    SELECT DISTINCT ON (name, language) *
    FROM unnest(%(names)s::text[], %(languages)s::text[], %(waba_ids)s::text[], %(ids)s::text[], %(events)s::text[],
                %(reasons)s::text[], %(times)s::timestamptz[], %(paused_until)s::timestamptz[],
                %(categories)s::text[])
        AS e (name, language, waba_id, template_id, event, reason, at, paused_until, category)
    ORDER BY name, language, at DESC
),
applied AS (
    INSERT INTO templates AS t (name, language, waba_id, template_id, status, category, reason, paused_until, event_at)
    SELECT e.name, e.language, e.waba_id, e.template_id,
           CASE WHEN e.event IN ('REINSTATED', 'UNPAUSED') THEN 'APPROVED' ELSE e.event END,
           e.category, e.reason, e.paused_until, e.at
    FROM event e
    ON CONFLICT (name, language) DO UPDATE
    SET status = excluded.status, reason = excluded.reason, paused_until = excluded.paused_until,
        event_at = excluded.event_at, template_id = coalesce(excluded.template_id, t.template_id),
        category = coalesce(excluded.category, t.category), updated_at = now()
    WHERE t.event_at IS NULL OR t.event_at <= excluded.event_at
    RETURNING t.name, t.language, t.status, t.reason, t.paused_until
),
paused AS (
    UPDATE campaigns c
    SET status = 'paused', paused_by = 'template', paused_until = a.paused_until, updated_at = now(),
        pause_reason = format('template %%s (%%s) %%s by Meta%%s', a.name, a.language, a.status,
                              coalesce(': ' || a.reason, ''))
    FROM applied a
    WHERE c.template_name = a.name AND c.language_code = a.language AND c.status = 'running'
      AND a.status IN ('PAUSED', 'DISABLED', 'REJECTED', 'FLAGGED')
    RETURNING c.id::text
),
approved AS (
    UPDATE campaigns c
    SET paused_until = now(), updated_at = now(),
        pause_reason = c.pause_reason || format('; approved again at %%s', to_char(now() AT TIME ZONE 'UTC',
                                                 'YYYY-MM-DD"T"HH24:MI:SS"Z"'))
    FROM applied a
    WHERE c.template_name = a.name AND c.language_code = a.language AND c.status = 'paused'
      AND c.paused_by = 'template' AND a.status = 'APPROVED'
    RETURNING c.id::text
)
SELECT (SELECT coalesce(array_agg(id), '{}') FROM paused), (SELECT coalesce(array_agg(id), '{}') FROM approved)
"""

# -- messaging limits ------------------------------------------------------------------------------------------

SELECT_LIMIT = "SELECT source FROM messaging_limits WHERE phone_number_id = %(phone_number_id)s"

UPSERT_LIMIT = """
INSERT INTO messaging_limits AS m (phone_number_id, portfolio_id, max_recipients, tier, source, display_phone_number)
VALUES (%(phone_number_id)s, %(portfolio_id)s, %(max_recipients)s, %(tier)s, %(source)s, %(display)s)
ON CONFLICT (phone_number_id) DO UPDATE
SET portfolio_id = excluded.portfolio_id, max_recipients = excluded.max_recipients, tier = excluded.tier,
    source = excluded.source, display_phone_number = coalesce(excluded.display_phone_number, m.display_phone_number),
    updated_at = now()
RETURNING phone_number_id
"""

# A capability webhook changes the limit of every number of the portfolio it names (the WABA's, or the
# display number's).
APPLY_LIMIT_EVENT = """
UPDATE messaging_limits m
SET max_recipients = %(max_recipients)s, tier = %(tier)s, source = 'webhook', updated_at = now()
WHERE m.portfolio_id IN (
    SELECT portfolio_id FROM messaging_limits
    WHERE portfolio_id = %(waba_id)s OR display_phone_number = %(display)s
)
RETURNING m.phone_number_id
"""

DELETE_LIMIT = "DELETE FROM messaging_limits WHERE phone_number_id = %(phone_number_id)s RETURNING phone_number_id"

# One number's limit and how much of it the portfolio used, from the one definition (messaging_window).
SELECT_USAGE = """
SELECT m.phone_number_id, m.portfolio_id, m.max_recipients, m.tier, m.source, m.updated_at,
       u.used,
       CASE WHEN m.max_recipients IS NOT NULL
            THEN messaging_room_at(1, m.max_recipients, u.times, %(window)s) END AS next_room_at
FROM messaging_limits m
CROSS JOIN LATERAL (
    SELECT count(*)::integer AS used, array_agg(w.last_at ORDER BY w.last_at) AS times
    FROM messaging_window(m.portfolio_id, %(window)s) w
) u
WHERE m.phone_number_id = %(phone_number_id)s
"""

SELECT_LIMITS = """
SELECT phone_number_id, portfolio_id, max_recipients, tier, source, display_phone_number, updated_at
FROM messaging_limits ORDER BY portfolio_id, phone_number_id
"""

PLACE_IN_LINE = "SELECT waiting, first_room, last_room FROM place_in_messaging_line(%(campaign_id)s, %(window)s)"


def cached_template(conn: psycopg.Connection, name: str, language: str, ttl: int) -> dict | None:
    """The template as last known (`fresh`: read from the Graph API within `ttl` seconds); None if never seen."""
    found = rows(conn, SELECT_TEMPLATE, {"name": name, "language": language, "ttl": ttl}, "reading templates failed",
                 dicts=True)
    return found[0] if found else None


def store_templates(conn: psycopg.Connection, waba_id: str, templates: list[dict]) -> None:
    """Keep templates as the Graph API listed them (every language of a name)."""
    params = {
        "names": [t["name"] for t in templates],
        "languages": [t["language"] for t in templates],
        "waba_ids": [waba_id] * len(templates),
        "ids": [str(t.get("id") or "") or None for t in templates],
        "statuses": [t["status"] for t in templates],
        "categories": [t.get("category") for t in templates],
        "formats": [t.get("parameter_format") for t in templates],
        "components": [json.dumps(t.get("components") or []) for t in templates],
    }
    rows(conn, STORE_TEMPLATES, params, "storing templates failed")


def store_events(conn: psycopg.Connection, events: list[dict]) -> int:
    """Keep account events once each; return how many were new."""
    params = {
        "fields": [e["field"] for e in events],
        "waba_ids": [e["waba_id"] for e in events],
        "times": [e["occurred_at"] for e in events],
        "values": [json.dumps(e["value"]) for e in events],
        "digests": [e["digest"] for e in events],
    }
    return len(rows(conn, INSERT_EVENTS, params, "storing account events failed"))


def apply_template_events(conn: psycopg.Connection, events: list[dict]) -> tuple[list[str], list[str]]:
    """Apply template status events; return (campaigns paused, campaigns whose template was approved again)."""
    params = {
        key: [e[field] for e in events]
        for key, field in (("names", "name"), ("languages", "language"), ("waba_ids", "waba_id"),
                           ("ids", "template_id"), ("events", "event"), ("reasons", "reason"),
                           ("times", "occurred_at"), ("paused_until", "paused_until"), ("categories", "category"))
    }
    paused, approved = rows(conn, APPLY_TEMPLATE_EVENTS, params, "applying template events failed")[0]
    return list(paused), list(approved)


def record_events(conn: psycopg.Connection, events: list[dict], template_events: list[dict],
                  limit_events: list[dict]) -> dict:
    """Keep every account event and apply those sendonce acts on, in one transaction."""
    with transaction(conn, "storing account events failed"):
        new = store_events(conn, events) if events else 0
        paused, approved = apply_template_events(conn, template_events) if template_events else ([], [])
        numbers = [n for e in limit_events for n in apply_limit_event(conn, e)]
    return {"new": new, "paused": paused, "approved": approved, "limits_changed": numbers}


def limit_source(conn: psycopg.Connection, phone_number_id: str) -> str | None:
    """Where a number's limit came from (operator, graph, webhook), or None when it is not known."""
    found = rows(conn, SELECT_LIMIT, {"phone_number_id": phone_number_id}, "reading the messaging limit failed")
    return found[0][0] if found else None


def upsert_limit(conn: psycopg.Connection, phone_number_id: str, portfolio_id: str, max_recipients: int | None,
                 tier: str | None, source: str, display: str | None = None) -> None:
    """Set one number's messaging limit (None: unlimited)."""
    params = {"phone_number_id": phone_number_id, "portfolio_id": portfolio_id, "max_recipients": max_recipients,
              "tier": tier, "source": source, "display": display}
    rows(conn, UPSERT_LIMIT, params, "storing the messaging limit failed")


def apply_limit_event(conn: psycopg.Connection, event: dict) -> list[str]:
    """A capability webhook's new limit for the portfolio it names; the numbers changed."""
    found = rows(conn, APPLY_LIMIT_EVENT, event, "applying the messaging limit failed")
    return [number for (number,) in found]


def delete_limit(conn: psycopg.Connection, phone_number_id: str) -> bool:
    """Forget a number's limit (unknown again); whether there was one."""
    return bool(rows(conn, DELETE_LIMIT, {"phone_number_id": phone_number_id}, "removing the messaging limit failed"))


def usage(conn: psycopg.Connection, phone_number_id: str, window: float) -> dict | None:
    """A number's limit, the portfolio's users in the window and when the next room frees; None when unknown."""
    found = rows(conn, SELECT_USAGE, {"phone_number_id": phone_number_id, "window": window},
                 "reading the messaging limit failed", dicts=True)
    return found[0] if found else None


def limits(conn: psycopg.Connection) -> list[dict]:
    """Every number's known limit."""
    return rows(conn, SELECT_LIMITS, {}, "reading the messaging limits failed", dicts=True)


def place_in_line(conn: psycopg.Connection, campaign_id: str, window: float) -> tuple[int, datetime | None, datetime | None]:
    """Make the campaign's `ready` rows beyond the room left wait for their place: (waiting, first, last room)."""
    return tuple(rows(conn, PLACE_IN_LINE, {"campaign_id": campaign_id, "window": window},
                      "placing rows in the messaging line failed")[0])
