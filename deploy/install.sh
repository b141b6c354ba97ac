#!/usr/bin/env bash
# Installs verger on one machine from a release bundle (deploy/make-bundle.sh)
# and enables its systemd unit. Idempotent: run it again with a newer bundle
# to upgrade (existing /etc/verger/*.env files are kept).
#
#   install.sh --role scheduler --bundle DIR|FILE.tar.gz --kms-key-arn ARN [--region R]
#   install.sh --role executor  --bundle DIR|FILE.tar.gz --kms-key-arn ARN \
#              --scheduler-host HOST [--concurrent-tasks N] [--region R]
#   install.sh --role serve     --bundle DIR|FILE.tar.gz --classifier DIR
#              (DIR: from `verger train`; copied to /opt/verger/classifier)
#
# Other options:
#   --root DIR   install under DIR instead of / (for checking the layout; no
#                user is created, nothing is chowned, systemd is not touched)
#   --no-start   install and enable, but do not start the service now
#
# Layout it creates:
#   /opt/verger/bin/verger                      the binary (root:root 0755)
#   /opt/verger/models/*.onnx                   the model (root:root 0644)
#   /opt/verger/lib/libonnxruntime.so[.X.Y.Z]   ONNX Runtime from the PyPI wheel
#   /opt/verger/share/                          README, units, env templates
#   /etc/verger/{common,ROLE}.env               settings (root:verger 0640)
#   /etc/systemd/system/verger-ROLE.service     the unit
#   user and group "verger" (system, no login shell, no home)
set -euo pipefail

log() { printf 'install.sh: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }
usage() { sed -n '2,26p' "$0" | sed 's/^# \{0,1\}//'; }

role="" bundle="" root="" region="eu-west-1" kms_key_arn="" scheduler_host="" classifier=""
concurrent_tasks=2 start=1
while [ $# -gt 0 ]; do
    case "$1" in
        --role) role=${2:?}; shift 2 ;;
        --bundle) bundle=${2:?}; shift 2 ;;
        --root) root=${2:?}; shift 2 ;;
        --region) region=${2:?}; shift 2 ;;
        --kms-key-arn) kms_key_arn=${2:?}; shift 2 ;;
        --scheduler-host) scheduler_host=${2:?}; shift 2 ;;
        --concurrent-tasks) concurrent_tasks=${2:?}; shift 2 ;;
        --classifier) classifier=${2:?}; shift 2 ;;
        --no-start) start=0; shift ;;
        -h|--help) usage; exit 0 ;;
        *) usage >&2; die "unknown argument: $1" ;;
    esac
done

case "$role" in
    scheduler|executor) env_files=(common "$role") ;;
    # The service reads no bucket: no common.env (AWS settings) for it.
    serve) env_files=(serve) ;;
    *) die "--role must be scheduler, executor or serve" ;;
esac
[ -n "$bundle" ] || die "--bundle is required"
if [ "$role" = serve ]; then
    [ -f "$classifier/classifier.json" ] || die "--classifier DIR (with classifier.json) is required for serve"
else
    [[ "$kms_key_arn" =~ ^arn:aws[a-z-]*:kms:[a-z0-9-]+:[0-9]{12}:key/[0-9a-f-]+$ ]] \
        || die "--kms-key-arn must be a KMS key ARN (got '$kms_key_arn')"
fi
[[ "$region" =~ ^[a-z]{2}-[a-z]+-[0-9]$ ]] || die "--region looks wrong: $region"
if [ "$role" = executor ]; then
    [[ "$scheduler_host" =~ ^[A-Za-z0-9.-]+$ ]] || die "--scheduler-host is required for an executor"
    [[ "$concurrent_tasks" =~ ^[1-9][0-9]*$ ]] || die "--concurrent-tasks must be a positive integer"
fi
if [ -z "$root" ] && [ "$(id -u)" -ne 0 ]; then
    die "run as root (or use --root DIR)"
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# A tarball is unpacked first; a directory is used as is.
if [ -f "$bundle" ]; then
    if [ -f "$bundle.sha256" ]; then
        (cd "$(dirname "$bundle")" && sha256sum -c --quiet "$(basename "$bundle").sha256") \
            || die "checksum mismatch for $bundle"
    fi
    mkdir "$work/bundle"
    tar -xzf "$bundle" -C "$work/bundle" --strip-components=1 --no-same-owner
    bundle="$work/bundle"
fi
[ -d "$bundle" ] || die "no bundle at $bundle"
bundle=$(cd "$bundle" && pwd)

# Every file of the bundle must match its SHA256SUMS.
[ -f "$bundle/SHA256SUMS" ] || die "$bundle has no SHA256SUMS"
(cd "$bundle" && sha256sum -c --quiet SHA256SUMS) || die "the bundle's files do not match SHA256SUMS"

