"""Korean wording: API problems, statuses, audit actions, flash messages, sizes and times."""
from __future__ import annotations

import json
import re
from collections.abc import Collection
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
    "dataset-created": "데이터셋을 등록했습니다. 품질 검사 결과를 확인한 뒤 승인하세요.",
    "dataset-same": "같은 내용의 버전이 이미 있어 새 버전을 만들지 않았습니다.",
    "dataset-approved": "버전을 승인했습니다. 이제 학습에 쓸 수 있습니다.",
    "dataset-rejected": "버전을 반려했습니다.",
    "dataset-deleted": "데이터셋을 삭제했습니다. 90일 동안 보관한 뒤 영구 삭제합니다.",
    "job-started": "학습 작업을 요청했습니다. 차례가 되면 학습 작업자가 시작합니다.",
    "job-cancelled": "학습 작업을 취소했습니다. 실행 중이던 작업은 다음 신호(하트비트) 때 멈춥니다.",
    "alias-rolled-back": "별칭을 이전 버전으로 되돌렸습니다.",
    "shadow-on": ("섀도 모드를 켰습니다. 후보 모델이 실시간 요청의 일부를 운영 모델과 함께 채점합니다 "
                  "(모든 모델 서버에 반영되기까지 최대 30초)."),
    "shadow-off": "섀도 모드를 껐습니다. 지금까지의 비교 결과는 그대로 볼 수 있습니다.",
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
    "invalid-dataset": "학습 데이터 파일의 형식이 올바르지 않습니다.",
    "training-limit": "진행 중인 학습 작업이 한도에 도달했습니다. 진행 중인 작업이 끝난 뒤 다시 시도하세요.",
    "registry-unavailable": "모델 저장소에 연결할 수 없습니다. 잠시 후 다시 시도하세요.",
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
           "tenant_id": "부서", "sort": "정렬", "document_id": "문서", "task": "과제", "shared": "공용 여부",
           "source": "데이터 출처", "note": "사유", "dataset": "데이터셋", "dataset_versions": "학습 데이터",
           "model": "모델 이름", "priority": "우선순위", "seed": "시드", "timeout_s": "제한 시간",
           "epochs": "에폭", "tune_layers": "미세 조정 층 수", "max_windows": "문서당 구간 수",
           "window_tokens": "구간 길이(토큰)", "learning_rate": "학습률", "hyperparameters": "학습 설정",
           "label": "라벨", "text": "본문", "alias": "별칭", "enabled": "섀도 모드 켜기/끄기",
           "share": "섀도 비율", "candidate_version": "후보 버전"}


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
    retry_after = error.headers.get("retry-after", "") if isinstance(error, ApiError) else ""
    if status == 429 and slug == "training-limit":
        limit = body.get("limit")
        message = ("진행 중인 학습 작업이 한도" + (f"({limit}개)" if isinstance(limit, int) else "")
                   + "에 도달했습니다. 진행 중인 작업이 끝나거나 취소한 뒤 다시 시도하세요"
                   + (f" ({retry_after}초 뒤 다시 확인할 수 있습니다)." if retry_after.isdigit() else "."))
    elif status == 429 and retry_after.isdigit():
        message = f"요청이 너무 많습니다. {retry_after}초 후 다시 시도하세요."
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


def metric_sets(metrics: Any) -> list[dict[str, Any]]:
    """Every nested set of a version's metrics with a macro-F1, for the evaluation tables: `name`
    (`validation/headlines`), `macro_f1`, `accuracy`, `n` and `per_label` (label → precision,
    recall, f1, support)."""
    found: list[dict[str, Any]] = []

    def walk(value: Any, path: list[str]) -> None:
        if not isinstance(value, dict):
            return
        if isinstance(value.get("macro_f1"), int | float):
            per_label = value.get("per_label")
            per_label = per_label if isinstance(per_label, dict) else {}
            found.append({"name": "/".join(path) or "-", "macro_f1": value["macro_f1"],
                          "accuracy": value.get("accuracy"), "n": value.get("n"),
                          "per_label": {k: v for k, v in per_label.items() if isinstance(v, dict)}})
            return
        for key, item in value.items():
            walk(item, [*path, str(key)])

    walk(metrics, [])
    return found


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


def percent(value: Any, digits: int = 0) -> str:
    try:
        return f"{float(value) * 100:.{digits}f}%"
    except (TypeError, ValueError):
        return "-"


