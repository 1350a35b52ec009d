"""Train a DeepSeek-style model on Paul Graham's essays from the command line.

    python train.py                                   # SMALL preset, 10-minute budget, then samples
    python train.py --preset tiny --max-steps 200     # seconds on a laptop
    python train.py --set top_k=1 --set attention=mha # any ModelConfig/TrainConfig field, typed
    python train.py --resume                          # continue the run in --out from latest.pt
    torchrun --nproc_per_node 4 train.py --preset default   # DistributedDataParallel, same flags
    torchrun --nproc_per_node 2 train.py --expert-parallel 2  # experts sharded over the 2 ranks, the rest DDP

A thin layer over `trainer.Trainer`: it resolves the configs (printing them first), prepares the
data, trains, and prints the final and best validation loss and a couple of samples. Every
setting is checked before any work starts; a bad one prints one line and exits with code 2.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import sys
import textwrap
import warnings
from dataclasses import fields, replace
from pathlib import Path

import torch.distributed as dist

from common.cli import CommandLine, UsageError, field_types, parse_value, path_arg
from components.config import ModelConfig
from constants import DATA_ENV_VAR, PRESETS, SEED
from data import prepare_data
from trainer import NonFiniteLossError, TrainConfig, Trainer, check_resumable
from training.checkpoint import CheckpointError, config_from_checkpoint, load_checkpoint, train_config_from_checkpoint
from training.distributed import init_distributed
from training.memory import keep_freed_memory_in_heap, step_memory_problem
from training.precision import choose_precision
from training.run_lock import FolderLocked, RunLock
from training.run_log import TensorBoardLog
from utils import count_active_parameters, count_parameters, pick_device, tokenizer_identity

DEFAULT_PRESET = "small"
TRAIN_DEFAULTS = TrainConfig()      # the defaults the help states
DEFAULT_TIME_BUDGET_MIN = 10.0      # README promise: `python train.py` ends on a 2-core CPU in <= 15 min
# flag -> TrainConfig field, for the flags that map one-to-one
TRAIN_FLAGS = {"max_steps": "max_steps", "epochs": "epochs", "time_budget": "time_budget_min",
               "batch_size": "batch_size", "grad_accum": "grad_accum", "lr": "lr", "eval_every": "eval_every",
               "save_every": "save_every", "seed": "seed", "device": "device", "dtype": "dtype",
               "out": "out_dir"}


def build_parser() -> argparse.ArgumentParser:
    p = CommandLine(
        prog="train.py",
        description="Train the DeepSeek-from-scratch model (MLA + DeepSeekMoE) on Paul Graham's essays.",
        epilog="Budgets: training stops at whichever of --max-steps, --epochs, --time-budget comes first. "
               f"With none of them, `python train.py` trains the {DEFAULT_PRESET} preset for "
               f"{DEFAULT_TIME_BUDGET_MIN:g} minutes (about 15 minutes in all on a 2-core CPU, with data "
               "preparation, evaluation and samples). Budget flags replace the default budget (on --resume, the "
               "checkpoint's budgets) together: --max-steps 500 alone means 500 steps, no time limit.\n"
               "Examples: --set top_k=1  --set attention=mha  --set warmup_steps=50  --set q_latent_dim=None")
    p.add_argument("--preset", choices=sorted(PRESETS), default=None,
                   help=f"model size (default {DEFAULT_PRESET}; on --resume, the checkpoint's)")
    p.add_argument("--data", metavar="PATH|OWNER/NAME", type=path_arg,
                   help=f"essays: CSV/Parquet/JSONL with a text column, a .txt file or a folder of .txt files; or "
                        "a Hugging Face dataset id OWNER/NAME (when no such file or folder exists: its 'text' column, "
                        "else its longest string column; cached in data/cache) "
                        f"(default: ${DATA_ENV_VAR}, then the local cache, the Hub, the bundled sample)")
    p.add_argument("--cache-dir", metavar="DIR", type=path_arg, help="token cache directory (default data/cache)")
    p.add_argument("--out", metavar="DIR", type=path_arg,
                   help="checkpoints and metrics.jsonl go here (default checkpoints)")
    p.add_argument("--max-steps", type=int, metavar="N", help="optimizer steps (see Budgets below)")
    p.add_argument("--epochs", type=float, metavar="E", help="passes over the training tokens (default: no limit)")
    p.add_argument("--time-budget", type=float, metavar="MIN",
                   help=f"wall-clock minutes of training; the lr schedule is fitted to it "
                        f"(default {DEFAULT_TIME_BUDGET_MIN:g} when no budget flag is given; 0 = no limit)")
    p.add_argument("--batch-size", type=int, metavar="B",
                   help=f"sequences per micro-batch (default {TRAIN_DEFAULTS.batch_size})")
    p.add_argument("--grad-accum", type=int, metavar="K",
                   help=f"micro-batches per optimizer step (default {TRAIN_DEFAULTS.grad_accum})")
    p.add_argument("--lr", type=float, help=f"peak learning rate (default {TRAIN_DEFAULTS.lr:g})")
    p.add_argument("--eval-every", type=int, metavar="N",
                   help=f"steps between validation runs (default {TRAIN_DEFAULTS.eval_every})")
    p.add_argument("--save-every", type=int, metavar="N",
                   help=f"steps between latest.pt saves (default {TRAIN_DEFAULTS.save_every})")
    p.add_argument("--seed", type=int, help=f"model init and batch order (default {SEED}; the split is fixed)")
    p.add_argument("--device", help="auto (cuda -> mps -> cpu), cpu, cuda, cuda:1, mps (default auto)")
    p.add_argument("--dtype", choices=("auto", "fp32", "bf16", "fp16"),
                   help="precision (default auto: fp32 on CPU/MPS, bf16 autocast on CUDA >= 8.0, else fp16 autocast "
                        "with loss scaling; see precision.py)")
    p.add_argument("--compile", action="store_true", default=None, help="torch.compile the model")
    p.add_argument("--expert-parallel", type=int, metavar="N",
                   help="under torchrun: split the routed experts of every MoE layer over N ranks (all-to-all "
                        "dispatch and combine), the other weights data-parallel over the same ranks; N must equal "
                        "--nproc_per_node for now (see training/expert_parallel.py)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its latest.pt")
    p.add_argument("--overwrite", action="store_true",
                   help="start afresh in an --out that holds an earlier run (its files are replaced as this run "
                        "writes its own; without this flag such an --out is refused)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override any ModelConfig or TrainConfig field, typed by the field (repeatable)")
    p.add_argument("--quiet", action="store_true", help="no progress bar or log lines")
    p.add_argument("--tensorboard", metavar="DIR", type=path_arg,
                   help="also log the metrics as TensorBoard events to DIR (needs: pip install -e \".[tensorboard]\")")
    return p


# --- --set KEY=VALUE ------------------------------------------------------------------------

def parse_sets(items: list[str]) -> tuple[dict, dict]:
    """['top_k=1', 'lr=3e-4'] -> (ModelConfig overrides, TrainConfig overrides); UsageError if bad."""
    model_types, train_types = field_types(ModelConfig), field_types(TrainConfig)
    model_over, train_over = {}, {}
    for item in items:
        key, sep, text = item.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or not key:
            raise UsageError(f"--set {item!r}: expected KEY=VALUE, e.g. --set top_k=1")
        if key in model_types:
            target, annotation = model_over, model_types[key]
        elif key in train_types:
            target, annotation = train_over, train_types[key]
        else:
            known = [f.name for f in fields(ModelConfig)] + [f.name for f in fields(TrainConfig)]
            raise UsageError(f"--set {key}: unknown key; known keys: {', '.join(known)}")
        try:
            target[key] = parse_value(text, annotation)
        except (ValueError, StopIteration) as err:
            raise UsageError(f"--set {key}={text}: {err}") from None
    return model_over, train_over


# --- resolving the configs -------------------------------------------------------------------

def resolve_configs(args) -> tuple[ModelConfig, TrainConfig, dict | None]:
    """Preset + --set -> ModelConfig; defaults (or the checkpoint's) + flags -> TrainConfig."""

    model_over, train_over = parse_sets(args.set)
    out_dir = args.out or "checkpoints"
    resumed = None
    if args.resume:
        path = Path(out_dir) / "latest.pt"
        try:
            resumed = load_checkpoint(path)
            saved_cfg = config_from_checkpoint(resumed, path)
            base_train = train_config_from_checkpoint(resumed, path)
            check_resumable(resumed, path)
        except CheckpointError as err:
            raise UsageError(f"--resume: {err}") from None
        base_model = PRESETS[args.preset] if args.preset else saved_cfg
    else:
        base_model = PRESETS[args.preset or DEFAULT_PRESET]
        base_train = TrainConfig(max_steps=None, time_budget_min=DEFAULT_TIME_BUDGET_MIN)
    try:
        model_cfg = replace(base_model, **model_over)
    except (TypeError, ValueError) as err:
        raise UsageError(str(err)) from None
    if resumed is not None and model_cfg != saved_cfg:
        diff = [k for k in saved_cfg.to_dict() if getattr(saved_cfg, k) != getattr(model_cfg, k)]
        raise UsageError(f"--resume: {out_dir}/latest.pt was trained with a different model "
                         f"({', '.join(diff)} differ); drop --preset/--set model keys, or train into a new --out")
    flags = {field: getattr(args, flag) for flag, field in TRAIN_FLAGS.items() if getattr(args, flag) is not None}
    budgets = ("max_steps", "epochs", "time_budget_min")
    if any(name in flags for name in budgets):     # budget flags replace the default/saved budgets together
        flags = {name: None for name in budgets} | flags
    if flags.get("time_budget_min") == 0:
        flags["time_budget_min"] = None
    if args.compile:
        flags["compile"] = True
    if args.quiet:
        flags["quiet"] = True
    flags["out_dir"] = out_dir
    try:
        train_cfg = replace(base_train, **(train_over | flags))
    except (TypeError, ValueError) as err:
        raise UsageError(str(err)) from None
    return model_cfg, train_cfg, resumed


def describe(model_cfg: ModelConfig, train_cfg: TrainConfig, preset: str | None) -> str:
    base = PRESETS.get(preset or "", None)
    changed = {k: v for k, v in model_cfg.to_dict().items() if base is None or getattr(base, k) != v}
    def wrap(values: dict) -> str:
        return textwrap.fill(", ".join(f"{k}={v}" for k, v in values.items()), width=110,
                             initial_indent="  ", subsequent_indent="  ", break_on_hyphens=False)

    title = f"model ({preset or 'from checkpoint'}{f'; overrides {changed}' if base and changed else ''}):"
    return "\n".join([title, wrap(model_cfg.to_dict()), "train:", wrap(train_cfg.to_dict())])


# --- checks that need no data: the vocabulary and the output folder ------------------------------

EARLIER_RUN_FILES = ("latest.pt", "best_model.pt", "metrics.jsonl")


def check_vocabulary(model_cfg: ModelConfig) -> None:
    """train.py feeds GPT-2 token ids; an embedding smaller than that vocabulary would fail mid-run."""

    n_vocab = tokenizer_identity()["n_vocab"]
    if model_cfg.vocab_size < n_vocab:
        raise UsageError(f"vocab_size={model_cfg.vocab_size} is smaller than the GPT-2 tokenizer's {n_vocab} ids "
                         f"that train.py feeds the model; use vocab_size >= {n_vocab} (the presets' value), or "
                         "python -m ablation --vocab-top N, which remaps the ids to a smaller vocabulary")


def check_expert_parallel(n: int | None, model_cfg: ModelConfig) -> None:
    """--expert-parallel N: N is the torchrun world size (the EP group is the DP group) and divides the experts."""
    if n is None:
        return
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if n < 2 or n != world:
        raise UsageError(f"--expert-parallel {n}: N must equal the number of processes (this run has {world}) and be "
                         f">= 2: torchrun --nproc_per_node {max(n, 2)} train.py --expert-parallel {max(n, 2)} ...")
    if model_cfg.ffn != "moe" or model_cfg.n_routed_experts % n:
        raise UsageError(f"--expert-parallel {n}: needs an MoE model whose n_routed_experts "
                         f"({model_cfg.n_routed_experts}) is a multiple of {n}")


def check_step_memory(model_cfg: ModelConfig, train_cfg: TrainConfig) -> None:
    """A training step must fit before anything is allocated (training/memory.py: a lower bound)."""
    problem = step_memory_problem(model_cfg, train_cfg.batch_size, pick_device(train_cfg.device))
    if problem:
        raise UsageError(f"--batch-size {train_cfg.batch_size}: {problem}; lower --batch-size (raise --grad-accum "
                         "to keep the tokens per step) or pick a smaller model")


def check_tensorboard_dir(log_dir: str) -> None:
    """--tensorboard must name a folder that exists or can be created there: a file or an unwritable place
    is its own one-line error here, not a failed write blamed on --out after training has started."""
    path = Path(log_dir)
    if path.exists() and not path.is_dir():
        raise UsageError(f"--tensorboard {log_dir} is a file, not a folder; pass a folder for the event files "
                         "(it is created if missing)")
    existing = next((p for p in (path, *path.parents) if p.exists()), Path("."))
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        raise UsageError(f"--tensorboard {log_dir}: cannot write there ({existing} is "
                         f"{'not a folder' if not existing.is_dir() else 'not writable'}); choose a folder you can "
                         "write to")


def check_out_dir(out_dir: str, resumed: bool, overwrite: bool | None) -> None:
    """--out must be a folder (or not exist yet), and a fresh run must not silently replace an earlier one
    (overwrite=None: only the first check, before the folder is locked)."""
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out_dir} is a file, not a folder; pass a folder (it is created if missing)")
    if overwrite is None:
        return
    links = [name for name in EARLIER_RUN_FILES if (out / name).is_symlink()]
    if links:                           # this run never writes through a link it did not create
        raise UsageError(f"--out {out_dir}: {', '.join(links)} is a symbolic link, which a run never writes "
                         "through; remove it (or choose another --out)")
    earlier = [name for name in EARLIER_RUN_FILES if (out / name).exists()]
    if earlier and not resumed and not overwrite:
        raise UsageError(f"--out {out_dir} holds an earlier run ({', '.join(earlier)}); pass --resume to continue "
                         "it, --overwrite to replace it, or choose another --out")


