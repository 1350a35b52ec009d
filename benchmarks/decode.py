"""Decode-step cost and cache size: MHA vs MLA naive vs MLA absorbed, at growing context.

For each context S, a cache of S-1 tokens is pre-filled, then one attention layer's decode step
(the S-th token, attending over all S) is timed, median over repeats after a warmup. The three
variants are timed round-robin so that load from other processes hits them alike.
    MHA           CausalSelfAttention(n_kv_heads = n_heads): reads 2*H*D numbers per cached token
    MLA naive     absorb=False: re-decompresses K and V for every cached token at every step
    MLA absorbed  absorb=True: W_UK folded into the query, W_UV after attention (docs/maths.md §1.6)
Cache bytes are measured from the filled LayerCache (`nbytes()`), not computed from a formula.
A last section (skipped when components/deepseek_model.py is missing) times whole-model greedy
decoding in tokens/s.

    python -m benchmarks.decode [--json OUT] [--quick]
"""

from __future__ import annotations

import json
import statistics
import time
from dataclasses import replace

import torch

from common.cli import CommandLine
from components.attention import CausalSelfAttention
from components.deepseek_model import DeepSeekModel
from components.kv_cache import LayerCache
from components.multi_head_latent_attention import MultiHeadLatentAttention
from constants import DEFAULT

CONTEXTS = (256, 512, 1024, 2048, 4096)
MAX_POSITIONS = 4096
VARIANTS = ("mha", "mla_naive", "mla_absorbed")


def build_layers(cfg=DEFAULT) -> dict[str, tuple[torch.nn.Module, bool]]:
    """name -> (module, absorb). Both MLA variants share one module (and one cache)."""
    torch.manual_seed(0)
    mha = CausalSelfAttention(cfg.d_model, cfg.n_heads, cfg.n_heads, max_positions=MAX_POSITIONS).eval()
    sizes = cfg.resolved()
    mla = MultiHeadLatentAttention(cfg.d_model, cfg.n_heads, cfg.kv_latent_dim, sizes.rope_head_dim,
                                   sizes.qk_nope_head_dim, sizes.v_head_dim, q_latent_dim=cfg.q_latent_dim,
                                   max_positions=MAX_POSITIONS, norm_eps=cfg.norm_eps).eval()
    return {"mha": (mha, False), "mla_naive": (mla, False), "mla_absorbed": (mla, True)}


@torch.no_grad()
def bench_context(layers, context: int, repeats: int, warmup: int) -> tuple[dict, dict]:
    """Decode-step seconds of each variant (all repeats) and its cache bytes at `context` tokens."""
    d_model = next(iter(layers.values()))[0].w_o.out_features
    prefill = torch.randn(1, context - 1, d_model)
    step = torch.randn(1, 1, d_model)
    caches = {}
    for module, _ in layers.values():
        if id(module) not in caches:                  # MLA naive/absorbed cache the same tensors
            caches[id(module)] = LayerCache()
            module(prefill, cache=caches[id(module)])
    times = {name: [] for name in layers}
    for i in range(warmup + repeats):
        for name, (module, absorb) in layers.items():
            cache = caches[id(module)]
            cache.length = context - 1                # forget the previous step's token (storage is reused)
            start = time.perf_counter()
            module(step, cache=cache, absorb=absorb)
            elapsed = time.perf_counter() - start
            if i >= warmup:
                times[name].append(elapsed)
    cache_bytes = {name: caches[id(module)].nbytes() for name, (module, _) in layers.items()}  # S = context
    return times, cache_bytes


