"""Evaluate a model: benchmark tasks spread over Ray workers, and/or validation loss on shards.

Tasks (``llm.eval``): each task's items are cut into contiguous shards; a pool of ``workers``
Ray actors, each holding the model once, evaluates the shards and ``llm.eval.runner.merge``
combines them into exactly the result of one unsharded run. With ``data``, one more Ray task
scores the token shards' val split (loss, perplexity) and samples a completion.

Every architecture is evaluated (the checkpoint's config.json names its ``arch``): a decoder
by causal log-likelihood, next-token val loss and a continued prompt; an encoder by masked-LM
pseudo-log-likelihood and masked-LM val loss, with no sample (``sample: null`` and
``sample_reason``) and generate_until tasks refused before anything runs; an encoder-decoder
by the decoder's log-likelihood given the encoded context, span-corruption val loss and a
completion decoded from the encoded prompt. Each task's result names its ``scoring``, the val
figures their ``objective``.

Judges (``EvaluateSpec.judges``, ``llm.eval.judge``: a classifier checkpoint, a Hugging Face
sequence classifier or a language model's log-likelihood) score every generate_until task's
completions; each worker loads them once beside the model, and each task reports
``judge_<name>``.

Writes ``eval.json`` (per-task metrics with standard errors, normalised leaderboard scores,
malformed-row counts, optional per-item records) and ``leaderboard.md`` to the job's output,
and sends the main metric of each task to the control plane. Checkpoint, data, tokenizer and
output are local paths or ``s3://`` URIs alike: the driver only finds which checkpoint folder
and tokenizer file to use, and each worker fetches them (and the token shards) into its own
node's scratch.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import ray
from ray.util import ActorPool

from contracts.roots import READ, RootError, Roots
from contracts.specs import EvaluateSpec
from llm import storage
from llm.eval.data import data_files
from llm.eval.judge import Judge, good_labels, load_judge, tokenizer_near
from llm.eval.lm import SCORING, load_eval_model
from llm.eval.report import leaderboard_markdown
from llm.eval.runner import (
    check_generation,
    evaluate_tasks,
    merge,
    regroup,
    shard_slices,
    task_rows,
)
from llm.eval.task_config import GENERATE, TaskConfig, resolve_tasks
from llm.finetune.classify import ClassifierInfo
from llm.generate import generate
from llm.tokenizer.bpe import eos_id, load_tokenizer
from llm.tokenizer.shards import MANIFEST_FILE
from llm.train.checkpoint import CLASSIFIER_KEY, STATE_FILE, load_model, read_state
from llm.train.checkpoint.location import fetch, latest_uri
from llm.train.pretrain import validation_loss
from ray_jobs import entrypoint
from ray_jobs.cluster import init_ray, node_id
from ray_jobs.entrypoint import JobError
from ray_jobs.reporting import MetricsReporter
from ray_jobs.training_io import Shards, local_file, local_shards, open_output, open_shards

# below this many items a task is not split further: each shard pays a batch's padding
MIN_ITEMS_PER_SHARD = 64
TOKENIZER_FILE = "tokenizer.json"
MAIN_METRICS = ("acc_norm", "acc", "bits_per_byte", "word_perplexity", "exact_match", "rouge_l")


def _absolute(uri: str) -> str:
    return uri if storage.is_remote(uri) else str(storage.filesystem(uri)[1])


def resolve_checkpoint(uri: str) -> str:
    """A model folder itself (path or URI), or the latest complete checkpoint under a train
    job's output."""
    uri = _absolute(uri)
    if storage.is_file(storage.join(uri, "config.json")):
        return uri
    latest = latest_uri(storage.join(uri, "checkpoints")) or latest_uri(uri)
    if latest is None:
        raise JobError(f"no checkpoint found at {uri}")
    return latest


