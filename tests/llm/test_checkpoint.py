import json
import os
import shutil

import pytest
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from llm.model.config import ModelConfig
from llm.model.gpt import GPT
from llm.train.checkpoint import (
    latest_checkpoint,
    load_checkpoint,
    load_model,
    save_checkpoint,
    step_dir,
)

CONFIG = ModelConfig(vocab_size=64, block_size=16, n_layer=2, n_head=4, n_embd=32)


def trained(config: ModelConfig = CONFIG, seed: int = 0):
    """A model and AdamW optimizer that have taken two steps, so the optimizer has state."""
    torch.manual_seed(seed)
    model = GPT(config)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    idx = torch.randint(0, config.vocab_size, (2, 9))
    for _ in range(2):
        _, loss = model(idx[:, :-1], idx[:, 1:])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model, optimizer


def save(directory, model, optimizer, step: int):
    return save_checkpoint(
        directory, model=model, config=CONFIG, optimizer=optimizer, trainer_state={"step": step}
    )


def test_round_trip_restores_weights_and_optimizer(tmp_path):
    model, optimizer = trained()
    state = {"step": 2, "tokens_seen": 36, "losses": [4.1, 4.0]}
    path = save_checkpoint(
        tmp_path / "ckpt", model=model, config=CONFIG, optimizer=optimizer, trainer_state=state
    )
    assert sorted(p.name for p in path.iterdir()) == [
        "config.json",
        "model.safetensors",
        "optimizer.pt",
        "trainer_state.json",
    ]
    on_disk = json.loads((path / "trainer_state.json").read_text())
    assert on_disk["format"] == "llmforge.checkpoint/1"
    assert on_disk["optimizer_file"] == "optimizer.pt"

    fresh, fresh_opt = trained(seed=1)
    config, loaded_state = load_checkpoint(path, model=fresh, optimizer=fresh_opt)
    assert config == CONFIG
    assert loaded_state == state
    for (name, a), (_, b) in zip(
        model.state_dict().items(), fresh.state_dict().items(), strict=True
    ):
        assert torch.equal(a, b), name
    assert fresh.lm_head.weight is fresh.wte.weight  # loading kept the tie

    expected, got = optimizer.state_dict(), fresh_opt.state_dict()
    assert expected["param_groups"] == got["param_groups"]
    for key, slots in expected["state"].items():
        for slot, value in slots.items():
            assert torch.equal(value, got["state"][key][slot]), (key, slot)


def test_load_model_builds_gpt_in_eval_mode(tmp_path):
    model, _ = trained()
    save_checkpoint(tmp_path / "c", model=model, config=CONFIG, optimizer=None, trainer_state={})
    loaded = load_model(tmp_path / "c")
    assert not loaded.training
    idx = torch.randint(0, 64, (1, 8))
    torch.testing.assert_close(loaded(idx)[0], model.eval()(idx)[0])


def test_without_optimizer(tmp_path):
    model, optimizer = trained()
    save_checkpoint(tmp_path / "c", model=model, config=CONFIG, optimizer=None, trainer_state={})
    assert not (tmp_path / "c" / "optimizer.pt").exists()
    assert load_checkpoint(tmp_path / "c")[1] == {}
    with pytest.raises(FileNotFoundError, match=r"optimizer\.pt"):
        load_checkpoint(tmp_path / "c", optimizer=optimizer)


def test_config_mismatch_names_fields(tmp_path):
    model, _ = trained()
    save(tmp_path / "c", model, None, 1)
    other = GPT(ModelConfig(vocab_size=64, block_size=32, n_layer=3, n_head=4, n_embd=32))
    with pytest.raises(ValueError, match=r"\['block_size', 'n_layer'\]"):
        load_checkpoint(tmp_path / "c", model=other)
    with pytest.raises(ValueError, match="n_layer"):
        save_checkpoint(
            tmp_path / "d", model=other, config=CONFIG, optimizer=None, trainer_state={}
        )


