import math

import pytest
import torch

from llm.model.config import ModelConfig
from llm.model.gpt import GPT

TINY = dict(vocab_size=64, block_size=16, n_layer=2, n_head=4, n_embd=32)


def tiny_model(**overrides) -> GPT:
    torch.manual_seed(0)
    return GPT(ModelConfig(**{**TINY, **overrides}))


@pytest.mark.parametrize(
    ("overrides", "fields"),
    [
        ({"vocab_size": 0}, ["vocab_size"]),
        ({"block_size": -1}, ["block_size"]),
        ({"n_layer": 0}, ["n_layer"]),
        ({"n_layer": 2.0}, ["n_layer"]),
        ({"n_head": 0}, ["n_head"]),
        ({"n_embd": 30, "n_head": 4}, ["n_embd", "n_head"]),
        ({"dropout": 1.0}, ["dropout"]),
        ({"dropout": -0.1}, ["dropout"]),
        ({"bias": 1}, ["bias"]),
    ],
)
def test_config_validation_names_fields(overrides, fields):
    with pytest.raises(ValueError) as excinfo:
        ModelConfig(**{**TINY, **overrides})
    for field in fields:
        assert field in str(excinfo.value)


def test_config_dict_and_json_round_trip(tmp_path):
    config = ModelConfig(**TINY, dropout=0.1, bias=True, tie_embeddings=False)
    assert ModelConfig.from_dict(config.to_dict()) == config
    config.save(tmp_path / "config.json")
    assert ModelConfig.load(tmp_path / "config.json") == config


def test_config_from_dict_rejects_unknown_keys():
    with pytest.raises(ValueError, match=r"n_layers.*n_heads|n_heads.*n_layers"):
        ModelConfig.from_dict({**TINY, "n_layers": 3, "n_heads": 2})


def test_config_from_dict_requires_vocab_size():
    with pytest.raises(ValueError, match="vocab_size"):
        ModelConfig.from_dict({"n_layer": 2})


def test_config_is_frozen():
    config = ModelConfig(**TINY)
    with pytest.raises(AttributeError):
        config.n_layer = 3  # type: ignore[misc]


@pytest.mark.parametrize("tie", [True, False])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("n_layer", [1, 3])
def test_num_parameters_counts_unique_tensors(tie, bias, n_layer):
    model = tiny_model(tie_embeddings=tie, bias=bias, n_layer=n_layer)
    unique = {id(p): p.numel() for _, p in model.named_parameters(remove_duplicate=False)}
    assert model.num_parameters() == sum(unique.values())
    assert (model.lm_head.weight is model.wte.weight) == tie

    embeddings = model.wpe.weight.numel() + (0 if tie else model.wte.weight.numel())
    assert model.num_parameters(exclude_embeddings=True) == sum(unique.values()) - embeddings


def test_parameter_count_and_flops_by_hand():
    model = tiny_model()
    # per block: ln_1 32 + qkv 32*96 + attn proj 32*32 + ln_2 32 + fc 32*128 + mlp proj 128*32
    blocks = 2 * (32 + 3072 + 1024 + 32 + 4096 + 4096)
    non_embedding = blocks + 32 + 64 * 32  # + ln_f + tied wte/lm_head
    assert model.num_parameters() == non_embedding + 16 * 32
    assert model.num_parameters(exclude_embeddings=True) == non_embedding
    # 6N + 12 * n_layer * n_embd * block_size
    assert model.flops_per_token() == 6 * non_embedding + 12 * 2 * 32 * 16


def test_gpt2_init_scales_residual_projections():
    torch.manual_seed(0)
    model = GPT(ModelConfig(vocab_size=64, block_size=16, n_layer=8, n_head=4, n_embd=128))
    expected = 0.02 / math.sqrt(2 * 8)
    for block in model.blocks:
        assert block.mlp.proj.weight.std().item() == pytest.approx(expected, rel=0.1)
    assert model.blocks[0].mlp.fc.weight.std().item() == pytest.approx(0.02, rel=0.1)


def test_forward_shapes_and_loss():
    model = tiny_model()
    idx = torch.randint(0, 64, (3, 10))
    logits, loss = model(idx)
    assert logits.shape == (3, 10, 64)
    assert loss is None

    _, loss = model(idx, idx)
    assert loss is not None and loss.ndim == 0
    # a fresh model is close to uniform over the vocabulary
    assert loss.item() == pytest.approx(math.log(64), rel=0.1)


def test_ignore_index_targets_do_not_count():
    model = tiny_model()
    idx = torch.randint(0, 64, (2, 8))
    targets = idx.clone()
    targets[:, 4:] = -100
    _, masked = model(idx, targets)
    _, prefix = model(idx[:, :4], targets[:, :4])
    # causal attention makes the first 4 positions' logits identical either way
    assert masked.item() == pytest.approx(prefix.item(), rel=1e-5)


def test_causal_masking():
    model = tiny_model().eval()
    idx = torch.randint(0, 64, (1, 12))
    base, _ = model(idx)
    for t in range(11):
        changed = idx.clone()
        changed[0, t + 1 :] = (changed[0, t + 1 :] + 7) % 64
        logits, _ = model(changed)
        torch.testing.assert_close(logits[0, : t + 1], base[0, : t + 1])
        assert not torch.allclose(logits[0, t + 1], base[0, t + 1])


def test_overfits_one_batch():
    model = tiny_model()
    torch.manual_seed(1)
    idx = torch.randint(0, 64, (4, 16))
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    _, first = model(idx[:, :-1], idx[:, 1:])
    for _ in range(30):
        _, loss = model(idx[:, :-1], idx[:, 1:])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert loss.item() < 0.5 * first.item()


def test_sequence_longer_than_block_size_raises():
    model = tiny_model()
    with pytest.raises(ValueError, match="block_size"):
        model(torch.zeros(1, 17, dtype=torch.long))


def test_dropout_only_active_in_training():
    model = tiny_model(dropout=0.5)
    idx = torch.randint(0, 64, (1, 8))
    model.eval()
    torch.testing.assert_close(model(idx)[0], model(idx)[0])
    model.train()
    assert not torch.allclose(model(idx)[0], model(idx)[0])
