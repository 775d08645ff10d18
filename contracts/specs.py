"""Job specs: one pydantic model per job kind.

Each spec is at once the REST body, the stored record and the entrypoint's input
(``python -m <entry module> --spec URI``, see ``contracts.jobs``). Fields that name files or
folders are ``Uri``: the control plane checks every one of them before a job is accepted.
Unknown fields are rejected so that a typo is a 422
that names the field instead of a silently ignored option.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Annotated, Any, ClassVar, Literal

from pydantic import Field, field_validator, model_validator

from contracts.classification import SFT_ONLY, ClassificationSpec
from contracts.curate import CurateSpec
from contracts.judges import JudgeSpec, check_judge_names
from contracts.spec_base import OutputUri, Spec, Uri, UriOrName, looks_like_path
from llm.finetune.config import LORA_TARGETS, DPOConfig, finetune_config
from llm.model.config import ModelConfig
from llm.model.sizing import flops_per_token
from llm.tokenizer.special import BOS_TOKEN, BYTE_ALPHABET_SIZE, EOS_TOKEN, MASK_TOKEN, PAD_TOKEN
from llm.train.config import OBJECTIVES, TrainConfig
from llm.train.mixture import MixtureError, MixturePlan, plan_mixture, source_windows, window_length

# --- tokenize -----------------------------------------------------------------------------------


SourceName = Annotated[str, Field(min_length=1, max_length=100, pattern=r"^[\w][\w.-]*$")]


class TokenizeSpec(Spec):
    # required unless inputs is given (a missing corpus is a 422 naming input)
    input: Uri | None = Field(
        description="a curate job's output folder (its data/ Parquet is read); each document "
        "keeps its source tag (the curated 'source' column) in the shards",
    )
    inputs: dict[SourceName, Uri] | None = Field(
        default=None,
        description="several curate outputs by source name, e.g. {'web': ..., 'books': ...}, "
        "instead of input: one tokenizer for all, each shard tagged with its input's name",
    )
    output: OutputUri
    vocab_size: int = Field(default=4096, ge=260, le=1_000_000)
    tokenizer: Uri | None = Field(default=None, description="an existing tokenizer.json to reuse")
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

    @model_validator(mode="before")
    @classmethod
    def _input_or_inputs(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("inputs") is not None:
            return {"input": None, **data}
        return data

    @model_validator(mode="after")
    def _special_tokens_fit(self) -> TokenizeSpec:
        if (self.input is None) == (self.inputs is None) or self.inputs == {}:
            raise ValueError("give input (one curated corpus) or inputs (several, by name)")
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


class DebugOptions(Spec):
    """For testing fault tolerance only: make a run fail, or hold still, on purpose, once."""

    fail_at_step: int | None = Field(
        default=None, gt=0, description="rank 0 raises once, at the first log step >= this"
    )
    wipe_local_checkpoints: bool = Field(
        default=False,
        description="before failing, delete this node's scratch copies (checkpoint staging and "
        "downloads, the token-shard cache), as a worker group restarted on a node with an empty "
        "disk would find it; the checkpoints at the output stay",
    )
    pause_at_step: int | None = Field(
        default=None,
        gt=0,
        description="rank 0 holds still once, at the first log step >= this, for pause_s "
        "seconds, after leaving injected_pause.json at the output: a test kills a node or a "
        "worker while the run is surely mid-way, then lets the restarted group finish",
    )
    pause_s: float = Field(
        default=120.0, gt=0, le=3600, description="how long the pause_at_step pause lasts"
    )


ARCHS = ("decoder", "encoder", "encoder_decoder")
PLACEMENT_DESCRIPTION = (
    "how Ray Train places the workers (ScalingConfig.placement_strategy): PACK fills as few "
    "nodes as possible, SPREAD spreads them as evenly as it can, STRICT_SPREAD puts each worker "
    "on a node of its own (or does not start)"
)


def _check_model_fits(
    model: ModelConfig, seq_len: int | None, archs: tuple[str, ...] = ("decoder",)
) -> None:
    # the train job builds any architecture (llm.train.pretrain picks the objective by it);
    # tune trials train decoders only
    if model.arch not in archs:
        raise ValueError(f"model.arch must be one of {list(archs)} here, got {model.arch!r}")
    if seq_len is not None and seq_len > model.block_size:
        raise ValueError(
            f"seq_len ({seq_len}) must not exceed model.block_size ({model.block_size})"
        )


# the noise settings of each objective that has any, and their defaults
_NOISE = {"masked_lm": ("mask_prob",), "span_corruption": ("noise_density", "mean_span")}
_TRAIN_DEFAULTS = TrainConfig()


def _check_objective_fits(train: TrainConfig, arch: str) -> None:
    """The objective is the architecture's: a named one must be it, and a noise setting of
    another objective (changed from its default) would be silently unused, so it is refused."""
    own = OBJECTIVES[arch]
    if train.objective is not None and train.objective != own:
        raise ValueError(
            f"objective {train.objective!r} does not fit model.arch {arch!r}, which trains on "
            f"{own!r} (objective by arch: {OBJECTIVES})"
        )
    for objective, names in _NOISE.items():
        for name in names:
            if objective != own and getattr(train, name) != getattr(_TRAIN_DEFAULTS, name):
                raise ValueError(
                    f"{name} sets the {objective} objective's noise, but model.arch {arch!r} "
                    f"trains on {own!r}: drop {name} or set model.arch to the one training on "
                    f"{objective}"
                )


Share = Annotated[float, Field(ge=0, allow_inf_nan=False)]


class MixtureSpec(Spec):
    """How a train job mixes the sources of its token shards (``llm.train.mixture``): one of
    weights, temperature and epochs, optionally capped by max_epochs."""

    weights: dict[SourceName, Share] | None = Field(
        default=None, description="source -> share of the training tokens; the shares sum to 1"
    )
    temperature: float | None = Field(
        default=None,
        gt=0,
        allow_inf_nan=False,
        description="over every source: share proportional to its tokens^(1/temperature)",
    )
    epochs: dict[SourceName, Share] | None = Field(
        default=None,
        description="source -> passes over it: share proportional to epochs x its tokens",
    )
    max_epochs: float | None = Field(
        default=None,
        gt=0,
        allow_inf_nan=False,
        description="no source is read more often over the run: a source that would be is "
        "held at this many epochs and its excess share goes to the others (an error when all "
        "of them at the cap cannot fill the run)",
    )

    @field_validator("weights")
    @classmethod
    def _shares_sum_to_one(cls, weights: dict[str, float] | None) -> dict[str, float] | None:
        if weights is not None and abs(sum(weights.values()) - 1) > 1e-6:
            raise ValueError(f"the weights must sum to 1, got {sum(weights.values()):.6g}")
        return weights

    @field_validator("epochs")
    @classmethod
    def _some_epochs(cls, epochs: dict[str, float] | None) -> dict[str, float] | None:
        if epochs is not None and not any(epochs.values()):
            raise ValueError("give at least one source a positive number of epochs")
        return epochs

    @model_validator(mode="after")
    def _one_way(self) -> MixtureSpec:
        given = [n for n in ("weights", "temperature", "epochs") if getattr(self, n) is not None]
        if len(given) != 1:
            raise ValueError(
                f"give one of weights, temperature and epochs, not {' and '.join(given) or 'none'}"
            )
        return self


class TrainSpec(Spec):
    """Pretraining under Ray Train. The training settings are ``llm.train.config.TrainConfig``'s
    fields, given at the top level; ``model`` is ``llm.model.ModelConfig`` (vocab_size defaults
    to the tokenizer's)."""

    flat_sections: ClassVar[tuple[str, ...]] = ("train",)

    data: Uri = Field(description="a tokenize job's output folder (manifest.json and shards)")
    output: OutputUri
    model: ModelConfig = Field(default_factory=ModelConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    workers: int = Field(default=2, gt=0)
    use_gpu: bool = False
    placement_strategy: Literal["PACK", "SPREAD", "STRICT_SPREAD"] = Field(
        default="PACK", description=PLACEMENT_DESCRIPTION
    )
    # Worker-group restarts from the last checkpoint; Ray Train can also lose a healthy group
    # under heavy load (its placement-group cleaner misreads a slow state API), so allow a few.
    max_failures: int = Field(default=3, ge=0)
    debug: DebugOptions | None = Field(default=None, description="for testing fault tolerance")
    tokens: int | None = Field(
        default=None,
        gt=0,
        description="a token budget instead of steps: steps = ceil(tokens / tokens per "
        "optimizer step), where a step is global_batch_tokens, else batch_size x seq_len x "
        "workers",
    )
    flops: float | None = Field(
        default=None,
        gt=0,
        allow_inf_nan=False,
        description="a compute budget instead of steps: tokens = flops / the model's training "
        "FLOPs per token (6 x non-embedding parameters + attention; needs model.vocab_size)",
    )
    mixture: MixtureSpec | None = Field(
        default=None, description="mix the data's sources by weight (default: as they come)"
    )

    @model_validator(mode="before")
    @classmethod
    def _no_checkpoint_storage(cls, data: Any) -> Any:
        # removed rather than ignored: a spec that asks for it expects checkpoints elsewhere
        if isinstance(data, dict) and "checkpoint_storage" in data:
            raise ValueError(
                "checkpoint_storage was removed: checkpoints always live at "
                "<output>/checkpoints; give output as s3://bucket/prefix to keep them on "
                "object storage"
            )
        if isinstance(data, dict):
            return cls._one_length(data)
        return data

    @classmethod
    def _one_length(cls, data: dict[str, Any]) -> dict[str, Any]:
        """Steps, tokens or flops, one of them. A stored spec holds a budget and the steps it
        came to: that pair is accepted when the steps are the budget's."""
        # the base's wrap validator has already gathered the training fields into "train"
        section = data.get("train")
        steps = data.get("steps", section.get("steps") if isinstance(section, dict) else None)
        given = [n for n, v in (("tokens", data.get("tokens")), ("flops", data.get("flops"))) if v]
        if len(given) > 1 or (given and steps is not None and steps != cls._steps_without(data)):
            names = (["steps"] if steps is not None else []) + given
            raise ValueError(
                f"give one of steps, tokens and flops (the length of the run), not "
                f"{' and '.join(names)}"
            )
        return data

    @classmethod
    def _steps_without(cls, data: dict[str, Any]) -> int | None:
        """The steps the spec's budget comes to, were its steps not given."""
        section = {k: v for k, v in (data.get("train") or {}).items() if k != "steps"}
        rest = {k: v for k, v in data.items() if k not in ("steps", "train")}
        try:
            return cls.model_validate({**rest, **section}).train.steps
        except ValueError:
            return None

    @model_validator(mode="after")
    def _seq_fits_model(self) -> TrainSpec:
        _check_model_fits(self.model, self.train.seq_len, ARCHS)
        _check_objective_fits(self.train, self.model.arch)
        if self.tokens is not None or self.flops is not None:
            self.train = dataclasses.replace(self.train, steps=self._budget_steps())
        return self

    @property
    def tokens_per_step(self) -> int:
        """Tokens one optimizer step trains on (all ranks, all micro-steps)."""
        if self.train.global_batch_tokens is not None:
            return self.train.global_batch_tokens
        seq_len = self.train.seq_len or self.model.block_size
        return self.train.batch_size * seq_len * self.workers

    def _budget_steps(self) -> int:
        per_step = self.tokens_per_step
        if self.flops is not None:
            if self.model.vocab_size is None:
                raise ValueError(
                    "flops: the FLOPs per token depend on the vocabulary: give "
                    "model.vocab_size (the tokenizer's), or give tokens instead"
                )
            per_token = flops_per_token(self.model, self.train.seq_len)
            tokens = int(self.flops // per_token)
            what = f"flops ({self.flops:.3g}) buys {tokens} tokens ({per_token:.4g} FLOPs each)"
        else:
            assert self.tokens is not None
            tokens, what = self.tokens, f"tokens ({self.tokens})"
        if tokens < per_step:
            raise ValueError(
                f"{what}, less than one optimizer step's {per_step} tokens "
                f"({self._step_shape()}): give a larger budget or a smaller batch"
            )
        return math.ceil(tokens / per_step)

    def mixture_plan(self, manifest: Mapping[str, Any]) -> MixturePlan | None:
        """The shares this run draws from the sources of the token shards whose manifest is
        given; MixtureError naming the field in ``mixture`` when they do not fit the data."""
        if self.mixture is None:
            return None
        seq_len = self.train.seq_len or self.model.block_size
        return plan_mixture(
            source_windows(manifest, "train", window_length(self.model.arch, seq_len)),
            run_windows=self.train.steps * self.tokens_per_step // seq_len,
            **self.mixture.model_dump(),
        )

    @classmethod
    def input_errors(cls, spec: Mapping[str, Any]) -> list[tuple[tuple[str | int, ...], str]]:
        """A mixture naming a source the data lacks, or one the repetition cap cannot fill,
        read from the data's manifest before the job runs. Data not there yet (a pipeline's
        placeholder, a missing folder) is the job's to report."""
        from llm.tokenizer.shards import read_manifest

        data = spec.get("data")
        if not spec.get("mixture") or not isinstance(data, str) or "${" in data:
            return []
        try:
            manifest = read_manifest(data, verify=False)
        except (OSError, ValueError):
            return []
        try:
            cls.model_validate(spec).mixture_plan(manifest)
        except MixtureError as e:
            return [(("mixture", *e.loc), str(e))]
        return []

    def _step_shape(self) -> str:
        if self.train.global_batch_tokens is not None:
            return "global_batch_tokens"
        seq_len = self.train.seq_len or self.model.block_size
        return f"batch_size {self.train.batch_size} x seq_len {seq_len} x workers {self.workers}"


# --- evaluate -----------------------------------------------------------------------------------


class EvaluateSpec(Spec):
    """Benchmark tasks (llm.eval: log-likelihood multiple choice, perplexity, generation) spread
    over Ray workers, and/or validation loss plus a sampled completion on token shards.

    Any architecture: a decoder is scored by log-likelihood, an encoder by masked-LM
    pseudo-log-likelihood (no generation: no sample, generate_until tasks fail the job before
    it runs them), an encoder-decoder by the decoder's log-likelihood given the encoded
    context; each task's result names its ``scoring``."""

    checkpoint: Uri = Field(
        description="an llmforge checkpoint of any arch (decoder, encoder, encoder_decoder), a "
        "train/finetune output folder (its latest checkpoint) or a Hugging Face model folder"
    )
    data: Uri | None = Field(
        default=None,
        description="token shard folder whose val split is scored (loss, ppl) on the model's "
        "own objective: next-token, masked LM or span corruption (the checkpoint's settings, "
        "a fixed seed)",
    )
    output: OutputUri
    tokenizer: Uri | None = Field(
        default=None,
        description="tokenizer.json or a token-shard folder; default: data's, else one beside "
        "the checkpoint",
    )
    tasks: list[UriOrName] = Field(
        default_factory=list,
        description="built-in task names (hellaswag, arc_easy, arc_challenge, blimp, "
        "blimp_two_prefix, wikitext2, gutenberg_nltk, alpaca, lambada_austen, arc_easy_mmlu, "
        "arc_easy_gen) or task YAML files",
    )
    num_fewshot: int | None = Field(default=None, ge=0, description="None: each task's own")
    limit: int | None = Field(default=None, gt=0, description="first N items of each task")
    workers: int = Field(default=2, gt=0, description="Ray workers the task items spread over")
    log_samples: bool = Field(default=False, description="per-item records in eval.json")
    data_root: Uri | None = Field(
        default=None, description="where built-in tasks find their data (LLMFORGE_DATA_ROOT)"
    )
    batch_size: int = Field(
        default=8, gt=0, description="rows per forward pass (an encoder's: masked copies)"
    )
    max_batches: int | None = Field(
        default=None,
        gt=0,
        description="cap on val batches (default: every val window; one shuffled pass of them "
        "for the noised objectives)",
    )
    prompt: str = "The "
    max_new_tokens: int = Field(default=48, ge=0, le=4096)
    temperature: float = Field(default=0.8, ge=0)
    top_k: int | None = Field(default=40, gt=0)
    seed: int = 0
    judges: list[JudgeSpec] = Field(
        default_factory=list,
        max_length=8,
        description="models that score each generate_until task's completions "
        "(llm.eval.judge): the metric judge_<name>",
    )

    @classmethod
    def indirect_reads(cls, spec: Mapping[str, Any]) -> list[tuple[tuple[str | int, ...], str]]:
        """The data files the listed task files read (their ``data`` and ``fewshot_data``),
        resolved against the spec's data root, else the deployment's ($LLMFORGE_DATA_ROOT): a
        task file in a team's area must not point at what the team may not read. A task file
        not readable yet (a placeholder, a missing file) is skipped here; the job checks again
        when it has read it. Built-in tasks read under the data root, itself checked."""
        from llm.eval.data import data_files
        from llm.eval.task_config import TaskError, TaskGroup, parse_file

        root = spec.get("data_root")
        if isinstance(root, str) and "${" in root:
            return []
        found: list[tuple[tuple[str | int, ...], str]] = []
        for i, task in enumerate(spec.get("tasks") or []):
            if not isinstance(task, str) or "${" in task or not looks_like_path(task):
                continue
            try:
                parsed = parse_file(task)
            except TaskError:
                continue
            configs = parsed.tasks if isinstance(parsed, TaskGroup) else (parsed,)
            for cfg in configs:
                try:
                    files = data_files(
                        cfg.data, cfg.fewshot_data, task_file=cfg.source, data_root=root
                    )
                except FileNotFoundError:
                    continue  # a relative path and no data root: the job says so
                found += [(("tasks", i, cfg.task, name), file) for name, file in files]
        return found

    @model_validator(mode="after")
    def _something_to_do(self) -> EvaluateSpec:
        if self.data is None and not self.tasks:
            raise ValueError("give tasks to run, or data (token shards) to score, or both")
        if self.judges and not self.tasks:
            raise ValueError("judges score the completions of generate_until tasks: give tasks")
        check_judge_names(self.judges)
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
    """Ray Tune with ASHA over ``space``: short training runs, ranked by val_loss (lower wins).
    Each trial is a Ray Train run of ``workers`` workers (DDP), as a train job is; the best
    trial's final checkpoint is registered as a model."""

    data: Uri = Field(description="a tokenize job's output folder (manifest.json and shards)")
    output: OutputUri
    model: ModelConfig = Field(default_factory=ModelConfig)
    space: SearchSpace = Field(default_factory=SearchSpace)
    num_samples: int = Field(default=8, gt=0, description="trials drawn from space")
    max_steps: int = Field(default=200, gt=0, description="steps of a trial that is not stopped")
    grace_period: int = Field(default=20, gt=0, description="steps before ASHA may stop a trial")
    reduction_factor: int = Field(default=2, ge=2, description="ASHA keeps 1/this per rung")
    eval_every: int = Field(default=10, gt=0, description="steps between val_loss reports")
    eval_batches: int = Field(default=8, gt=0)
    seq_len: int | None = Field(default=None, gt=0, description="defaults to model.block_size")
    seed: int = Field(default=0, description="model init and data order, the same in every trial")
    workers: int = Field(default=1, gt=0, description="Ray Train workers (DDP) of each trial")
    use_gpu: bool = Field(default=False, description="one GPU per trial worker")
    precision: Literal["fp32", "bf16", "fp16"] = Field(
        default="fp32", description="every trial's autocast dtype; fp16 needs use_gpu"
    )
    cpus_per_worker: float = Field(default=1, gt=0, description="CPUs each trial worker reserves")
    max_concurrent_trials: int | None = Field(
        default=None,
        gt=0,
        description="default: as many trials as the cluster's CPUs (and GPUs) hold at once, "
        "each taking workers x (cpus_per_worker, a GPU with use_gpu)",
    )

    @model_validator(mode="before")
    @classmethod
    def _no_cpus_per_trial(cls, data: Any) -> Any:
        # removed rather than ignored: a trial is now a group of workers, sized per worker
        if isinstance(data, dict) and "cpus_per_trial" in data:
            raise ValueError(
                "cpus_per_trial was replaced by cpus_per_worker: each trial runs workers Ray "
                "Train workers, and reserves workers x cpus_per_worker CPUs"
            )
        return data

    @model_validator(mode="after")
    def _fits(self) -> TuneSpec:
        _check_model_fits(self.model, self.seq_len)
        if self.grace_period > self.max_steps:
            raise ValueError(
                f"grace_period ({self.grace_period}) must not exceed max_steps ({self.max_steps})"
            )
        if self.precision == "fp16" and not self.use_gpu:
            raise ValueError(
                "precision 'fp16' needs use_gpu: true (fp16 loss scaling runs on CUDA GPUs "
                "only); use 'bf16' or 'fp32' on CPUs"
            )
        return self


# --- finetune -----------------------------------------------------------------------------------

_SFT = finetune_config()
_DPO = DPOConfig()


class DPOSection(Spec):
    """Direct Preference Optimization's settings (llm.finetune.dpo), for method "dpo"."""

    beta: float = Field(
        default=_DPO.beta, gt=0, description="the implicit KL penalty: lower moves further"
    )
    label_smoothing: float = Field(
        default=_DPO.label_smoothing,
        ge=0,
        lt=0.5,
        description="cDPO: the assumed probability that a preference is flipped",
    )
    reference_free: bool = Field(
        default=_DPO.reference_free,
        description="compare with a uniform reference instead of the starting checkpoint",
    )


ModuleName = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z_]\w*$")]


class LoraSpec(Spec):
    """LoRA's adapters (llm.model.lora): low-rank updates of the frozen base's linear layers."""

    r: int = Field(default=8, gt=0, le=4096, description="the rank of each adapter")
    alpha: float = Field(default=16.0, gt=0, description="updates are scaled by alpha / r")
    dropout: float = Field(default=0.0, ge=0, lt=1, description="on the adapters' input")
    target_modules: list[ModuleName] = Field(
        default=list(LORA_TARGETS),
        min_length=1,
        description="last names of the blocks' linear layers to adapt: qkv (attention's input), "
        "proj (attention's and the MLP's output), fc (the MLP's input); checked against the "
        "model when the job starts",
    )


class FinetuneSpec(Spec):
    """Fine-tuning (llm.finetune) of a checkpoint: supervised ("full") on instruction or chat
    records, or by preference ("dpo") on {prompt, chosen, rejected} records; with a
    ``classification`` block, a classification head trained on labelled records."""

    checkpoint: Uri = Field(
        description="a checkpoint folder, or a train or finetune job's output (its latest one)"
    )
    data: Uri = Field(
        description="instruction records, or preference records for method 'dpo' (e.g. from "
        "POST /api/v1/ratings/preferences): a JSON array or a JSONL file"
    )
    method: Literal["full", "lora", "dpo"] = Field(
        default="full",
        description="full: supervised fine-tuning of every weight; lora: adapters only on the "
        "frozen base (the output is the adapter); dpo: Direct Preference Optimization of every "
        "weight against the checkpoint as frozen reference",
    )
    dpo: DPOSection | None = Field(default=None, description="method 'dpo' only; default {}")
    output: OutputUri
    tokenizer: Uri | None = Field(
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
        "'response'}; canonical: instruction, input, output, messages, role, content (dpo: "
        "prompt, input, chosen, rejected, role, content)",
    )
    train_on_prompt: bool = Field(default=False, description="also learn the prompt tokens")
    max_samples: int | None = Field(default=None, gt=0, description="read only the first N")
    val_fraction: float = Field(default=0.05, ge=0, lt=1)
    steps: int | None = Field(default=None, gt=0, description="optimizer steps (or give epochs)")
    epochs: int | None = Field(default=None, gt=0, description="default 1 when steps is unset")
    # the training settings below take their defaults from fine-tuning's TrainConfig
    batch_size: int = Field(default=_SFT.batch_size, gt=0, description="examples per worker")
    lr: float = Field(default=_SFT.lr, gt=0)
    min_lr: float = Field(default=_SFT.min_lr, ge=0)
    warmup_steps: int = Field(default=_SFT.warmup_steps, ge=0)
    schedule: Literal["cosine", "linear", "wsd"] = _SFT.schedule  # type: ignore[assignment]
    weight_decay: float = Field(default=_SFT.weight_decay, ge=0)
    grad_clip: float = Field(default=_SFT.grad_clip, ge=0)
    dropout: float | None = Field(
        default=None, ge=0, lt=1, description="None: the checkpoint's (dpo: none)"
    )
    precision: Literal["fp32", "bf16", "fp16"] = _SFT.precision  # type: ignore[assignment]
    workers: int = Field(default=2, gt=0)
    use_gpu: bool = False
    placement_strategy: Literal["PACK", "SPREAD", "STRICT_SPREAD"] = Field(
        default="PACK", description=PLACEMENT_DESCRIPTION
    )
    log_every: int = Field(default=_SFT.log_every, gt=0)
    eval_every: int = Field(default=_SFT.eval_every, gt=0)
    checkpoint_every: int = Field(default=_SFT.checkpoint_every, gt=0)
    keep_last: int | None = Field(
        default=_SFT.keep_last, ge=1, description="plus the best; null keeps all"
    )
    max_failures: int = Field(default=3, ge=0)
    seed: int = Field(default=_SFT.seed, description="the train/val split, data order, dropout")
    samples: int = Field(default=4, ge=0, le=64, description="held-out prompts to complete")
    max_new_tokens: int = Field(default=64, gt=0, le=4096)
    classification: ClassificationSpec | None = Field(
        default=None,
        description="train a classification head on an encoder or decoder checkpoint "
        "(llm.finetune.classify) from labelled records, in place of instruction tuning",
    )
    lora: LoraSpec | None = Field(
        default=None, description="LoRA's settings, with method 'lora' (default: LoraSpec's)"
    )

    @model_validator(mode="after")
    def _consistent(self) -> FinetuneSpec:
        # imported here: only this spec needs the template compiler
        from llm.finetune.preference_records import preference_field_map
        from llm.finetune.records import field_map
        from llm.finetune.templates import chat_template, instruction_template

        if self.steps is not None and self.epochs is not None:
            raise ValueError("give steps or epochs, not both")
        if self.min_lr > self.lr:
            raise ValueError(f"min_lr ({self.min_lr}) must not exceed lr ({self.lr})")
        if self.dpo is not None and self.method != "dpo":
            raise ValueError(f"dpo: settings for method 'dpo', but method is {self.method!r}")
        if self.method == "dpo" and self.train_on_prompt:
            raise ValueError("train_on_prompt: DPO compares the responses only")
        if self.classification is not None and self.method != "full":
            raise ValueError(
                f"classification: trains a head on labelled records, not with method "
                f"{self.method!r}"
            )
        # by value, not by fields set: a stored spec is dumped whole and validated again
        fields = type(self).model_fields
        misplaced = sorted(
            name
            for name in SFT_ONLY
            if getattr(self, name) != fields[name].get_default(call_default_factory=True)
        )
        if self.classification is not None and misplaced:
            raise ValueError(
                f"{', '.join(misplaced)}: instruction tuning's, not read with classification "
                "(its fields are in the classification block)"
            )
        if self.lora is not None and self.method != "lora":
            raise ValueError(f"lora: settings for method 'lora', but method is {self.method!r}")
        try:
            (preference_field_map if self.method == "dpo" else field_map)(self.fields)
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


__all__ = [
    "CurateSpec",
    "DPOSection",
    "EvaluateSpec",
    "FinetuneSpec",
    "LoraSpec",
    "SearchSpace",
    "TokenizeSpec",
    "TrainSpec",
    "TuneSpec",
]
