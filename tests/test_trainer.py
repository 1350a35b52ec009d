"""Trainer: schedule, weight-decay groups, accumulation, router-bias update, metrics, budgets,
non-finite loss, and exact resume. TINY with a 256-token vocabulary on synthetic ids, CPU only."""

from __future__ import annotations

import hashlib
import json
import math

import pytest
import torch
from training_helpers import ListBatches, fixed_batches, pattern_ids, tiny_cfg, train_cfg

from components.deepseek_model import DeepSeekModel
from trainer import NonFiniteLossError, TrainConfig, Trainer, evaluate, split_decay
from training import checkpoint
from training.schedule import lr_at
from training.time_budget import fit_time_horizon


def lr_factor(step, warmup_steps, horizon, min_lr_ratio):
    """lr_at as a multiple of the peak lr."""
    return lr_at(step, peak_lr=1.0, warmup_steps=warmup_steps, horizon=horizon, min_lr_ratio=min_lr_ratio)

IDS = pattern_ids(6000)
TRAIN_IDS, VAL_IDS = IDS[:5000], IDS[5000:]


# --- schedule --------------------------------------------------------------------------------

def test_lr_factor_warmup_then_cosine_to_floor():
    w, h, m = 100, 1000, 0.1
    assert lr_factor(0, w, h, m) == pytest.approx(0.01)           # first step: lr / W, never 0
    assert lr_factor(49, w, h, m) == pytest.approx(0.5)
    assert lr_factor(99, w, h, m) == pytest.approx(1.0)           # warmup ends at the peak
    assert lr_factor(100, w, h, m) == pytest.approx(1.0)          # cosine starts at the peak
    assert lr_factor(550, w, h, m) == pytest.approx((1 + m) / 2)  # halfway down the cosine
    assert lr_factor(1000, w, h, m) == pytest.approx(m)
    assert lr_factor(5000, w, h, m) == pytest.approx(m)           # floor after the horizon
    assert lr_factor(500, w, None, m) == 1.0                      # time budget before the fit: hold peak
    assert lr_factor(0, 0, 10, m) == pytest.approx(1.0)           # no warmup


def test_trainer_lr_follows_schedule_and_caps_warmup(tmp_path):
    long = Trainer(tiny_cfg(), train_cfg(None, max_steps=1000, warmup_steps=100), train_ids=TRAIN_IDS)
    assert long.schedule.warmup_steps == 100 and long.schedule.lr(550) == pytest.approx(3e-3 * 0.55)
    short = Trainer(tiny_cfg(), train_cfg(None, max_steps=6, warmup_steps=100), train_ids=TRAIN_IDS)
    assert short.schedule.warmup_steps == 0           # capped at 10% of a 6-step horizon
    t = Trainer(tiny_cfg(), train_cfg(None, max_steps=20, warmup_steps=4), train_ids=TRAIN_IDS)
    t.train()
    used = [row["lr"] for row in t.metrics if row["kind"] == "train"]
    expected = [3e-3 * lr_factor(s, 2, 20, 0.1) for s in range(20)]   # warmup capped to 20 // 10 = 2
    assert used == pytest.approx(expected, rel=1e-12)


