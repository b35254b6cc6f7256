"""``python -m mnist_linear.report RUN_DIR [RUN_DIR ...] --out DIR``: figures as PNG files.

One run: ``loss.png`` (cross-entropy of the three splits against the step),
``accuracy.png`` and ``weights.png`` (the class means above the restored weights).
Several runs, such as the λ sweep: ``val_accuracy.png``, ``weight_norm.png`` and
``weights.png`` (each run's weight image, labelled with its λ from its config.yaml).
A RUN_DIR is a folder with a TensorBoard event file, or a folder of such folders.
The figures are read from the event files with TensorBoard's own reader.
"""

from __future__ import annotations

import argparse
import io
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import yaml
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from mnist_linear.callbacks import TILE_PADDING as PADDING
from mnist_linear.errors import OneLineArgumentParser, fail
from mnist_linear.files import atomic_write_bytes

STAGES = {"train": "training", "val": "validation", "test": "test"}
TILE = 28


class ReportError(Exception):
    """A folder that holds no run, or a run that lacks a tag a figure needs."""


@dataclass
class Run:
    """The logged scalars and images of one run, and its saved configuration."""

    folder: Path
    scalars: dict[str, tuple[np.ndarray, np.ndarray]]
    images: dict[str, list[np.ndarray]]
    config: dict

    def series(self, tag: str) -> tuple[np.ndarray, np.ndarray]:
        if tag not in self.scalars:
            raise ReportError(
                f"{self.folder} has no scalar {tag!r} (it has {sorted(self.scalars)})"
            )
        return self.scalars[tag]

    def last_image(self, tag: str) -> np.ndarray:
        if not self.images.get(tag):
            raise ReportError(f"{self.folder} has no image {tag!r} (it has {sorted(self.images)})")
        return self.images[tag][-1]

    @property
    def l2_lambda(self) -> float:
        return float(self.config.get("model", {}).get("l2_lambda", 0.0))

    @property
    def class_names(self) -> list[str]:
        classes = self.config.get("data", {}).get("classes")
        return [str(d) for d in range(10)] if classes is None else [str(c) for c in classes]


def load_run(folder: Path) -> Run:
    """Read the run's event files as TensorBoard does: one run, in the order written.

    A run resumed in its own folder has a second event file that starts with a purge
    at the checkpoint's step, which hides what the interrupted run logged after it.
    """
    if not any(folder.glob("events.out.tfevents.*")):
        raise ReportError(f"{folder} holds no run: no events.out.tfevents.* file")
    events = EventAccumulator(str(folder), size_guidance={"scalars": 0, "images": 0})
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
    config_path = folder / "config.yaml"
    config = yaml.safe_load(config_path.read_text()) if config_path.is_file() else {}
    return Run(folder, scalars, images, config or {})


def expand(folders: Sequence[str]) -> list[Path]:
    """Each RUN_DIR that is a run, or the runs directly inside it."""
    runs = []
    for name in folders:
        folder = Path(name)
        if not folder.is_dir():
            raise ReportError(f"{folder} is not a folder")
        if any(folder.glob("events.out.tfevents.*")):
            runs.append(folder)
            continue
        inside = sorted(
            p for p in folder.iterdir() if p.is_dir() and any(p.glob("events.out.tfevents.*"))
        )
        if not inside:
            raise ReportError(
                f"{folder} holds no run: no events.out.tfevents.* file in it or its subfolders"
            )
        runs.extend(inside)
    return runs


def save(figure: plt.Figure, path: Path) -> Path:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=120, bbox_inches="tight")
    plt.close(figure)
    atomic_write_bytes(path, [buffer.getvalue()])
    return path


def _curves(run: Run, metric: str, ylabel: str, title: str) -> plt.Figure:
    figure, axes = plt.subplots(figsize=(7, 4.5))
    for stage, name in STAGES.items():
        steps, values = run.series(f"{stage}/{metric}")
        axes.plot(steps, values, label=name)
    axes.set(xlabel="training step", ylabel=ylabel, title=title)
    axes.grid(alpha=0.3)
    axes.legend()
    return figure


def _grid_columns(image: np.ndarray) -> int:
    return (image.shape[1] - PADDING) // (TILE + PADDING)


def _label_tiles(axes: plt.Axes, image: np.ndarray, names: list[str]) -> None:
    columns = _grid_columns(image)
    axes.set_xticks([PADDING + k * (TILE + PADDING) + TILE / 2 for k in range(columns)])
    axes.set_xticklabels(names[:columns])
    axes.set_yticks([])
    axes.tick_params(length=0)


def weights_figure(run: Run) -> plt.Figure:
    """The class means (top) above the restored weights (bottom), the assignment's picture."""
    image = run.last_image("weights_vs_means")
    figure, axes = plt.subplots(figsize=(max(4, image.shape[1] / 30), 2.8))
    axes.imshow(image, cmap="gray", vmin=0, vmax=255)
    names = run.class_names
    _label_tiles(
        axes, image, names if len(names) > 2 else [f"{names[0]} (label 1)", f"{names[1]} (label 0)"]
    )
    axes.set_title(f"Mean training images (top) and learned weights (bottom): {run.folder.name}")
    return figure


def single_run_report(run: Run, out: Path) -> list[Path]:
    return [
        save(_curves(run, "loss", "cross-entropy", f"Loss: {run.folder.name}"), out / "loss.png"),
        save(_curves(run, "acc", "accuracy", f"Accuracy: {run.folder.name}"), out / "accuracy.png"),
        save(weights_figure(run), out / "weights.png"),
    ]


def _compare(runs: list[Run], tag: str, ylabel: str, title: str) -> plt.Figure:
    figure, axes = plt.subplots(figsize=(7, 4.5))
    for run in runs:
        steps, values = run.series(tag)
        axes.plot(steps, values, label=f"λ = {run.l2_lambda:g}")
    axes.set(xlabel="training step", ylabel=ylabel, title=title)
    axes.grid(alpha=0.3)
    axes.legend()
    return figure


def sweep_report(runs: list[Run], out: Path) -> list[Path]:
    runs = sorted(runs, key=lambda r: r.l2_lambda)
    weights = [run.last_image("restored_weights") for run in runs]
    figure, axes = plt.subplots(1, len(runs), figsize=(2.2 * len(runs), 2.6), squeeze=False)
    for ax, run, image in zip(axes[0], runs, weights, strict=True):
        ax.imshow(image, cmap="gray", vmin=0, vmax=255)
        ax.set_title(f"λ = {run.l2_lambda:g}")
        ax.axis("off")
    figure.suptitle("Restored weights (each tile scaled to its own range)")
    return [
        save(
            _compare(runs, "val/acc", "validation accuracy", "Validation accuracy"),
            out / "val_accuracy.png",
        ),
        save(
            _compare(runs, "weight_norm", "‖W‖", "Length of the weight vector"),
            out / "weight_norm.png",
        ),
        save(figure, out / "weights.png"),
    ]


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = OneLineArgumentParser(
        prog="python -m mnist_linear.report", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument(
        "runs", nargs="+", metavar="RUN_DIR", help="Run folders, or folders of runs."
    )
    parser.add_argument("--out", required=True, help="Folder for the PNG files (made if needed).")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> list[Path]:
    args = parse_args(argv)
    try:
        runs = [load_run(folder) for folder in expand(args.runs)]
        out = Path(args.out)
        written = single_run_report(runs[0], out) if len(runs) == 1 else sweep_report(runs, out)
    except ReportError as error:
        fail(str(error))
    for path in written:
        print(path)
    return written


if __name__ == "__main__":
    main()
