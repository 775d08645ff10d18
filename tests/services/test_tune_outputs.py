"""What a succeeded tune job registers: its best finished trial's folder, as a model."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session

from services import job_outputs
from services.store import crud
from services.store.models import JobState

CONFIG = {"lr": 0.01, "batch_size": 4, "weight_decay": 0.0, "dropout": 0.0,
          "warmup_steps": 0, "beta2": 0.95, "optimizer": "adamw"}  # fmt: skip


def _tune_job(session: Session, out: Path, result: dict[str, Any]) -> Any:
    spec = {"data": "/tokens", "output": str(out), "model": {"n_layer": 1}, "precision": "bf16"}
    job = crud.create_job(session, kind="tune", spec=spec, state=JobState.succeeded, team="red")
    job.result = result
    return job


def _trial(trial_id: str, steps: int, best: float, final: float) -> dict[str, Any]:
    return {"trial_id": trial_id, "config": CONFIG, "steps": steps, "workers": 2,
            "best_val_loss": best, "final_val_loss": final, "error": None}  # fmt: skip


def test_the_best_finished_trial_is_registered_as_a_checkpoint(
    session: Session, tmp_path: Path
) -> None:
    checkpoint = f"{tmp_path}/trials/b_00001/checkpoints/step_00000030"
    result = {
        "best_trial": "a_00000",  # stopped early by ASHA, with no checkpoint
        "best_checkpoint": checkpoint,
        "best_checkpoint_trial": "b_00001",
        "trials": [_trial("a_00000", 10, 4.0, 4.0), _trial("b_00001", 30, 4.1, 4.2)],
    }
    [model] = job_outputs.register_outputs(session, _tune_job(session, tmp_path, result))
    assert (model.category, model.kind) == ("model", "checkpoint")
    assert model.uri == f"{tmp_path}/trials/b_00001" and model.inputs == ["/tokens"]
    assert model.stats == {
        "trial_id": "b_00001",
        "best_trial": "a_00000",
        "config": CONFIG,
        "steps": 30,
        "workers": 2,
        "best_val_loss": 4.1,
        "val_loss": 4.2,
        "checkpoint": checkpoint,
        "model": {"n_layer": 1},
        "precision": "bf16",
    }
    # an evaluate or finetune job that names the checkpoint finds this model
    assert job_outputs.model_for_checkpoint(session, checkpoint).id == model.id  # type: ignore[union-attr]


def test_a_tune_job_whose_trials_all_stopped_early_registers_nothing(
    session: Session, tmp_path: Path
) -> None:
    result = {"best_trial": "a_00000", "best_checkpoint": None, "best_checkpoint_trial": None,
              "trials": [_trial("a_00000", 10, 4.0, 4.0)]}  # fmt: skip
    assert job_outputs.register_outputs(session, _tune_job(session, tmp_path, result)) == []
