#!/usr/bin/env bash
# Installs the system packages the tests need and builds kube-apiserver (and a matching kubectl)
# from Debian's own `kubernetes` source package into ~/.cache/arkd/envtest/. Idempotent: a
# cached build is reused. Needs root (apt-get) unless the packages are already present.
set -euo pipefail

CACHE="${ARKD_ENVTEST_CACHE:-$HOME/.cache/arkd/envtest}"
PKGS=(golang-go rsync make etcd-server restic prometheus dpkg-dev gzip tar jq golang-github-modern-go-reflect2-dev)
# Bump when the build recipe below changes, so cached binaries from an older recipe are rebuilt.
RECIPE=2

need_apt=0
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || need_apt=1
done
if ! grep -q '^Types: deb deb-src' /etc/apt/sources.list.d/debian.sources 2>/dev/null; then
  sed -i 's/^Types: deb$/Types: deb deb-src/' /etc/apt/sources.list.d/debian.sources
  need_apt=1
fi
if [ "$need_apt" = 1 ]; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq "${PKGS[@]}" >/dev/null
fi

if [ -x "$CACHE/bin/kube-apiserver" ] && [ -x "$CACHE/bin/kubectl" ] && [ "$(cat "$CACHE/bin/RECIPE" 2>/dev/null)" = "$RECIPE" ]; then
  echo "envtest: cached build in $CACHE/bin"
  exit 0
fi

mkdir -p "$CACHE/src" "$CACHE/bin"
cd "$CACHE/src"
if [ ! -d kubernetes-src ]; then
  apt-get source --download-only kubernetes >/dev/null
  dsc=$(ls kubernetes_*.dsc | head -n1)
  dpkg-source --no-check -x "$dsc" kubernetes-src >/dev/null
fi
cd kubernetes-src
# Kubernetes 1.20's vendored code predates Go 1.18, and Debian 12 ships Go 1.19:
# 1. modern-go/reflect2 v1.0.1 faults in mapiterinit on Go >= 1.18 (every custom resource create
#    crashes the apiserver); Debian's packaged v1.0.2 has the fix.
rm -rf vendor/github.com/modern-go/reflect2
cp -r /usr/share/gocode/src/github.com/modern-go/reflect2 vendor/github.com/modern-go/
rm -f vendor/github.com/modern-go/reflect2/go.mod vendor/github.com/modern-go/reflect2/*_test.go
# 2. Comparing reflect.Values with DeepEqual changed in Go 1.19, so the schema validator took ""
#    for null ("must be of type string"). The intended check is only for a nil value.
for f in vendor/k8s.io/kube-openapi/pkg/validation/validate/type.go vendor/github.com/go-openapi/validate/type.go; do
  sed -i 's/if data == nil || reflect.DeepEqual(reflect.Zero(reflect.TypeOf(data)), reflect.ValueOf(data)) {/if data == nil {/' "$f"
  grep -q 'reflect.DeepEqual(reflect.Zero(reflect.TypeOf(data))' "$f" && { echo "envtest: patching $f failed" >&2; exit 1; }
done
echo "envtest: building kube-apiserver and kubectl (about 6 minutes on 2 cores)"
# The vendored tree builds offline; GOFLAGS keeps go from reaching for the module proxy.
export GOFLAGS=-mod=vendor GOPROXY=off GO111MODULE=on
make WHAT="cmd/kube-apiserver cmd/kubectl" >"$CACHE/build.log" 2>&1 || {
  tail -n 40 "$CACHE/build.log" >&2
  echo "envtest: kube-apiserver build failed; full log in $CACHE/build.log" >&2
  exit 1
}
cp _output/bin/kube-apiserver _output/bin/kubectl "$CACHE/bin/"
echo "$RECIPE" >"$CACHE/bin/RECIPE"
echo "envtest: built $CACHE/bin/kube-apiserver"
