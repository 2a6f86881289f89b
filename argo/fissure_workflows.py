"""fissure's Argo Workflows, written with hera and exported to committed YAML (`make workflows`).

Objects (one YAML file each):

  fissure-train             WorkflowTemplate: `dvc pull` / `dvc repro` / `dvc push` for one revision.
  fissure-retrain           WorkflowTemplate: ingest the feedback -> retrain (DVC, remote pull/push)
                            -> per model: gate -> package the MAR to the model store -> canary
                            promotion; an exit handler rolls back whatever canary is in flight.
  fissure-retrain-weekly    CronWorkflow: fissure-retrain on a schedule.
  fissure-retrain-feedback  CronWorkflow: hourly, fissure-retrain with min-feedback=N: it stops
                            after the ingest step unless N judged items arrived since the newest
                            registered model version.
  rbac (argo/ only)         ServiceAccount fissure-workflow + Role + RoleBinding; the chart has
                            templates/argo-rbac.yaml, kept in step by tests/argo.

Two renderings come out of the same objects:

  argo/*.yaml                     plain Argo YAML for a release named `fissure` with the chart's
                                  default values (`argo submit --from workflowtemplate/...`,
                                  `argo lint`); argo/ is what people read and lint.
  charts/fissure/files/argo/*.yaml the chart's copy (templates/argo-workflows.yaml renders it with
                                  `tpl` when argo.enabled): Argo's own `{{...}}` escaped, and
                                  every chart-owned value (the objects' own names, which are
                                  <fullname>-train etc., the names of the ConfigMap, Secrets and
                                  service account, image, repository) a Helm expression.

Rules the objects keep (tests/argo checks them): workflow parameters reach scripts only as
environment variables, never inside the script text; the repository is fixed by the chart;
every container, Argo's own init and wait included, has the restricted securityContext.

    python argo/fissure_workflows.py           # write both renderings
    python argo/fissure_workflows.py --check   # exit 1 when a committed file differs
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

import yaml
from hera.workflows import DAG, Container, CronWorkflow, Parallel, Parameter, Steps, Task, WorkflowTemplate
from hera.workflows import models as m

REPO = Path(__file__).resolve().parent.parent
PLAIN_DIR = REPO / "argo"
CHART_DIR = REPO / "charts" / "fissure" / "files" / "argo"

# Chart-owned values: a placeholder in the objects, replaced by the default (release `fissure`,
# default values) in argo/ and by the Helm expression in the chart's copy.
def _component(name: str) -> str:
    return 'include "fissure.componentName" (dict "ctx" $ "component" "%s")' % name


CHART_VALUES: dict[str, tuple[str, str]] = {
    "release": ("fissure", ".Release.Name"),
    # the objects' own names are the release's (<release>-train for a release not named
    # fissure), so two releases can run Argo in one namespace
    "train_name": ("fissure-train", _component("train")),
    "retrain_name": ("fissure-retrain", _component("retrain")),
    "weekly_name": ("fissure-retrain-weekly", _component("retrain-weekly")),
    "feedback_name": ("fissure-retrain-feedback", _component("retrain-feedback")),
    "config_map": ("fissure-config", _component("config")),
    "service_account": ("fissure-workflow", 'include "fissure.argo.serviceAccountName" $'),
    "image": ("ghcr.io/fissure/fissure-training:0.1.0", 'include "fissure.image" (dict "image" .Values.argo.image "ctx" $)'),
    "repo": ("https://github.com/fissure/fissure.git", ".Values.argo.repo"),
    "revision": ("main", ".Values.argo.revision"),
    "s3_secret": ("fissure-minio", 'include "fissure.s3.secretName" $'),
    "s3_access_key": ("root-user", 'include "fissure.s3.accessKeyKey" $'),
    "s3_secret_key": ("root-password", 'include "fissure.s3.secretKeyKey" $'),
    "db_secret": ("fissure-postgresql", 'include "fissure.postgresql.secretName" $'),
    "db_password_key": ("password", 'include "fissure.postgresql.passwordKey" $'),
    "api_token_secret": ("fissure-pipeline-token", ".Values.argo.apiToken.existingSecret"),
    "api_token_key": ("token", ".Values.argo.apiToken.key"),
    "workspace_size": ("20Gi", ".Values.argo.workspaceSize"),
    "schedule": ("0 3 * * 1", ".Values.argo.schedule"),
    "feedback_schedule": ("17 * * * *", ".Values.argo.feedbackTrigger.schedule"),
    "min_feedback": ("50", ".Values.argo.feedbackTrigger.minFeedback"),
}
CHART_ONLY = {"namespace": ".Release.Namespace"}  # argo/ leaves these out (kubectl -n / argo -n)
# Chart-owned objects: a placeholder standing for a whole map (the default here, `toJson` of the
# value in the chart), so a user's keys (nvidia.com/gpu, ephemeral-storage) pass through as given.
TRAIN_RESOURCES = {"requests": {"cpu": "2", "memory": "4Gi"}, "limits": {"memory": "8Gi"}}
CHART_OBJECTS: dict[str, tuple[dict, str]] = {
    "train_resources": (TRAIN_RESOURCES, ".Values.argo.trainResources"),
}


def _ph(key: str) -> str:
    assert key in CHART_VALUES or key in CHART_ONLY or key in CHART_OBJECTS, key
    return f"@@{key}@@"


MODELS = ["crack-classifier", "crack-segmenter"]
ACTUATORS = ["kserve-gateway", "kserve-knative"]
WORK = "/work"
SRC = f"{WORK}/src"
OUT = "/tmp/outputs"  # where steps write their output parameters

POD_SECURITY = m.PodSecurityContext(
    run_as_non_root=True, run_as_user=1000, run_as_group=1000, fs_group=1000,
    seccomp_profile=m.SeccompProfile(type="RuntimeDefault"),
)
CONTAINER_SECURITY = m.SecurityContext(
    run_as_non_root=True, allow_privilege_escalation=False, read_only_root_filesystem=True,
    capabilities=m.Capabilities(drop=["ALL"]), seccomp_profile=m.SeccompProfile(type="RuntimeDefault"),
)
_SC = CONTAINER_SECURITY.model_dump(by_alias=True, exclude_none=True)
# Argo adds an `init` and a `wait` container to every step's pod; the controller's own defaults
# give them no securityContext, so the restricted one is patched in by name.
EXECUTOR_PATCH = json.dumps({"initContainers": [{"name": "init", "securityContext": _SC}],
                             "containers": [{"name": "wait", "securityContext": _SC}]}, sort_keys=True)


def _labels(component: str) -> dict[str, str]:
    return {"app.kubernetes.io/name": "fissure", "app.kubernetes.io/instance": _ph("release"),
            "app.kubernetes.io/component": component, "app.kubernetes.io/part-of": "fissure"}


def _secret(name: str, secret: str, key: str, optional: bool = False) -> m.EnvVar:
    return m.EnvVar(name=name, value_from=m.EnvVarSource(secret_key_ref=m.SecretKeySelector(
        name=_ph(secret), key=_ph(key), optional=optional or None)))


def _env(**values: str) -> list[m.EnvVar]:
    """Parameters reach the script as environment variables: Argo substitutes `{{...}}` here,
    in an env value, and the script reads "$NAME", so no value ever becomes shell text."""
    return [m.EnvVar(name=k, value=v) for k, v in values.items()]


def _base_env() -> list[m.EnvVar]:
    return [
        m.EnvVar(name="HOME", value="/tmp"),
        m.EnvVar(name="FISSURE_HOME", value=f"{WORK}/state"),
        # dvc keeps state under a shared site cache (/var/tmp/dvc), which the read-only root
        # filesystem refuses ("[Errno 30] Read-only file system"): the pod's /tmp instead
        m.EnvVar(name="DVC_SITE_CACHE_DIR", value="/tmp/dvc-site-cache"),
        _secret("AWS_ACCESS_KEY_ID", "s3_secret", "s3_access_key"),
        _secret("AWS_SECRET_ACCESS_KEY", "s3_secret", "s3_secret_key"),
    ]


def _script(body: str) -> list[str]:
    return [body.strip("\n") + "\n"]


def _container(name: str, script: str, *, env: list[m.EnvVar] = (), inputs=None, outputs=None,
               config_map: str | None = None, cpu: str = "500m", memory: str = "1Gi",
               memory_limit: str = "4Gi", extra_mounts: list[m.VolumeMount] = (), working_dir: str = SRC) -> Container:
    return Container(
        name=name,
        image=_ph("image"),
        image_pull_policy="IfNotPresent",
        working_dir=working_dir,
        command=["bash", "-euo", "pipefail", "-c"],
        args=_script(script),
        env=[*_base_env(), *env],
        env_from=[m.EnvFromSource(config_map_ref=m.ConfigMapEnvSource(name=config_map or _ph("config_map")))],
        inputs=inputs,
        outputs=outputs,
        resources=m.ResourceRequirements(requests={"cpu": cpu, "memory": memory}, limits={"memory": memory_limit}),
        security_context=CONTAINER_SECURITY,
        volume_mounts=[m.VolumeMount(name="work", mount_path=WORK), m.VolumeMount(name="tmp", mount_path="/tmp"),
                       *extra_mounts],
    )


def _out(*names: str) -> m.Outputs:
    return m.Outputs(parameters=[m.Parameter(name=n, value_from=m.ValueFrom(path=f"{OUT}/{n}", default=""))
                                 for n in names])


def _source_artifact(revision: str) -> m.Inputs:
    """The repository fixed by the chart (argo.repo), at a revision."""
    return m.Inputs(artifacts=[m.Artifact(name="source", path=SRC,
                                          git=m.GitArtifact(repo=_ph("repo"), revision=revision, depth=1))])


def _common_spec() -> dict:
    return dict(
        service_account_name=_ph("service_account"),
        security_context=POD_SECURITY,
        pod_spec_patch=EXECUTOR_PATCH,
        ttl_strategy=m.TTLStrategy(seconds_after_completion=86400),
        pod_gc=m.PodGC(strategy="OnPodSuccess"),
    )


# ------------------------------------------------------------------------------ fissure-train

TRAIN_SCRIPT = r"""
export MLFLOW_TRACKING_URI="${MLFLOW_TRACKING_URI_OVERRIDE:-$MLFLOW_TRACKING_URI}"
remote="${DVC_REMOTE_OVERRIDE:-$DVC_REMOTE}"
echo "revision $REVISION; MLflow $MLFLOW_TRACKING_URI; DVC remote $remote"
# The remote is configured locally (.dvc/config.local), never committed.
dvc remote add --local --force --default cluster "$remote"
if [ -n "${AWS_ENDPOINT_URL:-}" ]; then
  dvc remote modify --local cluster endpointurl "$AWS_ENDPOINT_URL"
