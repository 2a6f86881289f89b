#!/usr/bin/env bash
# make cluster-up: a single-node Kubernetes cluster of real components on this machine, no
# containers around them (kind's node containers need `docker run --privileged`, which these
# machines refuse): etcd, kube-apiserver, kube-controller-manager, kube-scheduler, containerd
# + runc, CNI (bridge + host-local + portmap + firewall), kubelet. State, logs and pids under
# .fissure/cluster; `make cluster-down` (down.sh) stops all of it and removes what kubelet
# leaves (/var/lib/kubelet, /var/log/pods, mounts).
#
# containerd's image store (its root: content and unpacked snapshots, no containers once
# down.sh ran) may live outside the state (CONTAINERD_ROOT; `make cluster-up` keeps it in
# ~/.cache/fissure/containerd), so a later cluster starts with the images already imported:
# the serving image alone is 5.7 GB and minutes to import.
#
# Needs root, the binaries of `make k8s-binaries`, and Debian's etcd-server, containerd, runc,
# containernetworking-plugins (`make cluster-node-apt`). docs/cluster.md says what works.
#
# usage: up.sh BIN_DIR [STATE_DIR]   (env: CONTAINERD_ROOT, default STATE_DIR/containerd/root)
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
bin="${1:?usage: up.sh BIN_DIR [STATE_DIR]}"
state="$(mkdir -p "${2:-.fissure/cluster}" && cd "${2:-.fissure/cluster}" && pwd)"
node="${CLUSTER_NODE_NAME:-fissure-node}"
pause_image=fissure.local/pause:3.10
etcd_port=12379; etcd_peer=12380; api_port=16443
pod_cidr=10.244.0.0/24; service_cidr=10.96.0.0/16

[ "$(id -u)" = 0 ] || { echo "cluster-up: needs root (kubelet, containerd, CNI)" >&2; exit 1; }
for tool in etcd containerd runc ctr openssl iptables; do
  command -v "$tool" >/dev/null || { echo "cluster-up: '$tool' is not installed: make cluster-node-apt" >&2; exit 1; }
done
for b in kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy kubectl; do
  [ -x "$bin/$b" ] || { echo "cluster-up: $bin/$b missing: make k8s-binaries" >&2; exit 1; }
done
cni_bin=/usr/lib/cni
[ -x "$cni_bin/bridge" ] || { echo "cluster-up: CNI plugins missing in $cni_bin: make cluster-node-apt" >&2; exit 1; }

mkdir -p "$state"/{pki,logs,pids,net.d,containerd,kubeconfigs}
echo "$bin" > "$state/bin-dir"  # down.sh runs `kube-proxy --cleanup` from here
containerd_root="$(mkdir -p "${CONTAINERD_ROOT:-$state/containerd/root}" && cd "${CONTAINERD_ROOT:-$state/containerd/root}" && pwd)"
echo "$containerd_root" > "$state/containerd-root"  # down.sh unmounts under it, and keeps it when outside
log() { echo ">> cluster-up: $*"; }
running() { [ -f "$state/pids/$1.pid" ] && kill -0 "$(cat "$state/pids/$1.pid")" 2>/dev/null; }
start() {  # start NAME CMD...: in the background, once; log and pid under $state
  local name=$1; shift
  if running "$name"; then log "$name already running (pid $(cat "$state/pids/$name.pid"))"; return; fi
  log "starting $name"
  setsid "$@" >"$state/logs/$name.log" 2>&1 < /dev/null &
  echo $! > "$state/pids/$name.pid"
}
wait_for() {  # wait_for WHAT SECONDS CMD...
  local what=$1 secs=$2 i; shift 2
  for ((i = 0; i < secs; i++)); do "$@" >/dev/null 2>&1 && return 0; sleep 1; done
  echo "cluster-up: $what not ready after ${secs}s; see $state/logs/" >&2; return 1
}
host_ip=$(ip -4 route get 1.1.1.1 2>/dev/null | sed -n 's/.* src \([0-9.]*\).*/\1/p')
[ -n "$host_ip" ] || { echo "cluster-up: no non-loopback IPv4 address (kube-apiserver refuses to advertise loopback)" >&2; exit 1; }