@torch.no_grad()
def bench_model(quick: bool) -> dict | None:
    """Whole-model greedy decode tokens/s (DEFAULT, random weights) per attention path, or None.

    The prompt is pre-filled untimed; then each decode step (one token through every layer, the
    head and the argmax, i.e. what `generate(temperature=0.0)` does per token) is timed on its own.
    """
    prompt_len, new_tokens = (128, 8) if quick else (1024, 32)
    runs = {"mha": ("mha", False), "mla_naive": ("mla", False), "mla_absorbed": ("mla", True)}
    results = {}
    print(f"\nWhole model (DEFAULT: {DEFAULT.n_layers} layers, MoE), batch 1, greedy decode after a "
          f"{prompt_len}-token prompt, median of {new_tokens} steps:")
    for name, (attention, absorb) in runs.items():
        torch.manual_seed(0)
        cfg = replace(DEFAULT, attention=attention, context_length=prompt_len + new_tokens + 1)
        model = DeepSeekModel(cfg).eval()
        caches = model.new_caches()
        logits, _, _ = model(torch.randint(0, cfg.vocab_size, (1, prompt_len)), caches=caches, absorb=absorb)
        steps = []
        for _ in range(new_tokens):
            start = time.perf_counter()
            next_token = logits[:, -1].argmax(dim=-1, keepdim=True)                    # (1, 1)
            logits, _, _ = model(next_token, caches=caches, absorb=absorb)              # (1, 1, V)
            steps.append(time.perf_counter() - start)
        results[name] = 1.0 / statistics.median(steps)
        print(f"  {name:<13} {results[name]:8.1f} tokens/s   (cache {sum(c.nbytes() for c in caches) / 2**20:.2f} MiB)")
    return results


def main() -> None:
    parser = CommandLine(prog="python -m benchmarks.decode", description=__doc__.splitlines()[0])
    parser.add_argument("--json", help="write the results to this JSON file")
    parser.add_argument("--quick", action="store_true", help="fewer contexts and repeats (a smoke run)")
    args = parser.parse_args()
    torch.set_num_threads(2)
    contexts = (256, 2048) if args.quick else CONTEXTS
    repeats, warmup = (5, 2) if args.quick else (30, 5)
    cfg = DEFAULT.resolved()
    print(f"One attention layer, decode step, batch 1, fp32, {torch.get_num_threads()} threads: d={cfg.d_model}, "
          f"H={cfg.n_heads}, D={cfg.head_dim}, C={cfg.kv_latent_dim}, R={cfg.rope_head_dim}; median of {repeats} (min)")
    print(f"{'context':>8} | {'MHA ms':>8} {'naive ms':>9} {'absorbed ms':>12} | {'speedup (min)':>16} | "
          f"{'MHA KiB':>8} {'MLA KiB':>8} {'MHA/MLA':>8}")
    layers = build_layers(cfg)
    results: dict = {"times_ms": {}, "min_times_ms": {}, "cache_bytes": {}, "speedup_absorbed_vs_naive": {}}
    for context in contexts:
        all_times, cache_bytes = bench_context(layers, context, repeats, warmup)
        times = {name: statistics.median(t) for name, t in all_times.items()}
        fastest = {name: min(t) for name, t in all_times.items()}   # the least disturbed run, for reference
        speedup = times["mla_naive"] / times["mla_absorbed"]
        speedup_min = fastest["mla_naive"] / fastest["mla_absorbed"]
        results["times_ms"][str(context)] = {name: 1e3 * t for name, t in times.items()}
        results["min_times_ms"][str(context)] = {name: 1e3 * t for name, t in fastest.items()}
        results["cache_bytes"][str(context)] = cache_bytes
        results["speedup_absorbed_vs_naive"][str(context)] = speedup
        print(f"{context:>8} | {1e3 * times['mha']:8.3f} {1e3 * times['mla_naive']:9.3f} "
              f"{1e3 * times['mla_absorbed']:12.3f} | {speedup:7.1f}x {speedup_min:6.1f}x"
              f" | {cache_bytes['mha'] / 1024:8.0f} {cache_bytes['mla_absorbed'] / 1024:8.0f} "
              f"{cache_bytes['mha'] / cache_bytes['mla_absorbed']:7.1f}x")
    if "2048" in results["speedup_absorbed_vs_naive"]:
        results["absorbed_vs_naive_2048"] = results["speedup_absorbed_vs_naive"]["2048"]
        verdict = "meets" if results["absorbed_vs_naive_2048"] >= 4 else "MISSES"
        print(f"absorbed vs naive at 2048: {results['absorbed_vs_naive_2048']:.1f}x ({verdict} the 4x target)")
    results["model_tokens_per_s"] = bench_model(args.quick)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
