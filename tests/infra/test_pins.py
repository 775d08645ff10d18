"""Nothing deployed or built floats: every image in the manifests (as written and as each overlay
renders them) and every base image of the Dockerfile names an exact version or a sha256 digest,
never ``:latest``, a moving tag or no tag; the images of the overlays are set once, in their
kustomization's ``images:``; torch is pinned for the GPU image by the same version as everywhere
else, and every line of the GPU lock is an exact pin.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.infra.test_kustomize import K8S, OVERLAYS, _containers, rendered

REPO = Path(__file__).resolve().parents[2]
DOCKER = REPO / "infra" / "docker"
DIGEST = re.compile(r"sha256:[0-9a-f]{64}")
# A tag that names one release: it starts with a version number (0.1.0-cpu, 16.4-bookworm,
# 2.60.0-py311-gpu) or is a dated release (RELEASE.2024-12-18T13-15-44Z).
VERSION_TAG = re.compile(r"(v?\d+\.\d+(\.\d+)?([.-][\w.-]+)?|RELEASE\.[\dTZ-]+)")
MOVING = {"latest", "stable", "main", "master", "nightly", "edge", "dev"}


def image_problem(image: str) -> str | None:
    """Why ``image`` could change under the same name (None: it cannot)."""
    name, _, digest = image.partition("@")
    if digest:
        return None if DIGEST.fullmatch(digest) else f"{image}: not a sha256 digest"
    _, colon, tag = name.rpartition(":")
    if not colon or "/" in tag:
        return f"{image}: no tag"
    if tag in MOVING or not VERSION_TAG.fullmatch(tag):
        return f"{image}: tag {tag!r} is not an exact version"
    return None


def test_the_check_itself() -> None:
    assert image_problem("postgres:16.4-bookworm") is None
    assert image_problem("localhost:5001/llmforge:0.1.0-cpu") is None
    assert image_problem("minio/mc:RELEASE.2024-11-21T17-21-54Z") is None
    assert image_problem(f"rayproject/ray:2.60.0-py311-gpu@sha256:{'a' * 64}") is None
    for floating in (
        "llmforge",
        "localhost:5001/llmforge",
        "llmforge:latest",
        "postgres:bookworm",
        "redis:7",
        "rayproject/ray:nightly-gpu",
        "llmforge@sha256:abc",
    ):
        assert image_problem(floating), floating


def _manifest_images() -> list[tuple[str, str]]:
    found = []
    for path in sorted(K8S.rglob("*.yaml")):
        if "patches" in path.parts:  # partial documents, merged into the base's
            continue
        for doc in yaml.safe_load_all(path.read_text()):
            for container in _containers(doc) if doc and doc.get("kind") else []:
                found.append((str(path.relative_to(REPO)), container["image"]))
    return found


def test_no_manifest_image_floats() -> None:
    images = _manifest_images()
    assert len(images) > 5
    assert [(where, p) for where, i in images if (p := image_problem(i))] == []


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_no_rendered_image_floats_and_the_overlay_sets_its_own(overlay: str) -> None:
    docs = rendered(overlay)
    images = [c["image"] for d in docs for c in _containers(d)]
    assert [p for i in images if (p := image_problem(i))] == []
    config = next(
        d
        for d in docs
        if d["kind"] == "ConfigMap" and d["metadata"]["name"] == "llmforge-controlplane"
    )
    rayjob_images = [v for k, v in config["data"].items() if k.endswith("_IMAGE")]
    assert rayjob_images and [p for i in rayjob_images if (p := image_problem(i))] == []
    kustomization: dict[str, Any] = yaml.safe_load(
        (K8S / "overlays" / overlay / "kustomization.yaml").read_text()
    )
    for entry in kustomization["images"]:
        pinned = entry.get("digest") or entry.get("newTag")
        assert pinned, entry
        assert DIGEST.fullmatch(pinned) or VERSION_TAG.fullmatch(pinned), entry
        built = f"{entry['newName']}:{entry['newTag']}" if "newTag" in entry else entry["newName"]
        assert any(i.startswith(built) for i in images), f"{entry}: used by no container"


def _dockerfile_bases() -> list[str]:
    text = (DOCKER / "Dockerfile").read_text()
    args = dict(re.findall(r"^ARG (\w+)=(\S+)", text, re.M))
    bases = []
    for ref in re.findall(r"^FROM\s+(?:--\S+\s+)?(\S+)", text, re.M):
        arg = re.fullmatch(r"\$\{?(\w+)\}?", ref)
        bases.append(args[arg.group(1)] if arg else ref)
    return bases


def test_the_dockerfile_bases_and_its_examples_are_exact_versions() -> None:
    bases = _dockerfile_bases()
    # the console's asset stage (node), then the image itself
    assert bases == ["node:20.20.2-bookworm-slim", "rayproject/ray:2.60.0-py311-gpu"], bases
    assert [p for b in bases if (p := image_problem(b))] == []
    # The other bases the Dockerfile's usage documents (CPU, slim) are exact too.
    documented = re.findall(r"--build-arg BASE_IMAGE=(\S+)", (DOCKER / "Dockerfile").read_text())
    assert len(documented) >= 2
    assert [p for b in documented if (p := image_problem(b))] == []


def _pins(path: Path) -> dict[str, str]:
    pins = {}
    for line in path.read_text().splitlines():
        line = line.split("#")[0].strip()
        if not line:
            continue
        exact = re.fullmatch(r"([A-Za-z0-9._-]+)==(\S+)", line)
        if exact is None:
            raise ValueError(f"{path.name}: {line!r} is not an exact pin (name==version)")
        pins[exact.group(1).lower()] = exact.group(2)
    return pins


def test_torch_and_the_cuda_wheels_are_pinned_for_the_gpu_image() -> None:
    gpu = _pins(DOCKER / "constraints-gpu.txt")
    project = _pins(REPO / "constraints.txt")
    # One torch everywhere, without a local tag (which would refuse the CPU build's +cpu wheel).
    assert gpu["torch"] == project["torch"]
    assert all(re.fullmatch(r"\d+(\.\d+)*(\+\w+)?", v) for v in gpu.values()), gpu
    instructions = re.sub(r"\\\n", " ", (DOCKER / "Dockerfile").read_text())
    installs = [line for line in instructions.splitlines() if "pip install" in line]
    torch_install = next(line for line in installs if re.search(r"\btorch\b", line))
    assert "-c constraints-gpu.txt" in torch_install and "-c constraints.txt" in torch_install
    assert "COPY infra/docker/constraints-gpu.txt" in instructions
    # the lock holds the CUDA wheels themselves, not torch alone
    cuda = {name for name in gpu if name.startswith(("nvidia-", "cuda-"))}
    assert {"nvidia-cudnn-cu13", "nvidia-nccl-cu13", "nvidia-cublas", "cuda-toolkit"} <= cuda
    assert "triton" in gpu


def test_a_broken_lock_line_is_refused(tmp_path: Path) -> None:
    lock = tmp_path / "lock.txt"
    lock.write_text("torch>=2.13\n")
    with pytest.raises(ValueError, match="not an exact pin"):
        _pins(lock)
