"""Job specs: one pydantic model per job kind.

Each spec is at once the REST body, the stored record and the entrypoint's input
(``python -m ray_jobs.<kind> --spec URI``). Unknown fields are rejected so that a typo is a 422
that names the field instead of a silently ignored option.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Literal

from pydantic import Field, field_validator, model_validator

from llm.tokenizer.bpe import BOS_TOKEN, BYTE_ALPHABET_SIZE, EOS_TOKEN, MASK_TOKEN, PAD_TOKEN
from ray_jobs.curate.spec import CurateSpec
from ray_jobs.spec_base import Spec


class JobKind(StrEnum):
    curate = "curate"
    tokenize = "tokenize"
    train = "train"
    evaluate = "evaluate"
    tune = "tune"
    finetune = "finetune"


# --- tokenize -----------------------------------------------------------------------------------


class TokenizeSpec(Spec):
    input: str = Field(description="a curate job's output folder (its data/ Parquet is read)")
    output: str
    vocab_size: int = Field(default=4096, ge=260, le=1_000_000)
    tokenizer: str | None = Field(default=None, description="an existing tokenizer.json to reuse")
    sample_docs: int = Field(default=20_000, gt=0, description="documents sampled for training")
    val_fraction: float = Field(default=0.05, gt=0, lt=1)
    seed: int = 0
    special_tokens: list[str] = Field(
        default_factory=lambda: [EOS_TOKEN],
        description=f"ids 0..n-1 in this order; {EOS_TOKEN} first, then e.g. "
        f"{PAD_TOKEN}, {BOS_TOKEN}, {MASK_TOKEN} as the model family needs",
    )
    pretokenizer: Literal["gpt2", "llama3"] = Field(
        default="gpt2", description="split regex applied before byte-level BPE"
    )
    workers: int | None = Field(
        default=None, gt=0, description="parallel encoding tasks (default: as many as CPUs)"
    )

    @model_validator(mode="after")
    def _special_tokens_fit(self) -> TokenizeSpec:
        if not self.special_tokens or self.special_tokens[0] != EOS_TOKEN:
            raise ValueError(f"special_tokens must start with {EOS_TOKEN} (documents end with it)")
        if len(set(self.special_tokens)) != len(self.special_tokens):
            raise ValueError(f"special_tokens has duplicates: {self.special_tokens}")
        minimum = BYTE_ALPHABET_SIZE + len(self.special_tokens)
        if self.tokenizer is None and self.vocab_size < minimum:
            raise ValueError(
                f"vocab_size {self.vocab_size} is too small: byte-level BPE needs at least "
                f"{minimum} (256 bytes + {len(self.special_tokens)} special tokens)"
            )
        return self


# --- train --------------------------------------------------------------------------------------


class ModelSpec(Spec):
    block_size: int = Field(default=128, gt=0)
    n_layer: int = Field(default=4, gt=0)
    n_head: int = Field(default=4, gt=0)
    n_embd: int = Field(default=128, gt=0)
    dropout: float = Field(default=0.0, ge=0, lt=1)
    bias: bool = False
    tie_embeddings: bool = True
    # the train job builds a decoder (llm.model.GPT), so arch and n_encoder_layer are not offered
    n_kv_head: int | None = Field(default=None, gt=0, description="None: one per query head")
    norm: Literal["layernorm", "rmsnorm"] = "layernorm"
    norm_eps: float = Field(default=1e-5, gt=0)
    norm_placement: Literal["pre", "post"] = "pre"
    qk_norm: bool = False
    activation: Literal["gelu", "swiglu", "relu2"] = "gelu"
    mlp_hidden: int | None = Field(default=None, gt=0, description="None: 4 * n_embd")
    position: Literal["learned", "rope", "alibi"] = "learned"
    rope_theta: float = Field(default=10000.0, gt=0)
    embd_dropout: float | None = Field(default=None, ge=0, lt=1)
    attn_dropout: float | None = Field(default=None, ge=0, lt=1)
    resid_dropout: float | None = Field(default=None, ge=0, lt=1)
    init: Literal["gpt2", "normal"] = "gpt2"
    init_std: float = Field(default=0.02, gt=0)

    @model_validator(mode="after")
    def _sizes_divide(self) -> ModelSpec:
        if self.n_embd % self.n_head:
            raise ValueError(f"n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head})")
        if self.n_kv_head is not None and self.n_head % self.n_kv_head:
            raise ValueError(
                f"n_head ({self.n_head}) must be divisible by n_kv_head ({self.n_kv_head})"
            )
        if self.position == "rope" and (self.n_embd // self.n_head) % 2:
            raise ValueError("position='rope' needs an even head size (n_embd / n_head)")
        return self


class TrainSpec(Spec):
    data: str = Field(description="a tokenize job's output folder (manifest.json and shards)")
    output: str
    model: ModelSpec = Field(default_factory=ModelSpec)
    steps: int = Field(default=300, gt=0)
    batch_size: int = Field(default=8, gt=0, description="sequences per worker per step")
    seq_len: int | None = Field(default=None, gt=0, description="defaults to model.block_size")
    lr: float = Field(default=3e-3, gt=0)
    min_lr: float = Field(default=3e-4, ge=0)
    warmup_steps: int = Field(default=30, ge=0)
    weight_decay: float = Field(default=0.1, ge=0)
    grad_clip: float = Field(default=1.0, ge=0)
    seed: int = 0
    workers: int = Field(default=2, gt=0)
    use_gpu: bool = False
    log_every: int = Field(default=10, gt=0)
    eval_every: int = Field(default=100, gt=0)
    eval_batches: int = Field(default=20, gt=0)
    checkpoint_every: int = Field(default=100, gt=0)
    keep_last: int | None = Field(
        default=3, ge=1, description="newest checkpoints kept (plus the best); null keeps all"
    )
    fsdp_checkpoint: Literal["sharded", "full"] = Field(
        default="sharded", description="FSDP: per-rank DCP shards, or one gathered file"
    )
    checkpoint_storage: str | None = Field(
        default=None,
        description="s3://bucket/prefix (or a folder all nodes see) where Ray Train keeps "
        "checkpoints, so a worker group restarted on other nodes resumes from them",
    )
    # Worker-group restarts from the last checkpoint; Ray Train can also lose a healthy group
    # under heavy load (its placement-group cleaner misreads a slow state API), so allow a few.
    max_failures: int = Field(default=3, ge=0)
    optimizer: Literal["adamw", "adafactor", "sgd"] = "adamw"
    schedule: Literal["cosine", "linear", "wsd"] = "cosine"
    decay_fraction: float = Field(default=0.2, ge=0, le=1, description="wsd: share decaying")
    decay_embeddings: bool = True
    beta1: float = Field(default=0.9, ge=0, lt=1)
    beta2: float = Field(default=0.95, ge=0, lt=1)
    eps: float = Field(default=1e-8, gt=0)
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    global_batch_tokens: int | None = Field(default=None, gt=0)
    parallelism: Literal["ddp", "fsdp"] = "ddp"
    activation_checkpointing: bool = False
    compile: bool = False
    spike_factor: float | None = Field(default=2.0, gt=1)
    max_consecutive_spikes: int = Field(default=3, ge=1)
    peak_flops: float | None = Field(default=None, gt=0, description="per device, for MFU")
    tensorboard: bool = True

    @field_validator("checkpoint_storage")
    @classmethod
    def _storage_scheme(cls, value: str | None) -> str | None:
        if value is not None and "://" in value and not value.startswith(("s3://", "file://")):
            raise ValueError(f"must be s3://bucket/prefix, file:// or a path, got {value!r}")
        return value

    @model_validator(mode="after")
    def _seq_fits_model(self) -> TrainSpec:
        if self.seq_len is not None and self.seq_len > self.model.block_size:
            raise ValueError(
                f"seq_len ({self.seq_len}) must not exceed "
                f"model.block_size ({self.model.block_size})"
            )
        return self


# --- evaluate -----------------------------------------------------------------------------------


class EvaluateSpec(Spec):
    """Benchmark tasks (llm.eval: log-likelihood multiple choice, perplexity, generation) spread
    over Ray workers, and/or validation loss plus a sampled completion on token shards."""

    checkpoint: str = Field(
        description="an llmforge checkpoint, a train/finetune output folder (its latest "
        "checkpoint) or a Hugging Face model folder"
    )
    data: str | None = Field(
        default=None, description="token shard folder whose val split is scored (loss, ppl)"
    )
    output: str
    tokenizer: str | None = Field(
        default=None,
        description="tokenizer.json or a token-shard folder; default: data's, else one beside "
        "the checkpoint",
    )
    tasks: list[str] = Field(
        default_factory=list,
        description="built-in task names (hellaswag, arc_easy, arc_challenge, blimp, "
        "wikitext2, gutenberg_nltk, alpaca) or task YAML files",
    )
    num_fewshot: int | None = Field(default=None, ge=0, description="None: each task's own")
    limit: int | None = Field(default=None, gt=0, description="first N items of each task")
    workers: int = Field(default=2, gt=0, description="Ray workers the task items spread over")
    log_samples: bool = Field(default=False, description="per-item records in eval.json")
    data_root: str | None = Field(
        default=None, description="where built-in tasks find their data (LLMFORGE_DATA_ROOT)"
    )
    batch_size: int = Field(default=8, gt=0)
    max_batches: int | None = Field(default=None, gt=0, description="cap on val batches")
    prompt: str = "The "
    max_new_tokens: int = Field(default=48, ge=0, le=4096)
    temperature: float = Field(default=0.8, ge=0)
    top_k: int | None = Field(default=40, gt=0)
    seed: int = 0

    @model_validator(mode="after")
    def _something_to_do(self) -> EvaluateSpec:
        if self.data is None and not self.tasks:
            raise ValueError("give tasks to run, or data (token shards) to score, or both")
        return self


# --- tune ---------------------------------------------------------------------------------------

PositiveInt = Annotated[int, Field(gt=0)]


class SearchSpace(Spec):
    """What each trial samples: (low, high) bounds for continuous values, lists for choices.

    beta2 applies to AdamW only (Adafactor's decay follows its own schedule, SGD has none).
    """

    lr: tuple[float, float] = Field(default=(3e-4, 1e-2), description="log-uniform bounds")
    batch_size: list[PositiveInt] = Field(default=[4, 8], min_length=1)
    weight_decay: tuple[float, float] = Field(default=(0.0, 0.2), description="uniform bounds")
    dropout: tuple[float, float] = Field(default=(0.0, 0.2), description="uniform bounds")
    warmup_steps: list[Annotated[int, Field(ge=0)]] = Field(default=[0, 10, 30], min_length=1)
    beta2: list[Annotated[float, Field(gt=0, lt=1)]] = Field(default=[0.95, 0.99], min_length=1)
    optimizer: list[Literal["adamw", "adafactor", "sgd"]] = Field(
        default=["adamw"], min_length=1, description="optimizers to choose among"
    )

    @model_validator(mode="after")
    def _bounds_ordered(self) -> SearchSpace:
        for name in ("lr", "weight_decay", "dropout"):
            low, high = getattr(self, name)
            if not 0 <= low <= high:
                raise ValueError(f"{name}: need 0 <= low <= high, got ({low}, {high})")
        if self.lr[0] <= 0:
            raise ValueError(f"lr: a log-uniform range needs low > 0, got {self.lr[0]}")
        if self.dropout[1] >= 1:
            raise ValueError(f"dropout: high must be < 1, got {self.dropout[1]}")
        return self


class TuneSpec(Spec):
    """Ray Tune with ASHA over ``space``: short training runs, ranked by val_loss (lower wins)."""

    data: str = Field(description="a tokenize job's output folder (manifest.json and shards)")
    output: str
    model: ModelSpec = Field(default_factory=ModelSpec)
    space: SearchSpace = Field(default_factory=SearchSpace)
    num_samples: int = Field(default=8, gt=0, description="trials drawn from space")
    max_steps: int = Field(default=200, gt=0, description="steps of a trial that is not stopped")
    grace_period: int = Field(default=20, gt=0, description="steps before ASHA may stop a trial")
    reduction_factor: int = Field(default=2, ge=2, description="ASHA keeps 1/this per rung")
    eval_every: int = Field(default=10, gt=0, description="steps between val_loss reports")
    eval_batches: int = Field(default=8, gt=0)
    seq_len: int | None = Field(default=None, gt=0, description="defaults to model.block_size")
    seed: int = Field(default=0, description="model init and data order, the same in every trial")
    cpus_per_trial: float = Field(default=1, gt=0)
    max_concurrent_trials: int | None = Field(default=None, gt=0)

    @model_validator(mode="after")
    def _fits(self) -> TuneSpec:
        if self.seq_len is not None and self.seq_len > self.model.block_size:
            raise ValueError(
                f"seq_len ({self.seq_len}) must not exceed "
                f"model.block_size ({self.model.block_size})"
            )
        if self.grace_period > self.max_steps:
            raise ValueError(
                f"grace_period ({self.grace_period}) must not exceed max_steps ({self.max_steps})"
            )
        return self


# --- finetune -----------------------------------------------------------------------------------


class FinetuneSpec(Spec):
    """Supervised fine-tuning (llm.finetune) of a checkpoint on instruction or chat records."""

    checkpoint: str = Field(
        description="a checkpoint folder, or a train or finetune job's output (its latest one)"
    )
    data: str = Field(description="instruction records: a JSON array or a JSONL file")
    output: str
    tokenizer: str | None = Field(
        default=None,
        description="the token-shard folder the checkpoint was trained on (its manifest names "
        "the tokenizer) or a tokenizer.json; default: a tokenizer.json beside the checkpoint, "
        "as a finetune job's output has",
    )
    format: Literal["auto", "instruction", "chat"] = Field(
        default="auto", description="auto: a list or a record with messages is chat"
    )
    template: str = Field(
        default="alpaca",
        max_length=10_000,
        description="'alpaca', or a Jinja2 or str.format template of the prompt from "
        "instruction and input",
    )
    chat_template: str = Field(
        default="alpaca",
        max_length=10_000,
        description="'alpaca', or a template of one system or user message from role and content",
    )
    fields: dict[str, str] = Field(
        default_factory=dict,
        description="canonical field -> the file's key, e.g. {'input': 'context', 'output': "
        "'response'}; canonical: instruction, input, output, messages, role, content",
    )
    train_on_prompt: bool = Field(default=False, description="also learn the prompt tokens")
    max_samples: int | None = Field(default=None, gt=0, description="read only the first N")
    val_fraction: float = Field(default=0.05, ge=0, lt=1)
    steps: int | None = Field(default=None, gt=0, description="optimizer steps (or give epochs)")
    epochs: int | None = Field(default=None, gt=0, description="default 1 when steps is unset")
    batch_size: int = Field(default=8, gt=0, description="examples per worker per step")
    lr: float = Field(default=1e-4, gt=0)
    min_lr: float = Field(default=1e-5, ge=0)
    warmup_steps: int = Field(default=10, ge=0)
    schedule: Literal["cosine", "linear", "wsd"] = "cosine"
    weight_decay: float = Field(default=0.0, ge=0)
    grad_clip: float = Field(default=1.0, ge=0)
    dropout: float | None = Field(default=None, ge=0, lt=1, description="None: the checkpoint's")
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    workers: int = Field(default=2, gt=0)
    use_gpu: bool = False
    log_every: int = Field(default=10, gt=0)
    eval_every: int = Field(default=50, gt=0)
    checkpoint_every: int = Field(default=100, gt=0)
    keep_last: int | None = Field(default=3, ge=1, description="plus the best; null keeps all")
    max_failures: int = Field(default=3, ge=0)
    seed: int = Field(default=0, description="the train/val split, data order and dropout")
    samples: int = Field(default=4, ge=0, le=64, description="held-out prompts to complete")
    max_new_tokens: int = Field(default=64, gt=0, le=4096)

    @model_validator(mode="after")
    def _consistent(self) -> FinetuneSpec:
        # imported here: only this spec needs the template compiler
        from llm.finetune.records import field_map
        from llm.finetune.templates import chat_template, instruction_template

        if self.steps is not None and self.epochs is not None:
            raise ValueError("give steps or epochs, not both")
        if self.min_lr > self.lr:
            raise ValueError(f"min_lr ({self.min_lr}) must not exceed lr ({self.lr})")
        try:
            field_map(self.fields)
        except ValueError as e:
            raise ValueError(f"fields: {e}") from e
        # parse only: a trial render could take the API any time or memory; the job does it
        try:
            instruction_template(self.template, trial_render=False)
        except ValueError as e:
            raise ValueError(f"template: {e}") from e
        try:
            chat_template(self.chat_template, trial_render=False)
        except ValueError as e:
            raise ValueError(f"chat_template: {e}") from e
        return self


SPEC_TYPES: dict[JobKind, type[Spec]] = {
    JobKind.curate: CurateSpec,
    JobKind.tokenize: TokenizeSpec,
    JobKind.train: TrainSpec,
    JobKind.evaluate: EvaluateSpec,
    JobKind.tune: TuneSpec,
    JobKind.finetune: FinetuneSpec,
}
