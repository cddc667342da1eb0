#!/usr/bin/env bash
# Builds the host and the plugins and copies the plugin libraries where the host and the docs expect them:
#   shipped plugins (plugins/*)        -> target/plugins/
#   test plugins    (plugins/testing/*) -> target/test-plugins/
# Usage: scripts/build-plugins.sh [--debug] [--shipped-only]
#   --debug         debug build (default: release)
#   --shipped-only  build only the host and the shipped plugins (no test plugins, no test crate); what the
#                   container image is made of
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
. "$ROOT/scripts/lib.sh"
cd "$ROOT"

profile=release
cargo_flags=(--release)
shipped_only=false
for arg in "$@"; do
    case "$arg" in
        --debug) profile=debug; cargo_flags=() ;;
        --shipped-only) shipped_only=true ;;
        *) echo "build-plugins: unknown argument $arg (usage: build-plugins.sh [--debug] [--shipped-only])" >&2; exit 2 ;;
    esac
done

if $shipped_only; then
    packages=(-p frostguard-worker)
    while read -r kind _lib package; do
        [ "$kind" = shipped ] && packages+=(-p "$package")
    done < <(list_plugins)
    cargo build --locked "${cargo_flags[@]}" "${packages[@]}"
else
    cargo build --workspace "${cargo_flags[@]}"
fi

target="${CARGO_TARGET_DIR:-$ROOT/target}"
rm -rf "$target/plugins" "$target/test-plugins"
mkdir -p "$target/plugins"
$shipped_only || mkdir -p "$target/test-plugins"
while read -r kind lib _package; do
    case "$kind" in
        shipped) dest="$target/plugins" ;;
        test) $shipped_only && continue; dest="$target/test-plugins" ;;
    esac
    src="$target/$profile/lib$lib.so"
    [ -f "$src" ] || { echo "build-plugins: $src was not built" >&2; exit 1; }
    cp "$src" "$dest/"
    echo "build-plugins: $kind plugin lib$lib.so -> ${dest#"$ROOT"/}/"
done < <(list_plugins)
