"""Storage roots per team (issue 15): the normaliser, the spec walk, and an attack matrix and a
property run against a real control plane with API keys on (no Ray: refusals happen before
submission; Ray is unreachable, so an accepted job fails later, which is fine for acceptance).
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from contracts.jobs import JOB_TYPES, JobKind
from contracts.roots import (
    ENV_READ_ROOTS,
    ENV_WRITE_ROOTS,
    RootError,
    Roots,
    is_under,
    normalise,
    violations,
)
from contracts.spec_base import READS_FILE as CONTRACT_READS_FILE
from contracts.spec_base import uri_paths, values_at
from contracts.specs import CurateSpec, EvaluateSpec
from llm.data.block import READS_FILE
from ray_jobs.entrypoint import JobError, check_roots
from services.api.app import create_app
from services.auth import ADMIN_KEY_FILE
from services.ray_auth import OWN_TOKEN_FILE
from services.ray_head import free_port
from services.settings import Settings
from services.store import crud
from services.store.models import Job, JobState

# --- the normaliser -----------------------------------------------------------------------------


def test_local_paths_are_normalised(tmp_path: Path) -> None:
    real = os.path.realpath(tmp_path)
    assert normalise(f"file://{tmp_path}/a/") == f"{real}/a"
    assert normalise(f"file://localhost{tmp_path}/a") == f"{real}/a"
    assert normalise(f"{tmp_path}//a/./b") == f"{real}/a/b"
    assert normalise("s3://bucket/teams/red/") == "s3://bucket/teams/red"
    assert normalise("s3://bucket") == "s3://bucket"


@pytest.mark.parametrize(
    "uri",
    [
        "",
        "relative/path",
        "/a/../etc/passwd",
        "/a/%2e%2e/etc/passwd",
        "/a/%2E%2E%2Fetc",
        "file://otherhost/etc/passwd",
        "http://example.com/x",
        "s3:/bucket/x",
        "/a\u2215..\u2215etc",  # DIVISION SLASH
        "/a/\uff0e\uff0e/etc",  # FULLWIDTH FULL STOP
        "/a/\u2024\u2024/etc",  # ONE DOT LEADER
        "/a/\u2025/etc",  # TWO DOT LEADER
        "/a/\uff0f../etc",  # FULLWIDTH SOLIDUS
        "/a/\u2044etc",  # FRACTION SLASH
        "/a/\ufb01le",  # a ligature: not NFKC
        "/a\\..\\etc",
        "/a/\x00/etc",
        "/a/\n/etc",
        "s3://bucket/teams//red",
        "s3://bucket/teams/./red",
        "s3://bucket/teams/../blue",
        "s3://Bucket/x",
        "s3://b/x",
        "s3://../x",
        "s3://bucket/a%2F..%2Fb",
    ],
)
def test_unsafe_uris_cannot_be_normalised(uri: str) -> None:
    with pytest.raises(RootError):
        normalise(uri)


def test_prefixes_match_whole_segments() -> None:
    assert is_under("s3://bkt/teams/red/x", "s3://bkt/teams/red")
    assert is_under("s3://bkt/teams/red", "s3://bkt/teams/red")
    assert not is_under("s3://bkt/teams/redder", "s3://bkt/teams/red")
    assert not is_under("/data/red-team/x", "/data/red")
    assert is_under("/data/red/x", "/")
    roots = Roots.of([], ["s3://bkt/teams/red"])
    with pytest.raises(RootError, match="outside every write root"):
        roots.check("s3://bkt/teams/redder/x", "write")
    roots.check("s3://bkt/teams/red/x", "write")
    roots.check("s3://bkt/teams/red/x", "read")  # a write root is readable too


def test_a_symlink_inside_a_root_that_points_outside_is_outside(tmp_path: Path) -> None:
    root, outside = tmp_path / "root", tmp_path / "outside"
    root.mkdir()
    outside.mkdir()
    (root / "link").symlink_to(outside)
    (root / "inside").symlink_to(root / "real")
    roots = Roots.of([], [str(root)])
    with pytest.raises(RootError, match="resolves to"):
        roots.check(str(root / "link" / "secret"), "read")
    roots.check(str(root / "inside" / "x"), "write")


def test_roots_travel_to_the_job_and_it_checks_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    roots = Roots.of([str(tmp_path / "shared")], [str(tmp_path / "area")])
    env = roots.to_env()
    assert set(env) == {ENV_READ_ROOTS, ENV_WRITE_ROOTS}
    assert Roots.from_env(env) == roots and Roots.from_env({}) is None
    spec = CurateSpec(input=str(tmp_path / "shared" / "in"), output=str(tmp_path / "elsewhere"))
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(JobError, match=r"output: .* may not be written"):
        check_roots(spec)
    check_roots(spec.model_copy(update={"output": str(tmp_path / "area" / "out")}))


# --- the spec walk ------------------------------------------------------------------------------


def test_every_kind_declares_what_it_reads_and_writes_nested_fields_included() -> None:
    assert READS_FILE == CONTRACT_READS_FILE
    for kind, job_type in JOB_TYPES.items():
        paths = job_type.uri_paths
        assert paths.write == (("output",),), kind
        top = {p[0] for p in (*paths.read, *paths.write, *paths.named) if p[1:] in ((), ("*",))}
        assert top == set(job_type.uri_fields), kind
    assert uri_paths(EvaluateSpec).named == (("tasks", "*"),)
    assert set(uri_paths(CurateSpec).read) == {
        ("input",),
        ("steps", "*", "model_path"),
        ("steps", "*", "eval_sets", "*", "path"),
    }


def test_nested_uris_are_checked(tmp_path: Path) -> None:
    spec = CurateSpec.model_validate(
        {
            "input": f"{tmp_path}/in",
            "output": f"{tmp_path}/out",
            "steps": [
                {"kind": "language", "model_path": "/etc/lid.bin"},
                {"kind": "decontaminate", "eval_sets": [{"name": "e", "path": "/etc/passwd"}]},
            ],
        }
    ).model_dump(mode="json")
    assert [loc for loc, _ in values_at(spec, ("steps", "*", "eval_sets", "*", "path"))] == [
        ("steps", 1, "eval_sets", 0, "path")
    ]
    found = violations(spec, JOB_TYPES[JobKind.curate].uri_paths, Roots.of([], [str(tmp_path)]))
    assert {v.field for v in found} == {"steps.0.model_path", "steps.1.eval_sets.0.path"}


# --- against a control plane --------------------------------------------------------------------


@dataclass
class Plane:
    client: TestClient
    home: Path
    shared: Path
    keys: dict[str, dict[str, str]]

    @property
    def area(self) -> Path:
        return self.home / "artifacts" / "teams"


def _key(client: TestClient, admin: dict[str, str], role: str, team: str) -> dict[str, str]:
    r = client.post("/api/v1/keys", json={"name": "k", "role": role, "team": team}, headers=admin)
    assert r.status_code == 201, r.text
    return {"X-API-Key": r.json()["key"]}


@pytest.fixture()
def plane(tmp_path: Path) -> Iterator[Plane]:
    home, shared = tmp_path / "home", tmp_path / "shared"
    shared.mkdir()
    (shared / "corpus.jsonl").write_text('{"text": "hello"}\n')
    options = Settings(
        home=home,
        ray_address=f"http://127.0.0.1:{free_port()}",
        poll_interval_s=60,
        shared_roots=str(shared),
    )
    with TestClient(create_app(options)) as client:
        admin = {"Authorization": f"Bearer {(home / ADMIN_KEY_FILE).read_text().strip()}"}
        keys = {
            "admin": admin,
            "red": _key(client, admin, "member", "red"),
            "reader": _key(client, admin, "read_only", "red"),
            "blue": _key(client, admin, "member", "blue"),
        }
        yield Plane(client, home, shared, keys)


def _tree(root: Path) -> set[str]:
    """Every path under ``root``, but the store's own files (which change with every request)."""
    return {
        str(p.relative_to(root))
        for p in root.rglob("*")
        if not p.name.startswith("llmforge.db") and "__pycache__" not in p.parts
    }