# -- training: datasets, jobs, models ------------------------------------------------------------
DATASET_STATUS_LABELS = {"pending": "검토 대기", "approved": "승인됨", "rejected": "반려됨",
                         "blocked": "품질 검사 불통과"}
DATASET_SOURCE_LABELS = {"upload": "파일", "user": "사용자 수정 태그"}
# The quality gate's reasons for dropping a row (services/model_serving/datasets/gate.py).
GATE_ISSUE_LABELS = {"empty_text": "본문이 비어 있음", "too_long": "본문이 너무 김",
                     "unknown_label": "과제에 없는 라벨", "in_evaluation_set": "평가 세트와 겹침 (유출)",
                     "conflicting_labels": "같은 본문에 다른 라벨", "exact_duplicate": "완전히 같은 중복",
                     "near_duplicate": "거의 같은 중복"}
TASK_LABELS = {"headlines": "뉴스 헤드라인", "petitions": "국민청원"}
JOB_STATE_LABELS = {"PENDING": "대기 중", "VALIDATING": "검증 중", "TRAINING": "학습 중", "EVALUATING": "평가 중",
                    "READY": "완료", "FAILED": "실패", "CANCELLED": "취소됨"}
JOB_ACTIVE_STATES = ("PENDING", "VALIDATING", "TRAINING", "EVALUATING")
PRIORITY_LABELS = {"routine": "일반", "urgent": "긴급"}
# Stages a running job reports (training worker, model_training.train, the finisher's final state).
STAGE_LABELS = {"starting": "준비 중", "loading": "데이터 불러오는 중", "lower-pass": "하위 층 계산 중",
                "fine-tuning": "미세 조정 중", "head": "분류기 학습 중", "measuring": "검증 측정 중",
                "done": "학습 끝, 등록 대기", "registering": "등록·평가 중", "ready": "완료", "failed": "실패",
                "cancelled": "취소됨"}
ALIAS_LABELS = {"production": "운영", "candidate": "후보"}
# Shadow mode (the models screen): the candidate scoring a share of live texts beside production.
SHADOW_SHARE_RULE = "섀도 비율은 0% 초과 100% 이하로 입력하세요 (예: 10)."
SHADOW_REFUSED = "섀도 모드는 플랫폼 관리자만 켜고 끌 수 있습니다."
MODEL_GONE = "모델을 찾을 수 없습니다. 삭제되었을 수 있습니다."
SHADOW_STATE_LABELS = {True: "켜짐", False: "꺼짐"}
SHADOW_REPORT_LABELS = {
    "samples": "비교한 표본", "agree": "일치", "disagree": "불일치", "agreement": "일치율",
    "dropped": "건너뛴 표본 (대기열 가득 참)", "p50": "후보 응답 시간 p50", "p95": "후보 응답 시간 p95",
    "since": "비교 시작", "until": "마지막 비교", "production": "운영 답", "candidate": "후보 답"}
NO_TENANT_LABEL = "부서 없음"


def share_percent(value: Any) -> str:
    """A share (0–1) as the number the switch's form takes: 0.1 → `10`, 0.125 → `12.5`."""
    try:
        return f"{float(value) * 100:.2f}".rstrip("0").rstrip(".")
    except (TypeError, ValueError):
        return ""

_ROW_FIELD = re.compile(r"^rows\[(\d+)\]\.(\w+)$")
# What a problem naming one field means, by (field, status), where the generic sentence says too little.
_FIELD_SENTENCES = {
    ("file", 413): "파일이 너무 큽니다.",
    ("file", 415): "확장자가 .jsonl 또는 .csv인 파일만 올릴 수 있습니다.",
    ("file", 400): "파일을 읽을 수 없습니다. UTF-8로 저장한 JSONL 또는 text, label 열이 있는 CSV인지 확인하세요.",
    ("file", 422): "학습 데이터 파일(.jsonl 또는 .csv)을 고르세요.",
    ("shared", 403): "공용 데이터셋은 플랫폼 관리자만 만들 수 있습니다.",
    ("source", 422): "아직 사람이 직접 붙이거나 고친 태그가 있는 문서가 없습니다.",
    ("task", 422): "과제는 영문 소문자로 시작하는 이름입니다 (예: headlines).",
    ("name", 422): "이름은 1~100자로 입력하세요.",
    ("model", 422): "모델 이름은 영문 소문자·숫자로 시작하고 영문 소문자, 숫자, . _ - 로 된 64자 이하입니다.",
    ("dataset_versions", 404): "고른 데이터셋 버전을 찾을 수 없습니다. 삭제되었을 수 있습니다.",
    ("dataset_versions", 409): "승인된 버전만 학습에 쓸 수 있습니다.",
    ("dataset_versions", 422): "학습할 데이터셋 버전을 1~20개 고르세요.",
    ("note", 422): "사유는 1,000자 이하로 입력하세요.",
    ("share", 422): SHADOW_SHARE_RULE,
    ("enabled", 422): "켜기 또는 끄기를 고르세요.",
}


