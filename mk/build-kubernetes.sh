#!/usr/bin/env bash
# Build Kubernetes' own binaries at one version from the Go module proxy.
#
# k8s.io/kubernetes is not `go install`-able: its go.mod replaces its 29 staging modules
# (k8s.io/api, k8s.io/client-go, ...) with ./staging paths. A wrapper module that requires
# k8s.io/kubernetes and replaces each staging module with its published v0.X.Y tag builds the
# same code. Without the -X version flags `--version` would say v0.0.0-master.
#
# usage: build-kubernetes.sh VERSION OUTDIR BINARY...
set -euo pipefail
version=${1:?usage: build-kubernetes.sh VERSION OUTDIR BINARY...}
out=${2:?usage: build-kubernetes.sh VERSION OUTDIR BINARY...}
shift 2
bins=("$@")
[ ${#bins[@]} -gt 0 ] || { echo "build-kubernetes.sh: name at least one binary" >&2; exit 2; }
GO=${GO:-go}
staging_version=v0.${version#v1.}  # v1.34.12 -> v0.34.12

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cd "$work"

echo ">> kubernetes $version: fetching k8s.io/kubernetes' go.mod for its staging modules"
modfile=$($GO mod download -json "k8s.io/kubernetes@$version" | sed -n 's/^[[:space:]]*"GoMod": "\(.*\)",$/\1/p')
[ -s "$modfile" ] || { echo "go mod download k8s.io/kubernetes@$version failed" >&2; exit 1; }
# The staging modules are the ones kubernetes replaces with a ./staging/ path.
mapfile -t staging < <(sed -n 's#^[[:space:]]*\(k8s.io/[^ ]*\) => ./staging/.*#\1#p' "$modfile")
[ ${#staging[@]} -gt 0 ] || { echo "no staging replaces found in $modfile" >&2; exit 1; }
echo ">> kubernetes $version: ${#staging[@]} staging modules pinned to $staging_version"

{
  echo "module fissure.local/k8s-build"
  echo
  echo "go 1.25.0"
  echo
  echo "godebug default=go1.24"
  echo
  echo "require k8s.io/kubernetes $version"
  echo
  echo "replace ("
  for m in "${staging[@]}"; do echo "	$m => $m $staging_version"; done
  echo ")"
} > go.mod
{
  echo "//go:build tools"
  echo
  echo "package tools"
  echo
  echo "import ("
  for b in "${bins[@]}"; do echo "	_ \"k8s.io/kubernetes/cmd/$b\""; done
  echo ")"
} > tools.go

echo ">> kubernetes $version: go mod tidy (downloads ~3.5 GB of modules the first time)"
$GO mod tidy

minor=${version#v1.}; minor=${minor%%.*}
ldflags="-s -w"
for v in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
  ldflags+=" -X $v.gitVersion=$version -X $v.gitMajor=1 -X $v.gitMinor=$minor"
  ldflags+=" -X $v.gitTreeState=clean -X $v.buildDate=1970-01-01T00:00:00Z"
done

mkdir -p "$out"
i=0
for b in "${bins[@]}"; do
  i=$((i + 1))
  echo ">> kubernetes $version: building $b ($i/${#bins[@]})"
  CGO_ENABLED=0 $GO build -trimpath -ldflags "$ldflags" -o "$out/$b.tmp.$$" "k8s.io/kubernetes/cmd/$b"
  mv "$out/$b.tmp.$$" "$out/$b"  # atomic: a concurrent reader never sees half a binary
done
echo ">> kubernetes $version: built ${bins[*]} into $out"
