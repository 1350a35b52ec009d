"""Ablations: a grid (or a list) of ModelConfig variants x seeds, one budget for all, JSON records.

    python -m ablation --study latent --preset tiny --grid kv_latent_dim=32,64,128 --seeds 0 1 --tokens 200000
    python -m ablation --study attention --variant mha:attention=mha --variant gqa:attention=gqa,n_kv_heads=2 ...
    python -m ablation report runs/ablations/latent      # Markdown table + plots (report.py)

Every run is `Trainer(replace(preset, **base_sets, **variant), TrainConfig(seed=s, max_steps=...))`,
the project's one training loop; this file only expands the grid, fixes the budget and writes one
record per (variant, seed): `<out>/<run>__seed<s>.json`. A record carries a key (hash of the model
config, train config, data and budget); re-running skips every run whose record holds the same key,
so an interrupted grid resumes where it stopped (a run cut short wrote nothing and is redone).

Budget: `--tokens N` gives every run ceil(N / tokens_per_step) optimizer steps, so results do not
depend on machine load (only tokens/s does); `--time-budget MIN` is offered but is not reproducible.
`--vocab-top N` keeps the N-1 most frequent training tokens and maps the rest to one "other" id,
so a CPU can afford the output head (the full GPT-2 head is ~80% of a small model's FLOPs).
Every flag and override is checked before any work: a bad one prints one line, exit code 2.
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import json
import math
import os
import platform
import re
import shlex
import subprocess
import sys
import time
import warnings
from dataclasses import dataclass, fields, replace
from pathlib import Path

from ablation.report import main as report_main
from ablation.report import write_report
from common.cli import CommandLine, UsageError, field_types, parse_value, path_arg
from components.config import ModelConfig
from constants import PRESETS, PROJECT_ROOT
from data import prepare_data
from data.sources import display_path, is_hub_id
from trainer import TrainConfig, Trainer
from training.memory import step_memory_problem
from utils import count_active_parameters, count_parameters, kv_cache_bytes_per_token, pick_device

RECORD_VERSION = 1
SERIES_POINTS = 100           # at most this many points of each over-time series go into a record
STUDY_WEIGHT_DECAY = 0.1      # AdamW decay of every study run unless --set weight_decay=... (see below)
# TrainConfig fields the harness sets itself (the rest may be overridden with --set / --grid)
OWN_TRAIN_FIELDS = {"seed", "max_steps", "epochs", "time_budget_min", "out_dir", "quiet", "batch_size"}


@dataclass(frozen=True)
class RunSpec:
    name: str                  # variant name and/or grid values, e.g. "kv_latent_dim=32,top_k=1"
    overrides: dict            # the keys this run changes on top of the base
    seed: int
    model_cfg: ModelConfig
    train_cfg: TrainConfig

    @property
    def file_name(self) -> str:
        return f"{re.sub(r'[^A-Za-z0-9_.=+-]+', '_', self.name)}__seed{self.seed}.json"


# --- parsing: KEY=VALUE, grids, variants --------------------------------------------------------

def typed_value(key: str, text: str) -> tuple[str, object]:
    """('top_k', '2') -> ('top_k', 2), typed by the ModelConfig/TrainConfig field; UsageError if unknown."""
    key = key.strip().replace("-", "_")
    types = field_types(ModelConfig) | field_types(TrainConfig)
    if key not in types or key in OWN_TRAIN_FIELDS:
        own = f"; {key} is set by the harness's own flags" if key in OWN_TRAIN_FIELDS else ""
        names = ", ".join(f.name for f in fields(ModelConfig))
        raise UsageError(f"unknown key {key!r}{own}; ModelConfig keys: {names}; or a TrainConfig field")
    try:
        return key, parse_value(text.strip(), types[key])
    except (ValueError, StopIteration) as err:
        raise UsageError(f"{key}={text}: {err}") from None


def parse_assignments(text: str, flag: str) -> dict:
    """'attention=gqa,n_kv_heads=2' -> {'attention': 'gqa', 'n_kv_heads': 2}."""
    out = {}
    for part in text.split(","):
        key, sep, value = part.partition("=")
        if not sep or not key.strip() or not value.strip():
            raise UsageError(f"{flag} {text!r}: expected KEY=VALUE[,KEY=VALUE...], e.g. {flag} attention=mha")
        k, v = typed_value(key, value)
        out[k] = v
    return out


def parse_grid(items: list[str]) -> list[tuple[str, list]]:
    """['kv_latent_dim=32,64', 'top_k=1,2'] -> [('kv_latent_dim', [32, 64]), ('top_k', [1, 2])]."""
    grid = []
    for item in items:
        key, sep, values = item.partition("=")
        parts = values.split(",")
        if not sep or not key.strip() or not all(p.strip() for p in parts):
            raise UsageError(f"--grid {item!r}: expected KEY=V1,V2,..., e.g. --grid top_k=1,2,4")
        typed = [typed_value(key, p)[1] for p in parts]
        name = typed_value(key, parts[0])[0]
        if name in [g[0] for g in grid]:
            raise UsageError(f"--grid {name} given twice; list all its values in one --grid")
        grid.append((name, typed))
    return grid


def parse_variants(items: list[str]) -> list[tuple[str, dict]]:
    """['mha:attention=mha', 'gqa:attention=gqa,n_kv_heads=2'] -> [('mha', {...}), ('gqa', {...})]."""
    variants = []
    for item in items:
        name, sep, body = item.partition(":")
        if not sep or not re.fullmatch(r"[A-Za-z0-9_.+-]+", name):
            raise UsageError(f"--variant {item!r}: expected NAME:KEY=VALUE[,KEY=VALUE...] "
                             "(NAME of letters, digits, _ . + -), e.g. --variant mha:attention=mha")
        if name in [v[0] for v in variants]:
            raise UsageError(f"--variant name {name!r} used twice")
        variants.append((name, parse_assignments(body, "--variant") if body.strip() else {}))
    return variants


def expand(grid: list[tuple[str, list]], variants: list[tuple[str, dict]]) -> list[tuple[str, dict]]:
    """Cartesian product of the variants (or one unnamed base) and the grid values -> (name, overrides)."""
    runs = []
    for vname, vover in variants or [("", {})]:
        for combo in itertools.product(*[values for _, values in grid]):
            gover = dict(zip([k for k, _ in grid], combo, strict=True))
            name = ",".join(([vname] if vname else []) + [f"{k}={v}" for k, v in gover.items()])
            runs.append((name or "base", vover | gover))
    return runs


def parse_shard(text: str | None) -> tuple[int, int] | None:
    """'1/2' -> (1, 2): this process takes runs 1, 3, 5, ... of the expanded list."""
    if text is None:
        return None
    match = re.fullmatch(r"(\d+)/(\d+)", text.strip())
    if not match or not int(match[1]) < int(match[2]):
        raise UsageError(f"--shard {text!r}: expected K/N with 0 <= K < N, e.g. --shard 0/2")
    return int(match[1]), int(match[2])


def without_shard(argv: list[str]) -> list[str]:
    out, skip = [], False
    for arg in argv:
        if skip or arg.startswith("--shard="):
            skip = False
            continue
        skip = arg == "--shard"
        if not skip:
            out.append(arg)
    return out


# --- configs, budget, key ----------------------------------------------------------------------

def build_specs(args) -> list[RunSpec]:
    """Every (variant, seed) with its validated configs; UsageError on anything wrong."""
    if args.preset not in PRESETS:
        raise UsageError(f"--preset {args.preset!r}: choose one of {sorted(PRESETS)}")
    base = {}
    for item in args.set:
        base |= parse_assignments(item, "--set")
    runs = expand(parse_grid(args.grid), parse_variants(args.variant))
    if (args.tokens is None) == (args.time_budget is None):
        raise UsageError("give exactly one budget: --tokens N (same tokens for every run) or --time-budget MIN")
    if args.tokens is not None and args.tokens < 1 or args.time_budget is not None and args.time_budget <= 0:
        raise UsageError("--tokens / --time-budget must be > 0")
    if args.evals < 1 or args.batch_size < 1 or args.threads < 1:
        raise UsageError("--evals, --batch-size and --threads must be >= 1")
    if args.context_length is not None and args.context_length < 1:       # 0 is not "the preset's"
        raise UsageError(f"--context-length {args.context_length}: must be >= 1 (leave it out for the preset's)")
    if args.vocab_top is not None and args.vocab_top < 2:
        raise UsageError("--vocab-top must be >= 2 (N-1 kept tokens + 1 'other')")
    if not args.seeds:
        raise UsageError("--seeds needs at least one seed")
    model_keys = {f.name for f in fields(ModelConfig)}
    specs = []
    for name, over in runs:
        settings = base | over
        if args.context_length is not None:
            settings["context_length"] = args.context_length
        if args.vocab_top:
            settings["vocab_size"] = args.vocab_top
        m_over = {k: v for k, v in settings.items() if k in model_keys}
        t_over = {k: v for k, v in settings.items() if k not in model_keys}
        try:
            model_cfg = replace(PRESETS[args.preset], **m_over)
            steps = None
            if args.tokens is not None:
                steps = math.ceil(args.tokens / (args.batch_size * model_cfg.context_length
                                                 * t_over.get("grad_accum", 1)))
            planned = steps or 1000                         # a time budget: steps unknown, assume 1000
            # the studies' own recipe: weight decay stays at 0.1 whatever train.py's default (tuned for SMALL's
            # multi-epoch runs) is, so that the run keys and the committed records stay valid
            defaults = {"warmup_steps": max(1, planned // 10), "eval_every": max(1, math.ceil(planned / args.evals)),
                        "log_every": max(1, planned // SERIES_POINTS), "save_every": 0,
                        "sample_tokens": 0, "device": "cpu", "weight_decay": STUDY_WEIGHT_DECAY}
            for seed in args.seeds:
                train_cfg = TrainConfig(**(defaults | t_over), batch_size=args.batch_size, max_steps=steps,
                                        time_budget_min=args.time_budget, seed=seed, out_dir=None, quiet=True)
                specs.append(RunSpec(name, over, seed, model_cfg, train_cfg))
        except (TypeError, ValueError) as err:
            raise UsageError(f"run {name!r}: {err}") from None
    return specs


def run_key(spec: RunSpec, data_id: dict) -> str:
    """Hash of everything that determines a run's result (not its name, study or data path)."""
    data_id = {k: data_id.get(k) for k in ("cache_key", "vocab_top")}      # the corpus by content
    train = {k: v for k, v in spec.train_cfg.to_dict().items() if k not in ("quiet", "out_dir")}
    blob = json.dumps({"v": RECORD_VERSION, "model": spec.model_cfg.to_dict(), "train": train, "data": data_id},
                      sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def source_hash() -> str:
    """sha256 of the code a run executes (components/, data/, the trainer's modules): tells apart runs made
    while the working tree was edited, which a commit id plus a dirty flag cannot."""
    digest = hashlib.sha256()
    for path in sorted([*PROJECT_ROOT.glob("components/*.py"), *PROJECT_ROOT.glob("data/*.py"),
                        *PROJECT_ROOT.glob("training/*.py"), PROJECT_ROOT / "trainer.py", PROJECT_ROOT / "utils.py"]):
        digest.update(path.name.encode() + path.read_bytes())
    return digest.hexdigest()[:16]


def code_version() -> dict | str:
    """{'commit', 'dirty', 'source_sha256'} from git and the files, or 'unknown' outside a checkout."""
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=PROJECT_ROOT, capture_output=True,
                                text=True, timeout=10, check=True).stdout.strip()
        status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=PROJECT_ROOT,
                                capture_output=True, text=True, timeout=10, check=True).stdout
        return {"commit": commit, "dirty": bool(status.strip()), "source_sha256": source_hash()}
    except (OSError, subprocess.SubprocessError):
        return "unknown"