def test_time_budget_fits_the_cosine_horizon_after_ten_steps():
    t = Trainer(tiny_cfg(), train_cfg(None, max_steps=None, time_budget_min=0.5, warmup_steps=100),
                train_ids=TRAIN_IDS)
    assert t.schedule.horizon is None and t.schedule.lr(500) == 3e-3   # unknown step rate: warmup, then hold
    t.train(steps=10)
    assert isinstance(t.schedule.horizon, int) and t.schedule.horizon > 10        # ~30 s of steps at the measured rate
    horizon = t.schedule.horizon
    assert t.schedule.warmup_steps == min(100, horizon // 10) and t.schedule.lr(horizon) == pytest.approx(3e-4)


class SimulatedClock:
    """Stands in for the trainer's `time` module: each optimizer step advances it by a chosen duration."""

    def __init__(self):
        self.now = 0.0

    def perf_counter(self) -> float:
        return self.now


def test_time_budget_refits_the_horizon_when_the_step_rate_changes(monkeypatch):
    # 10 slow steps (3 s: a cold or busy start), then 1 s per step, in a 2-minute budget: about
    # 10 + 90 = 100 steps fit. One fit after 10 steps would end the cosine at ~38 and train the other
    # ~60 steps at the lr floor; the refits after 20, 40, 80 steps follow the real rate.
    import trainer as trainer_module
    import training.time_budget as schedule_module

    clock = SimulatedClock()
    monkeypatch.setattr(trainer_module, "time", clock)
    monkeypatch.setattr(schedule_module, "time", clock)
    t = Trainer(tiny_cfg(), train_cfg(None, max_steps=None, time_budget_min=2.0, warmup_steps=100),
                train_ids=TRAIN_IDS)
    step = trainer_module.train_step
    horizons = []

    def timed_step(*args, **kwargs):
        clock.now += 3.0 if t.step < 10 else 1.0
        horizons.append(t.schedule.horizon)
        return step(*args, **kwargs)

    monkeypatch.setattr(trainer_module, "train_step", timed_step)
    summary = t.train()
    assert summary["stopped_because"] == "time_budget"
    assert 95 <= summary["steps"] <= 102
    assert horizons[10] == pytest.approx(10 + 0.95 * (120 - 30) / 3, abs=1)   # first fit: the slow rate
    assert horizons[-1] == pytest.approx(summary["steps"], rel=0.05)          # refitted to the real rate
    assert t.schedule.warmup_steps == horizons[10] // 10                               # fixed at the first fit
    used = [row["lr"] for row in t.metrics if row["kind"] == "train"]
    assert used[-1] == pytest.approx(3e-3 * 0.1, rel=0.05)                    # the cosine ends with the run


def test_a_time_fit_shorter_than_the_warmup_shrinks_the_warmup(monkeypatch):
    # max_steps=2000 fixes a 100-step warmup up front; a 1-minute budget at 1 s/step then fits ~57
    # steps. The warmup must shrink with the horizon: the run reaches the peak lr and decays to the
    # floor, instead of ending still on its warmup ramp (the chapter 6 run that never left warmup).
    import trainer as trainer_module
    import training.time_budget as schedule_module

    clock = SimulatedClock()
    monkeypatch.setattr(trainer_module, "time", clock)
    monkeypatch.setattr(schedule_module, "time", clock)
    t = Trainer(tiny_cfg(), train_cfg(None, max_steps=2000, time_budget_min=1.0, warmup_steps=100),
                train_ids=TRAIN_IDS)
    assert t.schedule.warmup_steps == 100
    step = trainer_module.train_step

    def timed_step(*args, **kwargs):
        clock.now += 1.0
        return step(*args, **kwargs)

    monkeypatch.setattr(trainer_module, "train_step", timed_step)
    summary = t.train()
    assert summary["stopped_because"] == "time_budget" and summary["steps"] < 100
    assert t.schedule.warmup_steps <= summary["steps"] // 10
    used = [row["lr"] for row in t.metrics if row["kind"] == "train"]
    assert max(used) > 0.95 * 3e-3                                  # the peak is reached ...
    assert used[-1] == pytest.approx(3e-3 * 0.1, rel=0.1)          # ... and the cosine ends with the run


def test_fit_time_horizon_is_the_remaining_time_over_the_step_cost():
    assert fit_time_horizon(40, remaining_s=100.0, step_s=0.9, overhead_s_per_step=0.1) == 40 + 95
    assert fit_time_horizon(40, remaining_s=-5.0, step_s=1.0, overhead_s_per_step=0.0) == 40   # time is up


def test_weight_decay_skips_norms_biases_and_embeddings():
    model = DeepSeekModel(tiny_cfg())
    decay, no_decay = split_decay(model)
    params = dict(model.named_parameters())
    assert "embed.weight" in no_decay and "head.weight" not in decay        # tied head = the embedding
    assert all(params[n].ndim >= 2 for n in decay)
    assert {n for n in no_decay if "norm" in n} == {n for n in params if "norm" in n}
    assert any("router.gate" in n for n in decay) and any("w_dkv" in n for n in decay)
    assert sorted(decay + no_decay) == sorted(params)
    t = Trainer(tiny_cfg(), train_cfg(None, weight_decay=0.05), train_ids=TRAIN_IDS)
    groups = t.optimizer.param_groups
    assert [g["weight_decay"] for g in groups] == [0.05, 0.0]
    assert t.fused == groups[0]["fused"] is True        # torch >= 2.4 has a fused CPU AdamW


def test_config_validation_names_the_field():
    for bad, field in [(dict(lr=-1.0), "lr"), (dict(batch_size=0), "batch_size"), (dict(grad_accum=1.5), "grad_accum"),
                       (dict(min_lr_ratio=2.0), "min_lr_ratio"), (dict(dtype="fp8"), "dtype"),
                       (dict(max_steps=None, epochs=None, time_budget_min=None), "max_steps"),
                       (dict(betas=(0.9, 1.0)), "betas"), (dict(grad_clip=0.0), "grad_clip")]:
        with pytest.raises(ValueError, match=rf"^TrainConfig\.{field}="):
            TrainConfig(**bad)
    cfg = TrainConfig(max_steps=7, betas=(0.8, 0.9))
    assert TrainConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg     # lists back to tuples


# --- the step ---------------------------------------------------------------------------------

def test_loss_decreases_on_learnable_ids():
    t = Trainer(tiny_cfg(), train_cfg(None, max_steps=40, lr=1e-2, warmup_steps=4), train_ids=TRAIN_IDS,
                val_ids=VAL_IDS)
    summary = t.train()
    losses = [row["loss"] for row in t.metrics if row["kind"] == "train"]
    assert sum(losses[-5:]) / 5 < sum(losses[:5]) / 5 - 1.0, losses
    assert summary["final_val_loss"] < math.log(256) - 1.0
    assert summary["steps"] == 40 and summary["stopped_because"] == "max_steps"


def test_grad_accumulation_matches_one_big_batch():
    """accum 2 x batch 4 == one batch of 8 (the same 8 sequences).

    The gradients agree to fp32 rounding (atol 1e-7); the weights after the step agree to 2% of
    lr, because Adam's first step is g / (|g| + eps), so a gradient entry that cancels down to
    ~eps can move its update by a few percent of lr from rounding alone.
    """
    small = fixed_batches(2, 4, 64)
    big = [(torch.cat([small[0][0], small[1][0]]), torch.cat([small[0][1], small[1][1]]))]
    runs = {}
    for name, batches, bs, accum in (("accum", small, 4, 2), ("big", big, 8, 1)):
        t = Trainer(tiny_cfg(), train_cfg(None, batch_size=bs, grad_accum=accum, max_steps=1),
                    train_batches=ListBatches(batches))
        grads = {}
        t.optimizer.register_step_pre_hook(
            lambda opt, args, kwargs, t=t, grads=grads: grads.update(
                {n: p.grad.clone() for n, p in t.raw_model.named_parameters() if p.grad is not None}))
        t.train()
        runs[name] = (t.metrics[0], grads, t.raw_model.state_dict())
    (row_a, grads_a, state_a), (row_b, grads_b, state_b) = runs["accum"], runs["big"]
    assert row_a["loss"] == pytest.approx(row_b["loss"], abs=1e-6)
    assert row_a["grad_norm"] == pytest.approx(row_b["grad_norm"], rel=1e-5)
    assert row_a["expert_counts"] == row_b["expert_counts"]
    assert sorted(grads_a) == sorted(grads_b)
    for name in grads_a:
        torch.testing.assert_close(grads_a[name], grads_b[name], atol=1e-7, rtol=1e-4)
    for key in state_a:
        torch.testing.assert_close(state_a[key], state_b[key], atol=0.02 * 3e-3, rtol=0)


def test_router_bias_updated_once_per_step_with_summed_loads():
    cfg = tiny_cfg(bias_update_rate=0.01)
    t = Trainer(cfg, train_cfg(None, grad_accum=3, max_steps=2), train_ids=TRAIN_IDS)
    (router,) = t.raw_model.routers()
    micro_loads, updates = [], []
    t.raw_model.register_forward_hook(lambda m, a, out: micro_loads.append(out[2].moe[0].tokens_per_expert.clone()))
    original = router.update_bias

    def recording_update(load):
        before = router.bias.clone()
        original(load)
        updates.append((load.clone(), before, router.bias.clone()))

    router.update_bias = recording_update
    t.train()
    assert len(updates) == 2 and len(micro_loads) == 6
    for step, (load, before, after) in enumerate(updates):
        assert torch.equal(load.long(), torch.stack(micro_loads[3 * step:3 * step + 3]).sum(0))
        assert load.sum() == 3 * 4 * 64 * cfg.top_k                    # every token picks top_k experts
        expected = before + 0.01 * torch.sign(load.float().mean() - load.float())
        torch.testing.assert_close(after, expected, atol=1e-9, rtol=0)
    assert t.metrics[-1]["expert_counts"] == [updates[-1][0].tolist()]


def test_metrics_jsonl_rows_have_the_documented_keys(tmp_path):
    cfg = tiny_cfg(balancing="both", seq_balance_coef=0.001)
    t = Trainer(cfg, train_cfg(tmp_path, max_steps=4, log_every=2, eval_every=2), train_ids=TRAIN_IDS,
                val_ids=VAL_IDS)
    summary = t.train()
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert rows == json.loads(json.dumps(t.metrics))
    train_rows = [r for r in rows if r["kind"] == "train"]
    eval_rows = [r for r in rows if r["kind"] == "eval"]
    assert [r["step"] for r in train_rows] == [1, 2, 4] and [r["step"] for r in eval_rows] == [2, 4]
    assert set(train_rows[0]) == {
        "kind", "step", "epoch", "tokens", "loss", "ce", "balance_loss", "balance_expert", "balance_sequence", "lr",
        "grad_norm", "tokens_per_s", "elapsed_s", "expert_counts", "load_max_ratio", "dead_experts", "dropped_tokens"}
    assert set(eval_rows[0]) == {"kind", "step", "epoch", "val_loss", "val_ppl", "best_val_loss"}
    last = train_rows[-1]
    assert last["loss"] == pytest.approx(last["ce"] + last["balance_loss"], rel=1e-5)
    assert len(last["load_max_ratio"]) == len(last["dead_experts"]) == len(last["dropped_tokens"]) == 1
    counts = last["expert_counts"][0]
    assert last["load_max_ratio"][0] == pytest.approx(max(counts) / (sum(counts) / len(counts)), abs=1e-4)
    assert eval_rows[-1]["val_ppl"] == pytest.approx(math.exp(eval_rows[-1]["val_loss"]))
    assert summary["metrics_path"] == str(tmp_path / "metrics.jsonl")
    assert summary["best_val_loss"] == min(r["val_loss"] for r in eval_rows)
    assert (tmp_path / "best_model.pt").is_file() and (tmp_path / "latest.pt").is_file()


def test_stops_on_the_first_budget():
    t = Trainer(tiny_cfg(), train_cfg(None, max_steps=50, epochs=0.5), train_ids=TRAIN_IDS)
    assert t.train(steps=3)["stopped_because"] == "steps" and t.step == 3     # a notebook's "3 more steps"
    summary = t.train()          # 5000 ids at 256 tokens per step: 0.5 epochs after 10 steps, before 50
    assert summary["stopped_because"] == "epochs" and summary["steps"] == 10 and summary["epoch"] >= 0.5
    t = Trainer(tiny_cfg(), train_cfg(None, max_steps=50, time_budget_min=1e-5), train_ids=TRAIN_IDS)
    summary = t.train()          # the budget is checked before each step and shared by all ranks
    assert summary["stopped_because"] == "time_budget" and summary["steps"] <= 2
    assert Trainer(tiny_cfg(), train_cfg(None, max_steps=2), train_ids=TRAIN_IDS).train()["stopped_because"] == \
        "max_steps"


@pytest.mark.parametrize("nan_step, good_step", [(6, 4), (5, 2)])
def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path, nan_step, good_step):
    """Saves at steps 2 and 4. A non-finite loss at step 6 leaves latest.pt (step 4) as it was: step 5 showed its
    weights give a finite loss. At step 5 the loss comes from step 4's weights themselves (resuming from them
    would replay it), so latest.pt is rolled back to the save of step 2 (issue 13)."""
    t = Trainer(tiny_cfg(), train_cfg(tmp_path, max_steps=10, save_every=2), train_ids=TRAIN_IDS, val_ids=VAL_IDS)
    latest = tmp_path / "latest.pt"
    seen = {"calls": 0}

    def poison(module, args, output):
        seen["calls"] += 1
        if seen["calls"] == nan_step:
            seen["digest"] = hashlib.sha256(latest.read_bytes()).hexdigest()
            seen["previous"] = hashlib.sha256((tmp_path / "previous.pt").read_bytes()).hexdigest()
            weights = {k: v.clone() for k, v in module.state_dict().items()}
            seen["weights"] = weights
            logits, loss, aux = output
            return logits, loss * float("nan"), aux
        return None

    t.raw_model.register_forward_hook(poison)
    rolled = r"latest\.pt held the weights of step 4, .* rolled back to the save of step 2; " if nan_step == 5 else ""
    with pytest.raises(NonFiniteLossError, match=rf"step {nan_step} .*{rolled}last good checkpoint: .*latest\.pt "
                                                 rf"\(step {good_step}\), continue from it with --resume") as err:
        t.train()
    assert "\n" not in str(err.value)
    assert checkpoint.load_checkpoint(latest)["step"] == good_step
    expected = seen["digest"] if nan_step == 6 else seen["previous"]
    assert hashlib.sha256(latest.read_bytes()).hexdigest() == expected          # the file itself, untouched
    for key, value in t.raw_model.state_dict().items():                              # no NaN update applied
        assert torch.equal(value, seen["weights"][key])
    assert not list(tmp_path.glob(".*.tmp"))
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert max(r["step"] for r in rows) == nan_step - 1


