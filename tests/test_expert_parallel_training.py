"""Expert-parallel training (2 gloo processes under torchrun) == one process on the same global batch.

One torchrun launch (tests/ep_train_worker.py) trains TINY with its 4 routed experts split 2 + 2 over two
ranks, clipping at 0.5 (the global norm matters) and evaluating on every rank; the reference is this
process with grad_accum=2 on the same micro-batches. Tolerances: losses and val losses 1e-6, the logged
(global, pre-clip) gradient norm rel 1e-5, expert loads exact, final weights 1% of lr (measured 2.8e-6 on
lr 3e-3; AdamW divides by sqrt(v) + eps and amplifies rounding where a gradient cancels, as in test_ddp),
AdamW moments 1e-7 (measured 3e-9).
"""

from __future__ import annotations

import json

import pytest
import torch
import torch.distributed as dist
from ep_train_worker import run_single, setup
from test_ddp import REPO, torchrun
from training_helpers import tiny_cfg, write_corpus

from hugging_face.convert import from_hf_state_dict, to_hf_state_dict
from trainer import TrainConfig, Trainer
from training.checkpoint import load_checkpoint, load_model

STEPS, WORLD, LR = 3, 2, 3e-3

pytestmark = pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(),
                                reason="torch.distributed with gloo is not available")


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    out = tmp_path_factory.mktemp("ep_train")
    result = torchrun(str(REPO / "tests" / "ep_train_worker.py"), str(out), str(STEPS), cwd=out)
    assert result.returncode == 0, result.stderr[-4000:]
    ranks = [torch.load(out / f"rank{r}.pt", weights_only=True) for r in range(WORLD)]
    return out, ranks, run_single(out / "single", STEPS, WORLD)


def test_two_expert_parallel_processes_match_one_process(runs):
    out, ranks, single = runs
    rows_ep, rows_one = ranks[0]["rows"], single.metrics
    assert [(r["kind"], r["step"]) for r in rows_ep] == [(r["kind"], r["step"]) for r in rows_one]
    assert sum(r["kind"] == "eval" for r in rows_ep) == 2             # evaluated on both ranks' shares
    for a, b in zip(rows_ep, rows_one, strict=True):
        if a["kind"] == "train":
            assert a["loss"] == pytest.approx(b["loss"], abs=1e-6)
            assert a["grad_norm"] == pytest.approx(b["grad_norm"], rel=1e-5)
            assert a["expert_counts"] == b["expert_counts"]          # the bias rule's global loads
        else:
            assert a["val_loss"] == pytest.approx(b["val_loss"], abs=1e-6)
    ckpt = load_checkpoint(out / "full" / "latest.pt")
    reference = single.raw_model.state_dict()
    assert list(ckpt["model"]) == list(reference)                     # the one format, the one key order
    for key, value in reference.items():
        tolerance = 0 if key.endswith("router.bias") else 0.01 * LR
        torch.testing.assert_close(ckpt["model"][key].float(), value, atol=tolerance, rtol=0)
    # the gathered AdamW state is indexed as the one-process optimizer's
    one = single.optimizer.state_dict()
    assert ckpt["optimizer"]["param_groups"] == one["param_groups"] and ckpt["optimizer"]["state"].keys() == one[
        "state"].keys()
    for index, state in one["state"].items():
        for name, value in state.items():
            torch.testing.assert_close(ckpt["optimizer"]["state"][index][name], value, atol=1e-7, rtol=0)


