"""``python -m mnist_linear.report RUN_DIR [RUN_DIR ...] --out DIR``: figures as PNG files.

One run: ``loss.png`` and ``accuracy.png`` (the three splits against the SGD step, with
the best epoch and the stop marked) and ``weights.png`` (each class's mean training
image beside its restored weights, on a colour scale symmetric around zero). Several
runs, such as a sweep: ``val_accuracy.png`` and ``weight_norm.png`` (per grid point the
mean over its seeds, with a band from the lowest to the highest seed) and
``weights.png`` (one weight image per grid point, from its first seed). A RUN_DIR is a
folder with a TensorBoard event file, or a folder of such folders. Curves come from the
event files, read with TensorBoard's own reader; weights from the run's best checkpoint.
"""

from __future__ import annotations

import argparse
import io
import itertools
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import torch
import yaml
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from mnist_linear.callbacks import TILE_PADDING
from mnist_linear.errors import OneLineArgumentParser, fail
from mnist_linear.files import atomic_write_bytes
from mnist_linear.splits import IMAGE_SIDE

STAGES = {"train": "training", "val": "validation", "test": "test"}
SEED_SUFFIX = ",seed="
CONFIG_HEADER = "# config: "


class ReportError(Exception):
    """A folder that holds no run, or a run that lacks what a figure needs."""


@dataclass
class Run:
    """The logged scalars and images of one run, its config, results and restored weights."""

    folder: Path
    scalars: dict[str, tuple[np.ndarray, np.ndarray]]
    images: dict[str, list[np.ndarray]]
    config: dict
    results: dict
    weight: np.ndarray | None
    config_file: str = ""

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
    def classes(self) -> list[int] | None:
        return self.config.get("data", {}).get("classes")

    @property
    def class_names(self) -> list[str]:
        """The digit of each weight row: label 1's digit alone for the binary model."""
        return [str(d) for d in range(10)] if self.classes is None else [str(self.classes[0])]

    @property
    def point(self) -> str:
        """The grid point of a sweep's run: its folder name without the seed."""
        return self.folder.name.split(SEED_SUFFIX)[0]

    @property
    def model(self) -> str:
        if self.classes is None:
            return "softmax regression, 10 digits"
        return f"logistic regression, {self.classes[0]} vs {self.classes[1]}"

    @property
    def title(self) -> str:
        """The model, its config file and λ."""
        l2_lambda = self.config.get("model", {}).get("l2_lambda", 0.0)
        source = f" ({self.config_file})" if self.config_file else ""
        return f"{self.model}{source}, λ = {l2_lambda:g}"


def _restored_weight(folder: Path) -> np.ndarray | None:
    best = sorted((folder / "checkpoints").glob("best-*.ckpt"))
    if not best:
        return None
    state = torch.load(best[-1], map_location="cpu", weights_only=True)["state_dict"]
    return state["linear.weight"].double().numpy()


def load_run(folder: Path) -> Run:
    """Read the run's event files as TensorBoard does: one run, in the order written.

    A run resumed in its own folder has a second event file that starts with a purge
    just past the checkpoint's step, which hides what the interrupted run logged after it.
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
    config_path, results_path = folder / "config.yaml", folder / "results.json"
    text = config_path.read_text() if config_path.is_file() else ""
    # train.py's config.yaml starts with the config file it came from, as a comment.
    header = next((line for line in text.splitlines()[:3] if line.startswith(CONFIG_HEADER)), "")
    results = json.loads(results_path.read_text()) if results_path.is_file() else {}
    weight = _restored_weight(folder)
    config = yaml.safe_load(text) or {}
    return Run(folder, scalars, images, config, results, weight, header[len(CONFIG_HEADER) :])


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


def _legend_outside(axes: plt.Axes) -> None:
    axes.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0)


def _mark_best_and_stop(axes: plt.Axes, run: Run) -> None:
    """Dashed lines at the end of the best epoch and at the last step."""
    results = run.results
    if results.get("best_epoch") is None or results.get("stopped_epoch") is None:
        return
    per_epoch = results["global_step"] / (results["stopped_epoch"] + 1)
    best = (results["best_epoch"] + 1) * per_epoch
    axes.axvline(best, color="green", linestyle="--", label=f"best epoch {results['best_epoch']}")
    axes.axvline(results["global_step"], color="gray", linestyle=":",
                 label=f"stop, epoch {results['stopped_epoch']}")  # fmt: skip


def _curves(run: Run, metric: str, ylabel: str) -> plt.Figure:
    figure, axes = plt.subplots(figsize=(8, 4.5))
    for stage, name in STAGES.items():
        steps, values = run.series(f"{stage}/{metric}")
        axes.plot(steps, values, label=name)
    _mark_best_and_stop(axes, run)
    axes.set(xlabel="SGD step", ylabel=ylabel, title=f"{ylabel.capitalize()}: {run.title}")
    axes.grid(alpha=0.3)
    _legend_outside(axes)
    return figure


def _weight_panels(
    axes: Sequence[plt.Axes], weight: np.ndarray, scale: float, names: Sequence[str]
) -> matplotlib.image.AxesImage:
    image = None
    for ax, row, name in zip(axes, weight, names, strict=True):
        tile = row.reshape(IMAGE_SIDE, IMAGE_SIDE)
        image = ax.imshow(tile, cmap="RdBu_r", vmin=-scale, vmax=scale)
        ax.set_title(name, fontsize=9)
        ax.axis("off")
    return image


def weights_figure(run: Run) -> plt.Figure:
    """Each class's mean training image (top) and restored weights (bottom, signed)."""
    if run.weight is None:
        raise ReportError(f"{run.folder} has no checkpoints/best-*.ckpt with restored weights")
    means = run.last_image("class_means")
    count = len(run.weight)
    names = [f"{name} (label {k})" for k, name in enumerate(run.class_names)]
    if count == 1:  # binary: the two means and the single weight image, in one row
        figure, axes = plt.subplots(1, 3, figsize=(7.5, 2.9))
        mean_axes, weight_axes = axes[:2], axes[2:]
        mean_names = [f"mean {run.classes[0]} (label 1)", f"mean {run.classes[1]} (label 0)"]
        names = [f"weights: + for {run.classes[0]}, − for {run.classes[1]}"]
    else:
        figure, axes = plt.subplots(2, count, figsize=(1.3 * count, 3.3))
        mean_axes, weight_axes = axes[0], axes[1]
        mean_names = [f"mean {name}" for name in run.class_names]
    tiles = _tiles(means, len(mean_names))
    for ax, tile, name in zip(mean_axes, tiles, mean_names, strict=True):
        ax.imshow(tile, cmap="gray", vmin=0, vmax=255)
        ax.set_title(name, fontsize=9)
        ax.axis("off")
    scale = float(np.abs(run.weight).max()) or 1.0
    image = _weight_panels(weight_axes, run.weight, scale, names)
    figure.colorbar(image, ax=list(np.ravel(axes)), shrink=0.8, label="weight")
    figure.suptitle(f"Mean training images and restored weights: {run.title}", fontsize=10)
    return figure


