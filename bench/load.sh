#!/usr/bin/env bash
# Load benchmark on loopback: what does Portcullis add to Envoy's forward proxy?
#
# Measures, one after another, on free ports:
#   plain      Envoy forward proxy (envoy/forward-proxy.yaml with the ext_proc filter removed)
#   noop       Envoy + examples/noop_extproc (answers CONTINUE to everything)
#   noop-close the same, the processor ending each stream once it has answered the request
#              headers, instead of waiting for Envoy to end it
#   portcullis Envoy + target/release/portcullis with a generated 1,000-policy config; the
#              request's host (an IP literal) is not on the fast path: decided over ext_proc
#   fast       the same, requests to `localhost:UP`, which a policy names exactly: Envoy
#              decides each by the route Portcullis serves (RDS), no ext_proc round trip
#   fast-mix   the same, 4 of every 5 requests fast-path, the 5th over ext_proc
#   noop-mix   the mix's ceiling for any processor: static routes with ext_proc off and no
#              audit for `localhost:UP` (4 of every 5 requests), the no-op processor for the
#              5th — what fast-mix would reach if its fast path and its processor cost nothing
#   fast-unaudited  fast without Envoy's access log to Portcullis: what the fast path's audit
#              costs (not a configuration to run: fast-path decisions would go unaudited)
#   fast-grpc-log   fast with Envoy's gRPC access log service instead of the access log file
#              Portcullis follows (how the audit reached Portcullis before)
#   squid      Squid (Debian's package, installed by this script), 2 workers, a dstdomain
#              allowlist of the same 1,000 policies' hosts, access log on: the reference
#   tls-plain      HTTPS interception without decisions: envoy/transparent.yaml with the
#                  ext_proc filter removed; Portcullis only mints the certificate (SDS)
#   tls-portcullis HTTPS interception: envoy/transparent.yaml, Portcullis mints the
#                  certificate and decides every request (same 1,000 policies)
#   body-headers   Envoy + Portcullis (same policies), every request a POST of a 4 KiB JSON
#                  chat body that no rule reads: decided on its headers, the body streams
#   body-buffered  the same POSTs with a prompt rule ranking ahead of the allow: Envoy
#                  buffers each body (mode_override BUFFERED) and Portcullis scans the prompt
#   NAME@ng, NAME@og  any setup with Envoy's HTTP/2 codec set by its runtime flag
#                  (envoy.reloadable_features.http2_use_oghttp2 false / true): the codec of
#                  Envoy's ext_proc and xDS connections to Portcullis
#   NAME@google    any ext_proc setup with Envoy's Google gRPC client (gRPC C++) for ext_proc
#                  instead of its own (envoy_grpc)
#   NAME@nostats   any setup with Envoy keeping no stats (stats_matcher reject_all): their cost
#   NAME@1w        a Portcullis setup with one runtime worker thread (TOKIO_WORKER_THREADS=1)
#   NAME@base      a Portcullis setup run with PORTCULLIS_BASE_BIN instead: two builds
#                  paired in one interleaved run
#   The tls-* setups send `GET https://localhost:LISTEN/bench` (SNI localhost, Host naming the
#   upstream's HTTPS port, as a redirected workload would) over kept-alive TLS; Envoy
#   terminates it and originates TLS to examples/bench_upstream --tls-listen.
# Each: a warm-up, `wrk -t2 -c50 --latency` and `wrk -t1 -c1 --latency` sending
# `GET http://127.0.0.1:UP/bench` (absolute form) through the proxy to examples/bench_upstream.
# The setups run interleaved ROUNDS times (the machine's noise hits each alike); the
# report gives medians, and the CPU time each process spent per request in the c=50 runs.
#
# Environment:
#   DURATION=15s        length of each measured wrk run (c=50 and c=1)
#   ROUNDS=3            setups run interleaved this many times; the report shows medians
#   WARMUP=3s           warm-up before each setup
#   CONNS=50 THREADS=2  wrk load for the loaded run
#   SETUPS="plain noop portcullis fast fast-mix squid tls-plain tls-portcullis"
#                                   which setups to run
#                                   (also: portcullis-tcp, Portcullis over plaintext loopback
#                                   TCP instead of its Unix socket; portcullis-mtls, over TCP
#                                   with mutual TLS as the chart's separate topology runs it;
#                                   portcullis-no-outcomes, without Envoy's access log
#                                   to Portcullis (upstream records); body-headers, body-buffered)
#   ENVOY_CONCURRENCY=2 Envoy worker threads
#   BUILD=1             set BUILD=0 to skip the build
#   PROFILE=release     the cargo profile to build and run (`dev` pairs two trees without
#                       a release build of every dependency; compare within one profile only)
#   PORTCULLIS_BIN      Portcullis binary (default: the profile's, target/release/portcullis)
#   KEEP=1              keep the temp dir (configs, logs, raw wrk output)
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "${repo_root}"

DURATION="${DURATION:-15s}"
ROUNDS="${ROUNDS:-3}"
WARMUP="${WARMUP:-3s}"
CONNS="${CONNS:-50}"
THREADS="${THREADS:-2}"
SETUPS="${SETUPS:-plain noop portcullis fast fast-mix squid tls-plain tls-portcullis}"
ENVOY_CONCURRENCY="${ENVOY_CONCURRENCY:-2}"
BUILD="${BUILD:-1}"
PROFILE="${PROFILE:-release}"
KEEP="${KEEP:-0}"

log() { printf '==> %s\n' "$*" >&2; }
die() { printf 'load.sh: %s\n' "$*" >&2; exit 1; }

