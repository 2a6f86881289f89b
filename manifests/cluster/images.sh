#!/usr/bin/env bash
# make cluster-images: the cluster's images, built here without a registry or a Docker daemon,
# cached under CACHE/images by content hash, and imported into the single-node cluster's
# containerd (k8s.io namespace) when it is up.
#
#   serving            ghcr.io/fissure/fissure-serving:TAG, serving/Dockerfile's recipe in three
#                      layers: base (Debian bookworm by mmdebstrap: python3 3.11, OpenJDK 17, the
#                      model-server user), deps (/opt/venv: the [serve] dependencies at the exact
#                      versions of the host's .venv, installed by uv from its cache, torch from
#                      PyPI) and app (fissure itself and serving/handlers). A change to src/ only
#                      rebuilds the small app layer.
#   kserve-controller  fissure.local/kserve-controller:KSERVE_VERSION, KServe's cmd/manager built
#                      from its Go module (the module proxy, checksum-checked) as a static binary
#                      in a one-file image (as upstream's distroless one, user 65532).
#   llmisvc-controller fissure.local/llmisvc-controller:KSERVE_VERSION, the LLMInferenceService
#                      controller and webhooks (KServe's cmd/llmisvc, built the same way; /manager).
#   storage-initializer  fissure.local/kserve-storage-initializer:KSERVE_VERSION, KServe's storage
#                      initializer (what KServe injects as an init container for s3://, https://,
#                      ... storageUris): Debian trixie's python3 (3.13: kserve-storage unpacks
#                      archives with tarfile's filter=, which bookworm's 3.11.2 lacks) + kserve-storage
#                      at KServe's version from PyPI in /opt/kserve-storage + the entrypoint script
#                      from KServe's module source (python/storage-initializer), user 1000.
#   debian-curl        fissure.local/debian-curl:bookworm, Debian bookworm (mmdebstrap) with curl:
#                      the chart's `helm test` pods (tests.image in values-node.yaml), user 65532.
#   postgresql         fissure.local/postgresql:15-bookworm, Debian bookworm's PostgreSQL 15 (mmdebstrap)
#                      with postgres-entrypoint.sh (what the official image's entrypoint does with
#                      POSTGRES_USER/PASSWORD/DB and PGDATA), user 999 as the chart runs it.
#   coredns            fissure.local/coredns:COREDNS_VERSION, the cluster's DNS (the pods' URLs name
#                      Services): CoreDNS built from its Go module with only the plugins coredns.yaml's
#                      Corefile uses (upstream's plugin list pulls in every cloud SDK), one-file image.
#   argo-controller    fissure.local/argo-workflow-controller:ARGO_WORKFLOWS_VERSION and
#   argoexec           fissure.local/argoexec:ARGO_WORKFLOWS_VERSION: Argo Workflows' workflow-controller
#                      and argoexec (the executor its pods' init and wait containers run) built from
#                      the Go module github.com/argoproj/argo-workflows/v4 (CGO_ENABLED=0), one-file
#                      images as upstream's distroless ones (user 8737, binaries in /bin).
#   argocli            fissure.local/argocli:ARGO_WORKFLOWS_VERSION, what upstream's argo-server Deployment
#                      runs (`argo server`, the workflows' API): cmd/argo from the same module, its web
#                      UI an empty placeholder (the UI's JavaScript is built with yarn upstream; the
#                      API does not need it), one-file image (/bin/argo, user 8737).
#   metrics-server     fissure.local/metrics-server:METRICS_SERVER_VERSION, the resource metrics API
#                      (HPAs, `kubectl top`): sigs.k8s.io/metrics-server's cmd/metrics-server built from its
#                      Go module (`go install`, static), one-file image (/metrics-server, user 65532 as
#                      upstream's distroless one; its Deployment runs it as 1000).
#   prometheus-operator  fissure.local/prometheus-operator:PROMETHEUS_OPERATOR_VERSION and
#   prometheus-config-reloader  fissure.local/prometheus-config-reloader:PROMETHEUS_OPERATOR_VERSION:
#                      the Prometheus Operator's cmd/operator and cmd/prometheus-config-reloader built
#                      from its Go module through a wrapper module (its go.mod replaces two nested
#                      modules with local folders that the module zip lacks; the wrapper takes their
#                      published versions instead), one-file images as upstream's (user 65534).
#   prometheus         fissure.local/prometheus:PROMETHEUS_VERSION (v3.13.1, the newest in the operator's
#                      compatibility matrix), what the operator's Prometheus StatefulSet runs:
#                      cmd/prometheus built from its Go module with only the Kubernetes service
#                      discovery (tags remove_all_sd,enable_kubernetes_sd; Debian's package has none),
#                      one-file image (/bin/prometheus, user 65534), no web UI assets (the API only).
#   traefik            fissure.local/traefik:TRAEFIK_VERSION, the Gateway API implementation: the static
#                      binary `make gateway-traefik` builds from Traefik's Go module (mk/gateway.mk),
#                      one-file image (/traefik, user 65532 as Traefik's Helm chart runs it).
#   minio              fissure.local/minio:MINIO_VERSION, the chart's MinIO (minio.image in
#                      values-node.yaml): the server `make minio` builds from its Go module (dynamically
#                      linked against glibc) as /usr/bin/minio on debian-curl's Debian bookworm layer.
#   mc                 fissure.local/mc:MC_VERSION, the MinIO client for the chart's buckets Job (which
#                      runs /bin/sh) and manifests/kind/upload-models.sh: `make minio-mc` (static, from
#                      its Go module) as /usr/bin/mc on the same Debian layer (sh, sleep, tar).
#   api                ghcr.io/fissure/fissure-api:TAG (the chart's default name), the root Dockerfile's
#                      image: the serving image's layers + an extras layer (below), fissure api as user
#                      1000 with HOME=/home/fissure (the chart mounts an emptyDir there).
#   mlflow             fissure.local/mlflow:MLFLOW (the host venv's mlflow version), the chart's MLflow with
#                      its drivers in the image (mlflow.pipPackages: []): the serving image's layers (its
#                      /opt/venv has mlflow) + the same extras layer.
#   training           ghcr.io/fissure/fissure-training:TAG (the chart's argo.image), training/Dockerfile's
#                      image for the Argo workflows' steps: the serving image's layers (torch, dvc, mlflow,
#                      fissure) + the same extras layer (dvc-s3: the DVC remote on S3), user 1000.
#                      extras: s3fs (the API's s3:// blobs), boto3 (MLflow's S3 artifacts),
#                      psycopg2-binary (MLflow's postgresql+psycopg2 store) and dvc-s3 (training/Dockerfile's
#                      pin: `dvc push` to s3://) installed by uv into /opt/venv
#                      on an overlay over the serving rootfs, constrained to the host venv's versions; the
#                      layer is the overlay's upper folder, keyed by the deps layer (not rebuilt for src/).
#
# usage: images.sh build|import|digest|ref [IMAGE...] (default: serving kserve-controller storage-initializer)
#        (env: CACHE, TAG, KSERVE_VERSION, COREDNS_VERSION, METRICS_SERVER_VERSION, PROMETHEUS_OPERATOR_VERSION, PROMETHEUS_VERSION, TRAEFIK_VERSION, MINIO_VERSION, MC_VERSION, GO,
#        CTR_ADDRESS)
# `import` needs the cluster's containerd socket (CTR_ADDRESS, default .fissure/cluster/containerd/containerd.sock).
set -euo pipefail
case "${1:-}" in -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;; esac
here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
cache="${CACHE:-$HOME/.cache/fissure}/images"
tag="${TAG:-0.1.0}"
kserve_version="${KSERVE_VERSION:-v0.20.0}"
coredns_version="${COREDNS_VERSION:-v1.12.4}"
# the proxy serves v4.0.5 as the newest v4 (v4.0.6, v4.1.0-v4.1.2: 403 "not available")
argo_version="${ARGO_WORKFLOWS_VERSION:-v4.0.5}"
metrics_server_version="${METRICS_SERVER_VERSION:-v0.8.0}"  # manifests/kind/versions.env's pin
prometheus_operator_version="${PROMETHEUS_OPERATOR_VERSION:-v0.93.0}"  # ../shared/k8s-upstream's bundle
# the newest in that operator's compatibility matrix; Prometheus' Go module numbers v3.X.Y as v0.3XX.Y
prometheus_version="${PROMETHEUS_VERSION:-v3.13.1}"
prometheus_module="v0.3$(printf '%02d' "$(cut -d. -f2 <<<"$prometheus_version")").$(cut -d. -f3 <<<"$prometheus_version")"
# mk/gateway.mk's default (the newest v3.6 the proxy serves)
traefik_version="${TRAEFIK_VERSION:-v3.6.13}"
# mk/minio.mk's defaults (Go pseudo-versions: neither publishes module tags); the image tags are
# the commit dates, the pseudo-versions' middle part
minio_version="${MINIO_VERSION:-v0.0.0-20260212201848-7aac2a2c5b7c}"
mc_version="${MC_VERSION:-v0.0.0-20250313080218-cf909e1063a9}"
go="${GO:-go}"
uv="${UV:-${CACHE:-$HOME/.cache/fissure}/bootstrap/bin/uv}"
uv_cache="${UV_CACHE_DIR:-${CACHE:-$HOME/.cache/fissure}/uv}"
venv_python="$repo/.venv/bin/python"
ctr_address="${CTR_ADDRESS:-$repo/.fissure/cluster/containerd/containerd.sock}"
suite=bookworm
# serving/Dockerfile's runtime stage: python (the build stage's venv), OpenJDK 17 for TorchServe
base_packages=python3,openjdk-17-jre-headless,ca-certificates
# what serving/Dockerfile's final stage sets
serving_env=(PATH=/opt/venv/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin FISSURE_HOST=0.0.0.0
  PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1 HOME=/home/model-server FISSURE_SERVE_WORKDIR=/tmp/fissure-serve
  LOG_LOCATION=/home/model-server/logs METRICS_LOCATION=/home/model-server/logs TEMP=/tmp)
