"""Compute-optimal planning after Hoffmann et al. 2022 ("Chinchilla").

Given a FLOP budget C (or GPU-hours on a named GPU at an assumed MFU), with C = 6 N D:
- "rule": about 20 tokens per parameter, N = sqrt(C / 120), the paper's Table 3 rows;
- "approach3": minimise the fitted loss L(N, D) = E + A / N^alpha + B / D^beta.
Either way the loss is predicted by that fit, and the nearest sensible ModelConfig is chosen.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

from llm.model.config import ModelConfig
from llm.model.sizing import count_parameters, flops_per_token

# Hoffmann et al. 2022, approach 3 (equation 10)
E, A, B, ALPHA, BETA = 1.69, 406.4, 410.7, 0.34, 0.28
TOKENS_PER_PARAM = 20.0
# dense bf16 peak FLOP/s per GPU (vendor datasheets, without sparsity)
GPU_PEAK_FLOPS = {
    "V100": 125e12,
    "A10G": 125e12,
    "L4": 121e12,
    "A100": 312e12,
    "L40S": 362e12,
    "H100": 989e12,
    "H200": 989e12,
    "B200": 2250e12,
}


def predicted_loss(n_params: float, n_tokens: float) -> float:
    return E + A / n_params**ALPHA + B / n_tokens**BETA


def budget_from_gpu_hours(gpu_hours: float, gpu: str, mfu: float = 0.4) -> float:
    if gpu not in GPU_PEAK_FLOPS:
        raise ValueError(f"gpu must be one of {sorted(GPU_PEAK_FLOPS)}, got {gpu!r}")
    if not 0 < mfu <= 1 or gpu_hours <= 0:
        raise ValueError("gpu_hours must be > 0 and mfu in (0, 1]")
    return gpu_hours * 3600 * GPU_PEAK_FLOPS[gpu] * mfu


def optimal_size(flops: float, method: str = "rule") -> tuple[float, float]:
    """(parameters, tokens) that minimise loss for the budget."""
    if flops <= 0:
        raise ValueError(f"flops must be > 0, got {flops}")
    if method == "rule":
        n = math.sqrt(flops / (6 * TOKENS_PER_PARAM))
        return n, TOKENS_PER_PARAM * n
    if method == "approach3":
        # setting dL/dN = 0 along D = C / 6N gives N = G (C/6)^(beta/(alpha+beta))
        g = (ALPHA * A / (BETA * B)) ** (1 / (ALPHA + BETA))
        n = g * (flops / 6) ** (BETA / (ALPHA + BETA))
        return n, flops / (6 * n)
    raise ValueError(f"method must be 'rule' or 'approach3', got {method!r}")


def optimal_for_tokens(tokens: float, method: str = "rule") -> tuple[float, float]:
    """(parameters, FLOPs) of the compute-optimal run whose optimal data is ``tokens``: the
    frontier of :func:`optimal_size` read the other way, for a corpus of fixed size."""
    if tokens <= 0:
        raise ValueError(f"tokens must be > 0, got {tokens}")
    if method == "rule":
        n = tokens / TOKENS_PER_PARAM
        return n, 6 * n * tokens
    if method == "approach3":
        # N = G (C/6)^a and D = (C/6) / N = (C/6)^(1-a) / G, with a = beta / (alpha + beta)
        a = BETA / (ALPHA + BETA)
        g = (ALPHA * A / (BETA * B)) ** (1 / (ALPHA + BETA))
        c6 = (tokens * g) ** (1 / (1 - a))
        return g * c6**a, 6 * c6
    raise ValueError(f"method must be 'rule' or 'approach3', got {method!r}")


def nearest_config(n_params: float, base: ModelConfig) -> ModelConfig:
    """The config closest to n_params with base's switches, head size 64, width a multiple of
    128 and a width/depth ratio near 100 (what GPT-3, Llama and Chinchilla itself use)."""
    best: tuple[float, ModelConfig] | None = None
    for n_layer in range(1, 161):
        width = 128 * max(1, round(100 * n_layer / 128))
        heads = width // 64
        kv = base.n_kv_head
        # keep the base's key/value head count where it still divides the heads
        kv_heads = kv if kv is None or heads % kv == 0 else 1
        candidate = dataclasses.replace(
            base, n_layer=n_layer, n_embd=width, n_head=heads, n_kv_head=kv_heads, mlp_hidden=None
        )
        error = abs(math.log(count_parameters(candidate) / n_params))
        if best is None or error < best[0]:
            best = (error, candidate)
    assert best is not None
    return best[1]


@dataclass(frozen=True)
class Plan:
    flops: float
    method: str
    params: float
    tokens: float
    loss: float
    config: ModelConfig
    config_params: int
    config_tokens: float
    # "compute": the best run for a FLOP budget; "data": for a corpus of `tokens` tokens
    mode: str = "compute"
    overtrain: float = 1.0  # data mode: the model is this many times smaller than optimal
    config_flops: float | None = None  # data mode: the nearest config's FLOPs on the data

    def rows(self) -> list[tuple[str, str]]:
        c = self.config
        if self.mode == "data":
            head = [
                ("data (tokens)", f"{self.tokens:.3g}"),
                (f"optimal parameters ({self.method})", f"{self.params * self.overtrain:.3g}"),
            ]
            if self.overtrain != 1:
                head.append((f"parameters, over-trained x{self.overtrain:g}", f"{self.params:.3g}"))
            head.append(("compute (FLOPs, 6 N D)", f"{self.flops:.3g}"))
        else:
            head = [
                ("compute budget (FLOPs)", f"{self.flops:.3g}"),
                (f"optimal parameters ({self.method})", f"{self.params:.3g}"),
                ("optimal tokens", f"{self.tokens:.3g}"),
            ]
        rows = [
            *head,
            ("tokens per parameter", f"{self.tokens / self.params:.1f}"),
            ("predicted loss (approach 3 fit)", f"{self.loss:.3f}"),
            ("nearest config", f"n_layer={c.n_layer} n_head={c.n_head} n_embd={c.n_embd}"),
            ("its parameters", f"{self.config_params:.4g}"),
        ]
        if self.mode == "data":
            rows.append(("its FLOPs on the data", f"{self.config_flops:.3g}"))
        else:
            rows.append(("its tokens for the budget", f"{self.config_tokens:.3g}"))
        return rows

    def as_dict(self) -> dict[str, object]:
        return {
            "flops": self.flops,
            "method": self.method,
            "params": self.params,
            "tokens": self.tokens,
            "loss": self.loss,
            "config": self.config.to_dict(),
            "config_params": self.config_params,
            "config_tokens": self.config_tokens,
            "mode": self.mode,
            "overtrain": self.overtrain,
            "config_flops": self.config_flops,
        }


def _sized(flops: float, params: float, tokens: float, base: ModelConfig, **fields: Any) -> Plan:
    """The Plan for an ideal (params, tokens), with the nearest config to params."""
    config = nearest_config(params, base)
    fields.setdefault("config_tokens", flops / flops_per_token(config))
    return Plan(
        flops=flops,
        params=params,
        tokens=tokens,
        loss=predicted_loss(params, tokens),
        config=config,
        config_params=count_parameters(config),
        **fields,
    )


def plan(flops: float, base: ModelConfig, method: str = "rule") -> Plan:
    params, tokens = optimal_size(flops, method)
    return _sized(flops, params, tokens, base, method=method)


def plan_for_tokens(
    tokens: float, base: ModelConfig, method: str = "rule", overtrain: float = 1.0
) -> Plan:
    """The model to train on a corpus of ``tokens`` tokens (fixed data, compute follows):
    the compute-optimal size for that much data, or, to over-train for cheaper inference,
    a model ``overtrain`` times smaller on the same data (its loss from the approach-3 fit)."""
    if overtrain < 1:
        raise ValueError(f"overtrain must be >= 1 (1: compute-optimal), got {overtrain}")
    optimal, _ = optimal_for_tokens(tokens, method)
    params = optimal / overtrain
    flops = 6 * params * tokens
    if not math.isfinite(flops):
        raise OverflowError(f"{tokens:.3g} tokens need more FLOPs than a float holds")
    sized = _sized(
        flops, params, tokens, base, method=method, config_tokens=tokens, mode="data",
        overtrain=overtrain,
    )  # fmt: skip
    return dataclasses.replace(sized, config_flops=flops_per_token(sized.config) * tokens)


def format_table(rows: list[tuple[str, str]]) -> str:
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k.ljust(width)}  {v}" for k, v in rows)
