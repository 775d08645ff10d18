"""generate_until: complete prompts greedily or by sampling until a stop string, like lm-eval.

Prompts are left-truncated so the completion fits the model's context (lm-eval keeps
max_length - max_gen_toks prompt tokens), batched longest first, and each completion is cut
before the first stop string it contains. llmforge models generate with llm/generate.py
(KV cache, EOS and stop strings end a row early); Hugging Face models with their generate().
Sampled generation is reproducible for a fixed seed and batch composition.

An encoder-decoder's prompt is the encoder's input and its completion the decoder's output, so
each may take the whole context; an encoder (masked LM) cannot generate and fails up front.
"""

from __future__ import annotations

from collections.abc import Sequence

from llm.eval.lm import PLL, SEQ2SEQ, EvalModel, GenerationUnsupportedError
from llm.eval.task_config import GenerationConfig
from llm.generate import Sampling


def cut_at_stop(text: str, stop: Sequence[str]) -> str:
    """lm-eval's postprocessing: everything from the first occurrence of any stop string on
    is dropped."""
    for term in stop:
        if term:
            text = text.split(term)[0]
    return text


def generate_until(
    model: EvalModel,
    contexts: Sequence[str],
    gen: GenerationConfig,
    *,
    batch_size: int = 16,
) -> list[str]:
    """One completion per context, in the order of contexts."""
    if model.scoring == PLL:
        raise GenerationUnsupportedError(
            f"{model.name}: generate_until needs a model that generates text, but this is an "
            "encoder (masked LM); run log-likelihood tasks on it instead"
        )
    if model.scoring == SEQ2SEQ:
        if gen.max_gen_toks > model.max_length:
            raise ValueError(
                f"max_gen_toks ({gen.max_gen_toks}) exceeds the decoder's context "
                f"({model.max_length})"
            )
        room = model.max_length  # the prompt goes to the encoder, the completion elsewhere
    else:
        room = model.max_length - gen.max_gen_toks
    if room <= 0:
        raise ValueError(
            f"max_gen_toks ({gen.max_gen_toks}) must be below the model's context "
            f"({model.max_length}) to leave room for the prompt"
        )
    prompts = [ids[-room:] or [model.prefix_id] for ids in model.encode(list(contexts))]
    opts = Sampling(
        temperature=gen.temperature,
        top_k=gen.top_k,
        top_p=gen.top_p,
        eos_id=model.eos_id,
        stop=tuple(gen.until),
        decode=model.decode,
        seed=gen.seed,
    )
    order = sorted(range(len(prompts)), key=lambda i: -len(prompts[i]))
    out: dict[int, str] = {}
    for start in range(0, len(order), batch_size):
        chunk = order[start : start + batch_size]
        new = model.generate([prompts[i] for i in chunk], gen.max_gen_toks, opts)
        for i, ids in zip(chunk, new, strict=True):
            out[i] = cut_at_stop(model.decode(ids), gen.until)
    return [out[i] for i in range(len(prompts))]
