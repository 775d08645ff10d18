"""The train spec's fields are TrainConfig's and ModelConfig's, flat in the JSON as users write
them: one name, one default and one rule for each setting."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from contracts.specs import TrainSpec, TuneSpec
from llm.model.config import ModelConfig
from llm.train.config import TrainConfig

BASE = {"data": "d", "output": "o"}


def _locs(error: ValidationError) -> list[tuple[object, ...]]:
    return [tuple(e["loc"]) for e in error.errors()]


def test_training_fields_are_the_train_config_and_stay_flat_in_json() -> None:
    spec = TrainSpec.model_validate({**BASE, "steps": 7, "lr": 0.01, "model": {"n_layer": 2}})
    assert spec.train == TrainConfig(steps=7, lr=0.01)
    assert spec.model == ModelConfig(n_layer=2)
    dumped = spec.model_dump(mode="json")
    assert "train" not in dumped and dumped["steps"] == 7 and dumped["lr"] == 0.01
    assert TrainSpec.model_validate(dumped) == spec


def test_one_default_per_setting() -> None:
    spec = TrainSpec.model_validate(BASE)
    assert spec.train == TrainConfig() and spec.model == ModelConfig()
    assert (spec.model.block_size, spec.train.seq_len, spec.train.tensorboard) == (128, None, False)
    assert spec.train.keep_last == 3 and spec.model.vocab_size is None


def test_errors_name_the_field_the_user_wrote() -> None:
    with pytest.raises(ValidationError) as info:
        TrainSpec.model_validate({**BASE, "steps": "many"})
    assert _locs(info.value) == [("steps",)]
    with pytest.raises(ValidationError) as info:
        TrainSpec.model_validate({**BASE, "stepz": 3})
    assert _locs(info.value) == [("stepz",)]
    with pytest.raises(ValidationError, match=r"TrainConfig\.precision must be one of"):
        TrainSpec.model_validate({**BASE, "precision": "fp8"})
    with pytest.raises(ValidationError, match="give its fields at the top level"):
        TrainSpec.model_validate({**BASE, "train": {"steps": 3}})
    with pytest.raises(ValidationError) as info:
        TrainSpec.model_validate({**BASE, "model": {"n_layers": 3}})
    assert _locs(info.value) == [("model", "n_layers")]


@pytest.mark.parametrize("spec_type", [TrainSpec, TuneSpec])
def test_the_model_must_fit_seq_len(spec_type: type) -> None:
    with pytest.raises(ValidationError, match=r"seq_len \(64\) must not exceed"):
        spec_type.model_validate({**BASE, "seq_len": 64, "model": {"block_size": 32}})


def test_training_takes_every_architecture_and_tuning_decoders() -> None:
    for arch in ("decoder", "encoder", "encoder_decoder"):
        spec = TrainSpec.model_validate({**BASE, "model": {"arch": arch}})
        assert spec.model.arch == arch
    spec = TrainSpec.model_validate({**BASE, "model": {"arch": "encoder"}, "mask_prob": 0.2})
    assert spec.train.mask_prob == 0.2
    with pytest.raises(ValidationError, match=r"TrainConfig\.mask_prob must be in \(0, 1\)"):
        TrainSpec.model_validate({**BASE, "mask_prob": 1.5})
    with pytest.raises(ValidationError, match=r"model\.arch must be one of \['decoder'\]"):
        TuneSpec.model_validate({**BASE, "model": {"arch": "encoder"}})


@pytest.mark.parametrize(
    ("arch", "fields", "message"),
    [
        ("decoder", {"objective": "masked_lm"}, "objective 'masked_lm' does not fit model.arch"),
        ("encoder", {"objective": "span_corruption"}, "trains on 'masked_lm'"),
        ("decoder", {"mask_prob": 0.3}, "mask_prob sets the masked_lm objective's noise"),
        ("encoder", {"mean_span": 5.0}, "mean_span sets the span_corruption objective's noise"),
        ("encoder_decoder", {"mask_prob": 0.3}, "drop mask_prob or set model.arch"),
        ("decoder", {"objective": "mlm"}, r"TrainConfig\.objective must be one of"),
    ],
)
def test_an_objective_that_does_not_fit_the_architecture_is_refused(
    arch: str, fields: dict[str, object], message: str
) -> None:
    with pytest.raises(ValidationError, match=message):
        TrainSpec.model_validate({**BASE, "model": {"arch": arch}, **fields})
    own = {"decoder": "causal_lm", "encoder": "masked_lm", "encoder_decoder": "span_corruption"}
    spec = TrainSpec.model_validate({**BASE, "model": {"arch": arch}, "objective": own[arch]})
    # a stored spec, every default written out, validates again
    assert TrainSpec.model_validate(spec.model_dump(mode="json")) == spec
