#!/usr/bin/env bash
# Builds the Confidant container image (Containerfile, FROM scratch) and
# checks it.
#
#   scripts/image.sh build [--binary PATH] [--tag TAG]
#       Stages the root file system (a release build of the binary unless
#       --binary names one, the shared libraries ldd lists, the CA bundle,
#       passwd/group entries for UID 65532) and builds the image with
#       buildah. Prints the image id.
#   scripts/image.sh check [--binary PATH]
#       Builds the image, then runs it the way the Helm chart does
#       (non-root, read-only root file system, every capability dropped, no
#       privilege escalation) as `confidant dev` on free loopback ports, and
#       asks every service for its health over mutual TLS from outside the
#       container. Removes the image and container afterwards.
#
# Environment: CARGO_TARGET_DIR (default /var/tmp/confidant-target).
# Containers run with the runc runtime and explicit ulimits, and on the host
# network only to listen on 127.0.0.1.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/services.sh
step() { printf '\n== %s\n' "$*"; }

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/confidant-target}"
mode="${1:-}"
shift || true
binary=""
tag="localhost/confidant:dev"
while [ $# -gt 0 ]; do
  case "$1" in
    --binary) binary="$2"; shift 2 ;;
    --tag) tag="$2"; shift 2 ;;
    *) echo "unknown argument: $1" >&2; exit 64 ;;
  esac
done
case "$mode" in
  build|check) ;;
  *) echo "usage: scripts/image.sh build|check [--binary PATH] [--tag TAG]" >&2; exit 64 ;;
esac

ensure_podman
podman_cmd() { podman --runtime runc "$@"; }

if [ -z "$binary" ]; then
  step "image: release build"
  cargo build --release --locked -p confidant
  binary="$CARGO_TARGET_DIR/release/confidant"
fi

context="$CARGO_TARGET_DIR/image-context"
rootfs="$context/rootfs"
rm -rf "$context"
mkdir -p "$rootfs/usr/local/bin" "$rootfs/etc/ssl/certs" "$rootfs/var/lib/confidant" "$rootfs/tmp"
# Debug symbols stay on the build host.
objcopy --strip-debug "$binary" "$rootfs/usr/local/bin/confidant"
chmod 0755 "$rootfs/usr/local/bin/confidant"
# The dynamic loader and every library the binary links, at their paths.
ldd "$binary" | awk '/=> \// { print $3 } /^\s*\/lib/ { print $1 }' | sort -u | while read -r lib; do
  mkdir -p "$rootfs$(dirname "$lib")"
  cp -L "$lib" "$rootfs$lib"
done
cp -L /etc/ssl/certs/ca-certificates.crt "$rootfs/etc/ssl/certs/ca-certificates.crt"
printf 'root:x:0:0:root:/root:/sbin/nologin\nconfidant:x:65532:65532:confidant:/var/lib/confidant:/sbin/nologin\n' >"$rootfs/etc/passwd"
printf 'root:x:0:\nconfidant:x:65532:\n' >"$rootfs/etc/group"
chown 65532:65532 "$rootfs/var/lib/confidant"
chmod 1777 "$rootfs/tmp"
cp Containerfile "$context/Containerfile"

step "image: buildah build $tag"
buildah build --quiet --layers=false -f "$context/Containerfile" -t "$tag" "$context" >/dev/null
id=$(podman_cmd image inspect --format '{{.Id}}' "$tag")
size=$(podman_cmd image inspect --format '{{.Size}}' "$tag")
user=$(podman_cmd image inspect --format '{{.Config.User}}' "$tag")
echo "image $tag: id ${id:0:12}, $((size / 1024 / 1024)) MiB, user $user"
if [ "$user" != "65532:65532" ]; then
  echo "image check FAILED: runs as '$user', not 65532" >&2
  exit 1
fi
env=$(podman_cmd image inspect --format '{{.Config.Env}}' "$tag")
if [[ "$env" != *"glibc.cpu.x86_rep_movsb_threshold="* ]]; then
  echo "image check FAILED: no glibc memcpy tunable in the image's environment ($env)" >&2
  exit 1
fi
if [[ "$env" != *"MIMALLOC_ALLOW_THP=0"* ]]; then
  echo "image check FAILED: transparent huge pages not turned off for mimalloc in the image's environment ($env)" >&2
  exit 1
fi
if [ "$mode" = build ]; then
  exit 0
fi