def _base_spec(kind: JobKind, plane: Plane) -> dict[str, Any]:
    """A spec of ``kind`` that red may submit: reads the shared corpus, writes red's area."""
    read, write = str(plane.shared / "corpus.jsonl"), str(plane.area / "red" / "out")
    return {
        JobKind.curate: {"input": read, "output": write},
        JobKind.tokenize: {"input": read, "output": write},
        JobKind.train: {"data": read, "output": write},
        JobKind.evaluate: {"checkpoint": read, "output": write, "tasks": ["arc_easy"]},
        JobKind.tune: {"data": read, "output": write},
        JobKind.finetune: {"checkpoint": read, "data": read, "output": write},
        JobKind.compare: {
            "baseline": "raw",
            "runs": {"raw_s0": {"arm": "raw", "train": read, "evaluate": read}},
            "output": write,
        },
    }[kind]


def _attacks(plane: Plane, blue_job_output: str) -> list[tuple[str, str, str]]:
    """(description, field, value): red reading or writing what is not red's."""
    home, area = plane.home, plane.area
    secrets = {
        "the store": home / "llmforge.db",
        "the admin key": home / ADMIN_KEY_FILE,
        "the Ray token": home / OWN_TOKEN_FILE,
        "the user's Ray token": Path.home() / ".ray" / "auth_token",
        "the home": home,
        "another team's output": Path(blue_job_output),
        "another team's area": area / "blue",
        "every team's areas": area,
        "the job specs": home / "artifacts" / "jobs",
    }
    link = area / "red" / "link-to-blue"
    link.parent.mkdir(parents=True, exist_ok=True)
    link.symlink_to(area / "blue")
    (area / "red" / "link-to-home").symlink_to(home)
    red = str(area / "red")
    sneaky = {
        "a symlink out of the area": f"{link}/out",
        "a symlink to the home": f"{red}/link-to-home/{ADMIN_KEY_FILE}",
        "URL-encoded ..": f"{red}/%2e%2e/blue/out",
        "URL-encoded slash": f"{red}%2F..%2Fblue",
        "division slash": f"{red}\u2215..\u2215blue",
        "fullwidth dots": f"{red}/\uff0e\uff0e/blue",
        "one dot leaders": f"{red}/\u2024\u2024/blue",
        "fullwidth solidus": f"{red}\uff0f..\uff0fblue",
        "a prefix of red's area": f"{red}der/out",
        "file:// to the admin key": f"file://{home}/{ADMIN_KEY_FILE}",
        "/etc": "/etc/passwd",
        "s3 of another team": "s3://llmforge-bucket/teams/blue/out",
        "s3 bucket root": "s3://llmforge-bucket",
    }
    found = [(f"read {what}", "input", str(path)) for what, path in secrets.items()]
    found += [(f"read via {what}", "input", value) for what, value in sneaky.items()]
    writes = {
        "an absolute path elsewhere": "/tmp/llmforge-attack-out",
        "the shared (read-only) root": str(plane.shared / "out"),
        "another team's area": str(area / "blue" / "out"),
        "another team's output": blue_job_output,
        "the home": str(home / "out"),
        "the job specs": str(home / "artifacts" / "jobs" / "x"),
        **sneaky,
    }
    found += [(f"write {what}", "output", value) for what, value in writes.items()]
    return found


