"""What crosses between the grader and a student's kernel: hidden inputs in, the student's outputs out.

The grader (exercises/grade.py) runs every check in its own process and hands the student's function
to it as a proxy: each call sends the arguments to the submitted notebook's kernel, which runs the
student's function on them (with the library functions the exercise asks for switched off,
exercises/guard.py) and writes back only what the function returned or the exception it raised.
Nothing the kernel sends back is code: the outputs are reduced here to tensors, numbers, strings,
containers and a few of the project's config dataclasses (`portable`), saved with torch.save, and read
by the grader with `torch.load(weights_only=True)`, which builds nothing else (`restore`). So a notebook
that patches `exercises.run_check`, the checks or torch in its own kernel changes nothing the grader
computes: the verdict is the grader's comparison of these outputs with the expected ones.
"""

from __future__ import annotations

import builtins
import dataclasses
import numbers
import os
from pathlib import Path

import torch

from components.config import ModelConfig
from components.generation import SamplingConfig
from exercises.guard import Delegated

# Dataclasses an answer may return (exercises 8.1 and 8.3 return a ModelConfig): rebuilt by name, field by
# field, through their own constructors (which validate the fields).
DATACLASSES = {cls.__name__: cls for cls in (ModelConfig, SamplingConfig)}
MAX_REPLY_BYTES = 64 * 2**20          # the hidden inputs are small; a bigger reply is refused, not loaded
MAX_DEPTH = 20                        # nesting of returned containers


def portable(value, depth: int = 0):
    """The student's return value as plain data (run in the kernel). Subclasses become their base type
    (a str or Tensor subclass cannot carry overridden comparisons to the grader); anything else becomes
    {'__opaque__': its type name}, so the check's hint can still say what was returned."""
    if depth > MAX_DEPTH:
        return {"__opaque__": "a container nested too deep"}
    if value is None or type(value) in (bool, int, float, str):
        return value
    if isinstance(value, bool):
        return bool(value)
    if isinstance(value, torch.Tensor):
        return value.detach().as_subclass(torch.Tensor).cpu().clone()
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real):
        return float(value)
    if isinstance(value, str):
        return str.__str__(value)
    if isinstance(value, (tuple, list)):
        items = [portable(v, depth + 1) for v in value]
        return tuple(items) if isinstance(value, tuple) else items
    if isinstance(value, dict):
        return {portable(k, depth + 1): portable(v, depth + 1) for k, v in value.items()
                if isinstance(k, (str, int))}
    if dataclasses.is_dataclass(value) and not isinstance(value, type) and type(value).__name__ in DATACLASSES:
        return {"__dataclass__": type(value).__name__,
                "fields": {f.name: portable(getattr(value, f.name), depth + 1) for f in dataclasses.fields(value)}}
    if type(value).__module__ == "numpy" and hasattr(value, "shape"):
        return torch.as_tensor(value.copy())
    return {"__opaque__": type(value).__name__}


_OPAQUE: dict[str, type] = {}


def _opaque(name: str) -> object:
    """A stand-in whose type has the returned object's name (the checks' hints print type(x).__name__)."""
    name = str(name)[:80] or "object"
    if name not in _OPAQUE:
        _OPAQUE[name] = type(name, (), {"__repr__": lambda self: f"<{type(self).__name__}>"})
    return _OPAQUE[name]()


def restore(value, depth: int = 0):
    """Undo `portable` in the grader: tagged dicts back to dataclasses and stand-ins."""
    if depth > MAX_DEPTH:
        return _opaque("a container nested too deep")
    if isinstance(value, dict):
        if set(value) == {"__opaque__"}:
            return _opaque(value["__opaque__"])
        if set(value) == {"__dataclass__", "fields"} and value["__dataclass__"] in DATACLASSES \
                and isinstance(value["fields"], dict):
            cls = DATACLASSES[value["__dataclass__"]]
            fields = {k: restore(v, depth + 1) for k, v in value["fields"].items()}
            try:
                return cls(**fields)
            except (TypeError, ValueError) as err:               # the student's config is not a valid one
                return _opaque(f"{cls.__name__} that is not valid ({err})")
        return {k: restore(v, depth + 1) for k, v in value.items()}
    if isinstance(value, (tuple, list)):
        items = [restore(v, depth + 1) for v in value]
        return tuple(items) if isinstance(value, tuple) else items
    return value


