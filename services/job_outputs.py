"""Recording what a succeeded job made: datasets, token shards, checkpoints, evaluations.

Each job kind leaves known files in its output folder (see ``ray_jobs``): a curate job its
``stats.json`` funnel, a tokenize job its ``manifest.json`` (and ``stats.json``), a train or
fine-tune job its ``result.json`` with the latest checkpoint, a tune job its best trial's
folder (``<output>/trials/<trial id>``, laid out as a train job's output), an evaluate job its
``result.json`` figures. The
record links to the job, to the input URIs, and to the artifact found at the input (its parent),
which is how lineage is walked later. A file that cannot be read does not lose the record: it is
kept with ``stats.error`` saying what was missing.
"""

from __future__ import annotations

import posixpath
from collections.abc import Callable
from typing import Any

from pyarrow import fs
from sqlalchemy.orm import Session

from contracts.jobs import JOB_TYPES, JobKind
from llm import storage
from llm.tokenizer.shards import source_counts

# import JOB_TYPES, JobKind
from services.jsonsafe import finite_record
from services.store import registry as store
from services.store.models import Artifact, ArtifactCategory, Job

Registrar = Callable[[Session, Job], list[Artifact]]


def _read_json(uri: str) -> dict[str, Any]:
    data = storage.read_json(uri)
    if not isinstance(data, dict):
        raise ValueError(f"{uri}: expected a JSON object")
    return data


