"""Training throughput and MFU: our DeepSeekModel vs Hugging Face DeepseekV3ForCausalLM, same config.

    python -m benchmarks.train [--json OUT] [--quick] [--compile] [--profile]
    python -m benchmarks.train --device cuda --dtype bf16 [--preset default]     (on a GPU)

SMALL preset, batch 8 x 128 tokens, CPU fp32, 2 threads (defaults). One training step, on both sides:
forward, cross-entropy over the vocabulary, backward, gradient clipping (norm 1.0, as the
Trainer does) and a fused AdamW step with the Trainer's settings and decay groups.
HF is built at the equivalent configuration (docs/maths.md §4.2: hidden 256, 4 heads, q_lora_rank None,
kv_lora_rank 64, qk_nope 64, qk_rope 32, v_head_dim 64, 4 routed experts top-2 + 1 shared,
intermediate_size = our dense FFN width, first_k_dense_replace 1, tied embeddings,
attn_implementation "sdpa") and holds OUR weights: its loss is checked equal to ours before timing,
so both route the same tokens to the same experts. Its experts implementation is the fastest of
those that run on CPU (timed here, see HF_EXPERTS).

    tokens/s  = B*T / median step time (steps timed round-robin, ours then HF, after a warmup)
    train_vs_hf = ours / HF
    train_vs_hf_paired = median over rounds of HF step time / our step time in the SAME round (a
                slow spell of a shared machine hits both steps of a round, so it cancels; also printed)
    MFU       = 6 * N_active * tokens/s / peak
N_active = utils.count_active_parameters (matmul weights one token's forward touches: attention,
dense FFN, K routed + shared experts, routers, the output head; not the embedding lookup),
6 = 2 FLOPs per multiply-add x (forward + 2 backward matmuls). Attention's own T^2 FLOPs are not
counted (PaLM convention without the attention term; under 2% here). `peak` is measured in the
same run: the best of several 2048^3 fp32 matmuls on the same threads, before, between and after.
On a GPU (`--device cuda`), both sides run under the same autocast (`--dtype`, precision.py; fp16 adds
a GradScaler to both), every step ends with torch.cuda.synchronize(), and the peak is the best of
several 8192^3 matmuls in the autocast dtype (fp32 when --dtype fp32). The breakdown is CPU-only
(its hooks time the host, which runs ahead of a GPU).

Fairness notes. Both sides cycle through the same few random batches (one repeated batch gets
memorised and makes exp() run on denormals, see `run`). `training.memory.keep_freed_memory_in_heap` (what
train.py does on CPU) is process-wide, so HF gets it too. On a shared machine the median moves
with the load: the fastest step of each side and the load average are printed as well.
`--compile` also times ours compiled as the Trainer's --compile does (training/compile.py) and reports
its compile time, compiled_vs_eager (tokens/s, and per-round pairs) and the graphs and graph breaks
Dynamo counted over all steps (1 and 0: compiled once, no recompile). The Trainer's default is eager,
so the targets are judged on eager.

The breakdown times extra steps with module hooks (not the timed ones): forward per part,
backward per part (full backward hooks), and the optimizer (clip + AdamW).
"""

from __future__ import annotations

import json
import math
import os
import statistics
import time
from collections import defaultdict
from dataclasses import replace

import torch
from torch import nn

from common.cli import CommandLine
from components.deepseek_model import DeepSeekModel
from constants import PRESETS, TINY
from hugging_face import convert as hf_convert
from trainer import TrainConfig, make_optimizer
from training.compile import compile_model
from training.fast_head import head_loss_for
from training.memory import keep_freed_memory_in_heap
from training.precision import PRECISIONS, Precision, backward, choose_precision, step_with_scaler
from utils import count_active_parameters, pick_device

# HF experts implementations that run on CPU (transformers/integrations/moe.py; deepgemm/sonicmoe need
# CUDA). batched_mm gathers one weight matrix per (token, slot) (GBs at these sizes; benchmarks/moe.py).
HF_EXPERTS = ("eager", "grouped_mm", "batched_mm")
HF_DEFAULT_EXPERTS = ("eager", "grouped_mm")
BATCH_POOL = 8


