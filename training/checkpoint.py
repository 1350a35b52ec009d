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

import errno
import json
import math
import os
import pickletools
import random
import re
from contextlib import suppress
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save
from torch import nn

from common.files import atomic_write
from components.config import ModelConfig
from components.deepseek_model import DeepSeekModel
from training.config import TrainConfig
from training.memory import available_memory
from utils import build_memory_bytes, parameter_count_from_config, tokenizer_identity

FORMAT_VERSION = 1
REQUIRED_KEYS = ("format_version", "kind", "model", "model_config", "step")
# prefixes that wrappers add to state_dict keys: torch.compile (_orig_mod.) and DDP (module.)
WRAPPER_PREFIXES = ("_orig_mod.", "module.")


class CheckpointError(RuntimeError):
    """A checkpoint that is missing, corrupt, unsafe or does not fit; the message says how to fix it."""


# --- writing ----------------------------------------------------------------------------------

def atomic_save(obj, path: str | os.PathLike) -> Path:
    """`torch.save(obj)` to `path` so that a crash at any moment leaves the old file or the new one.

    Through files.atomic_write: a temporary file beside `path`, fsynced, then renamed over it; the
    checkpoint gets the mode of any new file (0666 & ~umask), not mkstemp's private 0600.
    """
    def write(handle) -> None:
        try:
            torch.save(obj, handle)
        except RuntimeError as err:
            # torch's zip writer reports a failed write (a full disk, an I/O error) as RuntimeError("[enforce
            # fail at inline_container.cc ...] unexpected pos ..."), without the errno: give it back as the
            # OSError it is, so every caller's disk-error handling (one line, the old file kept) applies
            if "inline_container" not in str(err) and "unexpected pos" not in str(err):
                raise
            folder = Path(path).parent
            stats = os.statvfs(folder) if hasattr(os, "statvfs") and folder.is_dir() else None
            if stats is not None and stats.f_bavail * stats.f_frsize < 16 * 2**20:
                raise OSError(errno.ENOSPC, "No space left on device", str(path)) from None
            raise OSError(errno.EIO, f"torch.save could not write ({str(err).splitlines()[0][:120]})",
                          str(path)) from None

    return atomic_write(path, write)


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
    if (foreign := _describe_plain_pickle(path)) is not None:
        raise CheckpointError(foreign)
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # every failure becomes one clear line
        raise CheckpointError(_describe_load_failure(path, err)) from err
    if not isinstance(ckpt, dict) or any(key not in ckpt for key in REQUIRED_KEYS):
        have = sorted(ckpt) if isinstance(ckpt, dict) else type(ckpt).__name__
        raise CheckpointError(f"{path} is not a checkpoint written by this project (expected keys {REQUIRED_KEYS}, "
                              f"found {have}); pass a .pt file saved by train.py / Trainer")
    check_fields(ckpt, path)
    return ckpt


# --- every field read from a file is checked against its type before any code uses it ---------------

