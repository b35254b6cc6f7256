"""Bad input, answered in one line: argument types and checks, and the command-line exit.

The types below annotate the arguments of the project's classes, so that jsonargparse
(and so ``train.py``) refuses a bad value while parsing, naming the option and the
value. The constructors check the same bounds again for Python callers.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path
from typing import NoReturn

from jsonargparse.typing import (
    NonNegativeFloat,
    NonNegativeInt,
    PositiveFloat,
    PositiveInt,
    extend_base_type,
    restricted_number_type,
)

__all__ = [
    "USAGE_ERROR",
    "Digit",
    "FiniteNonNegativeFloat",
    "FinitePositiveFloat",
    "Folder",
    "Momentum",
    "NonNegativeFloat",
    "NonNegativeInt",
    "PositiveFloat",
    "PositiveInt",
    "Seed",
    "check_float",
    "check_folder",
    "check_int",
    "fail",
]

USAGE_ERROR = 2

Digit = restricted_number_type("Digit", int, [(">=", 0), ("<=", 9)])
Momentum = restricted_number_type("Momentum", float, [(">=", 0), ("<", 1)])
Seed = restricted_number_type("Seed", int, [(">=", 0), ("<=", 2**32 - 1)])
# inf passes "> 0" and trains to NaN; the upper bound refuses it (and nan fails every comparison).
FinitePositiveFloat = restricted_number_type(
    "FinitePositiveFloat", float, [(">", 0), ("<", math.inf)]
)
FiniteNonNegativeFloat = restricted_number_type(
    "FiniteNonNegativeFloat", float, [(">=", 0), ("<", math.inf)]
)


def check_int(
    name: str, value: object, minimum: int, maximum: int | None = None, allowed: str = ""
) -> int:
    """``value`` if it is an integer (not a bool) from ``minimum`` to ``maximum``, else ValueError.

    The message names the argument, the value received and the values allowed:
    ``allowed`` when given, else "an integer >= minimum" or "an integer from A to B".
    """
    if not allowed:
        bound = f">= {minimum}" if maximum is None else f"from {minimum} to {maximum}"
        allowed = f"an integer {bound}"
    in_range = isinstance(value, int) and minimum <= value and (maximum is None or value <= maximum)
    if isinstance(value, bool) or not in_range:
        raise ValueError(f"{name} must be {allowed}, got {value!r}")
    return value


def check_float(name: str, value: object, minimum: float, inclusive: bool = True) -> float:
    """``value`` if it is a finite number (not a bool) >= ``minimum`` (> when not ``inclusive``).

    Else ValueError naming the argument, the values allowed and the value received.
    """
    bound = f"{'>=' if inclusive else '>'} {minimum:g}"
    number = isinstance(value, int | float) and not isinstance(value, bool)
    if not (
        number and math.isfinite(value) and (value >= minimum if inclusive else value > minimum)
    ):
        raise ValueError(f"{name} must be a finite number {bound}, got {value!r}")
    return float(value)


def _not_a_folder(value: str) -> str | None:
    """The first existing part of the path ``value`` when it is not a folder, else None."""
    path = Path(value)
    for part in (path, *path.parents):
        if part.exists() or part.is_symlink():
            return None if part.is_dir() else str(part)
    return None


def check_folder(name: str, value: str) -> str:
    """``value`` if it is a folder, or a path where one can be made, else ValueError.

    The first part of the path that exists must be a folder: ``README.md`` and
    ``README.md/data`` are refused.
    """
    blocker = _not_a_folder(value)
    if blocker is not None:
        raise ValueError(
            f"{name} must be a folder or a path where one can be made, got {value!r} "
            f"({blocker!r} is not a folder)"
        )
    return value


def _folder(cls: type, value: object) -> None:
    blocker = _not_a_folder(str(value))
    if blocker is not None:
        raise ValueError(
            f"{str(value)!r} must be a folder or a path where one can be made "
            f"({blocker!r} is not a folder)"
        )


Folder = extend_base_type("Folder", str, _folder, docstring="a folder, or a path to make one")


def fail(message: str, code: int = USAGE_ERROR) -> NoReturn:
    """Print ``error: message`` on stderr and exit with ``code``."""
    print(f"error: {message}", file=sys.stderr)
    sys.exit(code)


class OneLineArgumentParser(argparse.ArgumentParser):
    """argparse that reports a bad argument in one line, without the usage text."""

    def error(self, message: str) -> NoReturn:
        fail(message)
