"""What every command line of the project shares: typed KEY=VALUE values and one argparse convention.

- `parse_value("3e-4", float)` types a value by the config field's annotation: the one grammar of every
  flag, `--set KEY=VALUE` and interactive `:name value` command of the project.
- `CommandLine` is argparse with the project's conventions: a bad flag is one line on stderr and
  exit code 2 (no usage block); every long flag accepts both spellings (`--max-steps` and
  `--max_steps`); `--help` shows each flag's default.
"""

from __future__ import annotations

import argparse
import copy
import types
import typing


class UsageError(ValueError):
    """A bad flag or value: one line on stderr, exit code 2, before any work starts."""


NONE_WORDS = ("none", "null", "off")      # what sets an optional field (`X | None`) to None


def parse_value(text: str, annotation) -> object:
    """Parse `text` as the field type: int, float, bool, str, tuples (comma-separated), X | None.

    The one grammar for values: `train.py --set`, `python -m ablation --set`, inference.py's flags and its
    interactive `:name value` commands all parse here. Booleans read on/off, true/false, yes/no, 1/0; an
    optional field reads none/null/off as None."""
    options = typing.get_args(annotation) if isinstance(annotation, types.UnionType) else (annotation,)
    optional = type(None) in options
    kind = next(o for o in options if o is not type(None))
    if optional and kind is not bool and text.strip().lower() in NONE_WORDS:
        return None
    if typing.get_origin(kind) is tuple:
        inner = typing.get_args(kind)[0]
        sep = "|" if inner is str else ","
        return tuple(parse_value(part.strip() if inner is not str else part, inner) for part in text.split(sep))
    or_none = " or 'none'" if optional else ""
    if kind is bool:
        lowered = text.strip().lower()
        if lowered in ("1", "true", "yes", "on"):
            return True
        if lowered in ("0", "false", "no", "off"):
            return False
        raise ValueError(f"expects on/off (true/false){or_none}, got {text!r}")
    if kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            what = "an integer" if kind is int else "a number"
            raise ValueError(f"expects {what}{or_none}, got {text!r}") from None
    return text


def path_arg(text: str) -> str:
    """argparse type for a path flag: an empty or blank path is an error, never the default in disguise
    (`--out ""` would otherwise train into ./checkpoints)."""
    if not text.strip():
        raise argparse.ArgumentTypeError("an empty path: pass a file or folder name, or leave the flag out "
                                         "for the default")
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
