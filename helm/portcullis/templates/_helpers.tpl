{{/* Names */}}
{{- define "portcullis.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "portcullis.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "portcullis.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Common labels; pass (dict "root" $ "component" "envoy"). */}}
{{- define "portcullis.labels" -}}
helm.sh/chart: {{ include "portcullis.chart" .root }}
{{ include "portcullis.selectorLabels" . }}
app.kubernetes.io/version: {{ .root.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
app.kubernetes.io/part-of: portcullis
{{- end -}}

{{- define "portcullis.selectorLabels" -}}
app.kubernetes.io/name: {{ include "portcullis.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
{{- with .component }}
app.kubernetes.io/component: {{ . }}
{{- end }}
{{- end -}}

{{- define "portcullis.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "portcullis.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* Whether this release runs Envoy at all ("true" or ""). */}}
{{- define "portcullis.envoyEnabled" -}}
{{- if or (eq .Values.topology "sidecar") .Values.envoy.enabled -}}true{{- end -}}
{{- end -}}

{{/* The component label of the pods that run Envoy. */}}
{{- define "portcullis.proxyComponent" -}}
{{- ternary "gateway" "envoy" (eq .Values.topology "sidecar") -}}
{{- end -}}

{{/*
The Portcullis gRPC Service (separate topology). It (and the Portcullis Deployment) take
the release's plain name when no Envoy of ours needs it for the proxy Service, so a mesh can
call portcullis.<namespace>.svc as the Istio example does.
*/}}
{{- define "portcullis.extprocServiceName" -}}
{{- if include "portcullis.envoyEnabled" . -}}
{{- printf "%s-extproc" (include "portcullis.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- include "portcullis.fullname" . -}}
{{- end -}}
{{- end -}}

{{- define "portcullis.configMapName" -}}
{{- default (printf "%s-config" (include "portcullis.fullname" .)) .Values.existingConfigMap -}}
{{- end -}}

{{/*
The Deployments to render, as a YAML list of {name, component, replicas}.
*/}}
{{- define "portcullis.workloads" -}}
{{- $full := include "portcullis.fullname" . -}}
{{- if eq .Values.topology "sidecar" }}
- {name: {{ $full }}, component: gateway, replicas: {{ .Values.replicaCount }}}
{{- else }}
{{- if .Values.envoy.enabled }}
- {name: {{ printf "%s-envoy" $full | trunc 63 | trimSuffix "-" }}, component: envoy, replicas: {{ .Values.replicaCount }}}
{{- end }}
- {name: {{ include "portcullis.portcullisDeploymentName" . }}, component: portcullis, replicas: {{ .Values.portcullis.replicaCount }}}
{{- end }}
{{- end -}}

{{/* The Deployment whose pods run Portcullis (the gateway pods in the sidecar topology). */}}
{{- define "portcullis.portcullisDeploymentName" -}}
{{- $full := include "portcullis.fullname" . -}}
{{- if and (eq .Values.topology "separate") (include "portcullis.envoyEnabled" .) -}}
{{- printf "%s-portcullis" $full | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $full -}}
{{- end -}}
{{- end -}}

{{/*
The Portcullis config file. A string config is kept verbatim (line numbers in Portcullis's
errors stay right), an object is written as YAML; the interception section is appended.
*/}}
{{- define "portcullis.interceptionSection" -}}
interception:
  ca:
    cert_file: /etc/portcullis/ca/ca.crt
    key_file: /etc/portcullis/ca/ca.key
  leaf_lifetime: {{ .Values.interception.leafLifetime | quote }}
  max_certificates: {{ int64 .Values.interception.maxCertificates }}
{{- end -}}

{{/*
The store section (store.enabled): the URL stays in the Secret, read from the environment
variable that url_env names.
*/}}
{{- define "portcullis.storeUrlEnv" -}}PORTCULLIS_STORE_URL{{- end -}}

{{- define "portcullis.storeSection" -}}
store:
  url_env: {{ include "portcullis.storeUrlEnv" . }}
  resync_interval: {{ .Values.store.resyncInterval | quote }}
  audit: {{ .Values.store.audit }}
  audit_retention: {{ .Values.store.auditRetention | quote }}
  {{- with .Values.store.secretSources }}
  secret_sources: {{ toJson . }}
  {{- end }}
{{- end -}}

{{/* The environment variable carrying an admin token from its Secret; pass the token's name. */}}
{{- define "portcullis.adminTokenEnv" -}}
{{- printf "PORTCULLIS_ADMIN_TOKEN_%s" (regexReplaceAll "[^A-Z0-9]" (upper .) "_") -}}
{{- end -}}

{{/* The admin section (admin.tokens): environment variables and digests, never a token. */}}
{{- define "portcullis.adminSection" -}}
admin:
  tokens:
  {{- range .Values.admin.tokens }}
    - name: {{ .name | quote }}
      role: {{ .role }}
      {{- if .sha256 }}
      token: {sha256: {{ .sha256 | quote }}}
      {{- else }}
      token: {env: {{ include "portcullis.adminTokenEnv" .name }}}
      {{- end }}
  {{- end }}
{{- end -}}

{{/* The config as given: the value (string or object), else the chart's default file. */}}
{{- define "portcullis.configSource" -}}
{{- if kindIs "invalid" .Values.config -}}
{{- .Files.Get "files/default-config.yaml" -}}
{{- else if kindIs "string" .Values.config -}}
{{- .Values.config -}}
{{- else -}}
{{- toYaml .Values.config -}}
{{- end -}}
{{- end -}}

{{- define "portcullis.configYaml" -}}
{{- $source := include "portcullis.configSource" . -}}
{{- $cfg := fromYaml $source -}}
{{- if hasKey $cfg "Error" -}}
{{- fail (printf "config: not a YAML mapping: %s" $cfg.Error) -}}
{{- end -}}
{{- if and .Values.interception.enabled (hasKey $cfg "interception") -}}
{{- fail "config.interception: set it with the chart's interception.* values, not in config" -}}
{{- end -}}
{{- if and .Values.store.enabled (hasKey $cfg "store") -}}
{{- fail "config.store: set it with the chart's store.* values (store.urlSecret holds the URL), not in config" -}}
{{- end -}}
{{- if and .Values.admin.tokens (hasKey $cfg "admin") -}}
{{- fail "config.admin: with the chart's admin.tokens, leave the admin section out of config (the chart writes it)" -}}
{{- end -}}
{{- if and (eq .Values.topology "separate") (hasKey $cfg "server") -}}
{{- fail "config.server: in the separate topology the chart writes it (channel.* values)" -}}
{{- end -}}
{{- trimSuffix "\n" $source }}
{{- if eq .Values.topology "separate" }}
# Added by the chart (topology: separate): how the gRPC port authenticates its callers.
server:
  {{- if .Values.channel.tlsSecretName }}
  grpc_tls:
    cert_file: {{ include "portcullis.channelTlsDir" . }}/tls.crt
    key_file: {{ include "portcullis.channelTlsDir" . }}/tls.key
    client_ca_file: {{ include "portcullis.channelTlsDir" . }}/ca.crt
  {{- else }}
  grpc_mesh_authenticated: true
  {{- end }}
{{- end }}
{{- if .Values.interception.enabled }}
# Added by the chart (interception.enabled): the CA is the Secret {{ .Values.interception.caSecretName }}.
{{ include "portcullis.interceptionSection" . }}
{{- end }}
{{- if .Values.store.enabled }}
# Added by the chart (store.enabled): the URL is in the Secret {{ .Values.store.urlSecret.name }}, key {{ .Values.store.urlSecret.key }}.
{{ include "portcullis.storeSection" . }}
{{- end }}
{{- if .Values.admin.tokens }}
# Added by the chart (admin.tokens): each token from its Secret, or its SHA-256.
{{ include "portcullis.adminSection" . }}
{{- end }}
{{- end -}}

{{/*
The sections Portcullis reads only at start (server, audit, interception, store): their
digest goes into the pod template, so changing one restarts the pods while policy edits
hot-reload.
*/}}
{{- define "portcullis.restartChecksum" -}}
{{- if .Values.existingConfigMap -}}
{{- list .Values.interception .Values.store | toYaml | sha256sum -}}
{{- else -}}
{{- $cfg := include "portcullis.configYaml" . | fromYaml -}}
{{- pick $cfg "server" "audit" "interception" "store" | toYaml | sha256sum -}}
{{- end -}}
{{- end -}}

{{/*
Envoy's bootstrap: envoy/forward-proxy.yaml (or the interception bootstrap), copied verbatim
into files/envoy/ and adapted structurally here, so the reviewed file stays the source:
- the workload listener (port 10000) binds 0.0.0.0; the admin stays on 127.0.0.1:9902;
- separate topology: the `portcullis` cluster resolves the headless Service (STRICT_DNS);
- a status listener on 9903 exposes only GET /ready and /stats/prometheus from the admin,
  and answers /healthz itself, for the kubelet and Prometheus.
*/}}
{{- define "portcullis.envoyBootstrap" -}}
{{- $file := ternary "files/envoy/https-intercept.yaml" "files/envoy/forward-proxy.yaml" .Values.interception.enabled -}}
{{- $text := "" -}}
{{- if .Values.meshMtls.enabled -}}
{{- if .Values.interception.enabled -}}
{{- fail "meshMtls.enabled and interception.enabled: choose one workload listener" -}}
{{- end -}}
{{- $file = "files/envoy/mesh-mtls.yaml" -}}
{{- /* The file's one trust domain becomes the configured one. */ -}}
{{- $text = .Files.Get $file | replace "- name: cluster.local\n" (printf "- name: %s\n" .Values.meshMtls.trustDomain) -}}
{{- else -}}
{{- $text = .Files.Get $file -}}
{{- end -}}
{{- $b := $text | fromYaml -}}
{{- if or (hasKey $b "Error") (not (hasKey $b "static_resources")) -}}
{{- fail (printf "%s: not an Envoy bootstrap" $file) -}}
{{- end -}}
{{- $rebound := 0 -}}
{{- range $b.static_resources.listeners -}}
{{- if and (hasKey . "address") (hasKey .address "socket_address") -}}
{{- if eq (int64 .address.socket_address.port_value) 10000 -}}
{{- $_ := set .address.socket_address "address" "0.0.0.0" -}}
{{- $rebound = add1 $rebound -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- if ne (int $rebound) 1 -}}
{{- fail (printf "%s: expected exactly one listener on port 10000" $file) -}}
{{- end -}}
{{- $found := 0 -}}
{{- range $b.static_resources.clusters -}}
{{- if eq .name "portcullis" -}}
{{- $found = add1 $found -}}
{{- if eq $.Values.topology "separate" -}}
{{- $_ := set . "type" "STRICT_DNS" -}}
{{- /* Short refresh: a new or departing Portcullis pod is seen within seconds. */ -}}
{{- $_ := set . "dns_refresh_rate" "5s" -}}
{{- $_ := set . "dns_lookup_family" "V4_PREFERRED" -}}
{{- $fqdn := include "portcullis.extprocFqdn" $ -}}
{{- range .load_assignment.endpoints -}}
{{- range .lb_endpoints -}}
{{- $_ := set .endpoint "address" (dict "socket_address" (dict "address" $fqdn "port_value" 50051)) -}}
{{- end -}}
{{- end -}}
{{- /* Mutual TLS to Portcullis (channel.tlsSecretName, mounted at /etc/portcullis/channel). */ -}}
{{- $_ := set . "transport_socket" (include "portcullis.envoyChannelTls" $ | fromYaml) -}}
{{- $_ := set . "upstream_connection_options" (dict "tcp_keepalive" (dict "keepalive_time" 30 "keepalive_interval" 5 "keepalive_probes" 3)) -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- if ne (int $found) 1 -}}
{{- fail (printf "%s: expected one cluster named portcullis" $file) -}}
{{- end -}}
{{- if eq .Values.topology "separate" -}}
{{- /* No directory shared with Portcullis: the access log file it follows becomes Envoy's
gRPC access log service on the portcullis cluster (the file's two loggers, one service). */ -}}
{{- range $b.static_resources.listeners -}}
{{- range .filter_chains -}}
{{- range .filters -}}
{{- if and (hasKey . "typed_config") (hasKey .typed_config "access_log") -}}
{{- $logs := list -}}
{{- $swapped := false -}}
{{- range .typed_config.access_log -}}
{{- if and (eq .name "envoy.access_loggers.file") (eq (toString .typed_config.path) "/run/portcullis/access.jsonl") -}}
{{- if not $swapped -}}
{{- $logs = append $logs (include "portcullis.envoyGrpcAccessLog" $ | fromYaml) -}}
{{- $swapped = true -}}
{{- end -}}
{{- else -}}
{{- $logs = append $logs . -}}
{{- end -}}
{{- end -}}
{{- $_ := set .typed_config "access_log" $logs -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- $status := include "portcullis.envoyStatusListener" . | fromYaml -}}
{{- $_ := set $b.static_resources "listeners" (append $b.static_resources.listeners $status) -}}
{{- $admin := include "portcullis.envoyAdminCluster" . | fromYaml -}}
{{- $_ := set $b.static_resources "clusters" (append $b.static_resources.clusters $admin) -}}
{{- toYaml $b -}}
{{- end -}}

{{- define "portcullis.envoyGrpcAccessLog" -}}
name: envoy.access_loggers.http_grpc
typed_config:
  "@type": type.googleapis.com/envoy.extensions.access_loggers.grpc.v3.HttpGrpcAccessLogConfig
  common_config:
    log_name: portcullis
    transport_api_version: V3
    grpc_service: {envoy_grpc: {cluster_name: portcullis}}
    buffer_flush_interval: 1s
{{- end -}}

{{- define "portcullis.extprocFqdn" -}}
{{- printf "%s.%s.svc.%s" (include "portcullis.extprocServiceName" .) .Release.Namespace .Values.clusterDomain -}}
{{- end -}}

{{/* Where the sidecar topology's Envoy and Portcullis share the gRPC socket. */}}
{{- define "portcullis.grpcSocketDir" -}}/run/portcullis{{- end -}}

{{/* Where channel.tlsSecretName is mounted, in Portcullis and in the separate Envoy. */}}
{{- define "portcullis.channelTlsDir" -}}/etc/portcullis/channel{{- end -}}

{{- define "portcullis.envoyChannelTls" -}}
{{- $dir := include "portcullis.channelTlsDir" . -}}
name: envoy.transport_sockets.tls
typed_config:
  "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext
  sni: {{ include "portcullis.extprocFqdn" . }}
  common_tls_context:
    alpn_protocols: [h2]
    tls_certificates:
    - certificate_chain: {filename: {{ $dir }}/tls.crt}
      private_key: {filename: {{ $dir }}/tls.key}
    validation_context:
      trusted_ca: {filename: {{ $dir }}/ca.crt}
      match_typed_subject_alt_names:
      - san_type: DNS
        matcher: {exact: {{ include "portcullis.extprocFqdn" . }}}
{{- end -}}

{{- define "portcullis.envoyStatusListener" -}}
name: status
address: {socket_address: {address: 0.0.0.0, port_value: 9903}}
filter_chains:
- filters:
  - name: envoy.filters.network.http_connection_manager
    typed_config:
      "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
      stat_prefix: status
      codec_type: HTTP1
      request_headers_timeout: 5s
      route_config:
        name: status
        virtual_hosts:
        - name: status
          domains: ["*"]
          routes:
          # Liveness: answered by a worker thread, so it proves the listeners still serve.
          - match: {path: /healthz, headers: [{name: ":method", string_match: {exact: GET}}]}
            direct_response: {status: 200, body: {inline_string: "ok\n"}}
          # Readiness: the admin's server state (503 once draining on termination).
          - match: {path: /ready, headers: [{name: ":method", string_match: {exact: GET}}]}
            route: {cluster: envoy_admin, timeout: 2s}
          - match: {path: /stats/prometheus, headers: [{name: ":method", string_match: {exact: GET}}]}
            route: {cluster: envoy_admin, timeout: 10s}
          # Nothing else of the admin (it can drain, quit, dump config) is reachable here.
          - match: {prefix: /}
            direct_response: {status: 404}
      http_filters:
      - name: envoy.filters.http.router
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
{{- end -}}

{{- define "portcullis.envoyAdminCluster" -}}
name: envoy_admin
type: STATIC
connect_timeout: 1s
load_assignment:
  cluster_name: envoy_admin
  endpoints:
  - lb_endpoints:
    - endpoint: {address: {socket_address: {address: 127.0.0.1, port_value: 9902}}}
{{- end -}}

{{/* Pod-level security context: both images run as non-root users. */}}
{{- define "portcullis.podSecurityContext" -}}
runAsNonRoot: true
# Lets the Portcullis user read Secret volumes mounted with mode 0440.
fsGroup: 65532
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{- define "portcullis.containerSecurityContext" -}}
runAsNonRoot: true
runAsUser: {{ .uid }}
runAsGroup: {{ .uid }}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
capabilities:
  drop: [ALL]
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{/*
The Portcullis container; pass (dict "root" $ "sidecar" bool).
As a native sidecar (restartable init container) it starts, and is ready, before Envoy, and
is stopped only after Envoy has drained and exited.
*/}}
{{- define "portcullis.portcullisContainer" -}}
{{- $v := .root.Values -}}
- name: portcullis
  image: "{{ $v.image.portcullis.repository }}:{{ $v.image.portcullis.tag | default .root.Chart.AppVersion }}"
  imagePullPolicy: {{ $v.image.portcullis.pullPolicy }}
  {{- if .sidecar }}
  restartPolicy: Always
  {{- end }}
  args:
    - serve
    - --config
    - /etc/portcullis/config/portcullis.yaml
    - --grpc-listen
    {{- if .sidecar }}
    # Only Envoy in this pod, running as the same user, may ask for decisions (and, with
    # interception, for keys): the socket is 0600.
    - unix:{{ include "portcullis.grpcSocketDir" .root }}/grpc.sock
    {{- else }}
    # Mutual TLS or the mesh's authentication: the chart's `server` section of the config.
    - 0.0.0.0:50051
    {{- end }}
    - --admin-listen
    - 0.0.0.0:9901
  env:
    - name: PORTCULLIS_LOG
      value: {{ $v.portcullis.logLevel | quote }}
    - name: PORTCULLIS_LOG_FORMAT
      value: {{ $v.portcullis.logFormat | quote }}
    {{- if $v.store.enabled }}
    # The store's URL, password included (the config's store.url_env names it).
    - name: {{ include "portcullis.storeUrlEnv" .root }}
      valueFrom:
        secretKeyRef: {name: {{ $v.store.urlSecret.name | quote }}, key: {{ $v.store.urlSecret.key | quote }}}
    {{- end }}
    {{- range $v.admin.tokens }}
    {{- if .secretName }}
    # Admin token {{ .name | quote }} (the config's admin.tokens names this variable).
    - name: {{ include "portcullis.adminTokenEnv" .name }}
      valueFrom:
        secretKeyRef: {name: {{ .secretName | quote }}, key: {{ .secretKey | quote }}}
    {{- end }}
    {{- end }}
    {{- with $v.portcullis.env }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
  {{- with $v.portcullis.envFrom }}
  envFrom:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  ports:
    {{- if not .sidecar }}
    - {name: grpc, containerPort: 50051, protocol: TCP}
    {{- end }}
    - {name: admin, containerPort: 9901, protocol: TCP}
  {{- if .sidecar }}
  startupProbe:
    httpGet: {path: /readyz, port: admin}
    periodSeconds: 1
    failureThreshold: 60
  {{- end }}
  readinessProbe:
    httpGet: {path: /readyz, port: admin}
    periodSeconds: 5
    failureThreshold: 2
  livenessProbe:
    httpGet: {path: /healthz, port: admin}
    periodSeconds: 10
    failureThreshold: 3
  {{- if not .sidecar }}
  lifecycle:
    preStop:
      sleep:
        seconds: {{ $v.portcullis.preStopSleepSeconds }}
  {{- end }}
  {{- with $v.portcullis.resources }}
  resources:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  securityContext:
    {{- include "portcullis.containerSecurityContext" (dict "uid" 65532) | nindent 4 }}
  volumeMounts:
    # A directory, not a subPath: the kubelet's ..data swap reaches the file watcher.
    - {name: config, mountPath: /etc/portcullis/config, readOnly: true}
    {{- if .sidecar }}
    - {name: grpc-socket, mountPath: {{ include "portcullis.grpcSocketDir" .root }}}
    {{- else if $v.channel.tlsSecretName }}
    - {name: channel-tls, mountPath: {{ include "portcullis.channelTlsDir" .root }}, readOnly: true}
    {{- end }}
    {{- if $v.interception.enabled }}
    - {name: ca, mountPath: /etc/portcullis/ca, readOnly: true}
    {{- end }}
    {{- range $v.portcullis.secretVolumes }}
    - {name: {{ printf "secret-%s" .name | trunc 63 | trimSuffix "-" }}, mountPath: {{ .mountPath }}, readOnly: true}
    {{- end }}
    {{- with $v.portcullis.extraVolumeMounts }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
{{- end -}}

{{- define "portcullis.portcullisVolumes" -}}
{{- $v := .Values -}}
- name: config
  configMap:
    name: {{ include "portcullis.configMapName" . }}
{{- if eq $v.topology "separate" }}
{{- if $v.channel.tlsSecretName }}
- name: channel-tls
  secret:
    secretName: {{ $v.channel.tlsSecretName }}
    defaultMode: 288      # 0440
    items:
      - {key: tls.crt, path: tls.crt}
      - {key: tls.key, path: tls.key}
      - {key: ca.crt, path: ca.crt}
{{- end }}
{{- else }}
# The gRPC socket, shared with Envoy in this pod only, and Envoy's access log file that
# Portcullis follows (it gives back what it has read). The limit bounds how much Envoy's
# fast path may log while Portcullis is away; past it the kubelet evicts the pod rather
# than let requests go unaudited.
- name: grpc-socket
  emptyDir:
    sizeLimit: {{ $v.envoy.accessLogSizeLimit }}
{{- end }}
{{- if $v.interception.enabled }}
- name: ca
  secret:
    secretName: {{ $v.interception.caSecretName }}
    defaultMode: 288      # 0440
    items:
      - {key: ca.crt, path: ca.crt}
      - {key: ca.key, path: ca.key}
{{- end }}
{{- range $v.portcullis.secretVolumes }}
- name: {{ printf "secret-%s" .name | trunc 63 | trimSuffix "-" }}
  secret:
    secretName: {{ .secretName }}
    defaultMode: {{ .defaultMode | default 288 }}
    {{- with .items }}
    items:
      {{- toYaml . | nindent 6 }}
    {{- end }}
{{- end }}
{{- with $v.portcullis.extraVolumes }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/*
The Envoy container. Its preStop fails /ready, asks every connection to close (HTTP/1
`Connection: close`, HTTP/2 GOAWAY) through the loopback admin, then waits drainSeconds
before the kubelet sends SIGTERM. The envoyproxy/envoy image is Ubuntu-based: bash's
/dev/tcp needs no curl. With a distroless Envoy image the hook fails and the kubelet goes
straight to SIGTERM (no drain).
*/}}
{{- define "portcullis.envoyContainer" -}}
{{- $v := .Values -}}
- name: envoy
  image: "{{ $v.image.envoy.repository }}:{{ $v.image.envoy.tag }}"
  imagePullPolicy: {{ $v.image.envoy.pullPolicy }}
  command: [envoy]
  args:
    - --config-path
    - /etc/envoy/envoy.yaml
    - --disable-hot-restart
    - --concurrency
    - {{ $v.envoy.concurrency | quote }}
    - --drain-time-s
    - {{ $v.envoy.drainSeconds | quote }}
    - --drain-strategy
    - immediate
    - --log-level
    - {{ $v.envoy.logLevel | quote }}
    # The access log file Portcullis follows into the audit trail: written each second.
    - --file-flush-interval-msec
    - "1000"
    - --service-cluster
    - {{ include "portcullis.fullname" . }}
    - --service-node
    - $(POD_NAME)
  env:
    - name: POD_NAME
      valueFrom:
        fieldRef: {fieldPath: metadata.name}
  ports:
    - {name: proxy, containerPort: 10000, protocol: TCP}
    - {name: envoy-status, containerPort: 9903, protocol: TCP}
  readinessProbe:
    httpGet: {path: /ready, port: envoy-status}
    periodSeconds: 5
    failureThreshold: 2
  livenessProbe:
    httpGet: {path: /healthz, port: envoy-status}
    periodSeconds: 10
    failureThreshold: 3
  lifecycle:
    preStop:
      exec:
        command:
          - /bin/bash
          - -c
          - |
            admin() {
              { printf 'POST %s HTTP/1.1\r\nHost: localhost\r\nContent-Length: 0\r\nConnection: close\r\n\r\n' "$1" >&3
                cat <&3 >/dev/null; } 3<>/dev/tcp/127.0.0.1/9902
            }
            admin /healthcheck/fail || true
            admin '/drain_listeners?graceful' || true
            sleep {{ $v.envoy.drainSeconds }}
  {{- with $v.envoy.resources }}
  resources:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  securityContext:
    {{- /* Sidecar: Portcullis's user, the only one its 0600 gRPC socket admits. */}}
    {{- include "portcullis.containerSecurityContext" (dict "uid" (ternary 65532 101 (eq $v.topology "sidecar"))) | nindent 4 }}
  volumeMounts:
    - {name: envoy-config, mountPath: /etc/envoy, readOnly: true}
    - {name: envoy-tmp, mountPath: /tmp}
    {{- if eq $v.topology "sidecar" }}
    - {name: grpc-socket, mountPath: {{ include "portcullis.grpcSocketDir" . }}}
    {{- else if $v.channel.tlsSecretName }}
    - {name: channel-tls, mountPath: {{ include "portcullis.channelTlsDir" . }}, readOnly: true}
    {{- end }}
    {{- if $v.meshMtls.enabled }}
    - {name: mesh-tls, mountPath: /etc/portcullis/mesh, readOnly: true}
    {{- end }}
{{- end -}}

{{- define "portcullis.envoyVolumes" -}}
- name: envoy-config
  configMap:
    name: {{ include "portcullis.fullname" . }}-envoy
- name: envoy-tmp
  emptyDir:
    sizeLimit: 64Mi
{{- if and (eq .Values.topology "separate") .Values.channel.tlsSecretName }}
- name: channel-tls
  secret:
    secretName: {{ .Values.channel.tlsSecretName }}
    defaultMode: 288      # 0440
    items:
      - {key: tls.crt, path: tls.crt}
      - {key: tls.key, path: tls.key}
      - {key: ca.crt, path: ca.crt}
{{- end }}
{{- if .Values.meshMtls.enabled }}
- name: mesh-tls
  secret:
    secretName: {{ .Values.meshMtls.secretName }}
    defaultMode: 288      # 0440
    items:
      - {key: tls.crt, path: gateway.crt}
      - {key: tls.key, path: gateway.key}
      - {key: ca.crt, path: trust-bundle.pem}
{{- end }}
{{- end -}}