fi
dvc pull || true   # a fresh remote has nothing yet; repro rebuilds what is missing
dvc repro
dvc push
"""


def train_template() -> WorkflowTemplate:
    with WorkflowTemplate(
        name=_ph("train_name"),
        labels=_labels("training"),
        annotations={"workflows.argoproj.io/description": "dvc pull, dvc repro, dvc push for one revision "
                     "of the repository the chart names (argo.repo)."},
        entrypoint="train",
        active_deadline_seconds=21600,
        arguments=[
            Parameter(name="revision", value=_ph("revision"), description="Git revision (branch, tag or commit) to check out."),
            Parameter(name="config-map", value=_ph("config_map"),
                      description="ConfigMap with MLFLOW_TRACKING_URI, AWS_ENDPOINT_URL and DVC_REMOTE (the chart's <release>-config)."),
            Parameter(name="mlflow-tracking-uri", value="", description="Overrides the ConfigMap's MLFLOW_TRACKING_URI when not empty."),
            Parameter(name="dvc-remote", value="", description="Overrides the ConfigMap's DVC_REMOTE (for example s3://fissure-dvc) when not empty."),
        ],
        volumes=[m.Volume(name="work", empty_dir=m.EmptyDirVolumeSource()),
                 m.Volume(name="tmp", empty_dir=m.EmptyDirVolumeSource())],
        **_common_spec(),
    ) as wt:
        c = _container("train", TRAIN_SCRIPT,
                       config_map="{{workflow.parameters.config-map}}",
                       inputs=_source_artifact("{{workflow.parameters.revision}}"),
                       env=_env(REVISION="{{workflow.parameters.revision}}",
                                MLFLOW_TRACKING_URI_OVERRIDE="{{workflow.parameters.mlflow-tracking-uri}}",
                                DVC_REMOTE_OVERRIDE="{{workflow.parameters.dvc-remote}}"))
        c.retry_strategy = m.RetryStrategy(limit="1", retry_policy="OnError")
    return wt


# ------------------------------------------------------------------------------ fissure-retrain

DVC_REMOTE_SETUP = r"""
# The remote comes from the chart's ConfigMap (DVC_REMOTE, AWS_ENDPOINT_URL), set locally only.
dvc remote add --local --force --default cluster "$DVC_REMOTE"
if [ -n "${AWS_ENDPOINT_URL:-}" ]; then
  dvc remote modify --local cluster endpointurl "$AWS_ENDPOINT_URL"