def test_attack_matrix_as_a_member_and_as_read_only(plane: Plane) -> None:
    client, keys = plane.client, plane.keys
    blue = client.post(
        "/api/v1/jobs",
        json={"kind": "curate", "spec": {"input": str(plane.shared / "corpus.jsonl")}},
        headers=keys["blue"],
    )
    assert blue.status_code == 201, blue.text
    blue_output = blue.json()["spec"]["output"]
    assert blue_output == f"{plane.area}/blue/curate/{blue.json()['id']}"  # the default output
    attacks = _attacks(plane, blue_output)
    before = _tree(plane.home.parent)
    tally: Counter[str] = Counter()
    for who in ("red", "reader"):
        for what, field, value in attacks:
            for kind in (JobKind.curate, JobKind.tokenize):
                spec = {**_base_spec(kind, plane), field: value}
                r = client.post(
                    "/api/v1/jobs", json={"kind": kind.value, "spec": spec}, headers=keys[who]
                )
                tally["attempts"] += 1
                assert r.status_code in (403, 422), (who, what, kind, r.status_code, r.text)
                tally[f"refused {r.status_code}"] += 1
                if who == "red" and r.status_code == 403:  # it says which field and where to
                    detail = r.json()["detail"][0]
                    assert detail["loc"] == ["body", "spec", field], (what, detail)
                    assert str(plane.area / "red") in str(detail["allowed"])
            # the same as a pipeline stage
            body = {
                "name": "p",
                "stages": [
                    {"name": "a", "kind": "curate", "spec": {**_base_spec(JobKind.curate, plane)}},
                    {
                        "name": "b",
                        "kind": "curate",
                        "after": ["a"],
                        "spec": {"input": "${a.output}", field: value},
                    },
                ],
            }
            r = client.post("/api/v1/pipelines", json=body, headers=keys[who])
            tally["attempts"] += 1
            assert r.status_code in (403, 422), (who, what, r.status_code, r.text)
            tally[f"refused {r.status_code}"] += 1
    assert _tree(plane.home.parent) == before  # nothing created, anywhere
    listed = client.get("/api/v1/jobs", headers=keys["admin"]).json()["data"]
    assert [j["id"] for j in listed] == [blue.json()["id"]]  # no job of red's was recorded
    refused = sum(n for k, n in tally.items() if k.startswith("refused"))
    assert refused == tally["attempts"]
    print(f"\nattack matrix: {tally['attempts']} attempts, {refused} refused ({dict(tally)})")


