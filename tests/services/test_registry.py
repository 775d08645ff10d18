"""The datasets and models registry: what succeeded jobs record, lineage, and the REST routes.

Job outputs are written here by the same functions the jobs use (the curate funnel counts, the
token-shard writer); the end-to-end run through Ray is in test_control_plane_ray.py.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pytest
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session

from llm.data.stats import reason_counts
from llm.tokenizer.shards import write_manifest, write_shard
from services import job_outputs
from services.api.app import create_app
from services.auth import ADMIN_KEY_FILE
from services.ray_head import free_port
from services.scheduler import read_result
from services.settings import Settings
from services.store import crud, registry
from services.store.models import ArtifactCategory, Job, JobState


def _succeeded(session: Session, kind: str, spec: dict[str, Any], result: Any = None) -> Job:
    job = crud.create_job(session, kind=kind, spec=spec, state=JobState.succeeded, team="red")
    job.result = result
    return job


def _curate_output(out: Path) -> None:
    batch = pa.table(
        {"text": ["kept one", "kept two", "short", "dup"], "reason": [None, None, "short", "dup"]}
    )
    out.mkdir(parents=True)
    (out / "stats.json").write_text(json.dumps({**reason_counts(batch), "seconds": 1.5}))


def _token_output(out: Path) -> None:
    out.mkdir(parents=True)
    (out / "tokenizer.json").write_text("{}")
    train = {**write_shard(out, "train-0000.bin", np.arange(10, dtype=np.uint16)), "documents": 2}
    val = {**write_shard(out, "val-0000.bin", np.arange(4, dtype=np.uint16)), "documents": 1}
    write_manifest(
        out,
        tokenizer_file="tokenizer.json",
        vocab_size=300,
        dtype="uint16",
        eos_id=0,
        shards={"train": [train], "val": [val]},
    )


def test_succeeded_jobs_record_a_lineage_from_corpus_to_evaluation(
    session: Session, tmp_path: Path
) -> None:
    curated, tokens, trained = tmp_path / "curated", tmp_path / "tokens", tmp_path / "train"
    _curate_output(curated)
    _token_output(tokens)
    curate = _succeeded(session, "curate", {"input": "/corpus", "output": str(curated)})
    [documents] = job_outputs.register_outputs(session, curate)
    assert (documents.category, documents.kind) == ("dataset", "documents")
    assert documents.stats["documents"] == 2 and documents.stats["documents_in"] == 4
    assert documents.stats["removed"] == {"dup": 1, "short": 1}

    tokenize = _succeeded(
        session, "tokenize", {"input": f"file://{curated}/", "output": str(tokens)}
    )
    [shards] = job_outputs.register_outputs(session, tokenize)
    assert shards.parent_id == documents.id and shards.inputs == [f"file://{curated}/"]
    assert shards.stats["tokens"] == 14 and shards.stats["train_tokens"] == 10
    assert shards.stats["vocab_size"] == 300 and shards.stats["shards"] == 2

    checkpoint = f"{trained}/checkpoints/step_00000010"
    result = {"steps": 10, "tokens_seen": 640, "first_loss": 5.6, "final_loss": 4.1,
              "last": {"loss": 4.1, "val_loss": 4.3, "val_ppl": 73.7},
              "checkpoint": checkpoint, "parameters": 12345}  # fmt: skip
    train = _succeeded(session, "train", {"data": str(tokens), "output": str(trained)}, result)
    [model] = job_outputs.register_outputs(session, train)
    assert (model.category, model.kind, model.parent_id) == ("model", "checkpoint", shards.id)
    assert model.stats["parameters"] == 12345 and model.stats["checkpoint"] == checkpoint
    assert model.stats["val_loss"] == 4.3

    figures = {"val_loss": 4.2, "val_ppl": 66.7, "completion": "the cat", "checkpoint": checkpoint}
    spec = {"checkpoint": checkpoint, "data": str(tokens), "output": str(tmp_path / "eval")}
    assert (
        job_outputs.register_outputs(session, _succeeded(session, "evaluate", spec, figures)) == []
    )
    session.commit()
    [evaluation] = registry.evaluations_of(session, model_ids=[model.id])[model.id]
    assert evaluation.metrics == {"val_loss": 4.2, "val_ppl": 66.7, "completion": "the cat"}
    chain = registry.lineage(session, artifact=model)
    assert [a.id for a in chain] == [model.id, shards.id, documents.id]
    assert [a.job_id for a in chain] == [train.id, tokenize.id, curate.id]

    tuned = {"steps": 4, "epochs": 1, "checkpoint": f"{tmp_path}/sft/checkpoints/step_00000004",
             "parameters": 12345, "val_loss": 3.9, "base_val_loss": 4.2}  # fmt: skip
    spec = {"checkpoint": checkpoint, "data": "/sft.jsonl", "output": str(tmp_path / "sft")}
    [sft] = job_outputs.register_outputs(session, _succeeded(session, "finetune", spec, tuned))
    assert (sft.kind, sft.parent_id, sft.inputs) == (
        "finetuned",
        model.id,
        [checkpoint, "/sft.jsonl"],
    )
    assert sft.stats["val_loss"] == 3.9 and sft.stats["base_val_loss"] == 4.2


def test_unreadable_outputs_keep_the_record_and_say_why(session: Session, tmp_path: Path) -> None:
    job = _succeeded(session, "tokenize", {"input": "x", "output": str(tmp_path / "nothing")})
    [shards] = job_outputs.register_outputs(session, job)
    assert shards.stats["error"].startswith("stats not recorded: FileNotFoundError")
    train = _succeeded(session, "train", {"data": "d", "output": "o"})
    [model] = job_outputs.register_outputs(session, train)
    assert "left no result.json" in model.stats["error"]
    assert job_outputs.register_outputs(session, _succeeded(session, "tune", {"output": "o"})) == []


def test_deleting_a_model_drops_its_evaluations(session: Session) -> None:
    model = registry.create_artifact(
        session, category=ArtifactCategory.model, kind="exported", name="m", uri="/models/m/"
    )
    assert model.uri == "/models/m"
    registry.add_evaluation(session, model_id=model.id, checkpoint="/models/m", metrics={"a": 1})
    session.commit()
    registry.delete_artifact(session, artifact=model)
    session.commit()
    assert registry.evaluations_of(session, model_ids=[model.id]) == {model.id: []}


# --- over REST ----------------------------------------------------------------------------------


@pytest.fixture()
def api(tmp_path: Path) -> Iterator[tuple[TestClient, dict[str, str]]]:
    settings = Settings(
        home=tmp_path, ray_address=f"http://127.0.0.1:{free_port()}", poll_interval_s=60
    )
    with TestClient(create_app(settings)) as client:
        admin = {"Authorization": f"Bearer {(tmp_path / ADMIN_KEY_FILE).read_text().strip()}"}
        yield client, admin


def _made(home: Path, team: str, *parts: str) -> str:
    """A folder with a file in it, in ``team``'s area (where its registrations may point)."""
    folder = home / "artifacts" / "teams" / team / Path(*parts)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "part-0.parquet").write_bytes(b"x")
    return str(folder)


