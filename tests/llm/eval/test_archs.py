"""Evaluation of every architecture, in one process on tiny random models: an encoder's
log-likelihood tasks by pseudo-log-likelihood, an encoder-decoder's by the decoder's
log-probabilities given the encoded context, encoder-decoder generation with and without the
KV cache, validation loss on each arch's own objective, and the evaluate job's pieces that
run without Ray."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
import tokenizers
import torch
import yaml

from contracts.specs import EvaluateSpec
from llm.eval.lm import (
    GenerationUnsupportedError,
    LlmforgeEncoder,
    LlmforgeModel,
    LlmforgeSeq2Seq,
    as_eval_model,
    load_eval_model,
)
from llm.eval.loglik import Request, loglikelihood, loglikelihood_rolling
from llm.eval.pll import pseudo_log_likelihood
from llm.eval.runner import evaluate_tasks, merge, shard_slices
from llm.generate import Sampling, generate, generate_batch
from llm.model.config import ModelConfig
from llm.model.encoders import START_ID, EncoderDecoder, EncoderLM, build_model
from llm.tokenizer.bpe import EOS_TOKEN, MASK_TOKEN, save_tokenizer, sentinel_token, train_bpe
from llm.train.checkpoint import save_checkpoint
from llm.train.config import TrainConfig
from llm.train.data import TokenShards
from llm.train.pretrain import evaluate_loss, pretraining, train, validation_loss
from ray_jobs import evaluate as job
from ray_jobs.entrypoint import JobError
from tests.llm.conftest import build_shard_folder
from tests.llm.eval.conftest import TEXT

SPECIALS = (EOS_TOKEN, MASK_TOKEN, *(sentinel_token(i) for i in range(8)))
PAIRS = [
    ("The king said that the queen would come.", "The king said that the queen come would."),
    ("Hello world, the sea is deep.", "Hello world, the sea are deep."),
    ("A man is sitting on a roof.", "A man are sitting on roof a."),
    ("Mercury is closest to the sun.", "Mercury closest is to the sun."),
    ("He is ripping tiles off the roof.", "He ripping is tiles off roof the."),
]
QUESTIONS = [
    ("The king said that the", ["queen would come", "sea is deep", "roof"], 0),
    ("Hello world, the world is", ["wide", "closest to the sun", "a man"], 0),
    ("Which planet is closest to the", ["sun", "castle", "house of the king"], 0),
    ("the sea is", ["deep", "wide", "Mercury"], 2),
]


@pytest.fixture(scope="module")
def tok() -> tokenizers.Tokenizer:
    return train_bpe([TEXT], vocab_size=420, special_tokens=SPECIALS)


def _model(arch: str, vocab: int, **overrides: Any) -> Any:
    torch.manual_seed(0)
    cfg = dict(arch=arch, vocab_size=vocab, block_size=32, n_layer=2, n_head=2, n_embd=32)
    return build_model(ModelConfig(**{**cfg, **overrides})).eval()


@pytest.fixture(scope="module")
def encoder(tok: tokenizers.Tokenizer) -> LlmforgeEncoder:
    return LlmforgeEncoder(_model("encoder", tok.get_vocab_size()), tok)


@pytest.fixture(scope="module")
def seq2seq(tok: tokenizers.Tokenizer) -> LlmforgeSeq2Seq:
    return LlmforgeSeq2Seq(_model("encoder_decoder", tok.get_vocab_size()), tok)


def _task(tmp_path: Path, name: str, rows: list[dict[str, Any]], **task: Any) -> Path:
    data = tmp_path / f"{name}.jsonl"
    data.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump({"task": name, "data": str(data), **task}))
    return path


@pytest.fixture
def pairs_task(tmp_path: Path) -> Path:
    """BLiMP's shape (llm/eval/tasks/blimp.yaml): empty context, the two sentences as choices."""
    rows = [{"sentence_good": g, "sentence_bad": b} for g, b in PAIRS]
    return _task(
        tmp_path,
        "pairs",
        rows,
        output_type="multiple_choice",
        doc_to_text="",
        doc_to_choice="{{ [sentence_good, sentence_bad] }}",
        doc_to_target=0,
        metrics=["acc"],
    )


@pytest.fixture
def quiz(tmp_path: Path) -> Path:
    rows = [{"q": q, "choices": c, "gold": g} for q, c, g in QUESTIONS]
    return _task(
        tmp_path,
        "quiz",
        rows,
        output_type="multiple_choice",
        doc_to_text="{{ q }}",
        doc_to_choice="choices",
        doc_to_target="{{ gold }}",
        metrics=["acc", "acc_norm"],
    )


