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
{{- if and $v.networkPolicy.enabled (eq $v.topology "separate") (not $v.envoy.enabled) (not $v.networkPolicy.extprocFrom) -}}
{{- fail "networkPolicy.extprocFrom must name Portcullis's clients when envoy.enabled=false (nothing could reach its gRPC port)" -}}
{{- end -}}
{{- end -}}
