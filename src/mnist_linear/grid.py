"""A sweep's grid: ``--grid KEY=V1,V2`` entries, and the runs of their product × seeds."""

from __future__ import annotations

import argparse
import itertools
from collections.abc import Sequence
from dataclasses import dataclass

OPENING, CLOSING = "[({", "])}"
SEED_KEYS = ("seed_everything", "data.seed")  # what --seeds sets


def split_values(text: str) -> list[str]:
    """``0,0.1`` -> ``['0', '0.1']``; commas inside brackets stay: ``[2,3],null``."""
    values, depth, current = [], 0, ""
    for char in text:
        depth += (char in OPENING) - (char in CLOSING)
        if char == "," and depth == 0:
            values.append(current)
            current = ""
        else:
            current += char
    return [*values, current]


def parse_grid(entry: str) -> tuple[str, list[str]]:
    """``KEY=V1,V2`` -> ``(KEY, [V1, V2])``; argparse's error for a malformed entry."""
    key, sep, values = entry.partition("=")
    key = key.strip().removeprefix("--")
    items = [v.strip() for v in split_values(values)] if sep else []
    if not key or not items or not all(items):
        raise argparse.ArgumentTypeError(
            f"expected KEY=V1,V2,... with a config key and at least one value, got {entry!r}"
        )
    return key, items


@dataclass(frozen=True)
class Run:
    """One training of the sweep: a grid point and a seed (``None``: the config's own)."""

    point: tuple[tuple[str, str], ...]
    seed: int | None

    @property
    def point_name(self) -> str:
        return ",".join(f"{key}={value}" for key, value in self.point)

    @property
    def name(self) -> str:
        seed = [] if self.seed is None else [f"seed={self.seed}"]
        return ",".join([self.point_name, *seed] if self.point else seed) or "run"

    def arguments(self) -> list[str]:
        seeds = [] if self.seed is None else [f"--{key}={self.seed}" for key in SEED_KEYS]
        return [*(f"--{key}={value}" for key, value in self.point), *seeds]


def runs_of(grid: Sequence[tuple[str, list[str]]], seeds: int | None) -> list[Run]:
    """The cartesian product of the grid, each point with seeds 0 to seeds - 1."""
    keys = [key for key, _ in grid]
    points = [tuple(zip(keys, values, strict=True)) for values in
              itertools.product(*(values for _, values in grid))]  # fmt: skip
    return [Run(p, s) for p in points for s in ([None] if seeds is None else range(seeds))]
