"""The report's figures of a sweep: its grid points compared, each over its seeds."""

from __future__ import annotations

import itertools
import statistics
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from mnist_linear.figures import ReportError, Run, legend_outside, save, weight_panels
from mnist_linear.grid import split_values


def _order(name: str) -> tuple:
    """Sort key of a run's folder name: numbers as numbers (seed=10 after seed=9)."""
    items = []
    for item in split_values(name):
        key, _, value = item.partition("=")
        try:
            items.append((key, 0, float(value), value))
        except ValueError:
            items.append((key, 1, 0.0, value))
    return tuple(items)


def points(runs: list[Run]) -> list[tuple[str, list[Run]]]:
    """The runs grouped by grid point, points and seeds in numeric order."""
    runs = sorted(runs, key=lambda r: (_order(r.point), _order(r.folder.name)))
    return [(point, list(group)) for point, group in itertools.groupby(runs, lambda r: r.point)]


def _grid_key(names: Sequence[str]) -> str | None:
    """The grid's key when every point varies the same single key, else ``None``."""
    keys = {tuple(item.split("=")[0] for item in split_values(name)) for name in names}
    return keys.pop()[0] if len(keys) == 1 and len(next(iter(keys))) == 1 else None


def _label(point: str, key: str | None) -> str:
    return point.split("=", 1)[1] if key else "\n".join(split_values(point))


Curve = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]


def common_steps(runs: list[Run], tag: str) -> Curve:
    """Steps logged by every run, and the mean, lowest and highest value at each.

    A run stopped early logs no later step, so the curve ends where the first seed
    stopped: every point of it is a mean over all the runs.
    """
    series = [dict(zip(*run.series(tag), strict=True)) for run in runs]
    steps = np.array(sorted(set.intersection(*(set(s) for s in series))))
    values = np.array([[s[step] for s in series] for step in steps]).reshape(len(steps), -1)
    return steps, values.mean(axis=1), values.min(axis=1), values.max(axis=1)


def compare(runs: list[Run], tag: str, ylabel: str, title: str) -> plt.Figure:
    """Per grid point the mean curve of its seeds, with a band from lowest to highest."""
    figure, axes = plt.subplots(figsize=(8, 4.5))
    grouped = points(runs)
    key = _grid_key([point for point, _ in grouped])
    styles = itertools.cycle(["-", "--", "-.", ":"])
    for k, (point, group) in enumerate(grouped):
        steps, mean, low, high = common_steps(group, tag)
        seeds = f", {len(group)} seeds" if len(group) > 1 else ""
        label = f"{_label(point, key) if key else point}{seeds}"
        # The first point on top, each in a line style of its own: none hides another.
        (line,) = axes.plot(steps, mean, linestyle=next(styles), zorder=3 + len(grouped) - k,
                            label=label)  # fmt: skip
        if len(group) > 1:
            axes.fill_between(steps, low, high, color=line.get_color(), alpha=0.12, linewidth=0)
    if len(runs) > len(grouped):
        title += "\nmean over the seeds (band: lowest to highest), up to the first seed's stop"
    axes.set(xlabel="SGD step", ylabel=ylabel, title=title)
    axes.grid(alpha=0.3)
    legend_outside(axes)
    if key:
        axes.get_legend().set_title(key)
    return figure


FINAL = (("val/acc", "validation accuracy", 100), ("test/acc", "test accuracy", 100),
         ("weight_norm", "‖W‖", 1))  # fmt: skip


