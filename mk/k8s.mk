# Kubernetes: the Helm chart, images, a kind cluster, and the offline checks.
# Included by the Makefile (-include mk/*.mk); CACHE, VENV, STAMP and PATH come from there.
#
# Offline (run anywhere, part of `make test` through tests/k8s/):
#   k8s-tools   helm, helm-unittest, kubeconform and argo, built from source with Go at pinned
#               versions into $(CACHE)/bin; version-stamped, so a bump rebuilds.
#   k8s-check   helm lint --strict + helm template (default values and every ci/ profile),
#               helm-unittest, kubeconform -strict on everything rendered and on manifests/,
#               argo lint --offline, and manifests/rendered/ up to date.
#   manifests   regenerate manifests/rendered/ from the chart.
# Cluster (need Docker, kind, kubectl; NOT runnable on the project's CI machines, untested
# there): kind-up, images, deploy, e2e-kind, kind-down.

GO ?= $(shell command -v go 2>/dev/null || echo /usr/local/go/bin/go)
HELM_VERSION ?= v3.21.4
KUBECONFORM_VERSION ?= v0.7.0
HELM_UNITTEST_VERSION ?= v1.1.2
ARGO_VERSION ?= v3.7.0
# Kubernetes version whose JSON schemas (from the kubernetes-validate package) we validate
# against, and that `helm template` renders for.
K8S_SCHEMA_VERSION ?= 1.33.0

K8S_BIN := $(CACHE)/bin
K8S_STAMPS := $(K8S_BIN)/.stamps
HELM := $(K8S_BIN)/helm
HELM_UNITTEST := $(K8S_BIN)/helm-unittest
KUBECONFORM := $(K8S_BIN)/kubeconform
ARGO := $(K8S_BIN)/argo
K8S_TOOL_STAMPS := $(K8S_STAMPS)/helm-$(HELM_VERSION) $(K8S_STAMPS)/kubeconform-$(KUBECONFORM_VERSION) \
	$(K8S_STAMPS)/helm-unittest-$(HELM_UNITTEST_VERSION) $(K8S_STAMPS)/argo-$(ARGO_VERSION)
K8S_SCHEMAS := $(CACHE)/k8s-schemas/v$(K8S_SCHEMA_VERSION)
CRD_SCHEMAS := $(CACHE)/crd-schemas
CHART := charts/fissure
RELEASE ?= fissure
NAMESPACE ?= fissure
KUBECONFORM_FLAGS = -strict -summary -output text \
	-schema-location '$(K8S_SCHEMAS)/{{ .ResourceKind }}{{ .KindSuffix }}.json' \
	-schema-location '$(CRD_SCHEMAS)/{{ .ResourceKind }}_{{ .ResourceAPIVersion }}.json' \
	-schema-location 'tests/k8s/schemas/{{ .ResourceKind }}_{{ .ResourceAPIVersion }}.json'
HELM_TEMPLATE = $(HELM) template $(RELEASE) $(CHART) --namespace $(NAMESPACE) --kube-version $(K8S_SCHEMA_VERSION)

.PHONY: k8s-tools k8s-schemas k8s-check manifests kind-up images deploy e2e-kind kind-down

k8s-tools: ## build helm, helm-unittest, kubeconform, argo from source (pinned, cached in ~/.cache/fissure/bin)
	@for t in helm kubeconform helm-unittest argo; do test -x $(K8S_BIN)/$$t || rm -f $(K8S_STAMPS)/$$t-*; done
	@$(MAKE) --no-print-directory $(K8S_TOOL_STAMPS)

$(K8S_STAMPS)/helm-$(HELM_VERSION):
	@echo ">> building helm $(HELM_VERSION) (go install, a few minutes the first time)"
	@mkdir -p $(K8S_STAMPS) && rm -f $(K8S_STAMPS)/helm-v*
	GOBIN=$(K8S_BIN) $(GO) install -trimpath -ldflags "-X helm.sh/helm/v3/internal/version.version=$(HELM_VERSION)" helm.sh/helm/v3/cmd/helm@$(HELM_VERSION)
	@touch $@

