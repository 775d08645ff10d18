"""Fixtures shared across the suite: where the shared data is, and one control plane per session.

The control plane fixture starts the real thing (FastAPI under uvicorn, SQLite, a local Ray head
bound to loopback with a small object store); every Ray test of the session shares it.

Under CI (``CI=true``) a skipped test is a failed one: a missing extra, a missing ``../shared``
or a database that does not answer would otherwise let CI pass without running the test.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from services.ray_head import free_port
from services.server import BackgroundServer
from services.settings import Settings
from tests.cluster import join_as_driver
from tests.shared import DATA, require

UNDER_CI = os.environ.get("CI") == "true"


def _fail_skip_under_ci(report: pytest.TestReport | pytest.CollectReport) -> None:
    if UNDER_CI and report.skipped:
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else report.longrepr
        report.outcome = "failed"
        report.longrepr = f"skipped under CI=true, where every test must run: {reason}"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    outcome = yield
    _fail_skip_under_ci(outcome.get_result())


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector: pytest.Collector) -> Iterator[None]:
    outcome = yield
    _fail_skip_under_ci(outcome.get_result())


_exit_status: int | None = None


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    global _exit_status
    _exit_status = int(exitstatus)


@pytest.hookimpl(trylast=True)
def pytest_unconfigure(config: pytest.Config) -> None:
    """Once the results are final: end the in-process Ray a Ray Data test may have started
    and release cached S3 clients, then exit with pytest's status without running the
    interpreter's teardown. Native libraries of the session (Ray's core worker, the AWS SDK
    under pyarrow, gRPC threads) have crashed that teardown after every test had passed
    (exit 139 in CI), which would turn a green run red for nothing the tests checked."""
    if _exit_status is None:
        return
    if "ray" in sys.modules and sys.modules["ray"].is_initialized():
        sys.modules["ray"].shutdown()
    from llm import storage

    storage._release_s3_clients()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(_exit_status)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    return require(DATA)


def _settings(home: Path, write_root: Path, **overrides: object) -> Settings:
    """The shared control plane's settings: its jobs read the shared data and read and write
    anywhere under pytest's temporary folder ``write_root`` (the storage roots of every team,
    services/roots.py), which must not hold ``home``."""
    return Settings(
        home=home,
        shared_roots=str(DATA),
        shared_write_roots=str(write_root),
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
    # The home (its store, and the Ray token) lives outside pytest's temporary folder, which
    # the jobs may read and write: no storage root may hold the control plane's secrets.
    home = Path(tempfile.mkdtemp(prefix="llmforge-home-"))
    server = BackgroundServer(_settings(home, tmp_path_factory.getbasetemp()))
    try:
        server.start()
        yield server
        # a test process still connected to the head as a driver (shared_ray) would lose its
        # GCS when the head stops
        if "ray" in sys.modules and sys.modules["ray"].is_initialized():
            sys.modules["ray"].shutdown()
        server.stop()
    finally:
        shutil.rmtree(home, ignore_errors=True)


@pytest.fixture(scope="module")
def shared_ray(control_plane: BackgroundServer) -> None:
    """This process as a driver of the shared cluster, for tests that call a job's ``run``
    in-process. Without it ``ray_jobs.cluster.init_ray`` starts a private Ray instance (its
    GCS, raylet, agents and Ray Data's actors), which took some 8 s to start and then idled at
    about 9% of a core beside the shared one for the rest of the session. Module-scoped: a
    module whose jobs need an environment of their own joins again with it
    (tests/integration/test_data_s3.py), and the next module joins without."""
    join_as_driver(control_plane.app.state.ray_head)