serving_entrypoint='["fissure"]'
serving_cmd='["serve", "--model-store", "/mnt/models/model-store", "--config", "/mnt/models/config/config.properties"]'

log() { echo ">> images: $*" >&2; }
die() { echo "images: $*" >&2; exit 1; }
sha() { sha256sum | cut -c1-16; }
[ "$(id -u)" = 0 ] || die "needs root (mmdebstrap and chroot for the serving image, ctr for import)"

# ---------------------------------------------------------------- serving: keys
base_key() { printf '%s\n' "v1" "$suite" "$base_packages" "$(sed -n '/^serving_setup() {/,/^}/p' "$0")" | sha; }
constraints() {  # the host venv's exact versions (what uv has cached), minus fissure itself
  [ -x "$venv_python" ] || die "no $venv_python: make venv first (the image installs the same versions)"
  "$uv" pip freeze -q -p "$venv_python" --exclude-editable | grep -v '^fissure[= @]'
}
deps_key() { { base_key; constraints; cat "$repo/pyproject.toml"; } | sha; }
app_key() {
  { deps_key; cd "$repo" && find pyproject.toml README.md src serving/handlers -type f \
      ! -path '*/__pycache__/*' ! -name '*.pyc' ! -path '*.egg-info/*' -print0 | sort -z | xargs -0 sha256sum; } | sha
}

