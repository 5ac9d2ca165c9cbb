"""Department staff's pages: upload, documents, one document, search."""
from __future__ import annotations

import asyncio
import logging
from typing import Any
from urllib.parse import quote

from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse, RedirectResponse, Response, StreamingResponse
from starlette.background import BackgroundTask

from . import messages
from .api import ApiError
from .core import Web, client_ip, day, day_range, uuid_of
from .session import Session, csrf_ok

log = logging.getLogger("web.pages")

# The documents list orders (upload's `sort`, applied on the server across pages), with Korean labels.
SORTS = {"newest": "최신순", "oldest": "오래된순", "title": "제목순", "size": "크기순", "status": "상태순"}
# The file types and orders search's API takes (`type`, `sort`), with their Korean labels.
SEARCH_TYPES = {"pdf": "PDF", "docx": "DOCX", "hwp": "HWP", "hwpx": "HWPX", "txt": "텍스트", "csv": "CSV",
                "md": "마크다운", "html": "HTML", "xml": "XML"}
SEARCH_SORTS = {"relevance": "관련도순", "date": "최신순"}
MAX_STATUS_IDS = 50
MAX_TAG_CHARS = 100


def status_item(doc: dict[str, Any]) -> dict[str, Any]:
    """What the live status updates of the upload and list pages need (no text, no paths)."""
    return {"id": doc["id"], "status": doc.get("status"), "status_label": messages.STATUS_LABELS.get(
        str(doc.get("status")), str(doc.get("status"))), "error": messages.failure_reason(doc.get("error")),
        "error_detail": doc.get("error"),
        "title": doc.get("title"),
        "tags": [{"tag": t["tag"], "score": t.get("score"), "source": t.get("source")} for t in doc.get("tags") or []]}


