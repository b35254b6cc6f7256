"""``python -m mnist_linear.report FOLDER [FOLDER ...] --out DIR``: figures as PNG files.

A FOLDER is a run (a folder with a TensorBoard event file), a sweep (a folder of runs
named after their grid point and seed), or a folder that holds runs and sweeps, such as
``lightning_logs``. Each run gets ``loss.png`` and ``accuracy.png`` (the three splits
against the SGD step, with the restored evaluation and the stop marked) and
``weights.png`` (each class's mean training image beside its restored weights). Each
sweep gets ``final.png`` (per grid point, every seed's final validation and test
accuracy and ‖W‖, with their mean ± sample standard deviation), ``val_accuracy.png``
and ``weight_norm.png`` (per grid point the mean curve over its seeds, up to the step
where the first seed stopped) and ``weights.png`` (one weight image per grid point). One
figure set goes into DIR; several go into subfolders of DIR named after each run or
sweep (``DIR/version_0``, ``DIR/logistic_l2``). Curves come from the event files, read
with TensorBoard's own reader; weights from the run's best checkpoint.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import logging
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import yaml
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from mnist_linear.errors import OneLineArgumentParser, fail
from mnist_linear.figures import ReportError, Run, run_figures
from mnist_linear.folders import logger_version
from mnist_linear.sweep_figures import sweep_figures

CONFIG_HEADER = "# config: "
EVENTS = "events.out.tfevents.*"


@dataclass(frozen=True)
class FigureSet:
    """The runs of one figure set: a single run, or the runs of a sweep."""

    name: str
    runs: tuple[Path, ...]
    sweep: bool


def _is_run(folder: Path) -> bool:
    return any(folder.glob(EVENTS))


def _sets_in(folder: Path, depth: int) -> list[FigureSet]:
    """The figure sets of ``folder``: itself as a run, its runs, and ``depth`` levels below.

    Runs named ``version_N`` (train.py's own) stand alone; the other runs in one folder
    are a sweep's.
    """
    if _is_run(folder):
        return [FigureSet(folder.name, (folder,), sweep=False)]
    subfolders = sorted(p for p in folder.iterdir() if p.is_dir())
    runs = [p for p in subfolders if _is_run(p)]
    alone = [p for p in runs if isinstance(logger_version(p), int)]
    members = tuple(p for p in runs if p not in alone)
    sets = [FigureSet(p.name, (p,), sweep=False) for p in alone]
    if members:
        sets.append(FigureSet(folder.name, members, sweep=True))
    if depth > 0:
        for sub in subfolders:
            if sub not in runs:
                sets.extend(_sets_in(sub, depth - 1))
    return sets


def figure_sets(folders: Sequence[str]) -> list[FigureSet]:
    """One figure set per run and per sweep in ``folders``, each with a name of its own."""
    sets = []
    for name in folders:
        folder = Path(name)
        if not folder.is_dir():
            raise ReportError(f"{folder} is not a folder")
        found = _sets_in(folder, depth=2)
        if not found:
            raise ReportError(f"{folder} holds no run: no {EVENTS} file in it or its subfolders")
        sets.extend(found)
    twice = [name for name, count in Counter(s.name for s in sets).items() if count > 1]
    if twice:
        where = ", ".join(str(s.runs[0].parent) for s in sets if s.name == twice[0])
        raise ReportError(
            f"two figure sets would be named {twice[0]} (in {where}); "
            "give one of these folders at a time, each with its own --out"
        )
    return sets


@contextlib.contextmanager
def _quiet_tensorboard() -> Iterator[None]:
    # A run resumed in its own folder has a second event file that starts with a purge
    # (docs/training.md); TensorBoard's reader announces it as an out-of-order restart.
    tensorboard = logging.getLogger("tensorboard")
    level = tensorboard.level
    tensorboard.setLevel(logging.ERROR)
    try:
        yield
    finally:
        tensorboard.setLevel(level)


def _restored_weight(folder: Path) -> tuple[np.ndarray | None, str]:
    best = sorted((folder / "checkpoints").glob("best-*.ckpt"))
    if not best:
        return None, ""
    state = torch.load(best[-1], map_location="cpu", weights_only=True)["state_dict"]
    return state["linear.weight"].double().numpy(), best[-1].name


def load_run(folder: Path) -> Run:
    """Read the run's event files as TensorBoard does: one run, in the order written.

    A run resumed in its own folder has a second event file that starts with a purge
    just past the checkpoint's step, which hides what the interrupted run logged after it.
    """
    if not _is_run(folder):
        raise ReportError(f"{folder} holds no run: no {EVENTS} file")
    events = EventAccumulator(str(folder), size_guidance={"scalars": 0, "images": 0})
    with _quiet_tensorboard():
        events.Reload()
    tags = events.Tags()
    scalars = {
        tag: (
            np.array([e.step for e in events.Scalars(tag)]),
            np.array([e.value for e in events.Scalars(tag)]),
        )
        for tag in tags["scalars"]
    }
    images = {
        tag: [
            np.asarray(Image.open(io.BytesIO(e.encoded_image_string)).convert("L"))
            for e in events.Images(tag)
        ]
        for tag in tags["images"]
    }
    config_path, results_path = folder / "config.yaml", folder / "results.json"
    text = config_path.read_text() if config_path.is_file() else ""
    # train.py's config.yaml starts with the config file it came from, as a comment.
    header = next((line for line in text.splitlines()[:3] if line.startswith(CONFIG_HEADER)), "")
    results = json.loads(results_path.read_text()) if results_path.is_file() else {}
    weight, best = _restored_weight(folder)
    config = yaml.safe_load(text) or {}
    return Run(folder, scalars, images, config, results, weight,
               header[len(CONFIG_HEADER) :], best)  # fmt: skip


def draw(figure_set: FigureSet, out: Path) -> list[Path]:
    """The figures of one set, written into ``out``."""
    runs = [load_run(folder) for folder in figure_set.runs]
    return sweep_figures(runs, out) if figure_set.sweep else run_figures(runs[0], out)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = OneLineArgumentParser(
        prog="python -m mnist_linear.report", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument(
        "folders", nargs="+", metavar="FOLDER",
        help="A run, a sweep, or a folder of runs and sweeps such as lightning_logs.",
    )  # fmt: skip
    parser.add_argument(
        "--out", required=True,
        help="Folder for the PNG files (made if needed); one subfolder per run or sweep "
        "when there are several.",
    )  # fmt: skip
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> list[Path]:
    args = parse_args(argv)
    out = Path(args.out)
    written = []
    try:
        sets = figure_sets(args.folders)
        for figure_set in sets:
            paths = draw(figure_set, out if len(sets) == 1 else out / figure_set.name)
            print("\n".join(str(path) for path in paths), flush=True)
            written += paths
    except ReportError as error:
        fail(str(error))
    return written


if __name__ == "__main__":
    main()
