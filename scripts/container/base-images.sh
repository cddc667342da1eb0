#!/usr/bin/env bash
# Makes sure the base images that Dockerfile.worker and the compose files name exist in local podman storage.
# Each is pulled from its registry; when that fails (no registry reachable, as on an offline CI machine) a
# local stand-in is built instead and tagged under localhost/frostguard-standin/:
#   debian  debootstrap --variant=minbase of the release apt already uses, turned into an image (podman import)
#   rust    that base + gcc + the pinned toolchain copied from this machine's rustup (rust-toolchain.toml)
#   redis   that base + Debian's redis-server (Redis 7)
#   postgres that base + Debian's PostgreSQL, with an entrypoint that honours POSTGRES_USER/PASSWORD/DB and
#           /docker-entrypoint-initdb.d like the official image does
# Stand-ins that already exist are reused (delete them with --remove). Prints the images to use as shell
# assignments (RUST_IMAGE=..., RUNTIME_IMAGE=..., REDIS_IMAGE=..., POSTGRES_IMAGE=...) on stdout; progress goes
# to stderr. Needs root, podman and debootstrap. Usage: base-images.sh [--remove]
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
export CONTAINERS_CONF="${CONTAINERS_CONF:-$HERE/containers.conf}"

STANDIN=localhost/frostguard-standin
rust_version=$(sed -n 's/^channel *= *"\(.*\)"/\1/p' "$ROOT/rust-toolchain.toml")
[ -n "$rust_version" ] || { echo "base-images: no channel in rust-toolchain.toml" >&2; exit 1; }
suite=bookworm

# official name | stand-in name
declare -A official=(
    [RUNTIME_IMAGE]="docker.io/library/debian:$suite-slim"
    [RUST_IMAGE]="docker.io/library/rust:$rust_version-slim-$suite"
    [REDIS_IMAGE]="docker.io/library/redis:7-$suite"
    [POSTGRES_IMAGE]="docker.io/library/postgres:15-$suite"
)
declare -A standin=(
    [RUNTIME_IMAGE]="$STANDIN/debian:$suite-slim"
    [RUST_IMAGE]="$STANDIN/rust:$rust_version-slim-$suite"
    [REDIS_IMAGE]="$STANDIN/redis:7-$suite"
    [POSTGRES_IMAGE]="$STANDIN/postgres:15-$suite"
)
order=(RUNTIME_IMAGE RUST_IMAGE REDIS_IMAGE POSTGRES_IMAGE)

log() { echo "base-images: $*" >&2; }
exists() { podman image exists "$1"; }

if [ "${1:-}" = "--remove" ]; then
    for key in "${order[@]}"; do
        if exists "${standin[$key]}"; then podman rmi -f "${standin[$key]}" >/dev/null && log "removed ${standin[$key]}"; fi
    done
    exit 0
fi

# The Debian mirror apt on this machine uses (deb822 or one-line sources), else the default one.
debian_mirror() {
    local uri
    # awk reads all of grep's output (no early `exit`), so pipefail never sees grep cut off by SIGPIPE.
    uri=$(grep -hs '^URIs:' /etc/apt/sources.list.d/*.sources | awk '$2 !~ /security/ && !found {print $2; found = 1}')
    [ -n "$uri" ] || uri=$(grep -hs '^deb ' /etc/apt/sources.list | awk '$2 !~ /security/ && !found {print $2; found = 1}')
    echo "${uri:-http://deb.debian.org/debian}"
}

build_debian() {
    local tree
    tree=$(mktemp -d /var/tmp/frostguard-debootstrap.XXXXXX)
    log "debootstrap --variant=minbase $suite from $(debian_mirror) (about half a minute)"
    debootstrap --variant=minbase "$suite" "$tree" "$(debian_mirror)" >"$tree.log" 2>&1 \
        || { tail -n 20 "$tree.log" >&2; rm -rf "$tree" "$tree.log"; return 1; }
    # What a -slim image leaves out: documentation, man pages, package caches and lists.
    rm -rf "$tree"/usr/share/doc/* "$tree"/usr/share/man/* "$tree"/usr/share/info/* \
        "$tree"/var/cache/apt/archives/*.deb "$tree"/var/lib/apt/lists/* "$tree"/var/log/*.log
    tar -C "$tree" -c . | podman import \
        --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        --change 'CMD ["bash"]' - "${standin[RUNTIME_IMAGE]}" >/dev/null
    rm -rf "$tree" "$tree.log"
}

build_rust() {
    local ctx sysroot
    sysroot=$(cd "$ROOT" && rustc --print sysroot)
    [ "$(cd "$ROOT" && rustc --version | awk '{print $2}')" = "$rust_version" ] \
        || { log "rustc here is not $rust_version (rustup toolchain install $rust_version)"; return 1; }
    ctx=$(mktemp -d /var/tmp/frostguard-rust-image.XXXXXX)
    mkdir -p "$ctx/toolchain"
    # The compiler and the standard library only (not the HTML docs under share/).
    cp -a "$sysroot/bin" "$sysroot/lib" "$ctx/toolchain/"
    [ -d "$sysroot/libexec" ] && cp -a "$sysroot/libexec" "$ctx/toolchain/"
    cp "$HERE/standins/rust.Containerfile" "$ctx/Containerfile"
    quietly podman build --network host --build-arg "BASE_IMAGE=${standin[RUNTIME_IMAGE]}" \
        -t "${standin[RUST_IMAGE]}" "$ctx"
    rm -rf "$ctx"
}

build_service() { # key containerfile
    quietly podman build --network host --build-arg "BASE_IMAGE=${standin[RUNTIME_IMAGE]}" \
        -f "$HERE/standins/$2" -t "${standin[$1]}" "$HERE/standins"
}

# Runs a command with its output in a log that is shown only when it fails.
quietly() {
    local out
    out=$(mktemp)
    "$@" >"$out" 2>&1 || { tail -n 40 "$out" >&2; rm -f "$out"; return 1; }
    rm -f "$out"
}

for key in "${order[@]}"; do
    image=${official[$key]}
    if exists "$image" || { [ "${FG_NO_PULL:-}" != 1 ] && timeout 120 podman pull -q "$image" >/dev/null 2>&1; }; then
        log "$key: $image"
    else
        image=${standin[$key]}
        if exists "$image"; then
            log "$key: ${official[$key]} cannot be pulled; reusing the stand-in $image"
        else
            log "$key: ${official[$key]} cannot be pulled; building the stand-in $image"
            t0=$SECONDS
            case "$key" in
                RUNTIME_IMAGE) build_debian ;;
                RUST_IMAGE) build_rust ;;
                REDIS_IMAGE) build_service "$key" redis.Containerfile ;;
                POSTGRES_IMAGE) build_service "$key" postgres.Containerfile ;;
            esac
            log "$key: built $image in $((SECONDS - t0)) s"
        fi
    fi
    echo "$key=$image"
done