@pytest.fixture
def gen_task(tmp_path: Path) -> Path:
    rows = [{"prompt": "The king said", "answer": "that"}, {"prompt": "Hello", "answer": "world"}]
    return _task(
        tmp_path,
        "gen",
        rows,
        output_type="generate_until",
        doc_to_text="{{ prompt }}",
        doc_to_target="answer",
        # sampled: a random model's greedy choice is often EOS at once, an empty completion
        generation={"until": ["."], "max_gen_toks": 6, "temperature": 1.0, "seed": 7},
        metrics=["exact_match"],
    )


# --- encoder: pseudo-log-likelihood ---------------------------------------------------------


@pytest.mark.parametrize("batch_size", [1, 7, 64])
def test_minimal_pairs_through_the_runner_are_scored_by_pll(
    encoder: LlmforgeEncoder, tok: tokenizers.Tokenizer, pairs_task: Path, batch_size: int
) -> None:
    out = evaluate_tasks(encoder, tasks=[pairs_task], log_samples=True, batch_size=batch_size)
    result = out["results"]["pairs"]
    assert result["scoring"] == "pll" and out["arch"] == "encoder"
    eos = tok.token_to_id(EOS_TOKEN)
    right = 0
    for (good, bad), sample in zip(PAIRS, result["samples"], strict=True):
        # an empty context is the prefix token (EOS here), visible and never masked; every
        # token of " " + sentence (the target delimiter, as lm-eval) is masked in turn
        direct = [
            pseudo_log_likelihood(
                encoder.core,
                [eos, *tok.encode(" " + s, add_special_tokens=False).ids],
                encoder.mask_id,
                skip={eos},
            )
            for s in (good, bad)
        ]
        assert sample["loglikelihoods"] == pytest.approx(direct, abs=1e-4)
        right += direct[0] > direct[1]
    assert result["metrics"]["acc"]["value"] == pytest.approx(right / len(PAIRS))


def test_the_built_in_blimp_task_scores_an_encoder_by_pll(
    encoder: LlmforgeEncoder, tok: tokenizers.Tokenizer, shared_data: Path
) -> None:
    task = "blimp_anaphor_gender_agreement"
    out = evaluate_tasks(encoder, tasks=[task], limit=4, log_samples=True, data_root=shared_data)
    result = out["results"][task]
    assert result["scoring"] == "pll" and result["n"] == 4
    eos = tok.token_to_id(EOS_TOKEN)
    for sample in result["samples"]:
        direct = [
            pseudo_log_likelihood(
                encoder.core, [eos, *tok.encode(" " + s).ids], encoder.mask_id, skip={eos}
            )
            for s in sample["choices"]
        ]
        assert sample["loglikelihoods"] == pytest.approx(direct, abs=1e-4)


@torch.no_grad()
def _pll_of_continuation(model: EncoderLM, ctx: list[int], cont: list[int], mask: int) -> float:
    """By hand: the continuation's tokens masked one at a time, the context always visible."""
    total = 0.0
    for j, token in enumerate(cont):
        ids = [*ctx, *cont]
        ids[len(ctx) + j] = mask
        logits = model(torch.tensor([ids]))[0][0, len(ctx) + j]
        total += float(torch.log_softmax(logits.double(), dim=-1)[token])
    return total


def test_choices_after_a_context_score_the_continuation_by_pll(
    encoder: LlmforgeEncoder, tok: tokenizers.Tokenizer, quiz: Path
) -> None:
    result = evaluate_tasks(encoder, tasks=[quiz], log_samples=True, batch_size=5)
    result = result["results"]["quiz"]
    assert result["scoring"] == "pll" and result["n"] == len(QUESTIONS)
    for (q, choices, _), sample in zip(QUESTIONS, result["samples"], strict=True):
        ctx = tok.encode(q).ids
        by_hand = [
            _pll_of_continuation(
                encoder.core, ctx, tok.encode(q + " " + c).ids[len(ctx) :], encoder.mask_id
            )
            for c in choices
        ]
        assert sample["loglikelihoods"] == pytest.approx(by_hand, abs=1e-4)


