"""Storage quota use per tenant for Prometheus (the "tenant at 80% / 100% of its storage quota"
alerts). Set from the quota row each time upload reads or changes it: an upload, a refused
upload, a purge, `GET /api/v1/quota`. Both web replicas export what they last saw; the rules
take the max per tenant. The label is the tenant id (departments number in the hundreds)."""
from __future__ import annotations

from prometheus_client import Gauge

USED = Gauge("doctag_tenant_storage_used_bytes", "Bytes the tenant's documents hold against its quota", ["tenant"])
QUOTA = Gauge("doctag_tenant_storage_quota_bytes", "The tenant's storage quota in bytes", ["tenant"])


def observe(tenant_id: str, quota_bytes: int, used_bytes: int) -> None:
    QUOTA.labels(tenant_id).set(quota_bytes)
    USED.labels(tenant_id).set(used_bytes)
