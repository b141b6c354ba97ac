#!/usr/bin/env bash
# Runs every check of deploy/ that works without an AWS account and prints
# one PASS / FAIL / SKIP line per check, then a summary. Exit status is 1 if
# any check failed (skips do not fail).
#
#   deploy/check.sh             run with the tools that are present
#   deploy/check.sh --install   first install the tools: shellcheck (apt) and a
#                               virtualenv with python-hcl2, PyYAML and checkov (PyPI)
#
# The virtualenv lives in $VERGER_CHECK_VENV (default /tmp/verger-deploy-check-venv).
# The first-boot check starts a local S3 server (SeaweedFS, .venv/bin/weed of
# the project) and a fake instance-metadata endpoint, both on 127.0.0.1.

# The check functions are called through check(), which shellcheck cannot see.
# shellcheck disable=SC2317
set -uo pipefail

here=$(cd "$(dirname "$0")" && pwd)
repo=$(dirname "$here")
tf="$here/terraform"
venv=${VERGER_CHECK_VENV:-/tmp/verger-deploy-check-venv}
py="$venv/bin/python"
logs=$(mktemp -d /tmp/verger-deploy-check.XXXXXX)
declare -a summary=()
failed=0

say() { printf '%s\n' "$*"; }
record() { # record STATUS NAME DETAIL
    summary+=("$(printf '%-5s %-22s %s' "$1" "$2" "$3")")
    say "$(printf '%-5s %-22s %s' "$1" "$2" "$3")"
    if [ "$1" = FAIL ]; then failed=1; fi
}
# check NAME DESCRIPTION COMMAND...: runs COMMAND, output to a log file.
check() {
    local name=$1 what=$2 log="$logs/$1.log"
    shift 2
    if "$@" >"$log" 2>&1; then
        record PASS "$name" "$what"
    else
        record FAIL "$name" "$what (log: $log)"
        sed 's/^/    | /' "$log" | tail -n 40
    fi
}
skip() { record SKIP "$1" "$2"; }
have() { command -v "$1" >/dev/null 2>&1; }

if [ "${1:-}" = --install ]; then
    if ! have shellcheck; then
        apt-get install -y shellcheck >/dev/null || say "could not install shellcheck"
    fi
    if [ ! -x "$py" ]; then
        python3 -m venv "$venv"
    fi
    "$venv/bin/pip" install --quiet python-hcl2 pyyaml checkov || say "could not install the Python tools"
fi

