#!/usr/bin/env bash
# Builds the stack's images from what this machine has: no base image is pulled.
# Each image is FROM scratch: one release binary built here (plus `probe`, for
# health checks), the shared libraries `ldd` says it needs, and a minimal /etc.
# Redis is packaged the same way from the host's redis-server, and Postgres
# from the host's Debian postgresql (its own binaries, share files, the two
# modules initdb loads, and the time zones), each with dash for its start script.
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
  # extra_NAME ROOTFS, where an image needs more than binaries.
  if declare -F "extra_${name//-/_}" >/dev/null; then "extra_${name//-/_}" "$rootfs"; fi
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

# add_at_own_path ROOTFS PATH...: files at the paths they have here, with the libraries they need.
add_at_own_path() {
  local rootfs=$1
  shift
  for path in "$@"; do
    cp --parents -L "$path" "$rootfs"
    ldd "$path" 2>/dev/null | awk '$2 == "=>" && $3 ~ /^\// {print $3} $1 ~ /^\// {print $1}' | while read -r lib; do
      cp --parents -L "$lib" "$rootfs"
    done
  done
}

# A Sentinel's start: its configuration, with the password from the secret,
# written to /tmp (a tmpfs: a Sentinel rewrites its file), then the Sentinel.
extra_redis() {
  local rootfs=$1
  ln -s dash "$rootfs/bin/sh"
  cat > "$rootfs/bin/redis-sentinel-start" <<'SCRIPT'
#!/bin/dash
set -eu
pw=
while read -r key value; do [ "$key" = requirepass ] && pw=$value; done < /run/secrets/redis_conf
umask 077
printf '%s\n' "port 26379" "bind 0.0.0.0" "protected-mode no" "dir /tmp" \
  "sentinel resolve-hostnames yes" "sentinel announce-hostnames yes" \
  "sentinel monitor gw redis 6379 2" "sentinel auth-pass gw $pw" \
  "sentinel down-after-milliseconds gw 2000" "sentinel failover-timeout gw 10000" \
  "sentinel parallel-syncs gw 1" > /tmp/sentinel.conf
exec /bin/redis-server /tmp/sentinel.conf --sentinel
SCRIPT
  chmod 0755 "$rootfs/bin/redis-sentinel-start"
}

# Postgres at Debian's own paths (its binaries find their share files and
# modules relative to themselves); /usr/lib/postgresql/bin names this version.
extra_postgres() {
  local rootfs=$1 pgbin=$postgres_bin pgdir
  pgdir=$(dirname "$pgbin")
  ln -s dash "$rootfs/bin/sh"
  add_at_own_path "$rootfs" "$pgbin/postgres" "$pgbin/initdb" "$pgbin/pg_isready" \
    "$pgdir/lib/plpgsql.so" "$pgdir/lib/dict_snowball.so"
  ln -s "$(basename "$pgdir")/bin" "$rootfs/usr/lib/postgresql/bin"
  tar -C / -cf - "usr/share/postgresql/$(basename "$pgdir")" usr/share/zoneinfo | tar -C "$rootfs" -xf -
  cat > "$rootfs/bin/postgres-start" <<'SCRIPT'
#!/bin/dash
# The cluster made on first start: the superuser's password from the secret,
# password (SCRAM) logins from the network, one database per service; then served.
set -eu
export LC_ALL=C TZ=UTC
bin=/usr/lib/postgresql/bin
data=/data/pgdata
if [ ! -s "$data/PG_VERSION" ]; then
  "$bin/initdb" -D "$data" -U postgres --pwfile="$POSTGRES_PASSWORD_FILE" --auth-local=trust \
    --auth-host=scram-sha-256 -E UTF8 --locale=C >/dev/null
  echo "host all all 0.0.0.0/0 scram-sha-256" >> "$data/pg_hba.conf"
  for db in $POSTGRES_DATABASES; do
    echo "CREATE DATABASE $db;" | "$bin/postgres" --single -D "$data" -c unix_socket_directories= postgres >/dev/null
  done
fi
exec "$bin/postgres" -D "$data" -c listen_addresses='*' -c unix_socket_directories= -c max_connections=200
SCRIPT
  chmod 0755 "$rootfs/bin/postgres-start"
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
image redis redis-server "$redis_server" "$(command -v redis-cli)" "$bin/probe" /bin/dash
postgres_bin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)
if [ -z "$postgres_bin" ]; then
  echo "postgresql is not installed (Debian: apt-get install postgresql)" >&2
  exit 1
fi
image postgres postgres-start /bin/dash
