#!/usr/bin/env bash
# Builds the workspace and copies the plugin libraries where the host and the docs expect them:
#   shipped plugins (plugins/*)        -> target/plugins/
#   test plugins    (plugins/testing/*) -> target/test-plugins/
# Usage: scripts/build-plugins.sh [--debug]   (default: release build)
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
. "$ROOT/scripts/lib.sh"
cd "$ROOT"

profile=release
cargo_flags=(--release)
if [ "${1:-}" = "--debug" ]; then
    profile=debug
    cargo_flags=()
fi

cargo build --workspace "${cargo_flags[@]}"

target="${CARGO_TARGET_DIR:-$ROOT/target}"
rm -rf "$target/plugins" "$target/test-plugins"
mkdir -p "$target/plugins" "$target/test-plugins"
while read -r kind lib; do
    src="$target/$profile/lib$lib.so"
    [ -f "$src" ] || { echo "build-plugins: $src was not built" >&2; exit 1; }
    case "$kind" in
        shipped) dest="$target/plugins" ;;
        test) dest="$target/test-plugins" ;;
    esac
    cp "$src" "$dest/"
    echo "build-plugins: $kind plugin lib$lib.so -> ${dest#"$ROOT"/}/"
done < <(list_plugins)