# ---- credentials: a CA for the apiserver's serving cert, the service-account key, tokens
if [ ! -f "$state/pki/ca.crt" ]; then
  log "making the cluster CA, the apiserver certificate and the service-account key"
  openssl req -x509 -newkey rsa:2048 -nodes -days 3650 -subj "/CN=fissure-cluster-ca" \
    -keyout "$state/pki/ca.key" -out "$state/pki/ca.crt" 2>/dev/null
  openssl req -newkey rsa:2048 -nodes -subj "/CN=kube-apiserver" \
    -keyout "$state/pki/apiserver.key" -out "$state/pki/apiserver.csr" 2>/dev/null
  printf 'subjectAltName=IP:127.0.0.1,IP:%s,IP:10.96.0.1,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local\n' \
    "$host_ip" > "$state/pki/apiserver.ext"
  openssl x509 -req -in "$state/pki/apiserver.csr" -CA "$state/pki/ca.crt" -CAkey "$state/pki/ca.key" \
    -CAcreateserial -days 3650 -extfile "$state/pki/apiserver.ext" -out "$state/pki/apiserver.crt" 2>/dev/null
  openssl genrsa -out "$state/pki/sa.key" 2048 2>/dev/null
  # token,user,uid,"groups": the identities the bootstrap RBAC policy knows
  {
    echo "$(openssl rand -hex 16),admin,admin,\"system:masters\""
    echo "$(openssl rand -hex 16),system:kube-controller-manager,kcm"
    echo "$(openssl rand -hex 16),system:kube-scheduler,sched"
    echo "$(openssl rand -hex 16),system:node:$node,node,\"system:nodes\""
    echo "$(openssl rand -hex 16),system:kube-proxy,proxy"
  } > "$state/pki/tokens.csv"
  chmod 600 "$state/pki/"*.key "$state/pki/tokens.csv"
fi
if [ ! -f "$state/pki/kubelet-client.crt" ]; then
  # the apiserver's client certificate towards the kubelet (logs, exec, port-forward)
  openssl req -newkey rsa:2048 -nodes -subj "/O=system:masters/CN=kube-apiserver-kubelet-client" \
    -keyout "$state/pki/kubelet-client.key" -out "$state/pki/kubelet-client.csr" 2>/dev/null
  openssl x509 -req -in "$state/pki/kubelet-client.csr" -CA "$state/pki/ca.crt" -CAkey "$state/pki/ca.key" \
    -CAcreateserial -days 3650 -out "$state/pki/kubelet-client.crt" 2>/dev/null
  chmod 600 "$state/pki/kubelet-client.key"
fi
if [ ! -f "$state/pki/front-proxy-client.crt" ]; then
  # the aggregation layer (metrics-server's metrics.k8s.io): the apiserver proxies to extension
  # API servers with this client certificate, which they check against the front-proxy CA
  openssl req -x509 -newkey rsa:2048 -nodes -days 3650 -subj "/CN=fissure-front-proxy-ca" \
    -keyout "$state/pki/front-proxy-ca.key" -out "$state/pki/front-proxy-ca.crt" 2>/dev/null
  openssl req -newkey rsa:2048 -nodes -subj "/CN=front-proxy-client" \
    -keyout "$state/pki/front-proxy-client.key" -out "$state/pki/front-proxy-client.csr" 2>/dev/null
  openssl x509 -req -in "$state/pki/front-proxy-client.csr" -CA "$state/pki/front-proxy-ca.crt" \
    -CAkey "$state/pki/front-proxy-ca.key" -CAcreateserial -days 3650 -out "$state/pki/front-proxy-client.crt" 2>/dev/null
  chmod 600 "$state/pki/front-proxy-ca.key" "$state/pki/front-proxy-client.key"