def test_sample_errors_do_not_lose_training(tmp_path):
    """GPT-2 prompt ids exceed a 256-token vocabulary: the sample fails, training still finishes."""
    t = Trainer(tiny_cfg(), train_cfg(tmp_path, max_steps=2, sample_tokens=3), train_ids=TRAIN_IDS)
    summary = t.train()
    assert summary["steps"] == 2 and (tmp_path / "latest.pt").is_file()
    assert all(s["text"] is None and s["error"] for s in summary["samples"])


def test_samples_from_a_full_vocabulary_model():
    from constants import TINY

    t = Trainer(TINY, train_cfg(None, max_steps=1, sample_tokens=4, sample_prompts=("Hello there",)),
                train_ids=pattern_ids(2000))
    before = torch.get_rng_state()
    (sample,) = t.sample()
    assert isinstance(sample["text"], str) and sample["prompt"] == "Hello there"
    assert torch.equal(torch.get_rng_state(), before)        # sampling leaves the training RNG alone
    assert t.sample() == [sample]                             # fixed seed: the same text every time


@pytest.mark.filterwarnings("ignore::DeprecationWarning")   # torch.compile imports torch.jit
def test_compiled_trainer_saves_plain_keys(tmp_path):
    t = Trainer(tiny_cfg(), train_cfg(tmp_path, compile=True), train_ids=TRAIN_IDS)   # compiles lazily: not run
    assert type(t.model).__name__ == "OptimizedModule" and t.model._orig_mod is t.raw_model
    t.save_latest()
    assert checkpoint.load_checkpoint(tmp_path / "latest.pt")["model"].keys() == t.raw_model.state_dict().keys()


