"""Batched generation (issue 13): prompts of different lengths in one left-padded batch, each row
producing what its prompt produces alone -- greedy (the same tokens), sampled (the same seed per
row, the same tokens), past the context window (each row slides its own window), at stop tokens."""

from __future__ import annotations

import pytest
import torch
from training_helpers import VOCAB, tiny_cfg

from components.beam_search import beam_search
from components.deepseek_model import DeepSeekModel
from components.generation import pad_prompts

LENGTHS = (3, 9, 1, 14)


def make_model(**overrides) -> DeepSeekModel:
    torch.manual_seed(0)
    return DeepSeekModel(tiny_cfg(**overrides)).eval()


def prompts(lengths=LENGTHS, seed: int = 1) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, VOCAB, (n,), generator=g) for n in lengths]


def alone(model, prompt: torch.Tensor, n: int, **sampling) -> torch.Tensor:
    return model.generate(prompt[None], n, **sampling)[0]


@pytest.mark.parametrize("overrides, absorb", [
    ({}, True), ({}, False), ({"q_latent_dim": 16}, True), ({"attention": "mha"}, True),
    ({"attention": "gqa", "n_kv_heads": 2}, True), ({"attention": "linear"}, True), ({"ffn": "dense"}, True),
])
def test_batched_greedy_equals_each_prompt_alone(overrides, absorb):
    model = make_model(**overrides)
    batch = prompts()
    outputs = model.generate(batch, 12, temperature=0.0, absorb=absorb)
    assert isinstance(outputs, list) and len(outputs) == len(batch)
    for prompt, out in zip(batch, outputs, strict=True):
        assert torch.equal(out, alone(model, prompt, 12, temperature=0.0, absorb=absorb))


