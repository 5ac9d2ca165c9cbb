"""The `document.uploaded` job message and how to read it from an AMQP delivery."""
from __future__ import annotations

import json
import re
import uuid
from dataclasses import dataclass
from typing import Any

_SHA256 = re.compile(r"^[0-9a-f]{64}$")
REQUIRED = ("document_id", "tenant_id", "sha256", "capability")


class InvalidJob(ValueError):
    """The message can never be processed (not JSON, fields missing or wrong)."""


@dataclass(frozen=True)
class Job:
    document_id: str
    tenant_id: str
    sha256: str
    filename: str
    content_type: str
    size_bytes: int
    # Signed by upload for this document, tenant and content version; presented with every call about it.
    capability: str = ""
    title: str = ""   # the document's title at upload (read by its embedding); "" in older messages

    @classmethod
    def from_body(cls, body: bytes) -> Job:
        try:
            payload = json.loads(body.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise InvalidJob(f"body is not JSON: {exc}") from exc
        if not isinstance(payload, dict):
            raise InvalidJob("body is not a JSON object")
        event = payload.get("event", "document.uploaded")
        if event != "document.uploaded":
            raise InvalidJob(f"unexpected event {event!r}")
        missing = [name for name in REQUIRED if not payload.get(name)]
        if missing:
            raise InvalidJob(f"missing fields: {', '.join(missing)}")
        document_id = _uuid(payload["document_id"], "document_id")
        tenant_id = _uuid(payload["tenant_id"], "tenant_id")
        sha256 = str(payload["sha256"]).lower()
        if not _SHA256.match(sha256):
            raise InvalidJob("sha256 is not 64 hex digits")
        capability = payload["capability"]
        if not isinstance(capability, str) or len(capability) > 4096:
            raise InvalidJob("capability is not a string of at most 4096 characters")
        size = payload.get("size_bytes", 0)
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise InvalidJob("size_bytes is not a non-negative integer")
        return cls(document_id=document_id, tenant_id=tenant_id, sha256=sha256,
                   filename=_str(payload.get("filename")), content_type=_str(payload.get("content_type")),
                   size_bytes=size, title=_str(payload.get("title"))[:1000], capability=capability)


def _uuid(value: Any, field: str) -> str:
    try:
        return str(uuid.UUID(str(value)))
    except ValueError as exc:
        raise InvalidJob(f"{field} is not a UUID") from exc


def _str(value: Any) -> str:
    return value if isinstance(value, str) else ""


def _header_count(headers: dict[str, Any] | None, name: str) -> int:
    """A non-negative count from a message header (0 when absent or not a number)."""
    value = (headers or {}).get(name, 0)
    try:
        return max(0, int(value))
    except (TypeError, ValueError):
        return 0


def delivery_count(headers: dict[str, Any] | None) -> int:
    """How often the broker delivered this message before (quorum queues set x-delivery-count)."""
    return _header_count(headers, "x-delivery-count")


def is_last_delivery(count: int, delivery_limit: int) -> bool:
    """True when a failure now must be final: the worker gives the job up at `delivery_limit` deliveries."""
    return count >= delivery_limit - 1


# How often this job was put back at the end of the queue because model-serving was unavailable. Our
# own header: a deferral publishes a fresh message, whose broker delivery count starts at zero again.
DEFERRALS_HEADER = "doctag-deferrals"


def deferral_count(headers: dict[str, Any] | None) -> int:
    return _header_count(headers, DEFERRALS_HEADER)


def deferral_delay(deferrals: int, initial: float, maximum: float) -> float:
    """Seconds to wait before the next deferral: `initial`, doubling per earlier deferral, at most `maximum`."""
    return max(0.0, min(maximum, initial * 2.0 ** min(max(deferrals, 0), 32)))