# --- the machine's peak ------------------------------------------------------------------------

def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_peak_gflops(size: int = 2048, repeats: int = 5, device: torch.device | str = "cpu",
                       dtype: torch.dtype = torch.float32) -> float:
    """Best-of-`repeats` GFLOP/s of a square matmul (2 n^3 FLOPs each) on the current threads or GPU."""
    device = torch.device(device)
    a, b = torch.randn(size, size, device=device, dtype=dtype), torch.randn(size, size, device=device, dtype=dtype)
    out = torch.empty(size, size, device=device, dtype=dtype)
    torch.mm(a, b, out=out)                                      # warm the BLAS / cuBLAS
    synchronize(device)
    best = math.inf
    for _ in range(repeats):
        start = time.perf_counter()
        torch.mm(a, b, out=out)
        synchronize(device)
        best = min(best, time.perf_counter() - start)
    return 2 * size ** 3 / best / 1e9


# --- the two models ----------------------------------------------------------------------------

def hf_config(cfg, experts_implementation: str):
    hf_cfg = hf_convert.hf_config(cfg)                    # the project's one mapping of the config
    hf_cfg._attn_implementation = "sdpa"
    hf_cfg._experts_implementation = experts_implementation
    return hf_cfg


def build_hf(ours: DeepSeekModel, experts_implementation: str):
    """DeepseekV3ForCausalLM at our configuration holding our weights (hf_convert.py maps the names)."""
    from transformers import DeepseekV3ForCausalLM

    if ours.cfg.router_score != "sigmoid":
        raise ValueError("the HF side of this benchmark is DeepseekV3, which routes with sigmoid scores")
    hf_convert.check_exportable(ours.cfg, ours.state_dict())
    hf = DeepseekV3ForCausalLM(hf_config(ours.cfg, experts_implementation))
    with torch.no_grad():
        hf_convert.load_into_hf(hf, ours.state_dict(), ours.cfg)
    return hf.train()


# --- one training step ---------------------------------------------------------------------------

class Side:
    """A model, its fused AdamW (the Trainer's groups and settings), its loss call and its precision."""

    def __init__(self, name: str, model: nn.Module, loss_fn, train_cfg: TrainConfig,
                 precision: Precision | None = None) -> None:
        self.name, self.model, self.loss_fn = name, model, loss_fn
        self.optimizer, self.fused = make_optimizer(model, train_cfg)
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.grad_clip = train_cfg.grad_clip
        self.precision = precision or Precision("fp32", "cpu")
        self.device = next(model.parameters()).device
        self.scaler = self.precision.make_scaler()
        self.skipped_steps = 0

    def step(self, x: torch.Tensor, y: torch.Tensor) -> float:
        """One full optimizer step; returns its wall time in seconds (the GPU's work included)."""
        start = time.perf_counter()
        self.optimizer.zero_grad(set_to_none=True)
        with self.precision.autocast():
            loss = self.loss_fn(self.model, x, y)
        backward(loss, self.scaler)
        _, skipped = step_with_scaler(self.optimizer, self.scaler, self.params, self.grad_clip)
        self.skipped_steps += skipped
        synchronize(self.device)
        return time.perf_counter() - start


def ours_loss(model, x, y):
    return model(x, y, head_loss=head_loss_for(model, x, y))[1]     # as trainer.train_step calls it


def hf_loss(model, x, y):
    # shift_labels: our targets are already the next tokens, so HF scores the same B*T positions
    return model(input_ids=x, labels=y, shift_labels=y).loss


# --- where the time goes (ours) -------------------------------------------------------------------

