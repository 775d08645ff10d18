"""``llmforge quality-train``: a fastText quality classifier from positive and negative examples."""

from __future__ import annotations

import argparse
import json
import sys

# Command-line names of llm.data.quality.TrainParams fields; unset ones keep its defaults.
_PARAMS = {
    "epoch": "epoch",
    "lr": "lr",
    "wordNgrams": "wordNgrams",
    "dim": "dim",
    "bucket": "bucket",
    "min_count": "minCount",
    "seed": "seed",
}


def cmd_quality_train(args: argparse.Namespace) -> int:
    # Imported here: the library pulls in pyarrow, which other commands do not need.
    from llm.data.quality import TrainParams, read_examples, train_classifier

    chosen = {field: getattr(args, name) for name, field in _PARAMS.items()}
    params = TrainParams(**{k: v for k, v in chosen.items() if v is not None})
    try:
        positive = read_examples(args.positive, text_field=args.text_field)
        negative = read_examples(args.negative, text_field=args.text_field)
        report = train_classifier(
            positive, negative, args.output, holdout=args.holdout, params=params
        )
    except (OSError, ValueError, RuntimeError) as exc:
        print(f"llmforge quality-train: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(report, indent=2))
    return 0


def add_quality_commands(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "quality-train",
        help="train a fastText quality classifier (as DCLM does) and report held-out precision",
        description="Writes MODEL.bin and the report MODEL.json. Use the model in a curate spec: "
        '{"kind": "quality_classifier", "model_path": "MODEL.bin", "threshold": 0.5}.',
    )
    p.add_argument("--positive", nargs="+", required=True, help="high-quality example files")
    p.add_argument("--negative", nargs="+", required=True, help="low-quality example files")
    p.add_argument("--output", required=True, help="the model file to write (.bin)")
    p.add_argument("--text-field", default="text", help="JSONL field / Parquet column")
    p.add_argument("--holdout", type=float, default=0.1, help="share held out for the report")
    p.add_argument("--epoch", type=int, help="default 5")
    p.add_argument("--lr", type=float, help="default 0.1")
    p.add_argument("--wordNgrams", type=int, help="default 2")
    p.add_argument("--dim", type=int, help="default 64")
    p.add_argument("--bucket", type=int, help="hash buckets for word n-grams; default 100000")
    p.add_argument("--min-count", type=int, help="default 2")
    p.add_argument("--seed", type=int, help="default 0")
    p.set_defaults(fn=cmd_quality_train)