def _key(client: TestClient, admin: dict[str, str], team: str) -> dict[str, str]:
    r = client.post("/api/v1/keys", json={"name": team, "team": team}, headers=admin)
    return {"X-API-Key": r.json()["key"]}


def test_register_list_and_walk_lineage_over_rest(
    api: tuple[TestClient, dict[str, str]], tmp_path: Path
) -> None:
    client, admin = api
    red, blue = _key(client, admin, "red"), _key(client, admin, "blue")
    corpus = {
        "name": "web",
        "kind": "raw",
        "uri": _made(tmp_path, "red", "corpus"),
        "stats": {"docs": 9},
    }
    raw = client.post("/api/v1/datasets", json=corpus, headers=red)
    assert raw.status_code == 201, raw.text
    assert raw.json()["evaluations"] is None and raw.json()["job_id"] is None
    model_uri = _made(tmp_path, "red", "models", "m")
    body = {"name": "hf", "kind": "exported", "uri": model_uri, "parent_id": raw.json()["id"]}
    model = client.post("/api/v1/models", json=body, headers=red).json()
    assert model["evaluations"] == [] and model["team"] == "red"
    lineage = client.get(f"/api/v1/models/{model['id']}/lineage", headers=red).json()
    assert [a["id"] for a in lineage["chain"]] == [model["id"], raw.json()["id"]]
    assert lineage["complete"] is True
    # Teams: blue sees nothing of red's, admins see everything.
    assert client.get(f"/api/v1/models/{model['id']}", headers=blue).status_code == 404
    assert client.get("/api/v1/datasets", headers=blue).json()["count"] == 0
    assert client.get("/api/v1/datasets", headers=admin).json()["count"] == 1
    assert (
        client.get("/api/v1/datasets", params={"team": "blue"}, headers=admin).json()["count"] == 0
    )
    # A dataset id is not a model id.
    assert client.get(f"/api/v1/models/{raw.json()['id']}", headers=red).status_code == 404
    listed = client.get("/api/v1/models", params={"kind": "exported"}, headers=red).json()
    assert [m["id"] for m in listed["data"]] == [model["id"]]
    assert (
        client.get("/api/v1/models", params={"kind": "checkpoint"}, headers=red).json()["count"]
        == 0
    )