def claim_out_dir(out_dir: str):
    """Create --out if needed and lock it for this run -> (RunLock, created). UsageError if it cannot be."""

    out = Path(out_dir)
    created = not out.exists()
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise UsageError(f"--out {out_dir}: cannot create the folder ({err.strerror or err}); "
                         "choose a folder you can write to") from None
    lock = RunLock(out)
    try:
        note = lock.acquire()
    except FolderLocked as err:
        raise UsageError(str(err)) from None
    except OSError as err:               # the lock file is the first thing written: a read-only folder fails here
        if created:
            with contextlib.suppress(OSError):
                out.rmdir()
        raise UsageError(f"--out {out_dir} is not writable ({err.strerror or err}); choose a folder you can write "
                         "to, or fix its permissions") from None
    if note:
        print(note, file=sys.stderr)
    return lock, created


def release_out_dir(lock, created: bool, out_dir: str) -> None:
    """Unlock; a folder this run created and left empty (it failed before writing anything) goes too."""
    lock.release()
    if created:
        with contextlib.suppress(OSError):
            Path(out_dir).rmdir()                 # only succeeds if empty


def write_failure(err: OSError, train_cfg: TrainConfig, trainer) -> str:
    """One line for a write that failed mid-run (a full disk, a folder made read-only), saying how to go on."""
    saved = getattr(trainer, "last_saved", None)
    resume = (f"then continue from the last save, {saved}, with: python train.py --out {train_cfg.out_dir} --resume"
              if saved else "then run again (nothing was saved yet)")
    return (f"train.py: error: writing to {train_cfg.out_dir} failed ({err.strerror or err}); the files already "
            f"there are intact; free disk space or fix the folder, {resume}")