work="$(mktemp -d -t portcullis-bench.XXXXXX)"
pids=()
cleanup() {
  local pid
  for pid in "${pids[@]}"; do kill "${pid}" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "${pid}" 2>/dev/null || true; done
  if [[ "${KEEP}" == 1 ]]; then log "kept ${work}"; else rm -rf "${work}"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

stop() { # stop PID: stop one process we started, and forget it
  local pid rest=()
  kill "$1" 2>/dev/null || true
  wait "$1" 2>/dev/null || true
  for pid in "${pids[@]}"; do [[ "${pid}" == "$1" ]] || rest+=("${pid}"); done
  pids=("${rest[@]}")
}

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'
}

wait_socket() { # wait_socket PATH PID NAME
  local i
  for i in $(seq 1 200); do
    [[ -S "$1" ]] && return 0
    kill -0 "$2" 2>/dev/null || die "$3 exited before listening on $1 (see ${work}/$3.log)"
    sleep 0.05
  done
  die "$3 did not listen on $1 within 10s"
}

wait_port() { # wait_port PORT PID NAME
  local i
  for i in $(seq 1 200); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then return 0; fi
    kill -0 "$2" 2>/dev/null || die "$3 exited before listening on $1 (see ${work}/$3.log)"
    sleep 0.05
  done
  die "$3 did not listen on $1 within 10s"
}

# ---------------------------------------------------------------- build & tools
if [[ "${BUILD}" == 1 ]]; then
  build_args=(--example noop_extproc --example bench_upstream)
  [[ " ${SETUPS} " == *portcullis* || " ${SETUPS} " == *" tls-"* || " ${SETUPS} " == *" body-"* \
     || " ${SETUPS} " == *" fast"* ]] \
    && build_args=(--bin portcullis "${build_args[@]}")
  log "cargo build --profile ${PROFILE} ${build_args[*]}"
  cargo build --profile "${PROFILE}" "${build_args[@]}"
fi
if ! command -v wrk >/dev/null; then
  log "installing wrk"
  if ! apt-get install -y wrk >/dev/null 2>&1; then
    apt-get update >/dev/null && apt-get install -y wrk >/dev/null
  fi
fi
if [[ ! -x /usr/bin/time ]]; then
  log "installing time (wrk's own CPU)"
  if ! apt-get install -y time >/dev/null 2>&1; then
    apt-get update >/dev/null && apt-get install -y time >/dev/null
  fi
fi
if [[ " ${SETUPS} " == *" squid "* ]] && ! command -v squid >/dev/null; then
  log "installing squid"
  if ! apt-get install -y squid >/dev/null 2>&1; then
    apt-get update >/dev/null && apt-get install -y squid >/dev/null
  fi
fi
envoy="$("${repo_root}/scripts/bootstrap" | tail -n 1)"
[[ -x "${envoy}" ]] || die "no Envoy binary from scripts/bootstrap"
if [[ "${PROFILE}" == dev ]]; then bin="${repo_root}/target/debug"; else bin="${repo_root}/target/${PROFILE}"; fi
portcullis_bin="${PORTCULLIS_BIN:-${bin}/portcullis}"

# ---------------------------------------------------------------- upstream
up_port="$(free_port)"
tls_up_port="$(free_port)"
# The upstream's own CA and a leaf for localhost (Envoy checks it); the Portcullis CA that
# workloads trust for intercepted TLS.
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 \
  -subj "/CN=bench upstream CA" -keyout "${work}/up-ca.key" -out "${work}/up-ca.crt" 2>/dev/null
openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=localhost" \
  -keyout "${work}/up.key" -out "${work}/up.csr" 2>/dev/null
printf 'subjectAltName=DNS:localhost\n' >"${work}/up.ext"
openssl x509 -req -in "${work}/up.csr" -CA "${work}/up-ca.crt" -CAkey "${work}/up-ca.key" \
  -CAcreateserial -days 2 -extfile "${work}/up.ext" -out "${work}/up.crt" 2>/dev/null
if [[ " ${SETUPS} " == *" portcullis-mtls "* ]]; then
  # The gRPC channel's own CA, Portcullis's server certificate and Envoy's client certificate.
  mkdir -p "${work}/channel"
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 \
    -subj "/CN=bench channel CA" -keyout "${work}/channel/ca.key" -out "${work}/channel/ca.crt" 2>/dev/null
  for leaf in server envoy; do
    openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=${leaf}" \
      -keyout "${work}/channel/${leaf}.key" -out "${work}/channel/${leaf}.csr" 2>/dev/null
    if [[ "${leaf}" == server ]]; then
      printf 'subjectAltName=DNS:portcullis.bench\nextendedKeyUsage=serverAuth\n'
    else
      printf 'extendedKeyUsage=clientAuth\n'
    fi >"${work}/channel/${leaf}.ext"
    openssl x509 -req -in "${work}/channel/${leaf}.csr" -CA "${work}/channel/ca.crt" \
      -CAkey "${work}/channel/ca.key" -CAcreateserial -days 2 -extfile "${work}/channel/${leaf}.ext" \
      -out "${work}/channel/${leaf}.crt" 2>/dev/null
  done
fi
if [[ " ${SETUPS} " == *" tls-"* ]]; then
  "${portcullis_bin}" ca init --dir "${work}/ca" >/dev/null
fi
"${bin}/examples/bench_upstream" --listen "127.0.0.1:${up_port}" \
  --tls-listen "127.0.0.1:${tls_up_port}" --tls-cert "${work}/up.crt" --tls-key "${work}/up.key" \
  >"${work}/upstream.log" 2>&1 &
up_pid=$!; pids+=("${up_pid}")
wait_port "${up_port}" "${up_pid}" upstream
target="http://127.0.0.1:${up_port}/bench"
upstream_count() { curl -fsS "http://127.0.0.1:${up_port}/__count"; }

