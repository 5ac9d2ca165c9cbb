"""Korean wording: API problems, statuses, audit actions, flash messages, sizes and times."""
from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

from .api import ApiError

KST = timezone(timedelta(hours=9), "KST")

STATUS_LABELS = {"queued": "대기 중", "processing": "처리 중", "tagged": "태깅 완료", "failed": "실패"}

ROLE_LABELS = {"user": "사용자", "tenant_admin": "부서 관리자", "platform_admin": "플랫폼 관리자",
               "analyst": "분석가 (읽기 전용)"}

ACTION_LABELS = {
    "document.uploaded": "문서 업로드", "document.duplicate": "중복 업로드", "document.deleted": "문서 삭제",
    "document.restored": "문서 복원", "document.purged": "문서 영구 삭제", "document.processing": "처리 시작",
    "document.tagged": "태깅 완료", "document.failed": "처리 실패", "document.tag_added": "태그 추가",
    "document.tag_removed": "태그 삭제", "document.retried": "태깅 재시도", "audit.read": "감사 로그 조회",
    "queue.read": "태깅 대기열 조회", "auth.login": "로그인",
    "access.denied": "접근 거부", "admin.storage_quota_changed": "저장 용량 한도 변경",
    "admin.user_created": "사용자 추가", "admin.user_role_changed": "사용자 역할 변경",
    "admin.user_disabled": "사용자 비활성화", "admin.user_enabled": "사용자 활성화",
    "admin.user_password_reset": "비밀번호 재설정", "admin.api_key_created": "API 키 발급",
    "admin.api_key_revoked": "API 키 폐기", "admin.tenant_quota_changed": "API 일일 한도 변경",
    "dataset.created": "데이터셋 등록", "dataset.approved": "데이터셋 승인",
    "dataset.rejected": "데이터셋 반려", "dataset.deleted": "데이터셋 삭제", "training.submitted": "학습 작업 요청",
    "training.cancelled": "학습 작업 취소", "training.finished": "학습 작업 종료", "model.promoted": "모델 승격",
    "model.shadow_changed": "섀도 모드 변경",
}
OUTCOME_LABELS = {"success": "성공", "denied": "거부", "failed": "실패"}

# Flash messages after a redirect, by code (never text taken from the URL).
FLASH = {
    "deleted": "문서를 삭제했습니다. 보존 기간 안에는 복원할 수 있습니다.",
    "restored": "문서를 복원했습니다.",
    "tag-added": "태그를 추가했습니다.",
    "tag-removed": "태그를 삭제했습니다.",
    "alias-set": "별칭을 변경했습니다.",
    "user-created": "사용자를 만들었습니다.",
    "user-role": "역할을 변경했습니다. 그 사용자는 다시 로그인해야 합니다.",
    "user-disable": "사용자를 사용 중지했습니다. 발급된 토큰도 더는 쓸 수 없습니다.",
    "user-enable": "사용자를 다시 사용하도록 했습니다.",
    "user-password": "비밀번호를 재설정했습니다. 그 사용자는 새 비밀번호로 다시 로그인해야 합니다.",
    "key-revoked": "API 키를 폐기했습니다.",
    "quota-set": "API 호출 한도를 변경했습니다.",
    "storage-quota-set": "저장 용량 한도를 변경했습니다.",
    "retried": "다시 태깅하도록 대기열에 넣었습니다.",
    "logged-out": "로그아웃했습니다.",
    "expired": "세션이 만료되었습니다. 다시 로그인하세요.",
}

CSRF_REFUSED = "요청을 확인할 수 없습니다. 페이지를 새로 고친 뒤 다시 시도하세요."

_BY_SLUG = {
    "invalid-credentials": "부서 코드, 사용자 이름 또는 비밀번호가 올바르지 않습니다.",
    "token-expired": "세션이 만료되었습니다. 다시 로그인하세요.",
    "invalid-token": "세션이 유효하지 않습니다. 다시 로그인하세요.",
    "unauthorized": "로그인이 필요합니다.",
    "quota-exceeded": "부서의 저장 용량이 부족하여 저장하지 못했습니다.",
    "unsupported-media-type": ("지원하지 않는 파일 형식입니다. "
                               "PDF, DOCX, HWP, HWPX, TXT, CSV, MD, HTML, XML만 올릴 수 있습니다."),
    "payload-too-large": "파일이 너무 큽니다.",
    "too-many-files": "한 번에 올릴 수 있는 파일 수를 넘었습니다.",
    "document-not-tagged": "아직 태깅이 끝나지 않아 본문을 볼 수 없습니다.",
    "document-not-deleted": "삭제되지 않은 문서입니다.",
    "retention-expired": "보존 기간이 지나 복원할 수 없습니다.",
    "rate-limited": "요청이 너무 많습니다. 잠시 후 다시 시도하세요.",
}

_BY_STATUS = {
    400: "요청이 올바르지 않습니다.",
    401: "로그인이 필요합니다.",
    403: "이 작업을 할 권한이 없습니다.",
    404: "찾을 수 없습니다. 삭제되었거나 다른 부서의 문서입니다.",
    409: "현재 상태에서는 할 수 없는 작업입니다.",
    410: "보존 기간이 지나 복원할 수 없습니다.",
    413: "파일이 너무 큽니다.",
    415: _BY_SLUG["unsupported-media-type"],
    422: "입력값이 올바르지 않습니다.",
    429: _BY_SLUG["rate-limited"],
    502: "서비스에 연결할 수 없습니다. 잠시 후 다시 시도하세요.",
    503: "서비스를 일시적으로 사용할 수 없습니다. 잠시 후 다시 시도하세요.",
    504: "서비스 응답이 늦어지고 있습니다. 잠시 후 다시 시도하세요.",
    507: _BY_SLUG["quota-exceeded"],
}

