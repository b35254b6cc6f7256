"""``python -m mnist_linear.sweep``: train.py over a grid of config values × seeds, summarised.

    python -m mnist_linear.sweep --config configs/logistic.yaml \\
        --grid model.l2_lambda=0,0.0001,0.001,0.01 --seeds 10 --jobs 2 --name logistic_l2

Every run is a TensorBoard run of its own, ``<root_dir>/lightning_logs/<name>/<run>``,
named by its grid values and its seed (``model.l2_lambda=0.001,seed=3``), with what it
prints in ``train.log`` there. Re-running the same command trains only the runs that
have no results.json: an interrupted run resumes from its last.ckpt, a run that never
reached one starts again. ``summary.csv`` and ``summary.md``, one row per grid point
with the mean and sample standard deviation over the seeds, are rebuilt from the runs'
results.json files at the end of every sweep. Arguments the sweep does not know go to
train.py unchanged.
"""

from __future__ import annotations

import argparse
import csv
import io
import itertools
import json
import shlex
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from mnist_linear.errors import OneLineArgumentParser, fail
from mnist_linear.files import atomic_write_text

DEFAULT_GRID = "model.l2_lambda=0,0.0001,0.001,0.01"
METRICS = (
    "train/acc", "val/acc", "test/acc", "train/loss", "val/loss", "test/loss",
    "weight_norm", "best_epoch", "stopped_epoch",
)  # fmt: skip
OPENING, CLOSING = "[({", "])}"


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
        seeds = [] if self.seed is None else [
            f"--seed_everything={self.seed}", f"--data.seed={self.seed}"
        ]  # fmt: skip
        return [*(f"--{key}={value}" for key, value in self.point), *seeds]


def runs_of(grid: Sequence[tuple[str, list[str]]], seeds: int | None) -> list[Run]:
    """The cartesian product of the grid, each point with seeds 0 to seeds - 1."""
    keys = [key for key, _ in grid]
    points = [tuple(zip(keys, values, strict=True)) for values in
              itertools.product(*(values for _, values in grid))]  # fmt: skip
    return [Run(p, s) for p in points for s in ([None] if seeds is None else range(seeds))]


def check_runs(config: str, runs: list[Run], extra: list[str]) -> None:
    """Parse every run's arguments as train.py does; exit 2 in one line at the first bad one."""
    from mnist_linear.cli import UsageError, parse_only

    seen = set()
    for run in runs:
        for key, value in run.point:
            if (key, value) in seen:
                continue
            seen.add((key, value))
            try:
                parse_only([f"--config={config}", *extra, f"--{key}={value}"])
            except UsageError as error:
                fail(f"--grid {key}={value}: {error}")


def train_command(args: argparse.Namespace, run: Run, extra: list[str]) -> list[str]:
    """The train.py command line (``python -m mnist_linear.cli``) of one run."""
    folder = sweep_folder(args)
    return [
        sys.executable, "-m", "mnist_linear.cli",
        f"--config={args.config}", *extra, *run.arguments(),
        f"--trainer.default_root_dir={args.root_dir}",
        "--trainer.logger=lightning.pytorch.loggers.TensorBoardLogger",
        f"--trainer.logger.save_dir={folder.parent}",
        f"--trainer.logger.name={folder.name}",
        f"--trainer.logger.version={run.name}",
        "--trainer.logger.default_hp_metric=false",
        "--trainer.enable_progress_bar=false",
    ]  # fmt: skip


def sweep_folder(args: argparse.Namespace) -> Path:
    return Path(args.root_dir) / "lightning_logs" / args.name


def start(args: argparse.Namespace, run: Run, extra: list[str]) -> subprocess.Popen:
    """Start one run in its own process, resuming from its last.ckpt when it has one."""
    folder = sweep_folder(args) / run.name
    last = folder / "checkpoints" / "last.ckpt"
    resume = [f"--ckpt_path={last}"] if last.is_file() else []
    if not resume and folder.exists():
        shutil.rmtree(folder)  # it never reached a checkpoint: start it again
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "train.log", "a") as log:
        return subprocess.Popen(
            [*train_command(args, run, extra), *resume], stdout=log, stderr=subprocess.STDOUT
        )


def results_of(folder: Path) -> dict | None:
    try:
        return json.loads((folder / "results.json").read_text())
    except (OSError, ValueError):
        return None


