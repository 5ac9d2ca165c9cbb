#!/usr/bin/env bash
# Generates the Python gRPC stubs from protos/ into OUT_DIR (default services/common/pb)
# and rewrites their imports to be package-relative.
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PYTHON:-.venv/bin/python}
OUT_DIR=${1:-services/common/pb}
mkdir -p "$OUT_DIR"
"$PY" -m grpc_tools.protoc -Iprotos --python_out="$OUT_DIR" --pyi_out="$OUT_DIR" --grpc_python_out="$OUT_DIR" protos/*.proto
sed -i -E 's/^import ([a-z_]+_pb2) as /from . import \1 as /' "$OUT_DIR"/*_pb2_grpc.py
