"""``python docs/make_figures.py``: the README's figures and table, from small runs."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest
from conftest import REPO
from PIL import Image

FIGURES = {
    *(f"{run}/{name}.png" for run in ("logistic", "softmax")
      for name in ("loss", "accuracy", "weights")),
    *(f"logistic_l2/{name}.png" for name in ("final", "val_accuracy", "weight_norm", "weights")),
}  # fmt: skip
QUICK = ("--seeds=2", "--jobs=2", "--trainer.max_epochs=1", "--data.train_size=2000")


def _make_figures(root: Path, out: Path, mnist: Path) -> str:
    command = [sys.executable, str(REPO / "docs" / "make_figures.py"), f"--data_dir={mnist}",
               f"--root_dir={root}", f"--out={out}", *QUICK]  # fmt: skip
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    assert done.stderr == ""
    return done.stdout


def _script() -> ModuleType:
    """docs/make_figures.py as a module, for its functions."""
    spec = importlib.util.spec_from_file_location("make_figures", REPO / "docs" / "make_figures.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_make_figures_prints_the_readme_table_and_draws_the_same_bytes_again(
    tmp_path: Path, mnist_root: Path
) -> None:
    first = _make_figures(tmp_path / "runs", tmp_path / "first", mnist_root)
    # Drawn again from the same runs, by the script's own function: the same bytes.
    runs = tmp_path / "runs"
    folders = {"logistic": runs / "logistic" / "lightning_logs" / "version_0",
               "softmax": runs / "softmax" / "lightning_logs" / "version_0",
               "logistic_l2": runs / "lightning_logs" / "logistic_l2"}  # fmt: skip
    for name, folder in folders.items():
        _script().draw(name, folder, tmp_path / "second")
    for out in ("first", "second"):
        assert {str(p.relative_to(tmp_path / out)) for p in (tmp_path / out).rglob("*")
                if p.is_file()} == FIGURES  # fmt: skip
    for name in FIGURES:
        one, two = (tmp_path / out / name for out in ("first", "second"))
        assert one.read_bytes() == two.read_bytes(), name
        assert "Software" not in Image.open(one).info  # no library version in the file
    table = first[first.index("| config |") :].splitlines()
    assert table[2].startswith("| `configs/logistic.yaml` (2 vs 3) | 42 | 1 | 0 | ")
    assert table[3].startswith("| `configs/logistic.yaml` (2 vs 3) | 0–1 | 1.0 ± 0.0 | ")
    assert table[4].startswith("| `configs/softmax.yaml` (10 digits) | 42 | 1 | 0 | ")
    assert table[5].startswith("| `configs/softmax.yaml` (10 digits) | 0–1 | 1.0 ± 0.0 | ")
    assert table[6] == ""


@pytest.mark.parametrize(
    "argument, message",
    [("--seeds=1", "argument --seeds: expected a whole number >= 2, got '1'"),
     ("--jobs=0", "argument --jobs: expected a whole number >= 1, got '0'")],
)  # fmt: skip
def test_bad_input_is_one_line_and_trains_nothing(
    argument: str, message: str, tmp_path: Path
) -> None:
    command = [sys.executable, str(REPO / "docs" / "make_figures.py"), argument,
               f"--root_dir={tmp_path / 'runs'}", f"--out={tmp_path / 'out'}"]  # fmt: skip
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert done.stderr.splitlines() == [f"error: {message}"]
    assert not (tmp_path / "runs").exists() and not (tmp_path / "out").exists()
