"""Ray's token on a machine that never ran Ray: the control plane makes one, shares it with its
head and every job, and refuses a token it cannot trust before anything is submitted."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil
import pytest

from services.auth import ADMIN_KEY_FILE
from services.ray_auth import (
    OWN_TOKEN_FILE,
    TOKEN_ENV,
    TOKEN_PATH_ENV,
    RayToken,
    RayTokenError,
    check_access,
    ensure_token,
    find_token,
)
from services.ray_head import LocalRayHead, LocalRayWorker, free_port
from services.server import BackgroundServer

TERMINAL = {"SUCCEEDED", "FAILED", "STOPPED", "CANCELLED"}


@pytest.fixture()
def empty_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A HOME with nothing in it and no token variables: a machine that never ran Ray."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.delenv(TOKEN_ENV, raising=False)
    monkeypatch.delenv(TOKEN_PATH_ENV, raising=False)
    return home


def test_a_new_token_is_made_once_with_mode_0600(empty_home: Path, tmp_path: Path) -> None:
    assert find_token() is None
    token = ensure_token(tmp_path / "llmforge")
    path = tmp_path / "llmforge" / OWN_TOKEN_FILE
    assert token.path == path and stat.S_IMODE(path.stat().st_mode) == 0o600
    assert len(token.value) == 64 and token.env() == {TOKEN_PATH_ENV: str(path)}
    assert ensure_token(tmp_path / "llmforge") == token  # the next start reuses it
    assert not (empty_home / ".ray").exists()  # the user's home is left alone


def test_a_token_the_user_has_is_used_as_is(
    empty_home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    default = empty_home / ".ray" / "auth_token"
    default.parent.mkdir()
    default.write_text("from-home\n")
    default.chmod(0o600)
    assert ensure_token(tmp_path).value == "from-home"
    named = tmp_path / "named"
    named.write_text("from-path")
    named.chmod(0o600)
    monkeypatch.setenv(TOKEN_PATH_ENV, str(named))
    assert ensure_token(tmp_path) == RayToken("from-path", str(named), named)
    monkeypatch.setenv(TOKEN_ENV, "from-env")
    token = ensure_token(tmp_path)
    assert token.value == "from-env" and token.env() == {TOKEN_ENV: "from-env"}
    assert not (tmp_path / OWN_TOKEN_FILE).exists()


def test_rays_own_world_readable_default_file_is_made_private(empty_home: Path) -> None:
    """ray.init() writes ~/.ray/auth_token with the umask's 0644; that one is tightened."""
    default = empty_home / ".ray" / "auth_token"
    default.parent.mkdir()
    default.write_text("from-ray-init")
    default.chmod(0o644)
    assert find_token() == RayToken("from-ray-init", str(default), default)
    assert stat.S_IMODE(default.stat().st_mode) == 0o600
    default.chmod(0o666)  # others could have written it: refused, not repaired
    with pytest.raises(RayTokenError, match="mode 0666"):
        find_token()


