#!/usr/bin/env bash
# The load benchmark: demo-gateway side by side with nginx, on this machine, in one run.
#
#   bench/proxies.sh            the whole run (~30 min): writes bench/results/latest.{md,json}
#   QUICK=1 bench/proxies.sh    fewer and shorter rounds, a 30 s soak (~10 min), for trying it
#
# Needs nginx and wrk (Debian: apt-get install nginx-light wrk), openssl, and for the Redis rows
# redis-server, for the HAProxy row haproxy, for the counts linux-perf; it installs nothing. Every
# process under test is started from this shell (the same session: this kernel's scheduler
# autogroups give each session its own share of the CPU), listens on loopback, and is stopped at
# the end.
#
# Targets, each in front of the same two one-worker nginx `return 200` backends:
#   direct   one backend, no proxy
#   nginx    nginx-light, 2 workers, upstream keep-alive, round robin, prefix stripped, no access log
#   nginx2   an identical nginx: the calibration (nginx2 / nginx must read 1.00 ± 0.05)
#   gateway  demo-gateway with the shipped defaults (limits aside, see below), RUST_LOG=warn
#   bare     the floor of the gateway's design: a bare hyper 1 proxy (tests/src/bin/bareproxy.rs),
#            one current-thread runtime per core with SO_REUSEPORT and a pooled hyper-util client,
#            prefix strip and round robin, nothing else
#   haproxy  HAProxy (Debian's haproxy), 2 threads, http-reuse always (left out when not installed)
# Closed loop: wrk -t2 at -c50 and -c256, rounds in alternating order (ABBA), ratios taken within
# each round. Open loop: loadtool's fixed-rate client (latency from when each request was due) at
# 10% and 40% of nginx's -c50 throughput. Feature costs: gateway variants (and the bare proxy)
# against the plain one in the same rounds. Counts: syscalls and context switches per request
# (perf, if installed: Debian's linux-perf), allocations per request and each layer alone (the
# layers bench). Memory: RSS per idle connection at 10k connections, HTTP/1.1, h2c, TLS HTTP/1.1
# and TLS HTTP/2, opened in batches and all at once; RSS over a soak. The report opens with issue
# 25's targets, each with its figure from the same run.
#
# The gateway's configuration is the shipped one except: no rate limits (the shipped 100/s per
# address would answer most requests 429: every client here is one address), and for the idle
# connection count only, max_connections 15000 and a 60 s header timeout (so that 10k connections
# opened over a few seconds are still open when RSS is read) and a TLS listener.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
results=${RESULTS:-$root/bench/results}
quick=${QUICK:-}
if [ -n "$quick" ]; then rounds=2; secs=4; soak=30; open_secs=5; count_secs=2
else rounds=5; secs=8; soak=300; open_secs=10; count_secs=5; fi

missing=()
for tool in nginx wrk openssl; do command -v "$tool" >/dev/null || missing+=("$tool"); done
if [ "${#missing[@]}" -gt 0 ]; then
  echo "bench/proxies.sh needs: ${missing[*]} (Debian: apt-get install nginx-light wrk openssl)" >&2
  exit 2
fi
have_redis=$(command -v redis-server >/dev/null && echo yes || echo no)
have_haproxy=$(command -v haproxy >/dev/null && echo yes || echo no)
# Syscalls and context switches per request are counted with perf (Debian: linux-perf).
have_perf=$(perf stat -e raw_syscalls:sys_enter -- true >/dev/null 2>&1 && echo yes || echo no)

log() { printf '== %s\n' "$*" >&2; }

log "building the release binaries"
(cd "$root" && cargo build -q --release --locked -p demo-gateway -p tower-gateway-tests --bin demo-gateway --bin loadtool --bin bareproxy)
bin=${CARGO_TARGET_DIR:-$root/target}/release
work=$(mktemp -d)
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

# ---------------------------------------------------------------- the processes under test
nginx_conf() { # NAME WORKERS BODY: writes $work/NAME.conf
  cat > "$work/$1.conf" <<EOF
worker_processes $2;
worker_rlimit_nofile 40000;
error_log $work/$1.err warn;
pid $work/$1.pid;
events { worker_connections 16384; }
http {
  access_log off;
  keepalive_requests 1000000;
  keepalive_timeout 75s;
  client_body_temp_path $work/$1.tmp; proxy_temp_path $work/$1.tmp; fastcgi_temp_path $work/$1.tmp;
  uwsgi_temp_path $work/$1.tmp; scgi_temp_path $work/$1.tmp;
  default_type application/json;
$3
}
EOF
}
start_nginx() { # NAME: starts it in the foreground of a background job; its master's pid in $work/NAME.master
  nginx -c "$work/$1.conf" -p "$work" -g 'daemon off;' 2>>"$work/$1.err" &
  pids+=($!)
  echo $! > "$work/$1.master"
}

nginx_conf b1 1 '  server { listen 127.0.0.1:18081; location / { return 200 "{\"id\":1,\"name\":\"Laptop\"}"; } }'
nginx_conf b2 1 '  server { listen 127.0.0.1:18082; location / { return 200 "{\"id\":1,\"name\":\"Laptop\"}"; } }'
nginx_conf b503 1 '  split_clients "${request_id}" $fail { 50% 1; * ""; }
  server { listen 127.0.0.1:18083; location / { if ($fail) { return 503; } return 200 "{\"id\":1}"; } }'
