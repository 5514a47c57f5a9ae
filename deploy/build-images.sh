#!/usr/bin/env bash
# Builds the stack's images from what this machine has: no base image is pulled.
# Each image is FROM scratch: one release binary built here (plus `probe`, for
# health checks), the shared libraries `ldd` says it needs, and a minimal /etc.
# Redis is packaged the same way from the host's redis-server (Debian package).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
tag=${TAG:-local}

echo "== building release binaries"
(cd "$root" && cargo build --release --locked -p demo-gateway -p demo-services)
bin="$root/target/release"

stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT

# add_binary ROOTFS PATH: the binary into /bin, its libraries at their own paths.
add_binary() {
  local rootfs=$1 path=$2
  cp "$path" "$rootfs/bin/"
  strip --strip-debug "$rootfs/bin/$(basename "$path")" 2>/dev/null || true
  # "libc.so.6 => /lib/.../libc.so.6 (0x...)" and the loader "/lib64/ld-linux-x86-64.so.2 (0x...)".
  ldd "$path" | awk '$2 == "=>" && $3 ~ /^\// {print $3} $1 ~ /^\// {print $1}' | while read -r lib; do
    cp --parents -L "$lib" "$rootfs"
  done
}

# image NAME ENTRYPOINT BINARY...: builds tower-gateway/NAME:$tag.
image() {
  local name=$1 entrypoint=$2
  shift 2
  local dir="$stage/$name" rootfs="$stage/$name/rootfs"
  mkdir -p "$rootfs"/{bin,etc,tmp} "$dir/data"
  chmod 1777 "$rootfs/tmp"
  for path in "$@"; do add_binary "$rootfs" "$path"; done
  printf 'root:x:0:0:root:/:/bin/none\nnobody:x:65534:65534:nobody:/:/bin/none\n' > "$rootfs/etc/passwd"
  printf 'root:x:0:\nnogroup:x:65534:\n' > "$rootfs/etc/group"
  printf 'hosts: files dns\n' > "$rootfs/etc/nsswitch.conf"
  cat > "$dir/Dockerfile" <<DOCKERFILE
FROM scratch
# Binaries, libraries and /etc owned by root: the service user can write /data
# (and /tmp) only.
COPY rootfs/ /
COPY --chown=65534:65534 data/ /data/
USER 65534:65534
WORKDIR /data
ENTRYPOINT ["/bin/$entrypoint"]
DOCKERFILE
  docker build --quiet -t "tower-gateway/$name:$tag" "$dir" >/dev/null 2>"$dir/build.log" || { cat "$dir/build.log" >&2; exit 1; }
  echo "   tower-gateway/$name:$tag ($(du -sh "$rootfs" | cut -f1))"
}

echo "== building images"
image gateway demo-gateway "$bin/demo-gateway" "$bin/probe"
image product-service product-service "$bin/product-service" "$bin/probe"
image user-service user-service "$bin/user-service" "$bin/probe"
image checkout-service checkout-service "$bin/checkout-service" "$bin/probe"
image inventory-service inventory-service "$bin/inventory-service" "$bin/grpc-health"
redis_server=$(command -v redis-server || true)
if [ -z "$redis_server" ]; then
  echo "redis-server is not installed (Debian: apt-get install redis-server)" >&2
  exit 1
fi
image redis redis-server "$redis_server" "$(command -v redis-cli)" "$bin/probe"