def test_evaluate_task_files_are_checked_and_built_in_names_are_not(plane: Plane) -> None:
    client, red = plane.client, plane.keys["red"]
    spec = {**_base_spec(JobKind.evaluate, plane), "tasks": ["arc_easy", "hellaswag"]}
    r = client.post("/api/v1/jobs", json={"kind": "evaluate", "spec": spec}, headers=red)
    assert r.status_code == 201, r.text
    for task in (str(plane.home / ADMIN_KEY_FILE), "/etc/task.yaml", "s3://other-bucket/t.yaml"):
        spec["tasks"] = ["arc_easy", task]
        r = client.post("/api/v1/jobs", json={"kind": "evaluate", "spec": spec}, headers=red)
        assert r.status_code == 403, (task, r.text)
        assert r.json()["detail"][0]["loc"] == ["body", "spec", "tasks", 1]


def test_a_placeholder_that_resolves_outside_the_roots_fails_the_stage(plane: Plane) -> None:
    client, red = plane.client, plane.keys["red"]
    body = {
        "name": "p",
        "stages": [
            {"name": "a", "kind": "curate", "spec": _base_spec(JobKind.curate, plane)},
            # a's input is the shared corpus: readable by red, but not writable
            {
                "name": "b",
                "kind": "curate",
                "after": ["a"],
                "spec": {"input": "${a.output}", "output": "${a.input}"},
            },
        ],
    }
    created = client.post("/api/v1/pipelines", json=body, headers=red)
    assert created.status_code == 201, created.text
    jobs = {j["stage"]: j for j in created.json()["jobs"]}
    before = _tree(plane.shared)
    with client.app.state.sessions() as session:  # type: ignore[attr-defined]
        crud.set_state(session, job=session.get(Job, jobs["a"]["id"]), state=JobState.succeeded)
        session.commit()
    client.app.state.scheduler.tick()  # type: ignore[attr-defined]
    child = client.get(f"/api/v1/jobs/{jobs['b']['id']}", headers=red).json()
    assert child["state"] == "FAILED" and child["ray_submission_id"] is None
    assert "spec.output" in child["message"] and "may not be written" in child["message"]
    assert _tree(plane.shared) == before


