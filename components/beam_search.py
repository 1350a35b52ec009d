"""Beam search: a deterministic search for a likely continuation, instead of sampling one.

Sampling (components/generation.py) draws each token from the processed distribution; greedy
decoding takes the single best token each step, which can miss a sequence whose first token is
second best but whose continuation is much more likely. Beam search keeps the N partial sequences
(beams) with the highest total log-probability
    score(y_1..y_n) = sum_{t<=n} log p(y_t | prompt, y_<t)
and extends each by its best tokens every step. A finished hypothesis (ending in a stop token) is
ranked by score / n ** length_penalty, so that short outputs are not favoured just for having
fewer negative terms. With N = 1 it is greedy decoding, exactly.

Shapes: T prompt tokens, S tokens so far (prompt + generated), V vocabulary, N beams.
"""

from __future__ import annotations

import torch

from components.generation import check_prompt


@torch.no_grad()
def sequence_log_prob(model, tokens: torch.Tensor, prompt_length: int, absorb: bool = True) -> float:
    """Sum of log p(token_t | tokens_<t) over the generated part tokens[:, prompt_length:] (batch 1)."""
    logits, _, _ = model(tokens[:, -model.cfg.context_length:], absorb=absorb)  # (1, S, V)
    log_probs = logits.float().log_softmax(dim=-1)[0, :-1]                      # (S-1, V): predicts t+1
    targets = tokens[0, -logits.shape[1] + 1:]                                   # (S-1,)
    picked = log_probs.gather(-1, targets[:, None])[:, 0]                       # (S-1,)
    n_new = tokens.shape[1] - prompt_length
    return picked[-n_new:].sum().item() if n_new else 0.0


@torch.no_grad()
def beam_search(model, idx: torch.Tensor, max_new_tokens: int, num_beams: int = 4, length_penalty: float = 1.0,
                stop_tokens=None, absorb: bool = True) -> torch.Tensor:
    """Deterministic search for a likely continuation of one prompt (1, T) -> best (1, T + new).

    Keeps the N partial sequences with the highest total log-probability. Each step ranks the
    (1 + n_stop) * N best (beam, token) extensions (at least 2N; so that N of them never end in a
    stop token), finishes the candidates that end in a stop token AND rank among the N best (one
    ranked lower is dropped: N live beams beat it), and keeps the N best others as the beams. At the
    last step (max_new_tokens) the N best candidates all finish, stop token or not. Stops there, or
    once N sequences finished. The winner maximises
    log p / new_tokens ** length_penalty (> 0 favours longer outputs). This is transformers'
    `generate(num_beams=N, early_stopping=True, length_penalty=...)`, checked against it on random
    models (tests/test_hugging_face_format.py). For clarity each step recomputes a full forward over the beams
    (no cache).
    """
    if not (isinstance(num_beams, int) and num_beams >= 1):
        raise ValueError(f"num_beams={num_beams!r}: must be an integer >= 1")
    if not (isinstance(max_new_tokens, int) and max_new_tokens >= 0):
        raise ValueError(f"max_new_tokens={max_new_tokens!r}: must be an integer >= 0")
    prompt = check_prompt(model, idx)
    if prompt.shape[0] != 1:
        raise ValueError(f"beam search takes one prompt at a time (1, T), got a batch of {prompt.shape[0]}: call it "
                         "once per prompt (generate() decodes a batch of prompts together)")
    stops = {stop_tokens} if isinstance(stop_tokens, int) else set(stop_tokens or ())
    context = model.cfg.context_length
    was_training = model.training
    model.eval()
    try:
        beams = prompt                                                          # (N, S), N = 1 at first
        scores = torch.zeros(1, device=prompt.device)                           # (N,) total log-probs
        finished: list[tuple[float, torch.Tensor]] = []                         # (normalised score, (S,))
        n_new = 0
        while n_new < max_new_tokens and len(finished) < num_beams and len(beams):
            n_new += 1
            # 1) log-probs of every next token for every beam (full forward, cropped to the context)
            logits, _, _ = model(beams[:, -context:], absorb=absorb)           # (N, S, V)
            log_probs = logits[:, -1, :].float().log_softmax(dim=-1)            # (N, V)
            V = log_probs.shape[-1]
            # 2) the (1 + n_stop) * N best (beam, token) extensions by total log-probability
            totals = (scores[:, None] + log_probs).flatten()                   # (N*V,)
            top_scores, top_ids = totals.topk(min(max(2, 1 + len(stops)) * num_beams, totals.numel()))
            kept_seqs, kept_scores = [], []
            for rank, (score, flat_id) in enumerate(zip(top_scores.tolist(), top_ids.tolist(), strict=True)):
                beam, token = divmod(flat_id, V)
                seq = torch.cat((beams[beam], beams.new_tensor([token])))       # (S+1,)
                # 3) a finished hypothesis (if among the N best), scored with the length penalty: one that
                # ends in a stop token, or any at the last step (the live beams compete with the finished)
                if token in stops or n_new == max_new_tokens:
                    if rank < num_beams:
                        finished.append((score / n_new ** length_penalty, seq))
                else:
                    kept_seqs.append(seq)
                    kept_scores.append(score)
                    if len(kept_seqs) == num_beams:
                        break
            beams = torch.stack(kept_seqs) if kept_seqs else beams[:0]         # (N, S+1)
            scores = scores.new_tensor(kept_scores)                             # (N,)
    finally:
        model.train(was_training)
    if not finished:
        return prompt
    return max(finished, key=lambda item: item[0])[1][None, :]                 # (1, T + new)
