"""``llmforge eval MODEL --tasks …``: an evaluate job through the REST API (or, with --local,
in this process), and ``llmforge eval-table RESULT…``: a leaderboard across models."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from services.cli.api import Api, ApiError
from services.cli.client import api_client, print_error, print_result, show_state

REGISTRY = "registry:"  # services.registry_refs: the control plane resolves it on submit


def _local_path(value: str) -> str:
    if "://" in value or value.startswith(REGISTRY):
        return value
    return str(Path(value).resolve())


def parse_judge(value: str) -> dict[str, Any]:
    """A --judge value: a model folder (path or URI), ``registry:<model id or name>``, or a JSON
    object of the evaluate spec's judge fields ({"model": …, "labels": […], "kind": …,
    "name": …}); local paths absolute."""
    if not value.lstrip().startswith("{"):
        return {"model": _local_path(value)}
    try:
        judge = json.loads(value)
    except json.JSONDecodeError as e:
        raise argparse.ArgumentTypeError(f"--judge: not a JSON object ({e})") from e
    if not isinstance(judge, dict):
        raise argparse.ArgumentTypeError("--judge: give a model folder or a JSON object")
    for name in ("model", "tokenizer"):
        if isinstance(judge.get(name), str):
            judge[name] = _local_path(judge[name])
    return judge


def _spec(args: argparse.Namespace) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "checkpoint": _local_path(args.model),
        "output": str(Path(args.output).resolve()),
        "tasks": [t for t in args.tasks.split(",") if t] if args.tasks else [],
        "workers": args.workers,
        "batch_size": args.batch_size,
        "log_samples": args.log_samples,
    }
    for name in ("limit", "num_fewshot"):
        if getattr(args, name) is not None:
            spec[name] = getattr(args, name)
    for name in ("data", "tokenizer"):
        if getattr(args, name) is not None:
            spec[name] = str(Path(getattr(args, name)).resolve())
    if args.judges:
        spec["judges"] = args.judges
    return spec


def _local_judges(args: argparse.Namespace) -> list[Any]:
    """The --judge models loaded here, checked as the evaluate spec checks them."""
    from contracts.judges import JudgeSpec, check_judge_names
    from llm.eval.judge import load_judge

    specs = [JudgeSpec.model_validate(j) for j in args.judges or ()]
    named = [j.model for j in specs if j.model.startswith(REGISTRY)]
    if named:
        raise SystemExit(
            f"--judge {named[0]}: registry references are resolved by the control plane; "
            "drop --local, or give the judge's folder"
        )
    check_judge_names(specs)
    return [
        load_judge(
            j.model,
            kind=j.kind,
            tokenizer=j.tokenizer,
            labels=j.labels,
            mode=j.mode,
            template=j.template,
            name=j.metric_name,
            batch_size=j.batch_size,
        )
        for j in specs
    ]


def _local(args: argparse.Namespace) -> int:
    from llm.eval.report import leaderboard_markdown
    from llm.eval.runner import evaluate_tasks

    if not args.tasks:
        print("--local needs --tasks")
        return 2
    result = evaluate_tasks(
        args.model,
        args.tokenizer,
        args.tasks.split(","),
        num_fewshot=args.num_fewshot,
        limit=args.limit,
        batch_size=args.batch_size,
        log_samples=args.log_samples,
        judges=_local_judges(args),
    )
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    (out / "eval.json").write_text(json.dumps({"tasks": result}, indent=2, sort_keys=True))
    print(leaderboard_markdown({Path(args.model).name: result}))
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    if args.local:
        return _local(args)
    with api_client() as http:
        api = Api(http)
        try:
            job = api.submit_job({"kind": "evaluate", "spec": _spec(args)})
            if args.wait:
                job = api.wait(job, show_state)
        except ApiError as e:
            return print_error(e)
    table = Path(args.output) / "leaderboard.md"
    if args.wait and job.state == "SUCCEEDED" and table.is_file():
        print(table.read_text())
    return print_result(lambda: job)


def cmd_eval_table(args: argparse.Namespace) -> int:
    from llm.eval.report import leaderboard_markdown

    runs = {}
    for path in args.results:
        body = json.loads(Path(path).read_text())
        runs[Path(path).parent.name or path] = body.get("tasks", body)
    print(leaderboard_markdown(runs))
    return 0


def add_eval_commands(sub: Any) -> None:
    p = sub.add_parser("eval", help="evaluate a model on benchmark tasks (an evaluate job)")
    p.add_argument(
        "model",
        help="llmforge checkpoint, train output folder, HF model folder, or registry:<model id>",
    )
    p.add_argument("--tasks", help="comma-separated built-in task names or task YAML files")
    p.add_argument("--output", default="eval-out", help="folder for eval.json, leaderboard.md")
    p.add_argument("--data", help="token shards: also score their val split (loss, ppl)")
    p.add_argument("--tokenizer", help="tokenizer.json or shard folder (default: data's)")
    p.add_argument("--limit", type=int, help="first N items of each task")
    p.add_argument("--num-fewshot", type=int, dest="num_fewshot")
    p.add_argument("--workers", type=int, default=2, help="Ray workers for the items")
    p.add_argument("--batch-size", type=int, default=8, dest="batch_size")
    p.add_argument("--log-samples", action="store_true", dest="log_samples")
    p.add_argument(
        "--judge",
        action="append",
        type=parse_judge,
        dest="judges",
        metavar="MODEL|JSON",
        help="score generated completions with this judge (repeatable): a classifier "
        "checkpoint or fine-tune output, registry:<model id or name>, or a JSON object such as "
        '\'{"model": "cls-out", '
        '"labels": ["good"], "name": "quality"}\' (the evaluate spec\'s judge fields)',
    )
    p.add_argument("--wait", action="store_true", help="wait and print the leaderboard row")
    p.add_argument("--local", action="store_true", help="run here, without the control plane")
    p.set_defaults(fn=cmd_eval)
    t = sub.add_parser("eval-table", help="Markdown leaderboard from several eval.json files")
    t.add_argument("results", nargs="+")
    t.set_defaults(fn=cmd_eval_table)