def test_defaults_land_in_the_team_area_and_what_is_allowed_is_accepted(plane: Plane) -> None:
    client, red = plane.client, plane.keys["red"]
    r = client.post(
        "/api/v1/jobs",
        json={"kind": "curate", "spec": {"input": str(plane.shared / "corpus.jsonl")}},
        headers=red,
    )
    assert r.status_code == 201, r.text
    assert r.json()["spec"]["output"] == f"{plane.area}/red/curate/{r.json()['id']}"
    relative = client.post(
        "/api/v1/jobs",
        json={"kind": "tokenize", "spec": {"input": "curated", "output": "tokens"}},
        headers=red,
    )
    assert relative.status_code == 201, relative.text  # relative: inside the team's area
    assert relative.json()["spec"]["output"] == f"{plane.area}/red/tokens"
    stages = [
        {"name": "a", "kind": "curate", "spec": {"input": str(plane.shared / "corpus.jsonl")}},
        {"name": "b", "kind": "tokenize", "after": ["a"], "spec": {"input": "${a.output}"}},
    ]
    p = client.post("/api/v1/pipelines", json={"name": "p", "stages": stages}, headers=red)
    assert p.status_code == 201, p.text
    outputs = [j["spec"]["output"] for j in p.json()["jobs"]]
    assert outputs == [f"{plane.area}/red/pipelines/{p.json()['id']}/{s}" for s in ("a", "b")]


def test_admins_grant_roots_but_never_the_home(plane: Plane, tmp_path: Path) -> None:
    client, admin, red = plane.client, plane.keys["admin"], plane.keys["red"]
    corpus = tmp_path / "granted"
    corpus.mkdir()
    spec = {"input": str(corpus), "output": str(tmp_path / "granted-out")}
    job = {"kind": "curate", "spec": spec}
    assert client.post("/api/v1/jobs", json=job, headers=red).status_code == 403
    url = "/api/v1/teams/red/roots"
    assert (
        client.put(url, json={"uri": str(corpus), "mode": "read"}, headers=red).status_code == 403
    )
    r = client.put(url, json={"uri": str(corpus), "mode": "read"}, headers=admin)
    assert r.status_code == 200 and r.json()["granted"][0]["mode"] == "read"
    assert client.post("/api/v1/jobs", json=job, headers=red).status_code == 403  # output
    r = client.put(url, json={"uri": str(tmp_path / "granted-out"), "mode": "write"}, headers=admin)
    assert r.status_code == 200
    assert client.post("/api/v1/jobs", json=job, headers=red).status_code == 201
    shown = client.get(url, headers=red).json()
    assert str(tmp_path / "granted-out") in shown["write"] and shown["area"].endswith("teams/red")
    assert client.get("/api/v1/teams/blue/roots", headers=red).status_code == 403
    for unsafe in (str(plane.home), str(tmp_path), "/", f"{plane.home}/%2e%2e"):
        r = client.put(url, json={"uri": unsafe, "mode": "read"}, headers=admin)
        assert r.status_code == 422, (unsafe, r.text)
    r = client.delete(url, params={"uri": str(corpus)}, headers=admin)
    assert r.status_code == 200 and str(corpus) not in r.json()["read"]
    assert client.post("/api/v1/jobs", json=job, headers=red).status_code == 403
    assert client.delete(url, params={"uri": str(corpus)}, headers=admin).status_code == 404