# --- data ----------------------------------------------------------------------------------------

def compact_vocabulary(train_ids, val_ids, size: int):
    """Keep the size-1 most frequent training tokens (ids 0..size-2 by frequency), the rest -> size-1."""
    import numpy as np

    counts = np.bincount(np.asarray(train_ids, dtype=np.int64), minlength=50257)
    kept = np.argsort(-counts, kind="stable")[: size - 1]
    lut = np.full(max(len(counts), int(np.max(val_ids)) + 1), size - 1, dtype=np.int64)
    lut[kept] = np.arange(size - 1)
    train, val = lut[np.asarray(train_ids)], lut[np.asarray(val_ids)]
    coverage = {"train": float((train != size - 1).mean()), "val": float((val != size - 1).mean())}
    return train, val, coverage


def load_data(args) -> tuple:
    prepared = prepare_data(args.data, cache_dir=args.cache_dir, quiet=True)
    train, val = prepared.train_ids, prepared.val_ids
    data_id = {"cache_key": prepared.cache_key, "vocab_top": args.vocab_top, "source": prepared.summary.source,
               "tokens_train": int(len(train)), "tokens_val": int(len(val))}
    if args.vocab_top:
        train, val, data_id["coverage"] = compact_vocabulary(train, val, args.vocab_top)
    return train, val, data_id