def breakdown(side: Side, batches, steps: int) -> dict[str, float]:
    """Median milliseconds per part of our step, from module hooks on `steps` extra steps.

    Forward and backward of the embedding, attention (with its pre-norm), MoE and dense FFN (with
    theirs) are timed by module hooks. The output head and the cross-entropy run as one autograd
    node in training (training/fast_head.py), so "head_and_loss" is timed
    from the final norm's output to the loss (forward) and from the loss to the final norm's
    gradient (backward). "other" is the rest: final norm, residual adds, balance bookkeeping;
    in the backward also the embedding's scatter into the (V, D) table and its sum with the tied
    head's gradient.
    """
    model = side.model
    parts: dict[nn.Module, str] = {model.embed: "embedding"}
    for block in model.blocks:
        parts[block.attn_norm] = parts[block.attn] = "attention"
        parts[block.ffn_norm] = parts[block.ffn] = "moe" if block.is_moe else "dense_ffn"
    clock: dict[str, float] = defaultdict(float)
    started: dict[tuple[int, str], float] = {}
    marks: dict[str, float] = {}
    handles = []

    def begin(module, key):
        started[(id(module), key)] = time.perf_counter()

    def end(module, key, part):
        clock[f"{key}_{part}"] += time.perf_counter() - started.pop((id(module), key))

    def mark(name):
        marks[name] = time.perf_counter()

    for module, part in parts.items():
        handles.append(module.register_forward_pre_hook(lambda m, a: begin(m, "fwd")))
        handles.append(module.register_forward_hook(lambda m, a, o, part=part: end(m, "fwd", part)))
        if module is not model.embed:                 # its input (token ids) has no gradient
            handles.append(module.register_full_backward_pre_hook(lambda m, g: begin(m, "bwd")))
            handles.append(module.register_full_backward_hook(lambda m, gi, go, part=part: end(m, "bwd", part)))
    handles.append(model.norm.register_forward_hook(lambda m, a, o: mark("norm_out")))
    handles.append(model.norm.register_full_backward_pre_hook(lambda m, g: mark("norm_grad")))
    names = ("embedding", "attention", "dense_ffn", "moe")
    rows = []
    try:
        for step in range(steps):
            x, y = batches[step % len(batches)]
            clock.clear()
            side.optimizer.zero_grad(set_to_none=True)
            t0 = time.perf_counter()
            loss = side.loss_fn(model, x, y)
            t1 = time.perf_counter()
            loss.backward()
            t2 = time.perf_counter()
            torch.nn.utils.clip_grad_norm_(side.params, side.grad_clip)
            side.optimizer.step()
            t3 = time.perf_counter()
            row = {f"forward_{p}": clock[f"fwd_{p}"] for p in names}
            row["forward_head_and_loss"] = t1 - marks["norm_out"]
            row["forward_other"] = (t1 - t0) - sum(row.values())
            row["backward_head_and_loss"] = marks["norm_grad"] - t1
            row |= {f"backward_{p}": clock[f"bwd_{p}"] for p in names[1:]}
            row["backward_other"] = (t2 - t1) - sum(v for k, v in row.items() if k.startswith("backward_"))
            row |= {"forward_total": t1 - t0, "backward_total": t2 - t1, "optimizer": t3 - t2, "step_total": t3 - t0}
            rows.append(row)
    finally:
        for handle in handles:
            handle.remove()
    return {k: 1e3 * statistics.median(r[k] for r in rows) for k in rows[0]}


def profile_table(side: Side, batches, steps: int = 3, rows: int = 30) -> str:
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for step in range(steps):
            side.step(*batches[step % len(batches)])
    return prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows)


# --- main ------------------------------------------------------------------------------------------