def _tiles(grid: np.ndarray, count: int, padding: int = TILE_PADDING) -> list[np.ndarray]:
    """The ``count`` tiles of a one-row image grid as TensorBoard stores it."""
    step = IMAGE_SIDE + padding
    return [grid[padding : padding + IMAGE_SIDE, padding + k * step : k * step + step]
            for k in range(count)]  # fmt: skip


def single_run_report(run: Run, out: Path) -> list[Path]:
    return [
        save(_curves(run, "loss", "cross-entropy"), out / "loss.png"),
        save(_curves(run, "acc", "accuracy"), out / "accuracy.png"),
        save(weights_figure(run), out / "weights.png"),
    ]


def _points(runs: list[Run]) -> list[tuple[str, list[Run]]]:
    runs = sorted(runs, key=lambda r: (r.point, r.folder.name))
    return [(point, list(group)) for point, group in itertools.groupby(runs, lambda r: r.point)]


def _band(runs: list[Run], tag: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Steps, and the mean, lowest and highest over the runs that logged each step.

    Runs that stop early drop out of the later steps, so the curve goes on as long as the
    longest run.
    """
    series = [dict(zip(*run.series(tag), strict=True)) for run in runs]
    steps = np.array(sorted(set().union(*series)))
    values = [np.array([s[step] for s in series if step in s]) for step in steps]
    return (
        steps,
        np.array([v.mean() for v in values]),
        np.array([v.min() for v in values]),
        np.array([v.max() for v in values]),
    )


def _compare(runs: list[Run], tag: str, ylabel: str, title: str) -> plt.Figure:
    figure, axes = plt.subplots(figsize=(8, 4.5))
    points = _points(runs)
    for point, group in points:
        steps, mean, low, high = _band(group, tag)
        seeds = f", {len(group)} seeds" if len(group) > 1 else ""
        (line,) = axes.plot(steps, mean, label=f"{point}{seeds}")
        if len(group) > 1:
            axes.fill_between(steps, low, high, color=line.get_color(), alpha=0.2)
    seeded = len(runs) > len(points)
    spread = " (mean of the seeds still running, band: lowest to highest)" if seeded else ""
    axes.set(xlabel="SGD step", ylabel=ylabel, title=f"{title}{spread}")
    axes.grid(alpha=0.3)
    _legend_outside(axes)
    return figure


def sweep_report(runs: list[Run], out: Path) -> list[Path]:
    points = _points(runs)
    firsts = [group[0] for _, group in points]
    missing = [run.folder for run in firsts if run.weight is None]
    if missing:
        raise ReportError(f"{missing[0]} has no checkpoints/best-*.ckpt with restored weights")
    rows = len(firsts[0].weight)
    figure, axes = plt.subplots(rows, len(points), figsize=(2.3 * len(points), 2.4 * rows),
                                squeeze=False)  # fmt: skip
    scale = max(float(np.abs(run.weight).max()) for run in firsts) or 1.0
    image = None
    keys = {name.split("=")[0] for point, _ in points for name in point.split(",")}
    single = len(keys) == 1  # then the key goes in the title, the values above the panels
    for column, ((point, _), run) in enumerate(zip(points, firsts, strict=True)):
        name = point.split("=", 1)[1] if single else point.replace(",", "\n")
        image = _weight_panels(axes[:, column], run.weight, scale, [name] * rows)
    figure.colorbar(image, ax=list(np.ravel(axes)), shrink=0.8, label="weight")
    grid = f" by {keys.pop()}" if single else ""
    figure.suptitle(
        f"Restored weights{grid}, first seed of each point: {firsts[0].model}", fontsize=10
    )
    return [
        save(_compare(runs, "val/acc", "validation accuracy", "Validation accuracy"),
             out / "val_accuracy.png"),
        save(_compare(runs, "weight_norm", "‖W‖", "Length of the weights"),
             out / "weight_norm.png"),
        save(figure, out / "weights.png"),
    ]  # fmt: skip


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
