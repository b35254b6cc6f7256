"""The README's figures and results table, trained from scratch.

    python docs/make_figures.py

trains, in a temporary folder, everything behind the README's results: the seed-42 runs
of configs/logistic.yaml and configs/softmax.yaml as shipped (``python train.py
--config ...``), the λ sweep (``--grid model.l2_lambda=0,0.0001,0.001,0.01 --seeds
10``) and the softmax seeds sweep (``--grid model.l2_lambda=0 --seeds 10``), the sweeps
with as many jobs as the machine has cores. It then writes ``docs/figures/logistic``,
``softmax`` and ``logistic_l2`` with ``python -m mnist_linear.report`` and prints the
README's results table and docs/results.md's L2 tables. The same code on the same
machine writes the same bytes every time.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from mnist_linear.errors import USAGE_ERROR, OneLineArgumentParser, fail

REPO = Path(__file__).resolve().parents[1]
CONFIGS = {"logistic": "configs/logistic.yaml", "softmax": "configs/softmax.yaml"}
MODELS = {"logistic": "2 vs 3", "softmax": "10 digits"}
LAMBDAS = ("0", "0.0001", "0.001", "0.01")
SWEEPS = {
    "logistic_l2": ("logistic", f"model.l2_lambda={','.join(LAMBDAS)}"),
    "softmax_seeds": ("softmax", "model.l2_lambda=0"),
}


def at_least(least: int) -> Callable[[str], int]:
    """An argparse type: a whole number >= ``least``."""

    def whole(text: str) -> int:
        if not text.isdigit() or int(text) < least:
            raise argparse.ArgumentTypeError(f"expected a whole number >= {least}, got {text!r}")
        return int(text)

    return whole


def cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def step(name: str, command: list[str], log: Path) -> None:
    """Run ``command`` from the repository, its output into ``log``; stop the script if it fails."""
    print(f"{name}: {' '.join(command[1:])}", flush=True)
    started = time.perf_counter()
    with log.open("w") as output:
        done = subprocess.run(command, cwd=REPO, stdout=output, stderr=subprocess.STDOUT)
    if done.returncode != 0:
        printed = log.read_text().strip()
        if done.returncode == USAGE_ERROR and len(printed.splitlines()) == 1:
            fail(printed.removeprefix("error: "))  # train.py's or the sweep's own refusal
        print(printed[-3000:], file=sys.stderr)
        fail(f"{name} failed with exit code {done.returncode}; its output is above", 1)
    print(f"  done in {time.perf_counter() - started:.1f} s", flush=True)


def train_run(model: str, root: Path, args: argparse.Namespace, extra: list[str]) -> Path:
    """The seed-42 run of a shipped config, in ``root/<model>``: its run folder."""
    folder = root / model / "lightning_logs" / "version_0"
    if not (folder / "results.json").is_file():
        command = [sys.executable, "train.py", "--config", CONFIGS[model],
                   "--data.data_dir", args.data_dir, "--trainer.default_root_dir",
                   str(root / model), "--trainer.enable_progress_bar", "false", *extra]  # fmt: skip
        step(f"{model}, seed 42", command, root / f"{model}.log")
    return folder


def sweep(name: str, root: Path, args: argparse.Namespace, extra: list[str]) -> Path:
    """One of :data:`SWEEPS`, under ``root/lightning_logs``: its folder."""
    model, grid = SWEEPS[name]
    command = [sys.executable, "-m", "mnist_linear.sweep", "--config", CONFIGS[model],
               "--grid", grid, "--seeds", str(args.seeds), "--jobs", str(args.jobs),
               "--name", name, "--root_dir", str(root), "--data.data_dir", args.data_dir,
               *extra]  # fmt: skip
    step(f"sweep {name}", command, root / f"{name}.log")
    return root / "lightning_logs" / name


def results(folder: Path) -> dict:
    return json.loads((folder / "results.json").read_text())


def seeds_of(folder: Path, point: str) -> list[dict]:
    """The results of every seed of a sweep's grid point, in the order of the seeds."""
    found = {int(p.name.rsplit("=", 1)[1]): results(p) for p in folder.glob(f"{point},seed=*")}
    return [found[seed] for seed in sorted(found)]


def values(runs: list[dict], key: str) -> list[float]:
    """``key`` of each run; ``epochs`` is the number of epochs run (``stopped_epoch + 1``)."""
    if key == "epochs":
        return [r["stopped_epoch"] + 1 for r in runs]
    return [r[key] for r in runs]


def spread(runs: list[dict], key: str, digits: int, percent: bool = False) -> str:
    """``mean ± sample std`` of ``key`` over the runs."""
    scale = 100 if percent else 1
    items = [scale * v for v in values(runs, key)]
    text = f"{statistics.fmean(items):.{digits}f} ± {statistics.stdev(items):.{digits}f}"
    return f"{text}%" if percent else text


def single(run: dict) -> list[str]:
    return [str(run["stopped_epoch"] + 1), str(run["best_epoch"]),
            *(f"{100 * run[k]:.2f}%" for k in ("train/acc", "val/acc", "test/acc")),
            f"{run['val/loss']:.4f}"]  # fmt: skip


def several(runs: list[dict]) -> list[str]:
    return [spread(runs, "epochs", 1), spread(runs, "best_epoch", 1),
            *(spread(runs, k, 2, percent=True) for k in ("train/acc", "val/acc", "test/acc")),
            spread(runs, "val/loss", 4)]  # fmt: skip


