#!/usr/bin/env bash
# Benchmarks, each figure next to a baseline measured in the same run:
# audit log append throughput (SQLite, PostgreSQL) with the tree maintained,
# proof latency, 1M-event verification; authorization decision latency from
# cached facts. Exits non-zero only if it could not run.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/services.sh
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/confidant-target}"
ensure_postgres
cargo bench -p confidant-audit --bench audit_log
cargo bench -p confidant-identity --bench decision
