"""Smoke tests of the benchmarks: each runs in its smallest mode and writes the JSON it promises.

Only the presence and finiteness of the reported numbers are checked, never their size: timings on
a shared CI machine say nothing, and a timed assertion would be a flaky test.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def run_benchmark(module: str, tmp_path: Path, *args: str) -> dict:
    out = tmp_path / f"{module}.json"
    done = subprocess.run([sys.executable, "-m", f"benchmarks.{module}", "--json", str(out), *args],
                          cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    return json.loads(out.read_text())


def assert_finite_numbers(result: dict, keys) -> None:
    for key in keys:
        assert key in result, f"missing {key!r} in {sorted(result)}"
        value = result[key]
        values = value.values() if isinstance(value, dict) else [value]
        for v in values:
            assert isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v), f"{key}={value!r}"


def test_train_benchmark_quick(tmp_path):
    pytest.importorskip("transformers")
    result = run_benchmark("train", tmp_path, "--quick")
    assert_finite_numbers(result, ["train_vs_hf", "mfu", "ours_tokens_per_s", "hf_tokens_per_s", "peak_gflops",
                                   "active_params", "breakdown_ms", "best_tokens_per_s", "train_vs_hf_best",
                                   "train_vs_hf_paired"])
    parts = result["breakdown_ms"]
    for part in ("forward_attention", "forward_moe", "forward_dense_ffn", "forward_head_and_loss",
                 "backward_total", "optimizer", "step_total"):
        assert part in parts
    assert result["active_params"] > 0 and result["hf_experts_implementation"]


@pytest.mark.parametrize("extra", [(), ("--input-grad",)], ids=["layer", "input_grad"])
def test_moe_benchmark_tiny(tmp_path, extra):
    pytest.importorskip("transformers")
    result = run_benchmark("moe", tmp_path, "--repeats", "1", "--warmup", "0", "--hf-impls", "eager", *extra)
    assert_finite_numbers(result, ["moe_vs_dense", "moe_vs_hf", "moe_vs_hf_paired", "tokens_per_s", "median_ms"])
    assert result["config"]["input_grad"] == bool(extra)


def test_decode_benchmark_quick(tmp_path):
    result = run_benchmark("decode", tmp_path, "--quick")
    assert_finite_numbers(result, ["absorbed_vs_naive_2048", "speedup_absorbed_vs_naive"])
    for context, times in result["times_ms"].items():
        assert_finite_numbers(times, times.keys())
        assert_finite_numbers(result["cache_bytes"][context], result["cache_bytes"][context].keys())
    if result.get("model_tokens_per_s") is not None:
        assert_finite_numbers(result, ["model_tokens_per_s"])