def final_figure(runs: list[Run]) -> plt.Figure:
    """Per grid point, each seed's final (restored) value and their mean ± sample std."""
    grouped = [(point, [r for r in group if r.results]) for point, group in points(runs)]
    grouped = [(point, group) for point, group in grouped if group]
    if not grouped:
        raise ReportError(f"no run in {runs[0].folder.parent} has a results.json yet")
    key = _grid_key([point for point, _ in grouped])
    figure, axes = plt.subplots(1, len(FINAL), figsize=(3.6 * len(FINAL), 3.8))
    x = np.arange(len(grouped))
    for ax, (metric, name, scale) in zip(axes, FINAL, strict=True):
        for k, (_, group) in enumerate(grouped):
            values = [scale * r.results[metric] for r in group if r.results.get(metric) is not None]
            if not values:
                continue
            ax.plot(np.full(len(values), k), values, "o", color="0.6", markersize=3,
                    alpha=0.7, label="one seed" if k == 0 else None)  # fmt: skip
            spread = statistics.stdev(values) if len(values) > 1 else 0.0
            ax.errorbar(k, statistics.fmean(values), yerr=spread, fmt="s", color="C0", capsize=5,
                        markersize=6, label="mean ± std" if k == 0 else None)  # fmt: skip
        ax.set_xticks(x, [_label(point, key) for point, _ in grouped])
        ax.set_xlim(-0.5, len(grouped) - 0.5)
        ax.set(title=name, xlabel=key or "grid point")
        if scale == 100:
            ax.set_ylabel("%")
        ax.grid(alpha=0.3, axis="y")
    seeds = sorted({len(group) for _, group in grouped})
    counted = "/".join(str(n) for n in seeds)
    axes[-1].legend(loc="best", fontsize=8)
    figure.suptitle(f"Restored weights, {counted} seed(s) per point (dots: each seed; squares: "
                    f"mean ± sample std): {_model_of(runs)}", fontsize=10)  # fmt: skip
    figure.tight_layout()
    return figure


def _model_of(runs: Sequence[Run]) -> str:
    models = {run.model for run in runs}
    return models.pop() if len(models) == 1 else "binary and 10-digit models"


def sweep_weights_figure(runs: list[Run]) -> plt.Figure:
    """The restored weights of each grid point's first seed, on one colour scale.

    Binary models only: one row, a column per point. Otherwise a row per point and a
    column per digit (a binary point fills the first column only).
    """
    firsts = []
    for point, group in points(runs):
        run = next((r for r in group if r.weight is not None), None)
        if run is None:
            raise ReportError(f"{group[0].folder} has no checkpoints/best-*.ckpt with restored "
                              "weights, nor has any other seed of its point")  # fmt: skip
        firsts.append((point, run))
    key = _grid_key([point for point, _ in firsts])
    scale = max(float(np.abs(run.weight).max()) for _, run in firsts) or 1.0
    width = max(len(run.weight) for _, run in firsts)
    if width == 1:
        figure, axes = plt.subplots(1, len(firsts), figsize=(2.3 * len(firsts), 2.4),
                                    squeeze=False)  # fmt: skip
        for column, (point, run) in enumerate(firsts):
            image = weight_panels(axes[:, column], run.weight, scale, [_label(point, key)])
    else:
        figure, axes = plt.subplots(len(firsts), width, figsize=(1.3 * width, 1.5 * len(firsts)),
                                    squeeze=False)  # fmt: skip
        titled = False  # the digits above the first row of ten, and above each binary one
        for row, (point, run) in enumerate(firsts):
            count = len(run.weight)
            names = run.class_names if count < width or not titled else [""] * count
            titled = titled or count == width
            image = weight_panels(axes[row, :count], run.weight, scale, names)
            for ax in axes[row, count:]:
                ax.axis("off")
            axes[row, 0].axis("on")
            axes[row, 0].set(xticks=[], yticks=[], ylabel=_label(point, key).replace("\n", ", "))
    figure.colorbar(image, ax=list(np.ravel(axes)), shrink=0.8, label="weight")
    grid = f" by {key}" if key else ""
    figure.suptitle(f"Restored weights{grid}, first seed of each point: {_model_of(runs)}",
                    fontsize=10)  # fmt: skip
    return figure


def sweep_figures(runs: list[Run], out: Path) -> list[Path]:
    """``final.png``, ``val_accuracy.png``, ``weight_norm.png`` and ``weights.png`` of a sweep."""
    return [
        save(final_figure(runs), out / "final.png"),
        save(compare(runs, "val/acc", "validation accuracy", "Validation accuracy"),
             out / "val_accuracy.png"),
        save(compare(runs, "weight_norm", "‖W‖", "Length of the weights"),
             out / "weight_norm.png"),
        save(sweep_weights_figure(runs), out / "weights.png"),
    ]  # fmt: skip
