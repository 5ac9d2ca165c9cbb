"""The models screen's shadow-mode section (model-serving's `/api/v1/models/{name}/shadow`, platform
admins): the switch's form read into the API's body (the share typed as a percentage, sent as 0–1),
each candidate's report fetched beside the others, and the departments named where the web knows
them. The routes themselves live with the models screen (admin_pages.py)."""
from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from . import messages
from .api import ApiError

SHADOW_FIELDS = ("enabled", "share")

Call = Callable[[str], Awaitable[Any]]


def has_candidate(model: dict[str, Any]) -> bool:
    return bool((model.get("aliases") or {}).get("candidate"))


def parse_shadow_form(form: dict[str, str]) -> tuple[dict[str, Any], dict[str, str]]:
    """The API's body from the switch's form, and a Korean sentence per field the page refuses itself.
    A blank share leaves the service's default (DOCTAG_SHADOW_SHARE)."""
    errors: dict[str, str] = {}
    body: dict[str, Any] = {}
    enabled = form.get("enabled", "")
    if enabled not in ("true", "false"):
        errors["enabled"] = "켜기 또는 끄기를 고르세요."
    else:
        body["enabled"] = enabled == "true"
    raw = form.get("share", "").strip().rstrip("%").strip().replace(",", ".")
    if raw:
        try:
            share = float(raw)
        except ValueError:
            share = -1.0
        if not 0 < share <= 100:
            errors["share"] = messages.SHADOW_SHARE_RULE
        else:
            body["share"] = round(share / 100, 4)
    return body, errors


async def reports(models: list[dict[str, Any]], fetch: Call) -> dict[str, dict[str, Any]]:
    """Model name → {"report": the API's report or None, "error": a Korean sentence or None}, for
    every model with a candidate; fetched together. A 401 is raised (the login page follows)."""
    named = [m["name"] for m in models if has_candidate(m)]
    found = await asyncio.gather(*(fetch(f"/api/v1/models/{name}/shadow") for name in named),
                                 return_exceptions=True)
    out: dict[str, dict[str, Any]] = {}
    for name, result in zip(named, found, strict=True):
        if isinstance(result, ApiError):
            if result.status == 401:
                raise result
            out[name] = {"report": None, "error": messages.problem_message(result)}
        elif isinstance(result, BaseException):
            raise result
        else:
            out[name] = {"report": result, "error": None}
    return out


async def tenant_names(shadow: dict[str, dict[str, Any]], fetch: Call) -> dict[str, str]:
    """Department id → its name, asked only when a report has departments; {} when the list is refused
    (the report then shows ids)."""
    if not any((s["report"] or {}).get("tenants") for s in shadow.values()):
        return {}
    try:
        listing = await fetch("/api/v1/admin/tenants")
    except ApiError as exc:
        if exc.status == 401:
            raise
        return {}
    return {str(t["id"]): str(t.get("name") or t.get("slug") or t["id"]) for t in listing.get("items") or []}
