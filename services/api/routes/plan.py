"""/api/v1/plan: compute-optimal model size, its config and its training memory per GPU."""

from __future__ import annotations

from typing import Any, Literal

from fastapi import APIRouter
from pydantic import BaseModel, ConfigDict, Field, model_validator

from llm.model.chinchilla import GPU_PEAK_FLOPS, budget_from_gpu_hours, format_table, plan
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
        if (self.flops is None) == (self.gpu_hours is None):
            raise ValueError("give exactly one of flops and gpu_hours")
        if self.gpu not in GPU_PEAK_FLOPS:
            raise ValueError(f"gpu must be one of {sorted(GPU_PEAK_FLOPS)}, got {self.gpu!r}")
        return self


def make_plan(req: PlanRequest) -> dict[str, object]:
    """The plan, the chosen config's memory per GPU, and both as a printable table."""
    flops = req.flops or budget_from_gpu_hours(req.gpu_hours or 0.0, req.gpu, req.mfu)
    # the base only carries the style's switches; nearest_config picks every size
    base = ModelConfig(
        vocab_size=req.vocab_size,
        block_size=req.block_size,
        n_head=8,
        n_embd=512,
        **STYLES[req.style],
    )
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
    return {**result.as_dict(), "memory_bytes": memory.as_dict(), "table": format_table(rows)}


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
