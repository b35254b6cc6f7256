"""The report's figures of one run: its curves and its weights, and what every figure shares.

Every figure is written as a PNG whose bytes depend only on what it shows: the same
runs give the same files (no software version or date in the metadata).
"""

from __future__ import annotations

import io
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from mnist_linear.callbacks import TILE_PADDING
from mnist_linear.files import atomic_write_bytes
from mnist_linear.splits import IMAGE_SIDE

STAGES = {"train": "training", "val": "validation", "test": "test"}
SEED_SUFFIX = ",seed="
BEST_STEP = re.compile(r"best-epoch=\d+-step=(\d+)\.ckpt")


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
    best_checkpoint: str = field(default="")

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
    def padding(self) -> int:
        """Pixels between the tiles of the run's logged images (``--weight_images.padding``)."""
        return int(self.config.get("weight_images", {}).get("padding", TILE_PADDING))

    @property
    def best_step(self) -> int | None:
        """The step of the evaluation whose weights early stopping restored."""
        step = self.results.get("best_step")
        if step is None:  # a results.json written before it recorded best_step
            found = BEST_STEP.fullmatch(self.best_checkpoint)
            step = int(found.group(1)) if found else None
        return step

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


def save(figure: plt.Figure, path: Path) -> Path:
    """``figure`` as a PNG at ``path``, written atomically, with no software version in it."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=120, bbox_inches="tight",
                   metadata={"Software": None})  # fmt: skip
    plt.close(figure)
    atomic_write_bytes(path, [buffer.getvalue()])
    return path


def legend_outside(axes: plt.Axes) -> None:
    """The legend to the right of the plotting area, where it hides no curve."""
    axes.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0)


def _mark_best_and_stop(axes: plt.Axes, run: Run) -> None:
    """Dashed lines at the evaluation whose weights were restored, and at the last step."""
    results = run.results
    if run.best_step is not None and results.get("best_epoch") is not None:
        axes.axvline(run.best_step, color="green", linestyle="--",
                     label=f"best epoch {results['best_epoch']}")  # fmt: skip
    if results.get("stopped_epoch") is not None:
        axes.axvline(results["global_step"], color="gray", linestyle=":",
                     label=f"stop, epoch {results['stopped_epoch']}")  # fmt: skip


def curves(run: Run, metric: str, ylabel: str) -> plt.Figure:
    """The three splits' ``metric`` against the SGD step, the best epoch and the stop marked."""
    figure, axes = plt.subplots(figsize=(8, 4.5))
    for stage, name in STAGES.items():
        steps, values = run.series(f"{stage}/{metric}")
        axes.plot(steps, values, label=name)
    _mark_best_and_stop(axes, run)
    axes.set(xlabel="SGD step", ylabel=ylabel, title=f"{ylabel.capitalize()}: {run.title}")
    axes.grid(alpha=0.3)
    legend_outside(axes)
    return figure


def weight_panels(
    axes: Sequence[plt.Axes], weight: np.ndarray, scale: float, names: Sequence[str]
) -> matplotlib.image.AxesImage:
    """Each row of ``weight`` as a 28 x 28 tile, red positive, blue negative, up to ±scale."""
    image = None
    for ax, row, name in zip(axes, weight, names, strict=True):
        tile = row.reshape(IMAGE_SIDE, IMAGE_SIDE)
        image = ax.imshow(tile, cmap="RdBu_r", vmin=-scale, vmax=scale)
        ax.set_title(name, fontsize=9)
        ax.axis("off")
    return image


def tiles(grid: np.ndarray, count: int, padding: int) -> list[np.ndarray]:
    """The ``count`` tiles of a one-row image grid as ``make_grid`` lays it out."""
    step = IMAGE_SIDE + padding
    return [grid[padding : padding + IMAGE_SIDE, padding + k * step : k * step + step]
            for k in range(count)]  # fmt: skip


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
    for ax, tile, name in zip(mean_axes, tiles(means, len(mean_names), run.padding), mean_names,
                              strict=True):  # fmt: skip
        ax.imshow(tile, cmap="gray", vmin=0, vmax=255)
        ax.set_title(name, fontsize=9)
        ax.axis("off")
    scale = float(np.abs(run.weight).max()) or 1.0
    image = weight_panels(weight_axes, run.weight, scale, names)
    figure.colorbar(image, ax=list(np.ravel(axes)), shrink=0.8, label="weight")
    figure.suptitle(f"Mean training images and restored weights: {run.title}", fontsize=10)
    return figure


def run_figures(run: Run, out: Path) -> list[Path]:
    """``loss.png``, ``accuracy.png`` and ``weights.png`` of one run."""
    return [
        save(curves(run, "loss", "cross-entropy"), out / "loss.png"),
        save(curves(run, "acc", "accuracy"), out / "accuracy.png"),
        save(weights_figure(run), out / "weights.png"),
    ]
