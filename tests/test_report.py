"""``python -m mnist_linear.report``: every figure from real runs, and one-line refusals."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from conftest import run_dir
from PIL import Image

from mnist_linear.report import main


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
