"""Run a student's answer with the library functions it should replace switched off.

The library is the answer key: `apply_top_p` IS exercise 7.1, `lr_at` IS exercise 6.3. An answer that
only calls them would pass every hidden case, so each exercise names the library functions it asks
the student to write (`Exercise.forbidden`), and `forbidding(...)` wraps the answer so that, while it
runs, calling any of them raises AssertionError with a hint instead.

How: each forbidden function's code object is swapped for a stub's for the duration of the call and
put back afterwards (also on an error or an interrupt). Swapping the code, rather than rebinding a
module attribute, reaches every way the answer can get at the function: `from ... import f` done
anywhere (the notebook, a module), `module.f`, a stored alias, `functools.partial(f, ...)`, a method
through any instance, and the library's own callers (`process_logits` calls `apply_top_p`). The stub
also records that it was called, so an answer that catches the error and falls back to something else
still fails with the hint. This is a check for honest mistakes, not a sandbox: code written to evade
it can.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

_HITS = "__exercise_guard_hits__"   # the name the stub appends to, in the forbidden function's globals


class Delegated(AssertionError):
    """The answer called a library function that the exercise asks the student to write."""


def _innermost(fn) -> Callable | None:
    """The plain function behind a method, a decorator (functools.wraps) or a staticmethod; None for a
    builtin (C) function, whose code cannot be swapped (a torch upgrade could turn one into that: the
    check then goes on without switching it off, rather than failing every answer)."""
    fn = inspect.unwrap(getattr(fn, "__func__", fn))
    return fn if inspect.isfunction(fn) else None


def _functions(functions: Sequence[Callable]) -> list[Callable]:
    return list({id(f): f for f in map(_innermost, functions) if f is not None}.values())


def label(fn) -> str:
    fn = _innermost(fn) or fn
    return f"{fn.__module__}.{fn.__qualname__}"


def _stub_code(fn, name: str, hint: str):
    """A code object that records the call and raises; as many free variables as `fn` has cells
    (a function's code can only be replaced by one with the same number of free variables)."""
    n_free = len(fn.__code__.co_freevars)
    cells = [f"_cell{i}" for i in range(n_free)]
    lines = ["def _outer():", *(f"    {c} = None" for c in cells), "    def _stub(*args, **kwargs):"]
    if cells:
        lines.append(f"        ({', '.join(cells)},)")          # makes them free variables of _stub
    lines += [f"        {_HITS}.append({name!r})", f"        raise AssertionError({hint!r})", "    return _stub"]
    namespace: dict = {}
    exec("\n".join(lines), namespace)                            # noqa: S102 - our own fixed source
    return namespace["_outer"]().__code__


@contextmanager
def switched_off(functions: Sequence[Callable], hint: str) -> Iterator[list[str]]:
    """While inside, each of `functions` raises AssertionError(hint); yields the list of calls made."""
    hits: list[str] = []
    swapped, touched_globals = [], []
    try:
        for fn in _functions(functions):
            stub = _stub_code(fn, label(fn), hint)
            globals_ = fn.__globals__
            if _HITS not in globals_:
                globals_[_HITS] = hits
                touched_globals.append(globals_)
            swapped.append((fn, fn.__code__))
            fn.__code__ = stub
        yield hits
    finally:
        for fn, code in reversed(swapped):
            fn.__code__ = code
        for globals_ in touched_globals:
            globals_.pop(_HITS, None)


def forbidding(answer: Callable, functions: Sequence[Callable], hint: Callable[[list[str]], str]) -> Callable:
    """`answer`, wrapped: each call runs with `functions` switched off; a call to one of them (even a
    caught one) makes the call raise Delegated(hint(names called)). NotImplementedError (a stub) passes."""
    originals = {f.__code__: label(f) for f in _functions(functions)}
    if getattr(answer, "__code__", None) in originals:        # the answer IS the library function
        raise Delegated(hint([originals[answer.__code__]]))

    @functools.wraps(answer)
    def guarded(*args, **kwargs):
        with switched_off(functions, "switched off while your answer is checked") as hits:
            try:
                result = answer(*args, **kwargs)
            except BaseException as err:
                if hits and not isinstance(err, KeyboardInterrupt):
                    raise Delegated(hint(sorted(set(hits)))) from None
                raise
        if hits:
            raise Delegated(hint(sorted(set(hits))))
        return result

    return guarded
