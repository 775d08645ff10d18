"""lm-evaluation-harness interoperability: the ``llmforge`` model type for lm_eval.

Importing this module registers ``llmforge`` with lm_eval's model registry, so any harness task
runs on an llmforge checkpoint (or a Hugging Face folder) through this package's scoring:

    python -m llm.eval.lm_eval_adapter --model llmforge \\
        --model_args checkpoint=RUN/checkpoints/step_00000300,tokenizer=SHARDS/tokenizer.json \\
        --tasks hellaswag --device cpu

or, in Python, ``import llm.eval.lm_eval_adapter`` and then
``lm_eval.simple_evaluate(model="llmforge", model_args=...)``. lm_eval is optional: without it
installed this module defines nothing else and the rest of llm/ is unaffected.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from typing import Any

import torch

from llm.eval.generation import generate_until
from llm.eval.lm import EvalModel, load_eval_model
from llm.eval.loglik import Request, loglikelihood, loglikelihood_rolling
from llm.eval.task_config import GenerationConfig

log = logging.getLogger(__name__)

try:
    from lm_eval.api.model import LM
    from lm_eval.api.registry import register_model

    HAVE_LM_EVAL = True
except ImportError:  # lm_eval is an optional extra (bench)
    HAVE_LM_EVAL = False


def _generation(kwargs: dict[str, Any], default_max: int) -> GenerationConfig:
    """lm_eval's gen_kwargs (until, max_gen_toks, do_sample, temperature, ...) as ours."""
    until = kwargs.get("until") or []
    sample = bool(kwargs.get("do_sample", False))
    return GenerationConfig(
        until=(until,) if isinstance(until, str) else tuple(until),
        max_gen_toks=int(kwargs.get("max_gen_toks", default_max)),
        temperature=float(kwargs.get("temperature", 1.0)) if sample else 0.0,
        top_k=kwargs.get("top_k") if sample else None,
        top_p=kwargs.get("top_p") if sample else None,
    )


if HAVE_LM_EVAL:

    @register_model("llmforge")
    class LlmforgeLM(LM):
        """lm_eval's LM interface over this package's log-likelihood and generation."""

        def __init__(
            self,
            checkpoint: str | None = None,
            tokenizer: str | None = None,
            batch_size: int | str = 32,
            max_batch_size: int | None = None,
            device: str | None = "cpu",
            share_prefix: bool | str = True,
            max_gen_toks: int = 256,
            model: EvalModel | None = None,
        ) -> None:
            super().__init__()
            if model is None and checkpoint is None:
                raise ValueError("llmforge needs model_args checkpoint=PATH (and tokenizer=...)")
            device = device or "cpu"
            if device.startswith("cuda") and not torch.cuda.is_available():
                # lm_eval's command line asks for cuda unless told --device cpu
                log.warning("no CUDA device here: evaluating on the CPU")
                device = "cpu"
            self.lm = model or load_eval_model(str(checkpoint), tokenizer, device)
            # lm_eval passes "auto" or a number; "auto" means our default batch
            self.batch = int(batch_size) if str(batch_size).isdigit() else 32
            self.share_prefix = str(share_prefix).lower() not in ("false", "0", "no")
            self.max_gen_toks = int(max_gen_toks)

        def loglikelihood(
            self, requests: Sequence[Any], disable_tqdm: bool = False
        ) -> list[tuple[float, bool]]:
            ours = [
                Request(req.args[0], req.args[1], f"{req.task_name} doc {req.doc_id}")
                for req in requests
            ]
            scores = loglikelihood(
                self.lm, ours, batch_size=self.batch, share_prefix=self.share_prefix
            )
            return [(s.logprob, s.is_greedy) for s in scores]

        def loglikelihood_rolling(
            self, requests: Sequence[Any], disable_tqdm: bool = False
        ) -> list[float]:
            texts = [req.args[0] for req in requests]
            return loglikelihood_rolling(self.lm, texts, batch_size=self.batch)

        def generate_until(self, requests: Sequence[Any], disable_tqdm: bool = False) -> list[str]:
            # one generation setting per batch, as lm-eval's hf model groups by gen_kwargs
            by_kwargs: dict[str, list[int]] = {}
            for i, req in enumerate(requests):
                key = json.dumps(req.args[1], sort_keys=True, default=str)
                by_kwargs.setdefault(key, []).append(i)
            out: dict[int, str] = {}
            for indices in by_kwargs.values():
                gen = _generation(requests[indices[0]].args[1], self.max_gen_toks)
                contexts = [requests[i].args[0] for i in indices]
                texts = generate_until(self.lm, contexts, gen, batch_size=self.batch)
                out.update(zip(indices, texts, strict=True))
            return [out[i] for i in range(len(requests))]


def main() -> None:
    """lm_eval's command line, with the llmforge model type registered."""
    if not HAVE_LM_EVAL:
        raise SystemExit("lm_eval is not installed: pip install 'lm_eval[hf]==0.4.13'")
    from lm_eval.__main__ import cli_evaluate

    cli_evaluate()


if __name__ == "__main__":
    main()