def router(web: Web) -> APIRouter:
    r = APIRouter()

    form_with_csrf = web.posted_form

    def refused_csrf(request: Request, session: Session) -> Response:
        return web.error_page(request, session, 403, messages.CSRF_REFUSED)

    @r.get("/")
    async def home(request: Request) -> Response:
        return RedirectResponse("/documents" if web.sessions.read(request) else "/login", status_code=303)

    # -- upload -----------------------------------------------------------------------------
    @r.get("/upload")
    async def upload_page(request: Request) -> Response:
        session = web.session(request)
        quota = await _quota(session, request)
        return web.render(request, "upload.html", session, quota=quota)

    async def _quota(session: Session, request: Request) -> dict[str, Any] | None:
        try:
            quota: dict[str, Any] = await web.api.json("GET", "/api/v1/quota", session.token,
                                                       client_ip=client_ip(request))
        except ApiError as exc:
            if exc.status == 401:
                raise
            return None
        return quota

    @r.post("/upload")
    async def upload(request: Request) -> Response:
        """One browser upload (one or more `file` parts), streamed on to the API; the answer is the
        API's with a Korean `message` for each refusal."""
        session = web.session(request)
        if not csrf_ok(request, session, None):
            return JSONResponse({"message": "요청을 확인할 수 없습니다. 페이지를 새로 고치세요."}, status_code=403)
        content_type = request.headers.get("content-type", "")
        if not content_type.startswith("multipart/form-data"):
            return JSONResponse({"message": "파일을 multipart/form-data로 보내야 합니다."}, status_code=415)
        response = await web.api.upload(session.token, content_type, request.headers.get("content-length"),
                                        request.stream(), client_ip(request))
        try:
            body = response.json()
        except ValueError:
            body = {}
        if not isinstance(body, dict):
            body = {}
        if response.status_code >= 400:
            body["message"] = messages.problem_message(response.status_code, body)
        for result in body.get("results") or []:
            if isinstance(result, dict) and int(result.get("status", 0)) >= 400:
                result["message"] = messages.problem_message(int(result["status"]), result.get("problem") or {})
        if response.status_code == 401:
            return JSONResponse({"login": True, "message": messages.FLASH["expired"]}, status_code=401)
        return JSONResponse(body, status_code=response.status_code)

    # -- documents ----------------------------------------------------------------------------
    @r.get("/documents")
    async def documents(request: Request, status: str | None = None, tag: str | None = None,
                        since: str | None = None, until: str | None = None, sort: str = "newest",
                        cursor: str | None = None, restore: str | None = None, deleted: bool = False) -> Response:
        session = web.session(request)
        since_day, until_day = day(since), day(until)
        filters: dict[str, str | None] = {
            "status": status if status in messages.STATUS_LABELS else None,
            "tag": (tag or "").strip()[:MAX_TAG_CHARS] or None,
            "since": since_day.isoformat() if since_day else None,
            "until": until_day.isoformat() if until_day else None,
            "sort": sort if sort in SORTS else "newest",
            "deleted": "1" if deleted else None}
        params: dict[str, Any] = {"limit": web.settings.web_page_size, **day_range(since_day, until_day)}
        for key in ("status", "tag"):
            if filters[key]:
                params[key] = filters[key]
        if filters["sort"] != "newest":
            params["sort"] = filters["sort"]
        if deleted:
            params["deleted"] = "true"
        if cursor:
            params["cursor"] = cursor
        error = None
        items: list[dict[str, Any]] = []
        next_cursor = None
        try:
            page = await web.api.json("GET", "/api/v1/documents", session.token, params=params,
                                      client_ip=client_ip(request))
            items, next_cursor = page["items"], page.get("next_cursor")
        except ApiError as exc:
            if exc.status == 401:
                raise
            error = messages.problem_message(exc)
        return web.render(request, "documents.html", session, items=items, next_cursor=next_cursor,
                          filters=filters, sorts=SORTS, error=error, cursor=cursor,
                          restore_id=uuid_of(restore))

    @r.get("/documents/status")
    async def statuses(request: Request, id: list[str] = Query([])) -> Response:
        """Current status and tags of up to 50 documents, for the live updates (polled with back-off)."""
        session = web.session(request)
        ids = [i for i in dict.fromkeys(uuid_of(x) for x in id[:MAX_STATUS_IDS]) if i]

        async def one(doc_id: str) -> dict[str, Any]:
            try:
                doc = await web.api.json("GET", f"/api/v1/documents/{doc_id}", session.token,
                                         client_ip=client_ip(request))
            except ApiError as exc:
                if exc.status == 404:
                    return {"id": doc_id, "status": "gone", "status_label": "삭제됨", "tags": []}
                raise
            return status_item(doc)

        try:
            items = await asyncio.gather(*(one(i) for i in ids))
        except ApiError as exc:
            if exc.status == 401:
                return JSONResponse({"login": True, "message": messages.FLASH["expired"]}, status_code=401)
            return JSONResponse({"message": messages.problem_message(exc)}, status_code=exc.status)
        return JSONResponse({"items": items}, headers={"Cache-Control": "no-store"})

    @r.get("/documents/{document_id}")
    async def document(request: Request, document_id: str, offset: int = Query(0, ge=0)) -> Response:
        session = web.session(request)
        doc_id = uuid_of(document_id)
        if doc_id is None:
            return web.error_page(request, session, 404, messages.problem_message(404))
        doc = await web.api.json("GET", f"/api/v1/documents/{doc_id}", session.token, client_ip=client_ip(request))
        text = None
        if doc.get("status") == "tagged":
            text = await _text_page(session, request, doc_id, offset)
        similar = await _similar(session, request, doc_id) if doc.get("status") == "tagged" else None
        model_tags = [t for t in doc.get("tags") or [] if t.get("source") != "user"]
        user_tags = [t for t in doc.get("tags") or [] if t.get("source") == "user"]
        return web.render(request, "document.html", session, doc=doc, text=text, similar=similar,
                          model_tags=model_tags, user_tags=user_tags, max_tag_chars=MAX_TAG_CHARS)

    async def _text_page(session: Session, request: Request, doc_id: str, offset: int) -> dict[str, Any]:
        limit = web.settings.web_text_page_chars
        try:
            response = await web.api.send("GET", f"/api/v1/documents/{doc_id}/text", session.token,
                                          params={"offset": offset, "limit": limit}, client_ip=client_ip(request))
        except ApiError as exc:
            if exc.status == 401:
                raise
            return {"error": messages.problem_message(exc)}
        total = int(response.headers.get("x-text-length", "0") or 0)
        nxt = response.headers.get("x-next-offset")
        return {"body": response.text, "offset": offset, "total": total,
                "next": int(nxt) if nxt and nxt.isdigit() else None,
                "prev": max(0, offset - limit) if offset > 0 else None,
                "page": offset // limit + 1, "pages": max(1, -(-total // limit))}

    async def _similar(session: Session, request: Request, doc_id: str) -> list[dict[str, Any]] | None:
        """Similar documents when the API offers them (search's `GET /api/v1/search/documents/{id}/similar`,
        `hits` closest first); the section stays hidden while it answers anything but 200."""
        try:
            body = await web.api.json("GET", f"/api/v1/search/documents/{doc_id}/similar", session.token,
                                      params={"limit": 5}, client_ip=client_ip(request))
        except ApiError:
            return None
        found = body.get("items", body.get("hits")) if isinstance(body, dict) else body
        if not isinstance(found, list):
            return None
        return [d for d in found if isinstance(d, dict) and uuid_of(str(d.get("id", "")))]

    @r.get("/documents/{document_id}/download")
    async def download(request: Request, document_id: str) -> Response:
        session = web.session(request)
        doc_id = uuid_of(document_id)
        if doc_id is None:
            return web.error_page(request, session, 404, messages.problem_message(404))
        upstream = await web.api.stream(f"/api/v1/documents/{doc_id}/content", session.token, client_ip(request))
        headers = {k: v for k, v in upstream.headers.items()
                   if k.lower() in ("content-type", "content-length", "content-disposition", "etag")}
        headers["Cache-Control"] = "private, no-store"
        return StreamingResponse(upstream.aiter_raw(), status_code=200, headers=headers,
                                 background=BackgroundTask(upstream.aclose))

    @r.post("/documents/{document_id}/delete")
    async def delete(request: Request, document_id: str) -> Response:
        session = web.session(request)
        doc_id = uuid_of(document_id)
        if await form_with_csrf(request, session) is None:
            return refused_csrf(request, session)
        if doc_id is None:
            return web.error_page(request, session, 404, messages.problem_message(404))
        await web.api.send("DELETE", f"/api/v1/documents/{doc_id}", session.token, client_ip=client_ip(request))
        return RedirectResponse(f"/documents?msg=deleted&restore={doc_id}", status_code=303)

    @r.post("/documents/{document_id}/restore")
    async def restore(request: Request, document_id: str) -> Response:
        session = web.session(request)
        doc_id = uuid_of(document_id)
        if await form_with_csrf(request, session) is None:
            return refused_csrf(request, session)
        if doc_id is None:
            return web.error_page(request, session, 404, messages.problem_message(404))
        await web.api.send("POST", f"/api/v1/documents/{doc_id}/restore", session.token,
                           client_ip=client_ip(request))
        return RedirectResponse(f"/documents/{doc_id}?msg=restored", status_code=303)

    @r.post("/documents/{document_id}/tags")
    async def add_tag(request: Request, document_id: str) -> Response:
        session = web.session(request)
        doc_id = uuid_of(document_id)
        form = await form_with_csrf(request, session)
        if form is None:
            return refused_csrf(request, session)
        if doc_id is None:
            return web.error_page(request, session, 404, messages.problem_message(404))
        await web.api.send("POST", f"/api/v1/documents/{doc_id}/tags", session.token,
                           json={"tag": form.get("tag", "")}, client_ip=client_ip(request))
        return RedirectResponse(f"/documents/{doc_id}?msg=tag-added#tags", status_code=303)

    @r.post("/documents/{document_id}/tags/remove")
    async def remove_tag(request: Request, document_id: str) -> Response:
        session = web.session(request)
        doc_id = uuid_of(document_id)
        form = await form_with_csrf(request, session)
        if form is None:
            return refused_csrf(request, session)
        source = form.get("source", "")
        if doc_id is None or source not in ("model", "user"):
            return web.error_page(request, session, 404, messages.problem_message(404))
        tag = quote(form.get("tag", ""), safe="")
        await web.api.send("DELETE", f"/api/v1/documents/{doc_id}/tags/{tag}", session.token,
                           params={"source": source}, client_ip=client_ip(request))
        return RedirectResponse(f"/documents/{doc_id}?msg=tag-removed#tags", status_code=303)

    # -- search -------------------------------------------------------------------------------
    @r.get("/search")
    async def search(request: Request, q: str = "", tag: list[str] = Query([]),
                     cursor: str | None = None, uploaded_from: str | None = Query(None, alias="from"),
                     uploaded_to: str | None = Query(None, alias="to"), type_: str | None = Query(None, alias="type"),
                     sort: str | None = None) -> Response:
        session = web.session(request)
        q = q.strip()
        tags = list(dict.fromkeys(t.strip()[:MAX_TAG_CHARS] for t in tag if t.strip()))[:10]
        start, end = day(uploaded_from), day(uploaded_to)
        # Search's own date, file-type and order parameters (a bare `to` date includes that day).
        filters: dict[str, str | None] = {
            "from": start.isoformat() if start else None, "to": end.isoformat() if end else None,
            "type": type_ if type_ in SEARCH_TYPES else None,
            "sort": sort if sort in SEARCH_SORTS and sort != "relevance" else None}
        result, error = None, None
        if q or tags or filters["from"] or filters["to"] or filters["type"]:
            params: list[tuple[str, str]] = [("limit", "20")]
            if q:
                params.append(("q", q))
            params += [("tag", t) for t in tags]
            params += [(k, v) for k, v in filters.items() if v]
            if cursor:
                params.append(("cursor", cursor))
            try:
                result = await web.api.json("GET", "/api/v1/search", session.token, params=params,
                                            client_ip=client_ip(request))
            except ApiError as exc:
                if exc.status == 401:
                    raise
                error = messages.problem_message(exc)
        return web.render(request, "search.html", session, q=q, tags=tags, result=result, error=error,
                          cursor=cursor, filters=filters, base={"q": q, "tag": tags, **filters},
                          types=SEARCH_TYPES, sorts=SEARCH_SORTS)

    return r
