#!/usr/bin/env bash
# Regenerates the Python protobuf modules in python/kndkit/_proto/ from the
# project's own .proto files in proto/ (written from the upstream field tables in
# ../shared/reference/protocols.md, not copied). Output is committed; the test
# tests/unit/test_proto_drift.py regenerates into a temporary directory and fails
# when the committed files differ.
#
#   scripts/gen-proto.sh            # write python/kndkit/_proto/
#   scripts/gen-proto.sh OUTDIR     # write OUTDIR/kndkit/_proto/ instead (drift check)
#
# Every proto/<name>.proto is mapped to the import path kndkit/_proto/<name>.proto,
# so generated code imports its siblings as `from kndkit._proto import x_pb2`.
# Needs grpcio-tools (pinned in scripts/requirements-dev.txt: the generated code
# records the generator version).
set -euo pipefail
cd "$(dirname "$0")/.."
out_root=${1:-python}
py=${PYTHON:-.venv/bin/python}
out="$out_root/kndkit/_proto"
mkdir -p "$out"
shopt -s nullglob
protos=(proto/*.proto)
if [ ${#protos[@]} -eq 0 ]; then echo "gen-proto: no .proto files in proto/" >&2; exit 1; fi
rm -f "$out"/*_pb2.py "$out"/*_pb2.pyi "$out"/*_pb2_grpc.py
virtual=()
for f in "${protos[@]}"; do virtual+=("kndkit/_proto/$(basename "$f")"); done
"$py" -m grpc_tools.protoc -Ikndkit/_proto=proto \
  --python_out="$out_root" --pyi_out="$out_root" \
  "${virtual[@]}"
# No *_pb2_grpc.py: the gRPC servers (kndkit.dra) register generic handlers under
# the service names read from these descriptors, and NRI speaks ttrpc, not gRPC.
if [ ! -f "$out/__init__.py" ] || [ "$out_root" != python ]; then
  printf '"""Generated protobuf and gRPC modules (scripts/gen-proto.sh); do not edit."""\n' >"$out/__init__.py"
fi
