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

Several prompts of different lengths at once: they are LEFT-padded into one (B, T) batch with an
attention mask (`pad_prompts`), so that every row's last token sits in the last column and each
step appends one column. The caches know each row's padding (components/kv_cache.py): every token
gets its position within its own row (the RoPE angle it would get alone), no query ever sees a
padding column, and the window slides per row, when that row's own cache is full (the rows that
are not full are re-prefilled unchanged with it). The penalties look at each row's own history,
and `seed=[s_1, ..., s_B]` gives every row its own generator. So row b of a batch produces the
tokens that prompt b produces alone (greedy: the same argmax; sampled: the same draws from seed
s_b), up to float rounding of the batched kernels.

Entry points: `generate` (what `DeepSeekModel.generate` calls) and `stream_tokens` (the same loop,
one token at a time, for printing as you go or stopping on a decoded string). Beam search, a
deterministic search instead of sampling, is in components/beam_search.py (one prompt at a time).

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


MIN_TEMPERATURE, MAX_TEMPERATURE = 1e-3, 1e3
MAX_PENALTY = 100.0


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

        # Bounds that keep every processed logit finite in float32 (logits are O(10)): dividing by a temperature
        # of 1e-320 or by a repetition penalty of 1e-300, or subtracting a penalty of 1e308, gives inf and then
        # NaN probabilities; no useful setting lies beyond them.
        def is_temperature(value) -> bool:
            return is_number(value) and (value == 0 or MIN_TEMPERATURE <= value <= MAX_TEMPERATURE)

        if not is_temperature(self.temperature):
            bad("temperature", f"must be 0 (greedy) or a number in [{MIN_TEMPERATURE:g}, {MAX_TEMPERATURE:g}]")
        if self.temperature_end is not None and not is_temperature(self.temperature_end):
            bad("temperature_end", f"must be None, 0 or a number in [{MIN_TEMPERATURE:g}, {MAX_TEMPERATURE:g}]")
        if self.top_k is not None and not (is_int(self.top_k) and self.top_k >= 1):
            bad("top_k", "must be None or an integer >= 1")
        if self.top_p is not None and not (is_number(self.top_p) and 0 < self.top_p <= 1):
            bad("top_p", "must be None or a number in (0, 1]")
        if not (is_number(self.repetition_penalty) and 1 / MAX_PENALTY <= self.repetition_penalty <= MAX_PENALTY):
            bad("repetition_penalty", f"must be a number in [{1 / MAX_PENALTY:g}, {MAX_PENALTY:g}] (1 = off)")
        for name in ("presence_penalty", "frequency_penalty"):
            if not (is_number(getattr(self, name)) and abs(getattr(self, name)) <= MAX_PENALTY):
                bad(name, f"must be a number in [-{MAX_PENALTY:g}, {MAX_PENALTY:g}] (0 = off; OpenAI uses -2..2)")
        if not (is_int(self.no_repeat_ngram_size) and self.no_repeat_ngram_size >= 0):
            bad("no_repeat_ngram_size", "must be an integer >= 0 (0 = off)")
        if self.seed is not None and not (is_int(self.seed) and 0 <= self.seed < 2**63):
            bad("seed", "must be None or an integer in [0, 2**63)")     # what torch.Generator.manual_seed takes
        stops = self.stop_tokens if self.stop_tokens is not None else ()
        stops = (stops,) if not isinstance(stops, (tuple, list)) else tuple(stops)    # one id, a list or None
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


