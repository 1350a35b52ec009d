"""Chapter 7 exercise checkers: a stub is NOT ATTEMPTED, a wrong answer FAILs, a right one PASSes, and an
answer that hands the work to the library FAILs saying so."""

import torch

import utils
from components.deepseek_model import DeepSeekModel
from components.generation import SamplingConfig, apply_repetition_penalty, apply_top_p, process_logits
from exercises import FAIL, check_exercise
from tests.exercise_checks import exercise_checks


# --- correct answers (the same as the solutions notebook) ------------------------------------
def top_p_filter(logits, p):
    sorted_logits, order = logits.sort(dim=-1, descending=True)               # (B, V)
    probs = sorted_logits.softmax(dim=-1)
    mass_before = probs.cumsum(dim=-1) - probs                                # mass of the more likely tokens
    sorted_logits = sorted_logits.masked_fill(mass_before >= p, float("-inf"))
    return torch.empty_like(logits).scatter_(-1, order, sorted_logits)       # back to vocabulary order


def repetition_penalty(logits, tokens, penalty):
    present = torch.zeros_like(logits, dtype=torch.bool).scatter_(1, tokens, True)   # (B, V)
    penalised = torch.where(logits > 0, logits / penalty, logits * penalty)
    return torch.where(present, penalised, logits)


def cached_tokens(context_length, prompt_tokens, new_tokens):
    length = min(prompt_tokens, context_length)            # prefill (a long prompt is cropped)
    for _ in range(new_tokens - 1):                        # every new token but the last is fed back
        if length >= context_length:
            length = max(1, context_length // 2)           # sliding window: re-prefill the last half
        else:
            length += 1
    return length


def generation_cache_bytes(cfg, prompt_tokens, new_tokens, bytes_per_value=4):
    n = cached_tokens(cfg.context_length, prompt_tokens, new_tokens)
    return utils.kv_cache_bytes(cfg, n, bytes_per_value=bytes_per_value)


# --- deliberately wrong answers ----------------------------------------------------------------
def top_p_cumsum_le(logits, p):
    """Keeps only tokens whose running mass (including themselves) is <= p: drops the one that crosses p."""
    sorted_logits, order = logits.sort(dim=-1, descending=True)
    cum = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
    drop = cum > p
    drop[..., 0] = False
    sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
    return torch.empty_like(logits).scatter_(-1, order, sorted_logits)


def top_p_no_scatter_back(logits, p):
    sorted_logits, _ = logits.sort(dim=-1, descending=True)
    probs = sorted_logits.softmax(dim=-1)
    return sorted_logits.masked_fill(probs.cumsum(dim=-1) - probs >= p, float("-inf"))


def penalty_divides_all(logits, tokens, penalty):
    present = torch.zeros_like(logits, dtype=torch.bool).scatter_(1, tokens, True)
    return torch.where(present, logits / penalty, logits)


def penalty_on_every_token(logits, tokens, penalty):
    return torch.where(logits > 0, logits / penalty, logits * penalty)


def cache_bytes_with_last_token(cfg, prompt_tokens, new_tokens, bytes_per_value=4):
    return utils.kv_cache_bytes(cfg, prompt_tokens + new_tokens, bytes_per_value=bytes_per_value)


def cache_bytes_without_window(cfg, prompt_tokens, new_tokens, bytes_per_value=4):
    return utils.kv_cache_bytes(cfg, prompt_tokens + new_tokens - 1, bytes_per_value=bytes_per_value)

# --- answers that hand the work to the library -----------------------------------------------------
def top_p_through_process_logits(logits, p):
    return process_logits(logits, logits.new_zeros(logits.shape[0], 0, dtype=torch.long), SamplingConfig(top_p=p),
                          temperature=1.0)


def repetition_penalty_from_the_library(logits, tokens, penalty):
    return apply_repetition_penalty(logits, tokens, penalty)


def cache_bytes_by_generating(cfg, prompt_tokens, new_tokens, bytes_per_value=4):
    model = DeepSeekModel(cfg)
    _, caches = model.generate(torch.zeros(1, prompt_tokens, dtype=torch.long), new_tokens, temperature=0,
                               return_caches=True)
    return utils.measured_cache_bytes(caches) * bytes_per_value // 4


CORRECT = {"7.1": top_p_filter, "7.2": repetition_penalty, "7.3": generation_cache_bytes,
           "7.4": "Top-k keeps 40 tokens even when one token has almost all the mass; top-p adapts to the shape."}
WRONG = [
    ("7.1", top_p_cumsum_le, "one token too few"),
    ("7.1", top_p_no_scatter_back, "vocabulary order"),
    ("7.2", penalty_divides_all, "NEGATIVE"),
    ("7.2", penalty_on_every_token, "only tokens that already occur"),
    ("7.3", cache_bytes_with_last_token, "never fed back"),
    ("7.3", cache_bytes_without_window, "context_length // 2"),
    ("7.1", apply_top_p, "components.generation.apply_top_p"),
    ("7.1", top_p_through_process_logits, "components.generation.process_logits"),
    ("7.2", repetition_penalty_from_the_library, "components.generation.apply_repetition_penalty"),
    ("7.3", cache_bytes_by_generating, "components.deepseek_model.DeepSeekModel.generate"),
]


(test_every_exercise_has_a_correct_answer, test_stub_is_not_attempted, test_correct_answer_passes,
 test_wrong_answer_fails_with_a_hint,
 test_the_graders_verdicts_through_the_exchange) = exercise_checks(CORRECT, WRONG)


def test_a_crash_in_student_code_is_a_fail():
    assert check_exercise("7.1", lambda logits, p: logits @ logits, verbose=False) == FAIL
