"""Template preflight: before a campaign is written, the template must exist in its language, be APPROVED, and
take exactly the parameters the contacts give (docs/meta-limits.md).

The template is read from the Graph API (`GET /{WABA_ID}/message_templates?name=...`, WHATSAPP_BUSINESS_ACCOUNT_ID)
and kept in the `templates` table, which the status webhooks keep current; a read younger than
TEMPLATE_CACHE_SECONDS is not repeated. Without WHATSAPP_BUSINESS_ACCOUNT_ID the check is skipped, and said so.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

import psycopg

from sendonce import whatsapp
from sendonce.config import get_settings
from sendonce.errors import GraphRefusedError, GraphUnavailableError, TemplateError
from sendonce.observability import logger
from sendonce.repository import meta as repository

_PLACEHOLDER = re.compile(r"\{\{\s*([^{}\s]+)\s*\}\}")
MEDIA_HEADERS = ("IMAGE", "VIDEO", "DOCUMENT", "LOCATION")
FIELDS = "name,language,status,category,parameter_format,components,id"
MAX_PAGES = 20  # 20 pages of 100: every language of one name, many times over
ALLOW_FLAG = "--allow-unchecked-template"


@dataclass(frozen=True)
class TemplateCheck:
    """The preflight's outcome: passed, skipped (not configured) or unchecked (Graph API unreachable, allowed)."""

    outcome: str
    message: str
    category: str | None = None  # Meta's category of the template (MARKETING, UTILITY...), when it was checked

    def as_json(self) -> dict:
        return {"outcome": self.outcome, "message": self.message}


def preflight(
    conn: psycopg.Connection | None,
    name: str,
    language: str,
    param_count: int,
    components: Sequence[dict] = (),
    allow_unchecked: bool = False,
) -> TemplateCheck:
    """Check that `name` in `language` can send a campaign whose contacts give `param_count` body parameters.

    Parameters
    ----------
    conn
        The database (the template cache), or None (a dry run: the Graph API is read, nothing is written).
    components
        The campaign's template components (header media, button parameters).
    allow_unchecked
        When the Graph API cannot be reached, go on unchecked instead of refusing.

    Raises
    ------
    TemplateError
        The template cannot send this campaign; the message says why in one line.
    GraphUnavailableError
        The Graph API could not be asked, and `allow_unchecked` is false.
    """
    waba_id = get_settings().whatsapp_business_account_id
    if not waba_id:
        return TemplateCheck("skipped", "template not checked: WHATSAPP_BUSINESS_ACCOUNT_ID is not set")
    ttl = get_settings().template_cache_seconds
    cached = repository.cached_template(conn, name, language, ttl) if conn is not None else None
    if cached is not None and cached["fresh"]:
        template, languages = cached, [language]
    else:
        try:
            found = fetch(waba_id, name)
        except GraphUnavailableError as exc:
            if allow_unchecked:
                logger.warning("template not checked: the Graph API is unreachable", template=name, error=str(exc))
                return TemplateCheck("unchecked", f"template not checked: {exc} ({ALLOW_FLAG})")
            raise GraphUnavailableError(
                f"cannot check template {name} ({language}): {exc}; try again, or pass {ALLOW_FLAG} to create the "
                "campaign without the check"
            ) from None
        except GraphRefusedError as exc:
            raise TemplateError(
                f"cannot check template {name} ({language}): {exc}; check WHATSAPP_BUSINESS_ACCOUNT_ID ({waba_id}) "
                "and that the access token may read its templates (whatsapp_business_management)"
            ) from None
        if conn is not None and found:
            repository.store_templates(conn, waba_id, found)
        template = next((t for t in found if t.get("language") == language), None)
        languages = sorted(t.get("language", "?") for t in found)
    if template is None:
        where = f"it exists in {', '.join(languages)}" if languages else f"no template has that name in WABA {waba_id}"
        raise TemplateError(f"template {name} does not exist in language {language} ({where})")
    problem = template_problem(template, param_count, components)
    if problem:
        raise TemplateError(f"template {name} ({language}) {problem}")
    takes = f"{param_count} body parameter{'' if param_count == 1 else 's'}"
    return TemplateCheck("passed", f"template {name} ({language}) is APPROVED and takes {takes}", template.get("category"))


def fetch(waba_id: str, name: str) -> list[dict]:
    """Every language of the template `name` (Meta's name filter also matches parts of names: kept exact here)."""
    found, params = [], {"name": name, "fields": FIELDS, "limit": "100"}
    for _ in range(MAX_PAGES):
        page = whatsapp.graph_get(f"{waba_id}/message_templates", params)
        data = page.get("data")
        found += [t for t in data if isinstance(t, dict) and t.get("name") == name] if isinstance(data, list) else []
        after = ((page.get("paging") or {}).get("cursors") or {}).get("after")
        if not (page.get("paging") or {}).get("next") or not after:
            break
        params = {**params, "after": after}
    return found


def body_placeholders(template: dict) -> list[str]:
    """The body's placeholders ({{1}}, {{first_name}}), each once, in order of first use."""
    body = next((c for c in _components(template) if str(c.get("type", "")).upper() == "BODY"), {})
    return list(dict.fromkeys(_PLACEHOLDER.findall(str(body.get("text") or ""))))


def template_problem(template: dict, param_count: int, components: Sequence[dict] = ()) -> str | None:
    """Why the template cannot send a campaign with `param_count` body parameters and `components`; None if it can."""
    status = template.get("status")
    if status != "APPROVED":
        reason = f": {template['reason']}" if template.get("reason") else ""
        return f"is {status}{reason}, not APPROVED: Meta refuses to send it"
    placeholders = body_placeholders(template)
    if str(template.get("parameter_format") or "").upper() == "NAMED" or not all(p.isdigit() for p in placeholders):
        return (f"uses named parameters ({{{{{placeholders[0] if placeholders else 'name'}}}}}); sendonce fills "
                "positional ones, {{1}}..{{N}}, from the contacts' param1..paramN")
    if len(placeholders) != param_count:
        takes = f"{len(placeholders)} body parameter{'s' if len(placeholders) != 1 else ''}"
        gives = f"param1..param{param_count}" if param_count else "no param columns"
        return f"takes {takes}, the contacts give {param_count} ({gives})"
    given = {str(c.get("type", "")).lower(): c for c in components if isinstance(c, dict)}
    header = next((c for c in _components(template) if str(c.get("type", "")).upper() == "HEADER"), None)
    if header is not None:
        form = str(header.get("format") or "TEXT").upper()
        kinds = {str(p.get("type", "")).upper() for p in given.get("header", {}).get("parameters") or []
                 if isinstance(p, dict)}
        if form in MEDIA_HEADERS and form not in kinds:
            article = "an" if form[0] in "AEIOU" else "a"
            return (f"has {article} {form} header: give its media (--header-media {form.lower()}:URL, or a header "
                    "component in the API's components)")
        if form == "TEXT" and _PLACEHOLDER.search(str(header.get("text") or "")) and "TEXT" not in kinds:
            return "has a header with a parameter: give it as a header component in the API's components"
    return None


def _components(template: dict) -> list[dict]:
    components = template.get("components")
    return [c for c in components if isinstance(c, dict)] if isinstance(components, list) else []