# --- resume ------------------------------------------------------------------------------------

def test_resume_reproduces_the_uninterrupted_run(tmp_path):
    """4 steps + resume + 4 steps == 8 steps: per-step losses within 1e-6, and the same weights.

    Dropout and router noise make the RNG restore matter; accumulation and both balancing
    mechanisms make the optimizer, the router bias and the sampler position matter.
    """
    cfg = tiny_cfg(dropout=0.1, router_noise_std=0.05, balancing="both")
    settings = dict(max_steps=8, grad_accum=2, eval_every=3)

    def losses(trainer):
        return {r["step"]: r["loss"] for r in trainer.metrics if r["kind"] == "train"}

    full = Trainer(cfg, train_cfg(tmp_path / "full", **settings), train_ids=TRAIN_IDS, val_ids=VAL_IDS)
    full.train()
    first = Trainer(cfg, train_cfg(tmp_path / "split", **settings), train_ids=TRAIN_IDS, val_ids=VAL_IDS)
    assert first.train(steps=4)["stopped_because"] == "steps"
    del first
    second = Trainer(cfg, train_cfg(tmp_path / "split", **settings), train_ids=TRAIN_IDS, val_ids=VAL_IDS,
                     resume=True)
    assert second.step == 4
    second.train()
    expected, got = losses(full), losses(second)
    assert sorted(got) == list(range(1, 9))            # metrics.jsonl rows of steps 1-4 were kept
    for step in range(1, 9):
        assert got[step] == pytest.approx(expected[step], abs=1e-6), step
    for key, value in full.raw_model.state_dict().items():
        torch.testing.assert_close(second.raw_model.state_dict()[key], value, atol=1e-6, rtol=0)
    assert second.best_val_loss == pytest.approx(full.best_val_loss, abs=1e-6)


