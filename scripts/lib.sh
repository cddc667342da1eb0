# Helpers shared by the scripts in this directory (sourced, not run).

# The cdylib name ([lib] name) declared in a plugin's Cargo.toml.
plugin_lib_name() {
    awk '/^\[lib\]/{inlib=1; next} /^\[/{inlib=0} inlib && $1=="name" {gsub(/[" ]/, "", $3); print $3; exit}' "$1"
}

# The package name declared in a crate's Cargo.toml.
crate_package_name() {
    awk '/^\[package\]/{inpkg=1; next} /^\[/{inpkg=0} inpkg && $1=="name" {gsub(/[" ]/, "", $3); print $3; exit}' "$1"
}

# Prints "shipped <lib> <package>" or "test <lib> <package>" for every plugin crate under plugins/: every crate
# directly under plugins/ ships, every crate under plugins/testing/ is a test plugin that never ships.
list_plugins() {
    local manifest lib kind
    for manifest in "$ROOT"/plugins/*/Cargo.toml "$ROOT"/plugins/testing/*/Cargo.toml; do
        [ -f "$manifest" ] || continue
        lib=$(plugin_lib_name "$manifest")
        [ -n "$lib" ] || continue
        case "$manifest" in
            "$ROOT"/plugins/testing/*) kind=test ;;
            *) kind=shipped ;;
        esac
        echo "$kind $lib $(crate_package_name "$manifest")"
    done
}

# A TCP port on 127.0.0.1 that is free right now.
free_port() {
    node -e 'const s=require("net").createServer();s.listen(0,"127.0.0.1",()=>{console.log(s.address().port);s.close()})'
}

# The directory with PostgreSQL's server binaries (initdb, postgres, pg_ctl), or nothing.
pg_bin_dir() {
    if [ -n "${FROSTGUARD_PG_BIN:-}" ]; then echo "$FROSTGUARD_PG_BIN"; return; fi
    local d
    d=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)
    [ -n "$d" ] && [ -x "$d/initdb" ] && echo "$d"
}