fi
kubeconfig() {  # kubeconfig NAME USER
  local token; token=$(awk -F, -v u="$2" '$2 == u {print $1}' "$state/pki/tokens.csv")
  cat > "$state/kubeconfigs/$1" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: fissure
  cluster:
    server: https://127.0.0.1:$api_port
    certificate-authority: $state/pki/ca.crt
users:
- name: $2
  user:
    token: $token
contexts:
- name: fissure
  context: {cluster: fissure, user: "$2"}
current-context: fissure
EOF
  chmod 600 "$state/kubeconfigs/$1"
}
kubeconfig admin admin
kubeconfig controller-manager system:kube-controller-manager
kubeconfig scheduler system:kube-scheduler
kubeconfig kubelet "system:node:$node"
kubeconfig kube-proxy system:kube-proxy
kubectl=("$bin/kubectl" --kubeconfig "$state/kubeconfigs/admin")

# ---- control plane
start etcd etcd --name fissure --data-dir "$state/etcd" \
  --listen-client-urls "http://127.0.0.1:$etcd_port" --advertise-client-urls "http://127.0.0.1:$etcd_port" \
  --listen-peer-urls "http://127.0.0.1:$etcd_peer" --initial-advertise-peer-urls "http://127.0.0.1:$etcd_peer" \
  --initial-cluster "fissure=http://127.0.0.1:$etcd_peer" --log-level warn
start kube-apiserver "$bin/kube-apiserver" --etcd-servers "http://127.0.0.1:$etcd_port" \
  --bind-address 0.0.0.0 --secure-port "$api_port" --advertise-address "$host_ip" \
  --tls-cert-file "$state/pki/apiserver.crt" --tls-private-key-file "$state/pki/apiserver.key" \
  --client-ca-file "$state/pki/ca.crt" --token-auth-file "$state/pki/tokens.csv" \
  --authorization-mode Node,RBAC --enable-admission-plugins NodeRestriction,PodSecurity \
  --service-account-issuer https://kubernetes.default.svc \
  --service-account-key-file "$state/pki/sa.key" --service-account-signing-key-file "$state/pki/sa.key" \
  --service-cluster-ip-range "$service_cidr" --allow-privileged=true --profiling=false \
  --kubelet-preferred-address-types InternalIP,Hostname \
  --kubelet-client-certificate "$state/pki/kubelet-client.crt" --kubelet-client-key "$state/pki/kubelet-client.key" \
  --requestheader-client-ca-file "$state/pki/front-proxy-ca.crt" --requestheader-allowed-names front-proxy-client \
  --requestheader-username-headers X-Remote-User --requestheader-group-headers X-Remote-Group \
  --requestheader-extra-headers-prefix X-Remote-Extra- \
  --proxy-client-cert-file "$state/pki/front-proxy-client.crt" --proxy-client-key-file "$state/pki/front-proxy-client.key" \
  --enable-aggregator-routing=true
wait_for kube-apiserver 180 "${kubectl[@]}" get --raw /readyz
start kube-controller-manager "$bin/kube-controller-manager" \
  --kubeconfig "$state/kubeconfigs/controller-manager" \
  --authentication-kubeconfig "$state/kubeconfigs/controller-manager" \
  --authorization-kubeconfig "$state/kubeconfigs/controller-manager" \
  --service-account-private-key-file "$state/pki/sa.key" --root-ca-file "$state/pki/ca.crt" \
  --use-service-account-credentials --cluster-signing-cert-file "$state/pki/ca.crt" \
  --cluster-signing-key-file "$state/pki/ca.key" --service-cluster-ip-range "$service_cidr" \
  --bind-address 127.0.0.1 --leader-elect=false --profiling=false
start kube-scheduler "$bin/kube-scheduler" --kubeconfig "$state/kubeconfigs/scheduler" \
  --authentication-kubeconfig "$state/kubeconfigs/scheduler" \
  --authorization-kubeconfig "$state/kubeconfigs/scheduler" \
  --bind-address 127.0.0.1 --leader-elect=false --profiling=false