@pytest.mark.parametrize("root", ["home", "parent", "token", "logs"])
def test_the_control_plane_refuses_a_root_that_holds_its_secrets(tmp_path: Path, root: str) -> None:
    home = tmp_path / "home"
    shared = {
        "home": home,
        "parent": tmp_path,
        "token": home / OWN_TOKEN_FILE,
        "logs": home / "logs",
    }[root]
    options = Settings(
        home=home, ray_address=f"http://127.0.0.1:{free_port()}", shared_roots=str(shared)
    )
    app = create_app(options)
    with (
        pytest.raises(RuntimeError, match="refusing to start: LLMFORGE_SHARED_ROOTS"),
        TestClient(app),
    ):
        pass


# --- the property run ---------------------------------------------------------------------------

_SEGMENT = st.text(
    alphabet=st.sampled_from("abcXYZ019-_.~ \u2215\uff0e\u2024\uff0f%2eE"), min_size=1, max_size=8
)


def _outside(plane: Plane) -> st.SearchStrategy[str]:
    """URIs outside red's roots: anywhere on disk, near the roots, the secrets, other buckets."""
    home = str(plane.home)
    bases = st.sampled_from(
        [
            "/",
            "/etc",
            "/tmp",
            home,
            f"{home}/artifacts",
            f"{home}/artifacts/teams/blue",
            f"{home}/artifacts/teams/redder",
            f"{home}/artifacts/jobs",
            f"{plane.area}/red/link-out",
            f"file://{home}",
            "s3://llmforge-bucket/teams/blue",
            "s3://other-bucket",
        ]
    )
    return st.builds(
        lambda base, parts: "/".join([base.rstrip("/"), *parts]) or "/",
        bases,
        st.lists(_SEGMENT, max_size=4),
    )


def test_property_every_uri_field_of_every_kind_refuses_paths_outside(plane: Plane) -> None:
    client, red = plane.client, plane.keys["red"]
    (plane.area / "red").mkdir(parents=True)
    (plane.area / "red" / "link-out").symlink_to(plane.home)
    targets = []
    for kind, job_type in JOB_TYPES.items():
        paths = job_type.uri_paths
        targets += [(kind, p) for p in (*paths.read, *paths.write, *paths.named)]
    before = _tree(plane.home.parent)
    tally: Counter[str] = Counter()

    def place(kind: JobKind, path: tuple[str, ...], value: str) -> dict[str, Any]:
        spec = _base_spec(kind, plane)
        if path == ("steps", "*", "model_path"):
            spec["steps"] = [{"kind": "quality_classifier", "model_path": value, "threshold": 0.5}]
        elif path == ("steps", "*", "eval_sets", "*", "path"):
            spec["steps"] = [{"kind": "decontaminate", "eval_sets": [{"name": "e", "path": value}]}]
        elif path == ("tasks", "*"):
            spec["tasks"] = ["arc_easy", f"{value}/task.yaml"]
        elif path == ("inputs", "*"):  # a tokenize job's corpora by source name
            spec.pop("input")
            spec["inputs"] = {"web": value}
        elif path[:2] == ("judges", "*"):  # an evaluate job's judge model or its tokenizer
            spec["judges"] = [{"model": str(plane.shared), path[2]: value}]
        elif path[:2] == ("runs", "*"):  # a compare job's run outputs
            spec["runs"]["raw_s0"][path[2]] = value
        else:
            assert len(path) == 1, f"a new nested URI field: teach this test {path}"
            spec[path[0]] = value
        return spec

    @settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
    @given(target=st.sampled_from(targets), value=_outside(plane))
    def run(target: tuple[JobKind, tuple[str, ...]], value: str) -> None:
        kind, path = target
        r = client.post(
            "/api/v1/jobs", json={"kind": kind.value, "spec": place(kind, path, value)}, headers=red
        )
        tally["attempts"] += 1
        tally[f"{kind.value}.{'.'.join(path)}"] += 1
        assert r.status_code in (403, 422), (kind, path, value, r.status_code, r.text)
        tally[f"refused {r.status_code}"] += 1

    run()
    assert _tree(plane.home.parent) == before
    refused = tally["refused 403"] + tally["refused 422"]
    assert refused == tally["attempts"]
    print(f"\nproperty run: {tally['attempts']} attempts, {refused} refused ({dict(tally)})")


