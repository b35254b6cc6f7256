"""``python -m mnist_linear.report``: every figure from real runs, and one-line refusals."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pytest
from conftest import REPO, run_dir, train_in_process
from PIL import Image

from mnist_linear.figures import curves, weights_figure
from mnist_linear.report import figure_sets, load_run, main
from mnist_linear.sweep_figures import compare, final_figure, sweep_weights_figure

SMALL_SOFTMAX = (f"--config={REPO / 'configs' / 'softmax.yaml'}", "--data.train_size=2000",
                 "--trainer.max_epochs=1")  # fmt: skip
RUN_FIGURES = ["accuracy.png", "loss.png", "weights.png"]
SWEEP_FIGURES = ["final.png", "val_accuracy.png", "weight_norm.png", "weights.png"]


def _check_png(path: Path, min_width: int, min_height: int) -> None:
    assert path.is_file() and path.stat().st_size > 5000
    image = Image.open(path)
    assert image.format == "PNG"
    assert image.width >= min_width and image.height >= min_height
    pixels = np.asarray(image.convert("L"), dtype=np.float64)
    assert pixels.std() > 10, f"{path.name} looks blank"


def test_single_run_figures(logistic_run: Path, tmp_path: Path) -> None:
    written = main([str(run_dir(logistic_run)), "--out", str(tmp_path / "figures")])
    assert sorted(p.name for p in written) == RUN_FIGURES
    _check_png(tmp_path / "figures" / "loss.png", 600, 400)
    _check_png(tmp_path / "figures" / "accuracy.png", 600, 400)
    _check_png(tmp_path / "figures" / "weights.png", 200, 150)
    assert not list((tmp_path / "figures").glob(".*.tmp"))


@pytest.mark.slow
def test_sweep_figures_from_a_folder_of_runs(sweep_root: Path, tmp_path: Path) -> None:
    written = main([str(sweep_root / "lightning_logs" / "logistic_l2"), "--out", str(tmp_path)])
    assert sorted(p.name for p in written) == SWEEP_FIGURES
    for path in written:
        _check_png(path, 300, 150)


def test_figures_name_the_model_mark_best_and_stop_and_keep_legends_off_the_curves(
    logistic_run: Path,
) -> None:
    run = load_run(run_dir(logistic_run))
    figure = curves(run, "acc", "accuracy")
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


@pytest.mark.slow
def test_sweep_curves_are_means_over_seeds_with_bands(sweep_root: Path) -> None:
    (sweep,) = figure_sets([str(sweep_root / "lightning_logs" / "logistic_l2")])
    runs = [load_run(p) for p in sweep.runs]
    figure = compare(runs, "val/acc", "validation accuracy", "Validation accuracy")
    (axes, *_) = figure.axes
    assert [line.get_label() for line in axes.get_lines()] == [
        "0, 2 seeds", "0.01, 2 seeds",
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


# --- The padding of the logged tiles, and the step of the restored evaluation ------------


@pytest.fixture(scope="module")
def stepped_run(tmp_path_factory: pytest.TempPathFactory, mnist_root: Path) -> Path:
    """configs/logistic.yaml stopped by max_steps in the middle of epoch 10, tiles 5 apart."""
    root = tmp_path_factory.mktemp("stepped")
    train_in_process(f"--config={REPO / 'configs' / 'logistic.yaml'}", "--trainer.max_steps=1050",
                     "--weight_images.padding=5", f"--data.data_dir={mnist_root}",
                     f"--trainer.default_root_dir={root}",
                     "--trainer.enable_progress_bar=false")  # fmt: skip
    return run_dir(root)


def _raw_class_means(mnist_root: Path, digits: tuple[int, ...], count: int) -> list[np.ndarray]:
    """Each digit's mean over the first ``count`` training images, read from the raw bytes,
    scaled to 0..255 as a logged tile is (its own minimum to its own maximum)."""
    raw = mnist_root / "MNIST" / "raw"
    pixels = np.frombuffer((raw / "train-images-idx3-ubyte").read_bytes()[16:], np.uint8)
    labels = np.frombuffer((raw / "train-labels-idx1-ubyte").read_bytes()[8:], np.uint8)
    images = pixels.reshape(-1, 28, 28)[:count] / 255.0
    means = [images[labels[:count] == digit].mean(axis=0) for digit in digits]
    return [255 * (m - m.min()) / (m.max() - m.min()) for m in means]


@pytest.mark.slow
def test_mean_images_are_cropped_with_the_runs_own_padding(
    stepped_run: Path, mnist_root: Path
) -> None:
    run = load_run(stepped_run)
    figure = weights_figure(run)
    panels = [ax for ax in figure.axes if ax.images]
    expected = _raw_class_means(mnist_root, (2, 3), 20000)  # label 1 (the 2s) first
    for panel, mean in zip(panels[:2], expected, strict=True):
        shown = np.asarray(panel.images[0].get_array(), dtype=np.float64)
        assert shown.shape == (28, 28)
        assert np.abs(shown - mean).max() <= 1.0  # the PNG's 8 bits
    plt.close(figure)


@pytest.mark.slow
def test_the_best_epoch_line_is_at_the_step_of_the_restored_evaluation(stepped_run: Path) -> None:
    results = json.loads((stepped_run / "results.json").read_text())
    (best,) = (stepped_run / "checkpoints").glob("best-*.ckpt")
    assert best.name == "best-epoch=9-step=1000.ckpt"  # epochs of 100 steps, the 11th of 50
    assert (results["best_epoch"], results["best_step"], results["global_step"]) == (9, 1000, 1050)
    figure = curves(load_run(stepped_run), "loss", "cross-entropy")
    (line,) = [ln for ln in figure.axes[0].get_lines() if ln.get_label() == "best epoch 9"]
    assert list(line.get_xdata()) == [1000, 1000]
    plt.close(figure)


# --- Folders of several runs and sweeps --------------------------------------------------


@pytest.fixture(scope="module")
def softmax_run(tmp_path_factory: pytest.TempPathFactory, mnist_root: Path) -> Path:
    """A one-epoch softmax run on 2,000 training images: its run folder."""
    root = tmp_path_factory.mktemp("softmax")
    train_in_process(
        *SMALL_SOFTMAX,
        f"--data.data_dir={mnist_root}",
        f"--trainer.default_root_dir={root}",
        "--trainer.enable_progress_bar=false",
    )
    return run_dir(root)


def _written(out: Path) -> set[str]:
    return {str(p.relative_to(out)) for p in out.rglob("*.png")}


@pytest.mark.slow
def test_a_folder_of_runs_and_sweeps_gets_a_figure_set_for_each(
    logistic_run: Path, softmax_run: Path, sweep_root: Path, tmp_path: Path, capfd
) -> None:
    logs = tmp_path / "lightning_logs"  # a logistic and a softmax run of train.py, and a sweep
    shutil.copytree(run_dir(logistic_run), logs / "version_0")
    shutil.copytree(softmax_run, logs / "version_1")
    shutil.copytree(sweep_root / "lightning_logs" / "logistic_l2", logs / "logistic_l2")
    main([str(logs), "--out", str(tmp_path / "figures")])
    assert _written(tmp_path / "figures") == {
        *(f"version_0/{name}" for name in RUN_FIGURES),
        *(f"version_1/{name}" for name in RUN_FIGURES),
        *(f"logistic_l2/{name}" for name in SWEEP_FIGURES),
    }
    out, err = capfd.readouterr()
    assert err == "" and len(out.splitlines()) == 10


@pytest.mark.slow
def test_a_sweep_of_binary_and_softmax_points_draws_both(
    logistic_run: Path, softmax_run: Path, tmp_path: Path
) -> None:
    sweep = tmp_path / "classes"  # as --grid data.classes=[2,3],null names its runs
    shutil.copytree(run_dir(logistic_run), sweep / "data.classes=[2,3],seed=0")
    shutil.copytree(softmax_run, sweep / "data.classes=null,seed=0")
    main([str(sweep), "--out", str(tmp_path / "figures")])
    assert _written(tmp_path / "figures") == set(SWEEP_FIGURES)
    figure = sweep_weights_figure([load_run(p) for p in sorted(sweep.iterdir())])
    shown = [ax for ax in figure.axes if ax.images]
    assert len(shown) == 1 + 10  # the binary point's one weight image, the softmax point's ten
    plt.close(figure)


def test_two_figure_sets_of_one_name_are_refused_in_one_line(
    logistic_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    for copy in ("a", "b"):
        shutil.copytree(run_dir(logistic_run), tmp_path / copy / "version_0")
    with pytest.raises(SystemExit) as stop:
        main([str(tmp_path / "a"), str(tmp_path / "b"), "--out", str(tmp_path / "out")])
    assert stop.value.code == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("error: two figure sets would be named version_0")
    assert not (tmp_path / "out").exists()


# --- A sweep's comparison ---------------------------------------------------------------


@pytest.mark.slow
def test_sweep_final_figure_is_each_seed_and_mean_and_std_from_results_json(
    sweep_root: Path,
) -> None:
    folder = sweep_root / "lightning_logs" / "logistic_l2"
    runs = [load_run(p) for p in sorted(folder.glob("model.l2_lambda=*"))]
    figure = final_figure(runs)
    for ax, key, scale in zip(figure.axes, ("val/acc", "test/acc", "weight_norm"), (100, 100, 1),
                              strict=True):  # fmt: skip
        for k, point in enumerate(("model.l2_lambda=0,", "model.l2_lambda=0.01,")):
            values = [scale * json.loads((p / "results.json").read_text())[key]
                      for p in sorted(folder.glob(f"{point}seed=*"))]  # fmt: skip
            assert len(values) == 2
            container = ax.containers[k]
            (mean,) = container.lines[0].get_ydata()
            np.testing.assert_allclose(mean, np.mean(values), rtol=1e-9)
            ((_, low), (_, high)) = container.lines[2][0].get_segments()[0]
            np.testing.assert_allclose(high - low, 2 * np.std(values, ddof=1), rtol=1e-9)
    assert [t.get_text() for t in figure.axes[0].get_xticklabels()] == ["0", "0.01"]
    plt.close(figure)


@pytest.mark.slow
def test_sweep_curves_end_where_the_first_seed_stopped(
    logistic_run: Path, stepped_run: Path, tmp_path: Path
) -> None:
    for seed, folder in enumerate((run_dir(logistic_run), stepped_run)):  # 300 and 1050 steps
        shutil.copytree(folder, tmp_path / f"model.l2_lambda=0,seed={seed}")
    runs = [load_run(p) for p in sorted(tmp_path.iterdir())]
    figure = compare(runs, "val/acc", "validation accuracy", "Validation accuracy")
    steps, mean = figure.axes[0].get_lines()[0].get_data()
    assert steps[-1] == 300
    both = [dict(zip(*run.series("val/acc"), strict=True)) for run in runs]
    np.testing.assert_allclose(mean, [(both[0][s] + both[1][s]) / 2 for s in steps], rtol=1e-6)
    plt.close(figure)