# --- one run -------------------------------------------------------------------------------------

def _sample(rows: list, n: int = SERIES_POINTS) -> list:
    if len(rows) <= n:
        return rows
    picks = sorted({round(i * (len(rows) - 1) / (n - 1)) for i in range(n)})
    return [rows[i] for i in picks]


def moe_layer_names(cfg: ModelConfig) -> list[str]:
    main = [f"layer{i}" for i in range(cfg.n_layers) if cfg.is_moe_layer(i)]
    return main + ([f"mtp{k}" for k in range(1, cfg.mtp_depth + 1)] if cfg.ffn == "moe" else [])


def expert_load_summary(cfg: ModelConfig, rows: list) -> dict | None:
    """Per MoE layer: final and mean max/ideal load ratio, final dead experts, dropped tokens, a series."""
    rows = [r for r in rows if r.get("load_max_ratio")]
    if not rows:
        return None
    names = moe_layer_names(cfg)
    ratios = [r["load_max_ratio"] for r in rows]
    return {"layers": names,
            "final_max_ratio": ratios[-1],
            "mean_max_ratio": [sum(col) / len(col) for col in zip(*ratios, strict=True)],
            "final_dead_experts": rows[-1]["dead_experts"],
            "dropped_tokens": sum(sum(r["dropped_tokens"]) for r in rows),
            "series": [{"step": r["step"], "tokens": r["tokens"], "max_ratio": r["load_max_ratio"],
                        "dead": r["dead_experts"]} for r in _sample(rows)]}


