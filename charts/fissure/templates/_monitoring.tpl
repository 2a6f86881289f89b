{{/* vim: set filetype=mustache: */}}
{{/*
Monitoring: the Prometheus operator's objects (PodMonitor, ServiceMonitor, PrometheusRule) and
the Grafana dashboards' ConfigMaps. See values.yaml's `monitoring:` block.
*/}}

{{/*
"true" when a monitoring object is rendered: enabled true (the cluster must serve its Kind:
fissure.requireAPI fails otherwise), or auto and the cluster serves it (helm template: pass
--api-versions monitoring.coreos.com/v1). Call with (dict "ctx" $ "enabled" <value> "kind"
"PodMonitor" "value" "monitoring.podMonitors.enabled").
*/}}
{{- define "fissure.monitoring.wanted" -}}
{{- $on := toString .enabled -}}
{{- $api := printf "monitoring.coreos.com/v1/%s" .kind -}}
{{- if eq $on "true" -}}
{{- include "fissure.requireAPI" (dict "ctx" .ctx "api" $api "from" "the Prometheus operator" "off" (printf "%s=false (or auto: only when the cluster has it)" .value)) -}}
true
{{- else if and (eq $on "auto") (include "fissure.hasAPI" (dict "ctx" .ctx "api" $api)) -}}
true
{{- end -}}
{{- end -}}

{{/*
"true" when PodMonitors are rendered: enabled true, or auto with the operator's API present and
no ServiceMonitors asked for instead. Both true at once would scrape everything twice: refused.
*/}}
{{- define "fissure.monitoring.podMonitors" -}}
{{- $pm := toString .Values.monitoring.podMonitors.enabled -}}
{{- $sm := .Values.monitoring.serviceMonitors.enabled -}}
{{- if and (eq $pm "true") $sm -}}
{{- fail "monitoring.podMonitors.enabled and monitoring.serviceMonitors.enabled are both true: every target would be scraped twice; choose one" -}}
{{- end -}}
{{- if not (and (eq $pm "auto") $sm) -}}
{{- include "fissure.monitoring.wanted" (dict "ctx" . "enabled" $pm "kind" "PodMonitor" "value" "monitoring.podMonitors.enabled") -}}
{{- end -}}
{{- end -}}

{{- define "fissure.monitoring.serviceMonitors" -}}
{{- include "fissure.monitoring.wanted" (dict "ctx" . "enabled" .Values.monitoring.serviceMonitors.enabled "kind" "ServiceMonitor" "value" "monitoring.serviceMonitors.enabled") -}}
{{- end -}}

{{- define "fissure.monitoring.prometheusRule" -}}
{{- include "fissure.monitoring.wanted" (dict "ctx" . "enabled" .Values.monitoring.prometheusRule.enabled "kind" "PrometheusRule" "value" "monitoring.prometheusRule.enabled") -}}
{{- end -}}

{{/* Labels of every monitoring object: the component's, `release` (kube-prometheus-stack's selector), extra ones. Call with (dict "ctx" $ "component" "serving"). */}}
{{- define "fissure.monitoring.labels" -}}
{{ include "fissure.componentLabels" . }}
{{- with .ctx.Values.monitoring.release }}
release: {{ . | quote }}
{{- end }}
{{- with .ctx.Values.monitoring.labels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* Scrape interval and timeout of an endpoint. */}}
{{- define "fissure.monitoring.scrape" -}}
interval: {{ .Values.monitoring.interval }}
scrapeTimeout: {{ .Values.monitoring.scrapeTimeout }}
{{- end -}}

{{/*
The predictor pods' metrics endpoints: (port, path, what). The front's own /metrics on 8080
(requests, latency, model behaviour, drift) always; TorchServe's on 8082 with its runtime.
*/}}
{{- define "fissure.monitoring.predictorPorts" -}}
{{- $ports := list (dict "port" 8080 "name" "front") -}}
{{- if eq .Values.serving.runtime "torchserve" -}}
{{- $ports = append $ports (dict "port" 8082 "name" "torchserve") -}}
{{- end -}}
{{- toJson $ports -}}
{{- end -}}