@pytest.mark.parametrize("attention, absorb", [("mla", True), ("mla", False), ("mha", True), ("linear", True)])
def test_padding_is_invisible_to_the_logits(attention, absorb):
    """Prefill a left-padded batch into caches that know the padding, then decode one token per row:
    each row's last-position logits equal its prompt's own, both times (positions and masks are per row)."""
    model = make_model(attention=attention)
    batch = prompts()
    idx, mask = pad_prompts(batch)
    caches = model.new_caches(pad=(~mask).sum(1))
    nxt = torch.randint(0, VOCAB, (len(batch), 1), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        prefill, _, _ = model(idx, caches=caches, absorb=absorb)
        step, _, _ = model(nxt, caches=caches, absorb=absorb)
        for b, prompt in enumerate(batch):
            own, _, _ = model(torch.cat([prompt, nxt[b]])[None])
            torch.testing.assert_close(prefill[b, -1], own[0, -2], atol=1e-5, rtol=1e-4)
            torch.testing.assert_close(step[b, -1], own[0, -1], atol=1e-5, rtol=1e-4)
            assert prefill[b].isfinite().all()                       # padding columns stay finite too
    assert caches[0].pad.tolist() == [max(LENGTHS) - n for n in LENGTHS]


def test_sampling_with_one_seed_per_row_equals_each_prompt_alone():
    model = make_model()
    batch = prompts()
    sampling = dict(temperature=1.2, top_k=50, top_p=0.95, repetition_penalty=1.3, frequency_penalty=0.2,
                    no_repeat_ngram_size=2)
    seeds = [3, 5, 7, 3]
    outputs = model.generate(batch, 15, seed=seeds, **sampling)
    for prompt, seed, out in zip(batch, seeds, outputs, strict=True):
        assert torch.equal(out, alone(model, prompt, 15, seed=seed, **sampling))
    # one int still seeds one generator for the whole batch: two equal prompts get different samples
    twins = model.generate([batch[1], batch[1]], 15, seed=3, temperature=1.2)
    assert not torch.equal(twins[0], twins[1])


def test_each_row_slides_its_own_window_past_the_context():
    model = make_model(context_length=16)
    batch = prompts((4, 12, 15))
    outputs = model.generate(batch, 30, temperature=0.0)
    for prompt, out in zip(batch, outputs, strict=True):
        assert out.shape[0] == prompt.shape[0] + 30
        assert torch.equal(out, alone(model, prompt, 30, temperature=0.0))


def test_rows_stop_at_their_own_stop_token_and_a_padded_tensor_works_too():
    model = make_model()
    batch = prompts()
    new = alone(model, batch[0], 12, temperature=0.0)[len(batch[0]):].tolist()
    stop = new[2]                                                    # row 0's third new token
    outputs = model.generate(batch, 12, temperature=0.0, stop_tokens=(stop,))
    for prompt, out in zip(batch, outputs, strict=True):
        assert torch.equal(out, alone(model, prompt, 12, temperature=0.0, stop_tokens=(stop,)))
    assert outputs[0][-1].item() == stop and len(outputs[0]) == len(batch[0]) + new.index(stop) + 1
    idx, mask = pad_prompts(batch)
    padded = model.generate(idx, 12, temperature=0.0, attention_mask=mask)          # (B, T + 12), still padded
    assert padded.shape == (len(batch), max(LENGTHS) + 12)
    for b, prompt in enumerate(batch):
        assert torch.equal(padded[b, max(LENGTHS) - len(prompt):], alone(model, prompt, 12, temperature=0.0))


def test_long_prompts_in_a_batch_are_cropped_like_alone():
    model = make_model(context_length=16)
    batch = prompts((40, 5))
    with pytest.warns(UserWarning, match="cropping"):
        outputs = model.generate(batch, 6, temperature=0.0)
    with pytest.warns(UserWarning, match="cropping"):
        assert torch.equal(outputs[0], alone(model, batch[0], 6, temperature=0.0))
    assert torch.equal(outputs[1], alone(model, batch[1], 6, temperature=0.0))


def test_bad_batches_are_one_line_errors():
    model = make_model()
    idx, mask = pad_prompts(prompts())
    with pytest.raises(ValueError, match="must left-pad every row"):
        model.generate(idx, 2, attention_mask=mask.flip(1))                          # right padding
    with pytest.raises(ValueError, match="at least one token"):
        model.generate(idx, 2, attention_mask=torch.zeros_like(mask))
    with pytest.raises(ValueError, match=r"row_seeds must give one seed per row \(4\)"):
        model.generate(prompts(), 2, seed=[1, 2])
    with pytest.raises(ValueError, match="non-empty 1-D sequences"):
        model.generate([[1, 2], []], 2)
    with pytest.raises(ValueError, match="beam search takes one prompt at a time"):
        beam_search(model, idx, 2)
    assert beam_search(model, prompts()[1][None], 3).shape == (1, LENGTHS[1] + 3)     # one prompt still works


# --- inference.py: several prompts, from flags and from a file ------------------------------------------

@pytest.fixture(scope="module")
def gpt2_checkpoint(tmp_path_factory):
    from dataclasses import replace

    from constants import TINY
    from training.checkpoint import atomic_save, make_checkpoint

    torch.manual_seed(0)
    cfg = replace(TINY, n_layers=1, context_length=32, d_model=32, kv_latent_dim=8, expert_hidden_dim=32)
    path = tmp_path_factory.mktemp("ckpt") / "best_model.pt"
    atomic_save(make_checkpoint(DeepSeekModel(cfg), step=0, kind="best"), path)
    return path


def sections(out: str) -> list[str]:
    """The completions printed between the '--- prompt i/n ---' headers (and the report line)."""
    body = [line for line in out.splitlines()[1:] if not line.startswith("[")]         # not 'loaded ...', report
    if not any(line.startswith("--- prompt ") for line in body):
        return ["\n".join(body)]                                                       # one prompt: no headers
    texts = []
    for line in body:
        if line.startswith("--- prompt "):
            texts.append([])
        else:
            texts[-1].append(line)
    return ["\n".join(t) for t in texts]


@pytest.mark.parametrize("extra", [["--temperature", "0.9", "--seed", "5", "--repetition_penalty", "1.2"],
                                   ["--temperature", "0"], ["--beams", "2"]])
def test_inference_takes_several_prompts_each_as_alone(gpt2_checkpoint, tmp_path, capsys, extra):
    import inference

    prompts_file = tmp_path / "prompts.txt"
    prompts_file.write_text("The best way to learn programming is\n\nA startup\n")
    common = ["--model_path", str(gpt2_checkpoint), "--max_new_tokens", "8", *extra]
    assert inference.main([*common, "--prompt", "Hello", "--prompt", "Essays are", "--prompts-file",
                           str(prompts_file)]) == 0
    captured = capsys.readouterr()
    together = sections(captured.out)
    assert len(together) == 4 and "--- prompt 4/4 ---" in captured.out
    assert ("beam search takes one prompt at a time: the 4 prompts run one after another" in captured.err) == \
        ("--beams" in extra)
    for prompt, text in zip(["Hello", "Essays are", "The best way to learn programming is", "A startup"], together,
                            strict=True):
        assert inference.main([*common, "--prompt", prompt]) == 0
        assert sections(capsys.readouterr().out) == [text]
        assert text.startswith(prompt)