def test_registry_pages_with_a_cursor(
    api: tuple[TestClient, dict[str, str]], tmp_path: Path
) -> None:
    client, admin = api
    made = {
        client.post(
            "/api/v1/datasets",
            json={"name": f"d{i}", "kind": "raw", "uri": _made(tmp_path, "default", "d", str(i))},
            headers=admin,
        ).json()["id"]
        for i in range(5)
    }
    seen, cursor = [], None
    while True:
        params = {"limit": 2, **({"cursor": cursor} if cursor else {})}
        page = client.get("/api/v1/datasets", params=params, headers=admin).json()
        seen += [d["id"] for d in page["data"]]
        if (cursor := page["next_cursor"]) is None:
            break
    assert sorted(seen) == sorted(made) and len(seen) == 5
    assert client.get("/api/v1/datasets", params={"cursor": "x"}, headers=admin).status_code == 422


@pytest.mark.parametrize(
    ("body", "loc", "says"),
    [
        ({"kind": "raw", "uri": "s3://AKIA:secret@bucket/x"}, ["body", "uri"], "credentials"),
        ({"kind": "raw", "uri": "/data/../etc"}, ["body", "uri"], "'..'"),
        ({"kind": "raw", "uri": "http://host/x"}, ["body", "uri"], "s3://"),
        ({"kind": "raw", "uri": "{area}", "parent_id": "nope"}, ["body", "parent_id"], "nope"),
        ({"kind": "checkpoint", "uri": "{area}"}, ["body", "kind"], "documents"),
        ({"kind": "raw", "uri": "{area}", "size": 3}, ["body", "size"], "Extra inputs"),
        ({"kind": "raw", "uri": "/etc"}, ["body", "uri"], "outside every read root"),
        ({"kind": "raw", "uri": "{home}"}, ["body", "uri"], "teams/default"),
        ({"kind": "raw", "uri": "{area}/none"}, ["body", "uri"], "does not exist"),
        ({"kind": "raw", "uri": "{area}/link"}, ["body", "uri"], "resolves to /etc"),
        ({"kind": "raw", "uri": "s3://bucket/x"}, ["body", "uri"], "outside every read root"),
    ],
)
def test_bad_registrations_are_422_naming_the_field(
    api: tuple[TestClient, dict[str, str]],
    tmp_path: Path,
    body: dict[str, Any],
    loc: list[str],
    says: str,
) -> None:
    """The URI's form, then the team's read roots (symlinks resolved), then its existence."""
    client, admin = api
    area = _made(tmp_path, "default", "corpus")
    (Path(area) / "link").symlink_to("/etc")
    body = {
        k: v.replace("{area}", area).replace("{home}", str(tmp_path)) if k == "uri" else v
        for k, v in body.items()
    }
    r = client.post("/api/v1/datasets", json={"name": "d", **body}, headers=admin)
    assert r.status_code == 422, r.text
    assert r.json()["code"] == "validation_error"
    assert loc in [e["loc"] for e in r.json()["detail"]] and says in r.text
    assert "secret" not in r.text
    assert client.get("/api/v1/datasets", headers=admin).json()["count"] == 0