def _show(value) -> str:
    text = repr(value) if isinstance(value, (str, int, float, type(None))) else f"a {type(value).__name__}"
    return text if len(text) <= 40 else text[:37] + "..."


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_real(value) -> bool:
    """An int or a float (inf allowed: an unset best loss is inf; NaN is not a loss)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and not math.isnan(value)


def _python_rng(value) -> bool:          # [version, 625 ints, gauss or None]
    return (isinstance(value, (list, tuple)) and len(value) == 3 and _is_int(value[0])
            and isinstance(value[1], (list, tuple)) and len(value[1]) == 625 and all(map(_is_int, value[1]))
            and (value[2] is None or isinstance(value[2], float)))


def _numpy_rng(value) -> bool:           # [name, 624 keys, pos, has_gauss, gauss]
    return (isinstance(value, (list, tuple)) and len(value) == 5 and isinstance(value[0], str)
            and isinstance(value[1], torch.Tensor) and value[1].shape == (624,) and not value[1].is_floating_point()
            and _is_int(value[2]) and _is_int(value[3]) and isinstance(value[4], (int, float)))


def _byte_tensor(value) -> bool:
    return isinstance(value, torch.Tensor) and value.dtype == torch.uint8 and value.dim() == 1


def _rng_state(value) -> bool:
    return (isinstance(value, dict) and _python_rng(value.get("python")) and _numpy_rng(value.get("numpy"))
            and _byte_tensor(value.get("torch"))
            and ("cuda" not in value or (isinstance(value["cuda"], (list, tuple))
                                         and all(map(_byte_tensor, value["cuda"])))))


def _param_group(group) -> bool:
    return (isinstance(group, dict) and isinstance(group.get("params"), list) and all(map(_is_int, group["params"]))
            and all(_is_real(group[key]) for key in ("lr", "weight_decay", "eps") if key in group)
            and ("betas" not in group or (isinstance(group["betas"], (list, tuple)) and len(group["betas"]) == 2
                                          and all(map(_is_real, group["betas"])))))


def _optimizer_state(value) -> bool:
    return (isinstance(value, dict) and isinstance(value.get("state"), dict)
            and all(isinstance(v, dict) for v in value["state"].values())
            and isinstance(value.get("param_groups"), list) and all(map(_param_group, value["param_groups"])))


def _trainer_stats(value) -> bool:
    numbers = ("best_val_loss", "last_val_loss", "whole_val_loss", "tokens", "whole_val_tokens", "world_size")
    return isinstance(value, dict) and all(value.get(key) is None or _is_real(value[key]) for key in numbers)


# field -> (expected, as the message says it; the test; required). Every field a checkpoint may hold.
FIELDS = {
    "format_version": ("an integer >= 1", lambda v: _is_int(v) and v >= 1, True),
    "kind": ("'latest' or 'best'", lambda v: v in ("latest", "best"), True),
    "model": ("a state_dict (names -> tensors)",
              lambda v: isinstance(v, dict) and all(isinstance(k, str) and isinstance(t, torch.Tensor)
                                                    for k, t in v.items()), True),
    "model_config": ("a dict of ModelConfig fields", lambda v: isinstance(v, dict), True),
    "step": ("an integer >= 0", lambda v: _is_int(v) and v >= 0, True),
    "train_config": ("None or a dict of TrainConfig fields", lambda v: v is None or isinstance(v, dict), False),
    "tokenizer": ("None or a dict with a string name (and encoder_sha256 a string or None)",
                  lambda v: v is None or (isinstance(v, dict) and isinstance(v.get("name"), str)
                                          and isinstance(v.get("encoder_sha256"), (str, type(None)))), False),
    "torch_version": ("a string", lambda v: isinstance(v, str), False),
    "trainer": ("a dict of numbers (best_val_loss, ...)", _trainer_stats, False),
    "optimizer": ("an optimizer state_dict (state, param_groups of numbers)", _optimizer_state, False),
    "scheduler": ("a dict", lambda v: isinstance(v, dict), False),
    "grad_scaler": ("None or a dict", lambda v: v is None or isinstance(v, dict), False),
    "rng": ("a list of per-process RNG states (python, numpy, torch)",
            lambda v: isinstance(v, list) and all(map(_rng_state, v)), False),
    "data": ("a list of per-process sampler states (dicts)",
             lambda v: isinstance(v, list) and all(isinstance(d, dict) for d in v), False),
}


def check_fields(ckpt: dict, path: str | os.PathLike = "checkpoint") -> None:
    """CheckpointError naming the first field whose type or value is not what this project writes (a
    hand-edited or hostile file), before any code trusts it; a resumable 'latest' needs its training state."""
    def bad(field: str, expected: str):
        value = _show(ckpt[field]) if field in ckpt else "missing"
        return CheckpointError(f"{path}: its '{field}' is {value}, expected {expected}; the file was edited or "
                               "damaged: use another checkpoint (latest.pt / best_model.pt) or retrain")

    for field, (expected, test, required) in FIELDS.items():
        if field in ckpt:
            if not test(ckpt[field]):
                raise bad(field, expected)
        elif required:
            raise bad(field, expected)
    if ckpt["format_version"] > FORMAT_VERSION:
        raise CheckpointError(f"{path} has checkpoint format {ckpt['format_version']}, newer than this code "
                              f"understands ({FORMAT_VERSION}); update the code (git pull) to load it")
    if ckpt["kind"] == "latest" and "optimizer" in ckpt:       # resumable: the training state comes as a whole
        if not isinstance(ckpt.get("train_config"), dict):
            raise bad("train_config", "a dict of TrainConfig fields (a 'latest' checkpoint resumes with it)")
        if "data" in ckpt and len(ckpt.get("rng", [])) != len(ckpt["data"]):
            raise bad("rng", f"one RNG state per process ({len(ckpt['data'])}, as in 'data')")


def _describe_plain_pickle(path: Path) -> str | None:
    """The one-line error for a file that is a plain pickle (pickle.dump, an old torch.save format), not the
    zip archive torch.save writes (and this project always writes); None for anything else. The pickle's
    opcodes are only listed (pickletools), never executed, to name the code it would call."""
    with open(path, "rb") as handle:
        head = handle.read(2)
        if len(head) < 2 or head[0] != 0x80 or not 2 <= head[1] <= 5:         # pickle's PROTO opcode
            return None
        handle.seek(0)
        calls, strings = [], []
        try:
            for opcode, arg, _ in pickletools.genops(handle):
                if opcode.name == "GLOBAL":
                    calls.append(str(arg).replace(" ", "."))
                elif opcode.name == "STACK_GLOBAL" and len(strings) >= 2:
                    calls.append(f"{strings[-2]}.{strings[-1]}")
                elif isinstance(arg, str):
                    strings.append(arg)
        except Exception:          # not a well-formed pickle after all: torch.load's error says corrupt
            return None
    if calls:
        return (f"refused to load {path} as unsafe: it is a plain Python pickle, not a checkpoint this project wrote "
                f"(torch.save zip files of tensors and plain data), and it calls {', '.join(sorted(set(calls))[:3])}, "
                "code that loading with weights_only=True refuses to run; pass a .pt file saved by train.py / Trainer")
    return (f"{path} is a plain Python pickle (pickle.dump or an old torch.save format), not a checkpoint this project "
            "wrote (torch.save zip files); pass a .pt file saved by train.py / Trainer")


def _describe_load_failure(path: Path, err: Exception) -> str:
    text = str(err)
    # weights_only names the global it refused; garbage bytes fail in the same unpickler without one
    # (torch 2.6+ words a blocked call 'Trying to load unsupported GLOBAL posix.system whose module posix is blocked')
    unsafe = re.search(r"(?:Unsupported global|Unsupported class|Trying to call reduce for|unsupported GLOBAL)"
                       r":? ?(?:GLOBAL )?([\w.]+)", text, flags=re.IGNORECASE)
    if unsafe:
        return (f"refused to load {path} as unsafe: it contains pickled Python objects (it references "
                f"{unsafe.group(1)}), and unpickling them could run arbitrary code; only load checkpoints saved by "
                "this project's Trainer (tensors + plain data)")
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


def train_config_from_checkpoint(ckpt: dict, path: str | os.PathLike = "checkpoint") -> TrainConfig:
    """The TrainConfig a 'latest' checkpoint was trained with; CheckpointError if it has none or a bad one."""
    saved = ckpt.get("train_config")
    if not isinstance(saved, dict):
        raise CheckpointError(f"{path} holds no training config (its 'train_config' is {_show(saved)}), so it "
                              "cannot be resumed; resume from a latest.pt written by train.py, or start a new run")
    try:
        return TrainConfig.from_dict(saved)
    except (TypeError, ValueError) as err:
        raise CheckpointError(f"{path} holds a training config this code refuses ({err}); the file was edited or "
                              "written by other code: start a new run, or resume with the code version that wrote it"
                              ) from err


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
    check_finite(state, path)
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


def check_finite(state: dict, path: str | os.PathLike = "checkpoint") -> None:
    """CheckpointError naming the tensors that hold NaN or inf (a model built from them outputs NaN)."""
    bad = [name for name, t in state.items()
           if isinstance(t, torch.Tensor) and t.is_floating_point() and not bool(t.isfinite().all())]
    if bad:
        raise CheckpointError(f"{path} holds non-finite weights (NaN/inf) in {len(bad)} tensor(s): "
                              f"{', '.join(bad[:4])}{' ...' if len(bad) > 4 else ''}; the run that wrote it diverged: "
                              "use an earlier checkpoint (latest.pt keeps the last finite one) or retrain")


def values_held(state: dict) -> int:
    """Numbers a state_dict really stores: each storage once (a tied head shares the embedding's), counted
    from its bytes, so that a tensor faking a huge shape over a small storage (stride 0) counts small."""
    storages = {}
    for t in state.values():
        if isinstance(t, torch.Tensor):
            storage = t.untyped_storage()
            storages[storage.data_ptr()] = storage.nbytes() // max(t.element_size(), 1)
    return sum(storages.values())


def check_size(cfg: ModelConfig, ckpt: dict, path: str | os.PathLike = "checkpoint") -> None:
    """Before building: the config's parameter count must match the weights present and fit in memory.

    A file of a few KB whose config says d_model=65536 would otherwise make `DeepSeekModel(cfg)` try to
    allocate (and initialise) hundreds of GB before `load_state_dict` could notice anything.
    """
    if not isinstance(ckpt["model"], dict):
        raise CheckpointError(f"{path}: its 'model' entry is a {type(ckpt['model']).__name__}, not a state_dict; "
                              "use a checkpoint written by train.py / Trainer")
    expected = parameter_count_from_config(cfg, buffers=True)
    present = values_held(ckpt["model"])
    if expected > 1.1 * present + 1024:            # small slack: the strict load names finer mismatches
        raise CheckpointError(f"{path}: its config describes a model of {expected:,} parameters, but the file holds "
                              f"only {present:,} weights; the config and the weights do not belong together (an "
                              "edited or damaged file): use a checkpoint written by train.py / Trainer")
    needed, free = build_memory_bytes(cfg), available_memory()    # fp32 weights and the RoPE tables
    if free is not None and needed > free:
        raise CheckpointError(f"{path}: building its model needs about {needed / 2**30:.1f} GiB of memory, only "
                              f"{free / 2**30:.1f} GiB are available; free memory or use a machine with more")


def load_model(path: str | os.PathLike, device: str | torch.device = "cpu") -> tuple[DeepSeekModel, dict]:
    """Rebuild the trained model from a checkpoint alone -> (model in eval mode on `device`, meta).

    `meta` is the checkpoint minus weights and optimizer state: model/train config dicts, step,
    tokenizer identity, trainer stats (e.g. `meta['trainer']['best_val_loss']`). `path` is a .pt
    checkpoint or a .safetensors file with its .json beside it (a Hugging Face directory too:
    `hugging_face.convert.load_any_model`).
    """
    ckpt = load_safetensors(path) if Path(path).suffix == ".safetensors" else load_checkpoint(path, map_location="cpu")
    check_tokenizer(ckpt, path)
    cfg = config_from_checkpoint(ckpt, path)
    check_size(cfg, ckpt, path)                      # before any allocation
    check_finite(ckpt["model"], path)
    model = DeepSeekModel(cfg)
    load_model_state(model, ckpt, path)
    model.to(device).eval()
    meta = {k: v for k, v in ckpt.items() if k not in ("model", "optimizer", "scheduler", "rng", "data")}
    return model, meta


# --- safetensors: the weights alone, with the config as JSON beside them ---------------------------

def save_safetensors(ckpt: dict, path: str | os.PathLike) -> Path:
    """Write a checkpoint's weights to `path` (.safetensors, our parameter names) and everything else
    but optimizer/RNG/data state to `path` with suffix .json (config, tokenizer, step, trainer stats).

    safetensors holds raw tensors and a header, so loading it can run no code, and tools outside
    PyTorch read it. Training state stays in the weights_only .pt; this pair is for using the model.
    """
    path = Path(path)
    weights = dict(ckpt["model"])
    if ckpt["model_config"].get("tie_embeddings") and "head.weight" in weights:
        del weights["head.weight"]      # the same tensor as embed.weight; safetensors stores it once
    meta = {k: v for k, v in ckpt.items() if k not in ("model", "optimizer", "scheduler", "rng", "data")}
    data = save({k: v.detach().cpu().contiguous() for k, v in weights.items()}, {"format": "pt"})
    atomic_write(path.with_suffix(".json"), lambda handle: json.dump(meta, handle, indent=2), mode="w")
    return atomic_write(path, lambda handle: handle.write(data))


def load_safetensors(path: str | os.PathLike) -> dict:
    """Read a `save_safetensors` pair back as a checkpoint dict (weights + meta); CheckpointError if unusable."""
    path, meta_path = Path(path), Path(path).with_suffix(".json")
    for needed in (path, meta_path):
        if not needed.is_file():
            raise CheckpointError(f"no {needed.name} beside {path.name} in {path.parent}: the weights need it; "
                                  "copy both files (or use the .pt checkpoint)")
    try:
        weights = load_file(path)
        ckpt = json.loads(meta_path.read_text())
    except (SafetensorError, ValueError, OSError) as err:
        raise CheckpointError(f"{path} or its .json is truncated or corrupt ({str(err).splitlines()[0][:100]}); "
                              "use the .pt checkpoint or retrain") from err
    if not isinstance(ckpt, dict) or any(key not in ckpt for key in REQUIRED_KEYS if key != "model"):
        raise CheckpointError(f"{meta_path} is not a checkpoint description written by this project; "
                              "pass a .pt file or a .safetensors file saved by train.py / Trainer")
    ckpt = ckpt | {"model": weights}
    check_fields(ckpt, meta_path)
    if ckpt["model_config"].get("tie_embeddings") and "embed.weight" in weights:
        weights.setdefault("head.weight", weights["embed.weight"])
    return ckpt