# A scratch root with a bundle built from stand-ins: a shell script that
# answers --version, the real model when present, a wheel-shaped zip.
make_fixture() {
    local fx=$1
    mkdir -p "$fx/in" "$fx/wheel/onnxruntime/capi"
    printf '#!/bin/sh\necho "verger 0.0.0-check"\n' >"$fx/in/verger"
    chmod 0755 "$fx/in/verger"
    local model="$repo/../shared/models/mobilenet_v2_1.0_224_features.onnx"
    if [ ! -f "$model" ]; then
        model="$fx/in/mobilenet_v2_1.0_224_features.onnx"
        printf 'not a model\n' >"$model"
    fi
    printf 'fake library\n' >"$fx/wheel/onnxruntime/capi/libonnxruntime.so.1.32.0"
    printf 'fake library\n' >"$fx/wheel/onnxruntime/capi/libonnxruntime_providers_shared.so"
    (cd "$fx/wheel" && python3 -c 'import zipfile, sys
with zipfile.ZipFile(sys.argv[1], "w") as z:
    for f in ("onnxruntime/capi/libonnxruntime.so.1.32.0", "onnxruntime/capi/libonnxruntime_providers_shared.so"):
        z.write(f)' "$fx/in/onnxruntime-1.32.0-cp311-cp311-manylinux_2_28_x86_64.whl")
    "$here/make-bundle.sh" --binary "$fx/in/verger" --model "$model" \
        --wheel "$fx/in/onnxruntime-1.32.0-cp311-cp311-manylinux_2_28_x86_64.whl" --out "$fx/out"
}

fixture="$logs/fixture"
fixture_ok=0
if make_fixture "$fixture" >"$logs/fixture.log" 2>&1; then
    fixture_ok=1
fi
bundle=$(find "$fixture/out" -name 'verger-*.tar.gz' 2>/dev/null | head -n 1)
kms="arn:aws:kms:eu-west-1:123456789012:key/0f0e0d0c-1111-2222-3333-444455556666"

# 1. Shell scripts.
if have shellcheck; then
    check shellcheck "shellcheck -x -S style deploy/*.sh" shellcheck -x -S style "$here"/*.sh
else
    skip shellcheck "shellcheck not installed (deploy/check.sh --install)"
fi

# 2. Terraform formatting (offline; validate/plan need the AWS provider).
if have terraform; then
    check terraform-fmt "terraform fmt -check -recursive ($(terraform version 2>/dev/null | head -n 1))" \
        terraform fmt -check -recursive -diff "$tf"
else
    skip terraform-fmt "terraform not installed"
fi

# 3-4. HCL syntax and references.
if [ -x "$py" ] && "$py" -c 'import hcl2' 2>/dev/null; then
    check hcl-parse "every .tf parses (python-hcl2)" "$py" - "$tf" <<'PY'
import glob, sys, hcl2
for path in sorted(glob.glob(sys.argv[1] + "/*.tf")):
    with open(path) as f:
        hcl2.load(f)
    print("parsed", path)
PY
    check tf-references "var/local/resource/data references and template variables resolve" "$py" - "$tf" <<'PY'
import glob, re, sys, hcl2
root = sys.argv[1]
declared = {"var": set(), "local": set(), "resource": set(), "data": set()}
text = ""
for path in sorted(glob.glob(root + "/*.tf")):
    with open(path) as f:
        src = f.read()
    text += src + "\n"
    doc = hcl2.loads(src)
    real = lambda names: (n for n in names if not n.startswith("__"))  # python-hcl2 adds __start_line__ etc.
    for block in doc.get("variable", []):
        declared["var"].update(real(block))
    for block in doc.get("locals", []):
        declared["local"].update(real(block))
    for block in doc.get("resource", []):
        for rtype, named in block.items():
            declared["resource"].update(f"{rtype}.{n}" for n in real(named))
    for block in doc.get("data", []):
        for dtype, named in block.items():
            declared["data"].update(f"{dtype}.{n}" for n in real(named))
code = re.sub(r"#[^\n]*", "", text)          # drop comments
problems = []
for name in sorted(set(re.findall(r"\bvar\.([A-Za-z_][A-Za-z0-9_]*)", code))):
    if name not in declared["var"]:
        problems.append(f"undeclared variable: var.{name}")
for name in sorted(set(re.findall(r"\blocal\.([A-Za-z_][A-Za-z0-9_]*)", code))):
    if name not in declared["local"]:
        problems.append(f"undeclared local: local.{name}")
for t, n in sorted(set(re.findall(r"\bdata\.(aws_[a-z0-9_]+)\.([a-z0-9_]+)", code))):
    if f"{t}.{n}" not in declared["data"]:
        problems.append(f"undeclared data source: data.{t}.{n}")
for t, n in sorted(set(re.findall(r"(?<![.\w\"])(aws_[a-z0-9_]+)\.([a-z0-9_]+)", code))):
    if f"{t}.{n}" not in declared["resource"]:
        problems.append(f"undeclared resource: {t}.{n}")
unused = sorted(v for v in declared["var"] if f"var.{v}" not in code)
# Template variables: every ${name} in a .tftpl must be passed by templatefile().
passed = set(re.findall(r"^\s*([a-z_][a-z0-9_]*)\s*=", re.search(r"user_data_common = \{(.*?)\n  \}", text, re.S).group(1), re.M))
passed.add("role")
for path in glob.glob(root + "/templates/*.tftpl"):
    with open(path) as f:
        for name in sorted(set(re.findall(r"\$\{([a-z_][a-z0-9_]*)\}", f.read()))):
            if name not in passed:
                problems.append(f"{path}: template variable {name} is not passed")
print(f"{len(declared['var'])} variables, {len(declared['local'])} locals, "
      f"{len(declared['resource'])} resources, {len(declared['data'])} data sources")
if unused:
    print("unused variables:", ", ".join(unused))
for p in problems:
    print(p)
sys.exit(1 if problems else 0)
PY
else
    skip hcl-parse "python-hcl2 not installed (deploy/check.sh --install)"
    skip tf-references "python-hcl2 not installed (deploy/check.sh --install)"
fi

# 5. Static security scan of the Terraform (offline).
if [ -x "$venv/bin/checkov" ]; then
    check checkov "checkov -d deploy/terraform ($("$venv/bin/checkov" --version 2>/dev/null))" \
        "$venv/bin/checkov" -d "$tf" --framework terraform --quiet --compact --skip-download
else
    skip checkov "checkov not installed (deploy/check.sh --install)"
fi

# 6. The cloud-init user data: rendered with sample values, parsed as YAML,
#    within EC2's 16 KiB limit.
if [ -x "$py" ] && "$py" -c 'import yaml' 2>/dev/null; then
    check user-data "user-data template renders to valid cloud-config under 16 KiB" "$py" - "$tf" "$here/bootstrap.sh" <<'PY'
import base64, re, sys, yaml
tpl = open(sys.argv[1] + "/templates/user-data.yaml.tftpl").read()
values = {"role": "executor", "bucket": "acme-verger-data", "region": "eu-west-1",
          "bundle_key": "artifacts/verger-bundle.tar.gz",
          "kms_key_arn": "arn:aws:kms:eu-west-1:123456789012:key/0f0e0d0c-1111-2222-3333-444455556666",
          "scheduler": "scheduler.verger.internal", "tasks": "2",
          "bootstrap_b64": base64.b64encode(open(sys.argv[2], "rb").read()).decode()}
rendered = re.sub(r"\$\{([a-z_][a-z0-9_]*)\}", lambda m: values[m.group(1)], tpl)
assert rendered.startswith("#cloud-config\n"), "first line must be #cloud-config"
doc = yaml.safe_load(rendered)
files = {f["path"]: f for f in doc["write_files"]}
env = files["/etc/verger/bootstrap.env"]["content"]
assert "VERGER_ROLE=executor" in env and "VERGER_SCHEDULER_HOST=scheduler.verger.internal" in env, env
script = base64.b64decode(files["/usr/local/sbin/verger-bootstrap"]["content"])
assert script == open(sys.argv[2], "rb").read()
assert doc["runcmd"] == [["/usr/local/sbin/verger-bootstrap"]], doc["runcmd"]
size = len(rendered.encode())
print(f"user data: {size} bytes")
assert size <= 16384, f"user data is {size} bytes, over EC2's 16 KiB"
PY
else
    skip user-data "PyYAML not installed (deploy/check.sh --install)"
fi

# 7. Bundle + install.sh into a scratch root, for every role.
install_check() {
    local root=$1
    "$here/install.sh" --role scheduler --bundle "$bundle" --root "$root" --kms-key-arn "$kms" || return 1
    "$here/install.sh" --role executor --bundle "$bundle" --root "$root" --kms-key-arn "$kms" \
        --scheduler-host scheduler.verger.internal --concurrent-tasks 3 || return 1
    local classifier
    classifier=$(mktemp -d)
    echo '{}' >"$classifier/classifier.json"
    "$here/install.sh" --role serve --bundle "$bundle" --root "$root" --classifier "$classifier" || return 1
    if "$here/install.sh" --role serve --bundle "$bundle" --root "$root" 2>/dev/null; then
        echo "serve without --classifier was accepted"; return 1
    fi
    rm -r "$classifier"
    local f
    for f in opt/verger/bin/verger opt/verger/lib/libonnxruntime.so.1.32.0 \
        opt/verger/models/mobilenet_v2_1.0_224_features.onnx \
        etc/verger/common.env etc/verger/scheduler.env etc/verger/executor.env \
        etc/systemd/system/verger-scheduler.service etc/systemd/system/verger-executor.service \
        etc/verger/serve.env etc/systemd/system/verger-serve.service opt/verger/classifier/classifier.json; do
        [ -e "$root/$f" ] || { echo "missing $f"; return 1; }
    done
    [ "$(readlink "$root/opt/verger/lib/libonnxruntime.so")" = libonnxruntime.so.1.32.0 ] || { echo "bad ORT symlink"; return 1; }
    [ "$(stat -c %a "$root/opt/verger/bin/verger")" = 755 ] || { echo "binary mode"; return 1; }
    [ "$(stat -c %a "$root/etc/verger/common.env")" = 640 ] || { echo "env mode"; return 1; }
    grep -qx "AWS_SSE_KMS_KEY_ID=$kms" "$root/etc/verger/common.env" || { echo "KMS key not rendered"; return 1; }
    grep -qx "AWS_REGION=eu-west-1" "$root/etc/verger/common.env" || { echo "region not rendered"; return 1; }
    grep -qx "VERGER_SCHEDULER=scheduler.verger.internal:50050" "$root/etc/verger/executor.env" || { echo "scheduler not rendered"; return 1; }
    grep -qx "VERGER_CONCURRENT_TASKS=3" "$root/etc/verger/executor.env" || { echo "tasks not rendered"; return 1; }
    ! grep -rq '@[A-Z_]*@' "$root/etc/verger" || { echo "placeholder left"; return 1; }
    # Run again with another value: the edited file is kept, the new one is .new.
    "$here/install.sh" --role executor --bundle "$bundle" --root "$root" --kms-key-arn "$kms" \
        --scheduler-host other.internal --concurrent-tasks 3 || return 1
    grep -qx "VERGER_SCHEDULER=scheduler.verger.internal:50050" "$root/etc/verger/executor.env" || { echo "env overwritten"; return 1; }
    [ -f "$root/etc/verger/executor.env.new" ] || { echo "no .new file"; return 1; }
    # Bad input is refused.
    if "$here/install.sh" --role executor --bundle "$bundle" --root "$root" --kms-key-arn "$kms" 2>/dev/null; then
        echo "an executor without --scheduler-host was accepted"; return 1
    fi
    find "$root" -type f | sort
}
if [ "$fixture_ok" = 1 ] && [ -n "$bundle" ]; then
    check install "make-bundle.sh + install.sh --root, every role" install_check "$logs/root"
else
    record FAIL install "make-bundle.sh failed (log: $logs/fixture.log)"
    sed 's/^/    | /' "$logs/fixture.log" | tail -n 20
fi

# 8. systemd units. (a) As installed in the scratch root, with the stand-in
#    binary and a copy of this machine's system units, so that ExecStart and
#    the default dependencies resolve. (b) Straight from deploy/systemd on
#    this machine, where the only expected complaint is the missing binary.
systemd_check_root() {
    local root=$1
    mkdir -p "$root/usr/lib/systemd"
    cp -a /usr/lib/systemd/system "$root/usr/lib/systemd/"
    SYSTEMD_LOG_LEVEL=notice systemd-analyze verify --man=no --root="$root" \
        /etc/systemd/system/verger-scheduler.service /etc/systemd/system/verger-executor.service \
        /etc/systemd/system/verger-serve.service
}
systemd_check_host() {
    local out
    out=$(cd "$here/systemd" && SYSTEMD_LOG_LEVEL=notice systemd-analyze verify --man=no \
        ./verger-scheduler.service ./verger-executor.service ./verger-serve.service 2>&1)
    printf '%s\n' "$out"
    # Anything but "the binary is not installed here" is a failure.
    ! printf '%s\n' "$out" | grep -v 'Command /opt/verger/bin/verger is not executable: No such file or directory' | grep -q .
}
if have systemd-analyze && [ -d /usr/lib/systemd/system ] && [ -e "$logs/root/etc/systemd/system/verger-executor.service" ]; then
    check systemd-verify "systemd-analyze verify --root (installed units, $(systemd-analyze --version | head -n 1 | cut -d' ' -f1-2))" \
        systemd_check_root "$logs/root"
    check systemd-verify-host "systemd-analyze verify on this host: only 'binary not installed' complaints" \
        systemd_check_host
else
    skip systemd-verify "systemd-analyze not available or install failed"
fi

# 8b. Every flag the units pass exists in the real binary's --help.
unit_flags_check() { # unit_flags_check VERGER_BINARY
    local bin=$1 unit cmd flag missing=0
    local -a flags
    for unit in scheduler executor serve; do
        cmd=$(sed -n 's|.*/opt/verger/bin/verger \([a-z]*\).*|\1|p' "$here/systemd/verger-$unit.service")
        mapfile -t flags < <(grep -o -- '--[a-z][a-z-]*' "$here/systemd/verger-$unit.service" | sort -u)
        for flag in "${flags[@]}"; do
            if "$bin" "$cmd" --help | grep -q -- "$flag"; then
                echo "verger $cmd $flag: ok"
            else
                echo "verger $cmd $flag: NOT ACCEPTED"; missing=1
            fi
        done
    done
    return "$missing"
}
# The newest build, release or debug.
verger_bin=""
for candidate in "${CARGO_TARGET_DIR:-$repo/target}"/{release,debug}/verger; do
    if [ -x "$candidate" ] && { [ -z "$verger_bin" ] || [ "$candidate" -nt "$verger_bin" ]; }; then
        verger_bin=$candidate
    fi