# ---------------------------------------------------------------- serving: layers
serving_setup() {  # in the fresh rootfs $1: serving/Dockerfile's user and folders
  chroot "$1" sh -ec '
    groupadd --gid 1000 model-server
    useradd --uid 1000 --gid 1000 --create-home --home-dir /home/model-server model-server
    mkdir -p /home/model-server/logs /home/model-server/tmp /mnt/models /opt/venv
    chown -R 1000:1000 /home/model-server /mnt/models
    ln -sf python3 /usr/bin/python
    rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin
    : > /etc/resolv.conf'
}
pack() {  # pack ROOTFS OUT.tar [PATH...]: an uncompressed layer, numeric owners
  local root=$1 out=$2; shift 2
  tar --numeric-owner --sort=name --exclude='./dev/*' --exclude='./proc/*' --exclude='./sys/*' \
    --exclude='./run/*' --exclude='./tmp/*' -C "$root" -cf "$out.tmp" "$@" && mv "$out.tmp" "$out"
}
mounted=()
cleanup() { local m; for m in "${mounted[@]}"; do umount "$m" 2>/dev/null || true; done; }
overlay=""  # build_extras' overlay mount (in_chroot's cleanup must not unmount it under its chroot)
trap 'cleanup; if [ -n "$overlay" ]; then umount "$overlay" 2>/dev/null || true; fi' EXIT
in_chroot() {  # in_chroot ROOTFS CMD: with the uv cache, the host's CA bundle and uv mounted
  local root=$1; shift
  mkdir -p "$root/uvcache" "$root/src"; touch "$root/host-ca.crt" "$root/usr/local/bin/uv"
  cp /etc/resolv.conf "$root/etc/resolv.conf"
  mount --bind "$uv_cache" "$root/uvcache"; mounted+=("$root/uvcache")
  mount --bind -o ro "${SSL_CERT_FILE:-/etc/ssl/certs/ca-certificates.crt}" "$root/host-ca.crt"; mounted+=("$root/host-ca.crt")
  mount --bind -o ro "$uv" "$root/usr/local/bin/uv"; mounted+=("$root/usr/local/bin/uv")
  # /dev/null and friends (the layers leave /dev empty: the runtime provides it) and /proc
  mount --bind /dev "$root/dev"; mounted+=("$root/dev")
  mount -t proc proc "$root/proc"; mounted+=("$root/proc")
  local rc=0
  chroot "$root" env -i PATH=/usr/local/bin:/usr/bin:/bin HOME=/root UV_CACHE_DIR=/uvcache UV_LINK_MODE=copy \
    SSL_CERT_FILE=/host-ca.crt UV_NO_PROGRESS=1 sh -ec "$*" || rc=$?
  cleanup; mounted=()
  : > "$root/etc/resolv.conf"
  local m; for m in uvcache host-ca.crt usr/local/bin/uv dev proc; do
    ! mountpoint -q "$root/$m" || die "could not unmount $root/$m"
  done
  rmdir "$root/uvcache"; rm -f "$root/host-ca.crt" "$root/usr/local/bin/uv"; rm -rf "$root/src"
  return $rc
}
wipe_rootfs() {  # never rm -rf through a leftover bind mount (/dev, the uv cache)
  local root=$1
  if awk -v r="$root/" 'index($2 "/", r) == 1 {found = 1} END {exit !found}' /proc/self/mounts; then
    die "something is still mounted under $root: unmount it first"
  fi
  rm -rf "$root" "$root.layers"
}
rootfs_with() {  # rootfs_with LAYER_KEYS...: the working rootfs holding these layers (and maybe an older app)
  local want="$*" root="$cache/serving/rootfs" have
  have=$(cat "$root.layers" 2>/dev/null || true)
  if [ "$have" != "$want" ] && [ "${have% app-*}" != "$want" ]; then
    log "unpacking layers $want into $root"
    wipe_rootfs "$root"; mkdir -p "$root"
    local k; for k in "$@"; do tar --numeric-owner -C "$root" -xf "$cache/serving/$k.tar"; done
    echo "$want" > "$root.layers"
  fi
  echo "$root"
}

build_base() {  # the base layer (shared by serving and storage-initializer)
  local bk d="$cache/serving"; mkdir -p "$d"
  bk=base-$(base_key)
  if [ ! -f "$d/$bk.tar" ]; then
    command -v mmdebstrap >/dev/null || die "mmdebstrap is missing: apt-get install mmdebstrap"
    log "base layer $bk: Debian $suite + $base_packages (mmdebstrap, ~2 min)"
    local root="$d/rootfs"; wipe_rootfs "$root"
    nice -n 10 mmdebstrap --quiet --variant=minbase --include="$base_packages" "$suite" "$root" >&2
    serving_setup "$root"
    pack "$root" "$d/$bk.tar" .
    echo "$bk" > "$root.layers"
  fi
}
build_serving() {
  local bk dk ak d="$cache/serving"; mkdir -p "$d"
  build_base
  bk=base-$(base_key); dk=deps-$(deps_key); ak=app-$(app_key)
  if [ ! -f "$d/$dk.tar" ]; then
    local root; root=$(rootfs_with "$bk")
    log "deps layer $dk: /opt/venv with the [serve] dependencies at the host venv's versions (uv, ~2 min warm)"
    constraints > "$d/constraints.txt"
    mkdir -p "$root/src" && cp "$repo/pyproject.toml" "$d/constraints.txt" "$root/src/"
    in_chroot "$root" "uv venv -q --allow-existing -p /usr/bin/python3.11 /opt/venv && \
      nice -n 10 uv pip install -q -p /opt/venv/bin/python -c /src/constraints.txt -r /src/pyproject.toml --extra serve"
    pack "$root" "$d/$dk.tar" ./opt/venv
    echo "$bk $dk" > "$root.layers"
  fi
  if [ ! -f "$d/$ak.tar" ]; then
    local root; root=$(rootfs_with "$bk" "$dk")
    log "app layer $ak: fissure and serving/handlers"
    rm -rf "$root/home/model-server/handlers"
    mkdir -p "$root/src"
    (cd "$repo" && tar --exclude='__pycache__' --exclude='*.egg-info' -cf - pyproject.toml README.md src) | tar -C "$root/src" -xf -
    local marker="$d/app.marker"; touch "$marker"; sleep 1
    in_chroot "$root" "nice -n 10 uv pip install -q -p /opt/venv/bin/python --no-deps --reinstall-package fissure /src"
    cp -r "$repo/serving/handlers" "$root/home/model-server/handlers"
    find "$root/home/model-server/handlers" -name __pycache__ -prune -exec rm -rf {} +
    chown -R 1000:1000 "$root/home/model-server/handlers"
    # what the install added or changed (ctime: copying cannot fake it), directories included
    (cd "$root" && find ./opt/venv ./home/model-server/handlers -cnewer "$marker" -print0 | sort -z) > "$d/app.list"
    tar --numeric-owner --no-recursion --null -C "$root" -cf "$d/$ak.tar.tmp" -T "$d/app.list" && mv "$d/$ak.tar.tmp" "$d/$ak.tar"
    echo "$bk $dk $ak" > "$root.layers"
  fi
  # keep only the current layers (a bump leaves the old ones behind otherwise)
  find "$d" -maxdepth 1 -name '*.tar*' ! -name "$bk.tar*" ! -name "$dk.tar*" ! -name "$ak.tar*" ! -name 'extras-*' -delete
  echo "$d/$bk.tar $d/$dk.tar $d/$ak.tar" > "$d/layers"
}
serving_image_args() {
  local l args=() layers
  read -r -a layers < "$cache/serving/layers"
  for l in "${layers[@]}"; do args+=(--layer "$l"); done
  local e; for e in "${serving_env[@]}"; do args+=(--env "$e"); done
  args+=(--entrypoint "$serving_entrypoint" --cmd "$serving_cmd" --user 1000:1000 --workdir /home/model-server)
  printf '%s\n' "${args[@]}"
}