$(K8S_STAMPS)/kubeconform-$(KUBECONFORM_VERSION):
	@echo ">> building kubeconform $(KUBECONFORM_VERSION) (go install)"
	@mkdir -p $(K8S_STAMPS) && rm -f $(K8S_STAMPS)/kubeconform-v*
	GOBIN=$(K8S_BIN) $(GO) install -trimpath github.com/yannh/kubeconform/cmd/kubeconform@$(KUBECONFORM_VERSION)
	@touch $@

# `go install pkg@version` refuses helm-unittest (its go.mod has a replace directive) and
# argo (it asks the proxy for the module's version list, which the proxy refuses). So build
# them from their module source, fetched from the Go module proxy at the pinned version and
# checked against the checksum database by `go mod download`. Argo embeds its web UI; the CLI
# builds with an empty placeholder, as upstream's own CLI build does.
# $(1) module  $(2) version  $(3) package dir  $(4) binary  $(5) extra go build flags
define k8s_build_module
	@set -e; dir=$$(cd $${TMPDIR:-/tmp} && $(GO) mod download -json $(1)@$(2) | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$$/\1/p'); \
	test -n "$$dir" || { echo "go mod download $(1)@$(2) failed" >&2; exit 1; }; \
	tmp=$$(mktemp -d); trap 'chmod -R u+w "$$tmp"; rm -rf "$$tmp"' EXIT; \
	cp -R "$$dir/." "$$tmp/"; chmod -R u+w "$$tmp"; \
	if [ -d "$$tmp/ui" ]; then mkdir -p "$$tmp/ui/dist/app" && echo placeholder > "$$tmp/ui/dist/app/index.html"; fi; \
	cd "$$tmp" && GOFLAGS=-mod=mod $(GO) build -trimpath $(5) -o $(K8S_BIN)/$(4) ./$(3)
endef

$(K8S_STAMPS)/helm-unittest-$(HELM_UNITTEST_VERSION):
	@echo ">> building helm-unittest $(HELM_UNITTEST_VERSION) (module source from the Go proxy)"
	@mkdir -p $(K8S_STAMPS) && rm -f $(K8S_STAMPS)/helm-unittest-v*
	$(call k8s_build_module,github.com/helm-unittest/helm-unittest,$(HELM_UNITTEST_VERSION),cmd/helm-unittest,helm-unittest,)
	@touch $@

$(K8S_STAMPS)/argo-$(ARGO_VERSION):
	@echo ">> building argo $(ARGO_VERSION) CLI (module source from the Go proxy, several minutes)"
	@mkdir -p $(K8S_STAMPS) && rm -f $(K8S_STAMPS)/argo-v*
	$(call k8s_build_module,github.com/argoproj/argo-workflows/v3,$(ARGO_VERSION),cmd/argo,argo,-ldflags "-X github.com/argoproj/argo-workflows/v3.version=$(ARGO_VERSION)")
	@touch $@

k8s-schemas: $(STAMP) ## convert CRDs + Kubernetes schemas to JSON Schema for kubeconform (cached)
	@$(VENV)/bin/python tests/k8s/crd2jsonschema.py k8s $(K8S_SCHEMAS) --version $(K8S_SCHEMA_VERSION)
	@$(VENV)/bin/python tests/k8s/crd2jsonschema.py crds $(CRD_SCHEMAS)

k8s-check: k8s-tools k8s-schemas ## offline Kubernetes checks: lint, template, unittest, kubeconform, argo lint
	@set -eo pipefail; out=$$(mktemp -d); trap 'rm -rf "$$out"' EXIT; \
	echo ">> helm lint --strict + helm template: default values"; \
	$(HELM) lint --strict $(CHART) --kube-version $(K8S_SCHEMA_VERSION) >/dev/null; \
	$(HELM_TEMPLATE) > $$out/default.yaml; \
	for f in $(CHART)/ci/*.yaml; do \
	  echo ">> helm lint --strict + helm template: $$f"; \
	  $(HELM) lint --strict $(CHART) -f $$f --kube-version $(K8S_SCHEMA_VERSION) >/dev/null; \
	  $(HELM_TEMPLATE) -f $$f > $$out/$$(basename $$f); \
	done; \
	echo ">> helm-unittest"; $(HELM_UNITTEST) $(CHART); \
	echo ">> kubeconform -strict (rendered chart + manifests/)"; \
	$(KUBECONFORM) $(KUBECONFORM_FLAGS) $$out manifests; \
	echo ">> argo lint --offline argo/"; $(ARGO) lint --offline argo/; \
	echo ">> manifests/rendered up to date"; \
	$(HELM_TEMPLATE) --skip-tests | diff -u manifests/rendered/fissure.yaml - \
	  || { echo "manifests/rendered/fissure.yaml is stale: run 'make manifests'" >&2; exit 1; }; \
	echo ">> k8s-check: all green"

manifests: k8s-tools ## regenerate manifests/rendered/ (helm template, default values)
	@mkdir -p manifests/rendered
	$(HELM_TEMPLATE) --skip-tests > manifests/rendered/fissure.yaml
	@echo ">> wrote manifests/rendered/fissure.yaml"

# ---------------------------------------------------------------------------- kind cluster
# Untested on the project's machines (no Docker engine there). Needs docker, kind, kubectl.
KIND_CLUSTER ?= fissure
IMAGE_TAG ?= $(shell sed -n 's/^appVersion: *"\{0,1\}\([^"]*\)"\{0,1\}$$/\1/p' $(CHART)/Chart.yaml)
IMAGE_PREFIX ?= ghcr.io/fissure
GATEWAY_HOST ?= fissure.localtest.me

kind-up: ## [needs Docker] kind cluster + cert-manager, KServe v0.20, Argo, Prometheus, Gateway
	manifests/kind/up.sh $(KIND_CLUSTER)

images: ## [needs Docker] build the serving, training and API images and load them into kind
	docker build -f serving/Dockerfile -t $(IMAGE_PREFIX)/fissure-serving:$(IMAGE_TAG) .
	docker build -f training/Dockerfile -t $(IMAGE_PREFIX)/fissure-training:$(IMAGE_TAG) .
	docker build -f Dockerfile -t $(IMAGE_PREFIX)/fissure-api:$(IMAGE_TAG) .
	kind load docker-image --name $(KIND_CLUSTER) $(IMAGE_PREFIX)/fissure-serving:$(IMAGE_TAG) \
	  $(IMAGE_PREFIX)/fissure-training:$(IMAGE_TAG) $(IMAGE_PREFIX)/fissure-api:$(IMAGE_TAG)

deploy: k8s-tools ## [needs a cluster] create secrets if absent, upload models, helm upgrade --install
	manifests/kind/secrets.sh $(NAMESPACE)
	$(HELM) upgrade --install $(RELEASE) $(CHART) --namespace $(NAMESPACE) --create-namespace \
	  --set servingRuntime.image.tag=$(IMAGE_TAG) --set servingRuntime.image.pullPolicy=Never \
	  --set route.host=$(GATEWAY_HOST) --set route.grpcHostSuffix=grpc.$(GATEWAY_HOST) \
	  --wait --timeout 10m $(HELM_ARGS)
	manifests/kind/upload-models.sh $(NAMESPACE) $(RELEASE)

e2e-kind: ## [needs a cluster] helm test, then REST (curl) and gRPC (fissure predict) through the gateway
	manifests/kind/e2e.sh $(NAMESPACE) $(RELEASE) $(GATEWAY_HOST)

kind-down: ## [needs Docker] delete the kind cluster
	kind delete cluster --name $(KIND_CLUSTER)