cat >"${work}/proxy.lua" <<EOF
-- Absolute-form request line, as an HTTP_PROXY client sends it.
wrk.method = "GET"
wrk.path = "${target}"
wrk.headers["Host"] = "127.0.0.1:${up_port}"
-- Where Envoy's upstream cluster connects (ORIGINAL_DST): Portcullis replaces it with the
-- address it vetted; the plain and noop setups, without Portcullis, need it from the client.
wrk.headers["x-portcullis-upstream-address"] = "127.0.0.1:${up_port}"
EOF
cat >"${work}/squid.lua" <<EOF
-- The same absolute-form request, without Envoy's routing header (Squid resolves itself).
wrk.method = "GET"
wrk.path = "${target}"
wrk.headers["Host"] = "127.0.0.1:${up_port}"
EOF
cat >"${work}/fast.lua" <<EOF
-- A host a policy names exactly (with the port): Envoy decides it by its routes and connects
-- to the address Portcullis vetted; the client names no upstream address.
wrk.method = "GET"
wrk.path = "http://localhost:${up_port}/bench"
wrk.headers["Host"] = "localhost:${up_port}"
EOF
mix_lua() { # mix_lua OUT [SLOW_HEADERS]: 4 of every 5 requests on the fast path, the 5th (an
  # IP literal host) over ext_proc; noop-mix's 5th names its upstream address itself (no
  # Portcullis to set it)
  cat >"$1" <<EOF
local n = 0
local fast = wrk.format("GET", "http://localhost:${up_port}/bench", {["Host"] = "localhost:${up_port}"})
local slow = wrk.format("GET", "${target}", {["Host"] = "127.0.0.1:${up_port}"${2:-}})
request = function()
  n = n + 1
  if n % 5 == 0 then return slow end
  return fast
end
EOF
}
mix_lua "${work}/mix.lua"
mix_lua "${work}/noop-mix.lua" ', ["x-portcullis-upstream-address"] = "127.0.0.1:'"${up_port}"'"'
# A 4 KiB OpenAI-style chat body, POSTed by the body-* setups.
python3 - "${work}/body.json" <<'PY'
import json, sys
sentence = "Please review the retry logic in the upload worker and suggest a jittered backoff. "
messages, size = [], 0
while size < 4096 - 200:
    text = sentence * 3
    messages.append({"role": "user" if len(messages) % 2 == 0 else "assistant", "content": text})
    size += len(text) + 40
open(sys.argv[1], "w").write(json.dumps({"model": "gpt-4o", "messages": messages}))
PY
cat >"${work}/post.lua" <<EOF
-- The same absolute-form request, as a POST of a 4 KiB JSON chat body.
wrk.method = "POST"
wrk.path = "${target}"
wrk.headers["Host"] = "127.0.0.1:${up_port}"
wrk.headers["x-portcullis-upstream-address"] = "127.0.0.1:${up_port}"
wrk.headers["Content-Type"] = "application/json"
local f = io.open("${work}/body.json", "rb")
wrk.body = f:read("*a")
f:close()
EOF
cat >"${work}/tls.lua" <<EOF
-- A redirected HTTPS client: SNI localhost (from the URL), Host naming the upstream.
wrk.method = "GET"
wrk.path = "/bench"
wrk.headers["Host"] = "localhost:${tls_up_port}"
wrk.headers["x-portcullis-upstream-address"] = "127.0.0.1:${tls_up_port}"
EOF

