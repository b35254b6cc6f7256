"""``python -m mnist_linear.sweep``: train.py over a grid of config values × seeds, summarised.

    python -m mnist_linear.sweep --config configs/logistic.yaml \\
        --grid model.l2_lambda=0,0.0001,0.001,0.01 --seeds 10 --jobs 2 --name logistic_l2

Every run is a TensorBoard run of its own, ``<root_dir>/lightning_logs/<name>/<run>``,
named by its grid values and its seed (``model.l2_lambda=0.001,seed=3``), with what it
prints in ``train.log`` there. ``--name`` defaults to the config file's name and the
grid keys (``logistic-model.l2_lambda``).

Before anything trains, every grid point (each whole combination) is checked as
train.py checks it before training, constructors and data included, up to where its
first step would start (:mod:`mnist_linear.checks`), and the arguments passed through
to train.py are checked alone first; a refusal is one line, exit code 2. A seed given
with ``--seeds``, which sets both seeds, is refused too. Re-running the
same command trains only the runs that have no results.json: an interrupted run
resumes from its last.ckpt, a run that never reached one starts again. A run is done
only if its config.yaml is what the sweep would run now (the :data:`PLUMBING` keys
aside); a sweep that finds runs made with other settings lists them and refuses, exit
code 2. Each run is claimed with a ``.lock`` (:mod:`mnist_linear.locks`), so two sweeps
at once train it once; a sweep waits for the runs another one trains. SIGINT and
SIGTERM are forwarded to the trainings; the sweep waits for them and exits with 130
(143 for SIGTERM).
``summary.csv`` and ``summary.md``, one row per grid point with the mean and sample
standard deviation over the seeds, are rebuilt from the runs' results.json files at
the end of every sweep. Arguments the sweep does not know go to train.py unchanged.
"""

from __future__ import annotations

import argparse
import itertools
import os
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path

from mnist_linear.errors import USAGE_ERROR, OneLineArgumentParser, fail
from mnist_linear.grid import SEED_KEYS, Run, parse_grid, runs_of
from mnist_linear.schedule import Workers, results_of, train_all
from mnist_linear.summary import write_summary
from mnist_linear.workers import fresh_state

DEFAULT_GRID = "model.l2_lambda=0,0.0001,0.001,0.01"
# Keys of a run's config.yaml that say where it reads and writes, not what it computes:
# a rerun may change them (another data folder holding the same bytes) and find it done.
PLUMBING = (
    "config", "ckpt_path", "data.data_dir", "trainer.default_root_dir", "trainer.logger",
    "trainer.enable_progress_bar", "threads",
)  # fmt: skip
INTERRUPTED = 130


def check_arguments(
    args: argparse.Namespace, runs: list[Run], extra: list[str]
) -> tuple[str, int] | None:
    """What train.py would refuse before training: the sweep's one line and exit code, or ``None``.

    The arguments passed through to train.py first, alone, once; then every grid point,
    each whole combination of values, with the constructors run as train.py runs them;
    then, only once every point has passed those, what each point's train.py checks
    once it has the data, up to where training would start
    (:func:`~mnist_linear.checks.check_fit`). Nothing is written but the MNIST files a
    run would build.
    """
    from mnist_linear.checks import check_fit, check_only, parse_only
    from mnist_linear.cli import UsageError

    try:
        parse_only([f"--config={args.config}", *extra])
    except UsageError as error:
        return f"arguments passed to train.py: {error}", USAGE_ERROR
    checked = []
    for _, group in itertools.groupby(runs, key=lambda run: run.point):
        run = next(group)  # the seeds of a point cannot be refused
        try:
            checked.append((run, check_only(train_arguments(args, run, extra))))
        except UsageError as error:
            return f"--grid {run.point_name or 'none'}: {error}", USAGE_ERROR
    seen: dict[str, object] = {}  # data modules already checked, for check_fit
    for run, cli in checked:
        refused = check_fit(cli, seen)
        if refused is not None:
            message, code = refused
            where = f"--grid {run.point_name or 'none'}: " if code == USAGE_ERROR else ""
            return where + message, code
    return None


def preflight(
    args: argparse.Namespace, runs: list[Run], extra: list[str], check: bool = True
) -> tuple[tuple[str, int] | None, list[str]]:
    """:func:`check_arguments` (when ``check``), then :func:`differences`, in a worker."""
    with fresh_state():
        refusal = check_arguments(args, runs, extra) if check else None
        return refusal, [] if refusal else differences(args, runs, extra)


