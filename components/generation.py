"""Autoregressive generation with a KV cache: logit processors and sampling.

Why a cache: a causal model's output at position t depends only on tokens <= t, so the keys and
values (for MLA: the latent c_KV and the RoPE key) of past tokens never change. We run the
prompt once ("prefill", T tokens in one forward), then feed ONE new token per step while each
attention layer appends what it needs to its `LayerCache`: O(S) work per step instead of O(S^2).

Each step turns the last position's logits z (one row per sequence, V entries) into a token:
    1) repetition penalty (CTRL, Keskar et al. 2019), for tokens already seen:
           z_i <- z_i / p  if z_i > 0  else  z_i * p
    2) presence / frequency penalties (OpenAI API), c_i = count of token i so far:
           z_i <- z_i - presence * [c_i > 0] - frequency * c_i
    3) no-repeat n-gram: z_i <- -inf for every i that would complete an n-gram already present
    4) temperature tau (optionally a linear schedule over the new tokens):  z <- z / tau;
       tau = 0 means greedy decoding (argmax), with no randomness at all
    5) top-k: keep the k largest logits;  6) top-p (nucleus): keep the smallest set of most likely
       tokens whose probability mass is >= p (always at least the top token)
    7) sample from softmax(z) with a local torch.Generator when a seed is given, so runs are
       reproducible and the global RNG state is never touched.

Context limit: positions index the RoPE tables, which have `context_length` rows. A prompt longer
than that is cropped to its last `context_length` tokens (with a warning). When the cache is full
during generation, we keep a sliding window: drop the cache and re-prefill the last HALF window
(context_length // 2 tokens, positions restart at 0). The model then always sees at least half a
window of context, and the re-prefill costs one forward of context_length/2 tokens per
context_length/2 generated tokens -- amortised, about one extra token's work per token.

Entry points: `generate` (what `DeepSeekModel.generate` calls) and `stream_tokens` (the same loop,
one token at a time, for printing as you go or stopping on a decoded string). Beam search, a
deterministic search instead of sampling, is in components/beam_search.py.

Shapes: B batch rows, T prompt tokens, S tokens so far (prompt + generated), V vocabulary.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch


def knob(default, help: str):
    """A SamplingConfig field with its help text: inference.py builds its flags, its ':name value'
    commands and its help from these fields, so each setting is written once, here."""
    return field(default=default, metadata={"help": help})


@dataclass(frozen=True)
class SamplingConfig:
    """Every knob of one sampling run, validated once at construction (each field's help says what it does)."""

    temperature: float = knob(1.0, "softmax temperature tau >= 0; 0 = greedy (argmax), 1 = the model's distribution")
    top_k: int | None = knob(None, "keep the k most likely tokens (none = all)")
    top_p: float | None = knob(None, "nucleus sampling: keep the most likely tokens up to this mass, in (0, 1] "
                                     "(none = off)")
    repetition_penalty: float = knob(1.0, "CTRL penalty p > 0 for tokens already present (1 = off)")
    presence_penalty: float = knob(0.0, "subtract this from the logits of tokens already present (0 = off)")
    frequency_penalty: float = knob(0.0, "subtract this times the token's count so far from its logit (0 = off)")
    no_repeat_ngram_size: int = knob(0, "never repeat an n-gram of this size (0 = off)")
    temperature_end: float | None = knob(None, "linear temperature schedule: tau at the last new token "
                                               "(none = constant)")
    stop_tokens: tuple[int, ...] = knob((), "token ids that end a row (the stop token is kept in the output)")
    seed: int | None = knob(None, "seed of a local torch.Generator, for reproducible sampling (none = global RNG)")

    def __post_init__(self) -> None:
        def bad(name: str, why: str) -> None:
            raise ValueError(f"{name}={getattr(self, name)!r}: {why}")

        def is_int(value) -> bool:
            return isinstance(value, int) and not isinstance(value, bool)

        def is_number(value) -> bool:
            return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)

        if not (is_number(self.temperature) and self.temperature >= 0):
            bad("temperature", "must be a finite number >= 0 (0 = greedy)")
        if self.temperature_end is not None and not (is_number(self.temperature_end) and self.temperature_end >= 0):
            bad("temperature_end", "must be None or a finite number >= 0")
        if self.top_k is not None and not (is_int(self.top_k) and self.top_k >= 1):
            bad("top_k", "must be None or an integer >= 1")
        if self.top_p is not None and not (is_number(self.top_p) and 0 < self.top_p <= 1):
            bad("top_p", "must be None or a number in (0, 1]")
        if not (is_number(self.repetition_penalty) and self.repetition_penalty > 0):
            bad("repetition_penalty", "must be a finite number > 0 (1 = off)")
        for name in ("presence_penalty", "frequency_penalty"):
            if not is_number(getattr(self, name)):
                bad(name, "must be a finite number (0 = off; OpenAI uses -2..2)")
        if not (is_int(self.no_repeat_ngram_size) and self.no_repeat_ngram_size >= 0):
            bad("no_repeat_ngram_size", "must be an integer >= 0 (0 = off)")
        if self.seed is not None and not (is_int(self.seed) and self.seed >= 0):
            bad("seed", "must be None or an integer >= 0")
        stops = (self.stop_tokens,) if is_int(self.stop_tokens) else tuple(self.stop_tokens or ())
        if not all(is_int(t) and t >= 0 for t in stops):
            bad("stop_tokens", "must be a token id >= 0 or a sequence of them")
        object.__setattr__(self, "stop_tokens", stops)   # accept one id, a list or None; store a tuple (hashable)

    def temperature_at(self, step: int, n_steps: int) -> float:
        """tau for new token number `step` (0-based) of `n_steps`: linear from temperature to temperature_end."""
        if self.temperature_end is None or n_steps <= 1:
            return self.temperature
        return self.temperature + (self.temperature_end - self.temperature) * step / (n_steps - 1)


