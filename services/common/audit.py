"""Writing to the audit log (`documents.audit_log`, migration 0007), shared by upload and the gateway.

The table is append-only for the services' roles (INSERT and SELECT only) and scoped by
row-level security: a row is written for the tenant of the transaction (`app.tenant_id`), or for
no tenant when none is set (a login attempt naming an unknown tenant). Callers pass only what is
safe to keep for years: never a password, a token or document text.
"""
from __future__ import annotations

import json
from typing import Any, Final

from .db import DictConnection

SUCCESS: Final = "success"
DENIED: Final = "denied"    # an authenticated caller whose roles do not allow the request
FAILED: Final = "failed"    # attempted and did not succeed (wrong credentials, processing failure)
OUTCOMES: Final = (SUCCESS, DENIED, FAILED)

# Every action that is recorded; `GET /api/v1/audit?action=` accepts exactly these.
DOCUMENT_UPLOADED: Final = "document.uploaded"
DOCUMENT_DUPLICATE: Final = "document.duplicate"   # an upload answered with the existing document
DOCUMENT_DELETED: Final = "document.deleted"       # soft delete: hidden, restorable within retention
DOCUMENT_RESTORED: Final = "document.restored"
DOCUMENT_PURGED: Final = "document.purged"         # rows, text, tags and (when unshared) bytes removed
DOCUMENT_PROCESSING: Final = "document.processing"
DOCUMENT_TAGGED: Final = "document.tagged"
DOCUMENT_FAILED: Final = "document.failed"
DOCUMENT_TAG_ADDED: Final = "document.tag_added"      # a person added their own tag (source user)
DOCUMENT_TAG_REMOVED: Final = "document.tag_removed"  # a person removed a model's or a person's tag
DOCUMENT_RETRIED: Final = "document.retried"       # an administrator queued a failed or dead-lettered job again
DATASET_CREATED: Final = "dataset.created"        # a gated dataset version was stored (model-serving)
DATASET_APPROVED: Final = "dataset.approved"
DATASET_REJECTED: Final = "dataset.rejected"
DATASET_DELETED: Final = "dataset.deleted"
TRAINING_SUBMITTED: Final = "training.submitted"
TRAINING_CANCELLED: Final = "training.cancelled"
TRAINING_FINISHED: Final = "training.finished"    # READY or FAILED, with the model version and metrics
MODEL_PROMOTED: Final = "model.promoted"          # an alias moved by the promotion policy or an admin
MODEL_SHADOW_CHANGED: Final = "model.shadow_changed"  # a platform admin switched a model's shadow mode
AUDIT_READ: Final = "audit.read"                   # recorded when denied
QUEUE_READ: Final = "queue.read"                   # the tagging queue; recorded when denied
AUTH_LOGIN: Final = "auth.login"
ACCESS_DENIED: Final = "access.denied"             # the gateway's acl refused the caller's roles (403)
# Changes through the gateway's admin API (migration 0019 lets the gateway write exactly these),
# recorded in the changed tenant's log in the transaction of the change; `details.target` names
# what changed (never a password or a key).
ADMIN_USER_CREATED: Final = "admin.user_created"
ADMIN_USER_ROLE_CHANGED: Final = "admin.user_role_changed"
ADMIN_USER_DISABLED: Final = "admin.user_disabled"
ADMIN_USER_ENABLED: Final = "admin.user_enabled"
ADMIN_USER_PASSWORD_RESET: Final = "admin.user_password_reset"
ADMIN_API_KEY_CREATED: Final = "admin.api_key_created"
ADMIN_API_KEY_REVOKED: Final = "admin.api_key_revoked"
ADMIN_TENANT_QUOTA_CHANGED: Final = "admin.tenant_quota_changed"
# Written by upload (services/upload/storage_quotas.py), whose role may insert any action for
# the transaction's tenant: a platform_admin changed a tenant's storage quota.
ADMIN_STORAGE_QUOTA_CHANGED: Final = "admin.storage_quota_changed"
ADMIN_ACTIONS: Final = (ADMIN_USER_CREATED, ADMIN_USER_ROLE_CHANGED, ADMIN_USER_DISABLED, ADMIN_USER_ENABLED,
                        ADMIN_USER_PASSWORD_RESET, ADMIN_API_KEY_CREATED, ADMIN_API_KEY_REVOKED,
                        ADMIN_TENANT_QUOTA_CHANGED)
ACTIONS: Final = (DOCUMENT_UPLOADED, DOCUMENT_DUPLICATE, DOCUMENT_DELETED, DOCUMENT_RESTORED, DOCUMENT_PURGED,
                  DOCUMENT_PROCESSING, DOCUMENT_TAGGED, DOCUMENT_FAILED, DOCUMENT_TAG_ADDED, DOCUMENT_TAG_REMOVED,
                  DOCUMENT_RETRIED, DATASET_CREATED, DATASET_APPROVED, DATASET_REJECTED, DATASET_DELETED,
                  TRAINING_SUBMITTED, TRAINING_CANCELLED, TRAINING_FINISHED, MODEL_PROMOTED, MODEL_SHADOW_CHANGED,
                  AUDIT_READ, QUEUE_READ,
                  AUTH_LOGIN, ACCESS_DENIED, *ADMIN_ACTIONS, ADMIN_STORAGE_QUOTA_CHANGED)

# Actor names of what the platform does by itself: the purge job, and the tagging worker's reports.
SYSTEM_ACTOR: Final = "system"
WORKER_ACTOR: Final = "tagging-worker"
TRAINING_ACTOR: Final = "training"


async def record(conn: DictConnection, *, action: str, outcome: str = SUCCESS, actor_id: str | None,
                 actor_name: str | None, document_id: str | None = None, request_id: str | None,
                 details: dict[str, Any] | None = None) -> None:
    """Appends one entry for the transaction's tenant (NULL when none is set)."""
    if action not in ACTIONS or outcome not in OUTCOMES:
        raise ValueError(f"unknown audit action/outcome {action!r}/{outcome!r}")
    await conn.execute(
        "INSERT INTO documents.audit_log "
        "(tenant_id, actor_id, actor_name, action, document_id, request_id, outcome, details) "
        "VALUES (public.app_tenant_id(), %s, %s, %s, %s, %s, %s, %s)",
        (actor_id, actor_name, action, document_id, request_id, outcome,
         json.dumps(details or {}, ensure_ascii=False)))