proxy_block() { # PORT ACCESS_LOG
  cat <<EOF
  upstream backends { server 127.0.0.1:18081; server 127.0.0.1:18082; keepalive 128; }
  server {
    listen 127.0.0.1:$1;
    access_log $2;
    location /api/products/ {
      proxy_pass http://backends/;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
    }
  }
EOF
}
nginx_conf nginx 2 "$(proxy_block 18090 off)"
nginx_conf nginx2 2 "$(proxy_block 18091 off)"
nginx_conf nginxlog 2 "$(proxy_block 18092 "$work/nginx-access.log combined buffer=64k flush=1s")"
for n in b1 b2 b503 nginx nginx2 nginxlog; do mkdir -p "$work/$n.tmp"; start_nginx "$n"; done

# Keys: an HS256 secret, an Ed25519 pair, a certificate for the TLS row.
head -c 48 /dev/urandom | od -An -tx1 | tr -d ' \n' > "$work/hs256.key"
openssl genpkey -algorithm ED25519 -out "$work/ed.key" 2>/dev/null
openssl pkey -in "$work/ed.key" -pubout -out "$work/ed.pub" 2>/dev/null
# (Not a CA: loadtool's TLS client trusts it as the end entity it is.)
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 -subj /CN=localhost \
  -addext "subjectAltName=DNS:localhost,IP:127.0.0.1" -addext "basicConstraints=critical,CA:FALSE" \
  -keyout "$work/tls.key" -out "$work/tls.pem" 2>/dev/null

gateway_conf() { # NAME PORT EXTRA_TOP ROUTE_EXTRA ENDPOINTS [TAIL]; no limits unless EXTRA_TOP names some
  local limits="limits = {}"
  case $3 in *'[limits.'*) limits="" ;; esac
  cat > "$work/$1.toml" <<EOF
listen = "127.0.0.1:$2"
# wrk and the idle flood come from one address.
max_connections_per_client = 100000
$limits
$3

[upstreams.products]
endpoints = [$5]

[[routes]]
prefix = "/api/products"
upstream = "products"
$4
${6:-}
EOF
}
two='"http://127.0.0.1:18081", "http://127.0.0.1:18082"'
gateway_conf gateway 18100 "" 'access = "public"' "$two"
gateway_conf gatewaylog 18101 "" 'access = "public"' "$two"
gateway_conf hs256 18102 "" 'access = "token"' "$two" "[jwt]
algorithm = \"HS256\"
secret_file = \"$work/hs256.key\""
gateway_conf eddsa 18103 "" 'access = "token"' "$two" "[jwt]
algorithm = \"EdDSA\"
public_key_file = \"$work/ed.pub\""
# The same Ed25519 key, fetched from a JWKS that a one-worker nginx serves (no key file).
jwks=$(printf '{"keys":[{"kty":"OKP","crv":"Ed25519","alg":"EdDSA","use":"sig","kid":"bench","x":"%s"}]}' \
  "$(openssl pkey -pubin -in "$work/ed.pub" -outform DER | tail -c 32 | base64 | tr '+/' '-_' | tr -d '=\n')")
nginx_conf jwksfile 1 "server { listen 127.0.0.1:18110; location = /jwks.json { default_type application/json; return 200 '$jwks'; } }"
mkdir -p "$work/jwksfile.tmp"; start_nginx jwksfile
gateway_conf jwks 18108 "" 'access = "token"' "$two" "[jwt]
jwks_url = \"http://127.0.0.1:18110/jwks.json\""
# Traces exported over OTLP/HTTP to a one-worker nginx that takes every batch (the collector),
# every request sampled, or one in a hundred; the plain gateway is the row with tracing off.
nginx_conf otlp 1 "  client_max_body_size 64m;
  server { listen 127.0.0.1:18113; location = /v1/traces { default_type application/json; return 200 '{}'; } }"
mkdir -p "$work/otlp.tmp"; start_nginx otlp
gateway_conf traced 18112 "[telemetry]
otlp_endpoint = \"http://127.0.0.1:18113\"
sampler = \"parentbased_always_on\"" 'access = "public"' "$two"
# The collector down (nothing listens on 18115): every export fails, requests must not notice.
gateway_conf traceddown 18116 "[telemetry]
otlp_endpoint = \"http://127.0.0.1:18115\"
sampler = \"parentbased_always_on\"" 'access = "public"' "$two"
gateway_conf traced1pct 18114 "[telemetry]
otlp_endpoint = \"http://127.0.0.1:18113\"
sampler = \"parentbased_traceidratio\"
sampler_arg = 0.01" 'access = "public"' "$two"
# One endpoint answering 503 half the time: retried on the same endpoint (the only one is never
# ejected), so a request fails only when all three attempts draw a 503.
gateway_conf retries 18104 "" 'access = "public"' '"http://127.0.0.1:18083"' \
  "[upstreams.products.retry]
attempts = 3"
gateway_conf tls 18105 "" 'access = "public"' "$two" "[tls]
listen = \"127.0.0.1:18443\"
cert_file = \"$work/tls.pem\"
key_file = \"$work/tls.key\""
gateway_conf idle 18107 "max_connections = 15000
header_read_timeout_ms = 60000" 'access = "public"' "$two" "[tls]
listen = \"127.0.0.1:18444\"
cert_file = \"$work/tls.pem\"
key_file = \"$work/tls.key\""
if [ "$have_redis" = yes ]; then
  redis-server --port 18379 --bind 127.0.0.1 --save "" --appendonly no >/dev/null 2>&1 &
  pids+=($!)
  gateway_conf redis 18106 'redis_url = "redis://127.0.0.1:18379/0"' 'access = "token"' "$two" "[jwt]
algorithm = \"HS256\"
secret_file = \"$work/hs256.key\"

