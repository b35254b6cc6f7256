"""What a run and a report print: what the user needs, and none of a library's noise."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO, run_dir, run_train, train_in_process

SMALL = (f"--config={REPO / 'configs' / 'logistic.yaml'}", "--data.train_size=2000")  # 10 steps
NOT_EMPTY = "exists and is not empty"  # Lightning's warning about a checkpoint folder


@pytest.fixture(scope="module")
def resumed(
    tmp_path_factory: pytest.TempPathFactory, mnist_root: Path
) -> tuple[Path, list[subprocess.CompletedProcess]]:
    """A run resumed twice in its folder, and what the two resumes printed.

    First from its last.ckpt of epoch 0 to epoch 1; then again from a copy of that
    checkpoint, after the first resume had logged past it, as a run killed after a
    checkpoint is.
    """
    root = tmp_path_factory.mktemp("resumed")
    train_in_process(
        *SMALL,
        "--trainer.max_epochs=1",
        f"--data.data_dir={mnist_root}",
        f"--trainer.default_root_dir={root}",
        "--trainer.enable_progress_bar=false",
    )
    checkpoints = run_dir(root) / "checkpoints"
    shutil.copy(checkpoints / "last.ckpt", checkpoints / "epoch0.ckpt")
    resume = (*SMALL, "--trainer.max_epochs=2")
    resumes = [
        run_train(*resume, f"--ckpt_path={checkpoints / name}", root=root, mnist=mnist_root)
        for name in ("last.ckpt", "epoch0.ckpt")
    ]
    for done in resumes:
        assert done.returncode == 0, done.stderr[-3000:]
    return run_dir(root), resumes


@pytest.mark.slow
def test_a_resume_in_its_own_folder_says_nothing_of_its_checkpoints(resumed) -> None:
    _, resumes = resumed
    for done in resumes:
        assert "Restored all states from the checkpoint" in done.stdout + done.stderr
        assert NOT_EMPTY not in done.stdout + done.stderr


@pytest.mark.slow
def test_the_report_of_a_resumed_run_prints_only_the_files_it_wrote(
    resumed, tmp_path: Path
) -> None:
    folder, _ = resumed
    assert len(list(folder.glob("events.out.tfevents.*"))) == 3
    command = [sys.executable, "-m", "mnist_linear.report", str(folder), "--out", str(tmp_path)]
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stderr == ""
    assert done.stdout.splitlines() == [
        str(tmp_path / name) for name in ("loss.png", "accuracy.png", "weights.png")
    ]


def test_the_progress_bar_counts_blocks(tmp_path: Path, mnist_root: Path, capfd) -> None:
    # The whole 2-vs-3 split: 100 steps an epoch in ten blocks of 10, so a bar of steps
    # would count to 100.
    train_in_process(f"--config={REPO / 'configs' / 'logistic.yaml'}", "--data.train_size=20000",
                     "--trainer.max_epochs=1", f"--data.data_dir={mnist_root}",
                     f"--trainer.default_root_dir={tmp_path}")  # fmt: skip
    printed = "".join(capfd.readouterr()).replace("\r", "\n").splitlines()
    bar = [line for line in printed if line.startswith("Epoch 0:")]  # the training bar
    assert any("10/10 [" in line for line in bar), bar  # ten blocks, not 100 steps
    assert not any("/100 [" in line for line in bar)
    assert all("block/s" in line or "s/block" in line for line in bar if "/10 [" in line)
    assert not any("it/s" in line or "s/it" in line for line in bar)
