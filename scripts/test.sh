#!/usr/bin/env bash
# The test command: checks prerequisites, installs the Node test client, then formatting, lints, the build and
# every test of the workspace (unit, plugin harness, interop with Node BullMQ against a real redis-server,
# PostgreSQL end-to-end); then the container test (scripts/container-test.sh: the image built and the compose
# stacks run with podman; needs root; the slowest step: 50 min measured on a loaded 2-core VM when the image's
# dependency layers must be built, about 5 min when only sources changed). FG_CONTAINER_TEST=0 leaves it out.
# Usage: scripts/test.sh [extra args for the test runner, e.g. a test name filter; they also leave the
#        container test out, as a filtered run is a partial one]
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
. "$ROOT/scripts/lib.sh"
cd "$ROOT"

missing=()
command -v cargo >/dev/null || missing+=("cargo: the Rust toolchain (https://rustup.rs; rust-toolchain.toml pins the version)")
if command -v node >/dev/null && command -v npm >/dev/null; then
    node_major=$(node -p 'process.versions.node.split(".")[0]')
    [ "$node_major" -ge 20 ] || missing+=("Node.js 20 or newer (found $(node --version))")
else
    missing+=("node and npm: Node.js 20 or newer (Debian: apt-get install nodejs npm, or nodejs.org)")
fi
command -v redis-server >/dev/null || missing+=("redis-server: Redis 7 (Debian: apt-get install redis-server)")
[ -n "$(pg_bin_dir)" ] || missing+=("PostgreSQL server binaries under /usr/lib/postgresql/<v>/bin (Debian: apt-get install postgresql) or FROSTGUARD_PG_BIN=<dir with initdb>")
command -v flock >/dev/null || missing+=("flock (Debian: apt-get install util-linux)")
# The Kubernetes manifests are validated offline with kubernetes-validate (PyPI, installed below).
python3 -m pip --version >/dev/null 2>&1 || missing+=("python3 with pip, for the offline check of deploy/kubernetes (Debian: apt-get install python3-pip)")
# The Bull Board check opens the dashboard in headless Chromium (CHROMIUM overrides the path).
chromium_bin=${CHROMIUM:-/usr/bin/chromium}
if [ ! -x "$chromium_bin" ] && [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null; then
    echo "==> installing chromium (apt-get) for the Bull Board check"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium >/dev/null
fi
[ -x "$chromium_bin" ] || missing+=("Chromium at $chromium_bin for the Bull Board check (Debian: apt-get install chromium, or CHROMIUM=<path>)")
command -v openssl >/dev/null || missing+=("openssl: the SMS TLS tests generate their certificates with it (Debian: apt-get install openssl)")
# PgBouncer (the SMS plugin's transaction-pooling tests start one): installed from Debian's package when we can.
if ! command -v pgbouncer >/dev/null && [ ! -x /usr/sbin/pgbouncer ] && [ -z "${FROSTGUARD_PGBOUNCER:-}" ]; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        echo "scripts/test.sh: installing pgbouncer (Debian package) for the SMS transaction-pooling tests"
        (apt-get install -y -qq --no-install-recommends pgbouncer >/dev/null 2>&1 ||
            { apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq --no-install-recommends pgbouncer >/dev/null 2>&1; }) ||
            missing+=("pgbouncer: apt-get install pgbouncer failed; install it (Debian: apt-get install pgbouncer) or set FROSTGUARD_PGBOUNCER")
    else
        missing+=("pgbouncer (Debian: apt-get install pgbouncer) or FROSTGUARD_PGBOUNCER=<path to the binary>")
    fi
fi
# The container test runs rootful podman (it installs podman itself when run as root with apt).
container_test=${FG_CONTAINER_TEST:-1}
[ $# -eq 0 ] || container_test=0
if [ "$container_test" = 1 ] && [ "$(id -u)" != 0 ]; then
    missing+=("root for the container test (rootful podman; scripts/container-test.sh), or FG_CONTAINER_TEST=0 to leave it out")
fi
if [ ${#missing[@]} -gt 0 ]; then
    echo "scripts/test.sh: install these first:" >&2
    printf '  - %s\n' "${missing[@]}" >&2
    exit 1
fi

started=$SECONDS
step() {
    echo
    echo "==> $* (at $((SECONDS - started)) s)"
}

step "npm ci (tests/node: bullmq 6, ioredis; tests/node-bullmq5: bullmq 5.67, FrostGuard's version; tests/board: Bull Board, playwright-core)"
(cd tests/node && npm ci --no-audit --no-fund)
(cd tests/node-bullmq5 && npm ci --no-audit --no-fund)
(cd tests/board && npm ci --no-audit --no-fund)

# The schemas the Kubernetes manifests are checked against offline (tests/tests/kubernetes.rs): KEDA's and
# prometheus-operator's CRD validators (tests/kube), Kubernetes' own through kubernetes-validate.
step "npm ci (tests/kube) and pip install kubernetes-validate into target/kube-validate"
(cd tests/kube && npm ci --no-audit --no-fund)
if [ ! -d target/kube-validate/kubernetes_validate ]; then
    python3 -m pip install --quiet --disable-pip-version-check --target target/kube-validate 'kubernetes-validate==1.37.0'
fi

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy (warnings are errors)"
cargo clippy --workspace --all-targets -- -D warnings

# The plugin API's crate docs are its manual for plugin authors: broken links fail the build.
step "cargo doc (plugin-api, warnings are errors)"
RUSTDOCFLAGS="-D warnings" cargo doc --no-deps -p frostguard-plugin-api --features harness

# cargo test does not build other packages' binaries and cdylibs: the host and every plugin first.
step "cargo build --workspace"
cargo build --workspace
# The raw worker example is run by its own test (tests/tests/raw_worker.rs).
cargo build -p frostguard-tests --example raw-worker

# The interop suite and the digest end-to-end tests (job schedulers) run once per Node BullMQ line a producer may
# use: 6.x with everything above (the default), then again with 5.67, the version FrostGuard's API pins
# (drive.mjs loads it from tests/node-bullmq5).
if cargo nextest --version >/dev/null 2>&1; then
    step "cargo nextest run --workspace (Node BullMQ 6.7)"
    cargo nextest run --workspace --no-fail-fast "$@"
    step "interop suite and digest scheduler tests again with Node BullMQ 5.67 (FROSTGUARD_NODE_BULLMQ=5)"
    FROSTGUARD_NODE_BULLMQ=5 cargo nextest run --workspace --no-fail-fast \
        -E 'binary(interop) | (binary(email_digest) & test(/^e2e::/))' "$@"
    step "doc tests"
    cargo test --workspace --doc
else
    step "cargo test --workspace (Node BullMQ 6.7)"
    cargo test --workspace --no-fail-fast "$@"
    step "interop suite and digest scheduler tests again with Node BullMQ 5.67 (FROSTGUARD_NODE_BULLMQ=5)"
    FROSTGUARD_NODE_BULLMQ=5 cargo test --workspace --no-fail-fast --test interop "$@"
    FROSTGUARD_NODE_BULLMQ=5 cargo test --workspace --no-fail-fast --test email_digest e2e:: "$@"
fi

if [ "$container_test" = 1 ]; then
    step "container test (scripts/container-test.sh)"
    container_started=$SECONDS
    scripts/container-test.sh
    echo "scripts/test.sh: the container test took $((SECONDS - container_started)) s"
else
    echo
    echo "scripts/test.sh: container test left out (FG_CONTAINER_TEST=0 or a filtered run)"
fi

echo
echo "scripts/test.sh: all checks passed in $((SECONDS - started)) s"
