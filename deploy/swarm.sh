#!/usr/bin/env bash
# The seed system on Docker Swarm, on this machine.
#
#   deploy/swarm.sh up      init a single-node swarm if there is none, build the images,
#                           deploy the stack, wait until the gateway is ready
#   deploy/swarm.sh check   smoke and failover checks over HTTPS (https://localhost:8443,
#                           trusting deploy/secrets/tls_ca.pem), with a WebSocket; plain
#                           http://127.0.0.1:8080 only redirects. It changes and removes
#                           only records it creates itself.
#   deploy/swarm.sh reload FILE
#                           apply FILE as the gateway's configuration without a restart: it
#                           is written to the gateway's config volume, which the gateway
#                           watches; says whether the gateway applied it or refused it (and
#                           then why), in which case the configuration before goes on serving
#   deploy/swarm.sh rolling a gateway rolling update under load, failures counted by kind
#   deploy/swarm.sh down    remove the stack (and --volumes: its data; and the swarm
#                           if `up` created it)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
stack=tower-gateway
base=${GATEWAY_URL:-https://localhost:8443}
plain_base=${GATEWAY_PLAIN_URL:-http://127.0.0.1:8080}
cacert="$here/secrets/tls_ca.pem"
root=$(cd "$here/.." && pwd)
marker="$here/.swarm-created-by-us"

log() { printf '== %s\n' "$*"; }
fail() { printf 'FAIL: %s\n' "$*" >&2; exit 1; }

# wait_for SECONDS DESCRIPTION COMMAND...: polls COMMAND every half second.
wait_for() {
  local seconds=$1 what=$2
  shift 2
  local deadline=$((SECONDS + seconds))
  until "$@" >/dev/null 2>&1; do
    [ "$SECONDS" -lt "$deadline" ] || fail "$what (not within ${seconds}s)"
    sleep 0.5
  done
}

hcurl() { # curl over HTTPS, trusting the stack's CA; HTTP/1.1 unless a call asks for --http2
  # (curl 7.88, Debian 12's, fails one upload in a few with error 92 when an HTTP/2
  # server answers before the body is in and ends the stream with RST_STREAM(NO_ERROR),
  # as RFC 9113 §8.1 allows and the gateway does for a 401 or 403: a curl bug, fixed
  # in later releases; section 1c checks HTTP/2 itself)
  curl --http1.1 --cacert "$cacert" "$@"
}

json_send() { # METHOD URL BODY [HEADER...] -> prints "STATUS BODY"
  local method=$1 url=$2 body=$3
  shift 3
  local args=()
  for h in "$@"; do args+=(-H "$h"); done
  [ -n "$body" ] && args+=(-H 'content-type: application/json' -d "$body")
  hcurl -sS -m 10 -o /tmp/tg-body -w '%{http_code}' -X "$method" "$url" "${args[@]}"
  printf ' %s\n' "$(cat /tmp/tg-body)"
}

json_post() { # URL BODY [HEADER...] -> prints "STATUS BODY"
  json_send POST "$@"
}

admin() { # PATH -> the body of GET PATH on the gateway's admin listener (not published)
  docker exec "$(docker ps -q -f "name=${stack}_gateway" | head -1)" /bin/probe --print "http://127.0.0.1:9090$1"
}

config_volume="${stack}_gateway-config"

put_config() { # FILE: into the gateway's config volume (made if absent), through a
  # container that is created, never started: the images have no shell to copy with
  docker volume inspect "$config_volume" >/dev/null 2>&1 \
    || docker volume create --label "com.docker.stack.namespace=$stack" "$config_volume" >/dev/null
  local writer stage
  # docker cp keeps the file's mode: a copy readable by the gateway's user (65534).
  stage=$(mktemp)
  cp "$1" "$stage" && chmod 0644 "$stage"
  writer=$(docker container create -v "$config_volume:/etc/tower-gateway/live" tower-gateway/gateway:local)
  docker cp "$stage" "$writer:/etc/tower-gateway/live/gateway.toml" >/dev/null
  docker rm "$writer" >/dev/null
  rm -f "$stage"
}

generation() { # the generation of the configuration the gateway serves
  admin /metrics | sed -n 's/^gateway_config_info{generation="\([0-9]*\)".*/\1/p' | head -1
}

reload() { # FILE: the gateway's configuration, applied without a restart
  local file=$1 before refused deadline
  [ -f "$file" ] || fail "no such file: $file"
  before=$(generation)
  refused=$(metric 'gateway_config_reloads_total{outcome="refused"}')
  # The file served now, put back if the gateway refuses this one: a refused
  # file left on the volume would stop a restarted gateway from starting.
  local served
  served=$(mktemp)
  docker cp "$(docker ps -q -f "name=${stack}_gateway" | head -1):/etc/tower-gateway/live/gateway.toml" - | tar -xO > "$served"
  put_config "$file"
  deadline=$((SECONDS + 20))
  while [ "$SECONDS" -lt "$deadline" ]; do
    if [ "$(generation)" != "$before" ]; then
      echo "   applied: generation $(generation) (was $before)"
      rm -f "$served"
      return 0
    fi
    if [ "$(metric 'gateway_config_reloads_total{outcome="refused"}')" != "$refused" ]; then
      docker service logs --since 1m "${stack}_gateway" 2>&1 | grep 'configuration refused' | tail -5 >&2
      put_config "$served"
      rm -f "$served"
      fail "the gateway refused $file and serves generation $before still (its file is back on the volume)"
    fi
    sleep 0.5
  done
  rm -f "$served"
  fail "the gateway did not take $file within 20 s (the same as it serves?)"
}

metric() { # NAME_AND_LABELS -> value (0 if absent)
  admin /metrics | awk -v m="$1" 'index($0, m) == 1 {print $2; found=1} END {if (!found) print 0}' | head -1
}

up() {
  docker info >/dev/null 2>&1 || fail "no Docker engine answers (docker info)"
  if [ "$(docker info --format '{{.Swarm.LocalNodeState}}')" != active ]; then
    log "initialising a single-node swarm"
    docker swarm init --advertise-addr 127.0.0.1 >/dev/null
    touch "$marker"
  fi
  "$here/build-images.sh"
  mkdir -p "$here/secrets"
  if [ ! -s "$here/secrets/key_encryption" ]; then
    log "generating the secret that seals user-service's signing keys (deploy/secrets/key_encryption, not committed)"
    (umask 077 && head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' > "$here/secrets/key_encryption")
  fi
  # The nodes: this one carries the published ports (the gateway runs on
  # every node labelled edge) and the database (Postgres runs where db is).
  local node
  node=$(docker info --format '{{.Swarm.NodeID}}')
  docker node update --label-add tower-gateway.edge=true --label-add tower-gateway.db=true "$node" >/dev/null
  if ! grep -qs '^masterauth ' "$here/secrets/redis.conf"; then
    log "generating Redis's password (deploy/secrets/redis.conf and redis_url, not committed)"
    local pw
    pw=$(head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n')
    # masterauth: a master demoted after a failover follows the new one with it.
    (umask 077 && printf 'requirepass %s\nmasterauth %s\n' "$pw" "$pw" > "$here/secrets/redis.conf" \
      && printf 'redis+sentinel://:%s@redis-sentinel:26379/gw\n' "$pw" > "$here/secrets/redis_url")
  fi
  if [ ! -s "$here/secrets/postgres_password" ]; then
    log "generating Postgres's password (deploy/secrets/postgres_password and *_db_url, not committed)"
    local pw db
    pw=$(head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n')
    (umask 077 && printf '%s\n' "$pw" > "$here/secrets/postgres_password")
    for db in products users orders inventory; do
      (umask 077 && printf 'postgres://postgres:%s@postgres:5432/%s\n' "$pw" "$db" > "$here/secrets/${db}_db_url")
    done
  fi
  if [ ! -s "$here/secrets/admin_password" ]; then
    log "generating the admin's password (deploy/secrets/admin_password, not committed)"
    (umask 077 && head -c 18 /dev/urandom | od -An -tx1 | tr -d ' \n' > "$here/secrets/admin_password")
  fi
  if [ ! -s "$here/secrets/tls_cert.pem" ]; then
    log "generating a CA and the gateway's certificate for localhost (deploy/secrets/tls_*.pem, not committed)"
    local csr
    csr=$(mktemp)
    # The CA key signs this one certificate and is removed: nothing left on
    # disk can issue another that clients of this CA would trust.
    (umask 077 && openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 365 \
      -keyout "$here/secrets/tls_ca_key.pem" -out "$here/secrets/tls_ca.pem" -subj "/CN=tower-gateway swarm CA" \
      -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null \
      && openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout "$here/secrets/tls_key.pem" \
        -out "$csr" -subj "/CN=localhost" 2>/dev/null \
      && openssl x509 -req -in "$csr" -CA "$here/secrets/tls_ca.pem" -CAkey "$here/secrets/tls_ca_key.pem" \
        -CAcreateserial -days 90 -out "$here/secrets/tls_cert.pem" 2>/dev/null -extfile <(printf '%s\n' \
        "subjectAltName=DNS:localhost,IP:127.0.0.1" "basicConstraints=critical,CA:FALSE" \
        "keyUsage=critical,digitalSignature" "extendedKeyUsage=serverAuth"))
    rm -f "$csr" "$here/secrets/tls_ca_key.pem" "$here/secrets/tls_ca.srl"
  fi
  log "writing the gateway's configuration to its volume ($config_volume)"
  put_config "$here/gateway.toml"
  log "deploying the stack $stack"
  (cd "$here" && docker stack deploy --resolve-image never -c stack.yml "$stack" >/dev/null)
  log "waiting for every service to run and the gateway to be ready"
  wait_for 180 "the gateway is ready (/readyz on its admin listener)" admin /readyz
  for svc in product-service user-service checkout-service inventory-service; do
    wait_for 60 "$svc has its replicas in the gateway" ready_endpoints "$svc"
  done
  wait_for 90 "every task is healthy" all_healthy
  docker stack services "$stack"
}

all_healthy() { # every task the stack wants runs and passes its health check
  local want=0 n svc running healthy
  # "running/desired", whether replicated or global.
  for n in $(docker stack services --format '{{.Replicas}}' "$stack" | awk '{split($1, r, "/"); print r[2] + 0}'); do
    want=$((want + n))
  done
  running=$(docker ps -q -f "label=com.docker.stack.namespace=$stack" | wc -l)
  healthy=$(docker ps -q -f "label=com.docker.stack.namespace=$stack" -f health=healthy | wc -l)
  [ "$want" -gt 0 ] && [ "$running" = "$want" ] && [ "$healthy" = "$want" ]
}

ready_endpoints() { # SERVICE: the gateway knows as many endpoints as the service has replicas
  local svc=$1 upstream want have
  case $svc in
    product-service) upstream=products ;;
    user-service) upstream=users ;;
    checkout-service) upstream=checkout ;;
    inventory-service) upstream=inventory ;;
  esac
  want=$(docker service inspect --format '{{.Spec.Mode.Replicated.Replicas}}' "${stack}_$svc")
  have=$(metric "gateway_endpoints{upstream=\"$upstream\"}")
  [ "$have" = "$want" ]
}

redis_password() { # the stack's Redis password, from the secret made by up
  awk '$1 == "requirepass" {print $2}' "$here/secrets/redis.conf"
}

redis_keys() { # PATTERN -> how many keys match in the stack's Redis (as the replica that is never killed holds them)
  local pw
  pw=$(redis_password)
  docker exec -e REDISCLI_AUTH="$pw" "$(docker ps -q -f "name=${stack}_redis-replica.1" | head -1)" /bin/redis-cli --scan --pattern "$1" | wc -l
}

user_id() { # EMAIL [PASSWORD] -> prints the user's id, from a login
  json_post "$base/api/users/login" "{\"email\":\"$1\",\"password\":\"${2:-correct horse}\"}" | cut -d' ' -f2- | jq -r .user.id
}

login() { # EMAIL [PASSWORD] -> prints a token
  json_post "$base/api/users/login" "{\"email\":\"$1\",\"password\":\"${2:-correct horse}\"}" | cut -d' ' -f2- | jq -r .token
}

kid_of() { # TOKEN -> the kid of its header
  local header=${1%%.*}
  header=$(printf '%s' "$header" | tr '_-' '/+')
  while [ $((${#header} % 4)) -ne 0 ]; do header="$header="; done
  printf '%s' "$header" | base64 -d 2>/dev/null | jq -r .kid
}

status_of() { # METHOD PATH BODY [TOKEN] -> prints the status code
  local args=()
  [ -n "${4:-}" ] && args+=(-H "authorization: Bearer $4")
  [ -n "$3" ] && args+=(-d "$3")
  hcurl -s -m 10 -o /dev/null -w '%{http_code}' -X "$1" "$base$2" -H 'content-type: application/json' "${args[@]}"
}

policy() { # USER_TOKEN ADMIN_TOKEN USER_ID VICTIM_ID: the report's requests, by who asks,
  # on a product and a user the check created (the admin's requests change and remove only those)
  local user=$1 admin=$2 me=$3 victim=$4 method path body want got product pid
  product=$(json_post "$base/api/products" '{"name":"Check pen","price":1.5}' "authorization: Bearer $admin")
  [ "${product%% *}" = 201 ] || fail "POST /api/products with the admin's token: $product"
  pid=$(echo "${product#* }" | jq -r .id)
  local requests="PUT|/api/products/$pid|{\"name\":\"Check pen\",\"price\":2.5}|200
POST|/api/products|{\"name\":\"Pen\",\"price\":1.5}|
GET|/api/users?limit=500||200
PUT|/api/users/$victim|{\"name\":\"Victim\",\"email\":\"v2-$me@example.com\"}|200
DELETE|/api/users/$victim||204
DELETE|/api/products/$pid||204"
  while IFS='|' read -r method path body want; do
    got=$(status_of "$method" "$path" "$body")
    [ "$got" = 401 ] || fail "$method $path without a token: $got"
    got=$(status_of "$method" "$path" "$body" "$user")
    [ "$got" = 403 ] || fail "$method $path with a user's token: $got"
    # The admin's POST was the one that made the product above.
    [ -n "$want" ] || { echo "   $method $path: none 401, user 403, admin 201"; continue; }
    got=$(status_of "$method" "$path" "$body" "$admin")
    [ "$got" = "$want" ] || fail "$method $path with the admin's token: $got"
    echo "   $method $path: none 401, user 403, admin $want"
  done <<< "$requests"
  [ "$(status_of GET "/api/users/$me" "" "$user")" = 200 ] || fail "a user cannot read their own record"
  [ "$(status_of GET /api/users/1 "" "$user")" = 403 ] || fail "a user reads another's record"
  echo "   a user's own record 200, another's 403"
}

check() {
  local out status email token
  log "1. signup, login, checkout through the gateway"
  email="check-$(date +%s%N)@example.com"
  out=$(json_post "$base/api/users/signup" "{\"name\":\"Check\",\"email\":\"$email\",\"password\":\"correct horse\"}")
  # Sign-up answers 202 whether or not the email had an account: the login says who.
  [ "${out%% *}" = 202 ] || fail "signup: $out"
  local made_users=("$(user_id "$email")|$email")
  token=$(login "$email")
  [ -n "$token" ] && [ "$token" != null ] || fail "login gave no token"
  out=$(json_post "$base/api/checkout" '{"product_id":1,"quantity":2}' "authorization: Bearer $token" "idempotency-key: smoke-$email")
  [ "${out%% *}" = 201 ] || fail "checkout: $out"
  echo "   order: ${out#* }"
  out=$(json_post "$base/api/checkout" '{"product_id":1,"quantity":1}')
  [ "${out%% *}" = 401 ] || fail "checkout without a token: $out"

  log "1b. the access policy: no token 401, a user's token 403, the admin's works"
  local admin me secrets ptoken victim
  admin=$(login admin@example.com "$(cat "$here/secrets/admin_password")")
  [ -n "$admin" ] && [ "$admin" != null ] || fail "the admin cannot log in"
  out=$(json_post "$base/api/users/signup" "{\"name\":\"P\",\"email\":\"p-$email\",\"password\":\"correct horse\"}")
  [ "${out%% *}" = 202 ] || fail "signup: $out"
  me=$(user_id "p-$email")
  made_users+=("$me|p-$email")
  # Made by the admin (not a sign-up: the check spends as few of the address's sign-ups as it can).
  victim=$(json_post "$base/api/users" "{\"name\":\"V\",\"email\":\"v-$email\"}" "authorization: Bearer $admin" | cut -d' ' -f2- | jq -r .id)
  [ -n "$victim" ] && [ "$victim" != null ] || fail "the admin could not create a user"
  ptoken=$(login "p-$email")
  policy "$ptoken" "$admin" "$me" "$victim"
  secrets=$(docker service inspect --format '{{range .Spec.TaskTemplate.ContainerSpec.Secrets}}{{.SecretName}} {{end}}' "${stack}_gateway")
  case "$secrets" in *jwt_*|*key_encryption*) fail "the gateway's container holds a token key: $secrets" ;; esac
  echo "   the gateway's secrets: $secrets(no token key: it fetches the public ones)"
  for path in /metrics /readyz; do
    [ "$(hcurl -s -m 5 -o /dev/null -w '%{http_code}' "$base$path")" = 404 ] || fail "$path is served on the published port"
  done
  echo "   /metrics and /readyz: 404 on the published port, served on the admin listener"

  log "1c. HTTPS first: plain HTTP redirects, HTTPS says so (HSTS); HTTP/2 signup, login, checkout; the WebSocket price feed (wss://)"
  local version headers=/tmp/tg-headers
  code=$(curl -s -m 5 -D "$headers" -o /dev/null -w '%{http_code}' "$plain_base/api/products/1?x=1")
  [ "$code" = 308 ] || fail "plain HTTP answered $code, not a redirect"
  grep -qi "^location: https://127.0.0.1:8443/api/products/1?x=1" "$headers" || fail "the redirect: $(cat "$headers")"
  [ "$(curl -s -m 5 -o /dev/null -w '%{http_code}' -X POST "$plain_base/api/users/login")" = 308 ] \
    || fail "a plain POST reached the API"
  hcurl -s -m 5 -D "$headers" -o /dev/null "$base/api/products/1"
  grep -qi '^strict-transport-security: max-age=31536000' "$headers" || fail "no HSTS over HTTPS: $(cat "$headers")"
  echo "   http://…:8080 → 308 https://…:8443 (path and query kept); HTTPS: $(grep -i '^strict-transport-security' "$headers" | tr -d '\r')"
  tls_post() { # PATH BODY [HEADER...] -> prints "STATUS HTTP_VERSION BODY"
    local path=$1 body=$2
    shift 2
    local args=()
    for h in "$@"; do args+=(-H "$h"); done
    hcurl -sS -m 10 --http2 -o /tmp/tg-body -w '%{http_code} %{http_version}' -X POST "$base$path" \
      -H 'content-type: application/json' "${args[@]}" -d "$body"
    printf ' %s\n' "$(cat /tmp/tg-body)"
  }
  out=$(tls_post /api/users/signup "{\"name\":\"Tls\",\"email\":\"tls-$email\",\"password\":\"correct horse\"}")
  [ "${out%% *}" = 202 ] || fail "signup over HTTPS: $out"
  version=$(echo "$out" | cut -d' ' -f2)
  [ "$version" = 2 ] || fail "HTTPS spoke HTTP/$version, not HTTP/2"
  out=$(tls_post /api/users/login "{\"email\":\"tls-$email\",\"password\":\"correct horse\"}")
  token=$(echo "$out" | cut -d' ' -f3- | jq -r .token)
  [ -n "$token" ] && [ "$token" != null ] || fail "login over HTTPS gave no token: $out"
  made_users+=("$(echo "$out" | cut -d' ' -f3- | jq -r .user.id)|tls-$email")
  out=$(tls_post /api/checkout '{"product_id":1,"quantity":1}' "authorization: Bearer $token" "idempotency-key: tls-$email")
  [ "${out%% *}" = 201 ] || fail "checkout over HTTPS: $out"
  echo "   HTTP/$version: signup 202, login, checkout 201"
  local code
  code=$(hcurl -s -m 5 -o /dev/null -w '%{http_code}' "$base/healthz")
  [ "$code" = 200 ] || fail "GET /healthz over HTTPS: $code"
  local probe="${CARGO_TARGET_DIR:-$root/target}/release/ws-probe"
  [ -x "$probe" ] || (cd "$root" && cargo build --release --locked -p demo-services --bin ws-probe)
  out=$("$probe" --cacert "$cacert" "${base/https:/wss:}/api/products/feed") || fail "the WebSocket price feed over wss://: $out"
  echo "   wss://…/api/products/feed: $out"
  [ "$(metric 'gateway_websocket_upgrades_total{outcome="opened"}')" -ge 1 ] || fail "no WebSocket counted by the gateway"

  log "2. round robin across the product replicas"
  for _ in $(seq 1 20); do hcurl -fsS -m 5 -o /dev/null "$base/api/products/1" || fail "GET /api/products/1"; done
  local used
  used=$(admin /metrics | grep -c '^gateway_upstream_requests_total{upstream="products",endpoint=')
  [ "$used" -ge 2 ] || fail "only $used product endpoint(s) served requests"
  echo "   $used product endpoints served requests"

  log "3. a product replica killed with docker kill under load: no failed request"
  local results=/tmp/tg-load
  : > "$results"
  (
    for i in $(seq 1 800); do
      # Below the shipped per-address limit (100 a second after a burst of 200):
      # every client here is one address, and a fast machine's curl loop runs at
      # ~200 a second, which the limit answers 429. A request each 10 ms or more.
      sleep 0.01
      # Every 16th request an order, by two users in turn: within the shipped
      # per-user checkout limit (a burst of 30, then 2 a second).
      if [ $((i % 16)) = 0 ]; then
        buyer=$token
        [ $((i % 32)) = 0 ] && buyer=$ptoken
        code=$(hcurl -s -m 10 -o /dev/null -w '%{http_code}' -X POST "$base/api/checkout" -H 'content-type: application/json' \
          -H "authorization: Bearer $buyer" -H "idempotency-key: load-$email-$i" -d '{"product_id":2,"quantity":1}')
      else
        code=$(hcurl -s -m 10 -o /dev/null -w '%{http_code}' "$base/api/products/$((1 + i % 4))")
      fi
      echo "$code" >> "$results"
    done
  ) &
  local loader=$!
  loaded() { [ "$(wc -l < "$results")" -ge 100 ]; }
  wait_for 60 "the load started" loaded
  local victim
  victim=$(docker ps -q -f "name=${stack}_product-service" | head -1)
  [ -n "$victim" ] || fail "no product-service container to kill"
  docker kill "$victim" >/dev/null
  echo "   killed $victim after $(wc -l < "$results") requests"
  wait "$loader"
  local total bad
  total=$(wc -l < "$results")
  bad=$(grep -cvE '^(200|201)$' "$results" || true)
  echo "   $total requests, $bad failed"
  [ "$bad" = 0 ] || fail "$bad of $total requests failed: $(sort "$results" | uniq -c | tr '\n' ' ')"

  log "4. scaling product-service to 3 reaches the gateway without a restart"
  docker service scale "${stack}_product-service=3" >/dev/null 2>&1
  wait_for 90 "the gateway sees 3 product endpoints" ready_endpoints product-service
  echo "   gateway_endpoints{upstream=\"products\"} = $(metric 'gateway_endpoints{upstream="products"}')"

  log "5. the Redis master killed under load: Sentinel promotes the replica, the gateway serves on, revocations intact"
  local gone code sentinel redis pw
  pw=$(redis_password)
  gone=$(login "$email")
  [ "$(status_of POST /api/users/logout "" "$gone")" = 204 ] || fail "logout"
  revoked() { [ "$(status_of GET /api/checkout "" "$gone")" = 401 ]; }
  wait_for 5 "the logged-out token is refused" revoked
  sentinel=$(docker ps -q -f "name=${stack}_redis-sentinel" | head -1)
  [ -n "$sentinel" ] || fail "no Sentinel container"
  master_is() { [ "$(docker exec "$sentinel" /bin/redis-cli -p 26379 SENTINEL get-master-addr-by-name gw | head -1)" = "$1" ]; }
  wait_for 60 "the Sentinels name redis as the master" master_is redis
  # Load for 25 s: a token-checked read (the gateway and user-service ask Redis
  # whether the token is revoked) and a public read, each line "TIME CODE CODE".
  : > "$results"
  (
    local end=$((SECONDS + 25))
    while [ "$SECONDS" -lt "$end" ]; do
      printf '%s %s %s\n' "$(date +%s.%N)" \
        "$(hcurl -s -m 5 -o /dev/null -w '%{http_code}' "$base/api/users/$me" -H "authorization: Bearer $ptoken")" \
        "$(hcurl -s -m 5 -o /dev/null -w '%{http_code}' "$base/api/products/1")" >> "$results"
      sleep 0.02
    done
  ) &
  loader=$!
  loaded_some() { [ "$(wc -l < "$results")" -ge 20 ]; }
  wait_for 30 "the load started" loaded_some
  redis=$(docker ps -q -f "name=${stack}_redis.1" | head -1)
  [ -n "$redis" ] || fail "no Redis master container"
  local killed_at
  killed_at=$(date +%s.%N)
  docker kill "$redis" >/dev/null
  wait_for 60 "the Sentinels promote redis-replica" master_is redis-replica
  wait "$loader"
  # Public reads never need Redis: every one answered. A token check needs the
  # master: refused (503, fail closed) from the kill until the replica is
  # promoted and the gateway has asked the Sentinels again, then answered.
  awk -v k="$killed_at" '
    { n++ }
    $3 != 200 { public_bad++ }
    $2 != 200 { bad++; if ($1 > k) { last_bad = $1 } }
    END {
      printf "   %d rounds over 25 s: public reads %d failed; token-checked reads %d not 200", n, public_bad, bad
      if (last_bad) printf ", the last %.2f s after the kill", last_bad - k
      printf "\n"
      if (public_bad > 0) exit 1
    }' "$results" || fail "public reads failed while the Redis master was down: $(awk '{print $3}' "$results" | sort | uniq -c | tr '\n' ' ')"
  echo "   token-checked reads by status: $(awk '{print $2}' "$results" | sort | uniq -c | awk '{printf "%s x %s  ", $1, $2}')"
  # The load ended with the new master serving.
  [ "$(tail -1 "$results" | awk '{print $2}')" = 200 ] || fail "token-checked reads did not recover: $(tail -3 "$results")"
  code=$(status_of GET /api/checkout "" "$gone")
  [ "$code" = 401 ] || fail "the logged-out token after the failover: $code"
  [ "$(status_of GET /api/checkout "" "$ptoken")" = 200 ] || fail "a live token after the failover"
  echo "   Sentinel: master redis-replica; the logged-out token still 401, a live token 200"
  rejoined() {
    local c
    c=$(docker ps -q -f "name=${stack}_redis.1" | head -1)
    [ -n "$c" ] && [ "$c" != "$redis" ] \
      && docker exec -e REDISCLI_AUTH="$pw" "$c" /bin/redis-cli ROLE | head -1 | grep -qx slave
  }
  wait_for 90 "Swarm restarts redis and it follows the new master as its replica" rejoined
  echo "   redis restarted by Swarm: now a replica of redis-replica"

  log "6. rate limits in Redis: one user over the checkout limit gets 429, another is served"
  # After a failure a limit leaves Redis alone for a second, deciding locally.
  decided_in_redis() {
    hcurl -s -m 5 -o /dev/null "$base/api/checkout" -H "authorization: Bearer $ptoken"
    [ "$(redis_keys 'tower-gateway:rl:checkout-user:*')" -ge 1 ]
  }
  wait_for 20 "the checkout limit is decided in Redis again" decided_in_redis
  local code first_429=
  for i in $(seq 1 40); do
    code=$(hcurl -s -m 5 -D "$headers" -o /tmp/tg-body -w '%{http_code}' "$base/api/checkout" -H "authorization: Bearer $token")
    if [ "$code" = 429 ]; then first_429=$i; break; fi
    [ "$code" = 200 ] || fail "GET /api/checkout before the limit: $code"
  done
  [ -n "$first_429" ] || fail "40 requests by one user were never limited"
  grep -qi '^retry-after: [1-9]' "$headers" || fail "429 without Retry-After: $(cat "$headers")"
  [ "$(jq -r .error.code /tmp/tg-body)" = rate_limited ] || fail "429 body: $(cat /tmp/tg-body)"
  echo "   user 1: 429 at request $first_429, $(grep -i '^retry-after' "$headers" | tr -d '\r'), $(grep -i '^ratelimit:' "$headers" | tr -d '\r' | tr '\n' ' ')"
  code=$(hcurl -s -m 5 -o /dev/null -w '%{http_code}' "$base/api/checkout" -H "authorization: Bearer $ptoken")
  [ "$code" = 200 ] || fail "another user while the first is limited: $code"
  echo "   user 2 meanwhile: $code"
  local keys
  keys=$(redis_keys 'tower-gateway:rl:checkout-user:*')
  [ "$keys" -ge 1 ] || fail "the checkout limit is not kept in Redis"
  echo "   $keys checkout-user keys in Redis; gateway_rate_limit_decisions_total{limit=\"checkout-user\",outcome=\"limited\"} = $(metric 'gateway_rate_limit_decisions_total{limit="checkout-user",outcome="limited"}')"

  log "6b. a route added and removed by reloads, under load: no restart, no failed request"
  local gateway_task extra_config
  gateway_task=$(docker ps -q -f "name=${stack}_gateway")
  extra_config=$(mktemp)
  # The shipped configuration and one more public route: /api/catalog, the product list.
  { cat "$here/gateway.toml"; printf '\n[[routes]]\nprefix = "/api/catalog"\nmethods = ["GET", "HEAD"]\nupstream = "products"\nstrip_prefix = "/api/catalog"\naccess = "public"\n'; } > "$extra_config"
  [ "$(status_of GET /api/catalog "")" = 404 ] || fail "/api/catalog answers before it is routed"
  : > "$results"
  (
    for i in $(seq 1 400); do
      sleep 0.01
      hcurl -s -m 10 -o /dev/null -w '%{http_code}\n' "$base/api/products/$((1 + i % 4))" >> "$results"
    done
  ) &
  loader=$!
  wait_for 60 "the load started" loaded
  reload "$extra_config"
  [ "$(status_of GET /api/catalog "")" = 200 ] || fail "/api/catalog is not served after the reload"
  echo "   GET /api/catalog: 200 once applied"
  reload "$here/gateway.toml"
  [ "$(status_of GET /api/catalog "")" = 404 ] || fail "/api/catalog is still served after the reload removed it"
  echo "   GET /api/catalog: 404 once removed again"
  wait "$loader"
  rm -f "$extra_config"
  total=$(wc -l < "$results")
  bad=$(grep -cvE '^200$' "$results" || true)
  echo "   $total requests during the two reloads, $bad failed"
  [ "$bad" = 0 ] || fail "$bad of $total requests failed: $(sort "$results" | uniq -c | tr '\n' ' ')"
  [ "$(docker ps -q -f "name=${stack}_gateway")" = "$gateway_task" ] || fail "the gateway's task changed"
  echo "   the gateway task is the one before: $gateway_task"

  log "6c. keys by discovery: a token's kid is published; a rotation refuses no valid token"
  local discovery jwks kid_before rotated kid_after after
  discovery=$(hcurl -s -m 5 "$base/api/users/.well-known/openid-configuration")
  [ "$(jq -r .issuer <<< "$discovery")" = user-service ] || fail "discovery: $discovery"
  jwks=$(hcurl -s -m 5 "$base/api/users/.well-known/jwks.json")
  kid_before=$(kid_of "$admin")
  jq -e --arg kid "$kid_before" '.keys | map(.kid) | index($kid) != null' <<< "$jwks" >/dev/null \
    || fail "the admin token's kid $kid_before is not published: $jwks"
  echo "   discovery names user-service; the JWKS publishes $(jq '.keys | length' <<< "$jwks") keys, the token's $kid_before among them"
  rotated=$(json_post "$base/api/users/keys/rotate" '{}' "authorization: Bearer $admin")
  [ "${rotated%% *}" = 200 ] || fail "POST /api/users/keys/rotate: $rotated"
  after=$(login admin@example.com "$(cat "$here/secrets/admin_password")")
  [ -n "$after" ] && [ "$after" != null ] || fail "no login after the rotation"
  kid_after=$(kid_of "$after")
  [ "$kid_after" = "$(jq -r .current <<< "${rotated#* }")" ] && [ "$kid_after" != "$kid_before" ] \
    || fail "a login after the rotation signed with $kid_after (rotation: ${rotated#* })"
  local pair which bearer
  for pair in "new:$after" "earlier:$admin"; do
    which=${pair%%:*} bearer=${pair#*:}
    [ "$(status_of GET /api/users "" "$bearer")" = 200 ] || fail "the $which token is refused at the gateway"
    out=$(json_post "$base/api/checkout" '{"product_id":2,"quantity":1}' "authorization: Bearer $bearer" "idempotency-key: rotation-$which-$email")
    [ "${out%% *}" = 201 ] || fail "checkout with the $which token: $out"
  done
  echo "   rotated $kid_before -> $kid_after; the new login's token and the one from before: 200 at the gateway, 201 at checkout"

  log "6d. gRPC: inventory-service's health through the gateway, h2c on 8080 and h2 on 8443; an unrouted service UNIMPLEMENTED; a checkout past the stock 409"
  local grpc_health="${CARGO_TARGET_DIR:-$root/target}/release/grpc-health"
  [ -x "$grpc_health" ] || (cd "$root" && cargo build --release --locked -p demo-services --bin grpc-health)
  out=$("$grpc_health" "$plain_base" inventory.v1.Inventory) || fail "gRPC health over h2c on 8080: $out"
  echo "   h2c  $plain_base: $out"
  out=$("$grpc_health" --ca "$cacert" "https://127.0.0.1:8443" inventory.v1.Inventory) || fail "gRPC health over TLS on 8443: $out"
  echo "   h2   https://127.0.0.1:8443: $out"
  out=$("$grpc_health" --ca "$cacert" --unrouted "https://127.0.0.1:8443") || fail "an unrouted gRPC service: $out"
  echo "   an unrouted service: $out"
  out=$(json_post "$base/api/checkout" '{"product_id":3,"quantity":1000}' "authorization: Bearer $admin" "idempotency-key: stock-$email")
  [ "${out%% *}" = 409 ] && [ "$(echo "${out#* }" | jq -r .error.code)" = out_of_stock ] || fail "a checkout past the stock: $out"
  echo "   1000 of product 3: ${out#* }"

  log "7. the check removes the users it created (each deletes itself; their orders stay on record)"
  local made id who own
  for made in "${made_users[@]}"; do
    id=${made%%|*} who=${made#*|}
    own=$(login "$who")
    [ -n "$own" ] && [ "$own" != null ] || fail "$who cannot log in to delete itself"
    [ "$(status_of DELETE "/api/users/$id" "" "$own")" = 204 ] || fail "$who could not delete itself"
  done
  echo "   ${#made_users[@]} users deleted; the product it made was deleted in 1b"
  log "all checks passed"
}

rolling() { # a gateway rolling update under load, every failure counted by kind
  local workers=${WORKERS:-8} seconds=${SECONDS_OF_LOAD:-40} out=/tmp/tg-rolling
  rm -rf "$out" && mkdir -p "$out"
  log "rolling update of the gateway under load: $workers clients for ${seconds}s, keep-alive batches of 50"
  local args=()
  for _ in $(seq 1 50); do args+=(-o /dev/null "$base/api/products/1"); done
  args+=(--cacert "$cacert")
  local until=$((SECONDS + seconds))
  for w in $(seq 1 "$workers"); do
    (
      # One curl per batch: its connection is kept alive across the batch, as a
      # real client's would be; each transfer prints when, its status and curl's exit code.
      while [ "$SECONDS" -lt "$until" ]; do
        curl -s -m 5 -w "%{http_code} %{exitcode} $(date +%s.%N)\n" "${args[@]}" 2>/dev/null || true
      done > "$out/$w"
    ) &
  done
  sleep 5
  local started=$SECONDS
  docker service update --force --detach=false "${stack}_gateway" >/dev/null 2>&1
  echo "   docker service update --force took $((SECONDS - started)) s"
  wait
  cat "$out"/* | awk '
    $1 ~ /^[23]/ {ok++; next}
    $1 == 429 {limited++; next}
    {failed++; t = $3 + 0; if (!first || t < first) first = t; if (t > last) last = t}
    $2 == 7 {refused++; next}
    $2 == 52 {closed++; next}
    $2 == 56 {reset++; next}
    $2 == 28 {timeout++; next}
    {other[$1 " " $2]++}
    END {
      printf "   %d requests: %d ok, %d answered 429 (every client here is one address), %d failed", ok+limited+failed, ok, limited, failed
      printf " (%d refused: nothing listening, %d reset, %d closed without a response, %d timed out", refused, reset, closed, timeout
      for (k in other) printf ", %s: %d", k, other[k]
      printf ")"
      if (failed) printf " within %.2f s", last - first
      printf "\n"
    }'
}

down() {
  log "removing the stack $stack"
  docker stack rm "$stack" >/dev/null 2>&1 || true
  wait_for 60 "the stack's containers are gone" sh -c "[ -z \"\$(docker ps -aq -f label=com.docker.stack.namespace=$stack)\" ]"
  wait_for 60 "the stack's network is gone" sh -c "! docker network inspect ${stack}_backend"
  if [ "${1:-}" = --volumes ]; then
    docker volume rm "${stack}_postgres-data" "${stack}_redis-data" "${stack}_redis-replica-data" \
      "$config_volume" >/dev/null 2>&1 || true
  fi
  if [ -f "$marker" ]; then
    log "leaving the swarm this script created"
    docker swarm leave --force >/dev/null
    rm -f "$marker"
  fi
}

case "${1:-}" in
  up) up ;;
  check) check ;;
  rolling) rolling ;;
  reload) [ -n "${2:-}" ] || { echo "usage: $0 reload FILE" >&2; exit 2; }; reload "$2" ;;
  down) shift; down "$@" ;;
  *) echo "usage: $0 up|check|reload FILE|rolling|down [--volumes]" >&2; exit 2 ;;
esac