def test_encoder_shards_merge_and_rolling_loglik_runs(
    encoder: LlmforgeEncoder, pairs_task: Path
) -> None:
    whole = evaluate_tasks(encoder, tasks=[pairs_task])["results"]["pairs"]
    parts = [evaluate_tasks(encoder, tasks=[pairs_task], items=s) for s in shard_slices(5, 2)]
    merged = merge(parts)["results"]["pairs"]
    assert merged["scoring"] == "pll"
    assert merged["metrics"]["acc"]["value"] == pytest.approx(whole["metrics"]["acc"]["value"])
    # a text longer than the context is cut into windows, each token masked once
    [total] = loglikelihood_rolling(encoder, [TEXT[:400]])
    assert math.isfinite(total) and total < 0


def test_an_encoder_refuses_generation_before_running_anything(
    encoder: LlmforgeEncoder, quiz: Path, gen_task: Path
) -> None:
    with pytest.raises(GenerationUnsupportedError, match=r"encoder .*cannot generate.* gen"):
        evaluate_tasks(encoder, tasks=[quiz, gen_task])
    with pytest.raises(GenerationUnsupportedError, match="does not generate"):
        encoder.generate([[1, 2]], 3, Sampling(temperature=0))


def test_an_encoder_needs_the_mask_token(tok: tokenizers.Tokenizer) -> None:
    plain = train_bpe([TEXT], vocab_size=400)  # EOS only
    with pytest.raises(ValueError, match=r"no <\|mask\|>"):
        LlmforgeEncoder(_model("encoder", plain.get_vocab_size()), plain)


# --- encoder-decoder: seq2seq scoring and generation ----------------------------------------


def test_seq2seq_continuation_loglik_equals_the_decoders_logits(
    seq2seq: LlmforgeSeq2Seq, tok: tokenizers.Tokenizer
) -> None:
    requests = [Request(q, " " + c) for q, choices, _ in QUESTIONS for c in choices]
    requests.append(Request("", "The sea is deep."))  # empty context: the prefix token
    scores = loglikelihood(seq2seq, requests, batch_size=4)  # ragged batches
    model: EncoderDecoder = seq2seq.core
    for request, score in zip(requests, scores, strict=True):
        if request.context:
            ctx = tok.encode(request.context).ids
            cont = tok.encode(request.context + request.continuation).ids[len(ctx) :]
        else:
            ctx, cont = [tok.token_to_id(EOS_TOKEN)], tok.encode(request.continuation).ids
        with torch.no_grad():
            logits, _ = model(torch.tensor([ctx]), torch.tensor([[START_ID, *cont[:-1]]]))
        logprobs = torch.log_softmax(logits[0].double(), dim=-1)
        expected = sum(float(logprobs[i, t]) for i, t in enumerate(cont))
        assert score.logprob == pytest.approx(expected, abs=1e-4)
        assert score.tokens == len(cont)
        assert score.is_greedy == all(int(logprobs[i].argmax()) == t for i, t in enumerate(cont))


@pytest.mark.parametrize("temperature", [0.0, 0.9])
def test_seq2seq_generation_with_the_cache_equals_without(
    seq2seq: LlmforgeSeq2Seq, tok: tokenizers.Tokenizer, temperature: float
) -> None:
    prompts = [tok.encode(t).ids for t in ("The king said that", "Hello", "A man is sitting on")]
    opts = Sampling(temperature=temperature, top_k=20, seed=3)
    cached = generate_batch(seq2seq.core, prompts, 12, opts)
    uncached = generate_batch(seq2seq.core, prompts, 12, opts, use_cache=False)
    assert cached == uncached and all(len(row) == 12 for row in cached)
    alone = generate(seq2seq.core, prompts[1], 12, temperature=0.0)
    assert alone == generate(seq2seq.core, prompts[1], 12, temperature=0.0, use_cache=False)
    with pytest.raises(ValueError, match="block_size"):
        generate(seq2seq.core, prompts[0], 33, temperature=0.0)


def test_seq2seq_tasks_run_generation_and_loglik(
    seq2seq: LlmforgeSeq2Seq, tok: tokenizers.Tokenizer, quiz: Path, gen_task: Path
) -> None:
    out = evaluate_tasks(seq2seq, tasks=[quiz, gen_task], log_samples=True, batch_size=1)
    assert out["arch"] == "encoder_decoder"
    assert {r["scoring"] for r in out["results"].values()} == {"seq2seq"}
    assert out["results"]["quiz"]["n"] == len(QUESTIONS)
    eos = tok.token_to_id(EOS_TOKEN)
    for sample in out["results"]["gen"]["samples"]:
        ids = tok.encode(sample["context"]).ids
        new = generate(seq2seq.core, ids, 6, temperature=1.0, seed=7, eos_id=eos, use_cache=False)
        assert sample["completion"] == tok.decode(new).split(".")[0]
        assert sample["completion"]


