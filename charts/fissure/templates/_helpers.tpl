{{/* vim: set filetype=mustache: */}}

{{/* Chart name, truncated to the 63 characters a DNS label allows. */}}
{{- define "fissure.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/*
Fully qualified app name. If the release name already contains the chart name it is used
as is (so `helm install fissure charts/fissure` gives `fissure`, not `fissure-fissure`).
*/}}
{{- define "fissure.fullname" -}}
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

{{/* Name of a component: <fullname>-<component>. Call with (dict "ctx" $ "component" "mlflow"). */}}
{{- define "fissure.componentName" -}}
{{- printf "%s-%s" (include "fissure.fullname" .ctx) .component | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "fissure.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Labels every object carries. */}}
{{- define "fissure.labels" -}}
helm.sh/chart: {{ include "fissure.chart" . }}
{{ include "fissure.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: fissure
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* Stable labels used in selectors; never add anything that changes between upgrades. */}}
{{- define "fissure.selectorLabels" -}}
app.kubernetes.io/name: {{ include "fissure.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{/* Labels for a component. Call with (dict "ctx" $ "component" "mlflow"). */}}
{{- define "fissure.componentLabels" -}}
{{ include "fissure.labels" .ctx }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "fissure.componentSelectorLabels" -}}
{{ include "fissure.selectorLabels" .ctx }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{/*
Image reference from {registry, repository, tag, digest}. A digest wins over a tag; an empty
tag falls back to the chart's appVersion. Call with (dict "image" .Values.x.image "ctx" $).
*/}}
{{- define "fissure.image" -}}
{{- $repo := .image.repository -}}
{{- if .image.registry -}}
{{- $repo = printf "%s/%s" .image.registry .image.repository -}}
{{- end -}}
{{- if .image.digest -}}
{{- printf "%s@%s" $repo .image.digest -}}
{{- else -}}
{{- printf "%s:%s" $repo (default .ctx.Chart.AppVersion .image.tag | toString) -}}
{{- end -}}
{{- end -}}

{{/* Service account the predictor pods run as (it carries the storage secret for KServe). */}}
{{- define "fissure.serving.serviceAccountName" -}}
{{- if .Values.serving.serviceAccount.create -}}
{{- default (include "fissure.componentName" (dict "ctx" . "component" "serving")) .Values.serving.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serving.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* Service account the Argo workflows' pods run as: argo.serviceAccount.name, else <fullname>-workflow. */}}
{{- define "fissure.argo.serviceAccountName" -}}
{{- default (include "fissure.componentName" (dict "ctx" . "component" "workflow")) .Values.argo.serviceAccount.name -}}
{{- end -}}

{{/* Models that are switched on, as a sorted list of names. */}}
{{- define "fissure.enabledModels" -}}
{{- $names := list -}}
{{- range $name, $m := .Values.models -}}
{{- if $m.enabled -}}{{- $names = append $names $name -}}{{- end -}}
{{- end -}}
{{- toJson (sortAlpha $names) -}}
{{- end -}}

{{/* Name of the Service KServe creates for a model's predictor. */}}
{{- define "fissure.predictorService" -}}
{{- printf "%s-predictor" . -}}
{{- end -}}

{{/* In-cluster endpoints and secret references, external or bundled. */}}
{{- define "fissure.postgresql.host" -}}
{{- if .Values.postgresql.enabled -}}
{{- include "fissure.componentName" (dict "ctx" . "component" "postgresql") -}}
{{- else -}}
{{- required "mlflow.backendStore.external.host is required when postgresql.enabled is false" .Values.mlflow.backendStore.external.host -}}
{{- end -}}
{{- end -}}

{{- define "fissure.postgresql.port" -}}
{{- if .Values.postgresql.enabled -}}5432{{- else -}}{{- .Values.mlflow.backendStore.external.port -}}{{- end -}}
{{- end -}}

{{- define "fissure.postgresql.secretName" -}}
{{- if .Values.postgresql.enabled -}}
{{- required "postgresql.auth.existingSecret is required: create a Secret with the database password (see docs/deploy-kubernetes.md); this chart never invents passwords" .Values.postgresql.auth.existingSecret -}}
{{- else -}}
{{- required "mlflow.backendStore.external.existingSecret is required: the Secret that holds the database password" .Values.mlflow.backendStore.external.existingSecret -}}
{{- end -}}
{{- end -}}

{{- define "fissure.postgresql.passwordKey" -}}
{{- if .Values.postgresql.enabled -}}{{- .Values.postgresql.auth.passwordKey -}}{{- else -}}{{- .Values.mlflow.backendStore.external.passwordKey -}}{{- end -}}
{{- end -}}

{{- define "fissure.postgresql.user" -}}
{{- if .Values.postgresql.enabled -}}{{- .Values.postgresql.auth.username -}}{{- else -}}{{- .Values.mlflow.backendStore.external.username -}}{{- end -}}
{{- end -}}

{{- define "fissure.postgresql.database" -}}
{{- if .Values.postgresql.enabled -}}{{- .Values.postgresql.auth.database -}}{{- else -}}{{- .Values.mlflow.backendStore.external.database -}}{{- end -}}
{{- end -}}

{{- define "fissure.s3.endpoint" -}}
{{- if .Values.minio.enabled -}}
{{- printf "http://%s:9000" (include "fissure.componentName" (dict "ctx" . "component" "minio")) -}}
{{- else -}}
{{- .Values.mlflow.artifacts.external.endpointUrl -}}
{{- end -}}
{{- end -}}

{{- define "fissure.s3.secretName" -}}
{{- if .Values.minio.enabled -}}
{{- required "minio.auth.existingSecret is required: create a Secret with the MinIO root user and password (see docs/deploy-kubernetes.md); this chart never invents passwords" .Values.minio.auth.existingSecret -}}
{{- else -}}
{{- required "mlflow.artifacts.external.existingSecret is required: the Secret with the S3 access key id and secret" .Values.mlflow.artifacts.external.existingSecret -}}
{{- end -}}
{{- end -}}

{{- define "fissure.s3.accessKeyKey" -}}
{{- if .Values.minio.enabled -}}{{- .Values.minio.auth.rootUserKey -}}{{- else -}}{{- .Values.mlflow.artifacts.external.accessKeyIdKey -}}{{- end -}}
{{- end -}}

{{- define "fissure.s3.secretKeyKey" -}}
{{- if .Values.minio.enabled -}}{{- .Values.minio.auth.rootPasswordKey -}}{{- else -}}{{- .Values.mlflow.artifacts.external.secretAccessKeyKey -}}{{- end -}}
{{- end -}}

{{- define "fissure.mlflow.trackingUri" -}}
{{- if .Values.mlflow.enabled -}}
{{- printf "http://%s.%s.svc:%d" (include "fissure.componentName" (dict "ctx" . "component" "mlflow")) .Release.Namespace (int .Values.mlflow.service.port) -}}
{{- else -}}
{{- .Values.mlflow.externalTrackingUri -}}
{{- end -}}
{{- end -}}

{{/* Restricted-profile container securityContext shared by every container we own. */}}
{{- define "fissure.containerSecurityContext" -}}
{{- toYaml .Values.containerSecurityContext -}}
{{- end -}}

{{/* Name of a ServingRuntime: servingRuntime.names.<runtime>, else <fullname>-<runtime>. Call with (dict "ctx" $ "runtime" "torchserve"). */}}
{{- define "fissure.servingRuntimeNameOf" -}}
{{- default (include "fissure.componentName" (dict "ctx" .ctx "component" .runtime)) (index .ctx.Values.servingRuntime.names .runtime) -}}
{{- end -}}

{{/* Name of the ServingRuntime the InferenceServices use (serving.runtime). */}}
{{- define "fissure.servingRuntimeName" -}}
{{- include "fissure.servingRuntimeNameOf" (dict "ctx" . "runtime" .Values.serving.runtime) -}}
{{- end -}}

{{/* Metrics port of a runtime ("torchserve" or "inprocess"): TorchServe's, or the front's REST port. */}}
{{- define "fissure.metricsPort" -}}
{{- if eq . "torchserve" -}}8082{{- else -}}8080{{- end -}}
{{- end -}}

{{/*
The handler of a probe of the front's REST port. Call with (dict "path" "/v2/health/ready"
"probe" <values> "exec" bool); exec runs the same HTTP check inside the container (the image
has no curl).
*/}}
{{- define "fissure.probe" -}}
{{- if .exec -}}
exec:
  command:
    - python
    - -c
    - import urllib.request as u; u.urlopen('http://127.0.0.1:8080{{ .path }}', timeout={{ .probe.timeoutSeconds }})
{{- else -}}
httpGet:
  path: {{ .path }}
  port: 8080
{{- end }}
{{- end -}}

{{/*
Orderings the serving values must keep; fails with a message that names the values.
- The front's TorchServe timeout is shorter than the route's and KServe's, so a slow call
  ends with the server's own 504, not a gateway's cut mid-way.
- Standard mode: the grace period covers the preStop sleep and the drain, so the kubelet
  never SIGKILLs a pod that is still finishing requests.
*/}}
{{- define "fissure.checkServingValues" -}}
{{- $sr := .Values.servingRuntime -}}
{{- $backend := int $sr.backendTimeoutSeconds -}}
{{- if and (ne .Values.route.type "none") (le (int .Values.route.timeoutSeconds) $backend) -}}
{{- fail (printf "route.timeoutSeconds (%d) must be greater than servingRuntime.backendTimeoutSeconds (%d): the gateway would cut requests the server is still waiting on" (int .Values.route.timeoutSeconds) $backend) -}}
{{- end -}}
{{- range $name := include "fissure.enabledModels" . | fromJsonArray -}}
{{- $timeout := int (index $.Values.models $name).timeout -}}
{{- if le $timeout $backend -}}
{{- fail (printf "models.%s.timeout (%d) must be greater than servingRuntime.backendTimeoutSeconds (%d)" $name $timeout $backend) -}}
{{- end -}}
{{- end -}}
{{- $sd := $sr.shutdown -}}
{{- if and (ne .Values.kserve.deploymentMode "Knative") (le (int $sd.terminationGracePeriodSeconds) (add (int $sd.preStopSleepSeconds) (int $sd.drainSeconds))) -}}
{{- fail (printf "servingRuntime.shutdown.terminationGracePeriodSeconds (%d) must be greater than preStopSleepSeconds (%d) + drainSeconds (%d), or the kubelet kills pods mid-drain" (int $sd.terminationGracePeriodSeconds) (int $sd.preStopSleepSeconds) (int $sd.drainSeconds)) -}}
{{- end -}}
{{- end -}}

{{/* ---------------------------------------------------------------- the API (fissure api) */}}

{{/* Name of the API's objects (Deployment, Service, route): <fullname>-api. */}}
{{- define "fissure.api.name" -}}
{{- include "fissure.componentName" (dict "ctx" . "component" "api") -}}
{{- end -}}

{{/*
FISSURE_INFERENCE_URL: api.inference.url, or the predictors' in-cluster REST address. KServe
names each predictor's Service <isvc>-predictor (port 80, REST, in both deployment modes), and
the InferenceService of a model is <release>-<model>, so the URL carries a {model} placeholder
that the API's client fills with the model each request names.
*/}}
{{- define "fissure.api.inferenceUrl" -}}
{{- if .Values.api.inference.url -}}
{{- .Values.api.inference.url -}}
{{- else -}}
{{- printf "http://%s.%s.svc.cluster.local" (include "fissure.predictorService" (printf "%s-{model}" .Release.Name)) .Release.Namespace -}}
{{- end -}}
{{- end -}}

{{/*
FISSURE_DATABASE_URL without a password: libpq (psycopg) reads it from PGPASSWORD, which
comes from the Secret, so any character in it is safe and nothing secret is in the manifest.
*/}}
{{- define "fissure.api.databaseUrl" -}}
{{- printf "postgresql+psycopg://%s@%s:%s/%s" (include "fissure.postgresql.user" .) (include "fissure.postgresql.host" .) (include "fissure.postgresql.port" .) .Values.api.database.name -}}
{{- end -}}

{{/* Values the API needs to make sense together; fails with a message that names them. */}}
{{- define "fissure.api.checkValues" -}}
{{- $api := .Values.api -}}
{{- if and (not $api.inference.url) (not (include "fissure.enabledModels" . | fromJsonArray)) -}}
{{- fail "api.enabled is true but no model is enabled: enable a model or set api.inference.url" -}}
{{- end -}}
{{- if and (not $api.inference.url) (eq .Values.kserve.deploymentMode "Knative") (eq .Values.kserve.knativeProtocol "grpc") -}}
{{- fail "the API calls the models over REST, but kserve.knativeProtocol=grpc serves gRPC only: set api.inference.url, or api.enabled=false" -}}
{{- end -}}
{{- if and (not $api.database.existingSecret) (eq $api.database.name (include "fissure.postgresql.database" .)) -}}
{{- fail (printf "api.database.name (%s) is MLflow's database: the API needs its own (both keep an alembic_version table)" $api.database.name) -}}
{{- end -}}
{{- if le (int $api.shutdown.terminationGracePeriodSeconds) (int $api.shutdown.preStopSleepSeconds) -}}
{{- fail (printf "api.shutdown.terminationGracePeriodSeconds (%d) must be greater than api.shutdown.preStopSleepSeconds (%d), or the kubelet kills the API before requests in flight finish" (int $api.shutdown.terminationGracePeriodSeconds) (int $api.shutdown.preStopSleepSeconds)) -}}
{{- end -}}
{{- if and .Values.minio.enabled (hasPrefix "s3://" $api.blobs.url) -}}
{{- $bucket := (urlParse $api.blobs.url).host -}}
{{- if not (has $bucket .Values.minio.buckets) -}}
{{- fail (printf "api.blobs.url is in bucket %q, which is not in minio.buckets: add it there so it is created" $bucket) -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* ---------------------------------------------------------------- capabilities */}}

{{/*
"true" when helm asked a real API server for its APIs (install, upgrade, template --validate,
Argo CD): discovery lists every Kind as <group/version>/<Kind>, so "v1/Service" is there.
`helm template`'s offline set holds only group/versions (and what --api-versions adds).
*/}}
{{- define "fissure.capabilities.live" -}}
{{- if .Capabilities.APIVersions.Has "v1/Service" -}}true{{- end -}}
{{- end -}}

{{/*
"true" when the cluster serves a Kind. Call with (dict "ctx" $ "api" "<group>/<version>/<Kind>").
A live cluster must list the Kind itself (a group/version with only some of its CRDs installed is
not enough); offline, `--api-versions <group>/<version>` (or .../<Kind>) says so.
*/}}
{{- define "fissure.hasAPI" -}}
{{- $caps := .ctx.Capabilities.APIVersions -}}
{{- if $caps.Has .api -}}true
{{- else if and (not (include "fissure.capabilities.live" .ctx)) ($caps.Has (dir .api)) -}}true
{{- end -}}
{{- end -}}

{{/*
Fails, naming the missing CRD and the value that turns the feature off, when a live cluster
does not serve a Kind the values ask for. Offline (`helm template` without --validate) there is
no cluster to ask, so the object is rendered unchecked. Call with (dict "ctx" $ "api"
"<group>/<version>/<Kind>" "from" "KServe v0.20" "off" "<the value that turns it off>").
*/}}
{{- define "fissure.requireAPI" -}}
{{- if and (include "fissure.capabilities.live" .ctx) (not (include "fissure.hasAPI" .)) -}}
{{- fail (printf "this cluster does not serve %s (%s): install the CRDs of %s, or set %s" (base .api) (dir .api) .from .off) -}}
{{- end -}}
{{- end -}}

{{/* ---------------------------------------------------------------- names */}}

{{/*
Name of a model's (champion) InferenceService: <release>-<model>, so that two releases share a
namespace. KServe names its predictor Service <isvc>-predictor. The name clients use in URLs
(/v1/models/<model>:predict, /v2/models/<model>/infer) is the served model's, from its MAR,
and stays <model>: the runtime never takes the InferenceService's name.
Call with (dict "ctx" $ "model" <name>).
*/}}
{{- define "fissure.isvcName" -}}
{{- $isvc := printf "%s-%s" .ctx.Release.Name .model -}}
{{- if gt (len $isvc) 53 -}}
{{- fail (printf "the InferenceService of %s would be named %s (%d characters); KServe's %s-predictor Service must fit 63: use a shorter release or model name" .model $isvc (len $isvc) $isvc) -}}
{{- end -}}
{{- $isvc -}}
{{- end -}}

{{- /* Names the promotion controller derives from --release (fissure.promotion.kubernetes). */}}
{{- define "fissure.challengerName" -}}
{{- printf "%s-%s-challenger" .ctx.Release.Name .model -}}
{{- end -}}
{{- define "fissure.canaryRouteName" -}}
{{- printf "%s-%s-canary" .ctx.Release.Name .model -}}
{{- end -}}

{{/* A model's InferenceServices: its champion, and its challenger with canary.enabled in Standard mode (JSON list). Call with (dict "ctx" $ "model" <name>). */}}
{{- define "fissure.modelIsvcs" -}}
{{- $names := list (include "fissure.isvcName" .) -}}
{{- if and .ctx.Values.canary.enabled (ne .ctx.Values.kserve.deploymentMode "Knative") -}}
{{- $names = append $names (include "fissure.challengerName" .) -}}
{{- end -}}
{{- toJson $names -}}
{{- end -}}

{{/* Every InferenceService of the enabled models (JSON list). */}}
{{- define "fissure.isvcNames" -}}
{{- $names := list -}}
{{- range $model := include "fissure.enabledModels" . | fromJsonArray -}}
{{- $names = concat $names (include "fissure.modelIsvcs" (dict "ctx" $ "model" $model) | fromJsonArray) -}}
{{- end -}}
{{- toJson $names -}}
{{- end -}}

{{/* ---------------------------------------------------------------- workload knobs */}}

{{/*
Pod template metadata: the selector labels, then podLabels (which never replace them), and
podAnnotations. Call with (dict "ctx" $ "component" "api" "v" .Values.api "annotations" <dict>).
*/}}
{{- define "fissure.podMetadata" -}}
{{- $labels := merge (include "fissure.componentSelectorLabels" . | fromYaml) (deepCopy (default dict .v.podLabels)) -}}
labels:
  {{- toYaml $labels | nindent 2 }}
{{- $annotations := merge (deepCopy (default dict .annotations)) (default dict .v.podAnnotations) }}
{{- with $annotations }}
annotations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end -}}

{{/*
Where a workload's pods run: priorityClassName, nodeSelector, affinity, tolerations and
topologySpreadConstraints from its values block (affinity and topologySpreadConstraints go
through tpl, so they can use {{ .Release.Name }}). Call with (dict "ctx" $ "v" .Values.api).
*/}}
{{- define "fissure.podScheduling" -}}
{{- with .v.priorityClassName }}
priorityClassName: {{ . | quote }}
{{- end }}
{{- with .v.nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .v.affinity }}
affinity:
  {{- tpl (toYaml .) $.ctx | nindent 2 }}
{{- end }}
{{- with .v.tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .v.topologySpreadConstraints }}
topologySpreadConstraints:
  {{- tpl (toYaml .) $.ctx | nindent 2 }}
{{- end }}
{{- end -}}

{{/*
A probe from its values ({enabled, initialDelaySeconds, periodSeconds, timeoutSeconds,
failureThreshold}) and its handler (a YAML string); nothing when enabled is false.
Call with (dict "name" "readinessProbe" "probe" <values> "handler" <yaml>).
*/}}
{{- define "fissure.probeWith" -}}
{{- if ne (toString .probe.enabled) "false" }}
{{ .name }}:
  {{- .handler | nindent 2 }}
  {{- with .probe.initialDelaySeconds }}
  initialDelaySeconds: {{ . }}
  {{- end }}
  periodSeconds: {{ .probe.periodSeconds }}
  timeoutSeconds: {{ .probe.timeoutSeconds }}
  failureThreshold: {{ .probe.failureThreshold }}
{{- end }}
{{- end -}}

{{- /* A model's REST paths for an HTTPRoute rule's matches: KServe v1 and Open Inference
Protocol v2, and nothing else of the server (not /v2/repository/..., /metrics or /v2/health).
v1 paths are Exact: a PathPrefix matches whole segments, so "/v1/models/<name>" would miss
"/v1/models/<name>:predict". */}}
{{- define "fissure.restMatches" -}}
- path:
    type: Exact
    value: /v1/models/{{ . }}
- path:
    type: Exact
    value: /v1/models/{{ . }}:predict
- path:
    type: Exact
    value: /v1/models/{{ . }}:explain
- path:
    type: PathPrefix
    value: /v2/models/{{ . }}
{{- end -}}