def run_one(spec: RunSpec, study: str, train_ids, val_ids, data_id: dict, key: str) -> dict:
    import torch

    started = time.perf_counter()
    trainer = Trainer(spec.model_cfg, spec.train_cfg, train_ids=train_ids, val_ids=val_ids)
    model, cfg = trainer.raw_model, spec.model_cfg
    summary = trainer.train()
    train_rows = [r for r in trainer.metrics if r["kind"] == "train"]
    evals = [r for r in trainer.metrics if r["kind"] == "eval"]
    embedding, active = model.embed.weight.numel(), count_active_parameters(model)
    return {
        "record_version": RECORD_VERSION, "key": key, "study": study, "name": spec.name,
        "overrides": spec.overrides, "seed": spec.seed,
        "model_config": cfg.to_dict(), "train_config": spec.train_cfg.to_dict(), "data": data_id,
        "code_version": code_version(),
        "budget": {"tokens": summary["tokens"], "steps": summary["steps"],
                   "time_budget_min": spec.train_cfg.time_budget_min, "tokens_per_step": trainer.tokens_per_step,
                   "stopped_because": summary["stopped_because"]},
        "final_val_loss": summary["final_val_loss"], "best_val_loss": summary["best_val_loss"],
        "final_train_ce": train_rows[-1]["ce"] if train_rows else None,
        "tokens_per_s": summary["tokens_per_s"], "wall_time_s": time.perf_counter() - started,
        "params": {"total": count_parameters(model), "active": active, "embedding": embedding,
                   "active_non_embedding": active - model.head.weight.numel()},   # without the output head
        "kv_cache_bytes_per_token": {"bf16": kv_cache_bytes_per_token(cfg, 2),
                                     "fp32": kv_cache_bytes_per_token(cfg, 4)},
        "expert_load": expert_load_summary(cfg, train_rows),
        "val_series": [{"step": r["step"], "val_loss": r["val_loss"]} for r in evals],
        "train_series": [{"step": r["step"], "tokens": r["tokens"], "ce": r["ce"], **(
            {"mtp_loss": r["mtp_loss"]} if "mtp_loss" in r else {})} for r in _sample(train_rows)],
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "threads": torch.get_num_threads(),
                    "python": platform.python_version(), "torch": torch.__version__, "device": str(trainer.device),
                    "dtype": "bf16" if trainer.autocast_dtype is not None else "fp32"},
    }