# --- loading checkpoints of every arch ------------------------------------------------------


@pytest.mark.parametrize(
    ("arch", "wrapper"),
    [
        ("decoder", LlmforgeModel),
        ("encoder", LlmforgeEncoder),
        ("encoder_decoder", LlmforgeSeq2Seq),
    ],
)
def test_checkpoints_of_every_arch_load_as_their_eval_model(
    tmp_path: Path, tok: tokenizers.Tokenizer, arch: str, wrapper: type
) -> None:
    model = _model(arch, tok.get_vocab_size())
    folder = save_checkpoint(
        tmp_path / "step_00000001",
        model=model,
        config=model.config,
        optimizer=None,
        trainer_state={"step": 1},
    )
    save_tokenizer(tok, folder / "tokenizer.json")
    lm = load_eval_model(tmp_path)
    assert isinstance(lm, wrapper) and lm.arch == arch
    assert job.checkpoint_arch(str(folder)) == arch


# --- validation loss per arch and the job's pieces ------------------------------------------


@pytest.fixture(scope="module")
def shards(tmp_path_factory: pytest.TempPathFactory) -> Path:
    docs = [TEXT] * 12
    folder = tmp_path_factory.mktemp("arch-eval-shards")
    return build_shard_folder(
        folder, docs, vocab_size=420, val_fraction=0.3, special_tokens=SPECIALS
    )


def _checkpoint(folder: Path, model: Any, train_config: dict[str, Any] | None) -> Path:
    state = {"step": 1} if train_config is None else {"step": 1, "train_config": train_config}
    return save_checkpoint(
        folder, model=model, config=model.config, optimizer=None, trainer_state=state
    )


def test_decoder_val_loss_is_the_next_token_loss(shards: Path) -> None:
    vocab = TokenShards(shards, "val").vocab_size
    model = _model("decoder", vocab)
    got = validation_loss(model, shards, batch_size=4)
    expected = evaluate_loss(model, TokenShards(shards, "val"), batch_size=4, seq_len=32)
    assert got["objective"] == "causal_lm" and got["val_loss"] == expected["val_loss"]


@pytest.mark.parametrize(
    ("arch", "objective", "settings"),
    [
        ("encoder", "masked_lm", {"mask_prob": 0.3, "seed": 5}),
        ("encoder_decoder", "span_corruption", {"noise_density": 0.2, "mean_span": 2.0}),
    ],
)
def test_noised_val_loss_is_the_training_validation(
    shards: Path, arch: str, objective: str, settings: dict[str, Any]
) -> None:
    vocab = TokenShards(shards, "val").vocab_size
    model = _model(arch, vocab)
    got = validation_loss(model, shards, batch_size=4, max_batches=3, train_config=settings)
    assert got["objective"] == objective
    assert got["objective_settings"]["batches"] == 3
    assert settings.items() <= got["objective_settings"].items()
    # what the trainer's validation reports for the same settings and batches
    cfg = TrainConfig(batch_size=4, eval_batches=3, seq_len=32, **settings)
    task = pretraining(cfg, model.config, shards, verify=False)
    assert task.evaluate is not None
    assert got["val_loss"] == pytest.approx(task.evaluate(model)["val_loss"], rel=1e-6)
    assert got["val_ppl"] == pytest.approx(math.exp(got["val_loss"]))
    again = validation_loss(model, shards, batch_size=4, max_batches=3, train_config=settings)
    assert again["val_loss"] == got["val_loss"]  # the noise is fixed by the seed
    # without saved settings the defaults apply (mask_prob 0.15, seed 0), one pass by default
    default = validation_loss(model, shards, batch_size=4)
    assert default["objective_settings"]["seed"] == 0
    assert default["objective_settings"]["batches"] >= 3


