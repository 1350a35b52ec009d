"""What every command line of the project shares: typed KEY=VALUE values and one argparse convention.

- `parse_value("3e-4", float)` types a `--set KEY=VALUE` value by the config field's annotation
  (train.py and `python -m ablation` parse with it; inference.py's settings also accept 'off' for
  None and word their errors for a prompt, so `inference.parser_for` builds its parsers from the
  same annotations).
- `CommandLine` is argparse with the project's conventions: a bad flag is one line on stderr and
  exit code 2 (no usage block); every long flag accepts both spellings (`--max-steps` and
  `--max_steps`); `--help` shows each flag's default.
"""

from __future__ import annotations

import argparse
import copy
import sys
import types
import typing


class UsageError(ValueError):
    """A bad flag or value: one line on stderr, exit code 2, before any work starts."""


def parse_value(text: str, annotation) -> object:
    """Parse `text` as the field type: int, float, bool, str, tuples (comma-separated), X | None."""
    options = typing.get_args(annotation) if isinstance(annotation, types.UnionType) else (annotation,)
    if type(None) in options and text.strip().lower() in ("none", "null"):
        return None
    kind = next(o for o in options if o is not type(None))
    if typing.get_origin(kind) is tuple:
        inner = typing.get_args(kind)[0]
        sep = "|" if inner is str else ","
        return tuple(parse_value(part.strip() if inner is not str else part, inner) for part in text.split(sep))
    if kind is bool:
        lowered = text.strip().lower()
        if lowered in ("1", "true", "yes", "on"):
            return True
        if lowered in ("0", "false", "no", "off"):
            return False
        raise ValueError(f"expects true/false, got {text!r}")
    if kind is int:
        try:
            return int(text)
        except ValueError:
            raise ValueError(f"expects an integer, got {text!r}") from None
    if kind is float:
        try:
            return float(text)
        except ValueError:
            raise ValueError(f"expects a number, got {text!r}") from None
    return text


def field_types(cls) -> dict[str, type]:
    """Field name -> resolved type annotation of a config dataclass (what `parse_value` needs)."""
    return typing.get_type_hints(cls)


def other_spelling(flag: str) -> str | None:
    """'--max-steps' <-> '--max_steps'; None for a short flag or a one-word flag."""
    if not flag.startswith("--"):
        return None
    body = flag[2:]
    swapped = body.replace("-", "_") if "-" in body else body.replace("_", "-")
    return None if swapped == body else "--" + swapped


class _HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """Show each flag once (its first spelling) and its default (unless None or False)."""

    def _format_action_invocation(self, action):
        if action.option_strings:
            shown = copy.copy(action)
            shown.option_strings = [s for s in action.option_strings if s not in getattr(action, "aliases", ())]
            action = shown
        return super()._format_action_invocation(action)

    def _get_help_string(self, action):
        if action.default in (None, False, [], argparse.SUPPRESS) or "default" in (action.help or ""):
            return action.help
        return super()._get_help_string(action)


class CommandLine(argparse.ArgumentParser):
    """argparse with the project's conventions (one-line errors, both spellings, defaults in --help)."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", _HelpFormatter)
        super().__init__(*args, **kwargs)

    def add_argument(self, *names, **kwargs):
        aliases = [other for n in names if (other := other_spelling(n)) and other not in names]
        action = super().add_argument(*names, *aliases, **kwargs)
        action.aliases = tuple(aliases)
        return action

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message}\n")


def fail(prog: str, message: str) -> int:
    """Print a usage error as one line on stderr; return the exit code 2."""
    print(f"{prog}: error: {message}", file=sys.stderr)
    return 2
