"""Where the shared data and schemas are: ``../shared`` beside the checkout, found from here.

Never an absolute path of one machine: in another checkout such a test would skip and pass
without running. Where ``../shared`` is absent (a laptop) the tests that need it skip; under
CI (``CI=true``) every skip is a failure (tests/conftest.py), so CI cannot pass without it.
"""

from __future__ import annotations

from pathlib import Path

import pytest

SHARED = Path(__file__).resolve().parents[2] / "shared"
DATA = SHARED / "data"
K8S_CRDS = SHARED / "k8s-crds"


def require(path: Path) -> Path:
    """``path`` if it exists, else skip the test that asked for it."""
    if not path.exists():
        pytest.skip(f"{path} is absent (../shared beside the checkout)")
    return path
