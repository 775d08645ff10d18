"""The ``llmforge`` command: run the control plane, the demo, and talk to the REST API."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, cast

from services.cli.audit import add_audit_commands
from services.cli.campaigns import add_prompts_commands
from services.cli.download import add_download_commands
from services.cli.eval import add_eval_commands
from services.cli.experiment import add_experiment_commands
from services.cli.jobs import add_job_commands
from services.cli.prompt import add_prompt_command
from services.cli.quality import add_quality_commands
from services.cli.registry import add_registry_commands
from services.cli.serve_model import add_serve_model_command
from services.settings import get_settings


def cmd_serve(args: argparse.Namespace) -> int:
    from services.server import serve

    serve(get_settings())
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from services.demo import run_demo

    return run_demo(
        get_settings(),
        user_input=args.input,
        steps=args.steps,
        workers=args.workers,
        timeout_s=args.timeout,
    )


def cmd_tokenizer_train(args: argparse.Namespace) -> int:
    from llm.tokenizer.local_train import train_from_files

    try:
        report = train_from_files(
            args.inputs,
            args.output,
            vocab_size=args.vocab_size,
            special_tokens=args.special_tokens,
            pretokenizer=args.pretokenizer,
            text_field=args.text_field,
            max_docs=args.max_docs,
        )
    except (OSError, ValueError) as exc:
        print(f"llmforge tokenizer-train: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(report, indent=2))
    return 0


def _add_tokenizer_train(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("tokenizer-train", help="train a byte-level BPE tokenizer from local files")
    p.add_argument("inputs", nargs="+", help="Parquet, JSONL(.gz) or text files, or folders")
    p.add_argument("--output", default="tokenizer.json")
    p.add_argument("--vocab-size", type=int, default=8192)
    p.add_argument("--special-tokens", nargs="+", default=["<|endoftext|>"])
    p.add_argument("--pretokenizer", choices=["gpt2", "llama3"], default="gpt2")
    p.add_argument("--text-field", default="text", help="the text column / JSON field")
    p.add_argument("--max-docs", type=int, help="read at most this many documents")
    p.set_defaults(fn=cmd_tokenizer_train)


def cmd_plan(args: argparse.Namespace) -> int:
    from pydantic import ValidationError

    from services.api.routes.plan import PlanRequest, make_plan

    fields = {k: v for k, v in vars(args).items() if k in PlanRequest.model_fields}
    try:
        result = make_plan(PlanRequest(**{k: v for k, v in fields.items() if v is not None}))
    except (ValidationError, ValueError) as exc:
        print(f"llmforge plan: {exc}", file=sys.stderr)
        return 1
    print(result["table"])
    spec = cast(dict[str, Any], result["train_spec"])
    if args.spec_out:
        Path(args.spec_out).write_text(json.dumps(spec, indent=2) + "\n")
        print(f"train spec written to {args.spec_out}")
    if args.submit:
        if "data" not in spec:
            print("llmforge plan: --submit needs --data (the token shards)", file=sys.stderr)
            return 1
        from services.cli.api import Api
        from services.cli.client import api_client, print_result

        with api_client() as http:
            return print_result(lambda: Api(http).submit_job({"kind": "train", "spec": spec}))
    return 0


def _add_plan(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("plan", help="compute-optimal model size, config and memory for a budget")
    p.add_argument("--flops", type=float, help="compute budget in FLOPs")
    p.add_argument("--gpu-hours", type=float, help="or GPU-hours on --gpu at --mfu")
    p.add_argument("--tokens", type=float, help="or fixed data: the corpus's tokens")
    p.add_argument("--overtrain", type=float, help="with --tokens: a model this many times smaller")
    p.add_argument("--data", help="token shards, for the train spec")
    p.add_argument("--output", help="the train spec's output (default: the team's area)")
    p.add_argument("--batch-size", type=int, help="the train spec's batch_size (default 8)")
    p.add_argument("--workers", type=int, help="the train spec's workers (default 2)")
    p.add_argument("--spec-out", help="write the ready train spec (JSON) here")
    p.add_argument("--submit", action="store_true", help="submit the train spec (needs --data)")
    p.add_argument("--gpu", help="H100, A100, ... (default H100)")
    p.add_argument("--mfu", type=float, help="model FLOPs utilisation (default 0.4)")
    p.add_argument("--method", choices=["rule", "approach3"])
    p.add_argument("--style", choices=["gpt2", "llama"])
    p.add_argument("--vocab-size", type=int)
    p.add_argument("--block-size", type=int)
    p.add_argument("--micro-batch", type=int)
    p.add_argument("--precision", choices=["fp32", "bf16-mixed", "bf16"])
    p.add_argument("--strategy", choices=["ddp", "fsdp"])
    p.add_argument("--n-gpus", type=int)
    p.add_argument("--checkpointing", action="store_true", default=None)
    p.set_defaults(fn=cmd_plan)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="llmforge", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("serve", help="run the control plane").set_defaults(fn=cmd_serve)
    demo = sub.add_parser("demo", help="curate → tokenize → train → evaluate, end to end")
    demo.add_argument("--input", help="your corpus: JSONL file or folder (default: a real sample)")
    demo.add_argument("--steps", type=int, default=300, help="training steps")
    demo.add_argument("--workers", type=int, default=2, help="Ray Train workers (DDP)")
    demo.add_argument("--timeout", type=float, default=1200, help="seconds before giving up")
    demo.set_defaults(fn=cmd_demo)
    add_job_commands(sub)
    add_registry_commands(sub)
    add_download_commands(sub)
    add_audit_commands(sub)
    add_prompts_commands(sub)
    _add_tokenizer_train(sub)
    _add_plan(sub)
    add_quality_commands(sub)
    add_eval_commands(sub)
    add_experiment_commands(sub)
    add_prompt_command(sub)
    add_serve_model_command(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.fn(args))