# --- main ----------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # 1) every setting is checked before any work starts
    try:
        if args.resume and args.overwrite:
            raise UsageError("--resume continues the run in --out, --overwrite replaces it: pass one of them")
        model_cfg, train_cfg, resumed = resolve_configs(args)
        choose_precision(pick_device(train_cfg.device), train_cfg.dtype)
        check_vocabulary(model_cfg)
        check_expert_parallel(args.expert_parallel, model_cfg)
        check_step_memory(model_cfg, train_cfg)
        check_out_dir(train_cfg.out_dir, resumed is not None, overwrite=None)
        if args.tensorboard:
            TensorBoardLog.check_available()
            check_tensorboard_dir(args.tensorboard)
        # rank 0 (the only writer) locks --out; torchrun sets RANK before any process group exists.
        # The lock comes first: another run busy in the folder is the first thing to hear about.
        lock = claim_out_dir(train_cfg.out_dir) if os.environ.get("RANK", "0") == "0" else None
    except (UsageError, ValueError) as err:
        print(f"train.py: error: {err}", file=sys.stderr)
        return 2
    try:
        check_out_dir(train_cfg.out_dir, resumed is not None, args.overwrite)
    except UsageError as err:
        if lock is not None:
            release_out_dir(*lock, train_cfg.out_dir)
        print(f"train.py: error: {err}", file=sys.stderr)
        return 2
    try:
        return _run(args, model_cfg, train_cfg, resumed)
    finally:
        if lock is not None:
            release_out_dir(*lock, train_cfg.out_dir)


