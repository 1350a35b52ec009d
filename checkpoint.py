"""Checkpoints: tensors plus plain data, written atomically, read without unpickling code.

A checkpoint is one `torch.save`d dict holding only tensors and plain Python data:

    format_version  int        bumped when this layout changes
    kind            str        'latest' (resumable: everything below) or 'best' (weights + configs)
    model           dict       state_dict; the router biases are buffers, so they ride along
    model_config    dict       ModelConfig.to_dict(): rebuilds the exact architecture
    train_config    dict       TrainConfig.to_dict()
    tokenizer       dict       utils.tokenizer_identity(): ids mean nothing under another vocabulary
    step            int        optimizer steps taken
    optimizer, scheduler       their state_dicts            ('latest' only)
    rng             list       per-rank python/numpy/torch/cuda RNG states, as tensors and ints
    data            list       per-rank TrainBatches.state_dict(): where the sampler stands
    trainer         dict       best val loss, tokens seen, ...

Why plain data: `torch.load(weights_only=True)` refuses to rebuild arbitrary objects, and a
pickle that may build objects may also run code (a checkpoint downloaded from a stranger can
delete your files when *loaded*). Every load here goes through `weights_only=True`.

Why atomic: training is killed at arbitrary moments (Ctrl-C, SIGKILL, a pre-empted node). We
write to a temporary file in the same directory, flush and fsync it, then `os.replace` it over
the old file (a rename is atomic on POSIX filesystems) and fsync the directory so the rename
itself survives a power cut. At every instant `latest.pt` is either the old complete file or
the new complete file, never half of one.
"""

from __future__ import annotations

import os
import random
import re
import secrets
from contextlib import suppress
from pathlib import Path

import numpy as np
import torch
from torch import nn

from components.config import ModelConfig
from components.deepseek_model import DeepSeekModel
from utils import tokenizer_identity

FORMAT_VERSION = 1
REQUIRED_KEYS = ("format_version", "kind", "model", "model_config", "step")
# prefixes that wrappers add to state_dict keys: torch.compile (_orig_mod.) and DDP (module.)
WRAPPER_PREFIXES = ("_orig_mod.", "module.")


class CheckpointError(RuntimeError):
    """A checkpoint that is missing, corrupt, unsafe or does not fit; the message says how to fix it."""


# --- writing ----------------------------------------------------------------------------------

def atomic_save(obj, path: str | os.PathLike) -> Path:
    """`torch.save(obj)` to `path` so that a crash at any moment leaves the old file or the new one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # 1) temp file in the SAME directory: os.replace is only atomic within one filesystem.
    #    (Not mkstemp: its 0600 mode would make every checkpoint private; 0666 & ~umask is the norm.)
    tmp = path.parent / f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "wb") as handle:
            torch.save(obj, handle)
            # 2) push the bytes to the disk before the rename makes them visible
            handle.flush()
            os.fsync(handle.fileno())
        # 3) the atomic swap, then persist the directory entry that now points at the new file
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except BaseException:
        with suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return path


def _fsync_dir(directory: Path) -> None:
    with suppress(OSError):            # not every platform/filesystem lets us open a directory
        dir_fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


def remove_stale_temp_files(directory: str | os.PathLike) -> list[Path]:
    """Delete `.NAME.pt.*.tmp` files a killed save left behind (they are never read)."""
    directory = Path(directory)
    stale = list(directory.glob(".*.pt.*.tmp")) if directory.is_dir() else []
    for path in stale:
        with suppress(FileNotFoundError):
            path.unlink()
    return stale


def unwrap(model: nn.Module) -> nn.Module:
    """The plain model inside DDP(...) (.module) and torch.compile(...) (._orig_mod), in any nesting."""
    while True:
        inner = getattr(model, "module", None) or getattr(model, "_orig_mod", None)
        if not isinstance(inner, nn.Module):
            return model
        model = inner


def clean_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The model's state_dict without wrapper prefixes, so any plain DeepSeekModel can load it."""
    return {_strip_prefixes(k): v for k, v in unwrap(model).state_dict().items()}


