"""What a run and a report print: what the user needs, and none of a library's noise."""

from __future__ import annotations

import io
import logging
import shutil
from pathlib import Path

import pytest
from conftest import REPO, SMALL, run_dir, train_in_process

from mnist_linear import report

NOT_EMPTY = "exists and is not empty"  # Lightning's warning about a checkpoint folder


@pytest.mark.slow
def test_a_resume_in_its_own_folder_says_nothing_of_its_checkpoints_nor_does_its_report(
    tmp_path: Path, mnist_root: Path, capfd, recwarn, caplog
) -> None:
    # A run resumed twice in its folder: first from its last.ckpt of epoch 0 to epoch 1;
    # then again from a copy of that checkpoint, after the first resume had logged past
    # it, as a run killed after a checkpoint is.
    root = tmp_path / "runs"
    common = (*SMALL, f"--data.data_dir={mnist_root}", f"--trainer.default_root_dir={root}",
              "--trainer.enable_progress_bar=false")  # fmt: skip
    train_in_process(*common, "--trainer.max_epochs=1")
    checkpoints = run_dir(root) / "checkpoints"
    shutil.copy(checkpoints / "last.ckpt", checkpoints / "epoch0.ckpt")
    capfd.readouterr()
    lightning_log = logging.getLogger("lightning.pytorch")  # its handler predates capfd
    for name in ("last.ckpt", "epoch0.ckpt"):
        logged = io.StringIO()
        handler = logging.StreamHandler(logged)
        lightning_log.addHandler(handler)
        try:
            train_in_process(*common, "--trainer.max_epochs=2", f"--ckpt_path={checkpoints / name}")
        finally:
            lightning_log.removeHandler(handler)
        warned = [str(w.message) for w in recwarn]
        recwarn.clear()
        printed = "".join([*capfd.readouterr(), logged.getvalue(), *warned])
        assert "Restored all states from the checkpoint" in printed
        assert NOT_EMPTY not in printed
    folder = run_dir(root)
    assert len(list(folder.glob("events.out.tfevents.*"))) == 3
    caplog.clear()
    with caplog.at_level(logging.WARNING):  # what a process of its own would print
        drawn = report.main([str(folder), "--out", str(tmp_path / "out")])
    assert [r.getMessage() for r in caplog.records] == []
    assert drawn == [
        tmp_path / "out" / name for name in ("loss.png", "accuracy.png", "weights.png")
    ]
    out, err = capfd.readouterr()
    assert err == ""  # TensorBoard's reader says nothing of the purges
    assert out.splitlines() == [
        str(tmp_path / "out" / name) for name in ("loss.png", "accuracy.png", "weights.png")
    ]


def test_a_resume_in_its_own_folder_named_relative_to_the_working_folder_says_nothing(
    tmp_path: Path, mnist_root: Path, monkeypatch, recwarn
) -> None:
    monkeypatch.chdir(tmp_path)
    common = (*SMALL, f"--data.data_dir={mnist_root}", "--trainer.default_root_dir=runs",
              "--trainer.enable_progress_bar=false")  # fmt: skip
    train_in_process(*common, "--trainer.max_epochs=1")
    recwarn.clear()
    last = Path("runs/lightning_logs/version_0/checkpoints/last.ckpt")
    train_in_process(*common, "--trainer.max_epochs=2", f"--ckpt_path={last}")
    assert [str(w.message) for w in recwarn] == []


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
