"""Search service settings (environment variables with the `DOCTAG_` prefix)."""
from __future__ import annotations

from services.common.settings import CommonSettings


class SearchSettings(CommonSettings):
    service_name: str = "search"
    # Read-only role: SELECT on documents.documents and documents.document_tags, subject to RLS.
    db_user: str = "doctag_search"

    http_port: int = 8111
    grpc_port: int = 9111
    # Seconds in-flight gRPC calls get to finish on shutdown.
    shutdown_grace_s: float = 5.0