# ---------------------------------------------------------------- extras (api, mlflow, training)
# s3fs: the root Dockerfile's pin (= the host venv's); psycopg2-binary: the chart's mlflow.pipPackages pin;
# boto3: whichever release fits the host venv's botocore (s3fs's aiobotocore pins it)
extras_packages=("s3fs==2026.9.0" "psycopg2-binary==2.9.10" "boto3" "dvc-s3==3.3.0")
extras_key() { { deps_key; printf '%s\n' "${extras_packages[@]}"; sed -n '/^build_extras() {/,/^}/p' "$0"; } | sha; }
build_extras() {
  local d="$cache/serving" ek root upper work merged
  build_serving
  ek=extras-$(extras_key)
  if [ ! -f "$d/$ek.tar" ]; then
    # on base + deps (an app layer present in the rootfs changes nothing uv resolves): a change to
    # src/ does not rebuild this layer
    root=$(rootfs_with "base-$(base_key)" "deps-$(deps_key)")
    log "extras layer $ek: ${extras_packages[*]} into /opt/venv (uv, on an overlay of the serving rootfs)"
    upper="$d/extras.upper"; work="$d/extras.work"; merged="$d/extras.merged"
    rm -rf "$upper" "$work"; mkdir -p "$upper" "$work" "$merged"
    mount -t overlay overlay -o "lowerdir=$root,upperdir=$upper,workdir=$work" "$merged"; overlay=$merged
    constraints > "$d/constraints.txt"
    mkdir -p "$merged/src" && cp "$d/constraints.txt" "$merged/src/"
    local pkgs; pkgs=$(printf "'%s' " "${extras_packages[@]}")
    in_chroot "$merged" "nice -n 10 uv pip install -q -p /opt/venv/bin/python -c /src/constraints.txt $pkgs"
    umount "$merged"; overlay=""
    # an overlay whiteout (a 0/0 character device) would mean uv removed or replaced a file of the
    # serving layers: the layer would then need OCI whiteouts; with the constraints it only adds
    if [ -n "$(find "$upper/opt" -type c -print -quit)" ]; then die "uv changed the serving venv's files (whiteouts in $upper)"; fi
    tar --numeric-owner --sort=name -C "$upper" -cf "$d/$ek.tar.tmp" ./opt/venv && mv "$d/$ek.tar.tmp" "$d/$ek.tar"
    rm -rf "$upper" "$work"; rmdir "$merged"
  fi
  find "$d" -maxdepth 1 -name 'extras-*.tar*' ! -name "$ek.tar*" -delete
  echo "$d/$ek.tar" > "$d/extras.layer"
}
mlflow_version() { "$uv" pip freeze -q -p "$venv_python" | sed -n 's/^mlflow==//p'; }
extras_image_args() {  # extras_image_args api|mlflow|training
  local l layers
  read -r -a layers < "$cache/serving/layers"
  for l in "${layers[@]}" "$(cat "$cache/serving/extras.layer")"; do printf '%s\n' --layer "$l"; done
  printf '%s\n' --env PATH=/opt/venv/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    --env PYTHONUNBUFFERED=1 --env PYTHONDONTWRITEBYTECODE=1 --user 1000:1000
  case $1 in
    api) printf '%s\n' --env HOME=/home/fissure --workdir /home/fissure \
      --cmd '["fissure", "api", "--host", "0.0.0.0", "--port", "8000"]' ;;
    mlflow) printf '%s\n' --env HOME=/tmp --workdir /tmp --cmd '["mlflow", "server", "--host", "0.0.0.0", "--port", "5000"]' ;;
    training) printf '%s\n' --env HOME=/tmp --workdir /tmp --cmd '["fissure", "--help"]' ;;
  esac
}

