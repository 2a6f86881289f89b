# MinIO for the API's blob tests: tests/api starts a throwaway server to run the blobs on s3://
# as the chart's MinIO serves them. Included by the Makefile (-include mk/*.mk); CACHE, GO's
# default and PATH ($(CACHE)/bin first) come from there and mk/k8s.mk.
#   make minio   build the pinned MinIO server with Go into $(CACHE)/bin/minio; version-stamped
#                (like mk/k8s.mk's tools), so a bump rebuilds and a warm cache costs nothing.
#   make minio-mc  build the MinIO client (mc) the same way into $(CACHE)/bin/mc (static, CGO off):
#                the chart's buckets Job and upload-models.sh run it on the single-node cluster
#                (manifests/cluster/images.sh's mc image).

GO ?= $(shell command -v go 2>/dev/null || echo /usr/local/go/bin/go)
# MinIO publishes no Go-module tags, so a pseudo-version pins the commit; its go.mod has no
# replace directives, so a plain `go install pkg@version` builds it from the Go module proxy.
MINIO_VERSION ?= v0.0.0-20260212201848-7aac2a2c5b7c
MINIO_BIN_DIR := $(CACHE)/bin
MINIO_STAMPS := $(MINIO_BIN_DIR)/.stamps
MINIO := $(MINIO_BIN_DIR)/minio
# the client at the version MinIO's own go.mod requires (so its modules are mostly cached already);
# like the server, mc publishes no Go-module tags, and its go.mod has no replace directives
MC_VERSION ?= v0.0.0-20250313080218-cf909e1063a9
MC := $(MINIO_BIN_DIR)/mc

.PHONY: minio minio-mc

minio: ## build the pinned MinIO server (go install, cached in ~/.cache/fissure/bin) for the API's s3:// blob tests
	@test -x $(MINIO) || rm -f $(MINIO_STAMPS)/minio-*
	@$(MAKE) --no-print-directory $(MINIO_STAMPS)/minio-$(MINIO_VERSION)

$(MINIO_STAMPS)/minio-$(MINIO_VERSION):
	@echo ">> building minio $(MINIO_VERSION) (go install, several minutes the first time)"
	@mkdir -p $(MINIO_STAMPS) && rm -f $(MINIO_STAMPS)/minio-*
	GOBIN=$(MINIO_BIN_DIR) $(GO) install -trimpath github.com/minio/minio@$(MINIO_VERSION)
	@touch $@

minio-mc: ## build the pinned MinIO client mc (go install, static, cached in ~/.cache/fissure/bin) for the cluster's mc image
	@test -x $(MC) || rm -f $(MINIO_STAMPS)/mc-*
	@$(MAKE) --no-print-directory $(MINIO_STAMPS)/mc-$(MC_VERSION)

$(MINIO_STAMPS)/mc-$(MC_VERSION):
	@echo ">> building mc $(MC_VERSION) (go install, a few minutes the first time)"
	@mkdir -p $(MINIO_STAMPS) && rm -f $(MINIO_STAMPS)/mc-*
	GOBIN=$(MINIO_BIN_DIR) CGO_ENABLED=0 nice -n 10 $(GO) install -trimpath -ldflags "-s -w" github.com/minio/mc@$(MC_VERSION)
	@touch $@

# `make test` gets MinIO too (a prerequisite added here, beside the Makefile's venv and java)
test: minio