def test_checkpoint_of_an_expert_parallel_run_is_the_gathered_weights(runs):
    out, ranks, _ = runs
    ckpt = load_checkpoint(out / "full" / "latest.pt")
    for rank, result in enumerate(ranks):
        for key, value in result["weights"].items():                 # each rank's weights, one-process names
            assert torch.equal(ckpt["model"][key], value), key
        held = {int(k.split(".experts.")[1].split(".")[0]) for k in result["weights"] if ".experts." in k}
        assert held == {2 * rank, 2 * rank + 1}                       # 4 routed experts: 2 per rank
    full_size = sum(v.numel() for k, v in ckpt["model"].items() if k != "head.weight")   # head tied to embed
    assert ranks[0]["n_params"] < full_size
    for name in ("latest.pt", "best_model.pt"):
        model, meta = load_model(out / "full" / name)                # inference's loader, unchanged
        for key, value in model.state_dict().items():
            assert torch.equal(value, ckpt["model"][key]), (name, key)
    hf = to_hf_state_dict(ckpt["model"], model.cfg)                   # the Hugging Face export's names
    assert any(".mlp.experts." in key for key in hf)
    back, unused = from_hf_state_dict(hf, model.cfg)
    assert not unused and all(torch.equal(back[k], ckpt["model"][k]) for k in back)


def test_expert_parallel_resume_is_exact_and_resumes_on_one_process(runs):
    out, ranks, single = runs
    for result in ranks:                                             # 2 steps + resume + 1 == 3 steps, bit for bit
        assert result["resumed_rows"][-1]["step"] == STEPS
        for key, value in result["weights"].items():
            assert torch.equal(result["resumed_weights"][key], value), key
    # the EP checkpoint before the last step (part/previous.pt, step 2), resumed by ONE process, no EP
    before = out / "part" / "previous.pt"
    assert load_checkpoint(before)["step"] == STEPS - 1
    cfg, batches, val = setup(out / "single_resumed", STEPS, 1, 0, WORLD)
    trainer = Trainer(tiny_cfg(), cfg, train_batches=batches, val_ids=val, resume=before)
    trainer.batches.position = (STEPS - 1) * WORLD                     # a 2-rank sampler state does not carry over
    trainer.train()
    for key, value in single.raw_model.state_dict().items():
        tolerance = 0 if key.endswith("router.bias") else 0.01 * LR
        torch.testing.assert_close(trainer.raw_model.state_dict()[key], value, atol=tolerance, rtol=0)


def test_train_py_expert_parallel_matches_ddp_under_torchrun(tmp_path):
    """`train.py --expert-parallel 2` and plain DDP, same flags and seed: the same data per rank, so the same
    losses and weights (DDP == one process is tests/test_ddp.py); samples and evaluation run on every rank."""
    corpus = write_corpus(tmp_path / "corpus")
    common = ["--preset", "tiny", "--data", str(corpus), "--cache-dir", str(tmp_path / "cache"), "--batch-size", "2",
              "--device", "cpu", "--max-steps", "2", "--set", "sample_tokens=4"]
    runs = {}
    for name, extra in (("ep", ["--expert-parallel", "2"]), ("ddp", [])):
        result = torchrun(str(REPO / "train.py"), *common, "--out", str(tmp_path / name), *extra, cwd=tmp_path)
        assert result.returncode == 0, result.stderr[-4000:]
        runs[name] = result.stdout
    assert "expert parallelism: 2 ranks, 2 of 4 routed experts per rank" in runs["ep"]
    for name in ("done: 2 steps", "final model on the whole validation split", "\n--- "):
        assert name in runs["ep"], name
    rows = {name: [json.loads(line) for line in (tmp_path / name / "metrics.jsonl").read_text().splitlines()]
            for name in runs}
    losses = {name: [r.get("loss", r.get("val_loss")) for r in rows[name] if r["kind"] in ("train", "eval")]
              for name in rows}
    assert losses["ep"] == pytest.approx(losses["ddp"], abs=1e-6)
    ep, ddp = (load_model(tmp_path / name / "latest.pt")[0].state_dict() for name in ("ep", "ddp"))
    for key, value in ddp.items():
        torch.testing.assert_close(ep[key], value, atol=0.01 * TrainConfig().lr, rtol=0)   # measured 3.2e-6


def test_expert_parallel_flag_needs_torchrun_with_as_many_processes(capsys):
    import train

    assert train.main(["--preset", "tiny", "--expert-parallel", "2", "--max-steps", "1"]) == 2
    assert "--expert-parallel 2: N must equal the number of processes (this run has 1)" in capsys.readouterr().err
