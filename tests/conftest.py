"""Fixtures shared across the suite: where the shared data is, and one control plane per session.

The control plane fixture starts the real thing (FastAPI under uvicorn, SQLite, a local Ray head
bound to loopback with a small object store); every Ray test of the session shares it.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from services.ray_head import free_port
from services.server import BackgroundServer
from services.settings import Settings

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared data not found at {SHARED_DATA}")
    return SHARED_DATA


def _settings(home: Path, **overrides: object) -> Settings:
    return Settings(
        home=home,
        api_port=free_port(),
        ray_dashboard_port=free_port(),
        ray_num_cpus=2,
        ray_object_store_mb=128,
        poll_interval_s=0.3,
        # Keys are tested on their own (tests/services/test_auth.py); the shared cluster's
        # tests are about their jobs, so they run without them.
        auth=False,
        **overrides,
    )


@pytest.fixture(scope="session")
def control_plane(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BackgroundServer]:
    os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.2")
    server = BackgroundServer(_settings(tmp_path_factory.mktemp("llmforge-home")))
    server.start()
    yield server
    server.stop()
