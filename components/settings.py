"""What the saved config dataclasses share (ModelConfig, TrainConfig), written once: the round trip
through plain dicts (checkpoints and JSON records) and the checks of their fields.

SamplingConfig (components/generation.py) is never saved and checks its own fields: its messages are
what inference.py prints for a bad flag ("top_p=1.5: must be None or a number in (0, 1]"), and
they too rule out NaN and infinity.

    @dataclass(frozen=True)
    class MyConfig(Settings):
        steps: int = 10
        def __post_init__(self):
            check(self, "a positive integer", "steps")     # ValueError: MyConfig.steps=0: must be a positive integer
"""

from __future__ import annotations

import math
from dataclasses import asdict, fields


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value) -> bool:
    """A finite real number (an int or a float, not a bool): NaN, infinity and a string read from a file
    fail here, before they reach a comparison that would let NaN through or raise TypeError."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


# what a field must be -> the test; the key is also the error message ("must be <key>"). Every numeric field
# of the saved config classes is checked here, for type, finiteness and range.
RULES = {
    "a positive integer": lambda v: _is_int(v) and v > 0,
    "an integer >= 0": lambda v: _is_int(v) and v >= 0,
    "None or a positive integer": lambda v: v is None or (_is_int(v) and v > 0),
    "an integer in [0, 2**63)": lambda v: _is_int(v) and 0 <= v < 2**63,      # what torch.manual_seed takes
    "a finite number >= 0": lambda v: _is_number(v) and v >= 0,
    "a finite number > 0": lambda v: _is_number(v) and v > 0,
    "None or a finite number > 0": lambda v: v is None or (_is_number(v) and v > 0),
    "a number in [0, 1)": lambda v: _is_number(v) and 0 <= v < 1,
    "a number in [0, 1]": lambda v: _is_number(v) and 0 <= v <= 1,
}


def bad_field(obj, name: str, why: str) -> ValueError:
    """The one-line error for a field: 'TrainConfig.lr=-1.0: must be a finite number > 0'."""
    return ValueError(f"{type(obj).__name__}.{name}={getattr(obj, name)!r}: {why}")


def check(obj, rule: str, *names: str) -> None:
    """Raise `bad_field` for the first of `names` whose value breaks `rule` (a key of RULES)."""
    test = RULES[rule]
    for name in names:
        if not test(getattr(obj, name)):
            raise bad_field(obj, name, f"must be {rule}")


class Settings:
    """Mixin for a config dataclass: `to_dict()` and `from_dict()` (unknown keys are an error)."""

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict):
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown {cls.__name__} keys {unknown}; known keys: {sorted(known)}")
        # JSON and checkpoints turn tuples into lists; every list-valued field of ours is a tuple
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in values.items()})