_FIELDS = {"tenant": "부서 코드", "username": "사용자 이름", "password": "비밀번호", "q": "검색어",
           "tag": "태그", "file": "파일", "title": "제목", "since": "시작일", "until": "종료일",
           "version": "버전", "offset": "위치", "cursor": "페이지", "role": "역할", "roles": "역할",
           "name": "이름", "disabled": "사용 여부", "api_daily_quota": "하루 API 호출 한도", "days": "기간",
           "tenant_id": "부서", "sort": "정렬", "document_id": "문서"}


def problem_message(error: ApiError | int, problem: dict[str, Any] | None = None) -> str:
    """A sentence a department employee understands, for an API refusal."""
    status = error.status if isinstance(error, ApiError) else error
    body = error.problem if isinstance(error, ApiError) else (problem or {})
    kind = str(body.get("type", ""))
    slug = kind.rsplit(":", 1)[-1] if kind.startswith("urn:doctag:problem:") else ""
    if slug in _BY_SLUG:
        message = _BY_SLUG[slug]
    else:
        message = _BY_STATUS.get(status, "요청을 처리하지 못했습니다." if status < 500 else _BY_STATUS[503])
    if status == 429 and isinstance(error, ApiError) and error.headers.get("retry-after", "").isdigit():
        message = f"요청이 너무 많습니다. {error.headers['retry-after']}초 후 다시 시도하세요."
    if status == 422:
        fields = [str(e.get("field", "")) for e in body.get("errors") or [] if isinstance(e, dict)]
        names = [_FIELDS.get(f.rsplit(".", 1)[-1], f) for f in fields if f]
        if names:
            message = f"{', '.join(dict.fromkeys(names))} 값이 올바르지 않습니다."
    return message


# The tagging worker's failure reasons (English, for operators) in words staff understand; the
# original reason stays visible beside it.
_FAILURES = (
    (("encrypted", "password"), "암호가 걸린 파일이라 읽을 수 없습니다. 암호를 풀고 다시 올리세요."),
    (("DRM", "certificate"), "보안(DRM) 처리된 파일이라 읽을 수 없습니다. 보호를 해제한 사본을 올리세요."),
    (("distribution",), "배포용 문서라 본문을 추출할 수 없습니다."),
    (("text layer", "OCR", "no text"), "글자 정보가 없는 PDF(스캔본)라 본문을 추출할 수 없습니다."),
    (("empty",), "빈 파일입니다."),
    (("damaged", "not a valid", "not a complete"), "파일이 손상되었거나 형식이 맞지 않습니다."),
    (("not supported", "unsupported"), "지원하지 않는 파일 형식 또는 버전입니다."),
)


def failure_reason(error: Any) -> str | None:
    """A Korean sentence for a `failed` document's reason (None when there is no reason)."""
    if not error:
        return None
    text = str(error)
    for keys, sentence in _FAILURES:
        if any(k.lower() in text.lower() for k in keys):
            return sentence
    return "파일을 처리하지 못했습니다."


PII_LABELS = {"rrn": "주민등록번호", "rrn_unverified": "주민등록번호(미확인)", "frn": "외국인등록번호",
              "frn_unverified": "외국인등록번호(미확인)", "mobile": "휴대전화", "landline": "유선전화",
              "email": "이메일", "bank_account": "계좌번호", "card": "카드번호"}


def details(value: Any, limit: int = 400) -> str:
    """An audit entry's details as `key: value` pairs (JSON for lists and objects), cut to `limit`."""
    if not isinstance(value, dict):
        return ""
    parts = []
    for key, item in value.items():
        shown = ("-" if item is None else item if isinstance(item, str | int | float)
                 else json.dumps(item, ensure_ascii=False))
        parts.append(f"{key}: {shown}")
    text = " · ".join(parts)
    return text if len(text) <= limit else text[: limit - 1] + "…"


HEADLINE_METRICS = ("macro_f1", "accuracy")


def metric_lines(metrics: Any, limit: int = 4) -> list[str]:
    """Validation metrics of a model version as short lines (`validation/headlines macro_f1 0.871 ·
    accuracy 0.873`): every nested set that has a headline number, per-label details left out."""
    found: list[str] = []

    def walk(value: Any, path: list[str]) -> None:
        if not isinstance(value, dict) or len(found) >= limit:
            return
        numbers = [f"{k} {value[k]:.3f}" for k in HEADLINE_METRICS if isinstance(value.get(k), int | float)]
        if numbers:
            found.append(" · ".join([*(["/".join(path)] if path else []), *numbers]))
        for key, item in value.items():
            if key != "per_label":
                walk(item, [*path, str(key)])

    walk(metrics, [])
    return found[:limit]


def file_size(value: Any) -> str:
    try:
        size = float(value)
    except (TypeError, ValueError):
        return "-"
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1024 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} TB"


def parse_time(value: Any) -> datetime | None:
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    if not isinstance(value, str) or not value:
        return None
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def local_time(value: Any) -> str:
    """Times are stored in UTC; staff read them in Korean time."""
    parsed = parse_time(value)
    return parsed.astimezone(KST).strftime("%Y-%m-%d %H:%M") if parsed else "-"


def percent(value: Any) -> str:
    try:
        return f"{float(value) * 100:.0f}%"
    except (TypeError, ValueError):
        return "-"