def write_json(path: Path, record: dict) -> None:
    """Atomic: a kill mid-write leaves the old file or none, never half a record."""
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(record, indent=1, default=str) + "\n")
    os.replace(tmp, path)


def find_done(path: Path, key: str, reuse_dirs: list[Path]) -> tuple[dict | None, Path | None]:
    """A finished record with this key: in the output folder, else in a --reuse folder."""
    for candidate in [path] + [p for d in reuse_dirs for p in sorted(d.glob("*.json"))]:
        try:
            record = json.loads(candidate.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        if record.get("key") == key:
            return record, candidate
    return None, None


# --- command line --------------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    p = CommandLine(prog="python -m ablation", description=__doc__.split("\n\n")[0],
                                epilog="Report: python -m ablation report DIR... [--out DIR]")
    p.add_argument("--study", default="study", help="name of the study (default 'study')")
    p.add_argument("--preset", default="tiny", help=f"base model: {', '.join(sorted(PRESETS))} (default tiny)")
    p.add_argument("--set", action="append", default=[], metavar="K=V[,K=V]", help="base overrides (any config field)")
    p.add_argument("--grid", action="append", default=[], metavar="K=V1,V2", help="a grid axis (cartesian product)")
    p.add_argument("--variant", action="append", default=[], metavar="NAME:K=V[,K=V]", help="a named run")
    p.add_argument("--seeds", type=int, nargs="+", default=[0], help="seeds (model init and batch order)")
    p.add_argument("--tokens", type=int, help="training tokens per run (the same for every run)")
    p.add_argument("--time-budget", type=float, metavar="MIN", help="wall-clock minutes per run (not reproducible)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--context-length", type=int, help="override context_length (>= 1)")
    p.add_argument("--vocab-top", type=int, metavar="N", help="keep the N-1 most frequent tokens + 1 'other' id")
    p.add_argument("--evals", type=int, default=2, help="validation runs per run, evenly spaced (default 2)")
    p.add_argument("--data", type=path_arg, help="essays file, or a Hub dataset id OWNER/NAME (default: the data "
                   "package's resolution order)")
    p.add_argument("--cache-dir", type=path_arg, help="token cache folder (default data/cache)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1: a shared CPU is faster so)")
    p.add_argument("--out", type=path_arg, help="record folder (default runs/ablations/<study>)")
    p.add_argument("--reuse", action="append", default=[], metavar="DIR", help="copy matching records from DIR")
    p.add_argument("--report", action="store_true", help="write the report when the runs are done")
    p.add_argument("--shard", metavar="K/N", help="run only every N-th run starting at run K (0-based), so N "
                   "processes can share a study; finished records are shared through --out")
    p.add_argument("--dry-run", action="store_true", help="list the runs and exit")
    return p


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["report"]:
        return report_main(argv[1:])
    args = build_parser().parse_args(argv)
    try:                                                     # 1) everything checked before any work
        specs = build_specs(args)
        shard = parse_shard(args.shard)
        if args.data and not Path(args.data).exists() and not is_hub_id(args.data):
            raise UsageError(f"--data {args.data}: no such file or folder")
        out = Path(args.out or Path("runs") / "ablations" / args.study)
        check_out_folder(out)
        check_step_memory(specs)
    except UsageError as err:
        print(f"ablation: error: {err}", file=sys.stderr)
        return 2
    print(f"study {args.study!r}: {len(specs)} runs ({len(specs) // len(args.seeds)} variants x "
          f"{len(args.seeds)} seeds) -> {out}")
    mine = [i for i in range(len(specs)) if shard is None or i % shard[1] == shard[0]]
    if shard is not None:
        print(f"shard {shard[0]}/{shard[1]}: {len(mine)} of these runs")
    if args.dry_run:
        for s in [specs[i] for i in mine]:
            print(f"  {s.file_name}: {s.overrides} ({s.train_cfg.max_steps} steps)")
        return 0
    try:                                                     # 2) the data and the record folder, still no run
        with warnings.catch_warnings():                      # one 'warning: ...' line each, as train.py prints
            warnings.showwarning = lambda message, *_, **__: print(f"warning: {message}", file=sys.stderr)
            data = load_data(args)
        check_data_size(specs, data)
        out.mkdir(parents=True, exist_ok=True)              # only now: a bad file above leaves no empty folder
    except (UsageError, OSError, ValueError, RuntimeError) as err:
        print(f"ablation: error: {err}", file=sys.stderr)
        return 2
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(args.threads)
    try:
        command = "python -m ablation " + shlex.join(without_shard(argv))    # the same records, unsharded
        run_all(specs, args, out, command, mine, data=data)
    finally:
        torch.set_num_threads(threads)
    if args.report and shard is None:
        report = write_report([out], out)
        print(f"report and plots: {display_path(report)} (and the PNGs beside it)")
    return 0


