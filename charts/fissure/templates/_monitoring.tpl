{{/* vim: set filetype=mustache: */}}
{{/*
Monitoring: the Prometheus operator's objects (PodMonitor, ServiceMonitor, PrometheusRule) and
the Grafana dashboards' ConfigMaps. See values.yaml's `monitoring:` block.
*/}}

{{/* Whether the cluster serves the Prometheus operator's API (helm template: --api-versions monitoring.coreos.com/v1). */}}
{{- define "fissure.monitoring.hasApi" -}}
{{- if .Capabilities.APIVersions.Has "monitoring.coreos.com/v1" -}}true{{- end -}}
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
{{- if or (eq $pm "true") (and (eq $pm "auto") (not $sm) (include "fissure.monitoring.hasApi" .)) -}}true{{- end -}}
{{- end -}}

{{- define "fissure.monitoring.prometheusRule" -}}
{{- $on := toString .Values.monitoring.prometheusRule.enabled -}}
{{- if or (eq $on "true") (and (eq $on "auto") (include "fissure.monitoring.hasApi" .)) -}}true{{- end -}}
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
