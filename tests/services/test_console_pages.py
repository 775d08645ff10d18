"""The web console's server side without Ray or a browser: every page is served (with its
security headers) to anyone, since pages hold no data; the console's own JSON is behind the
API's keys; the npm assets are served by the app itself. The browser tests are in
tests/console/."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from services.api.app import create_app
from services.auth import ADMIN_KEY_FILE
from services.console.mount import missing_vendor_files, vendor_dir
from services.console.pages import PAGES
from services.ray_head import free_port
from services.settings import Settings


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[TestClient, dict[str, str]]]:
    tmp = tmp_path_factory.mktemp("console-pages")
    settings = Settings(
        home=tmp / "home",
        database_url=f"sqlite:///{tmp / 'store.db'}",
        ray_address=f"http://127.0.0.1:{free_port()}",  # no Ray: pages and keys only
        poll_interval_s=60,
        rate_limit_per_min=0,
        ray_dashboard_public_url="https://ray.example.org/",
    )
    with TestClient(create_app(settings)) as c:
        admin = {"Authorization": f"Bearer {(tmp / 'home' / ADMIN_KEY_FILE).read_text().strip()}"}
        yield c, admin


def _key(c: TestClient, admin: dict[str, str], role: str, team: str) -> dict[str, str]:
    r = c.post("/api/v1/keys", json={"name": role, "role": role, "team": team}, headers=admin)
    assert r.status_code == 201, r.text
    return {"Authorization": f"Bearer {r.json()['key']}"}


@pytest.mark.parametrize("path", [f"/console{p}" for p, *_ in PAGES] + ["/console/jobs/j1",
                                  "/console/models/m1", "/console/datasets/d1"])  # fmt: skip
def test_every_page_is_served_with_its_security_headers(
    client: tuple[TestClient, dict[str, str]], path: str
) -> None:
    r = client[0].get(path)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/html")
    assert "frame-ancestors 'none'" in r.headers["content-security-policy"]
    assert "script-src" not in r.headers["content-security-policy"]  # default-src 'self' only
    assert '<main id="main"' in r.text and 'href="#main"' in r.text  # a skip link to the content
    assert "https://" not in r.text  # nothing from a CDN


def test_unknown_pages_are_404_and_the_root_leads_to_the_console(
    client: tuple[TestClient, dict[str, str]],
) -> None:
    c, _ = client
    assert c.get("/console/things/x").status_code == 404
    r = c.get("/", follow_redirects=False)
    assert r.status_code == 307 and r.headers["location"] == "/console/"


def test_whoami_needs_a_key_and_tells_its_role(client: tuple[TestClient, dict[str, str]]) -> None:
    c, admin = client
    r = c.get("/console/api/whoami")
    assert r.status_code == 401 and "API key" in r.json()["detail"]
    reader = _key(c, admin, "read_only", "red")
    me = c.get("/console/api/whoami", headers=reader).json()
    assert me | {"key_id": None} == {
        "key_id": None,
        "role": "read_only",
        "team": "red",
        "auth": True,
        "ray_dashboard": {  # job links go to the external URL users' browsers reach
            "url": c.app.state.ray.dashboard_url,  # type: ignore[attr-defined]
            "external": "https://ray.example.org/",
        },
    }


def test_rejected_samples_are_for_visible_curate_jobs_only(
    client: tuple[TestClient, dict[str, str]],
) -> None:
    c, admin = client
    r = c.get("/console/api/jobs/nope/rejected", headers=admin)
    assert r.status_code == 404 and r.json()["detail"] == "job nope not found"
    r = c.get("/console/api/jobs/nope/rejected?per_reason=0", headers=admin)
    assert r.status_code == 422


def test_the_npm_assets_are_served_by_the_app(client: tuple[TestClient, dict[str, str]]) -> None:
    root = vendor_dir()
    if missing_vendor_files(root):
        pytest.skip(f"run `npm ci` in services/console first (scripts/dev.sh does): {root}")
    r = client[0].get("/console/vendor/uplot/uPlot.iife.min.js")
    assert r.status_code == 200 and "uPlot" in r.text
    assert client[0].get("/console/vendor/uplot/../../axe-core/axe.min.js").status_code == 404
    assert Path(root, "uplot", "package.json").is_file()