def _strip_prefixes(key: str) -> str:
    changed = True
    while changed:
        changed = False
        for prefix in WRAPPER_PREFIXES:
            if key.startswith(prefix):
                key, changed = key[len(prefix):], True
    return key


def capture_rng() -> dict:
    """Every RNG that training touches, as tensors and ints (weights_only-loadable)."""
    version, mt_state, gauss = random.getstate()
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state(legacy=True)
    state = {
        "python": [version, list(mt_state), gauss],
        "numpy": [np_name, torch.from_numpy(np_keys.astype(np.int64)), int(np_pos), int(np_has_gauss),
                  float(np_gauss)],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict) -> None:
    version, mt_state, gauss = state["python"]
    random.setstate((version, tuple(mt_state), gauss))
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = state["numpy"]
    np.random.set_state((np_name, np_keys.numpy().astype(np.uint32), np_pos, np_has_gauss, np_gauss))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])


def make_checkpoint(model: nn.Module, *, step: int, kind: str = "latest", train_config: dict | None = None,
                    optimizer=None, scheduler=None, rng: list | None = None, data: list | None = None,
                    trainer: dict | None = None) -> dict:
    """Assemble the checkpoint dict (see the module docstring); pass what the kind needs."""
    state = clean_state_dict(model)
    cfg = unwrap(model).cfg
    ckpt = {
        "format_version": FORMAT_VERSION,
        "kind": kind,
        "model": state,
        "model_config": cfg.to_dict(),
        "train_config": train_config,
        "tokenizer": tokenizer_identity(),
        "step": int(step),
        "torch_version": str(torch.__version__),      # TorchVersion is a str subclass: not plain data
        "trainer": trainer or {},
    }
    if optimizer is not None:
        ckpt["optimizer"] = optimizer.state_dict()
    if scheduler is not None:
        ckpt["scheduler"] = scheduler.state_dict()
    if rng is not None:
        ckpt["rng"] = rng
    if data is not None:
        ckpt["data"] = data
    return ckpt


# --- reading ----------------------------------------------------------------------------------

def load_checkpoint(path: str | os.PathLike, map_location="cpu") -> dict:
    """Read and sanity-check a checkpoint with `torch.load(weights_only=True)`; CheckpointError if unusable."""
    path = Path(path)
    if not path.is_file():
        hint = ("train one first (python train.py --out DIR) or pass the path of an existing .pt file"
                if not path.exists() else "it is not a regular file")
        raise CheckpointError(f"no checkpoint at {path}: {hint}")
    if path.stat().st_size == 0:
        raise CheckpointError(f"checkpoint {path} is empty (0 bytes; a copy or save was cut short); "
                              "use another checkpoint (latest.pt / best_model.pt) or retrain")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # every failure becomes one clear line
        raise CheckpointError(_describe_load_failure(path, err)) from err
    if not isinstance(ckpt, dict) or any(key not in ckpt for key in REQUIRED_KEYS):
        have = sorted(ckpt) if isinstance(ckpt, dict) else type(ckpt).__name__
        raise CheckpointError(f"{path} is not a checkpoint written by this project (expected keys {REQUIRED_KEYS}, "
                              f"found {have}); pass a .pt file saved by train.py / Trainer")
    if ckpt["format_version"] > FORMAT_VERSION:
        raise CheckpointError(f"{path} has checkpoint format {ckpt['format_version']}, newer than this code "
                              f"understands ({FORMAT_VERSION}); update the code (git pull) to load it")
    return ckpt


