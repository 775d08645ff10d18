#!/usr/bin/env bash
# Write infra/docker/constraints-gpu.txt: torch at the version constraints.txt pins and every
# CUDA wheel it pulls from the GPU index (nvidia-*, cuda-*, triton), each at an exact version, as
# pip resolves them for the image's platform (Linux x86_64, CPython 3.11). Needs the index;
# nothing is installed. Run it after changing torch in constraints.txt, and commit the result.
#   infra/docker/lock-gpu.sh [TORCH_INDEX_URL]     (default: the Dockerfile's cu128 index)
set -euo pipefail
cd "$(dirname "$0")/../.."
index=${1:-https://download.pytorch.org/whl/cu128}
torch=$(sed -n 's/^torch==\(.*\)$/\1/p' constraints.txt)
[ -n "$torch" ] || { echo "constraints.txt pins no torch" >&2; exit 1; }
report=$(mktemp)
trap 'rm -f "$report"' EXIT
python3 -m pip install --dry-run --ignore-installed --quiet --report "$report" \
  --target "$(mktemp -d)" --platform manylinux_2_28_x86_64 --python-version 3.11 \
  --only-binary=:all: --index-url "$index" "torch==$torch"
{
  echo "# GPU image pins (infra/docker/Dockerfile): written by infra/docker/lock-gpu.sh from $index;"
  echo "# do not edit by hand."
  python3 - "$report" <<'PY'
import json, re, sys
report = json.load(open(sys.argv[1]))
for item in sorted(report["install"], key=lambda i: i["metadata"]["name"].lower()):
    name, version = item["metadata"]["name"].lower(), item["metadata"]["version"]
    if name == "torch":  # no +cu128: the CPU build installs torch under the same file
        version = version.split("+")[0]
    if re.match(r"(torch|triton|nvidia-|cuda-)", name):
        print(f"{name}=={version}")
PY
} > infra/docker/constraints-gpu.txt
echo "wrote infra/docker/constraints-gpu.txt (torch $torch)"