def test_a_token_file_that_cannot_be_trusted_is_an_error_naming_it(
    empty_home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    shared = tmp_path / "world-readable"
    shared.write_text("t")
    shared.chmod(0o644)
    monkeypatch.setenv(TOKEN_PATH_ENV, str(shared))
    with pytest.raises(RayTokenError, match=rf"{shared} .* mode 0644.*chmod 600"):
        ensure_token(tmp_path)
    monkeypatch.setenv(TOKEN_PATH_ENV, str(tmp_path / "nowhere"))
    with pytest.raises(RayTokenError, match=rf"{TOKEN_PATH_ENV} names .*nowhere"):
        ensure_token(tmp_path)
    folder = tmp_path / "a-folder"
    folder.mkdir(mode=0o700)
    monkeypatch.setenv(TOKEN_PATH_ENV, str(folder))
    with pytest.raises(RayTokenError, match=f"cannot read the Ray token file {folder}"):
        ensure_token(tmp_path)
    empty = tmp_path / "empty"
    empty.write_text("\n")
    empty.chmod(0o600)
    monkeypatch.setenv(TOKEN_PATH_ENV, str(empty))
    with pytest.raises(RayTokenError, match="is empty"):
        ensure_token(tmp_path)


WORKER_NICENESS = 4


def _env(home: Path, api_port: int, dashboard_port: int) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "LLMFORGE_"))}
    return {
        **env,
        "HOME": str(home),
        "XDG_CACHE_HOME": str(home / ".cache"),
        "XDG_CONFIG_HOME": str(home / ".config"),
        "LLMFORGE_HOME": str(home / "llmforge"),
        "LLMFORGE_API_PORT": str(api_port),
        "LLMFORGE_RAY_DASHBOARD_PORT": str(dashboard_port),
        "LLMFORGE_RAY_NUM_CPUS": "1",
        "LLMFORGE_RAY_OBJECT_STORE_MB": "80",
        "LLMFORGE_POLL_INTERVAL_S": "0.3",
        # not Ray's default (15), so that the test can see the setting reach the workers
        "LLMFORGE_RAY_WORKER_NICENESS": str(WORKER_NICENESS),
    }


