#!/usr/bin/env bash
# Records the current gRPC contract as the baseline that `buf breaking`
# compares against in scripts/test.sh. Run it when a contract change is
# released (additions included), and commit proto/breaking-baseline.binpb.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/services.sh
ensure_buf
(cd proto && "$BUF" build -o breaking-baseline.binpb)
echo "proto/breaking-baseline.binpb updated"
