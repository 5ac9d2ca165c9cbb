"""`doctag` administration commands start without the web stack or the model code.

Scripting a hundred `doctag user create` calls must not pay for torch, transformers or FastAPI
on every call; the commands import what they need when they run (timing lives in no test:
what is imported is checked instead)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
HEAVY = ("torch", "transformers", "numpy", "sklearn", "fastapi", "starlette", "grpc", "onnxruntime",
         "services.model_serving.models", "services.model_serving.runner", "services.model_training.train_hybrid",
         "services.common.auth")


@pytest.mark.parametrize("argv", [
    ["tenant", "list"],
    ["tenant", "create", "finance", "--name", "재정기획과"],
    ["user", "create", "finance", "kim", "--password-stdin", "--role", "tenant_admin"],
    ["model", "list"],
    ["model", "train", "--data-dir", "d", "--out", "o"],
])
def test_admin_commands_parse_without_heavy_imports(argv: list[str]) -> None:
    probe = ("import json, sys\n"
             "from services.cli.main import build_parser\n"
             f"build_parser().parse_args({argv!r})\n"
             f"print(json.dumps([m for m in {HEAVY!r} if m in sys.modules]))\n")
    result = subprocess.run([sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True, timeout=60,
                            check=False)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == [], f"`doctag {' '.join(argv)}` imported heavy modules at start-up"