fi
"""

INGEST_SCRIPT = DVC_REMOTE_SETUP + r"""
mkdir -p "$OUT"
dvc pull || true   # what the last run pushed; a fresh remote has nothing yet
fissure feedback export --out data/feedback
# New judged items: judged after the newest registered version of the models (the last run).
python - <<'PY'
import datetime, json, os
from mlflow import MlflowClient

models = json.loads(os.environ["MODELS"])
manifest = json.load(open("data/feedback/manifest.json"))
client = MlflowClient()
last = 0
for name in models:
    try:
        versions = client.search_model_versions(f"name='{name}'")
    except Exception:
        versions = []
    last = max([last, *(int(v.creation_timestamp or 0) for v in versions)])
def when(item):
    at = datetime.datetime.fromisoformat(item["judged_at"].replace("Z", "+00:00"))
    if at.tzinfo is None:
        at = at.replace(tzinfo=datetime.timezone.utc)
    return at.timestamp() * 1000
new = sum(1 for item in manifest["items"] if when(item) > last)
due = new >= int(os.environ["MIN_FEEDBACK"])
out = os.environ["OUT"]
open(f"{out}/new-feedback", "w").write(str(new))
open(f"{out}/due", "w").write("true" if due else "false")
print(f"{new} judged feedback items since the last registered version; "
      f"min-feedback {os.environ['MIN_FEEDBACK']}: {'retraining' if due else 'nothing to do'}")