def _describe_load_failure(path: Path, err: Exception) -> str:
    text = str(err)
    # weights_only names the global it refused; garbage bytes fail in the same unpickler without one
    unsafe = re.search(r"(?:Unsupported global|Unsupported class|Trying to call reduce for): ?(?:GLOBAL )?([\w.]+)",
                       text)
    if unsafe:
        return (f"refusing to load {path}: it contains pickled Python objects (it references {unsafe.group(1)}), "
                "and unpickling them could run arbitrary code; only load checkpoints saved by this project's "
                "Trainer (tensors + plain data)")
    detail = next((line.strip() for line in text.splitlines() if "Unpickler error" in line), "")
    first_line = detail or (text.strip().splitlines()[0] if text.strip() else "")
    return (f"checkpoint {path} is truncated or corrupt ({type(err).__name__}: {first_line[:100] or 'no detail'}); "
            "use another checkpoint (latest.pt / best_model.pt) or retrain")


def config_from_checkpoint(ckpt: dict, path: str | os.PathLike = "checkpoint") -> ModelConfig:
    try:
        return ModelConfig.from_dict(dict(ckpt["model_config"]))
    except (TypeError, ValueError) as err:
        raise CheckpointError(f"{path} holds a model config this code cannot build ({err}); "
                              "load it with the code version that wrote it, or retrain") from err


def check_tokenizer(ckpt: dict, path: str | os.PathLike = "checkpoint") -> None:
    saved, ours = ckpt.get("tokenizer"), tokenizer_identity()
    if saved is not None and (saved.get("name"), saved.get("encoder_sha256")) != (ours["name"],
                                                                                   ours["encoder_sha256"]):
        raise CheckpointError(f"{path} was trained with tokenizer {saved}, but this code uses {ours}; "
                              "token ids would mean different words: use the matching tokenizer or retrain")


def load_model_state(model: nn.Module, ckpt: dict, path: str | os.PathLike = "checkpoint") -> None:
    """Copy the checkpoint's weights into `model`, with a one-line error naming any mismatch."""
    target = unwrap(model)
    cfg = getattr(target, "cfg", None)
    if cfg is not None:
        saved = dict(ckpt["model_config"])
        current = cfg.to_dict()
        diff = [f"{k}={saved.get(k)!r} (model has {current.get(k)!r})"
                for k in sorted(set(saved) | set(current)) if saved.get(k) != current.get(k)]
        if diff:
            raise CheckpointError(f"{path} was trained with a different model config: {', '.join(diff[:6])}"
                                  f"{' ...' if len(diff) > 6 else ''}; build the model from the checkpoint "
                                  "(checkpoint.load_model(path)) or resume with the same --preset/--set")
    state = {_strip_prefixes(k): v for k, v in ckpt["model"].items()}
    try:
        target.load_state_dict(state, strict=True)
    except RuntimeError as err:
        own = set(target.state_dict())
        missing = sorted(own - set(state))
        unexpected = sorted(set(state) - own)
        detail = (f"missing {missing[:3]}, unexpected {unexpected[:3]}" if missing or unexpected
                  else str(err).strip().splitlines()[-1].strip()[:160])
        raise CheckpointError(f"weights in {path} do not fit this model ({detail}); it was written by different "
                              "code or config: load it with checkpoint.load_model(path) or retrain") from err


def load_model(path: str | os.PathLike, device: str | torch.device = "cpu") -> tuple[DeepSeekModel, dict]:
    """Rebuild the trained model from a checkpoint alone -> (model in eval mode on `device`, meta).

    `meta` is the checkpoint minus weights and optimizer state: model/train config dicts, step,
    tokenizer identity, trainer stats (e.g. `meta['trainer']['best_val_loss']`).
    """
    ckpt = load_checkpoint(path, map_location="cpu")
    check_tokenizer(ckpt, path)
    cfg = config_from_checkpoint(ckpt, path)
    model = DeepSeekModel(cfg)
    load_model_state(model, ckpt, path)
    model.to(device).eval()
    meta = {k: v for k, v in ckpt.items() if k not in ("model", "optimizer", "scheduler", "rng", "data")}
    return model, meta
