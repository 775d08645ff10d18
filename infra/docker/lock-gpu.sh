#!/usr/bin/env bash
# Write infra/docker/constraints-gpu.txt: torch at the version constraints.txt pins and every
# CUDA wheel it pulls from the GPU index (nvidia-*, cuda-*, triton), each at an exact version, as
# pip resolves them for the image's platform (Linux x86_64, CPython 3.11). Needs the index;
# nothing is installed. Run it after changing torch in constraints.txt, and commit the result.
#   infra/docker/lock-gpu.sh [INDEX_URL]     (default: PyPI, where the Dockerfile takes torch)
set -euo pipefail
cd "$(dirname "$0")/../.."
index=${1:-https://pypi.org/simple}
torch=$(sed -n 's/^torch==\(.*\)$/\1/p' constraints.txt)
[ -n "$torch" ] || { echo "constraints.txt pins no torch" >&2; exit 1; }
# the image's glibc (Ubuntu 22.04: 2.35) takes every manylinux tag up to 2_28 that wheels use;
# pip does not widen an explicit --platform by itself
platforms=()
for minor in $(seq 28 -1 5); do platforms+=(--platform "manylinux_2_${minor}_x86_64"); done
platforms+=(--platform manylinux2014_x86_64 --platform manylinux2010_x86_64 --platform manylinux1_x86_64)
report=$(mktemp)
trap 'rm -f "$report"' EXIT
python3 -m pip install --isolated --dry-run --ignore-installed --quiet --report "$report" \
  --target "$(mktemp -d)" --python-version 3.11 "${platforms[@]}" \
  --only-binary=:all: --index-url "$index" "torch==$torch"
{
  echo "# GPU image pins (infra/docker/Dockerfile): written by infra/docker/lock-gpu.sh from $index;"
  echo "# do not edit by hand."
  python3 - "$report" <<'PY'
import json, re, sys
report = json.load(open(sys.argv[1]))
for item in sorted(report["install"], key=lambda i: i["metadata"]["name"].lower()):
    name, version = item["metadata"]["name"].lower(), item["metadata"]["version"]
    if name == "torch":  # no local tag: the CPU build installs torch under the same file
        version = version.split("+")[0]
    if re.match(r"(torch|triton|nvidia-|cuda-)", name):
        print(f"{name}=={version}")
PY
} > infra/docker/constraints-gpu.txt
echo "wrote infra/docker/constraints-gpu.txt (torch $torch)"
