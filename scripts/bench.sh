#!/usr/bin/env bash
# Throughput benchmark: Node BullMQ Worker vs bare bullmq-official Worker vs frostguard-worker, same no-op jobs,
# same (throwaway) Redis setup. Release builds only. Usage: scripts/bench.sh  (BENCH_JOBS, BENCH_CONCURRENCY)
set -euo pipefail
cd "$(dirname "$0")/.."
for tool in cargo node npm redis-server; do
  command -v "$tool" >/dev/null || { echo "bench: $tool is required; install it first" >&2; exit 1; }
done
[ -d tests/node/node_modules ] || (cd tests/node && npm ci --no-audit --no-fund)
cargo build --release --workspace
# The support library echoes the throwaway servers' logs; keep the table readable.
cargo bench -p frostguard-tests --bench throughput 2> >(grep -v "^\[redis:" >&2)
