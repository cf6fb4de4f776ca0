{{/* Cross-field checks the JSON schema cannot express; rendered once, from the config map. */}}
{{- define "portcullis.validate" -}}
{{- $v := .Values -}}
{{- if and (eq $v.topology "separate") (not $v.envoy.enabled) $v.interception.enabled -}}
{{- fail "interception.enabled needs this chart's Envoy (envoy.enabled=true): it is the Envoy that presents the minted certificates" -}}
{{- end -}}
{{- if lt (int $v.terminationGracePeriodSeconds) (add (int $v.envoy.drainSeconds) 5 | int) -}}
{{- fail (printf "terminationGracePeriodSeconds (%d) must exceed envoy.drainSeconds (%d) by at least 5 s" (int $v.terminationGracePeriodSeconds) (int $v.envoy.drainSeconds)) -}}
{{- end -}}
{{- if and (eq $v.topology "separate") (lt (int $v.terminationGracePeriodSeconds) (add (int $v.portcullis.preStopSleepSeconds) 10 | int)) -}}
{{- fail (printf "terminationGracePeriodSeconds (%d) must cover portcullis.preStopSleepSeconds (%d) plus Portcullis's 10 s stream drain" (int $v.terminationGracePeriodSeconds) (int $v.portcullis.preStopSleepSeconds)) -}}
{{- end -}}
{{- if and $v.autoscaling.enabled (gt (int $v.autoscaling.minReplicas) (int $v.autoscaling.maxReplicas)) -}}
{{- fail "autoscaling.minReplicas must not exceed autoscaling.maxReplicas" -}}
{{- end -}}
{{- /* The schema refuses the common spellings already (so that `helm lint` fails too); this
       sees the parsed config. */ -}}
{{- if and $v.store.enabled (not $v.existingConfigMap) -}}
{{- $cfg := include "portcullis.configSource" . | fromYaml -}}
{{- range $section := list "policies" "secrets" -}}
{{- if and (not (hasKey $cfg "Error")) (hasKey $cfg $section) -}}
{{- fail (printf "config.%s: with store.enabled, policies and secrets come from the store and Portcullis refuses a config file that has them. Remove them from config and write them into the store with `portcullis apply -f FILE --store URL`, or through the admin API (docs/kubernetes.md, \"A fleet on PostgreSQL\")" $section) -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- $envs := dict -}}
{{- range $v.portcullis.env -}}
{{- $_ := set $envs .name "portcullis.env" -}}
{{- end -}}
{{- if $v.store.enabled -}}
{{- $name := include "portcullis.storeUrlEnv" $ -}}
{{- if hasKey $envs $name -}}
{{- fail (printf "portcullis.env: %s is set by the chart from store.urlSecret" $name) -}}
{{- end -}}
{{- end -}}
{{- $names := dict -}}
{{- range $v.admin.tokens -}}
{{- if hasKey $names .name -}}
{{- fail (printf "admin.tokens: the name %q is used twice" .name) -}}
{{- end -}}
{{- $_ := set $names .name true -}}
{{- if .secretName -}}
{{- $env := include "portcullis.adminTokenEnv" .name -}}
{{- if hasKey $envs $env -}}
{{- fail (printf "admin.tokens: %q would be passed as %s, which %s already sets: rename the token" .name $env (get $envs $env)) -}}
{{- end -}}
{{- $_ := set $envs $env (printf "admin token %q" .name) -}}
{{- end -}}
{{- end -}}
{{- if eq $v.topology "separate" -}}
{{- if and $v.channel.tlsSecretName $v.channel.meshAuthenticated -}}
{{- fail "channel: set tlsSecretName (Portcullis checks Envoy's client certificate) or meshAuthenticated (a mesh sidecar does), not both" -}}
{{- end -}}
{{- if and $v.envoy.enabled (not $v.channel.tlsSecretName) -}}
{{- fail "channel.tlsSecretName: the separate topology needs mutual TLS between Envoy and Portcullis (a Secret with tls.crt, tls.key and ca.crt): whoever reaches a plaintext gRPC port gets decisions with injected credentials" -}}
{{- end -}}
{{- if and (not $v.envoy.enabled) (not $v.channel.tlsSecretName) (not $v.channel.meshAuthenticated) -}}
{{- fail "channel: with envoy.enabled=false set meshAuthenticated (a mesh sidecar authenticates callers, docs/istio.md) or tlsSecretName" -}}
{{- end -}}
{{- end -}}
{{- if and $v.networkPolicy.enabled (eq $v.topology "separate") (not $v.envoy.enabled) (not $v.networkPolicy.extprocFrom) -}}
{{- fail "networkPolicy.extprocFrom must name Portcullis's clients when envoy.enabled=false (nothing could reach its gRPC port)" -}}
{{- end -}}
{{- end -}}