@pytest.mark.parametrize("arch", ["decoder", "encoder", "encoder_decoder"])
def test_the_jobs_val_and_sample_fits_each_arch(shards: Path, tmp_path: Path, arch: str) -> None:
    vocab = TokenShards(shards, "val").vocab_size
    model = _model(arch, vocab)
    folder = _checkpoint(tmp_path / "ckpt", model, {"mask_prob": 0.2, "seed": 1})
    spec = EvaluateSpec(
        checkpoint=str(folder), data=str(shards), output=str(tmp_path / "out"),
        max_batches=2, max_new_tokens=5, temperature=0.0,
    )  # fmt: skip
    out = job.val_and_sample(spec, folder, shards)
    assert out["arch"] == arch and math.isfinite(out["val_loss"])
    assert out["objective"] == {"decoder": "causal_lm", "encoder": "masked_lm"}.get(
        arch, "span_corruption"
    )
    if arch == "encoder":
        assert out["sample"] is None and out["completion"] is None
        assert "does not generate" in out["sample_reason"]
        assert out["objective_settings"]["mask_prob"] == 0.2  # from the checkpoint
    else:
        tok = tokenizers.Tokenizer.from_file(str(shards / "tokenizer.json"))
        ids = tok.encode(spec.prompt, add_special_tokens=False).ids
        eos = tok.token_to_id(EOS_TOKEN)
        new = generate(model, ids, 5, temperature=0.0, eos_id=eos)
        assert out["completion"] == tok.decode(new) == out["sample"]["completion"]


@pytest.mark.parametrize("arch", ["encoder", "encoder_decoder"])
def test_the_job_reproduces_the_val_loss_training_reported(
    shards: Path, tmp_path: Path, arch: str
) -> None:
    vocab = TokenShards(shards, "val").vocab_size
    config = _model(arch, vocab).config
    cfg = TrainConfig(
        steps=4, batch_size=4, warmup_steps=1, log_every=2, eval_every=4, eval_batches=2,
        checkpoint_every=4, spike_factor=None, seed=3, mask_prob=0.25, noise_density=0.2,
    )  # fmt: skip
    trained = train(cfg, config, shards, tmp_path / "train")
    spec = EvaluateSpec(
        checkpoint=str(tmp_path / "train"), data=str(shards), output=str(tmp_path / "out"),
        batch_size=cfg.batch_size, max_batches=cfg.eval_batches,
    )  # fmt: skip
    checkpoint = Path(job.resolve_checkpoint(str(tmp_path / "train")))
    out = job.val_and_sample(spec, checkpoint, shards)
    assert out["val_loss"] == pytest.approx(trained["last"]["val_loss"], rel=1e-6)
    assert out["objective_settings"]["seed"] == 3


def test_a_generation_task_on_an_encoder_fails_the_job_before_ray(
    shards: Path, tmp_path: Path, gen_task: Path
) -> None:
    model = _model("encoder", TokenShards(shards, "val").vocab_size)
    folder = _checkpoint(tmp_path / "ckpt", model, None)
    spec = EvaluateSpec(
        checkpoint=str(folder), output=str(tmp_path / "out"), tasks=["blimp", str(gen_task)]
    )
    with pytest.raises(JobError, match=r"arch encoder.*cannot generate.*tasks gen"):
        job.run(spec)


@pytest.mark.parametrize(
    ("arch", "overrides"),
    [
        # BERT and BART: post-norm, an embedding norm, no final norm
        ("encoder", {"norm_placement": "post", "embed_norm": True, "final_norm": False}),
        ("encoder_decoder", {"norm_placement": "post", "embed_norm": True, "final_norm": False}),
    ],
)
def test_a_hugging_face_export_scores_like_the_model_it_came_from(
    tok: tokenizers.Tokenizer, pairs_task: Path, tmp_path: Path, arch: str, overrides: dict
) -> None:
    from llm.model.hf import export_hf

    model = _model(arch, tok.get_vocab_size(), bias=True, **overrides)
    save_tokenizer(tok, tmp_path / "tokenizer.json")
    folder = export_hf(
        model, tmp_path / "hf", tokenizer_file=tmp_path / "tokenizer.json",
        eos_id=tok.token_to_id(EOS_TOKEN),
    )  # fmt: skip
    loaded = load_eval_model(folder)
    assert isinstance(loaded, LlmforgeEncoder if arch == "encoder" else LlmforgeSeq2Seq)
    direct = evaluate_tasks(as_eval_model(model, tok), tasks=[pairs_task], log_samples=True)
    exported = evaluate_tasks(loaded, tasks=[pairs_task], log_samples=True)
    scores = [x for s in direct["results"]["pairs"]["samples"] for x in s["loglikelihoods"]]
    again = [x for s in exported["results"]["pairs"]["samples"] for x in s["loglikelihoods"]]
    assert again == pytest.approx(scores, abs=1e-4)
    assert exported["results"]["pairs"]["scoring"] == direct["results"]["pairs"]["scoring"]
