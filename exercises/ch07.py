"""Hidden cases for chapter 7 (inference and the cache budget).

7.1 `top_p_filter(logits, p)`: nucleus filtering, as `components.generation.apply_top_p`.
7.2 `repetition_penalty(logits, tokens, penalty)`: the CTRL penalty, as `apply_repetition_penalty`.
7.3 `generation_cache_bytes(cfg, prompt_tokens, new_tokens, bytes_per_value)`: the bytes of the KV
    caches that `generate(..., return_caches=True)` hands back, sliding window included.
7.4 written: top-k against top-p on the trained model.

References: the library's logit processors, and caches measured from real generations of small
untrained models (a small vocabulary keeps them fast). The library functions an exercise asks for are
switched off while the answer runs (exercises/guard.py): `apply_top_p`, `apply_repetition_penalty`
and `process_logits` (which calls them), and for 7.3 running a model at all.
"""

from __future__ import annotations

import warnings
from dataclasses import replace

import torch

import utils
from components import generation
from components.deepseek_model import DeepSeekModel
from components.generation import apply_repetition_penalty, apply_top_p, process_logits
from components.kv_cache import LayerCache
from constants import TINY
from exercises import Exercise


def _as_logits(result, shape, name: str) -> torch.Tensor:
    assert torch.is_tensor(result), f"{name} must return a tensor of logits, got {type(result).__name__}"
    assert tuple(result.shape) == tuple(shape), \
        f"{name} must return logits of the input's shape {tuple(shape)}, got {tuple(result.shape)}"
    return result


