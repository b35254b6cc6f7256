"""Precision settings: the logged evaluations and results.json share one arithmetic."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from conftest import SMALL, events, read_results, run_dir, train_here, two_vs_three

STAGE_METRICS = [
    f"{stage}/{name}" for stage in ("train", "val", "test") for name in ("loss", "acc")
]


def train(root: Path, mnist: Path, *args: str) -> dict:
    """``train.py SMALL`` for two epochs with ``ARGS``, in this process; its results.json."""
    assert train_here(*SMALL, "--trainer.max_epochs=2", *args, root=root, mnist=mnist) == 0
    return read_results(root)


@pytest.mark.parametrize(
    ("precision", "accelerator"),
    [
        ("bf16-mixed", "cpu"),
        ("64-true", "cpu"),
        pytest.param("bf16-true", "cpu", marks=pytest.mark.slow),
        pytest.param("bf16-mixed", "gpu", marks=pytest.mark.gpu),
        pytest.param("16-mixed", "gpu", marks=pytest.mark.gpu),
    ],
)
def test_logged_evaluation_at_the_restored_step_is_results_json(
    precision: str,
    accelerator: str,
    tmp_path: Path,
    mnist_root: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    results = train(
        tmp_path, mnist_root, f"--trainer.precision={precision}",
        f"--trainer.accelerator={accelerator}", "--trainer.devices=1",
    )  # fmt: skip
    folder = run_dir(tmp_path)
    (best,) = (folder / "checkpoints").glob("best-epoch=*-step=*.ckpt")
    step = int(best.stem.rsplit("step=", 1)[1])
    logged_run = events(folder)
    for tag in STAGE_METRICS:
        (logged,) = [e.value for e in logged_run.Scalars(tag) if e.step == step]
        # An event file holds float32 scalars: results.json's value rounded to float32
        # is what was logged, if both were computed alike (float64 ones under 64-true).
        assert np.float32(results[tag]) == np.float32(logged), tag
    if precision == "bf16-true":  # evaluated in float32, not bf16: a whole number of images
        data = two_vs_three(mnist_root, train_size=2000)
        right = results["val/acc"] * len(data.val_set)
        assert right == pytest.approx(round(right), abs=1e-3), right


def test_bf16_mixed_trains_exactly_what_32_true_trains(
    tmp_path: Path, mnist_root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Every operation of this model runs in the Function or in an evaluation, both of
    # them float32 with autocast off: autocast is left nothing to change.
    mixed = train(tmp_path / "mixed", mnist_root, "--trainer.precision=bf16-mixed")
    plain = train(tmp_path / "plain", mnist_root)
    del mixed["seconds"], plain["seconds"]
    assert mixed == plain
