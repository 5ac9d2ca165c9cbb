"""Web UI settings (environment variables with the `DOCTAG_` prefix)."""
from __future__ import annotations

from pydantic import Field

from services.common.settings import CommonSettings


class WebSettings(CommonSettings):
    service_name: str = "web"
    http_port: int = 8141
    # DOCTAG_WEB_API_URL: the gateway, through which the UI uses the public API like any client.
    web_api_url: str = "http://127.0.0.1:8080"
    # DOCTAG_WEB_COOKIE_SECURE: set `true` behind TLS; the cookie is then `__Host-` prefixed and Secure.
    web_cookie_secure: bool = False
    # Seconds an API call may take (uploads stream for longer: see web_upload_timeout_s).
    web_api_timeout_s: float = Field(30.0, gt=0)
    web_upload_timeout_s: float = Field(600.0, gt=0)
    # Documents per page of the list.
    web_page_size: int = Field(50, ge=1, le=100)
    # Characters of extracted text per page of the document view.
    web_text_page_chars: int = Field(20_000, ge=1000, le=1_000_000)
