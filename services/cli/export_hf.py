"""``llmforge models export-hf ID --output DIR``: a registered model as a Hugging Face folder.

The model's final checkpoint (its ``stats.checkpoint``, inside the record's URI) and the
tokenizer of the token shards it was trained on (the first ``token_shards`` dataset in its
lineage) come through the API, so the command works against a remote control plane whose
files live on S3; ``llm.model.hf.export_hf`` then writes safetensors, config.json and the
tokenizer files, loadable by ``transformers`` with no custom code. A fine-tune exports the same
way; an adapter is exported merged onto its base by ``export_hf`` once loaded, which needs the
base's files on this machine, so adapters are refused with what to do instead.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path
from typing import Any

from services.cli.api import Api, ApiError
from services.cli.client import api_client, print_error
from services.cli.download import fetch

CHECKPOINT_FILES = ("config.json", "model.safetensors")
TOKENIZER_FILE = "tokenizer.json"
EXPORTABLE = ("checkpoint", "finetuned")


class ExportError(RuntimeError):
    """The model cannot be exported as asked; the message says why and what to do."""


def _relative(uri: str, inside: str) -> str:
    base = inside.rstrip("/") + "/"
    if uri == inside.rstrip("/"):
        return ""
    if not uri.startswith(base):
        raise ExportError(f"the model's checkpoint {uri} is not inside its URI {inside}")
    return uri[len(base) :]


def export_model(api: Api, model_id: str, output: Path) -> dict[str, Any]:
    """Download the model's checkpoint and tokenizer into a scratch folder, then export."""
    from llm.model.hf import export_hf
    from llm.tokenizer.bpe import eos_id, load_tokenizer
    from llm.train.checkpoint.full import load_model

    record = api.artifact("models", model_id)
    if record.kind not in EXPORTABLE:
        raise ExportError(
            f"model {model_id} is a {record.kind!r}; export-hf takes {' or '.join(EXPORTABLE)}"
            + (
                " (an adapter: fine-tune with method 'full', or load it with "
                "llm.train.checkpoint.full.load_model and llm.model.hf.export_hf, which merge it)"
                if record.kind == "adapter"
                else ""
            )
        )
    checkpoint = str(record.stats.get("checkpoint") or record.uri)
    folder = _relative(checkpoint, record.uri)
    chain = api.lineage("models", model_id).chain
    shards = next((a for a in chain if a.category == "dataset" and a.kind == "token_shards"), None)
    if shards is None:
        raise ExportError(f"model {model_id}'s lineage holds no token_shards dataset (tokenizer)")
    with tempfile.TemporaryDirectory(prefix="llmforge-export-") as scratch:
        local = Path(scratch)
        for name in CHECKPOINT_FILES:
            path = f"{folder}/{name}" if folder else name
            url = Api.artifact_file("models", model_id, path)
            if not fetch(api, url, local / "checkpoint" / name, resume=False):
                raise ExportError(f"could not download {path} of model {model_id}")
        tokenizer = local / TOKENIZER_FILE
        url = Api.artifact_file("datasets", shards.id, TOKENIZER_FILE)
        if not fetch(api, url, tokenizer, resume=False):
            raise ExportError(f"could not download {TOKENIZER_FILE} of dataset {shards.id}")
        model = load_model(local / "checkpoint")
        eos = eos_id(load_tokenizer(str(tokenizer)))
        export_hf(model, output, tokenizer, eos_id=eos)
    return {
        "model": model_id,
        "checkpoint": checkpoint,
        "tokenizer": f"{shards.uri.rstrip('/')}/{TOKENIZER_FILE}",
        "output": str(output),
        "files": sorted(p.name for p in output.iterdir()),
    }


def cmd_export_hf(args: argparse.Namespace) -> int:
    import json

    with api_client(timeout=None) as http:
        try:
            report = export_model(Api(http), args.id, Path(args.output))
        except ApiError as e:
            return print_error(e)
        except (ExportError, ValueError) as e:
            print(f"llmforge models export-hf: {e}", file=sys.stderr)
            return 1
    print(json.dumps(report, indent=2))
    return 0


def add_export_hf(actions: Any) -> None:
    p = actions.add_parser(
        "export-hf",
        help="write a model as a Hugging Face folder (transformers loads it, no custom code)",
    )
    p.add_argument("id")
    p.add_argument("-o", "--output", required=True, help="the folder to write")
    p.set_defaults(fn=cmd_export_hf)