def resolve_tokenizer(spec: EvaluateSpec, model: str, checkpoint: str) -> str | None:
    """A tokenizer.json path or URI: the spec's (a file, or a shard folder's), else data's,
    else one in the model folder the spec names (a finetune output keeps one there); None: the
    checkpoint folder's own is used."""
    for uri in (spec.tokenizer, spec.data):
        if uri is None:
            continue
        uri = _absolute(uri)
        if storage.is_file(uri):
            return uri
        manifest = storage.join(uri, MANIFEST_FILE)
        if not storage.is_file(manifest):
            raise JobError(f"tokenizer not found: {uri} is neither a file nor a shard folder")
        return storage.join(uri, storage.read_json(manifest)["tokenizer"]["file"])
    beside = storage.join(model, TOKENIZER_FILE)
    if not storage.is_file(storage.join(checkpoint, TOKENIZER_FILE)) and storage.is_file(beside):
        return beside
    return None


def resolve_judges(spec: EvaluateSpec) -> list[dict[str, Any]]:
    """Each judge of the spec with its model folder and tokenizer found (paths or URIs, which
    each worker fetches), checked before Ray starts; the judge's labels are checked against an
    llmforge classifier's own."""
    resolved = []
    for i, judge in enumerate(spec.judges):
        where = f"judges[{i}]"
        if not storage.is_dir(_absolute(judge.model)):
            raise JobError(f"{where}.model: {judge.model} is not a folder")
        try:
            folder = resolve_checkpoint(judge.model)
        except JobError as e:
            raise JobError(f"{where}.model: {e}") from e
        state = storage.join(folder, STATE_FILE)
        ours = storage.is_file(state)
        if judge.kind == "classifier" and ours:
            saved = storage.read_json(state).get(CLASSIFIER_KEY)
            if saved is None:
                raise JobError(
                    f"{where}.model: {folder} is a language model's checkpoint, not a "
                    "classifier's; a language model judges with kind 'loglik'"
                )
            try:
                good_labels(ClassifierInfo.from_json(saved, folder).labels, judge.labels, folder)
            except ValueError as e:
                raise JobError(f"{where}.labels: {e}") from e
        tokenizer = _absolute(judge.tokenizer) if judge.tokenizer else None
        if tokenizer is None and ours:
            tokenizer = tokenizer_near(folder)
            if tokenizer is None:
                raise JobError(f"{where}.tokenizer: no {TOKENIZER_FILE} beside {folder}: give it")
        rest = judge.model_dump(exclude={"model", "tokenizer", "name"})
        resolved.append(
            {**rest, "model": folder, "tokenizer": tokenizer, "name": judge.metric_name}
        )
    return resolved


def build_judge(judge: dict[str, Any]) -> Judge:
    """A resolved judge (``resolve_judges``) loaded on this worker."""
    tokenizer = judge["tokenizer"]
    return load_judge(
        fetch(judge["model"]),
        kind=judge["kind"],
        tokenizer=local_file(tokenizer) if tokenizer is not None else None,
        labels=judge["labels"],
        mode=judge["mode"],
        template=judge["template"],
        name=judge["name"],
        batch_size=judge["batch_size"],
    )


class _Evaluator:
    """One worker: fetches and loads the model (and its judges) once, then evaluates item
    shards of tasks."""

    def __init__(
        self,
        model: str,
        tokenizer: str | None,
        options: dict[str, Any],
        judges: Sequence[dict[str, Any]] = (),
    ) -> None:
        local_tokenizer = str(local_file(tokenizer)) if tokenizer is not None else None
        self.lm = load_eval_model(fetch(model), local_tokenizer)
        self.judges = [build_judge(j) for j in judges]
        self.options = options

    def run(self, task: TaskConfig, items: slice) -> dict[str, Any]:
        return evaluate_tasks(
            self.lm, tasks=[task], items=items, judges=self.judges, **self.options
        )

    def node(self) -> str:
        return node_id()


Evaluator: Any = ray.remote(num_cpus=1)(_Evaluator)


def check_task_data(configs: list[TaskConfig], data_root: str | None) -> None:
    """Every file the tasks read under this job's read roots, checked when it reads them:
    what a task file or the data root says may differ from what the control plane saw."""
    try:
        allowed = Roots.from_env(os.environ)
    except RootError as e:
        raise JobError(f"storage roots: {e}") from e
    if allowed is None:
        return  # a job run by hand
    for cfg in configs:
        files = data_files(cfg.data, cfg.fewshot_data, task_file=cfg.source, data_root=data_root)
        for name, file in files:
            try:
                allowed.check(file, READ)
            except RootError as e:
                raise JobError(
                    f"task {cfg.task} ({cfg.source}): {name} {file!r} may not be read by this "
                    f"team: {e}; the team's read roots are: {', '.join(allowed.read) or 'none'}"
                ) from e


