#!/usr/bin/env bash
# Sets up verger on a fresh machine and runs the main job on the shared sample:
# ONNX Runtime from PyPI into .venv (its wheel ships libonnxruntime.so), a
# release build, then `verger run` (embedded: no cluster, no cloud account).
# Extra arguments go to `verger run`, e.g. --k 10 or --engine tract.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! ls .venv/lib/python3*/site-packages/onnxruntime/capi/libonnxruntime.so* >/dev/null 2>&1; then
  echo "setup: installing ONNX Runtime from PyPI into .venv" >&2
  python3 -m venv .venv
  .venv/bin/pip install --quiet --upgrade pip
  .venv/bin/pip install --quiet "onnxruntime==1.32.0"
fi
ORT_DYLIB_PATH="$(ls .venv/lib/python3*/site-packages/onnxruntime/capi/libonnxruntime.so* | head -n 1)"
export ORT_DYLIB_PATH

for tool in cmake nasm; do
  if ! command -v "$tool" >/dev/null 2>&1; then
    echo "setup: $tool is missing; the build compiles libjpeg-turbo from source (Debian: apt-get install cmake nasm)" >&2
    exit 1
  fi
done

echo "setup: building verger (release)" >&2
cargo build --release --quiet -p verger
target="${CARGO_TARGET_DIR:-target}"

"$target/release/verger" run \
  --input ../shared/datasets/fruits360-sample \
  --output out/sample \
  --overwrite "$@"
echo "result: out/sample (features/, errors/, pca_model.json, run.json)" >&2