def test_registrations_may_point_at_shared_and_granted_roots(
    api: tuple[TestClient, dict[str, str]], tmp_path: Path
) -> None:
    """A team registers what it may read: its area, a root an admin granted it (read-only is
    enough), not another team's area."""
    client, admin = api
    red = _key(client, admin, "red")
    blue_area = _made(tmp_path, "blue", "corpus")
    corpus = {"name": "c", "kind": "raw", "uri": blue_area}
    refused = client.post("/api/v1/datasets", json=corpus, headers=red)
    assert refused.status_code == 422 and refused.json()["detail"][0]["type"] == "storage_root"
    assert refused.json()["detail"][0]["allowed"][0] == str(tmp_path / "artifacts/teams/red")
    grant = {"uri": blue_area, "mode": "read"}
    assert client.put("/api/v1/teams/red/roots", json=grant, headers=admin).status_code == 200
    r = client.post("/api/v1/datasets", json=corpus, headers=red)
    assert r.status_code == 201, r.text
    single = {**corpus, "uri": f"file://{blue_area}/part-0.parquet"}
    assert client.post("/api/v1/datasets", json=single, headers=red).status_code == 201


def test_delete_keeps_files_unless_asked_and_refuses_a_parent(
    api: tuple[TestClient, dict[str, str]], tmp_path: Path
) -> None:
    client, admin = api
    red = _key(client, admin, "red")
    folder = Path(_made(tmp_path, "red", "datasets", "web"))
    parent = client.post(
        "/api/v1/datasets", json={"name": "web", "kind": "raw", "uri": str(folder)}, headers=red
    ).json()
    child = client.post(
        "/api/v1/datasets",
        json={
            "name": "c",
            "kind": "documents",
            "uri": _made(tmp_path, "red", "c"),
            "parent_id": parent["id"],
        },
        headers=red,
    ).json()
    assert client.delete(f"/api/v1/datasets/{child['id']}", headers=red).status_code == 403
    refused = client.delete(f"/api/v1/datasets/{parent['id']}", headers=admin)
    assert refused.status_code == 409 and child["id"] in refused.json()["detail"]
    assert client.delete(f"/api/v1/datasets/{child['id']}", headers=admin).status_code == 200
    gone = client.delete(
        f"/api/v1/datasets/{parent['id']}", params={"delete_files": True}, headers=admin
    )
    assert gone.status_code == 200 and not folder.exists()
    assert client.get(f"/api/v1/datasets/{parent['id']}", headers=admin).status_code == 404
    # a root an admin granted: registering it is allowed, deleting its files is not
    grant = {"uri": "/srv", "mode": "read"}
    assert client.put("/api/v1/teams/default/roots", json=grant, headers=admin).status_code == 200
    root = client.post(
        "/api/v1/datasets", json={"name": "r", "kind": "raw", "uri": "/srv"}, headers=admin
    )
    r = client.delete(
        f"/api/v1/datasets/{root.json()['id']}", params={"delete_files": True}, headers=admin
    )
    assert r.status_code == 422 and "too close to a filesystem root" in r.text
    # files someone already removed: the record still goes
    gone_folder = _made(tmp_path, "default", "removed-later")
    missing = client.post(
        "/api/v1/datasets", json={"name": "m", "kind": "raw", "uri": gone_folder}, headers=admin
    ).json()
    shutil.rmtree(gone_folder)
    r = client.delete(
        f"/api/v1/datasets/{missing['id']}", params={"delete_files": True}, headers=admin
    )
    assert r.status_code == 200
    assert client.get(f"/api/v1/datasets/{missing['id']}", headers=admin).status_code == 404


def test_a_diverged_run_is_recorded_on_every_store(session: Session, tmp_path: Path) -> None:
    """A NaN loss in result.json (Python's json writes it) is not JSON: PostgreSQL would refuse
    the job's record. It is stored as null, and the replaced fields are listed."""
    out = tmp_path / "train"
    out.mkdir()
    result = {
        "steps": 5,
        "tokens_seen": 10,
        "final_loss": float("nan"),
        "parameters": 7,
        "checkpoint": str(out / "checkpoints" / "step_00000005"),
        "last": {"val_loss": float("inf")},
    }
    (out / "result.json").write_text(json.dumps(result))
    spec = {"data": "d", "output": str(out)}
    job = _succeeded(session, "train", spec, read_result(spec))
    [model] = job_outputs.register_outputs(session, job)
    session.commit()
    session.expire_all()
    assert job.result is not None and job.result["final_loss"] is None
    assert job.result["non_finite"] == [".final_loss: nan", ".last.val_loss: inf"]
    assert model.stats["final_loss"] is None and model.stats["val_loss"] is None
