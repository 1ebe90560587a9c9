#!/usr/bin/env bash
# Installs the system packages the tests need and builds kube-apiserver (and a matching kubectl)
# from Debian's own `kubernetes` source package into ~/.cache/arkd/envtest/. Idempotent: a
# cached build is reused. Needs root (apt-get) unless the packages are already present.
set -euo pipefail

CACHE="${ARKD_ENVTEST_CACHE:-$HOME/.cache/arkd/envtest}"
PKGS=(golang-go rsync make etcd-server restic prometheus dpkg-dev gzip tar jq)

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

if [ -x "$CACHE/bin/kube-apiserver" ] && [ -x "$CACHE/bin/kubectl" ]; then
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
echo "envtest: building kube-apiserver and kubectl (about 6 minutes on 2 cores)"
# The vendored tree builds offline; GOFLAGS keeps go from reaching for the module proxy.
export GOFLAGS=-mod=vendor GOPROXY=off GO111MODULE=on
make WHAT="cmd/kube-apiserver cmd/kubectl" >"$CACHE/build.log" 2>&1 || {
  tail -n 40 "$CACHE/build.log" >&2
  echo "envtest: kube-apiserver build failed; full log in $CACHE/build.log" >&2
  exit 1
}
cp _output/bin/kube-apiserver _output/bin/kubectl "$CACHE/bin/"
echo "envtest: built $CACHE/bin/kube-apiserver"