def checkpoint_arch(checkpoint: str) -> str:
    """The architecture (ModelConfig.arch) of the model folder: an llmforge config.json names
    it; a Hugging Face causal LM's, which does not, is a decoder."""
    config = storage.join(checkpoint, "config.json")
    if not storage.is_file(config):
        return "decoder"  # load_eval_model says what is missing
    arch = storage.read_json(config).get("arch", "decoder")
    if arch not in SCORING:
        raise JobError(f"{config}: unknown arch {arch!r}; expected one of {sorted(SCORING)}")
    return str(arch)


def run_tasks(
    spec: EvaluateSpec,
    model: str,
    tokenizer: str | None,
    judges: Sequence[dict[str, Any]] = (),
) -> tuple[dict[str, Any], set[str]]:
    """The merged task results, and the nodes whose workers computed them."""
    try:
        configs, groups = resolve_tasks(list(spec.tasks))
        check_task_data(configs, spec.data_root)
        rows = task_rows(configs, limit=spec.limit, data_root=spec.data_root)
    except (ValueError, FileNotFoundError) as e:  # TaskError is a ValueError
        raise JobError(str(e)) from e
    units = []
    for cfg in configs:
        shards = max(1, min(spec.workers, math.ceil(rows[cfg.task] / MIN_ITEMS_PER_SHARD)))
        units += [(cfg, s) for s in shard_slices(rows[cfg.task], shards)]
    options = {
        "num_fewshot": spec.num_fewshot,
        "limit": spec.limit,
        "batch_size": spec.batch_size,
        "log_samples": spec.log_samples,
        "data_root": spec.data_root,
    }
    actors = [
        Evaluator.remote(model, tokenizer, options, judges)
        for _ in range(min(spec.workers, len(units)))
    ]
    parts = list(ActorPool(actors).map_unordered(lambda a, u: a.run.remote(*u), units))
    nodes = set(ray.get([a.node.remote() for a in actors]))
    return regroup(merge(parts), groups), nodes


def _main_metric(entry: dict[str, Any]) -> tuple[str, float] | None:
    """The task's headline figure: the first of MAIN_METRICS it has, else its own primary
    metric (a generation task with a filter_list reports "exact_match,<filter>" keys only)."""
    primary = entry.get("primary_metric")
    for name in (*MAIN_METRICS, *([primary] if primary else [])):
        cell = entry.get("metrics", {}).get(name)
        if cell is not None and cell.get("value") is not None:
            return name, float(cell["value"])
    return None


def task_metrics(result: dict[str, Any]) -> dict[str, float]:
    """One figure per task and group for the control plane: "<task>/<metric>"."""
    out = {}
    for name, entry in [*result["results"].items(), *result["groups"].items()]:
        main = _main_metric(entry)
        if main is not None:
            out[f"{name}/{main[0]}"] = main[1]
    return out


def _train_config(checkpoint: Path) -> dict[str, Any] | None:
    """The train_config the checkpoint's trainer saved (its objective's settings), if any."""
    try:
        saved = read_state(checkpoint).get("train_config")
    except (FileNotFoundError, ValueError):
        return None  # a hand-saved or foreign checkpoint: the objective's defaults apply
    return saved if isinstance(saved, dict) else None


