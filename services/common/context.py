"""Per-request context (request id, tenant id) carried through logs and outgoing calls."""
from __future__ import annotations

import contextvars
import uuid

request_id_var: contextvars.ContextVar[str | None] = contextvars.ContextVar("request_id", default=None)
tenant_id_var: contextvars.ContextVar[str | None] = contextvars.ContextVar("tenant_id", default=None)

REQUEST_ID_HEADER = "X-Request-ID"
GRPC_REQUEST_ID_KEY = "x-request-id"


def new_request_id() -> str:
    return str(uuid.uuid4())


def current_request_id() -> str:
    rid = request_id_var.get()
    if rid is None:
        rid = new_request_id()
        request_id_var.set(rid)
    return rid


def grpc_metadata() -> tuple[tuple[str, str], ...]:
    """Metadata for an outgoing gRPC call: the current request id."""
    return ((GRPC_REQUEST_ID_KEY, current_request_id()),)