def test_a_retried_idempotent_submission_keeps_its_default_output(plane: Plane) -> None:
    client, red = plane.client, {**plane.keys["red"], "Idempotency-Key": "once"}
    job = {"kind": "curate", "spec": {"input": str(plane.shared / "corpus.jsonl")}}
    first = client.post("/api/v1/jobs", json=job, headers=red)
    again = client.post("/api/v1/jobs", json=job, headers=red)
    assert (first.status_code, again.status_code) == (201, 200), again.text
    assert again.json()["id"] == first.json()["id"]


def test_a_revoked_grant_stops_a_queued_job_before_ray(plane: Plane, tmp_path: Path) -> None:
    client, admin, red = plane.client, plane.keys["admin"], plane.keys["red"]
    out = tmp_path / "granted-out"
    url = "/api/v1/teams/red/roots"
    assert (
        client.put(url, json={"uri": str(out), "mode": "write"}, headers=admin).status_code == 200
    )
    limit = client.put("/api/v1/teams/red/limit", json={"max_running": 0}, headers=admin)
    assert limit.status_code == 200  # red's jobs wait QUEUED
    spec = {"input": str(plane.shared / "corpus.jsonl"), "output": str(out)}
    job = client.post("/api/v1/jobs", json={"kind": "curate", "spec": spec}, headers=red).json()
    assert job["state"] == "QUEUED"
    assert client.delete(url, params={"uri": str(out)}, headers=admin).status_code == 200
    client.delete("/api/v1/teams/red/limit", headers=admin)  # dispatches: the check runs again
    after = client.get(f"/api/v1/jobs/{job['id']}", headers=red).json()
    assert after["state"] == "FAILED" and after["ray_submission_id"] is None
    assert "output" in after["message"] and "may not be written" in after["message"]
    assert not out.exists()


# --- what task files lead an evaluate job to read -----------------------------------------------


def _task_file(path: Path, data: str, **more: str) -> str:
    lines = [
        "task: leak",
        f"data: {data}",
        "data_format: text",
        "output_type: loglikelihood_rolling",
        'doc_to_target: "{{ text }}"',
        *(f"{k}: {v}" for k, v in more.items()),
    ]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def test_a_task_file_may_not_point_its_data_outside_the_roots(plane: Plane) -> None:
    """A task file in red's own area names data red may not read: refused at submit (403 at
    the task's data field), whether absolute, relative to the data root, a glob, a symlink or
    the few-shot split; data in a shared root is accepted."""
    client, red = plane.client, plane.keys["red"]
    area = plane.area / "red"
    (area / "data").mkdir(parents=True)
    (area / "data" / "key.txt").symlink_to(plane.home / ADMIN_KEY_FILE)
    (area / "data" / "ok.txt").write_text("fine words\n")
    admin_key = str(plane.home / ADMIN_KEY_FILE)
    base = {**_base_spec(JobKind.evaluate, plane), "data_root": str(area / "data")}
    refused = {
        "absolute": (_task_file(area / "t1.yaml", admin_key), "data"),
        "relative": (_task_file(area / "t2.yaml", "../../../../home/admin.key"), "data"),
        "glob": (_task_file(area / "t3.yaml", f"{plane.home}/*.key"), "data"),
        "symlink": (_task_file(area / "t4.yaml", "key.txt"), "data"),
        "few-shot": (
            _task_file(area / "t5.yaml", "ok.txt", fewshot_data=admin_key),
            "fewshot_data",
        ),
        "s3": (_task_file(area / "t6.yaml", "s3://llmforge-bucket/teams/blue/x.txt"), "data"),
    }
    before = _tree(plane.home)
    for what, (task, field) in refused.items():
        spec = {**base, "tasks": ["arc_easy", task]}
        r = client.post("/api/v1/jobs", json={"kind": "evaluate", "spec": spec}, headers=red)
        assert r.status_code == 403, (what, r.text)
        detail = r.json()["detail"][0]
        assert detail["loc"] == ["body", "spec", "tasks", 1, "leak", field], what
        assert "may not be read" in detail["msg"], what
    assert _tree(plane.home) == before  # nothing created
    fine = [
        _task_file(area / "ok.yaml", "ok.txt"),
        _task_file(area / "ok2.yaml", str(plane.shared / "corpus.jsonl")),
    ]
    for task in fine:
        spec = {**base, "tasks": [task]}
        r = client.post("/api/v1/jobs", json={"kind": "evaluate", "spec": spec}, headers=red)
        assert r.status_code == 201, r.text


