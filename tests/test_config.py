"""ModelConfig: validation errors name the field; presets are frozen; replace() leaves them intact."""

import dataclasses

import pytest

from components.config import ModelConfig
from constants import DEFAULT, LARGE, PRESETS, SMALL, TINY


@pytest.mark.parametrize("overrides, field", [
    ({"d_model": 250, "n_heads": 4}, "n_heads"),
    ({"top_k": 5, "n_routed_experts": 4}, "top_k"),
    ({"rope_head_dim": 7}, "rope_head_dim"),
    ({"attention": "flash"}, "attention"),
    ({"router_score": "relu"}, "router_score"),
    ({"ffn": "sparse"}, "ffn"),
    ({"balancing": "magic"}, "balancing"),
    ({"attention": "gqa", "n_kv_heads": 3}, "n_kv_heads"),
    ({"attention": "gqa"}, "n_kv_heads"),
    ({"n_expert_groups": 3}, "n_expert_groups"),
    ({"n_expert_groups": 2, "topk_groups": 3}, "topk_groups"),
    ({"n_routed_experts": 8, "n_expert_groups": 4, "topk_groups": 1, "top_k": 3}, "top_k"),
    ({"capacity_factor": 0.0}, "capacity_factor"),
    ({"dropout": 1.0}, "dropout"),
    ({"n_layers": 0}, "n_layers"),
    ({"n_dense_layers": 9}, "n_dense_layers"),
    ({"q_latent_dim": 0}, "q_latent_dim"),
    ({"balancing": "aux_loss", "expert_balance_coef": 0.0}, "balancing"),
    ({"bias_update_rate": -1.0}, "bias_update_rate"),
])
def test_invalid_combinations_name_the_field(overrides, field):
    with pytest.raises(ValueError, match=rf"ModelConfig\.{field}="):
        dataclasses.replace(TINY, **overrides)


def test_error_is_one_line():
    with pytest.raises(ValueError) as err:
        ModelConfig(d_model=250)
    assert "\n" not in str(err.value)


def test_presets_have_the_book_sizes():
    def sizes(cfg):
        return (cfg.context_length, cfg.d_model, cfg.n_heads, cfg.n_layers, cfg.kv_latent_dim,
                cfg.n_routed_experts, cfg.n_shared_experts, cfg.top_k, cfg.expert_hidden_dim)

    assert sizes(SMALL) == (128, 256, 4, 4, 64, 4, 1, 2, 1024)
    assert sizes(DEFAULT) == (256, 512, 8, 6, 128, 8, 1, 2, 2048)
    assert sizes(LARGE) == (512, 1024, 16, 12, 128, 16, 2, 4, 4096)
    for cfg in PRESETS.values():
        assert cfg.vocab_size == 50257
        sizes = cfg.resolved()
        assert sizes.qk_nope_head_dim == sizes.v_head_dim == cfg.head_dim == cfg.d_model // cfg.n_heads
        assert sizes.rope_head_dim == cfg.head_dim // 2


def test_presets_are_frozen_and_replace_copies():
    with pytest.raises(dataclasses.FrozenInstanceError):
        SMALL.top_k = 1
    variant = dataclasses.replace(SMALL, top_k=1, n_heads=8)
    assert SMALL.top_k == 2 and variant.top_k == 1
    # derived sizes follow the variant, never a stale stored value
    assert variant.head_dim == 32 and variant.resolved().rope_head_dim == 16


def test_derived_sizes():
    assert dataclasses.replace(TINY, attention="mqa").resolved().n_kv_heads == 1
    assert dataclasses.replace(TINY, attention="gqa", n_kv_heads=2).resolved().n_kv_heads == 2
    assert TINY.resolved().n_kv_heads == TINY.n_heads
    assert SMALL.resolved().dense_hidden_dim == 1024 * 3
    assert dataclasses.replace(TINY, balancing="aux_free").balance_coefs["expert"] == 0.0
    assert dataclasses.replace(TINY, balancing="both").balance_coefs["expert"] == TINY.expert_balance_coef
    assert [TINY.is_moe_layer(i) for i in range(TINY.n_layers)] == [False, True]


def test_dict_round_trip_and_unknown_keys():
    assert ModelConfig.from_dict(SMALL.to_dict()) == SMALL
    with pytest.raises(ValueError, match="unknown ModelConfig keys"):
        ModelConfig.from_dict({**SMALL.to_dict(), "n_experts": 3})