# ---------------------------------------------------------------- configs
# envoy_config SOURCE OUT LISTEN ADMIN GRPC WITH_EXTPROC(0|1) TRUST_STORE CHANNEL_TLS ALS(0|1) RDS(0|1)
#   RDS 0: without Portcullis (plain, noop) the routes it would serve (RDS) are replaced by the
#   static catch-all routes every request took before the fast path; RDS fast:PORT: the same
#   with a virtual host for localhost:PORT that turns ext_proc off (noop-mix)
envoy_config() {
  python3 - "$@" <<'PY'
import os, re, sys
src, out, listen, admin, grpc, with_extproc, trust, channel_tls, als, rds, variant = sys.argv[1:]
STATIC_ROUTES = """          route_config:
            name: forward_proxy
            request_headers_to_remove: [x-envoy-external-address, x-envoy-internal]
            virtual_hosts:
            - name: any_host
              domains: ["*"]
              routes:
              - match: {connect_matcher: {}}
                route: {cluster: upstream_plain, timeout: 0s, upgrade_configs: [{upgrade_type: CONNECT, connect_config: {}}]}
              - match: {prefix: "/"}
                route: {cluster: upstream_plain, timeout: 0s}"""
# noop-mix: requests to localhost:PORT skip ext_proc as a fast-path route does, without
# Portcullis; the route names the upstream address itself (no audit line either).
FAST_HOST = """            - name: fast_host
              domains: ["localhost:{port}"]
              typed_per_filter_config:
                envoy.filters.http.ext_proc:
                  "@type": type.googleapis.com/envoy.config.route.v3.FilterConfig
                  disabled: true
              routes:
              - match: {{prefix: "/"}}
                route: {{cluster: upstream_plain, timeout: 0s}}
                request_headers_to_add:
                - header: {{key: x-portcullis-upstream-address, value: "127.0.0.1:{port}"}}
                  append_action: OVERWRITE_IF_EXISTS_OR_ADD"""
routes_skip = False
grpc_logger_added = False
lines = open(src).read().splitlines()
keep, skip, drop_indent = [], False, None
for line in lines:
    stripped = line.strip()
    if stripped.startswith("# BEGIN routes") and rds != "1":
        routes_skip = True
        static = STATIC_ROUTES.splitlines()
        if rds.startswith("fast:"):
            at = static.index("            virtual_hosts:") + 1
            static[at:at] = FAST_HOST.format(port=rds.split(":", 1)[1]).splitlines()
        keep.extend(static)
    if routes_skip:
        if stripped.startswith("# END routes"):
            routes_skip = False
        continue
    if stripped.startswith("# BEGIN ext_proc") and with_extproc == "0":
        skip = True
    if skip:
        if stripped.startswith("# END ext_proc"):
            skip = False
        continue
    indent = len(line) - len(line.lstrip())
    # The stdout access log goes (a terminal's cost per request, not the gateway's); the
    # gRPC access log to Portcullis stays, part of what every request costs.
    if drop_indent is not None:  # inside the stdout logger's list item: drop it
        if stripped and indent > drop_indent:
            continue
        drop_indent = None
    # Without Portcullis (plain, noop), the access log it follows has no reader: it goes too.
    if stripped == "- name: envoy.access_loggers.stdout" or (
            als == "0" and stripped == "- name: envoy.access_loggers.http_grpc") or (
            als in ("0", "grpc") and stripped == "- name: envoy.access_loggers.file"):
        drop_indent = indent
        if als == "grpc" and not grpc_logger_added:
            # The gRPC access log service instead of the file, as the configs had it before.
            grpc_logger_added = True
            pad = " " * indent
            keep.extend(pad + l for l in (
                "- name: envoy.access_loggers.http_grpc",
                "  typed_config:",
                '    "@type": type.googleapis.com/envoy.extensions.access_loggers.grpc.v3.HttpGrpcAccessLogConfig',
                "    common_config:",
                "      log_name: portcullis",
                "      transport_api_version: V3",
                "      grpc_service: {envoy_grpc: {cluster_name: portcullis}}",
                "      buffer_flush_interval: 1s",
            ))
        continue
    keep.append(line)
text = "\n".join(keep) + "\n"
for old, new in (("10000", listen), ("9902", admin)):
    text, n = re.subn(r"port_value: %s\b" % old, "port_value: %s" % new, text)
    assert n == 1, (old, n)
# GRPC: the Unix socket's path, or a TCP port (the portcullis-tcp setup).
socket = "path: /run/portcullis/grpc.sock"
assert text.count(socket) == 1, socket
if grpc.isdigit():
    text = text.replace("{pipe: {%s}}" % socket,
                        "{socket_address: {address: 127.0.0.1, port_value: %s}}" % grpc)
else:
    text = text.replace(socket, "path: %s" % grpc)
# The access log file Portcullis follows: beside its socket (the TCP setups: in the work dir).
access_dir = os.path.dirname(grpc) if not grpc.isdigit() else os.path.dirname(out)
text = text.replace("/run/portcullis/access.jsonl", os.path.join(access_dir, "access.jsonl"))
text = text.replace("/etc/ssl/certs/ca-certificates.crt", trust)
if channel_tls:
    # The separate topology's channel: Envoy presents a client certificate to Portcullis
    # and checks Portcullis's name, as the Helm chart renders it.
    cert, key, ca = channel_tls.split(",")
    cluster = "  - name: portcullis\n    type: STATIC\n"
    assert text.count(cluster) == 1, cluster
    text = text.replace(cluster, cluster + (
        "    transport_socket:\n"
        "      name: envoy.transport_sockets.tls\n"
        "      typed_config:\n"
        '        "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext\n'
        "        sni: portcullis.bench\n"
        "        common_tls_context:\n"
        "          alpn_protocols: [h2]\n"
        "          tls_certificates: [{certificate_chain: {filename: %s}, private_key: {filename: %s}}]\n"
        "          validation_context:\n"
        "            trusted_ca: {filename: %s}\n"
        "            match_typed_subject_alt_names: [{san_type: DNS, matcher: {exact: portcullis.bench}}]\n"
    ) % (cert, key, ca))
if variant == "google":
    # Envoy's other gRPC client (gRPC C++, its own completion-queue thread) for ext_proc.
    envoy_grpc = "                envoy_grpc: {cluster_name: portcullis}\n                initial_metadata:"
    assert text.count(envoy_grpc) == 1, envoy_grpc
    target = ("unix:" + grpc) if not grpc.isdigit() else ("127.0.0.1:" + grpc)
    text = text.replace(envoy_grpc, (
        "                google_grpc:\n"
        "                  target_uri: \"%s\"\n"
        "                  stat_prefix: portcullis\n"
        # gRPC C++ names a Unix socket's path as the authority, which h2 (tonic) refuses.
        "                  channel_args: {args: {grpc.default_authority: {string_value: localhost}}}\n"
        "                initial_metadata:") % target)
elif variant == "nostats":
    # What Envoy's stats cost a request: none kept (the ext_proc stream count reads 0).
    text += "stats_config: {stats_matcher: {reject_all: true}}\n"
elif variant in ("ng", "og"):
    assert "layered_runtime:" not in text
    text += ("layered_runtime:\n  layers:\n  - name: codec\n    static_layer:\n"
             "      envoy.reloadable_features.http2_use_oghttp2: %s\n") % (
        "true" if variant == "og" else "false")
elif variant:
    sys.exit("load.sh: unknown setup variant @%s" % variant)
open(out, "w").write(text)
PY
}

