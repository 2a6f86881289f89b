#!/usr/bin/env bash
# make cluster-down: stop what up.sh started (by the pids it recorded: kubelet, the pods, then the
# rest newest first), then remove what kubelet and containerd leave behind: pod sandboxes and
# their mounts, /var/lib/kubelet, /var/log/pods, /var/log/containers, the CNI bridge, and the
# state directory. An image store outside the state (up.sh's CONTAINERD_ROOT) is kept, with
# images only: `make cluster-images-clean` removes it.
#
# usage: down.sh [STATE_DIR]
set -uo pipefail
state="${1:-.fissure/cluster}"
[ -d "$state" ] || { echo ">> cluster-down: nothing at $state"; exit 0; }
state="$(cd "$state" && pwd)"
log() { echo ">> cluster-down: $*"; }

# kubelet first (it would restart what is removed next), then every pod's containers through
# the runtime while containerd still runs: with a kept image store (CONTAINERD_ROOT outside the
# state) the next containerd starts with images only.
stop_pid() {  # stop_pid NAME: by the pid up.sh recorded
  local pidfile="$state/pids/$1.pid" pid
  [ -f "$pidfile" ] || return 0
  pid=$(cat "$pidfile")
  if kill -0 "$pid" 2>/dev/null; then
    log "stopping $1 (pid $pid)"
    kill -TERM "$pid" 2>/dev/null
    for _ in $(seq 1 20); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
    kill -0 "$pid" 2>/dev/null && { log "$1 did not stop: SIGKILL"; kill -KILL "$pid" 2>/dev/null; }
  fi
  rm -f "$pidfile"
}
stop_pid kubelet
sock="$state/containerd/containerd.sock"
if [ -S "$sock" ] && command -v ctr >/dev/null; then
  ctr=(ctr --address "$sock" -n k8s.io)
  for t in $("${ctr[@]}" tasks ls -q 2>/dev/null); do "${ctr[@]}" tasks kill -s SIGKILL "$t" >/dev/null 2>&1; done
  sleep 1
  for t in $("${ctr[@]}" tasks ls -q 2>/dev/null); do "${ctr[@]}" tasks delete -f "$t" >/dev/null 2>&1; done
  for c in $("${ctr[@]}" containers ls -q 2>/dev/null); do "${ctr[@]}" containers delete "$c" >/dev/null 2>&1; done
  left=$("${ctr[@]}" containers ls -q 2>/dev/null | wc -l)
  [ "$left" = 0 ] || log "$left containers could not be deleted"
fi

for name in kube-proxy containerd kube-scheduler kube-controller-manager kube-apiserver etcd; do
  stop_pid "$name"
done
# containerd-shim processes outlive containerd by design; they belong to this cluster when
# their -address is our socket
for pid in $(pgrep -f "containerd-shim-runc-v2 .*-address $sock" 2>/dev/null); do
  log "stopping leftover shim (pid $pid)"; kill -KILL "$pid" 2>/dev/null
done

# Mounts kubelet and containerd made (volumes, sandboxes' shm, overlay rootfs), deepest first.
unmount_under() {
  local mounts m
  mounts=$(awk -v p="$1" 'index($2, p) == 1 {print $2}' /proc/self/mounts | sort -r)
  for m in $mounts; do umount -l "$m" 2>/dev/null || log "could not unmount $m"; done
}
containerd_root=$(cat "$state/containerd-root" 2>/dev/null || echo "$state/containerd/root")
for dir in /var/lib/kubelet "$state" "$containerd_root" /run/containerd/io.containerd.grpc.v1.cri /run/netns; do
  unmount_under "$dir"
done
# iptables: kube-proxy's chains, and what the CNI plugins added per pod (the sandboxes were
# killed above, not torn down through CNI): the bridge plugin's masquerade rules (commented
# `name: "fissure"`) and the firewall plugin's rules for the pod range.
if [ -f "$state/bin-dir" ] && [ -x "$(cat "$state/bin-dir")/kube-proxy" ]; then
  "$(cat "$state/bin-dir")/kube-proxy" --cleanup >/dev/null 2>&1 && log "removed kube-proxy's iptables rules"
fi
if command -v iptables-save >/dev/null; then
  # the chains POSTROUTING jumps to, and any whose own rules say fissure (a jump CNI removed
  # while the chain stayed behind, e.g. after an interrupted run)
  chains=$( (iptables-save -t nat | sed -n 's/^-A POSTROUTING .*name: \\"fissure\\".* -j \(CNI-[0-9a-f]*\)$/\1/p'
             iptables-save -t nat | sed -n 's/^-A \(CNI-[0-9a-f]*\) .*name: \\"fissure\\".*/\1/p') | sort -u)
  iptables-save -t nat | grep -- '^-A POSTROUTING .*name: \\"fissure\\"' | sed 's/^-A/-D/' |
    while IFS= read -r rule; do eval "iptables -t nat $rule"; done
  for c in $chains; do iptables -t nat -F "$c" 2>/dev/null; iptables -t nat -X "$c" 2>/dev/null; done
  iptables-save -t filter | grep -E -- '^-A CNI-FORWARD .*10\.244\.0\.' | sed 's/^-A/-D/' |
    while IFS= read -r rule; do eval "iptables -t filter $rule"; done  # kubelet's own chains (KUBE-FIREWALL, KUBE-KUBELET-CANARY, KUBE-IPTABLES-HINT), both families
  for ipt in iptables ip6tables; do
    command -v "$ipt-save" >/dev/null || continue
    for table in filter nat mangle; do
      "$ipt-save" -t "$table" 2>/dev/null | grep -E -- '^-A [A-Z]+ .*-j KUBE-' | sed 's/^-A/-D/' |
        while IFS= read -r rule; do eval "$ipt -t $table $rule" 2>/dev/null; done
      for c in $("$ipt-save" -t "$table" 2>/dev/null | sed -n 's/^:\(KUBE-[A-Z0-9-]*\) .*/\1/p'); do
        "$ipt" -t "$table" -F "$c" 2>/dev/null
      done
      for c in $("$ipt-save" -t "$table" 2>/dev/null | sed -n 's/^:\(KUBE-[A-Z0-9-]*\) .*/\1/p'); do
        "$ipt" -t "$table" -X "$c" 2>/dev/null
      done
    done
  done
fi
ip link delete fissure0 >/dev/null 2>&1 && log "removed the CNI bridge fissure0"
for ns in $(ip netns list 2>/dev/null | awk '/^cni-/ {print $1}'); do ip netns delete "$ns" 2>/dev/null; done
rm -rf /var/lib/kubelet /var/log/pods /var/log/containers /var/lib/cni/networks/fissure /var/lib/cni/results/fissure-* /var/lib/cni/results/cni-loopback-*
rm -rf "$state"
case "$containerd_root" in "$state"/*) ;; *) log "kept the image store $containerd_root (images only)" ;; esac
log "done: processes stopped, /var/lib/kubelet, /var/log/pods and $state removed"
