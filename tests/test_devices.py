"""Devices: the splits live on the Trainer's device, and the GPU path does what the CPU does.

The tests marked ``gpu`` need CUDA and are skipped, with the reason, without it. Their
tolerances are not measured yet (no GPU has run them): they are set from what float
rounding can change, one image of a split's accuracy and 1e-4 of a loss, the step at
which early stopping compares validation losses.
"""

from __future__ import annotations

from pathlib import Path

import lightning as L
import pytest
import torch
from conftest import REPO, read_results, run_dir, run_train, train_in_process, two_vs_three

from mnist_linear.data import MNISTSubsetDataModule
from mnist_linear.gradients import linear_cross_entropy
from mnist_linear.model import LinearClassifier

ACCELERATORS = ["cpu", pytest.param("gpu", marks=pytest.mark.gpu)]
SHORT = ("--data.train_size=2000", "--trainer.max_epochs=2")  # 9 steps an epoch
LOSS_TOLERANCE = 1e-4


class EvaluationBatches(L.Callback):
    """Each evaluation batch's loader, device and first pixel's address."""

    def __init__(self) -> None:
        self.seen: list[tuple[int, torch.device, int]] = []

    def on_validation_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch, batch_idx, dataloader_idx=0
    ) -> None:
        x, _ = batch
        self.seen.append((dataloader_idx, x.device, x.data_ptr()))


class AllocatedPerEvaluation(L.Callback):
    """Bytes the CUDA caching allocator handed out during each evaluation."""

    def __init__(self) -> None:
        self.allocated: list[int] = []

    @staticmethod
    def _total() -> int:
        torch.cuda.synchronize()
        return torch.cuda.memory_stats()["allocated_bytes.all.allocated"]

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._start = self._total()

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.allocated.append(self._total() - self._start)


def fit(
    accelerator: str, mnist_root: Path, tmp_path: Path, *callbacks: L.Callback, **data: int
) -> tuple[L.Trainer, MNISTSubsetDataModule]:
    """One epoch of 2s against 3s, two evaluations, on ``accelerator``: Trainer and data."""
    datamodule = MNISTSubsetDataModule(
        data_dir=str(mnist_root), classes=[2, 3], evaluations_per_epoch=2, **data
    )
    trainer = L.Trainer(
        accelerator=accelerator, devices=1, max_epochs=1, val_check_interval=1,
        num_sanity_val_steps=0, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path,
        callbacks=list(callbacks),
    )  # fmt: skip
    trainer.fit(LinearClassifier(num_classes=2, learning_rate=0.2), datamodule=datamodule)
    return trainer, datamodule


@pytest.mark.parametrize("accelerator", ACCELERATORS)
def test_evaluations_read_the_splits_where_they_lie_on_the_trainers_device(
    accelerator: str, mnist_root: Path, tmp_path: Path
) -> None:
    batches = EvaluationBatches()
    trainer, datamodule = fit(accelerator, mnist_root, tmp_path, batches, train_size=2000)
    device = trainer.strategy.root_device
    splits = [datamodule.train_set, datamodule.val_set, datamodule.test_set]
    assert all(t.device == device for split in splits for t in split.tensors)
    # Each split is one chunk: the batch Lightning hands over is the split itself, uncopied.
    assert len(batches.seen) == 2 * 3
    for loader, batch_device, address in batches.seen:
        assert batch_device == device
        assert address == splits[loader].tensors[0].data_ptr()
    x, y = next(iter(datamodule.train_dataloader()))  # a block, gathered on the device
    assert x.device == device and y.device == device


@pytest.mark.gpu
def test_an_evaluation_copies_no_split_to_the_gpu(mnist_root: Path, tmp_path: Path) -> None:
    allocated = AllocatedPerEvaluation()
    _, datamodule = fit("gpu", mnist_root, tmp_path, allocated)
    pixels = datamodule.train_set.tensors[0].nbytes  # about 4,000 images, 12.5 MB
    assert len(allocated.allocated) == 2
    # A copy of the splits would allocate more than the training pixels; the logits and
    # per-image losses of an evaluation are a few bytes per image.
    assert all(n < pixels / 10 for n in allocated.allocated), (allocated.allocated, pixels)


