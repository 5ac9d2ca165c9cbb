"""The shipped kong.yml routes the audit log to upload for administrators only, and restore
through the documents route."""
from __future__ import annotations

import pytest

from gateway.config import load_config
from gateway.plugins.acl import handler as acl
from gateway.plugins.acl.schema import AclConfig
from gateway.router import Router
from gateway.settings import DEFAULT_CONFIG
from services.common.errors import ProblemError


def test_audit_route_allows_administrators_and_analysts_only() -> None:
    router = Router(load_config(DEFAULT_CONFIG))
    match = router.match("GET", "/api/v1/audit")
    assert (match.entry.route.name, match.entry.service.name) == ("audit", "upload")
    config = match.entry.plugins["acl"]
    assert isinstance(config, AclConfig)
    acl.enforce(["tenant_admin"], config)
    acl.enforce(["user", "platform_admin"], config)
    acl.enforce(["analyst"], config)
    with pytest.raises(ProblemError) as refused:
        acl.enforce(["user"], config)
    assert refused.value.status == 403
    # An analyst reaches nothing else: the global acl does not list the role.
    for path in ("/api/v1/documents", "/api/v1/search", "/api/v1/quota", "/api/v1/predict", "/api/v1/models"):
        other = router.match("GET" if path != "/api/v1/predict" else "POST", path).entry.plugins["acl"]
        with pytest.raises(ProblemError):
            acl.enforce(["analyst"], other)


def test_restore_and_purge_go_through_the_documents_route() -> None:
    router = Router(load_config(DEFAULT_CONFIG))
    doc = "/api/v1/documents/0b7e5a8e-0000-4000-8000-000000000000"
    assert router.match("POST", f"{doc}/restore").entry.route.name == "documents"
    assert router.match("DELETE", doc).entry.route.name == "documents"
