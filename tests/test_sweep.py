"""The λ comparison: one command, one TensorBoard run per λ, named by its λ."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import REPO


def _sweep(*args: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "mnist_linear.sweep", *args]
    return subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300)


def test_each_lambda_is_its_own_run_named_by_it(sweep_root: Path) -> None:
    runs = sweep_root / "lightning_logs" / "logistic_l2"
    assert sorted(p.name for p in runs.iterdir()) == ["lambda=0", "lambda=0.01"]
    for folder in runs.iterdir():
        config = yaml.safe_load((folder / "config.yaml").read_text())
        assert config["model"]["l2_lambda"] == float(folder.name.split("=")[1])
        assert list(folder.glob("events.out.tfevents.*"))
        assert (folder / "checkpoints" / "last.ckpt").is_file()
        assert json.loads((folder / "results.json").read_text())["val/acc"] > 0.9


def test_existing_run_folder_is_refused_in_one_line(tmp_path: Path) -> None:
    (tmp_path / "lightning_logs" / "logistic_l2" / "lambda=0.001").mkdir(parents=True)
    done = _sweep(f"--root_dir={tmp_path}")
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        f"error: --name: {tmp_path}/lightning_logs/logistic_l2/lambda=0.001 exists already; "
        "remove it or choose another --name"
    ]


@pytest.mark.parametrize("value", ["-1", "abc", "inf"])
def test_bad_lambda_is_refused_in_one_line(value: str) -> None:
    done = _sweep("--lambdas", value)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        f"error: argument --lambdas: expected a number >= 0, got '{value}'"
    ]


def test_missing_config_is_refused_before_any_training(tmp_path: Path) -> None:
    done = _sweep("--config=configs/nope.yaml", f"--root_dir={tmp_path}")
    assert done.returncode == 2
    assert done.stdout == ""
    assert done.stderr.strip().splitlines() == ["error: --config: no file at 'configs/nope.yaml'"]
    assert not (tmp_path / "lightning_logs").exists()