@pytest.mark.gpu
@pytest.mark.parametrize("classes", [1, 10])
def test_bf16_autocast_on_cuda_keeps_the_function_in_float32(classes: int) -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.rand(64, 784, generator=g).cuda().requires_grad_()
    y = torch.randint(0, max(classes, 2), (64,), generator=g).cuda()
    weight = (0.1 * torch.randn(classes, 784, generator=g)).cuda().requires_grad_()
    bias = torch.zeros(classes, device="cuda", requires_grad=True)

    def loss_and_gradients() -> list[torch.Tensor]:
        loss = linear_cross_entropy(x, y, weight, bias, 0.01)
        saved = loss.grad_fn.saved_tensors
        assert all(t.dtype == torch.float32 for t in saved), [t.dtype for t in saved]
        return [loss, *torch.autograd.grad(loss, (x, weight, bias))]

    expected = loss_and_gradients()
    with torch.autocast("cuda", dtype=torch.bfloat16):
        mixed = loss_and_gradients()
    for a, b in zip(mixed, expected, strict=True):
        assert a.dtype == torch.float32
        assert torch.equal(a, b)


def _assert_same_run(ours: dict, theirs: dict, sizes: dict[str, int]) -> None:
    for key in ("best_epoch", "stopped_epoch", "global_step"):
        assert ours[key] == theirs[key], key
    for stage, size in sizes.items():
        assert abs(ours[f"{stage}/acc"] - theirs[f"{stage}/acc"]) <= 1 / size + 1e-9, stage
        assert abs(ours[f"{stage}/loss"] - theirs[f"{stage}/loss"]) <= LOSS_TOLERANCE, stage


def _split_sizes(mnist_root: Path, **data: int) -> dict[str, int]:
    datamodule = two_vs_three(mnist_root, **data)
    return {stage: len(split) for stage, split in datamodule.splits().items()}


@pytest.mark.gpu
def test_the_shipped_logistic_config_on_cuda_stops_where_the_cpu_run_stops(
    mnist_root: Path, tmp_path: Path
) -> None:
    results = {}
    for accelerator in ("cpu", "gpu"):
        root = tmp_path / accelerator
        done = run_train(
            "--config=configs/logistic.yaml", f"--trainer.accelerator={accelerator}",
            "--trainer.devices=1", root=root, mnist=mnist_root,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr[-3000:]
        results[accelerator] = read_results(root)
    _assert_same_run(results["gpu"], results["cpu"], _split_sizes(mnist_root))


@pytest.mark.gpu
def test_ddp_on_one_gpu_trains_what_one_gpu_trains(mnist_root: Path, tmp_path: Path) -> None:
    results = {}
    for name, strategy in (("plain", ()), ("ddp", ("--trainer.strategy=ddp",))):
        root = tmp_path / name
        done = run_train(
            "--config=configs/logistic.yaml", *SHORT, "--trainer.accelerator=gpu",
            "--trainer.devices=1", *strategy, root=root, mnist=mnist_root,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr[-3000:]
        results[name] = read_results(root)
    _assert_same_run(results["ddp"], results["plain"], _split_sizes(mnist_root, train_size=2000))


@pytest.mark.gpu
def test_softmax_trains_on_cuda_with_the_configs_deterministic_algorithms(
    mnist_root: Path, tmp_path: Path
) -> None:
    done = run_train(
        "--config=configs/softmax.yaml", *SHORT, "--trainer.accelerator=gpu",
        "--trainer.devices=1", root=tmp_path, mnist=mnist_root,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert read_results(tmp_path)["val/acc"] > 0.5  # ten classes: chance is 0.1
    assert (run_dir(tmp_path) / "results.json").is_file()


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_gpu_accelerator_without_a_gpu_is_refused_in_one_line(
    mnist_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capfd
) -> None:
    with pytest.raises(SystemExit) as stop:
        train_in_process(
            f"--config={REPO / 'configs' / 'logistic.yaml'}", "--trainer.accelerator=gpu",
            f"--data.data_dir={mnist_root}", f"--trainer.default_root_dir={tmp_path}",
        )  # fmt: skip
    captured = capfd.readouterr()
    assert stop.value.code == 2
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and "gpu" in lines[0], captured.err
    assert "Traceback" not in captured.out + captured.err
    assert not (tmp_path / "lightning_logs").exists()  # no run folder left behind
