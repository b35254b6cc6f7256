"""``python -m mnist_linear.report``: every figure from real runs, and one-line refusals."""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pytest
from conftest import run_dir
from PIL import Image

from mnist_linear.report import _compare, _curves, expand, load_run, main, weights_figure


def _check_png(path: Path, min_width: int, min_height: int) -> None:
    assert path.is_file() and path.stat().st_size > 5000
    image = Image.open(path)
    assert image.format == "PNG"
    assert image.width >= min_width and image.height >= min_height
    pixels = np.asarray(image.convert("L"), dtype=np.float64)
    assert pixels.std() > 10, f"{path.name} looks blank"


def test_single_run_figures(logistic_run: Path, tmp_path: Path) -> None:
    written = main([str(run_dir(logistic_run)), "--out", str(tmp_path / "figures")])
    assert sorted(p.name for p in written) == ["accuracy.png", "loss.png", "weights.png"]
    _check_png(tmp_path / "figures" / "loss.png", 600, 400)
    _check_png(tmp_path / "figures" / "accuracy.png", 600, 400)
    _check_png(tmp_path / "figures" / "weights.png", 200, 150)
    assert not list((tmp_path / "figures").glob(".*.tmp"))


def test_sweep_figures_from_a_folder_of_runs(sweep_root: Path, tmp_path: Path) -> None:
    written = main([str(sweep_root / "lightning_logs" / "logistic_l2"), "--out", str(tmp_path)])
    assert sorted(p.name for p in written) == ["val_accuracy.png", "weight_norm.png", "weights.png"]
    for path in written:
        _check_png(path, 300, 150)


def test_figures_name_the_model_mark_best_and_stop_and_keep_legends_off_the_curves(
    logistic_run: Path,
) -> None:
    run = load_run(run_dir(logistic_run))
    figure = _curves(run, "acc", "accuracy")
    (axes,) = figure.axes
    title = axes.get_title()
    assert "logistic regression, 2 vs 3 (configs/logistic.yaml), λ = 0" in title
    assert "version_" not in title
    labels = [line.get_label() for line in axes.get_lines()]
    assert labels[:3] == ["training", "validation", "test"]
    assert f"best epoch {run.results['best_epoch']}" in labels
    assert any(label.startswith("stop, epoch") for label in labels)
    legend = axes.get_legend()
    figure.canvas.draw()
    box = legend.get_window_extent()
    assert box.x0 >= axes.get_window_extent().x1  # outside the plotting area
    plt.close(figure)


def test_binary_weights_figure_has_no_empty_cell_and_a_symmetric_colour_scale(
    logistic_run: Path,
) -> None:
    run = load_run(run_dir(logistic_run))
    figure = weights_figure(run)
    panels = [ax for ax in figure.axes if ax.images]
    assert len(panels) == 3  # mean 2, mean 3, weights: every cell used
    low, high = panels[2].images[0].get_clim()
    assert low == -high == -float(np.abs(run.weight).max())
    assert any(ax.get_label() == "<colorbar>" for ax in figure.axes)
    plt.close(figure)


def test_sweep_curves_are_means_over_seeds_with_bands(sweep_root: Path) -> None:
    runs = [load_run(p) for p in expand([str(sweep_root / "lightning_logs" / "logistic_l2")])]
    figure = _compare(runs, "val/acc", "validation accuracy", "Validation accuracy")
    (axes, *_) = figure.axes
    assert [line.get_label() for line in axes.get_lines()] == [
        "model.l2_lambda=0, 2 seeds", "model.l2_lambda=0.01, 2 seeds",
    ]  # fmt: skip
    assert len(axes.collections) == 2  # one band per grid point
    _, mean = axes.get_lines()[0].get_data()
    seeds = [run.series("val/acc")[1] for run in runs[:2]]
    np.testing.assert_allclose(mean, np.mean(seeds, axis=0), rtol=1e-6)
    plt.close(figure)


def test_folder_without_a_run_is_refused_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(SystemExit) as stop:
        main([str(tmp_path / "empty"), "--out", str(tmp_path / "out")])
    assert stop.value.code == 2
    message = "holds no run: no events.out.tfevents.* file in it or its subfolders"
    assert capsys.readouterr().err.strip().splitlines() == [
        f"error: {tmp_path / 'empty'} {message}"
    ]
    assert not (tmp_path / "out").exists()


def test_run_without_a_needed_tag_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(str(tmp_path / "run"))
    writer.add_scalar("train/loss", 1.0, 0)
    writer.close()
    with pytest.raises(SystemExit) as stop:
        main([str(tmp_path / "run"), "--out", str(tmp_path / "out")])
    assert stop.value.code == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1
    assert error.startswith(f"error: {tmp_path / 'run'} has no scalar 'val/loss'")