[revocation]
cache_bound_ms = 0"
  # A limit in Redis that every request passes: its cost is the decision's, not a refusal's.
  gateway_conf ratelimit 18111 'redis_url = "redis://127.0.0.1:18379/1"

[limits.bench]
rate = 1000000
per = "second"
burst = 1000000
key = "client_ip"' 'access = "public"
limits = ["bench"]' "$two"
fi

"$bin/bareproxy" 127.0.0.1:18109 /api/products http://127.0.0.1:18081 http://127.0.0.1:18082 2>"$work/bare.log" &
pids+=($!)
echo $! > "$work/bare.pid"
closed=(direct nginx nginx2 gateway bare)
if [ "$have_haproxy" = yes ]; then
  cat > "$work/haproxy.cfg" <<EOF
global
  nbthread 2
  maxconn 8000
defaults
  mode http
  timeout connect 1s
  timeout client 30s
  timeout server 30s
  option http-keep-alive
frontend api
  bind 127.0.0.1:18093
  default_backend products
backend products
  balance roundrobin
  http-reuse always
  http-request replace-path ^/api/products(/.*)?\$ \\1
  server b1 127.0.0.1:18081
  server b2 127.0.0.1:18082
EOF
  haproxy -f "$work/haproxy.cfg" -db 2>"$work/haproxy.err" &
  pids+=($!)
  echo $! > "$work/haproxy.pid"
  closed+=(haproxy)
fi

start_gateway() { # NAME RUST_LOG
  RUST_LOG=$2 "$bin/demo-gateway" --config "$work/$1.toml" 2>"$work/$1.log" &
  pids+=($!)
  echo $! > "$work/$1.pid"
}
start_gateway gateway warn
start_gateway gatewaylog info
start_gateway hs256 warn
start_gateway eddsa warn
start_gateway jwks warn
start_gateway retries warn
start_gateway tls warn
start_gateway traced warn
start_gateway traced1pct warn
start_gateway traceddown warn
[ "$have_redis" = yes ] && start_gateway redis warn
[ "$have_redis" = yes ] && start_gateway ratelimit warn