step "image: run it hardened and ask every service over mutual TLS"
data=$(mktemp -d /tmp/confidant-image-XXXXXX)
name="confidant-image-check-$$"
cleanup() {
  podman_cmd rm -f -t 2 "$name" >/dev/null 2>&1 || true
  podman_cmd rmi -f "$tag" >/dev/null 2>&1 || true
  rm -rf "$data"
}
trap cleanup EXIT
chown 65532:65532 "$data"
ports=()
env_args=()
# Six distinct free ports, picked while all six sockets are held open at once:
# picked one at a time, the kernel may hand out the same port twice.
read -r -a free < <(python3 -c '
import socket
held = [socket.socket() for _ in range(6)]
for s in held:
    s.bind(("127.0.0.1", 0))
print(" ".join(str(s.getsockname()[1]) for s in held))
')
i=0
for service in identity intake vault retention audit; do
  port=${free[$i]}
  i=$((i + 1))
  ports+=("127.0.0.1:$port")
  upper=$(echo "$service" | tr a-z A-Z)
  env_args+=(-e "CONFIDANT_SERVICES__${upper}__LISTEN=127.0.0.1:$port")
  env_args+=(-e "CONFIDANT_PEERS__${upper}=https://127.0.0.1:$port")
done
web_port=${free[5]}
env_args+=(-e "CONFIDANT_INTAKE__WEB_LISTEN=127.0.0.1:$web_port")
podman_cmd run -d --name "$name" --network host \
  --user 65532:65532 --read-only --cap-drop ALL --security-opt no-new-privileges \
  --ulimit nofile=16384:16384 --ulimit nproc=4096:4096 --pids-limit 512 \
  --tmpfs /tmp:rw,size=64m -v "$data:/var/lib/confidant/data" \
  "${env_args[@]}" "$tag" dev --data-dir /var/lib/confidant/data >/dev/null
ok=""
for _ in $(seq 1 150); do
  if [ -f "$data/pki/operator-key.pem" ] &&
    python3 tests/clients/health_check.py --ca "$data/pki/ca.pem" \
      --cert "$data/pki/operator.pem" --key "$data/pki/operator-key.pem" "${ports[@]}" >/dev/null 2>&1; then
    ok=1
    break
  fi
  if [ "$(podman_cmd inspect --format '{{.State.Running}}' "$name")" != true ]; then
    break
  fi
  sleep 0.2
done
if [ -z "$ok" ]; then
  echo "image check FAILED: the services did not answer; container log:" >&2
  podman_cmd logs "$name" >&2 || true
  exit 1
fi
python3 tests/clients/health_check.py --ca "$data/pki/ca.pem" \
  --cert "$data/pki/operator.pem" --key "$data/pki/operator-key.pem" "${ports[@]}"
# The running process has transparent huge pages off (the kernel reports
# it per process since Linux 5.0).
pid=$(podman_cmd inspect --format '{{.State.Pid}}' "$name")
thp=$(sed -n 's/^THP_enabled:[[:space:]]*//p' "/proc/$pid/status" 2>/dev/null || true)
if [ -n "$thp" ] && [ "$thp" != 0 ]; then
  echo "image check FAILED: the running services have transparent huge pages on (THP_enabled: $thp)" >&2
  exit 1
fi
# The intake web page answers over HTTPS without a client certificate.
if ! python3 - "$web_port" "$data/pki/ca.pem" <<'PY'
import ssl, sys, urllib.request
ctx = ssl.create_default_context(cafile=sys.argv[2])
ctx.check_hostname = False
page = urllib.request.urlopen(f"https://127.0.0.1:{sys.argv[1]}/", context=ctx, timeout=10)
body = page.read().decode()
assert page.status == 200 and "Client intake" in body, body[:200]
assert "default-src 'none'" in page.headers["content-security-policy"]
PY
then
  echo "image check FAILED: the intake web page did not answer" >&2
  exit 1
fi
# Without a client certificate the same ports turn the caller away.
if python3 tests/clients/health_check.py --ca "$data/pki/ca.pem" "${ports[@]}" >/dev/null 2>&1; then
  echo "image check FAILED: a caller without a certificate was answered" >&2
  exit 1
fi
podman_cmd stop -t 10 "$name" >/dev/null
code=$(podman_cmd inspect --format '{{.State.ExitCode}}' "$name")
if [ "$code" != 0 ]; then
  echo "image check FAILED: confidant exited $code on SIGTERM; log:" >&2
  podman_cmd logs "$name" >&2 || true
  exit 1
fi
echo "image check: five services healthy over mTLS from the image (huge pages off), the intake web page over HTTPS, callers without a certificate refused, clean stop"
