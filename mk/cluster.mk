# A real Kubernetes control plane (and, best effort, a node) on this machine, for the tests.
# Included by the Makefile; CACHE, VENV and PATH come from there. docs/cluster.md explains it.
#
#   k8s-binaries  kube-apiserver, kube-controller-manager, kube-scheduler, kubelet, kube-proxy and
#                 kubectl at $(K8S_VERSION), built from the Go module proxy through a wrapper module
#                 (mk/build-kubernetes.sh) into $(K8S_RELEASE_BIN); stamped, so built once.
#   cluster-apt   Debian's etcd-server (kube-apiserver stores into it) and shellcheck (apt).
#   cluster-up / cluster-down   the single-node cluster, state under .fissure/cluster.

K8S_VERSION ?= v1.34.12
K8S_RELEASE_BIN := $(CACHE)/k8s/$(K8S_VERSION)/bin
K8S_BINARIES := kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy kubectl
K8S_BINARIES_STAMP := $(K8S_RELEASE_BIN)/.built
ETCD ?= $(shell command -v etcd 2>/dev/null || echo /usr/bin/etcd)

.PHONY: k8s-binaries cluster-apt cluster-paths cluster-node-apt cluster-up cluster-down cluster-images-clean

k8s-binaries: $(K8S_BINARIES_STAMP) cluster-apt ## build Kubernetes $(K8S_VERSION) binaries (Go module proxy, ~7 min once) + etcd

# The stamp names the binary list too, so adding a binary rebuilds.
$(K8S_BINARIES_STAMP): mk/build-kubernetes.sh
	@for b in $(K8S_BINARIES); do test -x $(K8S_RELEASE_BIN)/$$b || { rm -f $@; break; }; done
	@if [ -f $@ ] && [ "$$(cat $@)" = "$(K8S_BINARIES)" ]; then touch $@; else \
	  echo ">> building Kubernetes $(K8S_VERSION) into $(K8S_RELEASE_BIN) (~7 min and ~9 GB of Go caches the first time)"; \
	  GO=$(GO) mk/build-kubernetes.sh $(K8S_VERSION) $(K8S_RELEASE_BIN) $(K8S_BINARIES) && \
	  echo "$(K8S_BINARIES)" > $@; fi

cluster-apt: ## make sure etcd and shellcheck are there for the cluster tests (apt-get install etcd-server shellcheck when root)
	@missing=""; command -v etcd >/dev/null 2>&1 || missing="$$missing etcd-server"; \
	command -v shellcheck >/dev/null 2>&1 || missing="$$missing shellcheck"; \
	if [ -z "$$missing" ]; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		echo ">> installing$$missing (apt-get)"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing; \
	else \
		echo "the cluster tests need:$$missing (apt-get install$$missing, or your system's packages)" >&2; exit 1; \
	fi

# `make test` gets the binaries too (cached: a warm run only checks the stamp)
test: k8s-binaries

cluster-paths: ## print the cluster tool paths as KEY=VALUE (tests/cluster reads them)
	@echo K8S_VERSION=$(K8S_VERSION)
	@echo K8S_RELEASE_BIN=$(K8S_RELEASE_BIN)
	@echo K8S_BINARIES_STAMP=$(K8S_BINARIES_STAMP)
	@echo ETCD=$(ETCD)
	@echo CONTAINERD_ROOT=$(CLUSTER_CONTAINERD_ROOT)

# ---------------------------------------------------------------------------- single-node cluster
CLUSTER_STATE ?= .fissure/cluster
# containerd's image store, kept between clusters (images only after cluster-down): importing the
# 5.7 GB serving image takes minutes, a kept one is there at once
CLUSTER_CONTAINERD_ROOT ?= $(CACHE)/containerd

cluster-node-apt: ## make sure containerd, runc, the CNI plugins, iptables, conntrack and mmdebstrap are there (apt-get when root)
	@missing=""; for p in containerd:containerd runc:runc iptables:iptables conntrack:conntrack mmdebstrap:mmdebstrap; do \
	  command -v $${p%%:*} >/dev/null 2>&1 || missing="$$missing $${p#*:}"; done; \
	test -x /usr/lib/cni/bridge || missing="$$missing containernetworking-plugins"; \
	if [ -z "$$missing" ]; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		echo ">> installing$$missing (apt-get)"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing; \
	else \
		echo "the cluster node needs:$$missing (apt-get install$$missing)" >&2; exit 1; \
	fi

cluster-up: k8s-binaries cluster-node-apt ## [root] single-node cluster on this machine (etcd, control plane, containerd, kubelet); state in .fissure/cluster
	GO=$(GO) CONTAINERD_ROOT=$(CLUSTER_CONTAINERD_ROOT) manifests/cluster/up.sh $(K8S_RELEASE_BIN) $(CLUSTER_STATE)

cluster-down: ## stop the single-node cluster and remove its state, /var/lib/kubelet and /var/log/pods (the image store stays)
	manifests/cluster/down.sh $(CLUSTER_STATE)

cluster-images-clean: ## [root] remove the kept image store (~12 GB with the serving image); refused while a node runs
	@if [ -e /var/lib/kubelet ] || pgrep -f "containerd --config .*/containerd/config.toml" >/dev/null; then \
	  echo "cluster-images-clean: a cluster is up: make cluster-down first" >&2; exit 1; fi
	rm -rf $(CLUSTER_CONTAINERD_ROOT)
