"""POST /api/v1/plan: Chinchilla-optimal planning over REST."""

from __future__ import annotations

from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from services.api.app import create_app
from services.settings import Settings


def test_plan_endpoint(tmp_path: Path) -> None:
    settings = Settings(
        home=tmp_path, ray_address="http://127.0.0.1:1", poll_interval_s=60, auth=False
    )
    with TestClient(create_app(settings)) as client:
        r = client.post("/api/v1/plan", json={"flops": 5.76e23})
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["params"] == pytest.approx(70e9, rel=0.15)
        assert body["tokens"] == pytest.approx(1.4e12, rel=0.15)
        assert "nearest config" in body["table"]
        assert body["memory_bytes"]["total"] > 0
        r = client.post("/api/v1/plan", json={"flops": 1e20, "gpu_hours": 3})
        assert r.status_code == 422
        r = client.post("/api/v1/plan", json={"flops": 1e20, "n_layers": 3})
        assert r.status_code == 422 and "n_layers" in r.text
