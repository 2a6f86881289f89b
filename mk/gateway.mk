# The Gateway API implementation for the cluster: Traefik, built here from its Go module, and the
# Gateway API CRDs its provider needs. Included by the Makefile; CACHE comes from there, GO from
# mk/k8s.mk (used in recipes only: this file is included first). docs/cluster.md explains it.
#
#   gateway-traefik  traefik $(TRAEFIK_VERSION) (static, CGO off) from the Go module proxy into
#                    $(CACHE)/bin/traefik; version-stamped, so a bump rebuilds (~20+ min cold on
#                    two cores: the module's dependencies are large), and Traefik's own RBAC for
#                    its Gateway provider (docs/.../kubernetes-gateway-rbac.yml of the same module)
#                    into $(TRAEFIK_RBAC).
#   gateway-crds     the Gateway API $(GATEWAY_API_VERSION) standard-channel CRDs, from the
#                    sigs.k8s.io/gateway-api Go module's config/crd/standard (no release download),
#                    into $(GATEWAY_API_CRDS).
#   gateway-paths    print the paths above as KEY=VALUE (tests/cluster/test_gateway_traefik.py).
#
# Versions: Traefik v3.6's Kubernetes Gateway provider watches BackendTLSPolicy v1, which is in the
# standard channel from Gateway API v1.4 on: against the pinned v1.2.1 CRDs its provider never
# starts (`failed to list *v1.BackendTLSPolicy`). v3.6.12 and v3.6.13 require gateway-api v1.4.0;
# the proxy serves v1.4.0 and v1.4.1 (the v1.4 patch release, pinned here; also v1.2.1, v1.3.0,
# v1.5.0). Traefik: v3.6.13 is the newest v3.6 the proxy serves (2026-12-02: v3.6.14 403
# "not available", v3.6.11 404 from the checksum database; its version list names only v3.6.12
# and v3.7.11-13). v3.7 was not tried (issue 16: it replaces a nested module its zip lacks).

TRAEFIK_VERSION ?= v3.6.13
GATEWAY_API_VERSION ?= v1.4.1
GATEWAY_BIN := $(CACHE)/bin
GATEWAY_STAMPS := $(GATEWAY_BIN)/.stamps
TRAEFIK := $(GATEWAY_BIN)/traefik
TRAEFIK_STAMP := $(GATEWAY_STAMPS)/traefik-$(TRAEFIK_VERSION)
TRAEFIK_RBAC := $(CACHE)/gateway-api/traefik-$(TRAEFIK_VERSION)-gateway-rbac.yaml
GATEWAY_API_CRDS := $(CACHE)/gateway-api/$(GATEWAY_API_VERSION)/standard
GATEWAY_API_CRDS_STAMP := $(GATEWAY_API_CRDS)/.copied

.PHONY: gateway-traefik gateway-crds gateway-paths

gateway-traefik: ## build Traefik $(TRAEFIK_VERSION) from the Go module proxy into ~/.cache/fissure/bin (stamped; ~20+ min once)
	@test -x $(TRAEFIK) || rm -f $(TRAEFIK_STAMP)
	@$(MAKE) --no-print-directory $(TRAEFIK_STAMP) $(TRAEFIK_RBAC)

# $(1) module@version; sets dir to its downloaded (read-only) module directory
define gateway_module_dir
dir=$$(cd $${TMPDIR:-/tmp} && $(GO) mod download -json $(1) | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$$/\1/p'); \
	test -n "$$dir" || { echo "go mod download $(1) failed" >&2; exit 1; }
endef

$(TRAEFIK_RBAC):
	@set -e; $(call gateway_module_dir,github.com/traefik/traefik/v3@$(TRAEFIK_VERSION)); \
	mkdir -p $(@D); cp "$$dir/docs/content/reference/dynamic-configuration/kubernetes-gateway-rbac.yml" $@.tmp; \
	chmod u+w $@.tmp; mv $@.tmp $@

# Its web UI is embedded from webui/static, which the module zip carries prebuilt.
$(TRAEFIK_STAMP):
	@echo ">> building traefik $(TRAEFIK_VERSION) (module source from the Go proxy, ~20+ min the first time)"
	@mkdir -p $(GATEWAY_STAMPS) && rm -f $(GATEWAY_STAMPS)/traefik-v*
	@set -e; $(call gateway_module_dir,github.com/traefik/traefik/v3@$(TRAEFIK_VERSION)); \
	tmp=$$(mktemp -d); trap 'chmod -R u+w "$$tmp"; rm -rf "$$tmp"' EXIT; \
	cp -R "$$dir/." "$$tmp/"; chmod -R u+w "$$tmp"; \
	cd "$$tmp" && CGO_ENABLED=0 GOFLAGS=-mod=mod nice -n 10 $(GO) build -trimpath \
	  -ldflags "-s -w -X github.com/traefik/traefik/v3/pkg/version.Version=$(TRAEFIK_VERSION)" \
	  -o $(TRAEFIK).tmp ./cmd/traefik; \
	mv $(TRAEFIK).tmp $(TRAEFIK); $(TRAEFIK) version | grep -q 'Version:[[:space:]]*$(TRAEFIK_VERSION)$$'
	@touch $@

gateway-crds: $(GATEWAY_API_CRDS_STAMP) ## the Gateway API $(GATEWAY_API_VERSION) standard CRDs from its Go module (no release download)

$(GATEWAY_API_CRDS_STAMP):
	@set -e; $(call gateway_module_dir,sigs.k8s.io/gateway-api@$(GATEWAY_API_VERSION)); \
	rm -rf $(GATEWAY_API_CRDS) && mkdir -p $(GATEWAY_API_CRDS); \
	cp "$$dir"/config/crd/standard/*.yaml $(GATEWAY_API_CRDS)/; chmod u+w $(GATEWAY_API_CRDS)/*.yaml; \
	ls $(GATEWAY_API_CRDS)/gateway.networking.k8s.io_backendtlspolicies.yaml >/dev/null
	@touch $@

gateway-paths: ## print the gateway tool paths as KEY=VALUE (tests/cluster reads them)
	@echo TRAEFIK_VERSION=$(TRAEFIK_VERSION)
	@echo TRAEFIK=$(TRAEFIK)
	@echo TRAEFIK_STAMP=$(TRAEFIK_STAMP)
	@echo TRAEFIK_RBAC=$(TRAEFIK_RBAC)
	@echo GATEWAY_API_VERSION=$(GATEWAY_API_VERSION)
	@echo GATEWAY_API_CRDS=$(GATEWAY_API_CRDS)
