#!/usr/bin/env bash
# The project's benchmark (docs/benchmarks.md): Node BullMQ Workers vs a bare bullmq-official Worker vs
# BullMQ's scripts driven with no library (the floor) vs frostguard-worker (test plugin in both isolation
# modes, SMS plugin in dry run), no-op jobs at several concurrencies, 20 ms waiting jobs, and pickup latency;
# medians of BENCH_RUNS runs, a fresh redis-server for every drain. Release builds only.
#
# Usage: scripts/bench.sh [--write]
#   --write            also write docs/benchmarks.md (results section) and docs/benchmarks.svg (BENCH_WRITE=1)
# Environment (defaults): BENCH_JOBS (20000), BENCH_RUNS (3), BENCH_CONCURRENCY (1,5,50,200),
#   BENCH_CONTENDERS (node,node5,bare,raw,host-in-process,host-process,host-sms), BENCH_IO_MS (20),
#   BENCH_IO_CONCURRENCY (200; 0 skips), BENCH_PICKUP_JOBS (200; 0 skips), BENCH_PICKUP_RATE (50),
#   BENCH_HOST_LOG (warn).
# A quick look: BENCH_JOBS=2000 BENCH_RUNS=1 BENCH_CONCURRENCY=50 scripts/bench.sh
set -euo pipefail
cd "$(dirname "$0")/.."
for arg in "$@"; do
  case "$arg" in
    --write) export BENCH_WRITE=1 ;;
    *) echo "usage: scripts/bench.sh [--write]" >&2; exit 2 ;;
  esac
done
for tool in cargo node npm redis-server; do
  command -v "$tool" >/dev/null || { echo "bench: $tool is required; install it first" >&2; exit 1; }
done
for project in tests/node tests/node-bullmq5; do
  [ -f "$project/node_modules/bullmq/package.json" ] || (cd "$project" && npm ci --no-audit --no-fund)
done
cargo build --release --workspace
cargo build --release -p frostguard-tests --example bare-worker --example raw-worker
# The support library echoes the throwaway servers' and workers' logs; keep the tables readable.
cargo bench -p frostguard-tests --bench throughput 2> >(grep -v "^\[redis:" >&2)