portcullis_config() { # portcullis_config OUT AUDIT_PATH [CA_DIR: interception on] [body: a prompt rule]
  python3 - "$1" "$2" "${3:-}" "${4:-}" "${up_port}" <<'PY'
import sys
out, audit, ca, body, up_port = sys.argv[1:]
methods = [["GET", "POST"], ["GET"], ["POST", "PUT", "PATCH"], ["GET", "HEAD"], ["DELETE"]]
paths = [["/v1/*"], ["/v2/items/*", "/v2/health"], ["/api/*"], ["/graphql"], ["/repos/*/issues", "/repos/*/pulls"]]
o = ["gateway:", "  tags: [env:bench]", "default_action: deny", "policies:"]
for i in range(1, 1000):
    host = "*.svc%04d.example.net" % i if i % 4 == 0 else "api%04d.example.com" % i
    o += [
        "  - name: tenant-%04d" % i,
        "    priority: %d" % (10 + i % 7),
        "    match_tags: [tenant:t%04d]" % i,
        "    action: allow",
        "    rules:",
        '      - host: "%s"' % host,
        "        paths: [%s]" % ", ".join('"%s"' % p for p in paths[i % len(paths)]),
        "        methods: [%s]" % ", ".join(methods[i % len(methods)]),
    ]
if body:
    # Ranks ahead of the allow below: every POST to the upstream has its body buffered and
    # its prompt scanned (nothing in the bench body matches, so it is then allowed).
    o += [
        "  - name: prompt-scan",
        "    priority: 50",
        "    action: deny",
        "    rules:",
        "      - host: 127.0.0.1",
        "        prompt: {contains: [aws_secret_access_key, customer list]}",
    ]
o += [
    "  - name: bench-upstream",
    "    priority: 100",
    "    match_tags: [env:bench]",
    "    action: allow",
    "    rules:",
    "      - host: 127.0.0.1",
    "      - host: localhost",
    # Named exactly with its port: the fast setups' requests are decided by Envoy's routes.
    '      - host: "localhost:%s"' % up_port,
    "audit: { sink: file, path: %s }" % audit,
    # The upstream is on loopback, which the network guard refuses unless opened.
    "network_guard: { allow_cidrs: [127.0.0.0/8] }",
]
if ca:
    o += ["interception:", "  ca: {cert_file: %s/ca.crt, key_file: %s/ca.key}" % (ca, ca)]
open(out, "w").write("\n".join(o) + "\n")
PY
}

# ---------------------------------------------------------------- one setup
cpu_ticks() { # cpu_ticks PID: utime+stime of a process and its children, in clock ticks
  local pid total=0 child
  total="$(awk '{print $14 + $15}' "/proc/$1/stat" 2>/dev/null || echo 0)"
  for child in $(pgrep -P "$1" 2>/dev/null); do
    total=$(( total + $(cpu_ticks "${child}") ))
  done
  echo "${total}"
}

measure() { # measure NAME ROUND LUA PROXY_URL OUT PROXY_PID EXT_PID: the wrk runs and CPU
  local name="$1" round="$2" lua="$3" proxy_url="$4" out="$5" proxy_pid="$6" ext_pid="$7"
  local before after proxy_cpu ext_cpu=0 up_cpu
  log "${name} (round ${round}/${ROUNDS}): warm-up ${WARMUP}, then c=${CONNS} and c=1 for ${DURATION} each"
  wrk -t"${THREADS}" -c"${CONNS}" -d"${WARMUP}" -s "${lua}" "${proxy_url}" >/dev/null
  before="$(upstream_count)"
  proxy_cpu="$(cpu_ticks "${proxy_pid}")"
  [[ -n "${ext_pid}" ]] && ext_cpu="$(cpu_ticks "${ext_pid}")"
  up_cpu="$(cpu_ticks "${up_pid}")"
  # wrk's own CPU too: it shares the two cores with what it measures.
  /usr/bin/time -f '%U %S' -o "${out}-wrk-time.txt" \
    wrk -t"${THREADS}" -c"${CONNS}" -d"${DURATION}" --latency -s "${lua}" "${proxy_url}" \
    >"${out}-c${CONNS}.txt"
  echo "$(( $(cpu_ticks "${proxy_pid}") - proxy_cpu ))" >"${out}-envoy-cpu.txt"
  echo "$(( $(cpu_ticks "${up_pid}") - up_cpu ))" >"${out}-upstream-cpu.txt"
  if [[ -n "${ext_pid}" ]]; then
    echo "$(( $(cpu_ticks "${ext_pid}") - ext_cpu ))" >"${out}-ext-cpu.txt"
  else
    echo 0 >"${out}-ext-cpu.txt"
  fi
  wrk -t1 -c1 -d"${DURATION}" --latency -s "${lua}" "${proxy_url}" >"${out}-c1.txt"
  after="$(upstream_count)"
  echo "$((after - before))" >"${out}-upstream.txt"
}

run_squid() { # run_squid ROUND LISTEN OUT: Squid with the policies' hosts as its allowlist
  local round="$1" listen="$2" out="$3" dir="${work}/squid-r$1" squid_pid code
  mkdir -p "${dir}"
  # The same 1,000 hosts the Portcullis setups' policies name (as dstdomain entries), and
  # the upstream.
  python3 - "${dir}/allowed.txt" <<'PY'
import sys
hosts = [(".svc%04d.example.net" % i) if i % 4 == 0 else ("api%04d.example.com" % i) for i in range(1, 1000)]
open(sys.argv[1], "w").write("\n".join(hosts + ["127.0.0.1", "localhost"]) + "\n")
PY
  cat >"${dir}/squid.conf" <<EOF
http_port 127.0.0.1:${listen}
workers 2
acl allowed dstdomain "${dir}/allowed.txt"
http_access allow allowed
http_access deny all
cache deny all
access_log stdio:${dir}/access.log
cache_log ${dir}/cache.log
pid_filename ${dir}/squid.pid
coredump_dir ${dir}
cache_effective_user proxy
EOF
  # Squid's workers run as `proxy`: they must reach and write their directory.
  chmod 711 "${work}"
  chown -R proxy "${dir}" 2>/dev/null || true
  squid --foreground -f "${dir}/squid.conf" >"${out}-squid.log" 2>&1 &
  squid_pid=$!; pids+=("${squid_pid}")
  wait_port "${listen}" "${squid_pid}" squid
  code="$(curl -sS -o "${out}-probe.txt" -w '%{http_code}' -x "http://127.0.0.1:${listen}" "${target}")" || true
  [[ "${code}" == 200 && "$(cat "${out}-probe.txt")" == ok ]] \
    || die "squid: probe through proxy got HTTP ${code}: $(head -c 300 "${out}-probe.txt")"
  measure squid "${round}" "${work}/squid.lua" "http://127.0.0.1:${listen}/" "${out}" "${squid_pid}" ""
  echo 0 >"${out}-extproc.txt"
  stop "${squid_pid}"
}