def check_out_folder(out: Path) -> None:
    """--out must be a folder or not exist yet (nor sit below a file): UsageError before any work."""
    for folder in (out, *out.parents):
        if folder.exists():
            if not folder.is_dir():
                where = "is a file" if folder == out else f"is below {folder}, which is a file"
                raise UsageError(f"--out {out} {where}, not a folder; pass a folder for the records")
            return


def check_step_memory(specs: list[RunSpec]) -> None:
    """Every run's training step must fit before the first run starts (training/memory.py: a lower bound)."""
    for spec in specs:
        problem = step_memory_problem(spec.model_cfg, spec.train_cfg.batch_size, pick_device(spec.train_cfg.device))
        if problem:
            raise UsageError(f"run '{spec.name}': {problem}; lower --batch-size or use a smaller model")


def check_data_size(specs: list[RunSpec], data: tuple) -> None:
    """Every run needs one window (context_length + 1 tokens) of training and of validation data."""
    train_ids, val_ids, data_id = data
    need = max(spec.model_cfg.context_length for spec in specs) + 1
    if min(len(train_ids), len(val_ids)) < need:
        raise UsageError(f"the data ({data_id.get('source')}) has {len(train_ids):,} training and {len(val_ids):,} "
                         f"validation tokens; every run needs at least one window of context_length+1 = {need:,} "
                         "of each: pass more essays (--data) or a smaller --context-length")


def run_all(specs: list[RunSpec], args, out: Path, command: str, mine: list[int] | None = None,
            data: tuple | None = None) -> None:
    train_ids, val_ids, data_id = data or load_data(args)   # 2) data once for all runs
    out.mkdir(parents=True, exist_ok=True)
    for i, spec in enumerate(specs, 1):                      # 3) the runs, skipping finished ones
        if mine is not None and i - 1 not in mine:           # another shard's run
            continue
        path, key = out / spec.file_name, run_key(spec, data_id)
        done, where = find_done(path, key, [Path(d) for d in args.reuse])
        if done is not None:
            if where != path or done.get("order") != i:           # a copy, or the grid's order changed
                write_json(path, done | {"study": args.study, "name": spec.name, "order": i, "command": command}
                           | ({"reused_from": str(where)} if where != path else {}))
            print(f"[{i}/{len(specs)}] {spec.file_name}: done ({'reused ' + str(where) if where != path else 'skip'})")
            continue
        print(f"[{i}/{len(specs)}] {spec.file_name}: running {spec.train_cfg.max_steps} steps ...", flush=True)
        record = run_one(spec, args.study, train_ids, val_ids, data_id, key) | {"order": i, "command": command}
        write_json(path, record)
        print(f"    val loss {record['final_val_loss']:.4f} | {record['tokens_per_s']:,.0f} tok/s | "
              f"{record['wall_time_s']:.0f} s", flush=True)


if __name__ == "__main__":
    sys.exit(main())
