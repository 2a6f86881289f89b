# The single-node cluster's images, built here (no registry, no Docker daemon) and imported into
# its containerd. Included by the Makefile (mk/*.mk); docs/cluster.md explains it.
#
#   cluster-images   [root] fissure's serving image (serving/Dockerfile's recipe: Debian bookworm
#                    by mmdebstrap + the venv by uv from its cache), KServe's controller (from its
#                    Go module) and KServe's storage initializer (Debian trixie + kserve-storage),
#                    cached by content hash under $(CACHE)/images and $(CACHE)/kserve; imported
#                    into the cluster when it is up. A warm run only hashes and compares digests.
#   cluster-kserve   [root] KServe on `make cluster-up`'s node (manifests/cluster/kserve-up.sh).
#   test-cluster     [root] tests/cluster/test_cluster_kserve.py: both InferenceServices Ready and
#                    answering on the node. Not part of `make test` (~7-10 min with the images
#                    cached, ~30 min more from an empty cache: see docs/cluster.md).

KSERVE_VERSION ?= v0.20.0
CLUSTER_IMAGES_ENV = CACHE=$(CACHE) GO=$(GO) UV=$(UV) TAG=$(IMAGE_TAG) KSERVE_VERSION=$(KSERVE_VERSION)

.PHONY: cluster-images cluster-kserve test-cluster

cluster-images: venv cluster-node-apt ## [root] build the serving, KServe controller and storage-initializer images (cached) and import them into a running cluster
	$(CLUSTER_IMAGES_ENV) manifests/cluster/images.sh build serving kserve-controller storage-initializer
	@if [ -S $(CLUSTER_STATE)/containerd/containerd.sock ]; then \
	  CTR_ADDRESS=$(CLUSTER_STATE)/containerd/containerd.sock $(CLUSTER_IMAGES_ENV) manifests/cluster/images.sh import serving kserve-controller storage-initializer; \
	else echo ">> no cluster up: images built, not imported (make cluster-up, then make cluster-images)"; fi

cluster-kserve: k8s-binaries cluster-node-apt ## [root] KServe (Standard mode, local controller image, own webhook certificates) on the cluster-up node
	$(CLUSTER_IMAGES_ENV) manifests/cluster/images.sh build kserve-controller storage-initializer
	$(CLUSTER_IMAGES_ENV) manifests/cluster/kserve-up.sh $(K8S_RELEASE_BIN) $(CLUSTER_STATE)

test-cluster: venv k8s-binaries k8s-tools cluster-node-apt ## [root] the cluster test that builds images (~7-10 min warm, ~30 min more cold): both InferenceServices on the node
	FISSURE_TEST_CLUSTER=1 $(VENV)/bin/python -m pytest -q tests/cluster/test_cluster_kserve.py $(PYTEST_ARGS)