def describe_exception(err: BaseException) -> dict:
    """An exception raised by the student's function, as data: its name, its nearest builtin base (so the
    grader can re-raise something a check's `except ValueError` still catches) and its message."""
    base = "Delegated" if isinstance(err, Delegated) else next(
        (c.__name__ for c in type(err).__mro__ if getattr(builtins, c.__name__, None) is c), "Exception")
    return {"name": type(err).__name__, "base": base, "message": str(err)[:2000]}


def rebuild_exception(info: dict) -> BaseException:
    """The grader's copy of the student's exception (never a BaseException that is not an Exception: an
    answer cannot stop the grader by raising SystemExit)."""
    name, base, message = str(info.get("name", "Exception")), str(info.get("base", "Exception")), \
        str(info.get("message", ""))
    if base == "Delegated":
        return Delegated(message)
    cls = getattr(builtins, base, Exception)
    if not (isinstance(cls, type) and issubclass(cls, Exception)):
        cls = Exception
    if name != cls.__name__ and name.isidentifier():
        cls = type(name, (cls,), {})
    try:
        return cls(message)
    except Exception:                                      # a builtin with another signature (UnicodeError's)
        return type(name if name.isidentifier() else "Error", (Exception,), {})(message)


def gradients(result, args) -> dict:
    """Kernel side: a check may differentiate the answer (5.1 asks for a loss whose gradient reaches the
    router's probabilities), and autograd does not cross processes. For a scalar tensor that requires
    grad: its gradient with respect to each positional argument that requires grad, by position."""
    if not (isinstance(result, torch.Tensor) and result.requires_grad and result.numel() == 1):
        return {}
    where = [i for i, a in enumerate(args) if isinstance(a, torch.Tensor) and a.requires_grad]
    found = torch.autograd.grad(result.sum(), [args[i] for i in where], allow_unused=True) if where else []
    return {"grads": {i: (None if g is None else g.detach().as_subclass(torch.Tensor).cpu())
                      for i, g in zip(where, found, strict=True)}}


class _Remote(torch.autograd.Function):
    """A scalar computed in the kernel, joined to the grader's own inputs: backward hands them the
    gradients the kernel computed (times the incoming gradient)."""

    @staticmethod
    def forward(ctx, value, grads, *inputs):
        ctx.grads = grads
        return value.clone()

    @staticmethod
    def backward(ctx, grad_output):
        return (None, None, *(None if g is None else grad_output * g for g in ctx.grads))


def outcome(reply, args=()):
    """Grader side: what the student's function returned, or its exception raised again (LookupError if
    the reply holds neither: the kernel's side of the exchange was replaced). A returned scalar that came
    with gradients is differentiable again with respect to the grader's `args`."""
    if isinstance(reply, dict) and isinstance(reply.get("raised"), dict):
        raise rebuild_exception(reply["raised"])
    if not (isinstance(reply, dict) and "returned" in reply):
        raise LookupError("the kernel's reply holds no result")
    value, grads = reply["returned"], reply.get("grads")
    if isinstance(value, torch.Tensor) and value.numel() == 1 and isinstance(grads, dict) \
            and value.is_floating_point():
        where = [i for i in grads if isinstance(i, int) and 0 <= i < len(args)
                 and isinstance(args[i], torch.Tensor) and args[i].requires_grad]
        ok = [g if isinstance(g, torch.Tensor) and g.shape == args[i].shape else None
              for i, g in ((i, grads[i]) for i in where)]
        if where:
            return _Remote.apply(value, ok, *[args[i] for i in where])
        return value.requires_grad_(True)             # it required grad, from nothing the grader passed
    return value


def write(payload, path: str | os.PathLike) -> None:
    """Kernel side: write the reply (into the grader's exchange folder, a name the grader chose)."""
    torch.save(payload, path)


def read(path: str | os.PathLike):
    """Grader side: the kernel's reply, or None if it wrote none. Refuses a link or an oversized file, and
    loads only data (weights_only)."""
    path = Path(path)
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    except FileNotFoundError:
        return None
    with os.fdopen(fd, "rb") as handle:
        if os.fstat(handle.fileno()).st_size > MAX_REPLY_BYTES:
            raise ValueError(f"the answer's output is over {MAX_REPLY_BYTES // 2**20} MB")
        return restore(torch.load(handle, weights_only=True))