@pytest.fixture()
def fresh_control_plane(tmp_path: Path) -> Iterator[tuple[str, dict[str, str], Path, str]]:
    """``llmforge serve`` in its own process, with an empty HOME and no Ray token anywhere."""
    home = tmp_path / "home"
    home.mkdir()
    api_port, dashboard_port = free_port(), free_port()
    log = (tmp_path / "serve.log").open("wb")
    process = subprocess.Popen(
        [str(Path(sys.executable).with_name("llmforge")), "serve"],
        env=_env(home, api_port, dashboard_port),
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{api_port}"
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            assert process.poll() is None, (tmp_path / "serve.log").read_text()
            try:
                if httpx.get(f"{url}/api/v1/health/live", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.5)
        key = (home / "llmforge" / ADMIN_KEY_FILE).read_text().strip()
        yield url, {"Authorization": f"Bearer {key}"}, home, f"http://127.0.0.1:{dashboard_port}"
    finally:
        process.terminate()
        process.wait(90)
        log.close()


@pytest.fixture()
def another_ray_on_the_machine(tmp_path: Path) -> Iterator[None]:
    """A Ray head someone else started on this machine, in Ray's shared default temp dir: it
    takes over /tmp/ray's "current cluster" file, which must not steer our jobs to it."""
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
    command = [
        str(Path(sys.executable).with_name("ray")),
        *("start", "--head", "--block", "--node-ip-address=127.0.0.1", "--num-cpus=1"),
        *("--include-dashboard=false", "--object-store-memory=80000000", "--disable-usage-stats"),
        f"--port={free_port()}",
        f"--ray-client-server-port={free_port()}",
    ]
    log = (tmp_path / "other-ray.log").open("wb")
    other = subprocess.Popen(
        command,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        time.sleep(8)  # up and registered as the machine's current cluster
        assert other.poll() is None, (tmp_path / "other-ray.log").read_text()
        yield
    finally:
        other.terminate()
        other.wait(60)
        log.close()


def _is_our_raylet(process: psutil.Process, home: Path) -> bool:
    try:
        environ = process.info["environ"] or {}
        return process.name() == "raylet" and environ.get("HOME") == str(home)
    except psutil.Error:
        return False


@pytest.mark.ray
def test_control_plane_on_a_machine_that_never_ran_ray_runs_a_job(
    fresh_control_plane: tuple[str, dict[str, str], Path, str],
    another_ray_on_the_machine: None,
    tmp_path: Path,
) -> None:
    url, headers, home, dashboard = fresh_control_plane
    area = home / "llmforge" / "artifacts" / "teams" / "default"  # the admin's team's area
    head = next(p for p in psutil.process_iter(["environ"]) if _is_our_raylet(p, home))
    area.mkdir(parents=True)
    corpus = area / "corpus.jsonl"
    words = "the quick brown fox jumps over the lazy dog while the cat sleeps in the sun"
    lines = [{"id": f"d{i}", "text": f"{words} number {i}. " * 20} for i in range(8)]
    corpus.write_text("".join(json.dumps(line) + "\n" for line in lines))
    spec = {"input": "corpus.jsonl", "output": "curated"}  # relative: in the team's area
    with httpx.Client(base_url=url, headers=headers, timeout=60) as api:
        r = api.post("/api/v1/jobs", json={"kind": "curate", "spec": spec})
        assert r.status_code == 201, r.text
        deadline = time.monotonic() + 300
        while (job := api.get(f"/api/v1/jobs/{r.json()['id']}").json())["state"] not in TERMINAL:
            assert time.monotonic() < deadline, job
            time.sleep(0.5)
    assert job["state"] == "SUCCEEDED", job["message"]
    assert json.loads((area / "curated" / "stats.json").read_text())["documents"] == 8

    # The embedded head's workers run at the niceness the setting asks for (Ray's job supervisor
    # sets its own actor to 0); Ray keeps idle workers for the next tasks.
    workers = [p for p in head.children() if p.cmdline()[:1] and p.cmdline()[0].startswith("ray::")]
    assert WORKER_NICENESS in {p.nice() for p in workers}, [(p.pid, p.nice()) for p in workers]
    assert {p.nice() for p in workers} <= {0, WORKER_NICENESS}

    token = home / "llmforge" / OWN_TOKEN_FILE
    assert stat.S_IMODE(token.stat().st_mode) == 0o600
    assert not (home / ".ray" / "auth_token").exists()
    # Token authentication stayed on: the head refuses a client without the token.
    assert httpx.get(f"{dashboard}/api/jobs/").status_code == 401
    with pytest.raises(RayTokenError, match=r"RAY_ADDRESS .* requires a token and none was found"):
        check_access(dashboard, None, address_env="RAY_ADDRESS")
    wrong = RayToken("0" * 64, "a test")
    with pytest.raises(RayTokenError, match="refused the token from a test"):
        check_access(dashboard, wrong, address_env="RAY_ADDRESS")
    check_access(dashboard, RayToken(token.read_text(), "llmforge"), address_env="RAY_ADDRESS")


@pytest.mark.ray
def test_remote_head_without_a_usable_token_stops_the_control_plane_before_any_job(
    control_plane: BackgroundServer,
    empty_home: Path,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """RAY_ADDRESS names the session's head (which wants a token); this user has none."""
    settings = control_plane.settings.model_copy(
        update={
            "home": tmp_path / "other",
            "api_port": free_port(),
            "ray_address": f"http://127.0.0.1:{control_plane.settings.ray_dashboard_port}",
        }
    )
    with pytest.raises(RuntimeError, match="exited during start-up"):
        BackgroundServer(settings).start(timeout_s=30)
    assert "RAY_ADDRESS" in caplog.text and "requires a token and none was found" in caplog.text
    assert not (tmp_path / "other" / ADMIN_KEY_FILE).exists()  # it stopped before its first key


def test_a_nodes_processes_find_their_own_clusters_state_api(tmp_path: Path) -> None:
    """Ray's state API clients in a node's actors (Ray Train's placement-group cleaner) are
    told the cluster's dashboard: left to look for "the" cluster, they read
    /tmp/ray/ray_current_cluster or scan the machine's GCS processes, and found another Ray
    (or a stale file), which held every Train run's end for a 12 s stop timeout."""
    token_file = tmp_path / "token"
    token_file.write_text("0" * 64)
    token = RayToken(token_file.read_text(), str(token_file), token_file)
    options = {"num_cpus": 1, "object_store_mb": 64, "log_path": tmp_path / "log"}
    head = LocalRayHead(gcs_port=None, dashboard_port=free_port(), token=token, **options)
    worker = LocalRayWorker(head, **options)
    for node in (head, worker):
        env = node.environment()
        assert env["RAY_API_SERVER_ADDRESS"] == head.dashboard_url
        assert "RAY_ADDRESS" not in env
