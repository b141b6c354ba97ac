#!/usr/bin/env bash
# First boot of a verger machine (run by cloud-init as root, see
# terraform/templates/user-data.yaml.tftpl):
#   1. install the SSM agent (shell access through Session Manager, no SSH),
#   2. fetch the release bundle from the data bucket with the instance role
#      (IMDSv2 credentials, curl's SigV4 signing: no AWS CLI needed, no key on
#      disk), check its SHA-256,
#   3. run the bundle's install.sh for this machine's role.
#
# Settings come from /etc/verger/bootstrap.env (written by cloud-init):
#   VERGER_ROLE (scheduler|executor), VERGER_BUCKET, VERGER_REGION,
#   VERGER_BUNDLE_KEY, VERGER_KMS_KEY_ARN, VERGER_SCHEDULER_HOST,
#   VERGER_CONCURRENT_TASKS
# Overrides for testing it off AWS (deploy/check.sh uses them):
#   VERGER_BOOTSTRAP_ENV   settings file (default /etc/verger/bootstrap.env)
#   VERGER_IMDS_ENDPOINT   instance metadata (default http://169.254.169.254)
#   VERGER_S3_URL          base URL of the bucket (default https://BUCKET.s3.REGION.amazonaws.com)
#   VERGER_SKIP_SSM_AGENT  1: do not install the SSM agent
#   VERGER_INSTALL_ARGS    extra arguments for install.sh (e.g. "--root DIR --no-start")
#   VERGER_BUNDLE_WAIT_S   how long to wait for the bundle to be uploaded (default 1800)
set -euo pipefail
umask 077

log() { printf 'verger-bootstrap: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

conf=${VERGER_BOOTSTRAP_ENV:-/etc/verger/bootstrap.env}
[ -r "$conf" ] || die "cannot read $conf"
# shellcheck source=/dev/null
. "$conf"
for var in VERGER_ROLE VERGER_BUCKET VERGER_REGION VERGER_BUNDLE_KEY VERGER_KMS_KEY_ARN; do
    [ -n "${!var:-}" ] || die "$var is not set in $conf"
done

imds=${VERGER_IMDS_ENDPOINT:-http://169.254.169.254}
s3_url=${VERGER_S3_URL:-https://${VERGER_BUCKET}.s3.${VERGER_REGION}.amazonaws.com}
work=$(mktemp -d /var/tmp/verger-bootstrap.XXXXXX)
trap 'rm -rf "$work"' EXIT

retry() {
    local attempt
    for attempt in 1 2 3 4 5 6; do
        if "$@"; then
            return 0
        fi
        log "attempt $attempt failed: $1 …; retrying"
        sleep $((attempt * 5))
    done
    return 1
}

install_ssm_agent() {
    if [ "${VERGER_SKIP_SSM_AGENT:-0}" = 1 ]; then
        log "skipping the SSM agent"
        return 0
    fi
    if systemctl is-active --quiet amazon-ssm-agent 2>/dev/null \
        || systemctl is-active --quiet snap.amazon-ssm-agent.amazon-ssm-agent 2>/dev/null; then
        return 0
    fi
    # The regional bucket is reached through the S3 gateway endpoint.
    local deb="$work/amazon-ssm-agent.deb"
    retry curl -fsS --proto '=https' --tlsv1.2 -o "$deb" \
        "https://s3.${VERGER_REGION}.amazonaws.com/amazon-ssm-${VERGER_REGION}/latest/debian_amd64/amazon-ssm-agent.deb" \
        || die "cannot download the SSM agent"
    dpkg -i "$deb"
    systemctl enable --now amazon-ssm-agent
    log "SSM agent installed"
}

# The role's temporary credentials, as "key secret token" on stdout.
role_credentials() {
    local token role
    token=$(curl -fsS -X PUT "$imds/latest/api/token" \
        -H 'X-aws-ec2-metadata-token-ttl-seconds: 300') || return 1
    role=$(curl -fsS -H "X-aws-ec2-metadata-token: $token" \
        "$imds/latest/meta-data/iam/security-credentials/") || return 1
    role=${role%%$'\n'*}
    [ -n "$role" ] || return 1
    curl -fsS -H "X-aws-ec2-metadata-token: $token" \
        "$imds/latest/meta-data/iam/security-credentials/$role" \
        | python3 -c 'import json, sys
c = json.load(sys.stdin)
print(c["AccessKeyId"], c["SecretAccessKey"], c.get("Token") or "")'
}

# s3_get KEY FILE: a SigV4-signed GET of s3://BUCKET/KEY. The credentials go
# to curl on stdin (a config file), never on its command line.
s3_get() {
    local key=$1 out=$2 creds access secret token
    creds=$(role_credentials) || { log "no credentials from the instance metadata"; return 1; }
    read -r access secret token <<<"$creds"
    {
        printf 'user = "%s:%s"\n' "$access" "$secret"
        # Role credentials always carry a session token (the local test
        # server of deploy/check.sh hands out plain keys instead).
        if [ -n "$token" ]; then
            printf 'header = "x-amz-security-token: %s"\n' "$token"
        fi
    } | curl -fsS --config - \
            --aws-sigv4 "aws:amz:${VERGER_REGION}:s3" \
            -H 'x-amz-content-sha256: UNSIGNED-PAYLOAD' \
            -o "$out" "$s3_url/$key"
}

install_ssm_agent

# The bundle may be uploaded after the machines boot: wait for it.
log "fetching s3://$VERGER_BUCKET/$VERGER_BUNDLE_KEY"
deadline=$((SECONDS + ${VERGER_BUNDLE_WAIT_S:-1800}))
until s3_get "$VERGER_BUNDLE_KEY" "$work/bundle.tar.gz"; do
    [ "$SECONDS" -lt "$deadline" ] || die "no bundle at s3://$VERGER_BUCKET/$VERGER_BUNDLE_KEY"
    log "no bundle yet (upload it with deploy/make-bundle.sh's output); waiting"
    sleep 30
done
retry s3_get "$VERGER_BUNDLE_KEY.sha256" "$work/bundle.tar.gz.sha256" || die "cannot fetch the bundle's checksum"
expected=$(awk '{print $1; exit}' "$work/bundle.tar.gz.sha256")
actual=$(sha256sum "$work/bundle.tar.gz" | awk '{print $1}')
if [ -z "$expected" ] || [ "$expected" != "$actual" ]; then
    die "bundle checksum mismatch (expected ${expected:-nothing}, got $actual)"
fi

mkdir "$work/bundle"
tar -xzf "$work/bundle.tar.gz" -C "$work/bundle" --strip-components=1 --no-same-owner
[ -x "$work/bundle/install.sh" ] || die "the bundle has no install.sh"

install_args=(--role "$VERGER_ROLE" --bundle "$work/bundle" --region "$VERGER_REGION"
    --kms-key-arn "$VERGER_KMS_KEY_ARN")
if [ "$VERGER_ROLE" = executor ]; then
    install_args+=(--scheduler-host "${VERGER_SCHEDULER_HOST:?}"
        --concurrent-tasks "${VERGER_CONCURRENT_TASKS:-2}")
fi
if [ -n "${VERGER_INSTALL_ARGS:-}" ]; then
    read -r -a extra <<<"$VERGER_INSTALL_ARGS"
    install_args+=("${extra[@]}")
fi
"$work/bundle/install.sh" "${install_args[@]}"
log "done: verger $VERGER_ROLE installed"