PY
"""

RETRAIN_SCRIPT = DVC_REMOTE_SETUP + r"""
echo "revision $REVISION; models $MODELS; MLflow $MLFLOW_TRACKING_URI; DVC remote $DVC_REMOTE"
dvc repro
dvc push
"""

GATE_SCRIPT = r"""
mkdir -p "$OUT"
rc=0
fissure gate --model "$MODEL" --out "$OUT/gate.json" || rc=$?
# 0 passed, 3 refused: both are decisions (the later steps are skipped on a refusal); else an error.
if [ "$rc" -ne 0 ] && [ "$rc" -ne 3 ]; then exit "$rc"; fi
python - <<'PY'
import json, os
out = os.environ["OUT"]
d = json.load(open(f"{out}/gate.json"))
def num(v):
    return "-" if v is None else f"{v:.4g}"
lines = [f"{c['name']}: {'pass' if c['passed'] else 'FAIL'} {num(c.get('value'))} "
         f"(limit {num(c.get('limit'))}, champion {num(c.get('baseline'))})" for c in d.get("checks", [])]
values = {"decision": d.get("decision") or ("passed" if d.get("passed") else "failed"),
          "challenger-version": str(d.get("challenger_version") or ""),
          "champion-version": str(d.get("champion_version") or ""),
          "numbers": "; ".join(lines), "reasons": "; ".join(d.get("reasons", []))}
for key, value in values.items():
    open(f"{out}/{key}", "w").write(value)
