"""Upload service settings (env prefix DOCTAG_)."""
from __future__ import annotations

from pathlib import Path

from pydantic import Field

from services.common.settings import CommonSettings, read_secret


class UploadSettings(CommonSettings):
    service_name: str = "upload"
    db_user: str = "doctag_upload"
    # The outbox relay connects as its own role, which may read every tenant's outbox rows only.
    relay_db_user: str = "doctag_relay"
    relay_db_password: str = ""
    relay_db_password_file: Path | None = None

    def relay_password(self) -> str:
        if not self.relay_db_password and self.relay_db_password_file is not None:
            return read_secret(self.relay_db_password_file)
        return self.relay_db_password

    http_port: int = 8101
    grpc_port: int = 9101

    blob_dir: Path | None = None
    max_upload_bytes: int = 100 * 1024 * 1024
    # A whole request under /api/v1/documents on upload's own port, as the gateway's documents route allows.
    documents_max_request_bytes: int = 100 * 1024 * 1024
    # Files stored from one multipart request (bulk upload); later files answer 413 `too-many-files`.
    max_files_per_request: int = Field(default=100, ge=1, le=10_000)
    max_title_chars: int = 300
    # Extracted text kept for search and display; longer text is cut (and says so in the log).
    max_text_chars: int = 5_000_000
    # Usage at or above this share of the quota is flagged in answers and announced once per crossing.
    quota_warning_percent: int = Field(default=80, ge=1, le=100)

    # Soft-deleted documents can be restored for this many days; the purge job then removes them.
    deleted_retention_days: int = Field(default=90, ge=0)
    purge_enabled: bool = True
    purge_interval_seconds: float = Field(default=3600.0, gt=0)
    purge_batch_size: int = Field(default=100, ge=1)

    # Search's term statistics (term_stats.py): departments of at least this many documents get their
    # terms with at least `min_postings` postings counted ahead, again once their size moved by `slack`.
    term_stats_enabled: bool = True
    term_stats_interval_seconds: float = Field(default=600.0, gt=0)
    term_stats_min_documents: int = Field(default=10_000, ge=1)
    term_stats_min_postings: int = Field(default=1_000, ge=1)
    term_stats_slack: float = Field(default=0.05, gt=0, le=1)

    # How long a tagging job's capability (signed when the relay publishes the job) lets the worker read
    # the document and record its result. Covers queueing, deferrals while model-serving is away and
    # redeliveries; a job older than this can no longer touch its document (it ends dead-lettered).
    job_capability_ttl_seconds: int = Field(default=86400, ge=60)

    relay_enabled: bool = True
    relay_poll_seconds: float = 1.0
    relay_batch_size: int = 100
    # Fair dispatch (relay.py): tagging jobs of one tenant published and not finished at most. At least
    # workers x prefetch, so one tenant alone keeps every worker busy; 8 = 2 x (2 workers x prefetch 2).
    relay_tenant_max_in_flight: int = Field(default=8, ge=1)
    # A job still unfinished this long (dead-lettered, lost) stops holding its tenant's slot.
    relay_in_flight_timeout_seconds: float = Field(default=900.0, gt=0)

    @property
    def blob_root(self) -> Path:
        return self.blob_dir or self.state_dir / "blobs"