binary="$bundle/bin/verger"
[ -x "$binary" ] || die "no executable bin/verger in the bundle"
shopt -s nullglob
models=("$bundle"/models/*.onnx)
wheels=("$bundle"/wheels/onnxruntime-*.whl)
shopt -u nullglob
[ "${#models[@]}" -ge 1 ] || die "no models/*.onnx in the bundle"
if [ "$role" = executor ]; then
    [ "${#wheels[@]}" -eq 1 ] || die "expected exactly one wheels/onnxruntime-*.whl in the bundle"
fi

opt="$root/opt/verger"
etc="$root/etc/verger"
units="$root/etc/systemd/system"

# The service user: a system account that cannot log in.
if [ -z "$root" ]; then
    if ! getent group verger >/dev/null; then
        groupadd --system verger
    fi
    if ! getent passwd verger >/dev/null; then
        useradd --system --gid verger --home-dir /nonexistent --no-create-home \
            --shell /usr/sbin/nologin --comment "verger services" verger
    fi
    owner=(-o root -g root)
    env_owner=(-o root -g verger)
else
    owner=()
    env_owner=()
fi

install -d -m 0755 "${owner[@]}" "$opt" "$opt/bin" "$opt/lib" "$opt/models" "$opt/share"
# Replace the binary atomically, so a running service keeps its old inode.
install -m 0755 "${owner[@]}" "$binary" "$opt/bin/.verger.new"
mv -f "$opt/bin/.verger.new" "$opt/bin/verger"
for model in "${models[@]}"; do
    install -m 0644 "${owner[@]}" "$model" "$opt/models/"
done
for doc in README.md install.sh; do
    if [ -f "$bundle/$doc" ]; then
        install -m 0644 "${owner[@]}" "$bundle/$doc" "$opt/share/"
    fi
done

# ONNX Runtime: the shared library straight out of the PyPI wheel (a zip).
if [ "${#wheels[@]}" -eq 1 ]; then
    lib=$(python3 - "${wheels[0]}" "$work/ort" <<'PY'
import os, sys, zipfile
wheel, dest = sys.argv[1], sys.argv[2]
os.makedirs(dest, exist_ok=True)
found = None
with zipfile.ZipFile(wheel) as z:
    for name in z.namelist():
        base = os.path.basename(name)
        if name.startswith("onnxruntime/capi/") and base.startswith("libonnxruntime"):
            with z.open(name) as src, open(os.path.join(dest, base), "wb") as dst:
                dst.write(src.read())
            if base.startswith("libonnxruntime.so"):
                found = base
if not found:
    sys.exit("no onnxruntime/capi/libonnxruntime.so* in " + wheel)
print(found)
PY
)
    for so in "$work"/ort/*; do
        install -m 0644 "${owner[@]}" "$so" "$opt/lib/"
    done
    ln -sfn "$lib" "$opt/lib/libonnxruntime.so"
    log "ONNX Runtime: $opt/lib/$lib"
fi

# Settings: the bundle's templates with this machine's values. An existing
# file is kept; the new version is left beside it as .new.
install -d -m 0750 "${env_owner[@]}" "$etc"
render() {
    sed -e "s|@REGION@|$region|g" \
        -e "s|@KMS_KEY_ARN@|$kms_key_arn|g" \
        -e "s|@SCHEDULER_HOST@|$scheduler_host|g" \
        -e "s|@CONCURRENT_TASKS@|$concurrent_tasks|g" \
        "$1"
}
for name in "${env_files[@]}"; do
    src="$bundle/env/$name.env"
    [ -f "$src" ] || die "no env/$name.env in the bundle"
    render "$src" >"$work/$name.env"
    if grep -q '@[A-Z_]*@' "$work/$name.env"; then
        die "unfilled placeholder in $name.env"
    fi
    dest="$etc/$name.env"
    if [ -e "$dest" ] && ! cmp -s "$work/$name.env" "$dest"; then
        install -m 0640 "${env_owner[@]}" "$work/$name.env" "$dest.new"
        log "kept $dest (the bundle's version is in $dest.new)"
    else
        install -m 0640 "${env_owner[@]}" "$work/$name.env" "$dest"
    fi
done

if [ "$role" = serve ]; then
    install -d -m 0755 "${owner[@]}" "$opt/classifier"
    install -m 0644 "${owner[@]}" "$classifier/classifier.json" "$opt/classifier/"
fi

unit="verger-$role.service"
[ -f "$bundle/systemd/$unit" ] || die "no systemd/$unit in the bundle"
install -d -m 0755 "$units"
install -m 0644 "${owner[@]}" "$bundle/systemd/$unit" "$units/$unit"

if [ -n "$root" ]; then
    log "installed under $root (no user, no systemd)"
    exit 0
fi

"$opt/bin/verger" --version >/dev/null || die "$opt/bin/verger does not run on this machine (glibc?)"
systemctl daemon-reload
systemctl enable "$unit"
if [ "$start" = 1 ]; then
    systemctl restart "$unit"
    sleep 2
    systemctl is-active --quiet "$unit" || die "$unit did not start: journalctl -u $unit"
fi
log "verger $role installed ($("$opt/bin/verger" --version))"
