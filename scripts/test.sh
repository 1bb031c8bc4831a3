#!/usr/bin/env bash
# The test command (README, .ci/run): makes sure PostgreSQL, Redis and the
# AWS KMS emulator are reachable, starting or installing them when they are
# not, installs the client tools the tests drive (Python grpcio, buf, the
# deployment checkers, podman, cargo-deny), then runs every check and test of the
# workspace, the Helm chart's checks and the container image check.
#
# Environment:
#   CARGO_TARGET_DIR              build directory (default /var/tmp/confidant-target)
#   CONFIDANT_TOOLS_DIR           where buf, grpcurl and the deployment checkers are installed
#                                 (default /var/tmp/confidant-tools)
#   CONFIDANT_TEST_POSTGRES_URL   PostgreSQL for tests (default postgres://postgres@127.0.0.1:5432/postgres)
#   CONFIDANT_TEST_REDIS_URL      Redis for tests (default redis://127.0.0.1:6379)
#   CONFIDANT_TEST_KMS_ENDPOINT   KMS emulator (default http://127.0.0.1:4599)
#   CONFIDANT_GRPCURL             grpcurl for the tests (installed under the tools directory)
#   CONFIDANT_TEST_TIMEOUT        the most running the built tests may take, in seconds
#                                 (default 2400; a run stopped at it fails, naming the
#                                 tests still running)
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/services.sh

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/confidant-target}"
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"

step() { printf '\n== %s\n' "$*"; }

step "test services"
ensure_postgres
ensure_redis
ensure_kms_emulator
ensure_python_clients
ensure_grpcurl
ensure_buf
ensure_cargo_deny
ensure_deploy_tools
ensure_kubectl
ensure_podman
ensure_browser

step "formatting"
cargo fmt --all -- --check

step "proto: buf lint and breaking-change check"
(cd proto && "$BUF" lint)
(cd proto && "$BUF" breaking --against breaking-baseline.binpb)
if git rev-parse --verify -q main >/dev/null && [ "$(git rev-parse HEAD)" != "$(git rev-parse main)" ]; then
  (cd proto && "$BUF" breaking --against '../.git#branch=main,subdir=proto')
fi

step "dependencies: licenses, duplicate versions, banned crates and sources (deny.toml)"
# Advisories need the RustSec database from GitHub, which this suite does
# not assume it can reach; see deny.toml.
"$CARGO_DENY" --locked --color never check bans licenses sources

step "clippy"
cargo clippy --workspace --all-targets --all-features --locked -- -D warnings

step "tests"
log_file=$(mktemp)
trap 'rm -f "$log_file"' EXIT
set +e
# Built first, so that the limit below counts running the tests alone (a
# cold build takes as long as it takes); a test that hangs then stops the
# run instead of holding CI until its limit.
cargo test --workspace --all-features --locked --no-run 2>&1 | tee "$log_file"
status=${PIPESTATUS[0]}
if [ "$status" -eq 0 ]; then
  timeout --kill-after=30 "${CONFIDANT_TEST_TIMEOUT:-2400}" \
    cargo test --workspace --all-features --locked 2>&1 | tee "$log_file"
  status=${PIPESTATUS[0]}
fi
test_status=$status
set -e

step "deployment: Helm chart and plain manifests"
if ! "$DEPLOY_PYTHON" scripts/chart_check.py --confidant "$CARGO_TARGET_DIR/debug/confidant"; then
  status=1
fi

step "deployment: container image"
if ! scripts/image.sh check --binary "$CARGO_TARGET_DIR/debug/confidant"; then
  status=1
fi
# One closing line for the whole run, summed over every test binary.
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i; if ($(i+1) ~ /^ignored/) s += $i } }
     END { printf "\ntests: %d passed, %d failed, %d skipped\n", p, f, s }' "$log_file"
if [ "$test_status" -eq 124 ] || [ "$test_status" -eq 137 ]; then
  echo "tests: stopped after ${CONFIDANT_TEST_TIMEOUT:-2400} s, before every test ran; still running then:"
  grep 'has been running for over' "$log_file" || true
fi
exit "$status"