# The gate's warnings and blocking reasons (English, services/model_serving/datasets/gate.py) in Korean.
_GATE_NOTES = (
    (re.compile(r"^labels with fewer than (\d+) rows: (.*)$"), "행이 {0}개보다 적은 라벨 (학습하기에 적습니다): {1}"),
    (re.compile(r"^class imbalance: the largest class has ([\d.]+)× the rows of the smallest$"),
     "클래스 불균형: 가장 많은 라벨의 행이 가장 적은 라벨의 {0}배입니다"),
    (re.compile(r"^labels of the task without any row: (.*)$"), "행이 하나도 없는 과제 라벨: {0}"),
    (re.compile(r"^only (\d+) rows passed the gate \(at least (\d+) are needed\)$"),
     "품질 검사를 통과한 행이 {0}개뿐입니다 (최소 {1}개가 필요합니다)"),
    (re.compile(r"^fewer than two labels passed the gate$"), "품질 검사를 통과한 라벨이 두 개보다 적습니다"),
)


def gate_note(text: Any) -> str:
    """A gate warning or blocking reason in Korean (the original when it is not one the gate writes)."""
    for pattern, korean in _GATE_NOTES:
        found = pattern.match(str(text))
        if found:
            return korean.format(*found.groups())
    return str(text)


def form_errors(error: ApiError, fields: Collection[str],
                aliases: dict[str, str] | None = None) -> tuple[dict[str, str], str | None]:
    """An API refusal split for a form: a Korean sentence per form field the problem names (the
    field's last part, `hyperparameters.epochs` → `epochs`; `rows[3].label` → `file` with the row,
    `aliases` renames API fields to the form's), and a sentence for the page when none does."""
    aliases = aliases or {}
    named = [str(e.get("field", "")) for e in error.problem.get("errors") or [] if isinstance(e, dict)]
    out: dict[str, str] = {}
    page: str | None = None
    for raw in named:
        row = _ROW_FIELD.match(raw)
        if row:
            line, name = row.group(1), row.group(2)
            out.setdefault("file", f"파일 {line}번째 줄의 형식이 맞지 않습니다 (JSON 객체 한 줄에 하나)."
                           if name == "file" else f"파일 {line}번째 줄의 {_FIELDS.get(name, name)} 값이 없거나 "
                           "올바르지 않습니다.")
            continue
        parts = [p for p in raw.split(".") if not p.isdigit()]
        field = aliases.get(raw, aliases.get(parts[-1], parts[-1])) if parts else ""
        sentence = _FIELD_SENTENCES.get((parts[-1], error.status))
        if field not in fields:
            page = page or sentence   # a field this form does not show: its sentence goes on the page
            continue
        if sentence is None:
            sentence = (f"{_FIELDS.get(parts[-1], parts[-1])} 값이 올바르지 않습니다." if error.status in (400, 422)
                        else problem_message(error))
        if parts[-1] == "file" and error.status == 413 and isinstance(error.problem.get("max_bytes"), int):
            sentence = f"파일이 너무 큽니다. {file_size(error.problem['max_bytes'])} 이하만 올릴 수 있습니다."
        out.setdefault(field, sentence)
    return out, (None if out else page or problem_message(error))


def duration(seconds: Any) -> str:
    """`1시간 2분`, `3분 12초`, `8초`; `-` for nothing."""
    try:
        total = round(float(seconds))
    except (TypeError, ValueError):
        return "-"
    if total < 0:
        return "-"
    hours, rest = divmod(total, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}시간 {minutes}분"
    return f"{minutes}분 {secs}초" if minutes else f"{secs}초"


def age(value: Any, now: datetime | None = None) -> str:
    """How long ago a time was: `12초 전`, `3분 전`; `-` for none."""
    parsed = parse_time(value)
    if parsed is None:
        return "-"
    seconds = max(0.0, ((now or datetime.now(UTC)) - parsed).total_seconds())
    return f"{duration(seconds)} 전"