def run(quick: bool = False, threads: int = 2, warmup: int | None = None, repeats: int | None = None,
        hf_experts: tuple[str, ...] = HF_DEFAULT_EXPERTS, compile_ours: bool = False,
        profile: bool = False, batch_size: int | None = None, device: str = "cpu", dtype: str = "fp32",
        preset: str = "small") -> dict:
    device = torch.device(device)
    precision = choose_precision(device, dtype)
    on_cpu = device.type == "cpu"
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    heap = keep_freed_memory_in_heap() if on_cpu else False    # as train.py does on CPU; process-wide: HF too
    load_before = os.getloadavg() if hasattr(os, "getloadavg") else None   # other processes (ours adds ~2)
    cfg = replace(TINY, vocab_size=512) if quick else PRESETS[preset]
    B = batch_size or (2 if quick else 8)
    T = cfg.context_length
    warmup = warmup if warmup is not None else (1 if quick else 3)
    repeats = repeats if repeats is not None else (2 if quick else 10)
    train_cfg = TrainConfig()

    ours = DeepSeekModel(cfg).to(device).train()
    # A few different random batches, cycled: training on one repeated batch makes the model memorise
    # it within steps, pushes many log-probabilities below -87 and times exp() on denormals and
    # underflows (several times slower), which real training on text does not see.
    batches = [(torch.randint(cfg.vocab_size, (B, T), device=device),
                torch.randint(cfg.vocab_size, (B, T), device=device)) for _ in range(BATCH_POOL)]
    x, y = batches[0]
    sides = {"ours": Side("ours", ours, ours_loss, train_cfg, precision)}

    # HF: every experts implementation is checked against our loss (fp32, no autocast: the same
    # function to 1e-4), the fastest one is kept
    with torch.no_grad():
        reference_loss = ours(x, y)[1].item()
    candidates = {}
    for implementation in hf_experts:
        try:
            hf = build_hf(ours, implementation).to(device)
            with torch.no_grad():
                hf_value = hf_loss(hf, x, y).item()
            if not math.isclose(hf_value, reference_loss, rel_tol=1e-4):
                raise AssertionError(f"HF loss {hf_value:.6f} != ours {reference_loss:.6f}")
            candidates[implementation] = Side(f"hf_{implementation}", hf, hf_loss, train_cfg, precision)
        except Exception as error:                         # report, keep benchmarking the others
            print(f"HF experts implementation {implementation!r} skipped: {type(error).__name__}: {error}")
    if not candidates:
        raise RuntimeError("no HF experts implementation ran; is transformers installed?")
    hf_trial = {}
    for implementation, side in candidates.items():       # a short trial picks the fastest
        side.step(x, y)
        hf_trial[implementation] = min(side.step(*batches[i]) for i in range(1 if quick else 3))
    best_impl = min(hf_trial, key=hf_trial.get)
    sides["hf"] = candidates[best_impl]

    compile_s = None
    if compile_ours:
        torch._dynamo.utils.counters.clear()
        compiled = compile_model(ours)                 # as the Trainer's --compile (training/compile.py)
        sides["ours_compiled"] = Side("ours_compiled", compiled, ours_loss, train_cfg, precision)
        start = time.perf_counter()
        sides["ours_compiled"].step(x, y)
        compile_s = time.perf_counter() - start

    # peak: measured before, between and after the timed rounds; the best is the machine's peak
    peak_size = (512 if quick else 2048) if on_cpu else 8192
    peak_dtype = precision.autocast_dtype or torch.float32
    peaks = [matmul_peak_gflops(peak_size, device=device, dtype=peak_dtype)]
    times: dict[str, list[float]] = {name: [] for name in sides}
    for round_ in range(warmup + repeats):
        for name, side in sides.items():
            seconds = side.step(*batches[round_ % len(batches)])       # both sides: the same batch
            if round_ >= warmup:
                times[name].append(seconds)
        if round_ == warmup + repeats // 2:
            peaks.append(matmul_peak_gflops(peak_size, device=device, dtype=peak_dtype))
    peaks.append(matmul_peak_gflops(peak_size, device=device, dtype=peak_dtype))
    peak = max(peaks)

    n_tokens = B * T
    active = count_active_parameters(ours)
    tokens_per_s = {name: n_tokens / statistics.median(t) for name, t in times.items()}
    best_tokens_per_s = {name: n_tokens / min(t) for name, t in times.items()}
    parts = breakdown(sides["ours"], batches, steps=2 if quick else 5) if on_cpu else None
    result = {
        "train_vs_hf": tokens_per_s["ours"] / tokens_per_s["hf"],
        "train_vs_hf_paired": statistics.median(h / o for o, h in zip(times["ours"], times["hf"], strict=True)),
        "mfu": 6 * active * tokens_per_s["ours"] / (peak * 1e9),
        "ours_tokens_per_s": tokens_per_s["ours"],
        "hf_tokens_per_s": tokens_per_s["hf"],
        "peak_gflops": peak,
        "active_params": active,
        "hf_mfu": 6 * active * tokens_per_s["hf"] / (peak * 1e9),
        # the fastest step of each side: on a shared machine, the closest to an unloaded one
        "best_tokens_per_s": best_tokens_per_s,
        "train_vs_hf_best": best_tokens_per_s["ours"] / best_tokens_per_s["hf"],
        "mfu_best": 6 * active * best_tokens_per_s["ours"] / (peak * 1e9),
        "hf_experts_implementation": best_impl,
        "hf_trial_ms": {k: 1e3 * v for k, v in hf_trial.items()},
        "median_ms": {name: 1e3 * statistics.median(t) for name, t in times.items()},
        "breakdown_ms": parts,
        "peak_gflops_samples": peaks,
        "skipped_steps": {name: side.skipped_steps for name, side in sides.items()},
        "config": {"preset": "TINY(vocab 512)" if quick else preset.upper(), "batch_size": B, "context_length": T,
                   "tokens_per_step": n_tokens, "threads": threads, "warmup": warmup, "repeats": repeats,
                   "dtype": precision.name, "precision": precision.describe(), "device": str(device),
                   "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
                   "peak_dtype": str(peak_dtype).removeprefix("torch."),
                   "torch": torch.__version__, "freed_memory_kept_in_heap": heap,
                   "load_average_before": load_before,
                   "fused_adamw": {name: side.fused for name, side in sides.items()},
                   "total_params": sum(p.numel() for p in ours.parameters())},
    }
    if compile_ours:
        result["ours_compiled_tokens_per_s"] = tokens_per_s["ours_compiled"]
        result["compiled_vs_eager"] = tokens_per_s["ours_compiled"] / tokens_per_s["ours"]
        result["compiled_vs_eager_paired"] = statistics.median(
            o / c for o, c in zip(times["ours"], times["ours_compiled"], strict=True))
        counters = torch._dynamo.utils.counters    # over the compile and every timed step
        result["compiled_graphs"] = counters["stats"]["unique_graphs"]
        result["compiled_graph_breaks"] = sum(counters["graph_break"].values())
        result["compiled_vs_hf"] = tokens_per_s["ours_compiled"] / tokens_per_s["hf"]
        result["compiled_mfu"] = 6 * active * tokens_per_s["ours_compiled"] / (peak * 1e9)
        result["compile_s"] = compile_s
    if profile:
        result["profile"] = profile_table(sides["ours"], batches)
    return result