def val_and_sample(
    spec: EvaluateSpec, checkpoint: Path, folder: Path, *, verify: bool = True
) -> dict[str, Any]:
    """Validation loss on the model's own objective (causal LM, masked LM or span corruption,
    see llm.train.pretrain.validation_loss) and a sampled completion where the architecture
    generates: a decoder continues the prompt, an encoder-decoder decodes from the encoded
    prompt, an encoder (masked LM) has no sample and the result says why. checkpoint and the
    shard folder are local."""
    model = load_model(checkpoint)
    arch = model.config.arch
    try:
        metrics = validation_loss(
            model,
            folder,
            batch_size=spec.batch_size,
            max_batches=spec.max_batches,
            train_config=_train_config(checkpoint),
            verify=verify,
        )
    except ValueError as e:
        raise JobError(f"{folder} against {checkpoint}: {e}") from e
    out: dict[str, Any] = {**metrics, "arch": arch, "prompt": spec.prompt}
    if arch == "encoder":
        out["completion"] = None
        out["sample"] = None
        out["sample_reason"] = (
            "an encoder (masked LM) does not generate text; its tasks are scored by "
            "pseudo-log-likelihood"
        )
        return out
    manifest = json.loads((folder / MANIFEST_FILE).read_text())
    tok = load_tokenizer(folder / manifest["tokenizer"]["file"])
    # an empty prompt (allowed) still needs one token: the document separator
    prompt_ids = tok.encode(spec.prompt, add_special_tokens=False).ids or [eos_id(tok)]
    new_ids = generate(
        model,
        prompt_ids,
        spec.max_new_tokens,
        temperature=spec.temperature,
        top_k=spec.top_k,
        eos_id=eos_id(tok),
        seed=spec.seed,
    )
    out["completion"] = tok.decode(new_ids)
    out["sample"] = {"prompt": spec.prompt, "completion": out["completion"]}
    return out


def _val_and_sample(spec: EvaluateSpec, checkpoint: str, data: Shards) -> dict[str, Any]:
    """val_and_sample on a Ray worker: the checkpoint and shards fetched to its node."""
    folder, verified = local_shards(data)
    result = val_and_sample(spec, fetch(checkpoint), folder, verify=not verified)
    return {**result, "node": node_id()}


def _model_uri(spec: EvaluateSpec) -> str:
    uri = _absolute(spec.checkpoint)
    if not storage.is_dir(uri):
        raise JobError(f"model not found: {spec.checkpoint} is not a folder")
    return uri


def run(spec: EvaluateSpec) -> dict[str, Any]:
    started = time.time()
    out = open_output(spec.output)
    model = _model_uri(spec)
    checkpoint = resolve_checkpoint(model)
    state = storage.join(checkpoint, STATE_FILE)
    if storage.is_file(state) and CLASSIFIER_KEY in storage.read_json(state):
        raise JobError(
            f"{checkpoint} is a classifier, not a language model: name it as one of the judges"
        )
    arch = checkpoint_arch(checkpoint)
    tokenizer = resolve_tokenizer(spec, model, checkpoint)
    data = open_shards(spec.data) if spec.data else None
    if spec.tasks:  # a task the arch cannot run fails before Ray starts
        try:
            configs = resolve_tasks(list(spec.tasks))[0]
            check_generation(SCORING[arch], configs, f"{model} (arch {arch})")
        except ValueError as e:  # TaskError is a ValueError
            raise JobError(str(e)) from e
        if spec.judges and not any(cfg.output_type == GENERATE for cfg in configs):
            raise JobError(
                f"judges score generated completions, but none of the tasks is {GENERATE}"
            )
    judges = resolve_judges(spec)
    init_ray()
    result: dict[str, Any] = {"model": model, "arch": arch}
    nodes: set[str] = set()
    if data is not None:
        task: Any = ray.remote(num_cpus=1)(_val_and_sample)
        result |= ray.get(task.remote(spec, checkpoint, data))
        nodes.add(result.pop("node"))
        result["checkpoint"] = checkpoint
    metrics: dict[str, float] = {k: result[k] for k in ("val_loss", "val_ppl") if k in result}
    if spec.tasks:
        tasks, task_nodes = run_tasks(spec, checkpoint, tokenizer, judges)
        nodes |= task_nodes
        result["tasks"] = tasks
        metrics |= task_metrics(tasks)
        name = model.rstrip("/").rsplit("/", 1)[-1]
        board = leaderboard_markdown({name: tasks}) + "\n"
        storage.write_text(storage.join(out, "leaderboard.md"), board)
    result["seconds"] = round(time.time() - started, 3)
    result["nodes"] = sorted(nodes)
    storage.write_text(storage.join(out, "eval.json"), json.dumps(result, indent=2, sort_keys=True))
    MetricsReporter(out).log(0, metrics)
    summary = {k: v for k, v in result.items() if k != "tasks"}
    if spec.tasks:
        summary["metrics"] = task_metrics(result["tasks"])
    return summary


if __name__ == "__main__":
    raise SystemExit(entrypoint.main(EvaluateSpec, run))