def test_the_job_checks_task_data_again_when_it_reads_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What the control plane saw may have changed: the entrypoint and the evaluate job both
    check every task's data (built-in tasks' too) against the roots in their environment."""
    from llm.eval.task_config import resolve_tasks
    from ray_jobs.evaluate import check_task_data

    area, data = tmp_path / "area", tmp_path / "data"
    data.mkdir()
    secret = tmp_path / "secret.txt"
    secret.write_text("s3cret\n")
    task = _task_file(area / "t.yaml", str(secret))
    for name, value in Roots.of([str(data)], [str(area)]).to_env().items():
        monkeypatch.setenv(name, value)
    spec = EvaluateSpec(checkpoint=str(area / "ckpt"), output=str(area / "out"), tasks=[task])
    with pytest.raises(JobError, match=r"tasks\.0\.leak\.data: .* may not be read"):
        check_roots(spec)
    configs, _ = resolve_tasks([task])
    with pytest.raises(JobError, match=r"task leak .*: data .* may not be read"):
        check_task_data(configs, None)
    arc, _ = resolve_tasks(["arc_easy"])
    with pytest.raises(JobError, match="may not be read"):
        check_task_data(arc, str(tmp_path / "elsewhere"))  # built-in data outside the roots
    check_task_data(arc, str(data))  # under a read root
    monkeypatch.delenv(ENV_READ_ROOTS)
    monkeypatch.delenv(ENV_WRITE_ROOTS)
    check_task_data(configs, None)  # a job run by hand is not checked


def test_the_evaluation_data_root_is_every_teams_to_read(tmp_path: Path) -> None:
    data = tmp_path / "evaldata"
    data.mkdir()
    options = Settings(
        home=tmp_path / "home", ray_address=f"http://127.0.0.1:{free_port()}", data_root=str(data)
    )
    with TestClient(create_app(options)) as client:
        admin = {"Authorization": f"Bearer {(tmp_path / 'home' / ADMIN_KEY_FILE).read_text()}"}
        red = _key(client, admin, "member", "red")
        spec = {"checkpoint": str(data / "ckpt"), "tasks": ["arc_easy"], "data_root": str(data)}
        r = client.post("/api/v1/jobs", json={"kind": "evaluate", "spec": spec}, headers=red)
        assert r.status_code == 201, r.text
        scheduler = client.app.state.scheduler  # type: ignore[attr-defined]
        with client.app.state.sessions() as session:  # type: ignore[attr-defined]
            job = session.get(Job, r.json()["id"])
            assert job is not None
            env = scheduler.job_env(job, "t", Roots.of([str(data)], []))
        assert env["LLMFORGE_DATA_ROOT"] == str(data)
    home_data = Settings(
        home=tmp_path / "home",
        ray_address=f"http://127.0.0.1:{free_port()}",
        data_root=str(tmp_path / "home"),
    )
    with pytest.raises(RuntimeError, match="LLMFORGE_DATA_ROOT"), TestClient(create_app(home_data)):
        pass