def _run(args, model_cfg: ModelConfig, train_cfg: TrainConfig, resumed: dict | None) -> int:
    """Steps 2-4 of main, with --out locked."""
    info = init_distributed(train_cfg.device)
    if pick_device(train_cfg.device).type == "cpu":
        keep_freed_memory_in_heap()      # CPU training speed (training/memory.py); process-wide, so opt-in here
    say = print if info.is_main and not train_cfg.quiet else (lambda *a, **k: None)
    say(describe(model_cfg, train_cfg, args.preset or (None if resumed else DEFAULT_PRESET)))
    # 2) data (rank 0 tokenizes first; the others then read its cache)
    try:
        with warnings.catch_warnings():
            warnings.showwarning = lambda message, *_, **__: print(f"warning: {message}", file=sys.stderr)
            if info.enabled and not info.is_main:
                _barrier()
            prepared = prepare_data(args.data, context_length=model_cfg.context_length, cache_dir=args.cache_dir,
                                    quiet=train_cfg.quiet or not info.is_main)
            if info.enabled and info.is_main:
                _barrier()
    except (OSError, ValueError, RuntimeError) as err:
        print(f"train.py: error: {err}", file=sys.stderr)
        return 2
    say(prepared.summary)
    # 3) train
    trainer = None
    try:
        trainer = Trainer(model_cfg, train_cfg, data=prepared, resume=resumed is not None,
                          expert_parallel=args.expert_parallel is not None)
        if args.tensorboard and trainer.dist.is_main:
            try:
                trainer.log.sinks.append(TensorBoardLog(args.tensorboard))
            except OSError as err:                       # not a write to --out: say which folder failed
                print(f"train.py: error: --tensorboard {args.tensorboard}: cannot write the event files "
                      f"({err.strerror or err}); choose a folder you can write to", file=sys.stderr)
                return 2
            say(f"TensorBoard events: {args.tensorboard} (view them with: tensorboard --logdir {args.tensorboard})")
        model = trainer.raw_model
        if trainer.experts:
            say(f"{trainer.experts.describe()}; {count_parameters(model):,} parameters on each rank")
        else:
            say(f"parameters: {count_parameters(model):,} total, {count_active_parameters(model):,} active per token | "
                f"device {trainer.device} | {'fused' if trainer.fused else 'plain'} AdamW | "
                f"{trainer.dist.world_size} process(es)")
        say(trainer.schedule.describe())
        summary = trainer.train()
        # the final model on the whole validation split (under expert parallelism every rank takes part)
        whole = (whole_split_line(trainer) if trainer.val_ids is not None and train_cfg.eval_batches is not None
                 else None)
    except NonFiniteLossError as err:
        print(f"train.py: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"\ntrain.py: interrupted; continue from the last save with: python train.py --out "
              f"{train_cfg.out_dir} --resume", file=sys.stderr)
        return 130
    except (OSError, ValueError, RuntimeError) as err:
        if trainer is None:      # a resume that does not fit the data or the model
            print(f"train.py: error: {err}", file=sys.stderr)
            return 2
        if isinstance(err, OSError):             # a save or a metrics row that could not be written
            print(write_failure(err, train_cfg, trainer), file=sys.stderr)
            return 1
        raise
    finally:
        if trainer is not None:
            trainer.close()
    # 4) what happened
    def fmt(value):
        return "n/a" if value is None else f"{value:.4f}"

    say(f"\ndone: {summary['steps']} steps ({summary['stopped_because']}), {summary['tokens']:,} tokens, "
        f"{summary['tokens_per_s']:,.0f} tokens/s")
    say(f"final val loss {fmt(summary['final_val_loss'])} | best val loss {fmt(summary['best_val_loss'])}")
    if whole:
        say(whole)
    say(f"checkpoints: {train_cfg.out_dir}/best_model.pt, {train_cfg.out_dir}/latest.pt; "
        f"metrics: {summary['metrics_path']}")
    for sample in summary["samples"]:
        if sample.get("text") is not None:
            text = re.sub(r"\s*\n\s*", "\n", sample["prompt"] + sample["text"]).strip()   # no runs of blank lines
            say(f"\n--- {text}")
    return 0


def whole_split_line(trainer) -> str | None:
    """The final model's loss on the whole validation split: the number to compare across runs. The
    evaluations during training cover only the first `eval_batches` batches, so their windows change with
    the batch size (20 batches of 8 sequences are 37% of the essays' validation tokens, of 16 75%).
    `Trainer.evaluate_whole_split` also logs it (metrics.jsonl, TensorBoard) and writes it into best_model.*;
    every rank calls it (under expert parallelism each evaluates its share); None on the other ranks."""
    result = trainer.evaluate_whole_split()
    if result is None:
        return None
    return (f"final model on the whole validation split ({result['val_tokens']:,} tokens): val loss "
            f"{result['val_loss']:.4f} (ppl {result['val_ppl']:,.1f})")


def _barrier() -> None:

    dist.barrier()


if __name__ == "__main__":
    sys.exit(main())