def report(result: dict) -> None:
    c = result["config"]
    where = f"{c['threads']} threads" if c["device"] == "cpu" else c["device_name"]
    print(f"Training step (forward, CE, backward, clip, fused AdamW), {c['preset']}, batch {c['batch_size']} x "
          f"{c['context_length']}, {c['precision']}, {where}, median of {c['repeats']} interleaved steps")
    print(f"  peak (best {c['peak_dtype']} matmul) {result['peak_gflops']:8.1f} GFLOP/s   samples "
          + ", ".join(f"{p:.1f}" for p in result["peak_gflops_samples"]))
    print(f"  active parameters         {result['active_params']:,} (of {c['total_params']:,})")
    print(f"  ours                      {result['ours_tokens_per_s']:8,.0f} tokens/s  "
          f"({result['median_ms']['ours']:.1f} ms/step)  MFU {result['mfu']:.3f}")
    print(f"  HF ({result['hf_experts_implementation']:<10})           {result['hf_tokens_per_s']:8,.0f} tokens/s  "
          f"({result['median_ms']['hf']:.1f} ms/step)  MFU {result['hf_mfu']:.3f}   trial ms "
          + ", ".join(f"{k} {v:.0f}" for k, v in result["hf_trial_ms"].items()))
    if "ours_compiled_tokens_per_s" in result:
        print(f"  ours, torch.compile       {result['ours_compiled_tokens_per_s']:8,.0f} tokens/s  "
              f"({result['median_ms']['ours_compiled']:.1f} ms/step)  MFU {result['compiled_mfu']:.3f}  "
              f"(compile + first step {result['compile_s']:.1f} s)")
        print(f"  compiled_vs_eager = {result['compiled_vs_eager']:.3f}   (per-round pairs: "
              f"{result['compiled_vs_eager_paired']:.3f}; {result['compiled_graphs']} graph(s), "
              f"{result['compiled_graph_breaks']} graph break(s) over all steps)")
    print(f"  train_vs_hf = {result['train_vs_hf']:.3f}   (target >= 1.15; per-round pairs: "
          f"{result['train_vs_hf_paired']:.3f})")
    print(f"  mfu         = {result['mfu']:.3f}   (target >= 0.55)")
    best = result["best_tokens_per_s"]
    load = ", ".join(f"{v:.2f}" for v in c["load_average_before"] or ())
    print(f"  fastest steps: ours {best['ours']:,.0f}, HF {best['hf']:,.0f} tokens/s -> ratio "
          f"{result['train_vs_hf_best']:.3f}, MFU {result['mfu_best']:.3f}   (load average before: {load})")
    parts = result["breakdown_ms"]
    if parts is None:
        print("  (no breakdown on a GPU: the hooks would time the host)")
        return
    total = parts["step_total"]
    print(f"  where our step goes (hooked steps, {total:.1f} ms median):")
    for name, ms in parts.items():
        print(f"    {name:<32} {ms:7.1f} ms  {100 * ms / total:5.1f}%")
    if "profile" in result:
        print(result["profile"])