# --- pure logit processors: (B, V) logits + (B, S) history -> (B, V) logits -----------------------

def token_counts(tokens: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """c[b, i] = how many times token i occurs in row b of tokens (B, S) -> (B, V) float."""
    counts = torch.zeros(tokens.shape[0], vocab_size, device=tokens.device)
    return counts.scatter_add_(1, tokens, torch.ones_like(tokens, dtype=counts.dtype))


def apply_repetition_penalty(logits: torch.Tensor, tokens: torch.Tensor, penalty: float) -> torch.Tensor:
    """CTRL (Keskar et al. 2019): for tokens present, z <- z / p if z > 0 else z * p (p > 1 discourages)."""
    if penalty == 1.0:
        return logits
    present = token_counts(tokens, logits.shape[-1]) > 0                       # (B, V)
    penalised = torch.where(logits > 0, logits / penalty, logits * penalty)     # (B, V)
    return torch.where(present, penalised, logits)


def apply_presence_frequency_penalty(logits: torch.Tensor, tokens: torch.Tensor,
                                     presence: float, frequency: float) -> torch.Tensor:
    """OpenAI-style: z_i <- z_i - presence * [c_i > 0] - frequency * c_i, c_i = count of token i so far."""
    if presence == 0.0 and frequency == 0.0:
        return logits
    counts = token_counts(tokens, logits.shape[-1])                             # (B, V)
    return logits - presence * (counts > 0).to(logits.dtype) - frequency * counts


def banned_ngram_tokens(tokens: torch.Tensor, n: int, vocab_size: int) -> torch.Tensor:
    """(B, V) bool: token i is banned in row b if (last n-1 tokens of b, i) is an n-gram already in b.

    n = 1 bans every token already present; rows shorter than n ban nothing.
    """
    B, S = tokens.shape
    banned = torch.zeros(B, vocab_size, dtype=torch.long, device=tokens.device)
    if n <= 0 or S < n:
        return banned.bool()
    # 1) every n-gram in the row, and the n-1 tokens the next token would extend
    ngrams = tokens.unfold(1, n, 1)                                             # (B, S-n+1, n)
    prefix = tokens[:, S - (n - 1):]                                            # (B, n-1)
    # 2) n-grams whose first n-1 tokens equal that prefix (all() over an empty dim is True: n = 1)
    matches = (ngrams[:, :, :-1] == prefix[:, None, :]).all(dim=-1)           # (B, S-n+1)
    # 3) their last tokens are banned (scatter_add, so repeated ids cannot overwrite a True)
    banned.scatter_add_(1, ngrams[:, :, -1], matches.long())                   # (B, V)
    return banned > 0


def apply_no_repeat_ngram(logits: torch.Tensor, tokens: torch.Tensor, n: int) -> torch.Tensor:
    """z_i <- -inf for every token i that would complete an n-gram already present (0 = off)."""
    if n == 0:
        return logits
    return logits.masked_fill(banned_ngram_tokens(tokens, n, logits.shape[-1]), float("-inf"))


def apply_temperature(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """z <- z / tau. tau = 0 is greedy decoding and is handled by the sampler (argmax), not here."""
    return logits if temperature in (0.0, 1.0) else logits / temperature


def apply_top_k(logits: torch.Tensor, k: int | None) -> torch.Tensor:
    """Keep exactly the k largest logits of each row; the rest become -inf (None = off)."""
    if k is None or k >= logits.shape[-1]:
        return logits
    values, indices = logits.topk(k, dim=-1)                                    # (B, k)
    return torch.full_like(logits, float("-inf")).scatter_(-1, indices, values)


def apply_top_p(logits: torch.Tensor, p: float | None) -> torch.Tensor:
    """Nucleus (Holtzman et al. 2019): keep the smallest set of most likely tokens with mass >= p.

    A token is dropped when the mass of the tokens strictly more likely than it already reaches p;
    the most likely token has mass 0 before it, so it is always kept.
    """
    if p is None or p >= 1.0:
        return logits
    sorted_logits, order = logits.sort(dim=-1, descending=True)                # (B, V)
    probs = sorted_logits.softmax(dim=-1)                                       # (B, V)
    mass_before = probs.cumsum(dim=-1) - probs                                  # (B, V)
    sorted_logits = sorted_logits.masked_fill(mass_before >= p, float("-inf"))
    return torch.empty_like(logits).scatter_(-1, order, sorted_logits)         # back to vocab order


def process_logits(logits: torch.Tensor, tokens: torch.Tensor, config: SamplingConfig,
                   temperature: float) -> torch.Tensor:
    """Steps 1-6 of the module docstring, in that order: (B, V) logits, (B, S) history -> (B, V)."""
    logits = apply_repetition_penalty(logits, tokens, config.repetition_penalty)
    logits = apply_presence_frequency_penalty(logits, tokens, config.presence_penalty, config.frequency_penalty)
    logits = apply_no_repeat_ngram(logits, tokens, config.no_repeat_ngram_size)
    if temperature == 0:
        return logits                       # greedy: the argmax ignores scaling, top-k and top-p
    logits = apply_temperature(logits, temperature)
    logits = apply_top_k(logits, config.top_k)
    return apply_top_p(logits, config.top_p)


def sample_token(logits: torch.Tensor, temperature: float, generator: torch.Generator | None) -> torch.Tensor:
    """(B, V) processed logits -> (B, 1) token ids: argmax if tau = 0, else a draw from softmax."""
    if temperature == 0:
        return logits.argmax(dim=-1, keepdim=True)                              # (B, 1)
    probs = logits.softmax(dim=-1)                                              # (B, V)
    return torch.multinomial(probs, num_samples=1, generator=generator)        # (B, 1)


# --- the decoding loop ------------------------------------------------------------------------

def _model_device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


def check_prompt(model, idx: torch.Tensor) -> torch.Tensor:
    """Validate (B, T) token ids and crop them to the last context_length tokens (warn once)."""
    if (not isinstance(idx, torch.Tensor) or idx.dim() != 2 or idx.shape[1] == 0
            or idx.dtype.is_floating_point or idx.dtype.is_complex or idx.dtype == torch.bool):
        got = f"{idx.dtype} {tuple(idx.shape)}" if isinstance(idx, torch.Tensor) else type(idx).__name__
        raise ValueError(f"idx must be a (B, T) tensor of token ids with T >= 1; got {got}")
    context = model.cfg.context_length
    if idx.shape[1] > context:
        warnings.warn(f"prompt has {idx.shape[1]} tokens, more than context_length={context}; "
                      f"cropping it to its last {context} tokens", stacklevel=3)
        idx = idx[:, -context:]
    return idx.to(device=_model_device(model), dtype=torch.long)


def _forward_last(model, idx: torch.Tensor, caches, absorb: bool) -> torch.Tensor:
    """Logits of the last position as fp32 (B, V)."""
    logits, _, _ = model(idx, caches=caches, absorb=absorb)                     # (B, T, V)
    return logits[:, -1, :].float()


@torch.no_grad()
def stream_tokens(model, idx: torch.Tensor, max_new_tokens: int, config: SamplingConfig = SamplingConfig(),
                  absorb: bool = True) -> Iterator[tuple[torch.Tensor, list]]:
    """Yield (next_tokens (B, 1), caches) once per new token: the loop that `generate` collects.

    Useful to print as you go or to stop on a decoded string. The caller owns the model mode:
    `generate` switches to eval() and back around this loop. Finished rows (that emitted a stop
    token) keep emitting their stop token; the stream ends once every row has finished.
    """
    if not (isinstance(max_new_tokens, int) and max_new_tokens >= 0):
        raise ValueError(f"max_new_tokens={max_new_tokens!r}: must be an integer >= 0")
    out = check_prompt(model, idx)                                              # (B, T)
    if max_new_tokens == 0:
        return
    context = model.cfg.context_length
    generator = None
    if config.seed is not None:                 # local RNG: reproducible, global state untouched
        generator = torch.Generator(device=out.device).manual_seed(config.seed)
    stops = torch.tensor(config.stop_tokens, dtype=torch.long, device=out.device)  # (n_stop,)
    finished = torch.zeros(out.shape[0], 1, dtype=torch.bool, device=out.device)   # (B, 1)
    pad = torch.zeros_like(finished, dtype=torch.long)                              # (B, 1)

    # 1) prefill: the whole prompt in one forward; every layer fills its cache
    caches = model.new_caches()
    logits = _forward_last(model, out, caches, absorb)                          # (B, V)
    for step in range(max_new_tokens):
        # 2) process the logits with the history so far and pick one token per row
        temperature = config.temperature_at(step, max_new_tokens)
        logits = process_logits(logits, out, config, temperature)
        next_token = sample_token(logits, temperature, generator)               # (B, 1)
        # 3) rows that already stopped repeat their stop token (padding)
        next_token = torch.where(finished, pad, next_token)                     # (B, 1)
        out = torch.cat((out, next_token), dim=1)                               # (B, S+1)
        if stops.numel():
            just_stopped = torch.isin(next_token, stops) & ~finished
            pad = torch.where(just_stopped, next_token, pad)
            finished |= just_stopped
        yield next_token, caches
        if step == max_new_tokens - 1 or (stops.numel() and bool(finished.all())):   # (one host sync)
            return
        # 4) decode step: feed only the new token; when the cache is full, slide the window
        if caches[0].length >= context:
            caches = model.new_caches()
            logits = _forward_last(model, out[:, -max(1, context // 2):], caches, absorb)   # re-prefill
        else:
            logits = _forward_last(model, next_token, caches, absorb)           # (B, V)


def generate(model, idx: torch.Tensor, max_new_tokens: int, absorb: bool = True, return_caches: bool = False,
             **sampling):
    """Continue (B, T) prompts by max_new_tokens tokens with the KV cache -> (B, T + new) long.

    `sampling` takes the fields of `SamplingConfig` by name (temperature=0.8, top_k=40, seed=1, ...).
    Rows stop independently at a stop token (kept, then repeated as padding); the output is
    shorter than T + max_new_tokens only if every row stopped. A prompt longer than the context
    is cropped (with a warning), and then the output starts with the cropped prompt.
    With return_caches=True, returns (tokens, caches): the per-layer LayerCaches it used.
    """
    config = SamplingConfig(**sampling)
    prompt = check_prompt(model, idx)                                           # (B, T'), T' <= context
    was_training = model.training
    model.eval()
    try:
        new_tokens, caches = [], []
        for next_token, step_caches in stream_tokens(model, prompt, max_new_tokens, config, absorb):
            new_tokens.append(next_token)                                       # (B, 1) each
            caches = step_caches                # the latest (a full window re-prefills new ones)
        out = torch.cat([prompt, *new_tokens], dim=1)                           # (B, T' + new)
    finally:
        model.train(was_training)
    return (out, caches) if return_caches else out
