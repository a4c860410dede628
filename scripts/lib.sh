# Shared helpers for the scripts: install what they need on a fresh machine.
# shellcheck shell=bash

log() { printf '==> %s\n' "$*" >&2; }

# moto's server mode: the local AWS-protocol server the tests and the demo use.
# The harness's moto extension (testkit/src/moto_ext.py) is written against moto 5.2.
ensure_moto() {
    if ! python3 -c 'import moto.server, flask, werkzeug, sys
v = tuple(int(x) for x in moto.__version__.split(".")[:2])
sys.exit(0 if (5, 2) <= v < (6, 0) else 1)' 2>/dev/null; then
        log "installing moto[server] 5.2+ (pip)"
        python3 -m pip install --quiet --disable-pip-version-check 'moto[server]>=5.2,<6'
    fi
}

# qemu-img converts qcow2/VMDK/VHD images to raw (and makes the qcow2 test image).
ensure_qemu_img() {
    if ! command -v qemu-img >/dev/null; then
        log "installing qemu-utils (apt)"
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq qemu-utils
    fi
}

# Debian's chromium: the report test opens the generated index.html in it, headless.
ensure_chromium() {
    if ! command -v chromium >/dev/null; then
        log "installing chromium (apt)"
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium
    fi
}

# groff renders the man pages `ec2ami man` writes (the man page test checks each one).
ensure_groff() {
    if ! command -v groff >/dev/null; then
        log "installing groff-base (apt)"
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq groff-base
    fi
}

ensure_nextest() {
    if ! cargo nextest --version >/dev/null 2>&1; then
        log "installing cargo-nextest"
        cargo install --locked cargo-nextest
    fi
}

# Run a command in a network namespace that has only the loopback interface, so
# nothing it does can reach any address but 127.0.0.0/8 and ::1. Falls back to the
# plain environment (with a warning) where namespaces are not allowed.
run_loopback_only() {
    if unshare -n true 2>/dev/null; then
        unshare -n bash -c 'ip link set lo up && exec "$@"' run_loopback_only "$@"
    else
        log "warning: cannot create a network namespace; running without one"
        "$@"
    fi
}

# Dummy credentials and no instance metadata: nothing may reach real AWS or
# 169.254.169.254, whatever the caller's environment holds.
use_local_aws_env() {
    unset AWS_PROFILE AWS_DEFAULT_PROFILE AWS_SESSION_TOKEN AWS_ROLE_ARN \
        AWS_WEB_IDENTITY_TOKEN_FILE AWS_CONTAINER_CREDENTIALS_RELATIVE_URI \
        AWS_CONTAINER_CREDENTIALS_FULL_URI
    export AWS_ACCESS_KEY_ID=testing AWS_SECRET_ACCESS_KEY=testing
    export AWS_EC2_METADATA_DISABLED=true AWS_REGION="${AWS_REGION:-us-east-1}"
    export AWS_CONFIG_FILE=/dev/null AWS_SHARED_CREDENTIALS_FILE=/dev/null
}
