"""model-serving runs with no training code installed.

The `model` extra has no scikit-learn, and a serving-only install can leave `services/model_training`
out (the model role's image carries it since the training worker runs there too, infra/docker/Dockerfile).
import-linter proves no static import reaches the training code; this test
proves the running service needs none at run time either (architectures are imported by name):
from a copy of the code without the training package, the service modules and
both architectures' modules import, an artifact loads and predicts, and the `doctag` CLI works,
answering the training commands with a clear message."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.model_artifacts import make_tiny_bert

REPO = Path(__file__).resolve().parents[2]

# The development install is editable: its import hook maps `services.*` to this checkout, which
# does have the training package. Drop that hook, so imports resolve from the copy alone.
ONLY_THE_COPY = """
import sys
sys.meta_path[:] = [f for f in sys.meta_path if "editable" not in str(getattr(f, "__module__", "")).lower()]
"""

PROBE = ONLY_THE_COPY + """
import services.model_serving.__main__
import services.model_serving.models.hybrid
from services.model_serving.models.base import predict_detailed
from services.model_serving.models.loader import load_model

model = load_model(sys.argv[1])
[prediction] = predict_detailed(model, ["손흥민 시즌 10호 골"], top_k=1)
print(prediction.tags[0][0])
"""


@pytest.fixture(scope="module")
def serving_copy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The code as the model image holds it: services/ and gateway/ without services/model_training."""
    root = tmp_path_factory.mktemp("model-image")
    skip = shutil.ignore_patterns("model_training", "__pycache__", "artifacts")
    shutil.copytree(REPO / "services", root / "services", ignore=skip)
    shutil.copytree(REPO / "gateway", root / "gateway", ignore=skip)
    assert not (root / "services" / "model_training").exists()
    return root


def _run(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(root)}
    return subprocess.run([sys.executable, *args], cwd=root, env=env, capture_output=True, text=True, timeout=120,
                          check=False)


def _doctag(root: Path, *argv: str) -> subprocess.CompletedProcess[str]:
    code = ONLY_THE_COPY + f"sys.argv = ['doctag', *{list(argv)!r}]\nimport runpy\n" \
                           "runpy.run_module('services.cli.main', run_name='__main__')\n"
    return _run(root, "-c", code)


def test_model_serving_imports_and_predicts_without_training_code(serving_copy: Path, tmp_path: Path) -> None:
    artifact = make_tiny_bert(tmp_path / "tiny", labels=["가", "나"])
    result = _run(serving_copy, "-c", PROBE, str(artifact))
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip() in {"가", "나"}


def test_cli_on_a_serving_host_refuses_training_commands_clearly(serving_copy: Path) -> None:
    probe = _run(serving_copy, "-c", ONLY_THE_COPY + "import services.model_training")
    assert probe.returncode != 0, "the copy must not reach the checkout's training package"
    listed = _doctag(serving_copy, "model", "--help")
    assert listed.returncode == 0, listed.stderr[-3000:]
    train = _doctag(serving_copy, "model", "train", "--data-dir", "d", "--out", "o")
    assert train.returncode == 1, train.stderr[-3000:]
    assert "needs the training code" in train.stderr
    evaluate = _doctag(serving_copy, "model", "eval", "--model", "x", "--data", "y")
    assert evaluate.returncode == 1 and "needs the training code" in evaluate.stderr
