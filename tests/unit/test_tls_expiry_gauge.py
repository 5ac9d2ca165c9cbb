"""Loading TLS files publishes when the certificate and the CA expire (the 14-day alert's input)."""
from __future__ import annotations

from pathlib import Path

from prometheus_client import REGISTRY

from services.common import pki
from services.common.tls import TlsFiles


def test_reading_tls_files_sets_the_expiry_gauges(tmp_path: Path) -> None:
    pki.init_ca(tmp_path)
    issued = pki.issue(tmp_path, "search", days=20)
    TlsFiles(tmp_path / "ca.crt", issued.cert_path, issued.key_path).read()
    cert_expiry = REGISTRY.get_sample_value("doctag_tls_certificate_expiry_timestamp_seconds",
                                            {"certificate": "search.crt"})
    assert cert_expiry == int(issued.not_after.timestamp())  # X.509 keeps whole seconds
    ca_expiry = REGISTRY.get_sample_value("doctag_tls_certificate_expiry_timestamp_seconds", {"certificate": "ca.crt"})
    assert ca_expiry is not None and ca_expiry > cert_expiry
