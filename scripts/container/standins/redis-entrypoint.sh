#!/bin/sh
# Like the official image: `redis-server ARGS` runs with protected mode off unless ARGS set it.
set -e
if [ "$1" = redis-server ]; then
    shift
    exec redis-server --protected-mode no "$@"
fi
exec "$@"
