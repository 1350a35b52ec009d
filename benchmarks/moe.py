"""MoE layer throughput: our sort-dispatched MoE vs a dense FFN of equal active width vs HF DeepseekV3MoE.

    python -m benchmarks.moe [--json OUT] [--repeats 10] [--threads 2] [--input-grad]

CPU, fp32, forward + backward (loss = mean(y^2)), 2,048 tokens of width 256; 8 routed experts
(top-2) + 1 shared expert, expert hidden width 512. The dense baseline is one SwiGLU of hidden width
3 * 512 = the MoE's active width, so the two do the same matmul FLOPs per token: the ratio
`moe_vs_dense` measures the whole cost of routing and dispatch. HF runs with the same weights (same
routing) under every experts implementation that works on CPU; `moe_vs_hf` is against the fastest.
By default the input needs no gradient (the layer alone: backward computes the weight gradients and
the hidden-layer gradient, 7 of the 9 matmuls per expert and token); `--input-grad` also computes
dL/dx, as inside a model. Models are timed round-robin (one step of each per round) so that a busy
machine slows all alike; the median over rounds is reported, and the median of the per-round ratios
(`moe_vs_hf_paired`).
"""

from __future__ import annotations

import json
import statistics
import time

import torch

from common.cli import CommandLine
from components.expert import Expert
from components.moe import MoE
from hugging_face.convert import moe_to_hf

D, E, K, N_SHARED, HIDDEN, BATCH, SEQ = 256, 8, 2, 1, 512, 8, 256   # N = BATCH * SEQ = 2,048 tokens
# HF's CPU-capable experts implementations (transformers/integrations/moe.py; "deepgemm" and "sonicmoe"
# are CUDA-only). "batched_mm" gathers one weight matrix per (token, slot): 4,096 x (2I*D + D*I) floats,
# about 6.4 GB forward and as much again backward at these sizes, and ran at ~100 tokens/s when measured
# once. It is meant for decoding a few tokens, so it is off by default: `--hf-impls eager batched_mm grouped_mm`.
HF_IMPLEMENTATIONS = ("eager", "batched_mm", "grouped_mm")
HF_DEFAULT = ("eager", "grouped_mm")


def build_ours() -> MoE:
    return MoE(D, HIDDEN, n_routed_experts=E, n_shared_experts=N_SHARED, top_k=K, score="sigmoid", use_bias=True)


def build_hf(ours: MoE, implementation: str):
    """DeepseekV3MoE holding our weights, so that it routes exactly like ours."""
    from transformers import DeepseekV3Config
    from transformers.models.deepseek_v3.modeling_deepseek_v3 import DeepseekV3MoE

    cfg = DeepseekV3Config(hidden_size=D, n_routed_experts=E, num_experts_per_tok=K, n_group=1, topk_group=1,
                           n_shared_experts=N_SHARED, moe_intermediate_size=HIDDEN, routed_scaling_factor=1.0,
                           norm_topk_prob=True)
    cfg._experts_implementation = implementation
    hf = DeepseekV3MoE(cfg)
    hf.load_state_dict(moe_to_hf(ours.state_dict()), strict=True)       # the project's one mapping
    return hf


def train_step(model: torch.nn.Module, x: torch.Tensor) -> float:
    """One forward + backward; returns its wall time in seconds."""
    model.zero_grad(set_to_none=True)
    x.grad = None
    start = time.perf_counter()
    y = model(x)
    y = y[0] if isinstance(y, tuple) else y                      # our MoE also returns its stats
    y.square().mean().backward()
    return time.perf_counter() - start


def main() -> None:
    parser = CommandLine(prog="python -m benchmarks.moe", description=__doc__.split("\n")[0])
    parser.add_argument("--json", help="write the results to this JSON file")
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--input-grad", action="store_true", help="also backpropagate into the input, as in a model")
    parser.add_argument("--hf-impls", nargs="*", default=list(HF_DEFAULT), choices=HF_IMPLEMENTATIONS,
                        help="HF experts implementations to time (default: %(default)s)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    ours = build_ours()
    models = {"ours_moe": ours, "dense_swiglu": Expert(D, (K + N_SHARED) * HIDDEN)}
    x = torch.randn(BATCH, SEQ, D, requires_grad=args.input_grad)
    for implementation in args.hf_impls:
        try:
            hf = build_hf(ours, implementation)
            with torch.no_grad():
                torch.testing.assert_close(hf(x), ours(x)[0], atol=1e-4, rtol=1e-4)   # same routing, same output
            models[f"hf_{implementation}"] = hf
        except Exception as error:                                   # report, keep benchmarking the others
            print(f"HF experts implementation {implementation!r} skipped: {type(error).__name__}: {error}")

    times: dict[str, list[float]] = {name: [] for name in models}
    for round_ in range(args.warmup + args.repeats):
        for name, model in models.items():
            seconds = train_step(model, x)
            if round_ >= args.warmup:
                times[name].append(seconds)

    n_tokens = BATCH * SEQ
    tokens_per_s = {name: n_tokens / statistics.median(t) for name, t in times.items()}
    hf_names = [name for name in tokens_per_s if name.startswith("hf_")]
    best_hf = max(hf_names, key=tokens_per_s.get) if hf_names else None
    with torch.no_grad():
        loads = ours.router(x.reshape(-1, D)).tokens_per_expert.tolist()
    result = {
        "config": {"d_model": D, "n_routed_experts": E, "top_k": K, "n_shared_experts": N_SHARED,
                   "expert_hidden_dim": HIDDEN, "tokens": n_tokens, "dense_hidden_dim": (K + N_SHARED) * HIDDEN,
                   "threads": args.threads, "repeats": args.repeats, "dtype": "float32", "device": "cpu",
                   "input_grad": args.input_grad,
                   "torch": torch.__version__, "tokens_per_expert": loads},
        "tokens_per_s": tokens_per_s,
        "median_ms": {name: 1e3 * statistics.median(t) for name, t in times.items()},
        "moe_vs_dense": tokens_per_s["ours_moe"] / tokens_per_s["dense_swiglu"],
        "moe_vs_hf": tokens_per_s["ours_moe"] / tokens_per_s[best_hf] if best_hf else None,
        # per round: the HF step over ours in the same round (a slow spell of the machine cancels)
        "moe_vs_hf_paired": statistics.median(h / o for o, h in zip(times["ours_moe"], times[best_hf], strict=True))
        if best_hf else None,
        "best_hf": best_hf,
    }

    print(f"MoE layer, forward+backward, {n_tokens} tokens, D={D}, {E} routed (top-{K}) + {N_SHARED} shared, "
          f"I={HIDDEN}, fp32 CPU, {args.threads} threads, input gradient {'on' if args.input_grad else 'off'}; "
          f"loads {loads}")
    for name, rate in tokens_per_s.items():
        print(f"  {name:<16} {rate:>10,.0f} tokens/s   ({result['median_ms'][name]:.1f} ms/step)")
    print(f"  moe_vs_dense = {result['moe_vs_dense']:.2f}   (target >= 0.85)")
    if best_hf:
        print(f"  moe_vs_hf    = {result['moe_vs_hf']:.2f}   (vs {best_hf}; target >= 1.5; "
              f"per-round pairs: {result['moe_vs_hf_paired']:.2f})")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