def main(argv: list[str] | None = None) -> dict:
    parser = CommandLine(prog="python -m benchmarks.train", description=__doc__.split("\n")[0])
    parser.add_argument("--json", help="write the results to this JSON file")
    parser.add_argument("--quick", action="store_true", help="TINY model, few steps: a smoke run, not a measurement")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--warmup", type=int)
    parser.add_argument("--repeats", type=int)
    parser.add_argument("--batch-size", type=int)
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    parser.add_argument("--dtype", default="fp32", choices=PRECISIONS,
                        help="fp32, or autocast in bf16/fp16 (fp16 with a GradScaler); auto = precision.py's policy")
    parser.add_argument("--preset", default="small", choices=("small", "default"),
                        help="model size (--quick overrides it with TINY)")
    parser.add_argument("--hf-experts", nargs="*", default=list(HF_DEFAULT_EXPERTS), choices=HF_EXPERTS,
                        help="HF experts implementations to try; the fastest is compared (default: %(default)s)")
    parser.add_argument("--compile", action="store_true", help="also time ours compiled as the Trainer does "
                        "(compile time, compiled_vs_eager, graphs)")
    parser.add_argument("--profile", action="store_true", help="print torch.profiler's top ops of our step")
    args = parser.parse_args(argv)
    try:                                  # an unavailable device or an impossible dtype: one line, before work
        choose_precision(pick_device(args.device), args.dtype)
    except ValueError as error:
        parser.error(str(error))
    result = run(quick=args.quick, threads=args.threads, warmup=args.warmup, repeats=args.repeats,
                 hf_experts=tuple(args.hf_experts), compile_ours=args.compile, profile=args.profile,
                 batch_size=args.batch_size, device=args.device, dtype=args.dtype, preset=args.preset)
    report(result)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({k: v for k, v in result.items() if k != "profile"}, f, indent=2)
    return result


if __name__ == "__main__":
    main()