done
if [ -n "$verger_bin" ]; then
    check unit-flags "the units' flags are accepted by $(basename "$(dirname "$verger_bin")")/verger" \
        unit_flags_check "$verger_bin"
else
    skip unit-flags "no built verger binary (cargo build first)"
fi

# 9. First boot: bootstrap.sh against a local S3 server and a fake IMDSv2.
boot_pids=()
stop_boot_servers() {
    local p
    for p in "${boot_pids[@]}"; do kill "$p" 2>/dev/null; done
    for p in "${boot_pids[@]}"; do wait "$p" 2>/dev/null; done
    boot_pids=()
}
bootstrap_check() {
    local weed="$repo/.venv/bin/weed" d="$logs/boot" ak="verger-check" sk ports imds_port sport
    sk="check-$RANDOM$RANDOM$RANDOM"
    mkdir -p "$d/data" "$d/logs"
    # Eleven distinct free ports: ten for SeaweedFS's components, one for IMDS.
    read -r -a ports < <(python3 -c 'import socket
ss = [socket.socket() for _ in range(11)]
for s in ss: s.bind(("127.0.0.1", 0))
print(*[s.getsockname()[1] for s in ss])')
    sport=${ports[0]} imds_port=${ports[10]}
    AWS_ACCESS_KEY_ID=$ak AWS_SECRET_ACCESS_KEY=$sk "$weed" -logdir="$d/logs" mini -dir="$d/data" \
        -ip=127.0.0.1 -ip.bind=127.0.0.1 \
        -s3.port="${ports[0]}" -s3.port.grpc="${ports[1]}" -master.port="${ports[2]}" \
        -master.port.grpc="${ports[3]}" -volume.port="${ports[4]}" -volume.port.grpc="${ports[5]}" \
        -filer.port="${ports[6]}" -filer.port.grpc="${ports[7]}" -admin.port="${ports[8]}" \
        -admin.port.grpc="${ports[9]}" -s3.localSocket="$d/s3.sock" -filer.localSocket="$d/filer.sock" \
        -webdav=false -admin.ui=false -s3.port.iceberg=0 -s3.port.lance=0 -master.telemetry=false \
        </dev/null >"$d/weed.log" 2>&1 &
    boot_pids+=($!)
    python3 - "$imds_port" "$ak" "$sk" >"$d/imds.log" 2>&1 <<'PY' &
import json, sys
from http.server import BaseHTTPRequestHandler, HTTPServer
port, ak, sk = int(sys.argv[1]), sys.argv[2], sys.argv[3]
TOKEN = "imds-token-check"
# SeaweedFS would read a session token as an STS token it does not know, so
# this endpoint hands out the server's plain keys with an empty Token.
class H(BaseHTTPRequestHandler):
    def reply(self, code, body):
        self.send_response(code); self.send_header("Content-Length", str(len(body))); self.end_headers()
        self.wfile.write(body)
    def do_PUT(self):
        ok = self.path == "/latest/api/token" and self.headers.get("X-aws-ec2-metadata-token-ttl-seconds")
        self.reply(200 if ok else 400, TOKEN.encode() if ok else b"")
    def do_GET(self):
        if self.headers.get("X-aws-ec2-metadata-token") != TOKEN:   # IMDSv2 only
            return self.reply(401, b"")
        base = "/latest/meta-data/iam/security-credentials/"
        if self.path == base:
            return self.reply(200, b"verger-worker")
        if self.path == base + "verger-worker":
            return self.reply(200, json.dumps({"Code": "Success", "AccessKeyId": ak, "SecretAccessKey": sk,
                                               "Token": "", "Expiration": "2099-01-01T00:00:00Z"}).encode())
        self.reply(404, b"")
HTTPServer(("127.0.0.1", port), H).serve_forever()
PY
    boot_pids+=($!)
    local s3="http://127.0.0.1:$sport" _
    for _ in $(seq 1 240); do
        curl -fsS -o /dev/null "$s3/" --aws-sigv4 "aws:amz:eu-west-1:s3" --user "$ak:$sk" 2>/dev/null && break
        sleep 0.5
    done
    s3put() { # s3put PATH [FILE]
        if [ $# -eq 2 ]; then
            curl -fsS -X PUT --aws-sigv4 "aws:amz:eu-west-1:s3" --user "$ak:$sk" \
                -H 'x-amz-content-sha256: UNSIGNED-PAYLOAD' --data-binary "@$2" "$s3/$1"
        else
            curl -fsS -X PUT --aws-sigv4 "aws:amz:eu-west-1:s3" --user "$ak:$sk" \
                -H 'x-amz-content-sha256: UNSIGNED-PAYLOAD' "$s3/$1"
        fi
    }
    s3put acme-verger-data || { echo "cannot create the bucket"; tail -n 30 "$d/weed.log"; return 1; }
    s3put acme-verger-data/artifacts/verger-bundle.tar.gz "$bundle" || return 1
    s3put acme-verger-data/artifacts/verger-bundle.tar.gz.sha256 "$bundle.sha256" || return 1
    cat >"$d/bootstrap.env" <<EOF
VERGER_ROLE=executor
VERGER_BUCKET=acme-verger-data
VERGER_REGION=eu-west-1
VERGER_BUNDLE_KEY=artifacts/verger-bundle.tar.gz
VERGER_KMS_KEY_ARN=$kms
VERGER_SCHEDULER_HOST=scheduler.verger.internal
VERGER_CONCURRENT_TASKS=2
EOF
    VERGER_BOOTSTRAP_ENV="$d/bootstrap.env" VERGER_IMDS_ENDPOINT="http://127.0.0.1:$imds_port" \
        VERGER_S3_URL="$s3/acme-verger-data" VERGER_SKIP_SSM_AGENT=1 VERGER_BUNDLE_WAIT_S=0 \
        VERGER_INSTALL_ARGS="--root $d/root" "$here/bootstrap.sh" || return 1
    [ -x "$d/root/opt/verger/bin/verger" ] || { echo "not installed"; return 1; }
    grep -qx "VERGER_SCHEDULER=scheduler.verger.internal:50050" "$d/root/etc/verger/executor.env" || return 1
    # A corrupted bundle must be refused.
    printf 'corrupt' >>"$d/corrupt.tar.gz"
    s3put acme-verger-data/artifacts/verger-bundle.tar.gz "$d/corrupt.tar.gz" || return 1
    if VERGER_BOOTSTRAP_ENV="$d/bootstrap.env" VERGER_IMDS_ENDPOINT="http://127.0.0.1:$imds_port" \
        VERGER_S3_URL="$s3/acme-verger-data" VERGER_SKIP_SSM_AGENT=1 VERGER_BUNDLE_WAIT_S=0 \
        VERGER_INSTALL_ARGS="--root $d/root2" "$here/bootstrap.sh"; then
        echo "a corrupted bundle was accepted"; return 1
    fi
    echo "bootstrap fetched, verified and installed the bundle; refused a corrupted one"
}
if [ -x "$repo/.venv/bin/weed" ] && [ -n "$bundle" ] && curl --help all 2>/dev/null | grep -q -- --aws-sigv4; then
    check bootstrap "bootstrap.sh vs local S3 (SeaweedFS) + fake IMDSv2" bootstrap_check
    stop_boot_servers
else
    skip bootstrap "needs .venv/bin/weed (SeaweedFS), a bundle and curl with --aws-sigv4"
fi

say ""
say "summary ($(date -u +%Y-%m-%dT%H:%MZ)):"
printf '  %s\n' "${summary[@]}"
say "logs: $logs"
exit "$failed"
