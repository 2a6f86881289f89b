# The single-node cluster's images, built here (no registry, no Docker daemon) and imported into
# its containerd. Included by the Makefile (mk/*.mk); docs/cluster.md explains it.
#
#   cluster-images   [root] fissure's serving image (serving/Dockerfile's recipe: Debian bookworm
#                    by mmdebstrap + the venv by uv from its cache), KServe's controller (from its
#                    Go module), KServe's storage initializer (Debian trixie + kserve-storage), CoreDNS
#                    (from its Go module), PostgreSQL (Debian's), a Debian image with curl (`helm test`) and
#                    MinIO's server and client (mk/minio.mk's Go builds on that Debian layer),
#                    cached by content hash under $(CACHE)/images, $(CACHE)/kserve and $(CACHE)/coredns;
#                    imported into the cluster when it is up. A warm run only hashes and compares digests.
#   cluster-dns      [root] CoreDNS on the node (manifests/cluster/coredns.yaml): Service names resolve.
#   cluster-kserve   [root] KServe on `make cluster-up`'s node (manifests/cluster/kserve-up.sh).
#   cluster-argo     [root] Argo Workflows on the node (manifests/cluster/argo-up.sh): the pinned
#                    v4.1.2 manifests, controller and argoexec built here from the Go module.
#   cluster-prometheus [root] the Prometheus Operator and a Prometheus on the node
#                    (manifests/cluster/prometheus-up.sh): the pinned v0.93.0 bundle, the operator and
#                    config reloader built here from the Go module, Prometheus v3.13.1 too.
#   test-cluster     [root] tests/cluster/test_cluster_kserve.py: both InferenceServices Ready and
#                    answering on the node; tests/cluster/test_cluster_helm.py: `helm install` of the
#                    chart (manifests/cluster/values-node.yaml), `helm test`, `helm upgrade` under a
#                    polling client; tests/cluster/test_cluster_argo.py: the fissure-train workflow
#                    Succeeded in a `restricted` namespace, its models registered in MLflow, and the
#                    rest of tests/cluster/ (also in `make test` as root, beside the other tests), plus
#                    the opt-in tests/cluster/test_gateway_traefik.py (docs/cluster.md).

KSERVE_VERSION ?= v0.20.0
COREDNS_VERSION ?= v1.12.4
# the newest v4 the Go module proxy serves (v4.1.x: 403); the install manifests are v4.1.2's
ARGO_WORKFLOWS_VERSION ?= v4.0.5
# ../shared/k8s-upstream's bundle (prometheus-up.sh)
PROMETHEUS_OPERATOR_VERSION ?= v0.93.0
# the newest in that operator's compatibility matrix (built from the module github.com/prometheus/prometheus v0.313.1)
PROMETHEUS_VERSION ?= v3.13.1
CLUSTER_IMAGES_ENV = CACHE=$(CACHE) GO=$(GO) UV=$(UV) TAG=$(IMAGE_TAG) KSERVE_VERSION=$(KSERVE_VERSION) COREDNS_VERSION=$(COREDNS_VERSION) \
	ARGO_WORKFLOWS_VERSION=$(ARGO_WORKFLOWS_VERSION) PROMETHEUS_OPERATOR_VERSION=$(PROMETHEUS_OPERATOR_VERSION) PROMETHEUS_VERSION=$(PROMETHEUS_VERSION) MINIO_VERSION=$(MINIO_VERSION) MC_VERSION=$(MC_VERSION) TRAEFIK_VERSION=$(TRAEFIK_VERSION)
CLUSTER_IMAGE_NAMES = serving kserve-controller llmisvc-controller storage-initializer debian-curl postgresql coredns minio mc api mlflow training

.PHONY: cluster-images cluster-kserve cluster-argo cluster-metrics-server cluster-prometheus cluster-gateway cluster-dns test-cluster cluster-images-background

# `make test` runs the node's tests (tests/cluster) in a second pytest beside the others
# (mk/run-tests.sh) and, so that a cold image cache costs as little suite time as possible, first
# starts the images they need building in the background at nice 19 (overlapping the rest of the
# suite); the tests' own `images.sh build` waits for it (a lock) and finds them built. Root only
# (it apt-installs the node's packages first, as the tests would); without root the node tests skip.
# (minio and mc last: `make test` builds the server binary itself, mk/minio.mk, long before)
CLUSTER_TEST_IMAGES = serving kserve-controller llmisvc-controller storage-initializer debian-curl postgresql coredns minio mc metrics-server api mlflow training argo-controller argoexec argocli prometheus-operator prometheus-config-reloader prometheus traefik
test: cluster-images-background
cluster-images-background: venv
	@# a new machine lacks the node's packages (mmdebstrap, containerd, ...): install them first (root)
	@if [ "$$(id -u)" = 0 ]; then $(MAKE) --no-print-directory -s cluster-node-apt || true; fi
	@if [ "$$(id -u)" = 0 ] && command -v mmdebstrap >/dev/null && command -v ctr >/dev/null && command -v flock >/dev/null; then \
	  mkdir -p .fissure; echo ">> building the cluster tests' images in the background (nice 19; log .fissure/images-build.log)"; \
	  $(CLUSTER_IMAGES_ENV) nohup nice -n 19 manifests/cluster/images.sh build $(CLUSTER_TEST_IMAGES) > .fissure/images-build.log 2>&1 & \
	fi