# ---- the node: containerd + runc, CNI, kubelet
# restrict_oom_score_adj: this machine's bounding set lacks CAP_SYS_RESOURCE, so neither
# containerd nor kubelet may lower an oom_score_adj below their own.
cat > "$state/containerd/config.toml" <<EOF
version = 2
root = "$containerd_root"
state = "$state/containerd/state"
[grpc]
  address = "$state/containerd/containerd.sock"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "$pause_image"
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "$cni_bin"
    conf_dir = "$state/net.d"
EOF
cat > "$state/net.d/10-fissure.conflist" <<EOF
{
  "cniVersion": "1.0.0",
  "name": "fissure",
  "plugins": [
    {"type": "bridge", "bridge": "fissure0", "isGateway": true, "ipMasq": true, "hairpinMode": true,
     "ipam": {"type": "host-local", "ranges": [[{"subnet": "$pod_cidr"}]], "routes": [{"dst": "0.0.0.0/0"}],
              "dataDir": "$state/cni-ipam"}},
    {"type": "portmap", "capabilities": {"portMappings": true}},
    {"type": "firewall"}
  ]
}
EOF
start containerd containerd --config "$state/containerd/config.toml"
ctr=(ctr --address "$state/containerd/containerd.sock" -n k8s.io)
wait_for containerd 60 "${ctr[@]}" version

if ! "${ctr[@]}" images ls -q | grep -qx "$pause_image"; then
  log "building $pause_image (no registry here: a Go pause binary in a one-layer OCI image)"
  (cd "$here/pause" && CGO_ENABLED=0 ${GO:-go} build -trimpath -ldflags "-s -w" -o "$state/pause" .)
  python3 "$here/oci-image.py" --name "$pause_image" --file "$state/pause:/pause" --entrypoint /pause "$state/pause.tar"
  "${ctr[@]}" images import "$state/pause.tar"
fi

cat > "$state/kubelet-config.yaml" <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: true}
  x509: {clientCAFile: "$state/pki/ca.crt"}
authorization: {mode: Webhook}
containerRuntimeEndpoint: unix://$state/containerd/containerd.sock
cgroupDriver: cgroupfs
failSwapOn: false
failCgroupV1: false
# no CAP_SYS_RESOURCE here: kubelet may neither lower its oom_score_adj (default -999) nor raise
# its open-files limit past the hard limit (20000)
oomScoreAdj: 0
maxOpenFiles: 20000
clusterDomain: cluster.local
clusterDNS: ["10.96.0.10"]
podCIDR: "$pod_cidr"
resolvConf: /etc/resolv.conf
# small disks: evict only when nearly full
evictionHard: {"memory.available": "100Mi", "nodefs.available": "2%", "imagefs.available": "2%"}
imageGCHighThresholdPercent: 98
imageGCLowThresholdPercent: 95
serializeImagePulls: false
EOF
start kubelet "$bin/kubelet" --config "$state/kubelet-config.yaml" \
  --kubeconfig "$state/kubeconfigs/kubelet" --hostname-override "$node" \
  --node-ip "$host_ip" --v=1
wait_for "node $node" 120 "${kubectl[@]}" get node "$node"
wait_for "node $node Ready" 180 "${kubectl[@]}" wait --for=condition=Ready "node/$node" --timeout=5s
# kube-proxy (iptables mode): Services' ClusterIPs. oomScoreAdj 0 and no conntrack sysctl
# changes, for the same missing CAP_SYS_RESOURCE.
cat > "$state/kube-proxy-config.yaml" <<EOF
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
clientConnection: {kubeconfig: "$state/kubeconfigs/kube-proxy"}
mode: iptables
clusterCIDR: "$pod_cidr"
hostnameOverride: "$node"
oomScoreAdj: 0
conntrack: {maxPerCore: 0}
EOF
start kube-proxy "$bin/kube-proxy" --config "$state/kube-proxy-config.yaml"
# pods are refused until kube-controller-manager has made the namespace's ServiceAccount
wait_for "the default ServiceAccount" 120 "${kubectl[@]}" -n default get serviceaccount default
log "cluster up: export KUBECONFIG=$state/kubeconfigs/admin"