def _same(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Equal, with -inf where the other has -inf (assert_close treats matching infinities as equal)."""
    try:
        torch.testing.assert_close(a.float(), b.float(), atol=1e-5, rtol=1e-5)
        return True
    except AssertionError:
        return False


# --- 7.1 ------------------------------------------------------------------------------------
def _kept(logits: torch.Tensor) -> list[list[int]]:
    return [torch.isfinite(row).nonzero().flatten().tolist() for row in logits]


def check_7_1(student_fn) -> None:
    gen = torch.Generator().manual_seed(71)
    # hand case, in shuffled vocabulary order: probabilities 0.5, 0.3, 0.15, 0.05 for tokens 2, 0, 3, 1
    hand = torch.tensor([[0.3, 0.05, 0.5, 0.15]]).log()
    cases = [
        (hand, 0.75),    # 0.5 < 0.75, then 0.8 >= 0.75: keep tokens 2 and 0 (the second one crosses p)
        (hand, 0.4),     # the top token alone already holds 0.5 >= 0.4
        (hand, 0.01),    # a tiny p keeps only the most likely token, never nothing
        (hand, 1.0),     # p = 1 keeps everything
        (torch.randn(3, 50, generator=gen) * 2, 0.9),
        (torch.randn(2, 1000, generator=gen) * 3, 0.5),
        (torch.randn(4, 20, generator=gen), 0.95),
    ]
    for logits, p in cases:
        want = apply_top_p(logits.clone(), p)
        got = _as_logits(student_fn(logits.clone(), p), logits.shape, "top_p_filter")
        if _same(got, want):
            continue
        kept_got, kept_want = _kept(got), _kept(want)
        where = f"logits of shape {tuple(logits.shape)}, p={p}"
        if kept_got == kept_want:
            raise AssertionError(f"{where}: the right tokens survive, but their logits changed: leave the kept "
                                 "logits as they are (softmax renormalises them) and set the others to -inf")
        if any(len(k) == 0 for k in kept_got):
            raise AssertionError(f"{where}: a row kept no token at all; the most likely token must always survive")
        if all(len(g) + 1 == len(w) for g, w in zip(kept_got, kept_want, strict=True)):
            raise AssertionError(f"{where}: one token too few per row: keep the token whose probability makes the "
                                 "mass reach p (drop a token only when the mass BEFORE it already reaches p)")
        if all(len(g) == len(w) + 1 for g, w in zip(kept_got, kept_want, strict=True)):
            raise AssertionError(f"{where}: one token too many per row: drop a token as soon as the mass of the "
                                 "more likely tokens before it is >= p")
        if all(len(g) == len(w) for g, w in zip(kept_got, kept_want, strict=True)):
            raise AssertionError(f"{where}: the right NUMBER of tokens, but not the right ones: sort by "
                                 "probability, decide in sorted order, then put the decisions back in "
                                 "vocabulary order (scatter with the sort's indices)")
        raise AssertionError(f"{where}: expected to keep tokens {kept_want}, kept {kept_got}")


# --- 7.2 ------------------------------------------------------------------------------------
def check_7_2(student_fn) -> None:
    gen = torch.Generator().manual_seed(72)
    hand_logits = torch.tensor([[2.0, -1.0, 0.5, -3.0, 1.0, 0.0]])
    hand_tokens = torch.tensor([[0, 1, 1, 5, 1]])          # token 1 three times; 2, 3, 4 never
    cases = [
        (hand_logits, hand_tokens, 1.5),
        (hand_logits, hand_tokens, 1.0),                     # 1 = off
        (hand_logits, hand_tokens, 0.5),                     # < 1 encourages repeats
        (torch.randn(3, 40, generator=gen) * 2, torch.randint(0, 40, (3, 12), generator=gen), 1.3),
        (torch.randn(2, 100, generator=gen), torch.randint(0, 100, (2, 30), generator=gen), 2.0),
    ]
    for logits, tokens, penalty in cases:
        want = apply_repetition_penalty(logits.clone(), tokens.clone(), penalty)
        got = _as_logits(student_fn(logits.clone(), tokens.clone(), penalty), logits.shape, "repetition_penalty")
        if _same(got, want):
            continue
        where = f"logits of shape {tuple(logits.shape)}, penalty={penalty}"
        present = generation.token_counts(tokens, logits.shape[-1]) > 0           # (B, V): the library's count
        if _same(got, torch.where(present, logits / penalty, logits)):
            raise AssertionError(f"{where}: dividing a NEGATIVE logit by p > 1 makes it larger (more likely); "
                                 "divide positive logits, multiply negative ones")
        if not _same(got[~present], logits[~present]):
            raise AssertionError(f"{where}: only tokens that already occur in `tokens` are penalised; "
                                 "the others keep their logits")
        raise AssertionError(f"{where}: each token present (once or many times) is penalised exactly once: "
                             "z / p if z > 0 else z * p")


# --- 7.3 ------------------------------------------------------------------------------------
# small models: the vocabulary is tiny so that each generation takes milliseconds
_BASE = replace(TINY, vocab_size=128, context_length=32, d_model=32, n_heads=4, kv_latent_dim=12,
                expert_hidden_dim=32, n_layers=2)
CONFIGS = {
    "mla": _BASE,
    "mla-3-layers": replace(_BASE, n_layers=3, kv_latent_dim=20, rope_head_dim=6, context_length=24),
    "mha": replace(_BASE, attention="mha"),
    "gqa": replace(_BASE, attention="gqa", n_kv_heads=2),
    "mqa": replace(_BASE, attention="mqa", context_length=20),
}


def _measured(cfg, prompt_tokens: int, new_tokens: int) -> int:
    torch.manual_seed(73)
    model = DeepSeekModel(cfg)
    prompt = torch.randint(0, cfg.vocab_size, (1, prompt_tokens))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")                 # a prompt longer than the context warns
        _, caches = model.generate(prompt, new_tokens, temperature=0, return_caches=True)
    return utils.measured_cache_bytes(caches)


def check_7_3(student_fn) -> None:
    cases = [  # (config name, prompt tokens, new tokens)
        ("mla", 5, 1), ("mla", 5, 10), ("mla", 1, 32), ("mla", 5, 28), ("mla", 5, 29), ("mla", 5, 45),
        ("mla", 5, 80), ("mla", 40, 3), ("mla-3-layers", 7, 60), ("mha", 9, 12), ("gqa", 3, 50),
        ("mqa", 4, 17), ("mqa", 2, 70),
    ]
    for name, prompt_tokens, new_tokens in cases:
        cfg = CONFIGS[name]
        want = _measured(cfg, prompt_tokens, new_tokens)            # fp32 tensors: 4 bytes per value
        got = int(student_fn(cfg, prompt_tokens, new_tokens, 4))
        if got == want:
            continue
        per_token = utils.kv_cache_values_per_token(cfg) * cfg.n_layers * 4
        where = (f"attention={cfg.attention!r}, context_length={cfg.context_length}, prompt_tokens={prompt_tokens}, "
                 f"new_tokens={new_tokens}")
        hint = ""
        if got % per_token:
            hint = (f"a cached token costs {per_token} bytes here (values per token per layer x layers x 4); "
                    "MLA caches C + R values per layer, MHA/GQA/MQA 2 * n_kv_heads * head_dim")
        elif got == want + per_token:
            hint = "one token too many: the last sampled token is returned but never fed back, so it is not cached"
        elif got > cfg.context_length * per_token:
            hint = (f"the cache never holds more than context_length={cfg.context_length} tokens: a longer prompt "
                    "is cropped, and a full cache is rebuilt from the last context_length // 2 tokens")
        raise AssertionError(f"{where}: expected {want:,} bytes, got {got:,}" + (f"; {hint}" if hint else ""))
    # bf16 serving: the same tokens at 2 bytes per value
    cfg = CONFIGS["mla"]
    want = _measured(cfg, 6, 20) // 2
    got = int(student_fn(cfg, 6, 20, 2))
    if got != want:
        raise AssertionError(f"with bytes_per_value=2 (bf16), prompt 6 + 20 new tokens: expected {want:,} bytes, "
                             f"got {got:,}; scale by bytes_per_value")


# 7.3 asks for the cache size WITHOUT running a model: generating (or any forward) is the library's answer.
_GENERATION = (DeepSeekModel.forward, DeepSeekModel.generate, generation.generate, generation.stream_tokens,
               LayerCache.append, utils.measured_cache_bytes)

EXERCISES = {
    "7.1": Exercise("7.1", "top_p_filter", 3, check_7_1, forbidden=(apply_top_p, process_logits),
                    why="sort, accumulate the probabilities and scatter back yourself"),
    "7.2": Exercise("7.2", "repetition_penalty", 3, check_7_2, forbidden=(apply_repetition_penalty, process_logits),
                    why="mark the tokens present and apply the two cases yourself"),
    "7.3": Exercise("7.3", "generation_cache_bytes", 4, check_7_3, forbidden=_GENERATION,
                    why="count the cached tokens by replaying the generation loop on numbers, without a model "
                        "(utils.kv_cache_bytes for the bytes of n tokens is allowed)"),
    "7.4": Exercise("7.4", "answer_7_4", 2),
}
