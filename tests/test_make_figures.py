"""``python docs/make_figures.py``: the README's figures and table, from small runs."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest
from conftest import REPO, train_in_process
from PIL import Image

from mnist_linear import sweep, workers

FIGURES = {
    *(f"{run}/{name}.png" for run in ("logistic", "softmax")
      for name in ("loss", "accuracy", "weights")),
    *(f"logistic_l2/{name}.png" for name in ("final", "val_accuracy", "weight_norm", "weights")),
}  # fmt: skip
QUICK = ("--seeds=2", "--jobs=2", "--trainer.max_epochs=1", "--data.train_size=2000")


def _script() -> ModuleType:
    """docs/make_figures.py as a module, for its functions."""
    spec = importlib.util.spec_from_file_location("make_figures", REPO / "docs" / "make_figures.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _in_this_process(name: str, command: list[str], log: Path) -> None:
    """make_figures' step, with the command it builds run in this process."""
    assert command[0] == sys.executable
    if command[1] == "train.py":
        train_in_process(*command[2:])
    else:
        assert command[1:3] == ["-m", "mnist_linear.sweep"], command
        with workers.fresh_state():
            sweep.main(command[3:])


@pytest.mark.slow
def test_make_figures_prints_the_readme_table_and_draws_the_same_bytes_again(
    tmp_path: Path, mnist_root: Path, monkeypatch, capsys
) -> None:
    script = _script()
    monkeypatch.setattr(script, "step", _in_this_process)
    monkeypatch.chdir(REPO)  # where the script runs its commands
    script.main([f"--data_dir={mnist_root}", f"--root_dir={tmp_path / 'runs'}",
                 f"--out={tmp_path / 'first'}", *QUICK])  # fmt: skip
    first = capsys.readouterr().out
    # Drawn again from the same runs by the script's own function, in a process of its
    # own: the same bytes.
    runs = tmp_path / "runs"
    folders = {"logistic": runs / "logistic" / "lightning_logs" / "version_0",
               "softmax": runs / "softmax" / "lightning_logs" / "version_0",
               "logistic_l2": runs / "lightning_logs" / "logistic_l2"}  # fmt: skip
    draws = "; ".join(f"draw({name!r}, Path({str(folder)!r}), Path({str(tmp_path / 'second')!r}))"
                      for name, folder in folders.items())  # fmt: skip
    code = f"from pathlib import Path; from make_figures import draw; {draws}"
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO / "docs", capture_output=True,
                          text=True, timeout=300)  # fmt: skip
    assert done.returncode == 0 and done.stderr == "", done.stderr[-3000:]
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