run_setup() { # run_setup NAME[@VARIANT] ROUND (the variants: the header of this file)
  local label="$1" round="$2" listen admin grpc ext_pid="" envoy_pid with_ext=1 before after
  local channel_tls="" als=1 rds=1
  # @base and @1w change how Portcullis runs; the other variants, Envoy's config.
  local name="${label%@*}" variant="" serving="${portcullis_bin}"
  [[ "${label}" == *@* ]] && variant="${label#*@}"
  local workers=()
  if [[ "${variant}" == base ]]; then
    serving="${PORTCULLIS_BASE_BIN:?NAME@base needs PORTCULLIS_BASE_BIN}"; variant=""
  elif [[ "${variant}" == 1w ]]; then
    workers=(env TOKIO_WORKER_THREADS=1); variant=""
  fi
  local out="${work}/${label}-r${round}"
  local source="${repo_root}/envoy/forward-proxy.yaml" lua="${work}/proxy.lua" ca_dir=""
  listen="$(free_port)"; admin="$(free_port)"; grpc="${work}/grpc-${name}.sock"
  # A socket file left by the previous round would pass wait_socket before the new
  # process listens (a slow start, such as a dev build's, then meets "connection refused").
  rm -f "${grpc}"
  local grpc_listen="unix:${grpc}"
  local proxy_url="http://127.0.0.1:${listen}/"
  local route="x-portcullis-upstream-address: 127.0.0.1:${up_port}"
  local probe=(-x "http://127.0.0.1:${listen}" -H "${route}" "${target}")
  if [[ "${name}" == tls-* ]]; then
    source="${repo_root}/envoy/transparent.yaml"; lua="${work}/tls.lua"; ca_dir="${work}/ca"
    proxy_url="https://localhost:${listen}/"
    probe=(--cacert "${work}/ca/ca.crt" -H "Host: localhost:${tls_up_port}"
      -H "x-portcullis-upstream-address: 127.0.0.1:${tls_up_port}" "https://localhost:${listen}/bench")
  fi
  [[ "${name}" == body-* ]] && lua="${work}/post.lua"
  if [[ "${name}" == fast* ]]; then
    [[ "${name}" == fast-mix ]] && lua="${work}/mix.lua" || lua="${work}/fast.lua"
    [[ "${name}" == fast-unaudited ]] && als=0
    [[ "${name}" == fast-grpc-log ]] && als=grpc
    probe=(-x "http://127.0.0.1:${listen}" "http://localhost:${up_port}/bench")
  fi
  if [[ "${name}" == squid ]]; then
    run_squid "${round}" "${listen}" "${out}"
    return 0
  fi
  case "${name}" in
    plain) with_ext=0; als=0; rds=0 ;;
    noop|noop-close|noop-mix)
      als=0; rds=0
      [[ "${name}" == noop-mix ]] && rds="fast:${up_port}" && lua="${work}/noop-mix.lua"
      local ending=()
      [[ "${name}" == noop-close ]] && ending=(--end-after-request-headers)
      "${bin}/examples/noop_extproc" --listen "unix:${grpc}" "${ending[@]}" >"${out}-noop.log" 2>&1 &
      ext_pid=$!; pids+=("${ext_pid}")
      wait_socket "${grpc}" "${ext_pid}" noop ;;
    portcullis|portcullis-tcp|portcullis-mtls|portcullis-no-outcomes|tls-plain|tls-portcullis|body-headers|body-buffered|fast|fast-mix|fast-unaudited|fast-grpc-log)
      [[ -x "${serving}" ]] || die "${serving} missing (SETUPS=\"plain noop\" to skip)"
      [[ "${name}" == tls-plain ]] && with_ext=0 && als=0
      [[ "${name}" == portcullis-no-outcomes ]] && als=0
      local body_rule=""
      [[ "${name}" == body-buffered ]] && body_rule=body
      portcullis_config "${work}/portcullis-${name}.yaml" "${work}/audit.jsonl" "${ca_dir}" \
        "${body_rule}"
      # portcullis-tcp: the same over plaintext TCP on loopback (mesh-authenticated), only
      # to price the Unix socket against it.
      if [[ "${name}" == portcullis-tcp ]]; then
        grpc="$(free_port)"; grpc_listen="127.0.0.1:${grpc}"
        printf 'server: {grpc_mesh_authenticated: true, envoy_access_log: %s/access.jsonl}\n' "${work}" \
          >>"${work}/portcullis-${name}.yaml"
      fi
      if [[ "${name}" == portcullis-mtls ]]; then
        grpc="$(free_port)"; grpc_listen="127.0.0.1:${grpc}"
        printf 'server: {grpc_tls: {cert_file: %s, key_file: %s, client_ca_file: %s}, envoy_access_log: %s/access.jsonl}\n' \
          "${work}/channel/server.crt" "${work}/channel/server.key" "${work}/channel/ca.crt" "${work}" \
          >>"${work}/portcullis-${name}.yaml"
        channel_tls="${work}/channel/envoy.crt,${work}/channel/envoy.key,${work}/channel/ca.crt"
      fi
      "${workers[@]}" "${serving}" serve --config "${work}/portcullis-${name}.yaml" \
        --grpc-listen "${grpc_listen}" --admin-listen "127.0.0.1:$(free_port)" \
        >"${out}-portcullis.log" 2>&1 &
      ext_pid=$!; pids+=("${ext_pid}")
      if [[ "${grpc}" == */* ]]; then wait_socket "${grpc}" "${ext_pid}" portcullis
      else wait_port "${grpc}" "${ext_pid}" portcullis; fi ;;
    *) die "unknown setup ${name}" ;;
  esac
  envoy_config "${source}" "${work}/envoy-${label}.yaml" "${listen}" "${admin}" "${grpc}" "${with_ext}" \
    "${work}/up-ca.crt" "${channel_tls}" "${als}" "${rds}" "${variant}"
  "${envoy}" -c "${work}/envoy-${label}.yaml" --use-dynamic-base-id \
    --concurrency "${ENVOY_CONCURRENCY}" --file-flush-interval-msec 1000 -l warning >"${out}-envoy.log" 2>&1 &
  envoy_pid=$!; pids+=("${envoy_pid}")
  wait_port "${listen}" "${envoy_pid}" "envoy-${name}"

  # The request must really reach the upstream through the proxy (and be allowed).
  local code
  code="$(curl -sS -o "${out}-probe.txt" -w '%{http_code}' "${probe[@]}")" || true
  [[ "${code}" == 200 && "$(cat "${out}-probe.txt")" == ok ]] \
    || die "${name}: probe through proxy got HTTP ${code}: $(head -c 300 "${out}-probe.txt")"

  measure "${label}" "${round}" "${lua}" "${proxy_url}" "${out}" "${envoy_pid}" "${ext_pid}"
  # How many ext_proc streams Envoy opened (0 for plain): proves the processor was consulted.
  curl -gfsS "http://127.0.0.1:${admin}/stats?filter=ext_proc\.portcullis[a-z_]*\.streams_started" \
    | awk -F': ' '{n += $2} END {print n + 0}' >"${out}-extproc.txt"

  stop "${envoy_pid}"
  [[ -n "${ext_pid}" ]] && stop "${ext_pid}"
  return 0
}

for round in $(seq 1 "${ROUNDS}"); do
  for setup in ${SETUPS}; do run_setup "${setup}" "${round}"; done
done
if [[ " ${SETUPS} " == *portcullis* || " ${SETUPS} " == *" body-"* ]]; then
  log "portcullis: $(wc -l <"${work}/audit.jsonl" 2>/dev/null || echo 0) audit lines written"
fi

# ---------------------------------------------------------------- report
python3 - "${work}" "${CONNS}" "${SETUPS}" "${DURATION}" "${ROUNDS}" "$(getconf CLK_TCK)" <<'PY'
import re, statistics, sys
work, conns, setups, duration, rounds, clk_tck = sys.argv[1], sys.argv[2], sys.argv[3].split(), sys.argv[4], int(sys.argv[5]), int(sys.argv[6])
UNIT = {"us": 1.0, "ms": 1e3, "s": 1e6, "m": 6e7}

def micros(v):
    m = re.fullmatch(r"([\d.]+)(us|ms|s|m)", v)
    return float(m.group(1)) * UNIT[m.group(2)]

def parse(path):
    text = open(path).read()
    r = {"rps": float(re.search(r"Requests/sec:\s+([\d.]+)", text).group(1))}
    for pct in ("50", "99"):
        r["p" + pct] = micros(re.search(r"^\s+%s(?:\.000)?%%\s+(\S+)" % pct, text, re.M).group(1))
    r["requests"] = int(re.search(r"(\d+) requests in", text).group(1))
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    errs = re.search(r"Socket errors: (.*)", text)
    r["non2xx"] = int(bad.group(1)) if bad else 0
    r["errors"] = errs.group(1) if errs else ""
    return r

def number(path):
    return int(open(path).read().strip() or 0)

def fmt_us(us):
    return "%.0fus" % us if us < 1000 else "%.2fms" % (us / 1000)

runs = {s: [] for s in setups}
for s in setups:
    for k in range(1, rounds + 1):
        base = "%s/%s-r%d" % (work, s, k)
        c50, c1 = parse("%s-c%s.txt" % (base, conns)), parse("%s-c1.txt" % base)
        tick_us = 1e6 / clk_tck
        runs[s].append({
            "c50": c50, "c1": c1,
            "upstream": number(base + "-upstream.txt"), "extproc": number(base + "-extproc.txt"),
            "envoy_cpu": number(base + "-envoy-cpu.txt") * tick_us / c50["requests"],
            "ext_cpu": number(base + "-ext-cpu.txt") * tick_us / c50["requests"],
            "up_cpu": number(base + "-upstream-cpu.txt") * tick_us / c50["requests"],
            "wrk_cpu": sum(map(float, open(base + "-wrk-time.txt").read().split()[-2:])) * 1e6 / c50["requests"],
        })

def med(s, f):
    return statistics.median(f(r) for r in runs[s])

def baseline(s):
    """What a setup is compared with: plain Envoy of its own family (HTTP or HTTPS)."""
    return "tls-plain" if s.startswith("tls-") else "plain"

hdr = ("setup", "rps c=%s" % conns, "p50", "p99", "rps c=1", "p50", "p99", "envoy cpu/req", "ext_proc cpu/req", "rps vs its plain")
rows = []
for s in setups:
    rps = med(s, lambda r: r["c50"]["rps"])
    base = baseline(s)
    vs = "%.2fx" % (rps / med(base, lambda r: r["c50"]["rps"])) if base in runs else "-"
    rows.append((s, "%.0f" % rps, fmt_us(med(s, lambda r: r["c50"]["p50"])), fmt_us(med(s, lambda r: r["c50"]["p99"])),
                 "%.0f" % med(s, lambda r: r["c1"]["rps"]), fmt_us(med(s, lambda r: r["c1"]["p50"])),
                 fmt_us(med(s, lambda r: r["c1"]["p99"])), "%.0fus" % med(s, lambda r: r["envoy_cpu"]),
                 "%.0fus" % med(s, lambda r: r["ext_cpu"]) if s != "plain" else "-", vs))
# tls-plain's "ext_proc cpu" is Portcullis serving SDS only.
w = [max(len(str(x)) for x in col) for col in zip(hdr, *rows)]
print()
print("Envoy forward proxy on loopback; medians of %d interleaved rounds, wrk %s per run;" % (rounds, duration))
print("GET /bench via absolute-form proxy request (tls-*: intercepted HTTPS, kept-alive TLS);")
print("cpu/req = process CPU time / requests in the c=%s run; tls-plain's ext_proc column is Portcullis serving SDS only" % conns)
for r in [hdr] + rows:
    print("  ".join(str(x).rjust(n) for x, n in zip(r, w)))
print("load CPU/req in the c=%s run (wrk + the upstream, on the same cores): %s" % (conns, ", ".join(
    "%s %.0f+%.0fus" % (s, med(s, lambda r: r["wrk_cpu"]), med(s, lambda r: r["up_cpu"])) for s in setups)))
for s in setups:
    base = baseline(s)
    if s != base and base in runs:
        print("%s vs %s: p50 added at c=1 %+.0fus (median of per-round differences)" % (
            s, base, statistics.median(r["c1"]["p50"] - p["c1"]["p50"] for r, p in zip(runs[s], runs[base]))))
if "plain" in runs and "tls-plain" in runs:
    print("intercepted HTTPS vs plain HTTP through Envoy: tls-plain/plain rps c=%s %.2fx" % (
        conns, med("tls-plain", lambda r: r["c50"]["rps"]) / med("plain", lambda r: r["c50"]["rps"])))
if "portcullis" in runs and "tls-portcullis" in runs:
    print("Portcullis on intercepted HTTPS vs on plain HTTP: rps c=%s %.2fx" % (
        conns, med("tls-portcullis", lambda r: r["c50"]["rps"]) / med("portcullis", lambda r: r["c50"]["rps"])))
if "noop" in runs and "portcullis" in runs:
    ratios = [p["c50"]["rps"] / n["c50"]["rps"] for p, n in zip(runs["portcullis"], runs["noop"])]
    print("portcullis vs noop: rps c=%s %.2fx (per round: %s); p50 at c=1 %+.0fus; ext_proc cpu/req %+.0fus" % (
        conns, statistics.median(ratios), ", ".join("%.2f" % r for r in ratios),
        statistics.median(p["c1"]["p50"] - n["c1"]["p50"] for p, n in zip(runs["portcullis"], runs["noop"])),
        med("portcullis", lambda r: r["ext_cpu"]) - med("noop", lambda r: r["ext_cpu"])))
for s in ("portcullis", "fast", "fast-mix", "noop-mix", "fast-unaudited", "fast-grpc-log", "squid"):
    if s in runs and "plain" in runs:
        ratios = [f["c50"]["rps"] / p["c50"]["rps"] for f, p in zip(runs[s], runs["plain"])]
        print("%s vs plain: rps c=%s %.2fx (per round: %s); cpu/req (proxy + ext_proc) %.0fus vs %.0fus" % (
            s, conns, statistics.median(ratios), ", ".join("%.2f" % r for r in ratios),
            med(s, lambda r: r["envoy_cpu"] + r["ext_cpu"]), med("plain", lambda r: r["envoy_cpu"])))
if "portcullis-no-outcomes" in runs and "portcullis" in runs:
    ratios = [p["c50"]["rps"] / n["c50"]["rps"] for p, n in zip(runs["portcullis"], runs["portcullis-no-outcomes"])]
    print("portcullis vs portcullis-no-outcomes (the upstream records' cost): rps c=%s %.2fx (per round: %s)" % (
        conns, statistics.median(ratios), ", ".join("%.2f" % r for r in ratios)))
for channel in ("portcullis-tcp", "portcullis-mtls"):
    if channel in runs and "portcullis" in runs:
        ratios = [c["c50"]["rps"] / u["c50"]["rps"] for c, u in zip(runs[channel], runs["portcullis"])]
        print("%s vs portcullis (Unix socket): rps c=%s %.2fx (per round: %s); p50 at c=1 %+.0fus" % (
            channel, conns, statistics.median(ratios), ", ".join("%.2f" % r for r in ratios),
            statistics.median(c["c1"]["p50"] - u["c1"]["p50"] for c, u in zip(runs[channel], runs["portcullis"]))))
problems = []
for s in setups:
    for k, r in enumerate(runs[s], 1):
        sent = r["c50"]["requests"] + r["c1"]["requests"]
        if r["upstream"] < sent:
            problems.append("%s round %d: upstream saw %d requests, wrk completed %d" % (s, k, r["upstream"], sent))
        for c in ("c50", "c1"):
            if r[c]["non2xx"] or r[c]["errors"]:
                problems.append("%s round %d %s: non-2xx=%d socket errors: %s" % (s, k, c, r[c]["non2xx"], r[c]["errors"]))
        if s in ("fast", "fast-unaudited") and r["extproc"] > 0:
            problems.append("%s round %d: %d ext_proc streams, expected none" % (s, k, r["extproc"]))
        if (s not in ("plain", "tls-plain", "squid", "noop-mix") and not s.startswith("fast")
                and not s.endswith("@nostats") and r["extproc"] < r["upstream"]):
            problems.append("%s round %d: fewer ext_proc streams (%d) than upstream requests (%d)" % (s, k, r["extproc"], r["upstream"]))
print("requests reaching the upstream (all rounds): " + ", ".join("%s %d" % (s, sum(r["upstream"] for r in runs[s])) for s in setups))
print("ext_proc streams opened by Envoy (all rounds): " + ", ".join("%s %d" % (s, sum(r["extproc"] for r in runs[s])) for s in setups))
for p in problems:
    print("WARNING: " + p)
PY
