#!/bin/sh
# Generate the Python gRPC stubs into OUT_DIR as one flat package with package-relative imports
# (as text-generation-inference does), so they import as services.common.pb.<name>_pb2.
# Used by `make proto` and by the Dockerfile's stubs stage (every image's): one recipe for both.
#   PYTHON=.venv/bin/python proto/gen_python.sh services/common/pb
set -eu
out="$1"
here="$(cd "$(dirname "$0")" && pwd)"
python="${PYTHON:-python3}"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
"$python" -m grpc_tools.protoc -I "$here" --python_out="$work" --grpc_python_out="$work" --pyi_out="$work" \
  "$here"/mvgen/v1/*.proto
rm -rf "$out" && mkdir -p "$out"
mv "$work"/mvgen/v1/* "$out"/
sed -i -E 's/^from mvgen\.v1 import/from . import/' "$out"/*.py "$out"/*.pyi
touch "$out/__init__.py"
