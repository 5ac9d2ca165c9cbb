"""The generated gRPC stubs must match protos/ (stale stubs fail CI)."""
import filecmp
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_generated_stubs_match_protos(tmp_path: Path) -> None:
    env = dict(os.environ, PYTHON=sys.executable)
    subprocess.run([str(ROOT / "infra/scripts/gen_protos.sh"), str(tmp_path)], check=True, env=env, cwd=ROOT)
    generated = sorted(p.name for p in tmp_path.glob("*_pb2*.py*"))
    assert generated, "protoc produced nothing"
    for name in generated:
        assert filecmp.cmp(tmp_path / name, ROOT / "services/common/pb" / name, shallow=False), (
            f"services/common/pb/{name} is stale: run `make protos`")
