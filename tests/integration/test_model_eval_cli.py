"""`doctag model eval --model DIR --data FILE.jsonl`: the JSON report, the same numbers as the
serving inference path, and clear errors (non-zero exit, message on stderr).

Tiny random-weight artifacts where the numbers only have to agree with the in-process path;
one run of the real command against the shipped model.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from services.cli.main import main
from services.model_serving.models.loader import load_model
from services.model_serving.settings import DEFAULT_MODEL_DIR, ModelServingSettings
from services.model_training.evaluation import evaluate, read_labelled
from tests.model_artifacts import make_tiny_bert

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
RECORDS = [
    {"text": "손흥민 시즌 10호 골…토트넘 역전승", "label": "스포츠"},
    {"text": "류현진, 7이닝 무실점 호투로 시즌 5승", "label": "스포츠"},
    {"text": "코스피 2% 급락…외국인 매도에 환율 1,400원 돌파", "label": "경제"},
    {"text": "한국은행 기준금리 0.25%p 인상…물가 잡기 총력", "label": "경제"},
    {"text": "국회 본회의, 추경 예산안 처리 불발…여야 대치", "label": "정치"},
    {"title": "어린이집 보육교사 처우 개선",
     "text": "어린이집 보육교사의 처우를 개선하고 아이들의 교육 환경을 개선해 주세요. "
             "유치원과 어린이집 교육비 지원도 늘려야 합니다.",
     "label": "육아/교육"},
]
REPORT_KEYS = {"model", "version", "n", "accuracy", "macro_f1", "per_label", "data"}


def _write_jsonl(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    labels = sorted({r["label"] for r in RECORDS})
    return make_tiny_bert(tmp_path_factory.mktemp("eval") / "tiny", name="tiny", version="7", seed=5, labels=labels)


@pytest.fixture()
def data(tmp_path: Path) -> Path:
    return _write_jsonl(tmp_path / "labelled.jsonl", RECORDS)


def _eval(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(["model", "eval", *argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_report_is_json_with_the_serving_paths_numbers(tiny: Path, data: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    code, out, err = _eval(capsys, "--model", str(tiny), "--data", str(data))
    assert code == 0, err
    report = json.loads(out)
    assert set(report) == REPORT_KEYS
    assert (report["model"], report["version"], report["n"], report["data"]) == ("tiny", "7", len(RECORDS), str(data))
    assert set(report["per_label"]) == {r["label"] for r in RECORDS}
    for label, scores in report["per_label"].items():
        assert set(scores) == {"f1", "precision", "recall", "support"}
        assert scores["support"] == sum(r["label"] == label for r in RECORDS)
        assert all(0.0 <= scores[k] <= 1.0 for k in ("f1", "precision", "recall"))
    assert 0.0 <= report["accuracy"] <= 1.0
    assert report["macro_f1"] == pytest.approx(
        sum(s["f1"] for s in report["per_label"].values()) / len(report["per_label"]), abs=1e-4)
    # The numbers are those of load_model + probabilities with the service's options (title + body).
    model = load_model(tiny, ModelServingSettings().inference_options())
    expected = evaluate(model, read_labelled(data), batch_max_windows=ModelServingSettings().batch_max_windows)
    assert {k: v for k, v in report.items() if k != "data"} == expected


def test_compact_output_is_one_line(tiny: Path, data: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    code, out, err = _eval(capsys, "--model", str(tiny), "--data", str(data), "--compact")
    assert code == 0, err
    assert out.count("\n") == 1 and json.loads(out)["n"] == len(RECORDS)


def test_missing_data_file(tiny: Path, tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    code, out, err = _eval(capsys, "--model", str(tiny), "--data", str(tmp_path / "nope.jsonl"))
    assert code != 0 and out == ""
    assert "--data" in err and "nope.jsonl" in err and "no such file" in err


def test_record_without_label(tiny: Path, tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    path = _write_jsonl(tmp_path / "unlabelled.jsonl", [RECORDS[0], {"text": "라벨 없는 기사"}])
    code, out, err = _eval(capsys, "--model", str(tiny), "--data", str(path))
    assert code != 0 and out == ""
    assert "unlabelled.jsonl:2" in err and "label" in err


def test_directory_that_is_not_a_model(data: Path, tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    code, out, err = _eval(capsys, "--model", str(tmp_path), "--data", str(data))
    assert code != 0 and out == ""
    assert err.startswith("doctag: ") and "manifest.json is missing" in err and "Traceback" not in err


def test_model_directory_that_does_not_exist(data: Path, tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    code, out, err = _eval(capsys, "--model", str(tmp_path / "gone"), "--data", str(data))
    assert code != 0 and out == ""
    assert "gone" in err and "no such directory" in err


def test_tampered_model_is_refused_naming_the_file(tiny: Path, data: Path, tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    broken = make_tiny_bert(tmp_path / "broken", labels=sorted({r["label"] for r in RECORDS}))
    weights = broken / "model.safetensors"
    raw = bytearray(weights.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    weights.write_bytes(bytes(raw))
    code, out, err = _eval(capsys, "--model", str(broken), "--data", str(data))
    assert code != 0 and out == ""
    assert "model.safetensors does not match the manifest" in err


def test_the_command_on_the_shipped_model(data: Path) -> None:
    """The real command line (a process of its own) against DEFAULT_MODEL_DIR."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    result = subprocess.run([sys.executable, "-m", "services.cli.main", "model", "eval", "--model",
                             str(DEFAULT_MODEL_DIR), "--data", str(data), "--threads", "1", "--compact"],
                            cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout)
    manifest = json.loads((DEFAULT_MODEL_DIR / "manifest.json").read_text(encoding="utf-8"))
    assert set(report) == REPORT_KEYS
    assert (report["model"], report["version"], report["n"]) == ("doctag-tagger", manifest["version"], len(RECORDS))
    assert set(report["per_label"]) == {r["label"] for r in RECORDS}
    # PLAUSIBILITY (a decently trained model): these records are obvious, at most one is missed.
    assert report["accuracy"] >= (len(RECORDS) - 1) / len(RECORDS), report