# ---------------------------------------------------------------- kserve-controller, llmisvc-controller
kserve_bin() { echo "${CACHE:-$HOME/.cache/fissure}/kserve/$kserve_version/$1"; }  # kserve_bin manager|llmisvc
build_kserve_cmd() {  # build_kserve_cmd manager|llmisvc: KServe's cmd/$1
  local cmd=$1 out; out=$(kserve_bin "$1")
  [ -x "$out" ] && return 0
  log "building KServe $kserve_version's cmd/$cmd from its Go module (~5-20 min cold)"
  local dir tmp
  dir=$(cd "${TMPDIR:-/tmp}" && "$go" mod download -json "github.com/kserve/kserve@$kserve_version" \
    | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')
  [ -n "$dir" ] || die "go mod download github.com/kserve/kserve@$kserve_version failed"
  tmp=$(mktemp -d); cp -R "$dir/." "$tmp/"; chmod -R u+w "$tmp"
  mkdir -p "$(dirname "$out")"
  (cd "$tmp" && CGO_ENABLED=0 GOFLAGS=-mod=mod nice -n 10 "$go" build -trimpath -ldflags "-s -w" -o "$out.tmp" "./cmd/$cmd") \
    || { rm -rf "$tmp"; die "go build of kserve $kserve_version cmd/$cmd failed"; }
  rm -rf "$tmp"; mv "$out.tmp" "$out"
}

# ---------------------------------------------------------------- storage-initializer
kserve_src() {  # KServe's module source (the Go module zip holds its python/ tree too)
  local dir
  dir=$(cd "${TMPDIR:-/tmp}" && "$go" mod download -json "github.com/kserve/kserve@$kserve_version" \
    | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')
  [ -n "$dir" ] || die "go mod download github.com/kserve/kserve@$kserve_version failed"
  echo "$dir"
}
si_entrypoint() { echo "$(kserve_src)/python/storage-initializer/scripts/initializer-entrypoint"; }
si_suite=trixie
si_packages=python3,ca-certificates
si_base_key() { printf '%s\n' "v1" "$si_suite" "$si_packages" | sha; }
si_key() { { si_base_key; echo "kserve-storage==${kserve_version#v}"; cat "$(si_entrypoint)"; } | sha; }
build_storage_initializer() {
  local bk sk d="$cache/storage-initializer" root; mkdir -p "$d"
  bk=base-$(si_base_key); sk=si-$(si_key); root="$d/rootfs"
  if [ ! -f "$d/$bk.tar" ]; then
    command -v mmdebstrap >/dev/null || die "mmdebstrap is missing: apt-get install mmdebstrap"
    log "storage-initializer base layer $bk: Debian $si_suite + $si_packages (mmdebstrap)"
    wipe_rootfs "$root"
    nice -n 10 mmdebstrap --quiet --variant=minbase --include="$si_packages" "$si_suite" "$root" >&2
    chroot "$root" sh -ec 'useradd --uid 1000 --user-group --create-home --home-dir /home/kserve kserve
      mkdir -p /work /opt/kserve-storage && chown 1000:1000 /work
      rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin; : > /etc/resolv.conf'
    pack "$root" "$d/$bk.tar" .
  fi
  if [ ! -f "$d/$sk.tar" ]; then
    log "storage-initializer layer $sk: kserve-storage ${kserve_version#v} (PyPI) + KServe's entrypoint"
    if [ ! -x "$root/usr/bin/python3" ]; then
      wipe_rootfs "$root"; mkdir -p "$root"; tar --numeric-owner -C "$root" -xf "$d/$bk.tar"
    fi
    rm -rf "$root/opt/kserve-storage" "$root/storage-initializer"
    in_chroot "$root" "uv venv -q -p /usr/bin/python3 /opt/kserve-storage && \
      nice -n 10 uv pip install -q -p /opt/kserve-storage/bin/python 'kserve-storage==${kserve_version#v}'"
    install -D -m 0755 "$(si_entrypoint)" "$root/storage-initializer/scripts/initializer-entrypoint"
    pack "$root" "$d/$sk.tar" ./opt/kserve-storage ./storage-initializer
    wipe_rootfs "$root"
  fi
  find "$d" -maxdepth 1 \( -name 'si-*.tar*' ! -name "$sk.tar*" -o -name 'base-*.tar*' ! -name "$bk.tar*" \) -delete
  echo "$d/$bk.tar $d/$sk.tar" > "$d/layers"
}
si_image_args() {
  local l layers
  read -r -a layers < "$cache/storage-initializer/layers"
  for l in "${layers[@]}"; do printf '%s\n' --layer "$l"; done
  printf '%s\n' --env PATH=/opt/kserve-storage/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    --env HOME=/work --entrypoint '["/storage-initializer/scripts/initializer-entrypoint"]' \
    --user 1000:1000 --workdir /work
}

# ---------------------------------------------------------------- debian-curl (helm test pods)
curl_packages=curl,ca-certificates
curl_key() { printf '%s\n' "v1" "$suite" "$curl_packages" | sha; }
build_debian_curl() {
  local d="$cache/debian-curl" k root; mkdir -p "$d"
  k=curl-$(curl_key); root="$d/rootfs"
  if [ ! -f "$d/$k.tar" ]; then
    command -v mmdebstrap >/dev/null || die "mmdebstrap is missing: apt-get install mmdebstrap"
    log "debian-curl layer $k: Debian $suite + $curl_packages (mmdebstrap)"
    wipe_rootfs "$root"
    nice -n 10 mmdebstrap --quiet --variant=minbase --include="$curl_packages" "$suite" "$root" >&2
    chroot "$root" sh -ec 'rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin; : > /etc/resolv.conf'
    pack "$root" "$d/$k.tar" .
    wipe_rootfs "$root"
  fi
  find "$d" -maxdepth 1 -name 'curl-*.tar*' ! -name "$k.tar*" -delete
  echo "$d/$k.tar" > "$d/layers"
}

# ---------------------------------------------------------------- postgresql
pg_packages=postgresql-15,ca-certificates
pg_key() { { printf '%s\n' "v1" "$suite" "$pg_packages"; sed -n '/^build_postgresql() {/,/^}/p' "$0"; cat "$here/postgres-entrypoint.sh"; } | sha; }
build_postgresql() {
  local d="$cache/postgresql" k root; mkdir -p "$d"
  k=pg-$(pg_key); root="$d/rootfs"
  if [ ! -f "$d/$k.tar" ]; then
    command -v mmdebstrap >/dev/null || die "mmdebstrap is missing: apt-get install mmdebstrap"
    log "postgresql layer $k: Debian $suite + $pg_packages (mmdebstrap)"
    wipe_rootfs "$root"
    nice -n 10 mmdebstrap --quiet --variant=minbase --include="$pg_packages" "$suite" "$root" >&2
    # the chart runs it as 999:999 (the official image's uid); initdb needs a passwd entry
    chroot "$root" sh -ec 'groupmod -g 999 postgres && usermod -u 999 -g 999 postgres
      rm -rf /var/lib/postgresql/* && mkdir -p /var/lib/postgresql/data /run/postgresql
      chown -R 999:999 /var/lib/postgresql /run/postgresql
      rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin; : > /etc/resolv.conf'
    install -m 0755 "$here/postgres-entrypoint.sh" "$root/usr/local/bin/postgres-entrypoint.sh"
    pack "$root" "$d/$k.tar" .
    wipe_rootfs "$root"
  fi
  find "$d" -maxdepth 1 -name 'pg-*.tar*' ! -name "$k.tar*" -delete
  echo "$d/$k.tar" > "$d/layers"
}

# ---------------------------------------------------------------- coredns
coredns_bin() { echo "${CACHE:-$HOME/.cache/fissure}/coredns/$coredns_version/coredns"; }
build_coredns() {  # a main package with the plugins coredns.yaml's Corefile needs, built against CoreDNS's module
  local out tmp; out=$(coredns_bin)
  [ -x "$out" ] && return 0
  log "building CoreDNS $coredns_version (Go module proxy, a few minutes cold)"
  tmp=$(mktemp -d); mkdir -p "$(dirname "$out")"
  cat > "$tmp/main.go" <<'GO'
// CoreDNS with only the plugins of manifests/cluster/coredns.yaml's Corefile.
package main

import (
	"github.com/coredns/coredns/core/dnsserver"
	"github.com/coredns/coredns/coremain"
	_ "github.com/coredns/coredns/plugin/cache"
	_ "github.com/coredns/coredns/plugin/errors"
	_ "github.com/coredns/coredns/plugin/forward"
	_ "github.com/coredns/coredns/plugin/health"
	_ "github.com/coredns/coredns/plugin/kubernetes"
	_ "github.com/coredns/coredns/plugin/loadbalance"
	_ "github.com/coredns/coredns/plugin/log"
	_ "github.com/coredns/coredns/plugin/loop"
	_ "github.com/coredns/coredns/plugin/ready"
	_ "github.com/coredns/coredns/plugin/reload"
)

// upstream's order (core/dnsserver/zdirectives.go), restricted to the plugins above
func init() {
	dnsserver.Directives = []string{"reload", "ready", "health", "errors", "log", "loadbalance", "cache", "kubernetes", "loop", "forward"}
}

func main() { coremain.Run() }
GO
  printf 'module fissure.local/coredns\n\ngo 1.25.0\n' > "$tmp/go.mod"
  (cd "$tmp" && export GOFLAGS= && "$go" get "github.com/coredns/coredns@$coredns_version" && "$go" mod tidy \
     && CGO_ENABLED=0 nice -n 10 "$go" build -trimpath -ldflags "-s -w" -o "$out.tmp" .) >&2 \
    || { rm -rf "$tmp"; die "go build of CoreDNS $coredns_version failed"; }
  rm -rf "$tmp"; mv "$out.tmp" "$out"
}

# ---------------------------------------------------------------- argo workflow-controller, argoexec
argo_bin() { echo "${CACHE:-$HOME/.cache/fissure}/argo-workflows/$argo_version/$1"; }
build_argo() {  # build_argo workflow-controller|argoexec|argo: from the module source (go mod download: checksum-checked)
  local name=$1 out dir tmp; out=$(argo_bin "$name")
  [ -x "$out" ] && return 0
  log "building Argo Workflows $argo_version's $name from its Go module (~10 min cold)"
  dir=$(cd "${TMPDIR:-/tmp}" && "$go" mod download -json "github.com/argoproj/argo-workflows/v4@$argo_version" \
    | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')
  [ -n "$dir" ] || die "go mod download github.com/argoproj/argo-workflows/v4@$argo_version failed"
  tmp=$(mktemp -d); cp -R "$dir/." "$tmp/"; chmod -R u+w "$tmp"
  # upstream's signal_linux.go is a symlink to signal_darwin.go, and module zips leave symlinks
  # out (argoexec: "osspecific/command_unix.go:37:3: undefined: Setpgid" without it)
  local os_dir="$tmp/workflow/executor/osspecific"
  [ -e "$os_dir/signal_linux.go" ] || cp "$os_dir/signal_darwin.go" "$os_dir/signal_linux.go"
  # cmd/argo embeds the web UI (ui/embed.go: dist/app), which upstream builds with yarn first
  mkdir -p "$tmp/ui/dist/app"; [ -e "$tmp/ui/dist/app/index.html" ] || echo placeholder > "$tmp/ui/dist/app/index.html"
  mkdir -p "$(dirname "$out")"
  (cd "$tmp" && CGO_ENABLED=0 GOFLAGS=-mod=mod "$go" build -trimpath \
     -ldflags "-s -w -X github.com/argoproj/argo-workflows/v4.version=$argo_version" -o "$out.tmp" "./cmd/$name") >&2 \
    || { rm -rf "$tmp"; die "go build of argo-workflows $argo_version cmd/$name failed"; }
  rm -rf "$tmp"; mv "$out.tmp" "$out"
}

# ---------------------------------------------------------------- metrics-server
metrics_server_bin() { echo "${CACHE:-$HOME/.cache/fissure}/metrics-server/$metrics_server_version/metrics-server"; }
build_metrics_server() {  # no replaces in its go.mod: `go install module@version` builds it checksum-checked
  local out; out=$(metrics_server_bin)
  [ -x "$out" ] && return 0
  log "building metrics-server $metrics_server_version from its Go module (~5-10 min cold)"
  (cd "${TMPDIR:-/tmp}" && CGO_ENABLED=0 GOFLAGS="" GOBIN="$(dirname "$out")" nice -n 10 "$go" install -trimpath \
     -ldflags "-s -w" "sigs.k8s.io/metrics-server/cmd/metrics-server@$metrics_server_version") >&2 \
    || die "go install sigs.k8s.io/metrics-server/cmd/metrics-server@$metrics_server_version failed"
}

# ---------------------------------------------------------------- prometheus-operator, config reloader
prometheus_operator_bin() { echo "${CACHE:-$HOME/.cache/fissure}/prometheus-operator/$prometheus_operator_version/$1"; }
build_prometheus_operator() {  # build_prometheus_operator operator|prometheus-config-reloader
  local name=$1 out tmp v=$prometheus_operator_version m=github.com/prometheus-operator/prometheus-operator
  out=$(prometheus_operator_bin "$name")
  [ -x "$out" ] && return 0
  log "building the Prometheus Operator $v's $name from its Go module (~5-10 min cold)"
  tmp=$(mktemp -d); mkdir -p "$(dirname "$out")"
  # the nested modules at the tag's own version, as the repository's replaces would give them
  printf 'module fissure.local/prometheus-operator\n\ngo 1.26.0\n\nrequire (\n\t%s %s\n\t%s/pkg/apis/monitoring %s\n\t%s/pkg/client %s\n)\n' \
    "$m" "$v" "$m" "$v" "$m" "$v" > "$tmp/go.mod"
  printf '//go:build tools\n\npackage tools\n\nimport (\n\t_ "%s/cmd/operator"\n\t_ "%s/cmd/prometheus-config-reloader"\n)\n' "$m" "$m" > "$tmp/tools.go"
  (cd "$tmp" && GOFLAGS='' "$go" mod tidy \
     && GOFLAGS='' CGO_ENABLED=0 nice -n 10 "$go" build -trimpath -o "$out.tmp" -ldflags "-s -w \
          -X github.com/prometheus/common/version.Version=${v#v} -X github.com/prometheus/common/version.Branch=$v \
          -X github.com/prometheus/common/version.BuildUser=fissure" "$m/cmd/$name") >&2 \
    || { rm -rf "$tmp"; die "go build of the Prometheus Operator $v cmd/$name failed"; }
  rm -rf "$tmp"; mv "$out.tmp" "$out"
}
prometheus_bin() { echo "${CACHE:-$HOME/.cache/fissure}/prometheus/$prometheus_version/prometheus"; }
build_prometheus() {  # from the module directory (its go.mod's one replace is a version, not a folder)
  local out dir tmp m=github.com/prometheus/prometheus; out=$(prometheus_bin)
  [ -x "$out" ] && return 0
  log "building Prometheus $prometheus_version (module $m@$prometheus_module) from its Go module (~5 min cold)"
  dir=$(cd "${TMPDIR:-/tmp}" && "$go" mod download -json "$m@$prometheus_module" | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')
  [ -n "$dir" ] || die "go mod download $m@$prometheus_module failed"
  tmp=$(mktemp -d); cp -R "$dir/." "$tmp/"; chmod -R u+w "$tmp"; mkdir -p "$(dirname "$out")"
  # only the Kubernetes service discovery (the operator's configs use nothing else): upstream's
  # build tags for a Prometheus without the cloud SDKs (its go.work names folders the zip lacks)
  (cd "$tmp" && CGO_ENABLED=0 GOWORK=off GOFLAGS=-mod=mod nice -n 10 "$go" build -trimpath -tags remove_all_sd,enable_kubernetes_sd \
     -ldflags "-s -w -X github.com/prometheus/common/version.Version=${prometheus_version#v} \
       -X github.com/prometheus/common/version.Branch=$prometheus_version -X github.com/prometheus/common/version.BuildUser=fissure" \
     -o "$out.tmp" ./cmd/prometheus) >&2 || { rm -rf "$tmp"; die "go build of Prometheus $prometheus_version failed"; }
  rm -rf "$tmp"; mv "$out.tmp" "$out"
}

# ---------------------------------------------------------------- traefik
traefik_bin() { echo "${CACHE:-$HOME/.cache/fissure}/bin/traefik"; }
build_traefik() {  # mk/gateway.mk builds it (version-stamped: a no-op when built)
  CACHE="${CACHE:-$HOME/.cache/fissure}" TRAEFIK_VERSION="$traefik_version" \
    make -C "$repo" --no-print-directory -s ${GO:+"GO=$GO"} gateway-traefik >&2 || die "make gateway-traefik failed"
  local version; version=$("$(traefik_bin)" version)  # not piped: grep -q + pipefail = SIGPIPE
  grep -q "^Version:[[:space:]]*$traefik_version\$" <<<"$version" || die "$(traefik_bin) is not Traefik $traefik_version"
}

# ---------------------------------------------------------------- minio, mc
minio_tag() { local v=${1#v0.0.0-}; echo "${v%%-*}"; }  # v0.0.0-20260212201848-7aac... -> 20260212201848
build_minio_tool() {  # build_minio_tool minio|mc: mk/minio.mk builds it (version-stamped: a no-op when built)
  local bin=$1 target=$1 version=$minio_version stamps="${CACHE:-$HOME/.cache/fissure}/bin/.stamps"
  if [ "$bin" = mc ]; then target=minio-mc; version=$mc_version; fi
  # GO as make's argument: a GO=... word from an expansion before `make` would be run as a command
  CACHE="${CACHE:-$HOME/.cache/fissure}" MINIO_VERSION="$minio_version" MC_VERSION="$mc_version" \
    make -C "$repo" --no-print-directory -s ${GO:+"GO=$GO"} "$target" >&2 || die "make $target failed"
  if [ ! -f "$stamps/$bin-$version" ] || [ ! -x "$(minio_bin "$bin")" ]; then die "make $target did not build $bin $version"; fi
  build_debian_curl  # the Debian layer under it (glibc for minio; sh for the buckets Job)
}
minio_bin() { echo "${CACHE:-$HOME/.cache/fissure}/bin/$1"; }
debian_tool_args() {  # debian_tool_args BIN USER: BIN as /usr/bin/BIN on debian-curl's layer
  printf '%s\n' --layer "$(cat "$cache/debian-curl/layers")" --file "$(minio_bin "$1"):/usr/bin/$1" --user "$2" \
    --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin --env HOME=/tmp
}

# ---------------------------------------------------------------- dispatch
image_ref() {
  case $1 in
    serving) echo "ghcr.io/fissure/fissure-serving:$tag" ;;
    kserve-controller) echo "fissure.local/kserve-controller:$kserve_version" ;;
    llmisvc-controller) echo "fissure.local/llmisvc-controller:$kserve_version" ;;
    storage-initializer) echo "fissure.local/kserve-storage-initializer:$kserve_version" ;;
    debian-curl) echo "fissure.local/debian-curl:$suite" ;;
    postgresql) echo "fissure.local/postgresql:15-$suite" ;;
    coredns) echo "fissure.local/coredns:$coredns_version" ;;
    argo-controller) echo "fissure.local/argo-workflow-controller:$argo_version" ;;
    argoexec) echo "fissure.local/argoexec:$argo_version" ;;
    argocli) echo "fissure.local/argocli:$argo_version" ;;
    metrics-server) echo "fissure.local/metrics-server:$metrics_server_version" ;;
    traefik) echo "fissure.local/traefik:$traefik_version" ;;
    prometheus-operator) echo "fissure.local/prometheus-operator:$prometheus_operator_version" ;;
    prometheus-config-reloader) echo "fissure.local/prometheus-config-reloader:$prometheus_operator_version" ;;
    prometheus) echo "fissure.local/prometheus:$prometheus_version" ;;
    minio) echo "fissure.local/minio:$(minio_tag "$minio_version")" ;;
    mc) echo "fissure.local/mc:$(minio_tag "$mc_version")" ;;
    api) echo "ghcr.io/fissure/fissure-api:$tag" ;;
    training) echo "ghcr.io/fissure/fissure-training:$tag" ;;
    mlflow) echo "fissure.local/mlflow:$(mlflow_version)" ;;
    *) die "unknown image '$1' (serving, kserve-controller, llmisvc-controller, storage-initializer, debian-curl, postgresql, coredns, argo-controller, argoexec, argocli, metrics-server, prometheus-operator, prometheus-config-reloader, prometheus, traefik, minio, mc, api, training, mlflow)" ;;
  esac
}
oci() {  # oci IMAGE ARGS...: run oci-image.py for IMAGE
  local img=$1; shift; local args=()
  case $img in
    serving) mapfile -t args < <(serving_image_args) ;;
    kserve-controller) args=(--file "$(kserve_bin manager):/manager" --entrypoint /manager --user 65532:65532) ;;
    llmisvc-controller) args=(--file "$(kserve_bin llmisvc):/manager" --entrypoint /manager --user 65532:65532) ;;
    storage-initializer) mapfile -t args < <(si_image_args) ;;
    debian-curl) args=(--layer "$(cat "$cache/debian-curl/layers")" --user 65532:65532
      --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin --entrypoint '["/bin/sh"]') ;;
    postgresql) args=(--layer "$(cat "$cache/postgresql/layers")" --user 999:999 --workdir /var/lib/postgresql
      --env PATH=/usr/lib/postgresql/15/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
      --env PGDATA=/var/lib/postgresql/data --entrypoint '["/usr/local/bin/postgres-entrypoint.sh"]') ;;
    coredns) args=(--file "$(coredns_bin):/coredns" --entrypoint /coredns --user 65532:65532) ;;
    argo-controller) args=(--file "$(argo_bin workflow-controller):/bin/workflow-controller"
      --entrypoint /bin/workflow-controller --user 8737) ;;
    argoexec) args=(--file "$(argo_bin argoexec):/bin/argoexec" --entrypoint /bin/argoexec --user 8737
      --env PATH=/bin) ;;
    argocli) args=(--file "$(argo_bin argo):/bin/argo" --entrypoint /bin/argo --user 8737) ;;
    metrics-server) args=(--file "$(metrics_server_bin):/metrics-server" --entrypoint /metrics-server --user 65532:65532) ;;
    traefik) args=(--file "$(traefik_bin):/traefik" --entrypoint /traefik --user 65532:65532) ;;
    prometheus-operator) args=(--file "$(prometheus_operator_bin operator):/bin/operator"
      --entrypoint /bin/operator --user 65534:65534) ;;
    prometheus-config-reloader) args=(--file "$(prometheus_operator_bin prometheus-config-reloader):/bin/prometheus-config-reloader"
      --entrypoint /bin/prometheus-config-reloader --user 65534:65534) ;;
    # upstream's image: ENTRYPOINT /bin/prometheus, the operator passes only args
    prometheus) args=(--file "$(prometheus_bin):/bin/prometheus" --entrypoint /bin/prometheus --user 65534:65534
      --workdir /prometheus) ;;
    # upstream's entrypoint runs `minio "$@"`: the chart's args start at `server`
    minio) mapfile -t args < <(debian_tool_args minio 1000:1000); args+=(--entrypoint '["/usr/bin/minio"]' --workdir /tmp) ;;
    mc) mapfile -t args < <(debian_tool_args mc 1000:1000); args+=(--entrypoint '["/usr/bin/mc"]' --workdir /tmp) ;;
    api|mlflow|training) mapfile -t args < <(extras_image_args "$img") ;;
  esac
  python3 "$here/oci-image.py" --name "$(image_ref "$img")" "${args[@]}" "$@"
}

cmd=${1:-}; shift || true
[ $# -gt 0 ] || set -- serving kserve-controller storage-initializer
for img in "$@"; do image_ref "$img" >/dev/null; done
case $cmd in
  build)
    # one build at a time per cache (`make test` starts one in the background; the tests' own
    # call then waits here for it and finds the images built)
    mkdir -p "$cache"; exec 9>"$cache/.build.lock"
    flock -n 9 || { log "another images.sh build holds $cache/.build.lock: waiting for it"; flock 9; }
    for img in "$@"; do
      case $img in
        serving) build_serving ;;
        kserve-controller) build_kserve_cmd manager ;;
        llmisvc-controller) build_kserve_cmd llmisvc ;;
        storage-initializer) build_storage_initializer ;;
        debian-curl) build_debian_curl ;;
        postgresql) build_postgresql ;;
        coredns) build_coredns ;;
        argo-controller) build_argo workflow-controller ;;
        argoexec) build_argo argoexec ;;
        argocli) build_argo argo ;;
        metrics-server) build_metrics_server ;;
        traefik) build_traefik ;;
        prometheus-operator) build_prometheus_operator operator ;;
        prometheus-config-reloader) build_prometheus_operator prometheus-config-reloader ;;
        prometheus) build_prometheus ;;
        minio) build_minio_tool minio ;;
        mc) build_minio_tool mc ;;
        api|mlflow|training) build_extras ;;
      esac
      log "$(image_ref "$img") ready ($(oci "$img" --digest -))"
    done ;;
  ref)
    for img in "$@"; do image_ref "$img"; done ;;
  digest)
    for img in "$@"; do echo "$(image_ref "$img") $(oci "$img" --digest -)"; done ;;
  import)
    [ -S "$ctr_address" ] || die "no containerd at $ctr_address: make cluster-up first"
    ctr=(ctr --address "$ctr_address" -n k8s.io)
    for img in "$@"; do
      ref=$(image_ref "$img"); want=$(oci "$img" --digest -)
      have=$("${ctr[@]}" images ls "name==$ref" | awk 'NR > 1 {print $3}')
      if [ "$have" = "$want" ]; then log "$ref already imported ($want)"; continue; fi
      # only the layers the store lacks travel: a changed app layer, not the 5 GB beneath it
      present=$(mktemp); "${ctr[@]}" content ls -q > "$present"
      log "importing $ref ($want)"
      oci "$img" --omit-blobs "$present" - | "${ctr[@]}" images import - >&2
      rm -f "$present"
    done ;;
  *) die "usage: images.sh build|import|digest|ref [serving] [kserve-controller] [llmisvc-controller] [storage-initializer] [debian-curl] [postgresql] [coredns] [argo-controller] [argoexec] [argocli] [metrics-server] [prometheus-operator] [prometheus-config-reloader] [prometheus] [traefik] [minio] [mc] [api] [training] [mlflow]" ;;
esac
