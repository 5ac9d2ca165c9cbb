"""The proxy port's answer to a request uvicorn cannot parse (a raw non-ASCII byte in the URL, a
broken request line or header): RFC 9457 problem+json like every other refusal, instead of
uvicorn's plain-text "Invalid HTTP request received.". The connection is closed afterwards, as
uvicorn does, since the parser's state is lost."""
from __future__ import annotations

import json

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from services.common.errors import problem_body

DETAIL = ("the request is not valid HTTP/1.1: a malformed request line or header "
          "(characters outside ASCII in the URL must be percent-encoded, e.g. ?q=%EC%98%88%EC%82%B0)")


def problem_400_bytes() -> bytes:
    body = json.dumps(problem_body(400, DETAIL, errors=[{"field": "request", "message": DETAIL}]),
                      ensure_ascii=False).encode("utf-8")
    head = (b"HTTP/1.1 400 Bad Request\r\n"
            b"content-type: application/problem+json\r\n"
            b"content-length: " + str(len(body)).encode("ascii") + b"\r\n"
            b"x-content-type-options: nosniff\r\n"
            b"cache-control: no-store\r\n"
            b"connection: close\r\n\r\n")
    return head + body


class ProblemHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol answering unparseable requests with problem+json."""

    def send_400_response(self, msg: str) -> None:
        self.transport.write(problem_400_bytes())
        self.transport.close()