def test_resume_refuses_a_different_model(tmp_path):
    Trainer(tiny_cfg(), train_cfg(tmp_path, max_steps=1), train_ids=TRAIN_IDS).train()
    with pytest.raises(checkpoint.CheckpointError, match=r"different model config: d_model=64 \(model has 128\)"):
        Trainer(tiny_cfg(d_model=128), train_cfg(tmp_path, max_steps=2), train_ids=TRAIN_IDS, resume=True)


def test_keep_freed_memory_in_heap_is_safe_to_call_repeatedly():
    """The CPU allocator setting the Trainer applies: a bool (False off glibc), idempotent, training unaffected."""
    from training.memory import keep_freed_memory_in_heap

    first, second = keep_freed_memory_in_heap(), keep_freed_memory_in_heap()
    assert isinstance(first, bool) and first == second
    big = torch.ones(64 * 2**20 // 4)          # 64 MB: above glibc's default mmap threshold
    assert float(big.sum()) == big.numel()


def test_fp16_with_a_loss_scaler_trains_and_resumes_exactly_on_cpu(tmp_path):
    """--dtype fp16 on the CPU's autocast: a GradScaler, its state in latest.pt, skipped steps logged;
    4 steps + resume + 4 steps == 8 steps, to the bit (whatever steps the scaler skips, both runs skip)."""
    cfg = tiny_cfg()
    settings = dict(max_steps=8, eval_every=0, dtype="fp16")
    full = Trainer(cfg, train_cfg(tmp_path / "full", **settings), train_ids=TRAIN_IDS, val_ids=VAL_IDS)
    assert full.scaler is not None and full.autocast_dtype == torch.float16
    full.train()
    rows = [r for r in full.metrics if r["kind"] == "train"]
    assert all("skipped_step" in r for r in rows) and all(math.isfinite(r["loss"]) for r in rows)
    first = Trainer(cfg, train_cfg(tmp_path / "split", **settings), train_ids=TRAIN_IDS, val_ids=VAL_IDS)
    first.train(steps=4)
    saved = checkpoint.load_checkpoint(tmp_path / "split" / "latest.pt")
    assert saved["grad_scaler"]["scale"] == first.scaler.get_scale()
    del first
    second = Trainer(cfg, train_cfg(tmp_path / "split", **settings), train_ids=TRAIN_IDS, val_ids=VAL_IDS,
                     resume=True)
    second.train()
    assert second.scaler.get_scale() == full.scaler.get_scale()
    for key, value in full.raw_model.state_dict().items():
        torch.testing.assert_close(second.raw_model.state_dict()[key], value, atol=0, rtol=0)


def test_whole_split_loss_is_logged_and_written_for_the_best_weights(tmp_path):
    """evaluate_whole_split: a metrics row of the final model; best_model.* get the loss of *their* weights,
    measured again when the best checkpoint is an earlier step than the final one."""
    trainer = Trainer(tiny_cfg(), train_cfg(tmp_path, eval_every=2, eval_batches=1), train_ids=TRAIN_IDS,
                      val_ids=VAL_IDS)
    trainer.train(2)                                       # best_model.pt: step 2
    trainer.best_val_loss = -math.inf                      # so that no later evaluation replaces it
    trainer.train(2)
    result = trainer.evaluate_whole_split()
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["kind"] == "eval_whole" and rows[-1]["step"] == 4 and rows[-1]["val_loss"] == result["val_loss"]
    best = json.loads((tmp_path / "best_model.json").read_text())
    model, meta = checkpoint.load_model(tmp_path / "best_model.pt")
    expected = evaluate(model, VAL_IDS, batch_size=trainer.cfg.batch_size, context_length=model.cfg.context_length,
                        max_batches=None, device=torch.device("cpu"))["val_loss"]
    assert best["step"] == meta["step"] == 2
    assert best["trainer"]["whole_val_loss"] == meta["trainer"]["whole_val_loss"] == pytest.approx(expected, abs=1e-6)
    assert abs(expected - result["val_loss"]) > 1e-4       # the step-2 weights, not the final ones
