"""Generation: logit processors match their formulas, sampling is reproducible, the cached loop
decodes exactly what a full forward per step would, and beam search beats or equals greedy."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from torch import nn

from components.beam_search import beam_search, sequence_log_prob
from components.deepseek_model import DeepSeekModel
from components.generation import (
    SamplingConfig,
    apply_no_repeat_ngram,
    apply_presence_frequency_penalty,
    apply_repetition_penalty,
    apply_temperature,
    apply_top_k,
    apply_top_p,
    banned_ngram_tokens,
    generate,
)
from components.kv_cache import LayerCache
from constants import TINY

NEG_INF = float("-inf")
VOCAB = 61


def tiny_model(attention: str = "mla", **overrides) -> DeepSeekModel:
    """A very small model with large random weights, so greedy paths are varied (not one token repeated)."""
    cfg = replace(TINY, vocab_size=VOCAB, context_length=24, d_model=32, kv_latent_dim=8,
                  expert_hidden_dim=32, attention=attention, **overrides)
    torch.manual_seed(0)
    model = DeepSeekModel(cfg)
    with torch.no_grad():
        for param in model.parameters():
            if param.dim() > 1:
                param.normal_(0.0, 0.3)
    return model.eval()


@pytest.fixture(scope="module")
def model() -> DeepSeekModel:
    return tiny_model()


@pytest.fixture
def prompt() -> torch.Tensor:
    return torch.tensor([[3, 14, 15, 9, 26]])


class CountingModel(nn.Module):
    """Stub honouring the model contract: always predicts (last token + 1) mod V, with a real cache."""

    def __init__(self, vocab_size: int = 10, context_length: int = 32) -> None:
        super().__init__()
        self.cfg = replace(TINY, vocab_size=vocab_size, context_length=context_length)
        self.anchor = nn.Parameter(torch.zeros(()))     # gives the stub a device

    def new_caches(self) -> list[LayerCache]:
        return [LayerCache()]

    def forward(self, idx, targets=None, caches=None, absorb=False):
        if caches:
            caches[0].append(ids=idx[..., None].float())
        logits = 10.0 * nn.functional.one_hot((idx + 1) % self.cfg.vocab_size, self.cfg.vocab_size).float()
        return logits + self.anchor, None, {}


def full_forward_greedy(model, idx, max_new_tokens, absorb=True):
    """Reference without a cache: one full forward over the window per step, with the same sliding rule."""
    out, window = idx, idx.shape[1]
    context = model.cfg.context_length
    for _ in range(max_new_tokens):
        logits, _, _ = model(out[:, -window:], absorb=absorb)
        out = torch.cat((out, logits[:, -1].argmax(-1, keepdim=True)), dim=1)
        window = context // 2 if window >= context else window + 1
    return out


# --- logit processors on hand-made logits ----------------------------------------------------------

def test_repetition_penalty_divides_positive_and_multiplies_negative_logits():
    logits = torch.tensor([[2.0, -1.0, 0.5, -3.0]])
    history = torch.tensor([[0, 1, 1]])
    expected = torch.tensor([[1.0, -2.0, 0.5, -3.0]])      # only tokens 0 and 1 were seen
    torch.testing.assert_close(apply_repetition_penalty(logits, history, 2.0), expected)
    torch.testing.assert_close(apply_repetition_penalty(logits, history, 1.0), logits)


def test_presence_and_frequency_penalties_subtract_flag_and_count():
    logits = torch.tensor([[2.0, -1.0, 0.5, -3.0], [0.0, 0.0, 0.0, 0.0]])
    history = torch.tensor([[0, 1, 1], [3, 3, 3]])
    expected = torch.tensor([[2.0 - 0.5 - 0.25, -1.0 - 0.5 - 0.5, 0.5, -3.0],
                             [0.0, 0.0, 0.0, -0.5 - 0.75]])
    torch.testing.assert_close(apply_presence_frequency_penalty(logits, history, 0.5, 0.25), expected)


@pytest.mark.parametrize(("history", "n", "banned"), [
    ([1, 2, 3, 1, 2], 3, {3}),                 # (1, 2) was followed by 3
    ([1, 2, 3, 1, 2, 4, 1, 2], 3, {3, 4}),     # ... and by 4
    ([5, 6, 5], 2, {6}),
    ([5, 6, 5], 1, {5, 6}),                    # n = 1: every token seen
    ([1, 2], 3, set()),                        # shorter than n: nothing to repeat
    ([1, 2, 3, 4], 2, set()),                  # the last token 4 never had a successor
])
def test_no_repeat_ngram_bans_exactly_the_completing_tokens(history, n, banned):
    mask = banned_ngram_tokens(torch.tensor([history]), n, 8)
    assert set(mask[0].nonzero().flatten().tolist()) == banned
    logits = apply_no_repeat_ngram(torch.zeros(1, 8), torch.tensor([history]), n)
    assert set((logits[0] == NEG_INF).nonzero().flatten().tolist()) == banned


def test_no_repeat_ngram_works_per_row():
    history = torch.tensor([[1, 2, 1], [2, 1, 2]])
    mask = banned_ngram_tokens(history, 2, 4)
    assert mask.tolist() == [[False, False, True, False], [False, True, False, False]]


def test_temperature_scales_logits():
    logits = torch.tensor([[1.0, -2.0, 4.0]])
    torch.testing.assert_close(apply_temperature(logits, 0.5), logits / 0.5)
    torch.testing.assert_close(apply_temperature(logits, 2.0).softmax(-1), (logits / 2).softmax(-1))


def test_top_k_keeps_the_k_largest():
    logits = torch.tensor([[1.0, 4.0, 2.0, 3.0]])
    torch.testing.assert_close(apply_top_k(logits, 2), torch.tensor([[NEG_INF, 4.0, NEG_INF, 3.0]]))
    torch.testing.assert_close(apply_top_k(logits, 10), logits)


@pytest.mark.parametrize(("p", "kept"), [(0.4, {1}), (0.75, {1, 3}), (0.85, {1, 3, 0}), (1.0, {0, 1, 2, 3})])
def test_top_p_keeps_the_smallest_set_with_mass_at_least_p(p, kept):
    probs = torch.tensor([[0.15, 0.5, 0.05, 0.3]])          # sorted: 1 (0.5), 3 (0.3), 0 (0.15), 2 (0.05)
    logits = probs.log()
    filtered = apply_top_p(logits, p)
    assert set(filtered[0].isfinite().nonzero().flatten().tolist()) == kept
    kept_ids = sorted(kept)
    torch.testing.assert_close(filtered[0, kept_ids], logits[0, kept_ids])   # kept logits unchanged
    assert probs[0, kept_ids].sum() >= p - 1e-6


def test_top_p_always_keeps_the_top_token():
    logits = torch.tensor([[0.0, 10.0, 0.0]])
    assert apply_top_p(logits, 1e-6)[0].isfinite().tolist() == [False, True, False]


# --- SamplingConfig --------------------------------------------------------------------------------

@pytest.mark.parametrize(("field", "value"), [
    ("temperature", -0.1), ("temperature", float("nan")), ("temperature_end", -1.0), ("top_k", 0),
    ("top_k", 2.5), ("top_p", 0.0), ("top_p", 1.5), ("repetition_penalty", 0.0),
    ("presence_penalty", float("inf")), ("frequency_penalty", float("nan")), ("no_repeat_ngram_size", -1),
    ("stop_tokens", (1, -2)), ("seed", -3),
])
def test_sampling_config_rejects_invalid_values(field, value):
    with pytest.raises(ValueError, match=field) as err:
        SamplingConfig(**{field: value})
    assert "\n" not in str(err.value)


def test_sampling_config_temperature_schedule_is_linear():
    config = SamplingConfig(temperature=1.0, temperature_end=0.0)
    assert [config.temperature_at(step, 5) for step in range(5)] == [1.0, 0.75, 0.5, 0.25, 0.0]
    assert SamplingConfig(temperature=0.7).temperature_at(3, 5) == 0.7
    assert SamplingConfig(stop_tokens=[4, 5]).stop_tokens == (4, 5)


def test_generate_rejects_invalid_sampling_values(model, prompt):
    with pytest.raises(ValueError, match="top_p"):
        generate(model, prompt, 3, top_p=2.0)
    with pytest.raises(ValueError, match="max_new_tokens"):
        generate(model, prompt, -1)


# --- sampling behaviour on a real tiny model -------------------------------------------------------

def test_top_k_one_equals_greedy(model, prompt):
    greedy = generate(model, prompt, 12, temperature=0)
    assert torch.equal(generate(model, prompt, 12, temperature=1.3, top_k=1, seed=5), greedy)
    assert greedy.shape == (1, prompt.shape[1] + 12)
    assert torch.equal(greedy[:, :prompt.shape[1]], prompt)


def test_seeded_sampling_is_reproducible_and_seeds_differ(model, prompt):
    first = generate(model, prompt, 15, seed=1)
    assert torch.equal(first, generate(model, prompt, 15, seed=1))
    assert not torch.equal(first, generate(model, prompt, 15, seed=2))


def test_seeded_sampling_leaves_the_global_rng_untouched(model, prompt):
    state = torch.get_rng_state()
    generate(model, prompt, 10, seed=3, top_p=0.9)
    assert torch.equal(torch.get_rng_state(), state)


def test_temperature_schedule_in_generate(model, prompt):
    constant = generate(model, prompt, 8, temperature=0.7, seed=4)
    assert torch.equal(generate(model, prompt, 8, temperature=0.7, temperature_end=0.7, seed=4), constant)
    # a schedule ending at 0 makes the last token greedy given everything before it
    out = generate(model, prompt, 8, temperature=1.5, temperature_end=0.0, seed=4)
    logits, _, _ = model(out[:, :-1])
    assert out[0, -1].item() == logits[0, -1].argmax().item()


def test_generate_restores_training_mode(prompt):
    model = tiny_model().train()
    generate(model, prompt, 2)
    assert model.training


def test_stop_token_ends_generation(model, prompt):
    greedy = generate(model, prompt, 12, temperature=0)
    stop = greedy[0, prompt.shape[1] + 3].item()            # the 4th new token
    first = (greedy[0, prompt.shape[1]:] == stop).nonzero()[0].item()
    out = generate(model, prompt, 12, temperature=0, stop_tokens=[stop])
    assert torch.equal(out, greedy[:, :prompt.shape[1] + first + 1])   # stop token kept, nothing after


def test_stop_tokens_finish_rows_independently_and_pad():
    stub = CountingModel(vocab_size=10)
    out = generate(stub, torch.tensor([[3], [0]]), 9, temperature=0, stop_tokens=[6])
    assert out.tolist() == [[3, 4, 5, 6, 6, 6, 6], [0, 1, 2, 3, 4, 5, 6]]


def test_long_prompt_is_cropped_with_a_warning(model):
    long_prompt = torch.arange(40).remainder(VOCAB)[None, :]        # 40 > context_length 24
    with pytest.warns(UserWarning, match="cropping it to its last 24 tokens"):
        out = generate(model, long_prompt, 3, temperature=0)
    assert out.shape == (1, 27)
    assert torch.equal(out[:, :24], long_prompt[:, -24:])


# --- the cache: decoding step by step == a full forward per step ----------------------------------

@pytest.mark.parametrize(("attention", "overrides", "absorb"), [
    ("mla", {}, True), ("mla", {}, False), ("mha", {}, True), ("gqa", {"n_kv_heads": 2}, True),
    ("mqa", {}, True), ("linear", {}, True),
])
def test_cached_generation_equals_full_forward_greedy(attention, overrides, absorb):
    model = tiny_model(attention, **overrides)
    prompt = torch.tensor([[3, 14, 15, 9, 26], [2, 7, 1, 8, 28]])
    new = model.cfg.context_length - prompt.shape[1]          # fill the context exactly
    out, caches = generate(model, prompt, new, temperature=0, absorb=absorb, return_caches=True)
    assert torch.equal(out, full_forward_greedy(model, prompt, new, absorb))
    assert len(caches) == model.cfg.n_layers
    assert caches[0].length == out.shape[1] - 1               # the last token is never fed back
    if attention == "mla":
        assert caches[0].values_per_token() == model.cfg.kv_latent_dim + model.cfg.resolved().rope_head_dim


def test_generation_past_the_context_slides_a_half_window(model, prompt):
    new = 2 * model.cfg.context_length                        # re-prefills several times
    out = generate(model, prompt, new, temperature=0)
    assert out.shape == (1, prompt.shape[1] + new)
    assert torch.equal(out, full_forward_greedy(model, prompt, new))


# --- beam search -----------------------------------------------------------------------------------

def test_beam_search_with_one_beam_is_greedy(model, prompt):
    greedy = generate(model, prompt, 10, temperature=0)
    assert torch.equal(beam_search(model, prompt, 10, num_beams=1), greedy)


def test_beam_search_scores_at_least_greedy(model, prompt):
    n = prompt.shape[1]
    # with 2 new tokens greedy's path is always among the candidates, so beam search cannot lose
    for new in (2, 6):
        greedy = generate(model, prompt, new, temperature=0)
        best = beam_search(model, prompt, new, num_beams=4)
        assert best.shape == greedy.shape
        assert sequence_log_prob(model, best, n) >= sequence_log_prob(model, greedy, n) - 1e-5


def test_beam_search_stops_at_a_stop_token():
    stub = CountingModel(vocab_size=10)
    assert beam_search(stub, torch.tensor([[2]]), 8, num_beams=3, stop_tokens=[5]).tolist() == [[2, 3, 4, 5]]
    with pytest.raises(ValueError, match="num_beams"):
        beam_search(stub, torch.tensor([[2]]), 8, num_beams=0)