print(json.dumps(values, indent=1))
PY
"""

PACKAGE_SCRIPT = r"""
mkdir -p "$OUT"
dest="$FISSURE_MODEL_STORE/$MODEL/$VERSION"
fissure package --model "models:/$MODEL/$VERSION" --out "$WORKDIR/mar/$MODEL"
# KServe's TorchServe layout (model-store/<model>.mar, config/config.properties) to the model store
SRC_DIR="$WORKDIR/mar/$MODEL" DEST="$dest" python - <<'PY'
import os
import fsspec
fs, path = fsspec.core.url_to_fs(os.environ["DEST"], endpoint_url=os.environ.get("AWS_ENDPOINT_URL") or None)
fs.put(os.environ["SRC_DIR"].rstrip("/") + "/", path, recursive=True)
PY
printf '%s' "$dest" > "$OUT/storage-uri"
echo "packaged models:/$MODEL/$VERSION to $dest"
"""

PROMOTE_SCRIPT = r"""
mkdir -p "$OUT"
# FISSURE_CHALLENGER_STORAGE_URI: where the package step put the challenger's MAR, under
# --storage-root (<root>/<model>/<version>), from where the KServe actuators deploy it
echo "canary of $MODEL version $VERSION from $FISSURE_CHALLENGER_STORAGE_URI"
policy=()   # empty parameters: the canary: policy of the checkout's params.yaml
if [ -n "$STEPS" ]; then policy+=(--steps "$STEPS"); fi
if [ -n "$BAKE" ]; then policy+=(--bake "$BAKE"); fi
rc=0
fissure promote --model "$MODEL" --challenger "$VERSION" --actuator "$ACTUATOR" \
  --namespace "$NAMESPACE" --release "$FISSURE_RELEASE" --prometheus "$FISSURE_PROMETHEUS_URL" \
  --storage-root "$FISSURE_MODEL_STORE" --out "$OUT/promotion.json" "${policy[@]}" || rc=$?
# 0 promoted, 3 rolled back by the canary's evidence (both outcomes); else an error, and the
# exit handler rolls back what is left in flight.
case "$rc" in
  0) printf promoted > "$OUT/outcome" ;;
  3) printf rolled-back > "$OUT/outcome" ;;
  *) exit "$rc" ;;
esac
"""

RECORD_SCRIPT = r"""
# The run's end as a pipeline event in the API (fissure_retrain_runs_total); best effort.
python - <<'PY'
import os
import httpx
url, token, result = os.environ.get("FISSURE_API_URL"), os.environ.get("FISSURE_API_TOKEN"), os.environ["RESULT"]
if not url or not token:
    print(f"retrain {result}; not recorded in the API (no FISSURE_API_URL or FISSURE_API_TOKEN)")
    raise SystemExit(0)
try:
    r = httpx.post(f"{url.rstrip('/')}/pipeline/events", json={"kind": "retrain", "result": result},
                   headers={"Authorization": f"Bearer {token}"}, timeout=30)
    print(f"retrain {result}; recorded in the API: HTTP {r.status_code}")
except httpx.HTTPError as exc:
    print(f"retrain {result}; not recorded in the API: {exc}")
