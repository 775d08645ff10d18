"""/api/v1/plan: compute-optimal model size, its config and its training memory per GPU."""

from __future__ import annotations

from typing import Any, Literal

from fastapi import APIRouter
from pydantic import BaseModel, ConfigDict, Field, model_validator

from llm.model.chinchilla import (
    GPU_PEAK_FLOPS,
    Plan,
    budget_from_gpu_hours,
    format_table,
    plan,
    plan_for_tokens,
)
from llm.model.config import ModelConfig
from llm.model.sizing import training_memory
from services.api.validation import request_error

router = APIRouter(prefix="/plan", tags=["plan"])

STYLES: dict[str, dict[str, Any]] = {
    "gpt2": {"bias": True},
    "llama": {"norm": "rmsnorm", "activation": "swiglu", "position": "rope", "n_kv_head": 8},
}


class PlanRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    flops: float | None = Field(
        default=None, gt=0, allow_inf_nan=False, description="compute budget in FLOPs"
    )
    gpu_hours: float | None = Field(
        default=None, gt=0, allow_inf_nan=False, description="or GPU-hours on gpu"
    )
    tokens: float | None = Field(
        default=None,
        gt=0,
        allow_inf_nan=False,
        description="or fixed data: the corpus's tokens (the size follows from the data)",
    )
    overtrain: float = Field(
        default=1.0,
        ge=1,
        allow_inf_nan=False,
        description="with tokens: a model this many times smaller than compute-optimal, "
        "over-trained on the same data for cheaper inference",
    )
    data: str | None = Field(
        default=None, description="token shards for the train spec the plan writes"
    )
    output: str | None = Field(default=None, description="the train spec's output")
    batch_size: int = Field(default=8, gt=0, description="the train spec's batch_size")
    workers: int = Field(default=2, gt=0, description="the train spec's workers")
    gpu: str = Field(default="H100", description=f"one of {sorted(GPU_PEAK_FLOPS)}")
    mfu: float = Field(default=0.4, gt=0, le=1)
    method: Literal["rule", "approach3"] = "rule"
    style: Literal["gpt2", "llama"] = "llama"
    vocab_size: int = Field(default=50304, gt=0)
    block_size: int = Field(default=2048, gt=0)
    micro_batch: int = Field(default=1, gt=0)
    precision: Literal["fp32", "bf16-mixed", "bf16"] = "bf16-mixed"
    strategy: Literal["ddp", "fsdp"] = "fsdp"
    n_gpus: int = Field(default=8, gt=0)
    checkpointing: bool = False

    @model_validator(mode="after")
    def _one_budget(self) -> PlanRequest:
        budgets = [self.flops, self.gpu_hours, self.tokens]
        if sum(b is not None for b in budgets) != 1:
            raise ValueError("give exactly one of flops, gpu_hours and tokens")
        if self.overtrain != 1 and self.tokens is None:
            raise ValueError("overtrain applies to a fixed-data plan: give tokens with it")
        if self.gpu not in GPU_PEAK_FLOPS:
            raise ValueError(f"gpu must be one of {sorted(GPU_PEAK_FLOPS)}, got {self.gpu!r}")
        return self


def make_plan(req: PlanRequest) -> dict[str, object]:
    """The plan, the chosen config's memory per GPU, and both as a printable table."""
    flops = req.flops or (
        budget_from_gpu_hours(req.gpu_hours, req.gpu, req.mfu) if req.gpu_hours else 0.0
    )
    # the base only carries the style's switches; nearest_config picks every size
    base = ModelConfig(
        vocab_size=req.vocab_size,
        block_size=req.block_size,
        n_head=8,
        n_embd=512,
        **STYLES[req.style],
    )
    if req.tokens is not None:
        result = plan_for_tokens(req.tokens, base, req.method, req.overtrain)
    else:
        result = plan(flops, base, req.method)
    memory = training_memory(
        result.config,
        micro_batch=req.micro_batch,
        precision=req.precision,
        strategy=req.strategy,
        n_gpus=req.n_gpus,
        checkpointing=req.checkpointing,
    )
    where = f"{req.strategy}, {req.n_gpus} GPUs, {req.precision}, micro-batch {req.micro_batch}"
    rows = result.rows() + [
        (f"memory per GPU: {name}", f"{value / 2**30:.2f} GiB")
        for name, value in memory.as_dict().items()
    ]
    rows.append(("memory assumes", where + (", checkpointing" if req.checkpointing else "")))
    return {
        **result.as_dict(),
        "memory_bytes": memory.as_dict(),
        "table": format_table(rows),
        "train_spec": train_spec(result, req),
    }


def train_spec(result: Plan, req: PlanRequest) -> dict[str, Any]:
    """A train job spec for the plan: its model, and its tokens as the run's length (steps
    follow from the global batch). The vocabulary is left to the token shards' tokenizer;
    data and output are the request's, to be filled in where it gave none."""
    model = {k: v for k, v in result.config.to_dict().items() if k != "vocab_size"}
    spec: dict[str, Any] = {
        "data": req.data,
        "output": req.output,
        "model": model,
        "tokens": max(1, int(result.config_tokens)),
        "batch_size": req.batch_size,
        "workers": req.workers,
    }
    return {k: v for k, v in spec.items() if v is not None}


@router.post("")
def create_plan(req: PlanRequest) -> dict[str, object]:
    try:
        return make_plan(req)
    except (ValueError, OverflowError, ZeroDivisionError) as e:
        # Inputs so large or small that the sizing arithmetic leaves the float range.
        raise request_error(
            ("body",),
            f"cannot plan for these inputs ({type(e).__name__}: {e}): the budget "
            "(flops or gpu_hours) or the sizes are out of any realistic range",
        ) from e
