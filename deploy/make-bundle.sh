#!/usr/bin/env bash
# Builds the release bundle that deploy/install.sh installs on a machine:
#
#   verger-VERSION-linux-x86_64/
#     bin/verger                       the release binary (built with the cluster feature)
#     models/mobilenet_v2_1.0_224_features.onnx
#     wheels/onnxruntime-*.whl         the ONNX Runtime wheel from PyPI (the .so is taken from it)
#     systemd/verger-{scheduler,executor,serve}.service
#     env/{common,scheduler,executor,serve}.env
#     install.sh  README.md  SHA256SUMS
#
# and OUT/verger-VERSION-linux-x86_64.tar.gz (+ .sha256).
#
#   deploy/make-bundle.sh [--binary PATH] [--model PATH] [--wheel PATH] [--out DIR]
#
# It builds nothing: build the binary first (on Debian 12 or older, so that
# its glibc needs are met by the Debian 12 machines):
#   cargo build --release -p verger --features cluster
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
repo=$(dirname "$here")
binary="$repo/target/release/verger"
model="$repo/../shared/models/mobilenet_v2_1.0_224_features.onnx"
wheel=""
out="$repo/out/bundle"
ort_version="1.32.0" # keep in step with scripts/run-sample.sh
target_glibc="2.36"  # Debian 12 (bookworm)

log() { printf 'make-bundle: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

while [ $# -gt 0 ]; do
    case "$1" in
        --binary) binary=${2:?}; shift 2 ;;
        --model) model=${2:?}; shift 2 ;;
        --wheel) wheel=${2:?}; shift 2 ;;
        --out) out=${2:?}; shift 2 ;;
        -h|--help) sed -n '2,19p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) die "unknown argument: $1" ;;
    esac
done

[ -x "$binary" ] || die "no binary at $binary (cargo build --release -p verger --features cluster)"
[ -f "$model" ] || die "no model at $model"

# The machines run Debian 12: refuse a binary that needs a newer glibc.
needed=$(objdump -T "$binary" 2>/dev/null | grep -o 'GLIBC_[0-9.]*' | sed 's/GLIBC_//' | sort -uV | tail -n 1 || true)
if [ -n "$needed" ] && [ "$(printf '%s\n%s\n' "$needed" "$target_glibc" | sort -V | tail -n 1)" != "$target_glibc" ]; then
    die "$binary needs glibc $needed; Debian 12 has $target_glibc: build on Debian 12 or older"
fi
log "binary needs glibc ${needed:-?} (target has $target_glibc)"

version=$("$binary" --version | awk '{print $NF}')
[ -n "$version" ] || die "cannot read the binary's version"
name="verger-$version-linux-x86_64"

stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
dir="$stage/$name"
mkdir -p "$dir/bin" "$dir/models" "$dir/wheels" "$dir/systemd" "$dir/env"

install -m 0755 "$binary" "$dir/bin/verger"
install -m 0644 "$model" "$dir/models/"
if [ -n "$wheel" ]; then
    [ -f "$wheel" ] || die "no wheel at $wheel"
    install -m 0644 "$wheel" "$dir/wheels/"
else
    # Any CPython tag works: only the shared library is used.
    python3 -m pip download --quiet --no-deps --only-binary=:all: \
        --platform manylinux_2_28_x86_64 --python-version 3.11 --implementation cp \
        --dest "$dir/wheels" "onnxruntime==$ort_version" \
        || die "cannot download onnxruntime==$ort_version from PyPI"
fi
install -m 0644 "$here"/systemd/verger-*.service "$dir/systemd/"
install -m 0644 "$here"/env/*.env "$dir/env/"
install -m 0755 "$here/install.sh" "$dir/install.sh"
install -m 0644 "$here/README.md" "$dir/README.md"

(cd "$dir" && find . -type f -printf '%P\n' | LC_ALL=C sort | xargs -d '\n' sha256sum >"$stage/SHA256SUMS")
mv "$stage/SHA256SUMS" "$dir/SHA256SUMS"

mkdir -p "$out"
tar -C "$stage" --owner=0 --group=0 --numeric-owner -czf "$out/$name.tar.gz" "$name"
(cd "$out" && sha256sum "$name.tar.gz" >"$name.tar.gz.sha256")
log "wrote $out/$name.tar.gz"
cat >&2 <<EOF
Upload it where the machines look for it (terraform output bundle_upload), e.g.:
  aws s3 cp "$out/$name.tar.gz"        s3://BUCKET/artifacts/verger-bundle.tar.gz
  aws s3 cp "$out/$name.tar.gz.sha256" s3://BUCKET/artifacts/verger-bundle.tar.gz.sha256
EOF