def pad_prompts(prompts, pad_id: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Prompts of different lengths (lists of ids or 1-D tensors) -> left-padded (B, T) ids and a
    (B, T) bool attention mask (True on real tokens). The pad id is never attended to."""
    rows = [torch.as_tensor(p) for p in prompts]
    if not rows or any(r.dim() != 1 or r.numel() == 0 or r.dtype.is_floating_point or r.dtype == torch.bool
                       for r in rows):
        raise ValueError("prompts must be a non-empty list of non-empty 1-D sequences of token ids")
    T = max(r.numel() for r in rows)
    idx = torch.full((len(rows), T), pad_id, dtype=torch.long)                   # (B, T)
    mask = torch.zeros(len(rows), T, dtype=torch.bool)                           # (B, T)
    for b, row in enumerate(rows):
        idx[b, T - row.numel():] = row
        mask[b, T - row.numel():] = True
    return idx, mask


def _padding(mask: torch.Tensor | None, idx: torch.Tensor) -> list[int] | None:
    """Leading padding columns per row from a left-padding attention mask; None if there is none."""
    if mask is None:
        return None
    mask = torch.as_tensor(mask, device=idx.device).bool()
    if mask.shape != idx.shape:
        raise ValueError(f"attention_mask has shape {tuple(mask.shape)}, idx {tuple(idx.shape)}: they must match")
    real = mask.sum(dim=1)                                                       # (B,)
    pads = (idx.shape[1] - real).tolist()
    # left padding: each row is False...False True...True, with at least one True
    left_padded = torch.arange(idx.shape[1], device=idx.device)[None, :] >= (idx.shape[1] - real)[:, None]
    if bool((real == 0).any()) or not torch.equal(mask, left_padded):
        raise ValueError("attention_mask must left-pad every row (zeros, then ones) and leave each row at least one "
                         "token; build it with pad_prompts(prompts)")
    return pads if any(pads) else None


def _forward_last(model, idx: torch.Tensor, caches, absorb: bool) -> torch.Tensor:
    """Logits of the last position as fp32 (B, V)."""
    logits, _, _ = model(idx, caches=caches, absorb=absorb)                     # (B, T, V)
    return logits[:, -1, :].float()


def _prefill(model, rows: list[torch.Tensor], absorb: bool) -> tuple[torch.Tensor, list, list[int]]:
    """Left-pad `rows` (1-D token tensors) into a batch, prefill fresh caches -> (logits (B, V), caches, pads)."""
    width = max(r.numel() for r in rows)
    pads = [width - r.numel() for r in rows]
    if not any(pads):                                   # equal lengths: the plain causal path
        batch = torch.stack(rows)                                               # (B, T)
        caches = model.new_caches()
    else:
        batch = torch.stack([torch.cat((r.new_zeros(p), r)) for r, p in zip(rows, pads, strict=True)])  # (B, T)
        caches = model.new_caches(pad=torch.tensor(pads, device=batch.device))
    return _forward_last(model, batch, caches, absorb), caches, pads


@torch.no_grad()
def stream_tokens(model, idx: torch.Tensor, max_new_tokens: int, config: SamplingConfig = SamplingConfig(),
                  absorb: bool = True, attention_mask: torch.Tensor | None = None,
                  row_seeds=None) -> Iterator[tuple[torch.Tensor, list]]:
    """Yield (next_tokens (B, 1), caches) once per new token: the loop that `generate` collects.

    Useful to print as you go or to stop on a decoded string. The caller owns the model mode:
    `generate` switches to eval() and back around this loop. Finished rows (that emitted a stop
    token) keep emitting their stop token; the stream ends once every row has finished.
    attention_mask (B, T): a left-padded batch of prompts (see `pad_prompts`); row_seeds: one seed
    per row, each row sampling from its own generator (then config.seed is not used).
    """
    if not (isinstance(max_new_tokens, int) and max_new_tokens >= 0):
        raise ValueError(f"max_new_tokens={max_new_tokens!r}: must be an integer >= 0")
    out = check_prompt(model, idx)                                              # (B, T)
    if attention_mask is not None:
        attention_mask = torch.as_tensor(attention_mask)[:, -out.shape[1]:]     # cropped like the prompt
    hist_pad = _padding(attention_mask, out) or [0] * out.shape[0]              # padding of each row's history
    B = out.shape[0]
    if row_seeds is not None and (isinstance(row_seeds, int) or len(row_seeds) != B):
        raise ValueError(f"row_seeds must give one seed per row ({B}); got {row_seeds!r}")
    generators = None
    if row_seeds is not None:                   # one local RNG per row: row b alone, with seed b, draws the same
        generators = [torch.Generator(device=out.device).manual_seed(SamplingConfig(seed=s).seed) for s in row_seeds]
    if max_new_tokens == 0:
        return
    context = model.cfg.context_length
    generator = None
    if config.seed is not None and generators is None:   # local RNG: reproducible, global state untouched
        generator = torch.Generator(device=out.device).manual_seed(config.seed)
    stops = torch.tensor(config.stop_tokens, dtype=torch.long, device=out.device)  # (n_stop,)
    finished = torch.zeros(B, 1, dtype=torch.bool, device=out.device)               # (B, 1)
    pad = torch.zeros_like(finished, dtype=torch.long)                              # (B, 1)

    def history(b: int) -> torch.Tensor:        # row b's tokens so far, without padding
        return out[b, hist_pad[b]:]

    # 1) prefill: the whole prompt in one forward; every layer fills its cache
    logits, caches, cache_pad = _prefill(model, [history(b) for b in range(B)], absorb)   # (B, V)
    for step in range(max_new_tokens):
        # 2) process the logits with each row's history and pick one token per row
        temperature = config.temperature_at(step, max_new_tokens)
        if any(hist_pad):                       # rows of different lengths: each row's own history
            logits = torch.cat([process_logits(logits[b:b + 1], history(b)[None], config, temperature)
                                for b in range(B)])
        else:
            logits = process_logits(logits, out, config, temperature)
        if generators is None:
            next_token = sample_token(logits, temperature, generator)           # (B, 1)
        else:
            next_token = torch.cat([sample_token(logits[b:b + 1], temperature, g) for b, g in enumerate(generators)])
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
        # 4) decode step: feed only the new token; a row whose cache is full slides its window to
        #    the last half window (the other rows keep all their tokens: re-prefilled as they are)
        cached = [caches[0].length - p for p in cache_pad]                     # tokens in each row's cache
        if max(cached) >= context:
            keep = max(1, context // 2)
            rows = [history(b)[-keep:] if cached[b] >= context else history(b)[-(cached[b] + 1):]
                    for b in range(B)]
            logits, caches, cache_pad = _prefill(model, rows, absorb)           # re-prefill
        else:
            logits = _forward_last(model, next_token, caches, absorb)           # (B, V)


def generate(model, idx, max_new_tokens: int, absorb: bool = True, return_caches: bool = False,
             attention_mask: torch.Tensor | None = None, **sampling):
    """Continue prompts by max_new_tokens tokens with the KV cache.

    idx (B, T) token ids -> (B, T + new) long. Or a list of prompts of different lengths (lists of
    ids or 1-D tensors) -> a list of 1-D tensors, prompt b (cropped) followed by its new tokens up
    to its first stop token: exactly what generating prompt b alone returns. (A (B, T) idx that is
    already left-padded takes its `attention_mask` from `pad_prompts`.)
    `sampling` takes the fields of `SamplingConfig` by name (temperature=0.8, top_k=40, seed=1, ...);
    `seed` may also be a list of one seed per row (each row then samples as it would alone with its
    seed; one int seeds one generator for the whole batch).
    Rows stop independently at a stop token (kept, then repeated as padding); the output is
    shorter than T + max_new_tokens only if every row stopped. A prompt longer than the context
    is cropped (with a warning), and then the output starts with the cropped prompt.
    With return_caches=True, returns (tokens, caches): the per-layer LayerCaches it used.
    """
    as_list = isinstance(idx, (list, tuple))
    if as_list:
        if attention_mask is not None:
            raise ValueError("pass a list of prompts OR a padded idx with its attention_mask, not both")
        idx, attention_mask = pad_prompts(idx)
    row_seeds = sampling.pop("seed", None)
    if not isinstance(row_seeds, (list, tuple)):
        sampling["seed"], row_seeds = row_seeds, None
    config = SamplingConfig(**sampling)
    prompt = check_prompt(model, idx)                                           # (B, T'), T' <= context
    mask = attention_mask
    if mask is not None:                                                        # cropped like the prompt
        mask = torch.as_tensor(mask, device=prompt.device)[:, -prompt.shape[1]:]
    was_training = model.training
    model.eval()
    try:
        new_tokens, caches = [], []
        for next_token, step_caches in stream_tokens(model, prompt, max_new_tokens, config, absorb,
                                                     attention_mask=mask, row_seeds=row_seeds):
            new_tokens.append(next_token)                                       # (B, 1) each
            caches = step_caches                # the latest (a full window re-prefills new ones)
        out = torch.cat([prompt, *new_tokens], dim=1)                           # (B, T' + new)
    finally:
        model.train(was_training)
    if as_list:
        out = [_unpad(row, m, prompt.shape[1], config.stop_tokens) for row, m in zip(out, mask, strict=True)]
    return (out, caches) if return_caches else out


def _unpad(row: torch.Tensor, mask: torch.Tensor, prompt_width: int, stop_tokens: tuple[int, ...]) -> torch.Tensor:
    """One row of a left-padded output -> its prompt and new tokens, up to and including the first stop token."""
    new = row[prompt_width:]
    if stop_tokens:
        hits = torch.isin(new, torch.tensor(stop_tokens, device=new.device)).nonzero()
        if len(hits):
            new = new[: int(hits[0]) + 1]
    return torch.cat((row[:prompt_width][mask], new))