cluster-images: venv cluster-node-apt ## [root] build the serving, KServe controller, llmisvc controller, storage-initializer, PostgreSQL, CoreDNS, curl, MinIO, mc, API, MLflow and training images (cached) and import them into a running cluster
	$(CLUSTER_IMAGES_ENV) manifests/cluster/images.sh build $(CLUSTER_IMAGE_NAMES)
	@if [ -S $(CLUSTER_STATE)/containerd/containerd.sock ]; then \
	  CTR_ADDRESS=$(CLUSTER_STATE)/containerd/containerd.sock $(CLUSTER_IMAGES_ENV) manifests/cluster/images.sh import $(CLUSTER_IMAGE_NAMES); \
	else echo ">> no cluster up: images built, not imported (make cluster-up, then make cluster-images)"; fi

cluster-kserve: k8s-binaries cluster-node-apt ## [root] KServe (Standard mode, local controller and llmisvc images, own webhook certificates, cluster resources) on the cluster-up node
	$(CLUSTER_IMAGES_ENV) manifests/cluster/images.sh build kserve-controller llmisvc-controller storage-initializer
	$(CLUSTER_IMAGES_ENV) manifests/cluster/kserve-up.sh $(K8S_RELEASE_BIN) $(CLUSTER_STATE)

cluster-argo: k8s-binaries cluster-node-apt ## [root] Argo Workflows (pinned v4.1.2 manifests; controller, argoexec and argo-server v4.0.5 built here) on the cluster-up node
	$(CLUSTER_IMAGES_ENV) manifests/cluster/images.sh build argo-controller argoexec argocli
	$(CLUSTER_IMAGES_ENV) manifests/cluster/argo-up.sh $(K8S_RELEASE_BIN) $(CLUSTER_STATE)

cluster-metrics-server: k8s-binaries cluster-node-apt ## [root] metrics-server (built here; the resource metrics API for HPAs and kubectl top) on the cluster-up node
	$(CLUSTER_IMAGES_ENV) manifests/cluster/images.sh build metrics-server
	$(CLUSTER_IMAGES_ENV) manifests/cluster/metrics-server-up.sh $(K8S_RELEASE_BIN) $(CLUSTER_STATE)

cluster-prometheus: k8s-binaries cluster-node-apt ## [root] the Prometheus Operator $(PROMETHEUS_OPERATOR_VERSION) and Prometheus $(PROMETHEUS_VERSION) (built here; kube-prometheus-stack's names and selectors) on the cluster-up node
	$(CLUSTER_IMAGES_ENV) manifests/cluster/images.sh build prometheus-operator prometheus-config-reloader prometheus
	$(CLUSTER_IMAGES_ENV) manifests/cluster/prometheus-up.sh $(K8S_RELEASE_BIN) $(CLUSTER_STATE)

cluster-gateway: k8s-binaries cluster-node-apt ## [root] a Gateway on the cluster-up node: Traefik (built here), Gateway API $(GATEWAY_API_VERSION) CRDs, fissure-gateway/fissure-gateway (after cluster-kserve)
	$(CLUSTER_IMAGES_ENV) manifests/cluster/traefik-up.sh $(K8S_RELEASE_BIN) $(CLUSTER_STATE)

cluster-dns: k8s-binaries cluster-node-apt ## [root] CoreDNS (built here) on the cluster-up node, at kubelet's clusterDNS 10.96.0.10
	$(CLUSTER_IMAGES_ENV) manifests/cluster/images.sh build coredns
	CTR_ADDRESS=$(CLUSTER_STATE)/containerd/containerd.sock $(CLUSTER_IMAGES_ENV) manifests/cluster/images.sh import coredns
	$(K8S_RELEASE_BIN)/kubectl --kubeconfig $(CLUSTER_STATE)/kubeconfigs/admin apply -f manifests/cluster/coredns.yaml
	$(K8S_RELEASE_BIN)/kubectl --kubeconfig $(CLUSTER_STATE)/kubeconfigs/admin -n kube-system rollout status deployment/coredns --timeout=300s

test-cluster: venv k8s-binaries k8s-tools cluster-node-apt ## [root] only the cluster tests (tests/cluster; the node, KServe, the chart and Argo are part of `make test` too) plus the opt-in Traefik gateway test (FISSURE_TEST_CLUSTER=1)
	FISSURE_TEST_CLUSTER=1 $(VENV)/bin/python -m pytest -q tests/cluster $(PYTEST_ARGS)