def differences(args: argparse.Namespace, runs: list[Run], extra: list[str]) -> list[str]:
    """One line per run of the folder whose recorded config.yaml is not what it would run now.

    Both configurations are resolved by train.py's parser; the keys in :data:`PLUMBING`
    are not compared. Only runs with something to keep count: results.json or last.ckpt.
    """
    from mnist_linear.checks import parse_only
    from mnist_linear.cli import UsageError
    from mnist_linear.resume import changed_settings, flat_settings

    def settings(arguments: list[str]) -> dict[str, str]:
        config = parse_only(arguments).as_dict()
        flat = flat_settings({k: v for k, v in config.items() if k not in ("config", "ckpt_path")})
        return {k: v for k, v in flat.items() if not is_plumbing(k)}

    lines = []
    for run in runs:
        folder = sweep_folder(args) / run.name
        recorded = folder / "config.yaml"
        kept = (folder / "results.json").is_file() or (
            folder / "checkpoints" / "last.ckpt"
        ).is_file()
        if not (kept and recorded.is_file()):
            continue
        try:
            before = settings([f"--config={recorded}"])
        except UsageError as error:
            lines.append(f"{run.name}: its config.yaml is not one train.py accepts now: {error}")
            continue
        changes = changed_settings(before, settings(train_arguments(args, run, extra)))
        if changes:
            listed = ", ".join(f"{key} {old} -> {new}" for key, (old, new) in changes.items())
            lines.append(f"{run.name}: {listed}")
    return lines


def refuse_differences(args: argparse.Namespace, lines: list[str]) -> None:
    """Print the differing runs, one a line, and exit 2 naming ``--name``."""
    if not lines:
        return
    for line in lines:
        print(line, file=sys.stderr)
    fail(
        f"{len(lines)} run(s) in {sweep_folder(args)} were made with other settings (above, "
        "recorded -> now); rerun with their settings, or give --name to sweep into a new "
        "folder and keep both"
    )


def is_plumbing(key: str) -> bool:
    return any(key == p or key.startswith(f"{p}.") for p in PLUMBING)


def train_command(args: argparse.Namespace, run: Run, extra: list[str]) -> list[str]:
    """The train.py command line (``python -m mnist_linear.cli``) of one run."""
    return [sys.executable, "-m", "mnist_linear.cli", *train_arguments(args, run, extra)]


def train_arguments(args: argparse.Namespace, run: Run, extra: list[str]) -> list[str]:
    """The arguments train.py gets for one run."""
    folder = sweep_folder(args)
    return [
        f"--config={args.config}", f"--threads={threads_per_run(args.jobs)}", *extra,
        *run.arguments(),
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


def threads_per_run(jobs: int) -> int:
    """torch threads of each of ``jobs`` trainings at once: the usable cores // jobs, at least 1."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(1, (cores or 1) // jobs)


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
        "--name", default=None,
        help="Folder of the runs under lightning_logs (default: the config file's name and "
        "the grid keys, such as logistic-model.l2_lambda).",
    )  # fmt: skip
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
    if args.seeds is not None:  # each run's seeds would silently override these
        grid = dict(args.grid)
        for key in SEED_KEYS:
            passed = [a for a in extra if a == f"--{key}" or a.startswith(f"--{key}=")]
            if key in grid or passed:
                given = f"--grid {key}={','.join(grid[key])}" if key in grid else passed[0]
                parser.error(
                    f"{given} with --seeds {args.seeds}, which sets seed_everything and "
                    f"data.seed to each of 0 to {args.seeds - 1} itself; give the seeds one way: "
                    "--seeds, or the seed settings without --seeds"
                )
    if args.name is None:
        args.name = "-".join([Path(args.config).stem, *keys])
    return args, extra


def _positive(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text!r}")
    return int(text)


def main(argv: Sequence[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else list(argv)
    args, extra = parse_args(argv)
    if not Path(args.config).is_file():
        fail(f"--config: no file at {args.config!r}")
    runs = runs_of(args.grid, args.seeds)
    args.jobs = min(args.jobs, len(runs))  # and so the threads of each
    workers = Workers(1 if args.dry_run else args.jobs)
    try:
        try:
            refusal, differing = workers.pools[0].submit(preflight, args, runs, extra).result()
        except KeyboardInterrupt:
            print("Interrupted before anything trained.", file=sys.stderr)
            sys.exit(INTERRUPTED)
        if refusal is not None:
            fail(*refusal)
        refuse_differences(args, differing)
        if args.dry_run:
            for run in runs:
                if results_of(sweep_folder(args) / run.name) is None:
                    command = ["python", *train_command(args, run, extra)[1:]]
                    print(shlex.join(command))
            return
        folder = sweep_folder(args)
        progress = train_all(folder, runs, lambda run: train_arguments(args, run, extra),
                             workers, threads_per_run(args.jobs))  # fmt: skip
        if progress.signals:
            left = sum(results_of(sweep_folder(args) / run.name) is None for run in runs)
            rerun = shlex.join(["python", "-m", "mnist_linear.sweep", *argv])
            print(f"Interrupted: {left} of {len(runs)} runs not finished; to resume them, "
                  f"run again: {rerun}", file=sys.stderr, flush=True)  # fmt: skip
            sys.exit(128 + progress.signals[0])  # 130 for SIGINT, 143 for SIGTERM, as shells do
        if progress.by_others:
            _, differing = (
                workers.pools[0].submit(preflight, args, progress.by_others, extra, False).result()
            )
            refuse_differences(args, differing)
    finally:
        workers.shutdown()
    print(write_summary(sweep_folder(args), runs), end="")
    print(f"Summary: {sweep_folder(args) / 'summary.csv'}")
    if progress.failed:
        failed = progress.failed
        fail(f"{len(failed)} run(s) failed: {', '.join(run.name for run in failed)}", 1)


if __name__ == "__main__":
    main()