def _stats_or_error(read: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    try:
        return finite_record(read())
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        return {"error": f"stats not recorded: {type(e).__name__}: {e}"}


def _record(
    session: Session,
    job: Job,
    category: ArtifactCategory,
    kind: str,
    inputs: list[str],
    stats: dict[str, Any],
    parent: Artifact | None = None,
    uri: str | None = None,
) -> Artifact:
    """The job's output folder (or uri, a folder in it) as an artifact; its parent, unless
    given, is what was recorded at the first input (a tokenizer reused from elsewhere is an
    input, not the parent)."""
    if parent is None and inputs:
        parent = store.newest_at(session, uris=inputs[:1])
    return store.create_artifact(
        session,
        category=category,
        kind=kind,
        name=job.name or f"{job.kind}-{job.id}",
        uri=uri or str(job.spec["output"]),
        job_id=job.id,
        parent_id=parent.id if parent else None,
        inputs=inputs,
        stats=stats,
        owner=job.owner,
        team=job.team,
    )


def curate_stats(output: str) -> dict[str, Any]:
    funnel = _read_json(f"{output}/stats.json")
    return {
        "documents": funnel["kept"]["documents"],
        "bytes": funnel["kept"]["bytes"],
        "documents_in": funnel["documents"],
        "bytes_in": funnel["bytes"],
        "removed": {reason: v["documents"] for reason, v in funnel["removed"].items()},
        "seconds": funnel.get("seconds"),
    }


def token_stats(output: str) -> dict[str, Any]:
    manifest = _read_json(f"{output}/manifest.json")
    splits = manifest["splits"]
    stats: dict[str, Any] = {
        "vocab_size": manifest["vocab_size"],
        "dtype": manifest["dtype"],
        "eos_id": manifest["eos_id"],
        "tokenizer_sha256": manifest["tokenizer"]["sha256"],
        "tokens": sum(int(s["tokens"]) for s in splits.values()),
        "documents": sum(int(s["documents"]) for s in splits.values()),
        "shards": sum(len(s["shards"]) for s in splits.values()),
    }
    for split, entry in splits.items():
        stats[f"{split}_tokens"], stats[f"{split}_documents"] = entry["tokens"], entry["documents"]
    # train tokens per source (a manifest from before sources has one, "default")
    stats["source_tokens"] = {
        name: counts["tokens"] for name, counts in source_counts(splits["train"]["shards"]).items()
    }
    try:  # the encoding figures, when the tokenize job wrote them
        extra = _read_json(f"{output}/stats.json")
        stats["bytes_per_token"] = extra["splits"]["train"]["bytes_per_token"]
        stats["vocab_used"] = extra["vocab_used"]
    except (OSError, ValueError, KeyError, TypeError):
        pass
    return stats


def train_stats(job: Job) -> dict[str, Any]:
    result = job.result
    if not result:
        raise ValueError(f"job {job.id} left no result.json in {job.spec.get('output')}")
    last = result.get("last") or {}
    return {
        "parameters": result["parameters"],
        "steps": result["steps"],
        "tokens_seen": result["tokens_seen"],
        "first_loss": result.get("first_loss"),
        "final_loss": result.get("final_loss"),
        "val_loss": last.get("val_loss"),
        "val_ppl": last.get("val_ppl"),
        "checkpoint": result["checkpoint"],
        "model": job.spec.get("model"),
    }


def _curate(session: Session, job: Job) -> list[Artifact]:
    stats = _stats_or_error(lambda: curate_stats(job.spec["output"]))
    inputs = [str(job.spec["input"])]
    return [_record(session, job, ArtifactCategory.dataset, "documents", inputs, stats)]


def _tokenize(session: Session, job: Job) -> list[Artifact]:
    stats = _stats_or_error(lambda: token_stats(job.spec["output"]))
    # one corpus, or several by source name
    inputs = [str(job.spec["input"])] if job.spec.get("input") else []
    inputs += [str(uri) for uri in (job.spec.get("inputs") or {}).values()]
    if job.spec.get("tokenizer"):  # a reused tokenizer is an input too
        inputs.append(str(job.spec["tokenizer"]))
    return [_record(session, job, ArtifactCategory.dataset, "token_shards", inputs, stats)]


def finetune_stats(job: Job) -> dict[str, Any]:
    result = job.result
    if not result:
        raise ValueError(f"job {job.id} left no result.json in {job.spec.get('output')}")
    keys = ("steps", "epochs", "tokens_seen", "first_loss", "final_loss", "base_val_loss",
            "val_loss", "checkpoint", "best_checkpoint", "parameters", "trainable_parameters",
            "method")  # fmt: skip
    stats = {key: result.get(key) for key in keys}
    if "dpo" in result:  # preference tuning: its last reward accuracy and margins
        stats["dpo"] = result["dpo"]
    return stats


def _finetune(session: Session, job: Job) -> list[Artifact]:
    """A finetune job's output: a fine-tuned model, or with method 'lora' an adapter, whose
    parent is its base model and whose stats name the base checkpoint it loads onto."""
    stats = _stats_or_error(lambda: finetune_stats(job))
    base = model_for_checkpoint(session, str(job.spec["checkpoint"]))
    inputs = [str(job.spec["checkpoint"]), str(job.spec["data"])]
    kind = "finetuned"
    if job.spec.get("method") == "lora":
        kind = "adapter"
        checkpoint = (job.result or {}).get("base_checkpoint") or str(job.spec["checkpoint"])
        stats["base"] = {"checkpoint": checkpoint, "model_id": base.id if base else None}
    return [_record(session, job, ArtifactCategory.model, kind, inputs, stats, base)]


def _train(session: Session, job: Job) -> list[Artifact]:
    stats = _stats_or_error(lambda: train_stats(job))
    inputs = [str(job.spec["data"])]
    return [_record(session, job, ArtifactCategory.model, "checkpoint", inputs, stats)]


def tune_stats(job: Job) -> dict[str, Any]:
    """The kept trial's figures, from the tune job's result."""
    result = job.result or {}
    trial = result["best_checkpoint_trial"]
    row = next(r for r in result["trials"] if r["trial_id"] == trial)
    return {
        "trial_id": trial,
        "best_trial": result["best_trial"],
        "config": row["config"],
        "steps": row["steps"],
        "workers": row.get("workers"),
        "best_val_loss": row["best_val_loss"],
        "val_loss": row["final_val_loss"],
        "checkpoint": result["best_checkpoint"],
        "model": job.spec.get("model"),
        "precision": job.spec.get("precision"),
    }


def _tune(session: Session, job: Job) -> list[Artifact]:
    """The best finished trial's folder as a model, like a train job's output; nothing when no
    trial ran to the end (the job's result still has the best configuration)."""
    result = job.result or {}
    trial = result.get("best_checkpoint_trial")
    if not result.get("best_checkpoint") or not trial:
        return []
    stats = _stats_or_error(lambda: tune_stats(job))
    inputs = [str(job.spec["data"])]
    # the tune job's layout (ray_jobs.tune.trial_output)
    folder = storage.join(str(job.spec["output"]), "trials", str(trial))
    return [_record(session, job, ArtifactCategory.model, "checkpoint", inputs, stats, uri=folder)]


def _checkpoint(session: Session, job: Job) -> list[Artifact]:
    """A trained model: a train job's output, or a tune job's best trial."""
    return _tune(session, job) if job.kind == JobKind.tune else _train(session, job)


def model_for_checkpoint(session: Session, checkpoint: str) -> Artifact | None:
    """The model an evaluate job's ``checkpoint`` names: a train output folder, or a checkpoint
    inside one (``OUTPUT/checkpoints/step-N``)."""
    path = store.normalize_uri(checkpoint)
    candidates = [path, posixpath.dirname(path), posixpath.dirname(posixpath.dirname(path))]
    return store.newest_at(session, uris=candidates, category=ArtifactCategory.model)


def _evaluate(session: Session, job: Job) -> list[Artifact]:
    result = job.result or {}
    checkpoint = str(job.spec["checkpoint"])
    # The spec's checkpoint is what the user named; result.checkpoint is the resolved folder.
    model = model_for_checkpoint(session, checkpoint) or model_for_checkpoint(
        session, str(result.get("checkpoint", checkpoint))
    )
    metrics = finite_record({k: v for k, v in result.items() if k != "checkpoint"})
    if not result:
        metrics = {"error": f"job {job.id} left no result.json in {job.spec.get('output')}"}
    store.add_evaluation(
        session,
        model_id=model.id if model else None,
        job_id=job.id,
        checkpoint=str(result.get("checkpoint", checkpoint)),
        data=job.spec.get("data"),
        metrics=metrics,
    )
    return []


# By what a job kind registers (contracts.jobs.JobType.registers).
REGISTRARS: dict[str, Registrar] = {
    "documents": _curate,
    "token_shards": _tokenize,
    "checkpoint": _checkpoint,
    "evaluation": _evaluate,
    "finetuned": _finetune,
}


def register_outputs(session: Session, job: Job) -> list[Artifact]:
    """Record what a job that has just succeeded made (nothing for kinds without outputs to
    record)."""
    registers = JOB_TYPES[JobKind(job.kind)].registers
    return REGISTRARS[registers](session, job) if registers else []


def delete_files(uri: str) -> bool:
    """Delete an artifact's folder or file (local or s3://); False when it was already gone.
    A path of fewer than two parts (``/tmp``, a whole bucket) is refused: no registry record is
    worth that."""
    filesystem, path = storage.filesystem(uri)
    if len([part for part in path.split("/") if part]) < 2:
        raise ValueError(f"refusing to delete {uri!r}: too close to a filesystem root")
    info = filesystem.get_file_info(path)
    if info.type == fs.FileType.NotFound:
        return False  # the record can go all the same
    if info.type == fs.FileType.Directory:
        filesystem.delete_dir(path)
    else:
        filesystem.delete_file(path)
    return True