PY
"""

ABORT_SCRIPT = r"""
# The workflow did not succeed: roll back any canary in flight, the champion keeps serving 100 %.
fissure promote --model "$MODEL" --abort --actuator "$ACTUATOR" --namespace "$NAMESPACE" --release "$FISSURE_RELEASE"
"""


def retrain_template() -> WorkflowTemplate:
    p = "{{workflow.parameters.%s}}"
    with WorkflowTemplate(
        name=_ph("retrain_name"),
        labels=_labels("retraining"),
        annotations={"workflows.argoproj.io/description": "Feedback -> dvc repro -> gate -> MAR to the "
                     "model store -> canary promotion, per model; rolls back on failure."},
        entrypoint="retrain",
        on_exit="abort-canaries",
        active_deadline_seconds=43200,
        # one retraining of the release at a time, whoever started it (schedule, trigger, CLI, API, UI)
        synchronization=m.Synchronization(mutexes=[m.Mutex(name=_ph("retrain_name"))]),
        arguments=[
            Parameter(name="revision", value=_ph("revision"),
                      description="Git revision (branch, tag or commit) of the chart's repository (argo.repo) to train from."),
            Parameter(name="models", value=json.dumps(MODELS),
                      description="JSON list of the models to gate and promote."),
            Parameter(name="min-feedback", value="0",
                      description="Retrain only when at least this many judged feedback items arrived since the newest registered version."),
            Parameter(name="promote", value="true", enum=["true", "false"],
                      description="Run the canary promotion of a challenger that passed the gate."),
            Parameter(name="actuator", value=ACTUATORS[0], enum=ACTUATORS,
                      description="How the canary's share reaches the challenger: kserve-gateway (weighted HTTPRoute, Standard mode) or kserve-knative."),
            Parameter(name="steps", value="",
                      description="Canary steps, percent of traffic (e.g. 10,50,100); empty: params.yaml's canary policy."),
            Parameter(name="bake", value="",
                      description="Time at each step before its evidence is judged (300, 5m); empty: params.yaml's canary policy."),
        ],
        volume_claim_templates=[m.PersistentVolumeClaim(
            metadata=m.ObjectMeta(name="work"),
            spec=m.PersistentVolumeClaimSpec(access_modes=["ReadWriteOnce"],
                                             resources=m.VolumeResourceRequirements(requests={"storage": _ph("workspace_size")})))],
        volume_claim_gc=m.VolumeClaimGC(strategy="OnWorkflowCompletion"),
        volumes=[m.Volume(name="tmp", empty_dir=m.EmptyDirVolumeSource())],
        **_common_spec(),
    ) as wt:
        out_env = _env(OUT=OUT)
        ingest = _container(
            "ingest", INGEST_SCRIPT, inputs=_source_artifact(p % "revision"),
            env=[*out_env, *_env(MODELS=p % "models", MIN_FEEDBACK=p % "min-feedback"),
                 m.EnvVar(name="PGPASSWORD", value_from=m.EnvVarSource(secret_key_ref=m.SecretKeySelector(
                     name=_ph("db_secret"), key=_ph("db_password_key"))))],
            outputs=_out("new-feedback", "due"),
        )
        train = _container("train", RETRAIN_SCRIPT,
                           env=_env(REVISION=p % "revision", MODELS=p % "models"))
        train.retry_strategy = m.RetryStrategy(limit="1", retry_policy="OnError")
        model_env = _env(MODEL="{{inputs.parameters.model}}")
        # 500m requested like the other steps (no CPU limit: it uses what is free); one gate per
        # model runs at once, and a whole core each kept them Pending on a small node
        gate = _container(
            "gate", GATE_SCRIPT, cpu="500m", memory="2Gi", env=[*out_env, *model_env],
            inputs=m.Inputs(parameters=[m.Parameter(name="model")]),
            outputs=_out(
                "decision", "challenger-version", "champion-version", "numbers", "reasons"),
        )
        version_in = m.Inputs(parameters=[m.Parameter(name="model"), m.Parameter(name="version")])
        version_env = _env(MODEL="{{inputs.parameters.model}}", VERSION="{{inputs.parameters.version}}")
        package = _container(
            "package", PACKAGE_SCRIPT, env=[*out_env, *version_env, *_env(WORKDIR=WORK)], inputs=version_in,
            outputs=_out("storage-uri"),
        )
        k8s_env = [*_env(ACTUATOR=p % "actuator", NAMESPACE="{{workflow.namespace}}"),
                   _secret("FISSURE_API_TOKEN", "api_token_secret", "api_token_key", optional=True)]
        promote = _container(
            "promote", PROMOTE_SCRIPT, env=[*out_env, *version_env, *k8s_env,
                                            *_env(STEPS=p % "steps", BAKE=p % "bake",
                                                  FISSURE_CHALLENGER_STORAGE_URI="{{inputs.parameters.storage-uri}}")],
            inputs=m.Inputs(parameters=[m.Parameter(name="model"), m.Parameter(name="version"),
                                        m.Parameter(name="storage-uri")]),
            outputs=_out("outcome"),
        )
        # the exit handler's steps work outside the checkout: it may never have been made
        abort = _container("abort", ABORT_SCRIPT, env=[*model_env, *k8s_env], working_dir="/tmp",
                           inputs=m.Inputs(parameters=[m.Parameter(name="model")]))
        record = _container("record", RECORD_SCRIPT, working_dir="/tmp", cpu="100m", memory="256Mi",
                            memory_limit="1Gi", env=[*_env(RESULT="{{inputs.parameters.result}}"),
                                                     _secret("FISSURE_API_TOKEN", "api_token_secret", "api_token_key",
                                                             optional=True)],
                            inputs=m.Inputs(parameters=[m.Parameter(name="result")]))

        with DAG(name="release-model", inputs=[Parameter(name="model")]):
            g = gate(name="gate", arguments={"model": "{{inputs.parameters.model}}"})
            passed = "{{tasks.gate.outputs.parameters.decision}} == passed"
            pk = package(name="package", when=passed, arguments={
                "model": "{{inputs.parameters.model}}",
                "version": "{{tasks.gate.outputs.parameters.challenger-version}}"})
            pr = promote(name="promote", when=f"{passed} && {p % 'promote'} == true", arguments={
                "model": "{{inputs.parameters.model}}",
                "version": "{{tasks.gate.outputs.parameters.challenger-version}}",
                "storage-uri": "{{tasks.package.outputs.parameters.storage-uri}}"})
            g >> pk >> pr

        with DAG(name="retrain"):
            i = ingest(name="ingest")
            t = train(name="train", when="{{tasks.ingest.outputs.parameters.due}} == true")
            # a skipped task counts as done for `depends`, so the condition is repeated
            rel = Task(name="release", template="release-model", with_param=p % "models",
                       when="{{tasks.ingest.outputs.parameters.due}} == true", arguments={"model": "{{item}}"})
            done = record(name="record", when="{{tasks.ingest.outputs.parameters.due}} == true",
                          arguments={"result": "succeeded"})
            i >> t >> rel >> done

        with Steps(name="abort-canaries"):
            with Parallel():
                # promote=false starts no canary: nothing to roll back (and without canary.enabled
                # the account may not read the canary routes at all)
                abort(name="abort", when=f"{{{{workflow.status}}}} != Succeeded && {p % 'promote'} == true",
                      with_param=p % "models", arguments={"model": "{{item}}"})
                record(name="record-failure", when="{{workflow.status}} != Succeeded",
                       arguments={"result": "failed"})
    return wt


def cron(name_key: str, schedule_key: str, min_feedback: str, description: str) -> CronWorkflow:
    return CronWorkflow(
        name=_ph(name_key),
        labels=_labels("retraining"),
        annotations={"workflows.argoproj.io/description": description},
        schedule=_ph(schedule_key),
        concurrency_policy="Forbid",
        starting_deadline_seconds=600,
        successful_jobs_history_limit=3,
        failed_jobs_history_limit=3,
        workflow_template_ref=m.WorkflowTemplateRef(name=_ph("retrain_name")),
        arguments=[Parameter(name="min-feedback", value=min_feedback)],
    )


def objects() -> dict[str, dict]:
    """file stem -> the object, with placeholders."""
    objs = {
        "train-pipeline": train_template(),  # the file name the first version had
        "fissure-retrain": retrain_template(),
        "fissure-retrain-weekly": cron("weekly_name", "schedule", "0",
                                       "fissure-retrain on a schedule (argo.schedule)."),
        "fissure-retrain-feedback": cron("feedback_name", "feedback_schedule", _ph("min_feedback"),
                                         "fissure-retrain when argo.feedbackTrigger.minFeedback judged "
                                         "feedback items arrived since the last registered version."),
    }
    return {stem: _train_resources(o.to_dict()) for stem, o in objs.items()}


def _train_resources(obj: dict) -> dict:
    """The `train` steps take the chart's argo.trainResources whole (hera's models want a typed
    map, so the placeholder goes into the exported object)."""
    for t in obj["spec"].get("templates", []):
        if t["name"] == "train":
            t["container"]["resources"] = _ph("train_resources")
    return obj


# ------------------------------------------------------------------------------ RBAC

# What Argo's executor in each step's pod needs: to record the step's outputs. The chart's
# templates/argo-rbac.yaml renders the same for the release (tests/argo keeps them in step); the
# canary steps' rights come from the promotion Role, which the chart binds to this account.
WORKFLOW_RULES = [{"apiGroups": ["argoproj.io"], "resources": ["workflowtaskresults"], "verbs": ["create", "patch"]}]


def rbac() -> list[dict]:
    """ServiceAccount, Role and RoleBinding for argo/ without the chart (`kubectl apply -n NS`)."""
    name = "fissure-workflow"
    meta = {"name": name, "labels": _labels("workflow")}
    return [
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": meta},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role", "metadata": meta, "rules": WORKFLOW_RULES},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding", "metadata": meta,
         "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name},
         "subjects": [{"kind": "ServiceAccount", "name": name}]},
    ]


# ------------------------------------------------------------------------------ export

HEADER = "# Generated by `make workflows` from argo/fissure_workflows.py (hera): do not edit.\n"
_PH = re.compile(r"@@(\w+)@@")


class _Dumper(yaml.SafeDumper):
    pass


def _str(dumper, value: str):
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _str)


def _substitute(node, values: dict[str, str]):
    if isinstance(node, dict):
        out = {}
        for k, v in node.items():
            if k == "namespace" and v == _ph("namespace") and "namespace" not in values:
                continue
            out[k] = _substitute(v, values)
        return out
    if isinstance(node, list):
        return [_substitute(v, values) for v in node]
    if isinstance(node, str):
        whole = _PH.fullmatch(node)
        if whole and whole.group(1) in CHART_OBJECTS:
            return CHART_OBJECTS[whole.group(1)][0]
        return _PH.sub(lambda mt: values[mt.group(1)], node)
    return node


def _with_namespace(obj: dict) -> dict:
    return {**obj, "metadata": {**obj["metadata"], "namespace": _ph("namespace")}}


def dump(obj: dict) -> str:
    return yaml.dump(obj, Dumper=_Dumper, sort_keys=False, width=120, allow_unicode=True)


def plain(obj: dict) -> str:
    """argo/ rendering: the defaults of a release named fissure."""
    return HEADER + dump(_substitute(obj, {k: d for k, (d, _) in CHART_VALUES.items()}))


def chart(obj: dict) -> str:
    """The chart's rendering, for `tpl`: Argo's braces escaped, placeholders as Helm expressions."""
    text = dump(_with_namespace(obj)).replace("{{", '{{ "{{" }}')
    exprs = {k: e for k, (_, e) in CHART_VALUES.items()} | CHART_ONLY

    def helm(mt: re.Match) -> str:
        key = mt.group(1)
        if key in CHART_OBJECTS:  # a whole map: JSON is YAML's flow style
            return "{{ toJson %s }}" % CHART_OBJECTS[key][1]
        return "{{ %s | quote }}" % exprs[key]

    # a whole placeholder value (quoted by the dumper or not) becomes one quoted Helm value
    text = re.sub(r"""(['"]?)@@(\w+)@@\1(?=\s*$)""", lambda mt: helm(re.match(r"@@(\w+)@@", f"@@{mt.group(2)}@@")),
                  text, flags=re.M)
    leftover = _PH.search(text)
    if leftover:
        raise ValueError(f"placeholder {leftover.group(0)} inside a longer value: make it the whole value")
    return HEADER.replace("# Generated", "# Rendered by templates/argo-workflows.yaml with tpl. Generated") + text


def rendered() -> dict[Path, str]:
    files = {}
    for stem, obj in objects().items():
        files[PLAIN_DIR / f"{stem}.yaml"] = plain(obj)
        files[CHART_DIR / f"{stem}.yaml"] = chart(obj)
    defaults = {k: d for k, (d, _) in CHART_VALUES.items()}
    files[PLAIN_DIR / "rbac.yaml"] = HEADER + "---\n".join(dump(_substitute(o, defaults)) for o in rbac())
    return files


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="exit 1 when a committed file differs")
    args = ap.parse_args(argv)
    stale = []
    for path, text in rendered().items():
        if args.check:
            if not path.exists() or path.read_text() != text:
                stale.append(str(path.relative_to(REPO)))
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
            print(f"wrote {path.relative_to(REPO)}")
    if stale:
        print(f"stale: {', '.join(stale)}: run `make workflows`", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