def test_missing_file_is_named(tmp_path):
    model, _ = trained()
    save(tmp_path / "c", model, None, 1)
    (tmp_path / "c" / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match=r"model\.safetensors"):
        load_checkpoint(tmp_path / "c", model=model)
    with pytest.raises(FileNotFoundError, match=r"config\.json"):
        load_checkpoint(tmp_path / "nowhere")


def test_reserved_trainer_state_keys_rejected(tmp_path):
    model, _ = trained()
    with pytest.raises(ValueError, match="format"):
        save_checkpoint(
            tmp_path / "c", model=model, config=CONFIG, optimizer=None, trainer_state={"format": 1}
        )


def test_overwrite_replaces_existing_checkpoint(tmp_path):
    first, _ = trained(seed=0)
    second, optimizer = trained(seed=1)
    save(tmp_path / "c", first, None, 1)
    save(tmp_path / "c", second, optimizer, 2)
    fresh, _ = trained(seed=2)
    assert load_checkpoint(tmp_path / "c", model=fresh)[1] == {"step": 2}
    assert torch.equal(fresh.wte.weight, second.wte.weight)
    assert [p.name for p in tmp_path.iterdir()] == ["c"]  # no temp or set-aside folders left


def test_failed_save_keeps_previous_checkpoint(tmp_path):
    model, _ = trained()
    save(tmp_path / "c", model, None, 1)
    with pytest.raises(TypeError):
        save_checkpoint(
            tmp_path / "c",
            model=model,
            config=CONFIG,
            optimizer=None,
            trainer_state={"bad": object()},
        )
    assert load_checkpoint(tmp_path / "c")[1] == {"step": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["c"]


def test_latest_checkpoint_picks_highest_complete_step(tmp_path):
    assert latest_checkpoint(tmp_path / "missing") is None
    assert latest_checkpoint(tmp_path) is None
    model, optimizer = trained()
    for step in (5, 20, 100):
        save(step_dir(tmp_path, step), model, optimizer, step)
    assert step_dir(tmp_path, 20).name == "step_00000020"
    assert latest_checkpoint(tmp_path) == step_dir(tmp_path, 100)

    # an incomplete higher step (crashed copy, missing optimizer file) is skipped
    (step_dir(tmp_path, 100) / "optimizer.pt").unlink()
    # a newer save interrupted before its rename is hidden under .tmp-*
    shutil.copytree(step_dir(tmp_path, 20), tmp_path / f".tmp-step_00000500-{os.getpid() + 1}")
    (tmp_path / "step_00000300").mkdir()  # empty: never completed
    (tmp_path / "notes.txt").write_text("not a checkpoint")
    assert latest_checkpoint(tmp_path) == step_dir(tmp_path, 20)


def test_leftover_temp_folder_does_not_break_saving_or_loading(tmp_path):
    model, optimizer = trained()
    leftover = tmp_path / f".tmp-step_00000010-{os.getpid()}"
    leftover.mkdir()
    (leftover / "model.safetensors").write_bytes(b"half written")
    save(step_dir(tmp_path, 10), model, optimizer, 10)

    latest = latest_checkpoint(tmp_path)
    assert latest == step_dir(tmp_path, 10)
    fresh, fresh_opt = trained(seed=1)
    assert load_checkpoint(latest, model=fresh, optimizer=fresh_opt)[1] == {"step": 10}
    assert not leftover.exists()  # the same process's stale temp folder was cleared


def test_ddp_wrapped_model_saves_bare_keys(tmp_path):
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'pg'}", rank=0, world_size=1)
    try:
        model, _ = trained()
        save(tmp_path / "c", DistributedDataParallel(model), None, 1)
        fresh, _ = trained(seed=1)
        load_checkpoint(tmp_path / "c", model=DistributedDataParallel(fresh))
    finally:
        dist.destroy_process_group()
    assert torch.equal(fresh.wte.weight, model.wte.weight)
    assert torch.equal(load_model(tmp_path / "c").wte.weight, model.wte.weight)