def train_all(args: argparse.Namespace, runs: list[Run], extra: list[str]) -> list[Run]:
    """Train the runs without results, ``args.jobs`` at a time; the runs that failed."""
    todo = [run for run in runs if results_of(sweep_folder(args) / run.name) is None]
    print(f"{len(runs) - len(todo)} of {len(runs)} runs done already; {len(todo)} to train, "
          f"{args.jobs} at a time.", flush=True)  # fmt: skip
    running: dict[Run, tuple[subprocess.Popen, float]] = {}
    failed, finished = [], 0
    while todo or running:
        while todo and len(running) < args.jobs:
            run = todo.pop(0)
            running[run] = (start(args, run, extra), time.perf_counter())
        time.sleep(0.1)
        for run, (process, started) in list(running.items()):
            if process.poll() is None:
                continue
            del running[run]
            finished += 1
            seconds = time.perf_counter() - started
            results = results_of(sweep_folder(args) / run.name)
            if process.returncode == 0 and results is not None:
                outcome = (f"val/acc {100 * results['val/acc']:.2f}%, "
                           f"test/acc {100 * results['test/acc']:.2f}%")  # fmt: skip
            else:
                failed.append(run)
                log = sweep_folder(args) / run.name / "train.log"
                outcome = f"FAILED with exit code {process.returncode}, see {log}"
            print(f"[{finished}/{finished + len(todo) + len(running)}] {run.name}: {outcome} "
                  f"({seconds:.1f} s)", flush=True)  # fmt: skip
    return failed


def summary_rows(args: argparse.Namespace, runs: list[Run]) -> list[dict[str, object]]:
    """One row per grid point: its values, the finished runs, mean and std of each metric."""
    rows = []
    for point, group in itertools.groupby(runs, key=lambda run: run.point):
        results = [r for r in (results_of(sweep_folder(args) / run.name) for run in group) if r]
        row: dict[str, object] = {key: value for key, value in point}
        row["runs"] = len(results)
        for metric in METRICS:
            values = [r[metric] for r in results if r.get(metric) is not None]
            row[f"{metric} mean"] = statistics.fmean(values) if values else ""
            row[f"{metric} std"] = statistics.stdev(values) if len(values) > 1 else ""
        rows.append(row)
    return rows


def _cell(value: object, column: str) -> str:
    if value == "" or not isinstance(value, float):
        return str(value)
    if "acc" in column:
        return f"{100 * value:.2f}%"
    return f"{value:.4g}"


def write_summary(args: argparse.Namespace, runs: list[Run]) -> str:
    """summary.csv and summary.md in the sweep's folder; returns the Markdown table."""
    rows = summary_rows(args, runs)
    columns = list(rows[0])
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(sweep_folder(args) / "summary.csv", text.getvalue())
    lines = ["| " + " | ".join(columns) + " |", "|" + " --- |" * len(columns)]
    lines += ["| " + " | ".join(_cell(row[c], c) for c in columns) + " |" for row in rows]
    table = "\n".join(lines) + "\n"
    atomic_write_text(sweep_folder(args) / "summary.md", table)
    return table


def parse_args(argv: Sequence[str] | None) -> tuple[argparse.Namespace, list[str]]:
    parser = OneLineArgumentParser(
        prog="python -m mnist_linear.sweep",
        description=__doc__.split("\n\n")[0],
        epilog="Example: python -m mnist_linear.sweep --config configs/logistic.yaml "
        "--grid model.l2_lambda=0,0.01 --seeds 10 --jobs 2",
    )
    parser.add_argument("--config", default="configs/logistic.yaml", help="train.py config file.")
    parser.add_argument(
        "--grid", action="append", type=parse_grid, metavar="KEY=V1,V2,...",
        help="A config key train.py accepts and its values; repeat it for a cartesian "
        f"product (default: {DEFAULT_GRID}).",
    )  # fmt: skip
    parser.add_argument(
        "--seeds", type=_positive, default=None,
        help="Runs of each grid point, with seeds 0 to N-1 (seed_everything and data.seed); "
        "without it, one run with the config's own seed.",
    )  # fmt: skip
    parser.add_argument(
        "--jobs", type=_positive, default=1, help="Trainings at once (default: %(default)s)."
    )
    parser.add_argument(
        "--name", default="logistic_l2", help="Folder of the runs under lightning_logs."
    )
    parser.add_argument("--root_dir", default=".", help="Folder that holds lightning_logs.")
    parser.add_argument(
        "--dry_run", action="store_true",
        help="Print one train.py command per run that is not done, and train nothing.",
    )  # fmt: skip
    args, extra = parser.parse_known_args(argv)
    args.grid = args.grid or [parse_grid(DEFAULT_GRID)]
    keys = [key for key, _ in args.grid]
    if len(set(keys)) != len(keys):
        parser.error(f"argument --grid: each key once, got {keys}")
    return args, extra


def _positive(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text!r}")
    return int(text)


def main(argv: Sequence[str] | None = None) -> None:
    args, extra = parse_args(argv)
    if not Path(args.config).is_file():
        fail(f"--config: no file at {args.config!r}")
    runs = runs_of(args.grid, args.seeds)
    check_runs(args.config, runs, extra)
    if args.dry_run:
        for run in runs:
            if results_of(sweep_folder(args) / run.name) is None:
                command = ["python", *train_command(args, run, extra)[1:]]
                print(shlex.join(command))
        return
    failed = train_all(args, runs, extra)
    print(write_summary(args, runs), end="")
    print(f"Summary: {sweep_folder(args) / 'summary.csv'}")
    if failed:
        fail(f"{len(failed)} run(s) failed: {', '.join(run.name for run in failed)}", 1)


if __name__ == "__main__":
    main()