wait_http() { # URL [HEADER]
  local deadline=$((SECONDS + 30))
  until curl -fsk -o /dev/null ${2:+-H "$2"} "$1"; do
    [ "$SECONDS" -lt "$deadline" ] || { echo "no answer from $1" >&2; cat "$work"/*.log "$work"/*.err >&2 || true; exit 1; }
    sleep 0.2
  done
}
hs_token=$("$bin/loadtool" token HS256 "$work/hs256.key")
ed_token=$("$bin/loadtool" token EdDSA "$work/ed.key")
for url in 127.0.0.1:18081/ 127.0.0.1:18082/ 127.0.0.1:18090/api/products/1 127.0.0.1:18091/api/products/1 \
  127.0.0.1:18092/api/products/1 127.0.0.1:18100/api/products/1 127.0.0.1:18101/api/products/1 \
  127.0.0.1:18104/api/products/1 https://127.0.0.1:18443/api/products/1 127.0.0.1:18109/api/products/1 \
  127.0.0.1:18112/api/products/1 127.0.0.1:18114/api/products/1 127.0.0.1:18116/api/products/1; do
  case $url in https*) wait_http "$url" ;; *) wait_http "http://$url" ;; esac
done
wait_http http://127.0.0.1:18102/api/products/1 "authorization: Bearer $hs_token"
wait_http http://127.0.0.1:18103/api/products/1 "authorization: Bearer $ed_token"
wait_http http://127.0.0.1:18108/api/products/1 "authorization: Bearer $ed_token"
[ "$have_redis" = yes ] && wait_http http://127.0.0.1:18106/api/products/1 "authorization: Bearer $hs_token"
[ "$have_redis" = yes ] && wait_http http://127.0.0.1:18111/api/products/1

# ---------------------------------------------------------------- measuring
clk=$(getconf CLK_TCK)
cpu_ticks() { # PID... -> utime+stime of those processes (nginx: the master's workers too)
  local total=0 p
  for p in "$@"; do
    for q in "$p" $(pgrep -P "$p" || true); do
      [ -r "/proc/$q/stat" ] || continue
      total=$((total + $(awk '{print $14 + $15}' "/proc/$q/stat")))
    done
  done
  echo "$total"
}
rss_kb() { # PID -> RSS of it and its children, in KiB
  local total=0 q
  for q in "$1" $(pgrep -P "$1" || true); do
    [ -r "/proc/$q/status" ] && total=$((total + $(awk '/^VmRSS/ {print $2}' "/proc/$q/status")))
  done
  echo "$total"
}
pid_of() { # TARGET -> the pid whose CPU counts (none for direct: the backend is not a proxy)
  case $1 in
    direct) echo "" ;;
    nginx|nginx2|nginxlog) cat "$work/$1.master" ;;
    *) cat "$work/$1.pid" ;;
  esac
}
url_of() {
  case $1 in
    direct) echo http://127.0.0.1:18081/1 ;;
    nginx) echo http://127.0.0.1:18090/api/products/1 ;;
    nginx2) echo http://127.0.0.1:18091/api/products/1 ;;
    nginxlog) echo http://127.0.0.1:18092/api/products/1 ;;
    gateway) echo http://127.0.0.1:18100/api/products/1 ;;
    bare) echo http://127.0.0.1:18109/api/products/1 ;;
    haproxy) echo http://127.0.0.1:18093/api/products/1 ;;
    gatewaylog) echo http://127.0.0.1:18101/api/products/1 ;;
    hs256) echo http://127.0.0.1:18102/api/products/1 ;;
    jwks) echo http://127.0.0.1:18108/api/products/1 ;;
    eddsa) echo http://127.0.0.1:18103/api/products/1 ;;
    retries) echo http://127.0.0.1:18104/api/products/1 ;;
    tls) echo https://127.0.0.1:18443/api/products/1 ;;
    redis) echo http://127.0.0.1:18106/api/products/1 ;;
    ratelimit) echo http://127.0.0.1:18111/api/products/1 ;;
    traced) echo http://127.0.0.1:18112/api/products/1 ;;
    traced1pct) echo http://127.0.0.1:18114/api/products/1 ;;
    traceddown) echo http://127.0.0.1:18116/api/products/1 ;;
  esac
}
header_of() {
  case $1 in
    hs256|redis) echo "authorization: Bearer $hs_token" ;;
    eddsa|jwks) echo "authorization: Bearer $ed_token" ;;
    *) echo "" ;;
  esac
}

# run TARGET CONNECTIONS -> "rps cpu_us_per_request p50_ms errors" (one wrk run)
run() {
  local target=$1 conns=$2 pid before after out rps requests errors p50 header
  pid=$(pid_of "$target")
  header=$(header_of "$target")
  before=$([ -n "$pid" ] && cpu_ticks "$pid" || echo 0)
  out=$(wrk -t2 -c"$conns" -d"${secs}s" --latency ${header:+-H "$header"} "$(url_of "$target")" 2>&1)
  after=$([ -n "$pid" ] && cpu_ticks "$pid" || echo 0)
  rps=$(awk '/^Requests\/sec/ {print $2}' <<<"$out")
  requests=$(awk '/requests in/ {print $1}' <<<"$out")
  errors=$(awk '/Non-2xx/ {n += $NF} /Socket errors/ {gsub(",", ""); n += $4 + $6 + $8 + $10} END {print n + 0}' <<<"$out")
  p50=$(awk '$1 == "50%" {v = $2; if (v ~ /us$/) {sub("us", "", v); v /= 1000} else if (v ~ /ms$/) {sub("ms", "", v)} else if (v ~ /s$/) {sub("s", "", v); v *= 1000} print v}' <<<"$out")
  local cpu_us=0
  [ -n "$pid" ] && [ "${requests:-0}" -gt 0 ] && cpu_us=$(awk -v t=$((after - before)) -v c="$clk" -v n="$requests" 'BEGIN {printf "%.1f", t / c * 1e6 / n}')
  echo "${rps:-0} $cpu_us ${p50:-0} $errors"
}

median() { sort -g | awk '{v[NR] = $1} END {if (NR % 2) print v[(NR + 1) / 2]; else print (v[NR / 2] + v[NR / 2 + 1]) / 2}'; }
minmax() { sort -g | awk 'NR == 1 {lo = $1} {hi = $1} END {printf "%.2f–%.2f", lo, hi}'; }

# rounds NAME CONNECTIONS TARGET... : ABBA rounds; stores $work/NAME.TARGET lines "rps cpu p50 errors"
rounds() {
  local name=$1 conns=$2
  shift 2
  local targets=("$@") r t order
  for t in "${targets[@]}"; do run "$t" "$conns" >/dev/null; done # warm-up
  for r in $(seq 1 "$rounds"); do
    if [ $((r % 2)) = 1 ]; then order=("${targets[@]}"); else order=(); for t in "${targets[@]}"; do order=("$t" "${order[@]}"); done; fi
    for t in "${order[@]}"; do run "$t" "$conns" >> "$work/$name.$t"; done
    log "$name: round $r of $rounds"
  done
}
col() { awk -v c="$2" '{print $c}' "$work/$1"; }
# ratio NAME A B -> "median (min–max)" of per-round rps(A) / rps(B)
ratio() {
  local m mm
  m=$(paste <(col "$1.$2" 1) <(col "$1.$3" 1) | awk '{printf "%.4f\n", $1 / $2}' | median)
  mm=$(paste <(col "$1.$2" 1) <(col "$1.$3" 1) | awk '{printf "%.4f\n", $1 / $2}' | minmax)
  printf '%.2f (%s)' "$m" "$mm"
}
med() { col "$1" "$2" | median; }
# cpu_ratio NAME A B -> "median (min–max)" of per-round CPU µs per request of A / B
cpu_ratio() {
  local m mm
  m=$(paste <(col "$1.$2" 2) <(col "$1.$3" 2) | awk '$2 > 0 {printf "%.4f\n", $1 / $2}' | median)
  mm=$(paste <(col "$1.$2" 2) <(col "$1.$3" 2) | awk '$2 > 0 {printf "%.4f\n", $1 / $2}' | minmax)
  printf '%.2f (%s)' "$m" "$mm"
}
errs() { col "$1" 4 | awk '{n += $1} END {print n + 0}'; }

[ "$have_haproxy" = yes ] && wait_http http://127.0.0.1:18093/api/products/1
log "closed loop, -c50 and -c256: ${closed[*]} (nginx2: the calibration)"
rounds c50 50 "${closed[@]}"
rounds c256 256 "${closed[@]}"
log "both logging every request: nginx (buffered access_log), the gateway (its default access log)"
rounds logged 50 nginxlog gatewaylog
log "feature costs against the plain gateway"
features=(gateway bare gatewaylog traced traced1pct traceddown hs256 eddsa jwks retries tls)
[ "$have_redis" = yes ] && features+=(ratelimit redis)
# Fresh tokens: they live 15 minutes, and the rounds before took a while.
hs_token=$("$bin/loadtool" token HS256 "$work/hs256.key")
ed_token=$("$bin/loadtool" token EdDSA "$work/ed.key")
rounds features 50 "${features[@]}"

log "open loop at 10% and 40% of nginx's -c50 throughput"
nginx_max=$(med c50.nginx 1)
for share in 10 40; do
  rate=$(awk -v m="$nginx_max" -v s="$share" 'BEGIN {printf "%d", m * s / 100}')
  for t in direct nginx gateway gateway nginx direct; do
    "$bin/loadtool" openloop "$rate" "$open_secs" 64 "$(url_of "$t")" >> "$work/open$share.$t"
  done
done

log "syscalls and context switches per request, -c1 and -c50: ${closed[*]}"
# counted TARGET CONNECTIONS -> "syscalls/request switches/request": every thread of the proxy
# (nginx: its workers) counted by perf while wrk runs.
counted() {
  local target=$1 conns=$2 pids out requests
  pids=$(pid_of "$target")
  case $target in nginx|nginx2) pids=$(pgrep -d, -P "$pids") ;; esac
  perf stat -x, -e raw_syscalls:sys_enter,context-switches -p "$pids" -o "$work/perf.$target.$conns" &
  local perf_pid=$!
  sleep 0.5
  out=$(wrk -t"$([ "$conns" = 1 ] && echo 1 || echo 2)" -c"$conns" -d"${count_secs}s" "$(url_of "$target")" 2>&1)
  kill -INT "$perf_pid"; wait "$perf_pid" 2>/dev/null || true
  requests=$(awk '/requests in/ {print $1}' <<<"$out")
  awk -F, -v n="$requests" '$3 == "raw_syscalls:sys_enter" {s = $1} $3 == "context-switches" {c = $1}
    END {printf "%.2f %.2f\n", s / n, c / n}' "$work/perf.$target.$conns"
}
declare -A calls
if [ "$have_perf" = yes ]; then
  for t in "${closed[@]}"; do
    [ "$t" = direct ] || [ "$t" = nginx2 ] && continue
    calls[$t.1]=$(counted "$t" 1)
    calls[$t.50]=$(counted "$t" 50)
  done
fi

log "allocations per request and each layer alone: cargo bench --bench layers"
(cd "$root" && cargo bench -q --locked -p tower-gateway-tests --bench layers 2>/dev/null) > "$work/layers.out"
allocs_bare=$(awk '/the bare hyper proxy \(the floor\)/ {print $NF}' "$work/layers.out")
allocs_gateway=$(awk '/the whole gateway, a plain public route/ {print $(NF - 3)}' "$work/layers.out")

log "RSS per idle connection, 10k connections, each protocol, opened in batches and all at once"
# Each measurement on a gateway just started (what a flood leaves behind, memory freed but not
# handed back to the system included), RSS read 3 s after the last connection was answered.
idle_rss() { # PID URL N PROTOCOL ARRIVAL [CA] -> "KiB-per-connection reopened"
  local pid=$1 url=$2 n=$3 before after holder fifo ready
  before=$(rss_kb "$pid")
  fifo="$work/idle.fifo"; rm -f "$fifo"; mkfifo "$fifo"
  "$bin/loadtool" idle "$n" "$url" 60 "$4" "$5" ${6:+"$6"} > "$fifo" 2>>"$work/idle.err" &
  holder=$!
  read -r ready < "$fifo" || true
  sleep 3
  after=$(rss_kb "$pid")
  kill "$holder" 2>/dev/null; wait "$holder" 2>/dev/null || true
  [[ $ready == ready* ]] || { echo "loadtool idle $*: $(tail -1 "$work/idle.err")" >&2; echo "- -"; return; }
  awk -v a="$after" -v b="$before" -v n="$n" -v r="$(awk '{print $3}' <<<"$ready" | tr -d '(')" \
    'BEGIN {printf "%.2f %d\n", (a - b) / n, r}'
}
fresh_idle() { # starts the idle gateway anew (its pid in $work/idle.pid)
  [ -f "$work/idle.pid" ] && { kill "$(cat "$work/idle.pid")" 2>/dev/null; wait "$(cat "$work/idle.pid")" 2>/dev/null || true; }
  start_gateway idle warn
  wait_http http://127.0.0.1:18107/api/products/1
}
declare -A idle
protocols=("h1 http://127.0.0.1:18107" "h2c http://127.0.0.1:18107" "tls-h1 https://127.0.0.1:18444" "tls-h2 https://127.0.0.1:18444")
for arrival in batches flood; do
  idle[nginx.$arrival]=$(idle_rss "$(cat "$work/nginx.master")" http://127.0.0.1:18090/api/products/1 10000 h1 "$arrival")
  for p in "${protocols[@]}"; do
    read -r name base <<<"$p"
    version=${name#tls-}; version=${version%c}
    fresh_idle
    idle[$name.$arrival]=$(idle_rss "$(cat "$work/idle.pid")" "$base/api/products/1" 10000 "$version" "$arrival" \
      $([[ $name == tls* ]] && echo "$work/tls.pem"))
  done
done

log "RSS of the gateway over a ${soak} s run at -c50"
gw_pid=$(cat "$work/gateway.pid")
rss_start=$(rss_kb "$gw_pid")
wrk -t2 -c50 -d"${soak}s" http://127.0.0.1:18100/api/products/1 > "$work/soak.out" 2>&1 &
soaker=$!
: > "$work/soak.rss"
while kill -0 "$soaker" 2>/dev/null; do rss_kb "$gw_pid" >> "$work/soak.rss"; sleep 5; done
rss_end=$(rss_kb "$gw_pid")
soak_errors=$(awk '/Non-2xx/ {n += $NF} /Socket errors/ {gsub(",", ""); n += $4 + $6 + $8 + $10} END {print n + 0}' "$work/soak.out")
rss_first=$(sed -n 2p "$work/soak.rss"); rss_max=$(sort -n "$work/soak.rss" | tail -1)

# ---------------------------------------------------------------- the report
mkdir -p "$results"
cpu_model=$(awk -F': ' '/model name/ {print $2; exit}' /proc/cpuinfo)
machine="$(nproc) cores ($cpu_model), $(awk '/MemTotal/ {printf "%.0f GiB", $2 / 1048576}' /proc/meminfo), Linux $(uname -r); $(nginx -v 2>&1 | sed 's/nginx version: //'), wrk $(wrk -v 2>&1 | awk 'NR == 1 {print $2}'), $(rustc --version)"
total_errors=0
for f in "$work"/c50.* "$work"/c256.* "$work"/logged.* "$work"/features.*; do
  total_errors=$((total_errors + $(awk '{n += $4} END {print n + 0}' "$f")))
done
# The retries row counts the backend's 503s that a retry did not cure as errors: report it apart.
retry_503=$(errs features.retries)
total_errors=$((total_errors - retry_503))
open_row() { # SHARE TARGET -> "p50 p99 p99.9" medians in ms, errors
  local f="$work/open$1.$2"
  for k in p50_us p99_us p999_us; do
    grep -o "\"$k\":[0-9]*" "$f" | cut -d: -f2 | median | awk '{printf "%.2f ", $1 / 1000}'
  done
  grep -o '"errors":[0-9]*' "$f" | cut -d: -f2 | awk '{n += $1} END {print n + 0}'
}
# The issue's targets (#25), each with its figure from this run.
lead() { awk '{print $1}' <<<"$1"; }
verdict() { # VALUE OP LIMIT -> met / not met
  awk -v v="$1" -v op="$2" -v t="$3" 'BEGIN {
    if (v == "-" || v == "") print "not measured"
    else if ((op == "<=" && v + 0 <= t + 0) || (op == ">=" && v + 0 >= t + 0) || (op == ">" && v + 0 > t + 0)) print "met"
    else print "**not met**" }'
}
added() { # SHARE TARGET COLUMN(1 p50, 2 p99) -> ms added over direct
  awk -v a="$(open_row "$1" "$2" | awk -v c="$3" '{print $c}')" -v d="$(open_row "$1" direct | awk -v c="$3" '{print $c}')" \
    'BEGIN {printf "%.2f", a - d}'
}
worse() { awk -v a="$1" -v b="$2" 'BEGIN {if (a == "-" || b == "-") print "-"; else print (a + 0 > b + 0 ? a : b)}'; }
targets() {
  local r v
  echo "| target | figure in this run | |"
  echo "|---|---|---|"
  r=$(cpu_ratio c50 gateway bare)
  echo "| CPU per request ≤ 1.15× the bare hyper proxy (shipped stack, no access log; -c50 rounds) | $r | $(verdict "$(lead "$r")" "<=" 1.15) |"
  r=$(cpu_ratio features gatewaylog bare)
  echo "| … ≤ 1.3× with the access log on (feature rounds) | $r | $(verdict "$(lead "$r")" "<=" 1.3) |"
  r=$(cpu_ratio features hs256 gateway)
  echo "| JWT (HS256, cached) within 5% of the route without it, CPU per request | $r | $(verdict "$(lead "$r")" "<=" 1.05) |"
  if [ "$have_redis" = yes ]; then
    r=$(cpu_ratio features ratelimit gateway)
    echo "| a Redis-backed rate limit within 5%, CPU per request | $r | $(verdict "$(lead "$r")" "<=" 1.05) |"
  fi
  r=$(ratio c50 gateway nginx)
  echo "| throughput ≥ 0.85× nginx (-c50) | $r | $(verdict "$(lead "$r")" ">=" 0.85) |"
  if [ "$have_haproxy" = yes ]; then
    v=$(ratio c50 gateway haproxy)
    echo "| the moonshot: past nginx and HAProxy (-c50) | $r against nginx, $v against HAProxy | $(verdict "$(awk -v a="$(lead "$r")" -v b="$(lead "$v")" 'BEGIN {print (a < b ? a : b)}')" ">" 1) |"
  fi
  echo "| allocations per proxied request ≤ 8 (counting allocator; the bare proxy: $allocs_bare) | $allocs_gateway | $(verdict "$allocs_gateway" "<=" 8) |"
  if [ "$have_perf" = yes ]; then
    v=$(lead "${calls[gateway.1]}"); r=$(lead "${calls[gateway.50]}")
    echo "| syscalls per request ≤ 4, keep-alive HTTP/1.1 (-c1; -c50) (the bare proxy: $(lead "${calls[bare.1]}"); $(lead "${calls[bare.50]}")) | $v; $r | $(verdict "$(worse "$v" "$r")" "<=" 4) |"
  fi
  for share in 10 40; do
    for c in 1 2; do
      local what; what=$([ "$c" = 1 ] && echo p50 || echo p99)
      v=$(added "$share" gateway "$c"); r=$(added "$share" nginx "$c")
      echo "| added $what over direct at $share% of nginx's throughput no worse than nginx's ($r ms) | $v ms | $(verdict "$v" "<=" "$r") |"
    done
  done
  for p in "h1 1" "h2c 4" "tls-h1 4" "tls-h2 8"; do
    read -r name limit <<<"$p"
    v=$(lead "${idle[$name.batches]}"); r=$(lead "${idle[$name.flood]}")
    echo "| idle memory per connection, $name, 10k connections ≤ $limit KiB (in batches; all at once) | $v; $r | $(verdict "$(worse "$v" "$r")" "<=" "$limit") |"
  done
}

{
  echo "# Proxy benchmark: demo-gateway beside nginx"
  echo
  echo "Run $(date -u +%Y-%m-%dT%H:%MZ) by \`bench/proxies.sh\`${quick:+ (QUICK)} on: $machine."
  echo "Two one-worker nginx \`return 200\` backends; wrk -t2; $rounds rounds of ${secs} s in alternating order;"
  echo "ratios taken within each round, medians with (min–max). The client, the proxies and the backends share the cores."
  echo
  echo "## Targets (issue 25)"
  echo
  targets
  echo
  echo "## Throughput, closed loop (access logs off)"
  echo
  echo "| target | -c50 rps | / nginx | CPU µs/request | p50 ms | -c256 rps | / nginx | CPU µs/request | syscalls/request -c1; -c50 | context switches/request -c1; -c50 | allocations/request |"
  echo "|---|---|---|---|---|---|---|---|---|---|---|"
  for t in "${closed[@]}"; do
    local_calls="-"; local_switches="-"
    if [ -n "${calls[$t.1]:-}" ]; then
      local_calls="$(lead "${calls[$t.1]}"); $(lead "${calls[$t.50]}")"
      local_switches="$(awk '{print $2}' <<<"${calls[$t.1]}"); $(awk '{print $2}' <<<"${calls[$t.50]}")"
    fi
    case $t in gateway) a=$allocs_gateway ;; bare) a=$allocs_bare ;; *) a="-" ;; esac
    printf '| %s | %.0f | %s | %s | %s | %.0f | %s | %s | %s | %s | %s |\n' "$t" "$(med c50.$t 1)" "$(ratio c50 "$t" nginx)" \
      "$(med c50.$t 2)" "$(med c50.$t 3)" "$(med c256.$t 1)" "$(ratio c256 "$t" nginx)" "$(med c256.$t 2)" \
      "$local_calls" "$local_switches" "$a"
  done
  echo
  echo "nginx2 is an identical nginx: its ratio is the calibration (1.00 ± 0.05 expected). direct's CPU is not counted (no proxy)."
  echo "Syscalls and context switches: every thread of the proxy (nginx: its workers), counted by perf over a ${count_secs} s wrk run"
  echo "apart from the rounds. Allocations: the counting allocator of \`cargo bench --bench layers\` (below), the client's and backend's own taken out."
  echo "bare is the floor of the gateway's design (a bare hyper proxy): the gateway against it, per round,"
  printf 'reads %s in throughput at -c50 and %s at -c256; in CPU per request, %s at -c50 (the target: at most 1.15).\n' \
    "$(ratio c50 gateway bare)" "$(ratio c256 gateway bare)" "$(cpu_ratio c50 gateway bare)"
  echo
  echo "## Both logging every request"
  echo
  echo "| target | rps | gateway / nginx | CPU µs/request |"
  echo "|---|---|---|---|"
  printf '| nginx, buffered access_log | %.0f | | %s |\n' "$(med logged.nginxlog 1)" "$(med logged.nginxlog 2)"
  printf '| gateway, default access log (RUST_LOG=info, to a file) | %.0f | %s | %s |\n' "$(med logged.gatewaylog 1)" "$(ratio logged gatewaylog nginxlog)" "$(med logged.gatewaylog 2)"
  echo
  echo "## Feature costs, against the plain routed gateway in the same rounds (-c50)"
  echo
  echo "| gateway with | rps | / plain | CPU µs/request |"
  echo "|---|---|---|---|"
  for t in "${features[@]}"; do
    case $t in
      gateway) name="nothing more (plain, RUST_LOG=warn; tracing off)" ;;
      traced) name="traces exported over OTLP/HTTP, every request sampled (2 spans each)" ;;
      traced1pct) name="traces exported over OTLP/HTTP, 1% sampled" ;;
      traceddown) name="traces, every request sampled, the collector down (every export fails)" ;;
      bare) name="(the bare hyper proxy, for the access log's target)" ;;
      ratelimit) name="a rate limit in Redis, one hot key (every request passes)" ;;
      gatewaylog) name="the access log (the default)" ;;
      hs256) name="JWT HS256, cached" ;;
      eddsa) name="JWT EdDSA, cached" ;;
      jwks) name="JWT EdDSA from a JWKS, cached" ;;
      retries) name="a backend answering 503 half the time (3 attempts; $retry_503 uncured 503s)" ;;
      tls) name="TLS 1.3, keep-alive" ;;
      redis) name="JWT HS256, revocation looked up in Redis every request" ;;
    esac
    printf '| %s | %.0f | %s | %s |\n' "$name" "$(med features.$t 1)" "$(ratio features "$t" gateway)" "$(med features.$t 2)"
  done
  echo
  for t in traced traced1pct traceddown; do
    case $t in traced) port=18112 ;; traced1pct) port=18114 ;; *) port=18116 ;; esac
    spans=$(curl -s "http://127.0.0.1:$port/metrics" \
      | awk -F'[{}" ]+' '/^gateway_trace_spans_total/ { printf "%s %s, ", $3, $4 }')
    echo "Spans of the $t gateway over the whole run: ${spans%, } (failed: not delivered; dropped: the export queue was full)."
    echo
  done
  echo
  echo "## Latency, open loop (64 connections; each request timed from when it was due)"
  echo
  echo "| load | target | p50 ms | p99 ms | p99.9 ms | errors |"
  echo "|---|---|---|---|---|---|"
  for share in 10 40; do
    rate=$(awk -v m="$nginx_max" -v s="$share" 'BEGIN {printf "%d", m * s / 100}')
    for t in direct nginx gateway; do
      read -r p50 p99 p999 e <<<"$(open_row "$share" "$t")"
      echo "| $share% ($rate/s) | $t | $p50 | $p99 | $p999 | $e |"
    done
  done
  echo
  echo "## Memory"
  echo
  echo "RSS per idle connection, KiB, 10k connections each answered once, read 3 s after the last answer; the gateway"
  echo "started anew for each (so memory a flood left freed but not handed back counts). In batches: 200 at a time, each"
  echo "batch answered before the next; all at once: 10k opened together, a refused one (the TLS handshake budget) coming back."
  echo
  echo "| protocol | in batches | all at once | opened again after a refusal |"
  echo "|---|---|---|---|"
  echo "| nginx, HTTP/1.1 | $(lead "${idle[nginx.batches]}") | $(lead "${idle[nginx.flood]}") | $(awk '{print $2}' <<<"${idle[nginx.flood]}") |"
  for p in "h1 HTTP/1.1" "h2c h2c" "tls-h1 TLS HTTP/1.1" "tls-h2 TLS HTTP/2"; do
    read -r name label <<<"$p"
    echo "| gateway, $label | $(lead "${idle[$name.batches]}") | $(lead "${idle[$name.flood]}") | $(awk '{print $2}' <<<"${idle[$name.flood]}") |"
  done
  echo
  echo "Gateway RSS over ${soak} s at -c50: $rss_start KiB before, $rss_first KiB after 5 s, $rss_max KiB at most, $rss_end KiB after ($soak_errors errors)."
  echo
  echo "Errors in the closed-loop runs (non-2xx and socket errors, the retries row's uncured 503s aside): $total_errors."
  echo
  echo "## Each layer alone, and allocations (\`cargo bench -p tower-gateway-tests --bench layers\`, same run)"
  echo
  echo '```'
  cat "$work/layers.out"
  echo '```'
} > "$results/latest.md"

{
  printf '{"date":"%s","machine":"%s","quick":%s,"rounds":%d,"seconds":%d,' "$(date -u +%FT%TZ)" "$machine" "$([ -n "$quick" ] && echo true || echo false)" "$rounds" "$secs"
  printf '"closed_loop":{'
  sep=""
  for set in c50 c256; do
    for t in "${closed[@]}"; do
      printf '%s"%s.%s":{"rps":%s,"cpu_us":%s,"p50_ms":%s,"errors":%s}' "$sep" "$set" "$t" "$(med $set.$t 1)" "$(med $set.$t 2)" "$(med $set.$t 3)" "$(errs $set.$t)"
      sep=","
    done
  done
  for t in nginxlog gatewaylog; do
    printf ',"logged.%s":{"rps":%s,"cpu_us":%s,"errors":%s}' "$t" "$(med logged.$t 1)" "$(med logged.$t 2)" "$(errs logged.$t)"
  done
  for t in "${features[@]}"; do
    printf ',"features.%s":{"rps":%s,"cpu_us":%s,"errors":%s}' "$t" "$(med features.$t 1)" "$(med features.$t 2)" "$(errs features.$t)"
  done
  printf '},"ratios":{"gateway_nginx_c50":"%s","gateway_nginx_c256":"%s","calibration_c50":"%s","calibration_c256":"%s","gateway_bare_c50":"%s","gateway_bare_cpu_c50":"%s"},' \
    "$(ratio c50 gateway nginx)" "$(ratio c256 gateway nginx)" "$(ratio c50 nginx2 nginx)" "$(ratio c256 nginx2 nginx)" \
    "$(ratio c50 gateway bare)" "$(cpu_ratio c50 gateway bare)"
  printf '"idle_rss_kib_per_connection_10k":{'
  sep=""
  for name in nginx h1 h2c tls-h1 tls-h2; do
    for arrival in batches flood; do
      printf '%s"%s.%s":"%s"' "$sep" "$name" "$arrival" "$(lead "${idle[$name.$arrival]}")"
      sep=","
    done
  done
  printf '},"allocations_per_request":{"gateway":"%s","bare":"%s"},"per_request_counts":{' "$allocs_gateway" "$allocs_bare"
  sep=""
  for k in "${!calls[@]}"; do
    printf '%s"%s":{"syscalls":%s,"context_switches":%s}' "$sep" "$k" "$(lead "${calls[$k]}")" "$(awk '{print $2}' <<<"${calls[$k]}")"
    sep=","
  done
  printf '},' 
  printf '"soak":{"seconds":%d,"rss_kib_start":%s,"rss_kib_max":%s,"rss_kib_end":%s,"errors":%s},' "$soak" "$rss_start" "$rss_max" "$rss_end" "$soak_errors"
  printf '"open_loop":{'
  sep=""
  for share in 10 40; do
    for t in direct nginx gateway; do
      read -r p50 p99 p999 e <<<"$(open_row "$share" "$t")"
      printf '%s"%s.%s":{"p50_ms":%s,"p99_ms":%s,"p999_ms":%s,"errors":%s}' "$sep" "$share" "$t" "$p50" "$p99" "$p999" "$e"
      sep=","
    done
  done
  printf '},"errors":%d}\n' "$total_errors"
} > "$results/latest.json"
cat "$results/latest.md"