def table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])


def results_table(runs: dict[str, Path], sweeps: dict[str, Path]) -> str:
    """The README's table: the seed-42 runs and the mean ± std over seeds 0 to 9."""
    seeded = {"logistic": seeds_of(sweeps["logistic_l2"], "model.l2_lambda=0"),
              "softmax": seeds_of(sweeps["softmax_seeds"], "model.l2_lambda=0")}  # fmt: skip
    rows = []
    for model in ("logistic", "softmax"):
        name = f"`{CONFIGS[model]}` ({MODELS[model]})"
        rows.append([name, "42", *single(results(runs[model]))])
        rows.append([name, f"0–{len(seeded[model]) - 1}", *several(seeded[model])])
    header = ["config", "seed", "epochs run", "best epoch", "train acc", "val acc", "test acc",
              "val loss"]  # fmt: skip
    return table(header, rows)


def welch_t(a: list[float], b: list[float]) -> str:
    """Welch's t of the difference of the means, ``mean(b) - mean(a)``, as text."""
    error = math.sqrt(statistics.variance(a) / len(a) + statistics.variance(b) / len(b))
    if error == 0:
        return "no spread"
    return f"t = {(statistics.fmean(b) - statistics.fmean(a)) / error:.1f}"


def l2_tables(folder: Path) -> str:
    """docs/results.md's tables: each λ over ten seeds, and its differences from λ = 0."""
    points = {value: seeds_of(folder, f"model.l2_lambda={value}") for value in LAMBDAS}
    rows = [[value, spread(runs, "epochs", 1), spread(runs, "best_epoch", 1),
             spread(runs, "val/acc", 2, True), spread(runs, "test/acc", 2, True),
             spread(runs, "train/loss", 4), spread(runs, "weight_norm", 2)]
            for value, runs in points.items()]  # fmt: skip
    header = ["λ", "epochs run", "best epoch", "val acc", "test acc", "train loss", "‖W‖"]
    keys = {"‖W‖": ("weight_norm", 1), "test acc": ("test/acc", 100),
            "val acc": ("val/acc", 100), "epochs run": ("epochs", 1)}  # fmt: skip
    differences = []
    for value, runs in list(points.items())[1:]:
        row = [value]
        for key, scale in keys.values():
            a = [scale * v for v in values(points["0"], key)]
            b = [scale * v for v in values(runs, key)]
            change = f"{statistics.fmean(b) - statistics.fmean(a):+.2f}"
            row.append(f"{change} ({welch_t(a, b)})".replace("-", "−"))
        differences.append(row)
    against = table(["λ", *(f"{name} against λ = 0" for name in keys)], differences)
    return table(header, rows) + "\n\n" + against


def draw(name: str, folder: Path, out: Path) -> None:
    """``python -m mnist_linear.report FOLDER --out out/name``, in place of what was there."""
    from mnist_linear.report import main as report

    shutil.rmtree(out / name, ignore_errors=True)
    report([str(folder), "--out", str(out / name)])


def main(argv: Sequence[str] | None = None) -> None:
    parser = OneLineArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog="Other arguments go to every train.py run and sweep, such as "
        "--trainer.max_epochs 2 --data.train_size 2000 for a quick look (the figures and "
        "numbers are then not the README's).",
    )
    parser.add_argument(
        "--data_dir", default="data",
        help="Folder of the MNIST files, as train.py's --data.data_dir (default: %(default)s).",
    )  # fmt: skip
    parser.add_argument(
        "--out", default=str(REPO / "docs" / "figures"),
        help="Where the figures go (default: docs/figures).",
    )  # fmt: skip
    parser.add_argument(
        "--root_dir", default=None,
        help="Keep the runs in this folder (default: a temporary folder, removed at the end); "
        "runs already there are kept.",
    )  # fmt: skip
    parser.add_argument(
        "--jobs", type=at_least(1), default=cores(),
        help="Sweep jobs (default: the machine's cores, %(default)s); the results do not "
        "depend on it.",
    )  # fmt: skip
    parser.add_argument(
        "--seeds", type=at_least(2), default=10,
        help="Seeds of each sweep's grid point, at least 2 for a spread (default: %(default)s).",
    )  # fmt: skip
    args, extra = parser.parse_known_args(argv)
    args.data_dir = str(Path(args.data_dir).resolve())
    with tempfile.TemporaryDirectory(prefix="make_figures.") as temporary:
        root = Path(args.root_dir or temporary).resolve()
        root.mkdir(parents=True, exist_ok=True)
        runs = {model: train_run(model, root, args, extra) for model in CONFIGS}
        sweeps = {name: sweep(name, root, args, extra) for name in SWEEPS}
        out = Path(args.out)
        draw("logistic", runs["logistic"], out)
        draw("softmax", runs["softmax"], out)
        draw("logistic_l2", sweeps["logistic_l2"], out)
        print("\nREADME, Results:\n")
        print(results_table(runs, sweeps))
        seconds = {model: results(folder)["seconds"] for model, folder in runs.items()}
        print(
            f"\nseed-42 runs, fit and final evaluation (results.json seconds): "
            f"logistic {seconds['logistic']:.1f} s, softmax {seconds['softmax']:.1f} s"
        )
        print("\ndocs/results.md, the L2 comparison (mean ± sample std over the seeds):\n")
        print(l2_tables(sweeps["logistic_l2"]))


if __name__ == "__main__":
    main()
