#!/usr/bin/env bash
# Audit log benchmark: append throughput (SQLite, PostgreSQL) with the tree
# maintained, proof latency and 1M-event verification, each with a baseline
# measured in the same run. Exits non-zero only if it could not run.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/services.sh
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/confidant-target}"
ensure_postgres
cargo bench -p confidant-audit --bench audit_log
