"""The assignment's training rules as Lightning callbacks."""

from __future__ import annotations

import itertools
import math
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import TQDMProgressBar
from lightning.pytorch.callbacks.progress.tqdm_progress import Tqdm
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_info, rank_zero_only, rank_zero_warn
from torchvision.utils import make_grid

from mnist_linear.errors import check_int


class LearningRateAnnealing(L.Callback):
    """Set the learning rate before optimiser step t (from 0) to lr0 / (1 + t / T).

    lr0 is each parameter group's configured rate, kept as ``initial_lr`` in the group
    as PyTorch's schedulers do, so it travels in the optimiser's checkpoint. t is
    ``trainer.global_step``, so the rate is right after a resume without any state of
    its own. The rate of the last step is logged as ``lr`` at every evaluation.

    Args:
        T: Steps after which the rate has halved; ``None`` keeps the rate constant.
    """

    def __init__(self, T: float | None = 1000) -> None:
        if T is not None and not T > 0:
            raise ValueError(f"T must be > 0 or null for a constant rate, got {T!r}")
        self.T = T

    def rate(self, lr0: float, step: int) -> float:
        """lr0 / (1 + step / T), or lr0 when T is None."""
        return lr0 if self.T is None else lr0 / (1.0 + step / self.T)

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        for optimizer in trainer.optimizers:
            for group in optimizer.param_groups:
                lr0 = group.setdefault("initial_lr", group["lr"])
                group["lr"] = self.rate(lr0, trainer.global_step)

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # Logged at the evaluation points, next to the metrics: self.log on every step
        # would cost more than the step itself.
        if trainer.optimizers:
            pl_module.log("lr", trainer.optimizers[0].param_groups[0]["lr"], sync_dist=True)


def _is_rise(values: list[float]) -> bool:
    return all(a < b for a, b in itertools.pairwise(values))


class ValidationLossEarlyStopping(L.Callback):
    """Stop once the epoch-end validation loss has risen ``patience`` epochs in a row.

    The value of an epoch is its last evaluation. Training stops when the last
    ``patience + 1`` values increase strictly (equal values are not a rise), and at
    once when a value is not finite. A copy of the weights from the epoch with the
    lowest value is kept and loaded back when training ends, however it ends; with no
    finite value at all the weights are left as they are. The history and the copy
    are part of the checkpoint, so that a resumed run decides as the uninterrupted one.
    Every process takes the same decision.

    Args:
        patience: Consecutive rises that stop training, at least 1.
        monitor: Logged metric to watch.
    """

    def __init__(self, patience: int = 3, monitor: str = "val/loss") -> None:
        self.patience = check_int("patience", patience, 1)
        self.monitor = monitor
        self.history: list[float] = []
        self.last_epoch: int | None = None
        self.best_epoch: int | None = None
        self.best_loss: float | None = None
        self.best_state: dict[str, torch.Tensor] | None = None
        self.stopped_epoch: int | None = None
        self.stop_reason = ""
        self._latest: tuple[int, float] | None = None

    def _current(self, trainer: L.Trainer) -> float:
        if self.monitor not in trainer.callback_metrics:
            raise RuntimeError(
                f"ValidationLossEarlyStopping: monitor={self.monitor!r} was not logged; "
                f"logged metrics: {sorted(trainer.callback_metrics)}"
            )
        return float(trainer.callback_metrics[self.monitor])

    def _stop(self, trainer: L.Trainer, reason: str, warn: bool = False) -> None:
        stop = trainer.strategy.reduce_boolean_decision(True, all=False)
        trainer.should_stop = trainer.should_stop or stop
        self.stopped_epoch = trainer.current_epoch
        self.stop_reason = reason
        restoring = (
            "no finite value to restore"
            if self.best_epoch is None
            else f"restoring epoch {self.best_epoch} ({self.monitor} {self.best_loss:.6g})"
        )
        message = f"Early stopping in epoch {self.stopped_epoch}: {reason}; {restoring}."
        rank_zero_warn(message) if warn else rank_zero_info(message)

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # Resumed from the checkpoint of an epoch that ended in early stopping: stay stopped.
        if self.stopped_epoch is not None:
            trainer.should_stop = True

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or trainer.state.fn != "fit":
            return
        value = self._current(trainer)
        if not math.isfinite(value):
            self._stop(
                trainer,
                f"{self.monitor} is {value} at step {trainer.global_step}: "
                "the learning rate is too high",
                warn=True,
            )
            return
        self._latest = (trainer.current_epoch, value)
        if trainer.is_last_batch:
            self._end_epoch(trainer, pl_module)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # Only when the epoch's last evaluation came before its last batch.
        if self._latest is not None and self._latest[0] == trainer.current_epoch:
            self._end_epoch(trainer, pl_module)

    def _end_epoch(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        epoch, value = self._latest
        self._latest = None
        self.last_epoch = epoch
        self.history.append(value)
        if self.best_loss is None or value < self.best_loss:
            self.best_epoch, self.best_loss = epoch, value
            self.best_state = {k: v.detach().clone() for k, v in pl_module.state_dict().items()}
        last = self.history[-(self.patience + 1) :]
        if len(last) == self.patience + 1 and _is_rise(last):
            rises = " < ".join(f"{v:.6g}" for v in last)
            self._stop(trainer, f"{self.monitor} rose {self.patience} epochs in a row ({rises})")

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.stopped_epoch is None:
            self.stopped_epoch = self.last_epoch
            self.stop_reason = "max_epochs or max_steps reached"
        if self.best_state is not None:
            pl_module.load_state_dict(self.best_state)

    def state_dict(self) -> dict[str, Any]:
        return {
            "history": list(self.history),
            "last_epoch": self.last_epoch,
            "best_epoch": self.best_epoch,
            "best_loss": self.best_loss,
            "best_state": self.best_state,
            "stopped_epoch": self.stopped_epoch,
            "stop_reason": self.stop_reason,
            "latest": self._latest,
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.history = list(state_dict["history"])
        self.last_epoch = state_dict["last_epoch"]
        self.best_epoch = state_dict["best_epoch"]
        self.best_loss = state_dict["best_loss"]
        self.best_state = state_dict["best_state"]
        self.stopped_epoch = state_dict["stopped_epoch"]
        self.stop_reason = state_dict["stop_reason"]
        self._latest = state_dict["latest"]


def weight_tiles(weight: torch.Tensor) -> torch.Tensor:
    """The rows of W (K x 784) as K single-channel 28 x 28 images, each scaled to [0, 1]."""
    tiles = weight.detach().float().reshape(-1, 1, 28, 28)
    low = tiles.amin(dim=(1, 2, 3), keepdim=True)
    high = tiles.amax(dim=(1, 2, 3), keepdim=True)
    return (tiles - low) / (high - low).clamp_min(1e-12)


def mean_tiles(class_means: torch.Tensor, binary: bool) -> torch.Tensor:
    """Mean images as tiles; for two classes the positive class (label 1) comes first."""
    means = class_means.flip(0) if binary else class_means
    return weight_tiles(means)


class WeightImageLogger(L.Callback):
    """Log the weights of each class as 28 x 28 images to TensorBoard.

    ``weights``: a grid of the K weight images (bias left out, each tile scaled to
    [0, 1]) at the end of every epoch, and once more at the end of training for the
    best weights that early stopping restores. ``class_means``: the mean training
    image of each class, once per run. ``weights_vs_means``: the means above the
    final weights, the assignment's picture. Rank zero only; nothing happens without
    a TensorBoard logger.

    Args:
        padding: Pixels between tiles.
    """

    def __init__(self, padding: int = 2) -> None:
        self.padding = check_int("padding", padding, 0)

    def _grid(self, tiles: torch.Tensor, nrow: int) -> torch.Tensor:
        return make_grid(tiles.cpu(), nrow=nrow, padding=self.padding, pad_value=1.0)

    @staticmethod
    def _writer(trainer: L.Trainer) -> Any:
        for logger in trainer.loggers:
            if isinstance(logger, TensorBoardLogger):
                return logger.experiment
        return None

    @staticmethod
    def _class_means(trainer: L.Trainer) -> torch.Tensor | None:
        return getattr(trainer.datamodule, "class_means", None)

    @rank_zero_only
    def _log_weights(self, trainer: L.Trainer, weight: torch.Tensor) -> None:
        writer = self._writer(trainer)
        if writer is not None:
            tiles = weight_tiles(weight)
            writer.add_image("weights", self._grid(tiles, len(tiles)), trainer.global_step)

    @rank_zero_only
    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        writer, means = self._writer(trainer), self._class_means(trainer)
        if writer is not None and means is not None:
            tiles = mean_tiles(means, len(means) == 2)
            writer.add_image("class_means", self._grid(tiles, len(tiles)), trainer.global_step)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._log_weights(trainer, pl_module.linear.weight)

    @rank_zero_only
    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        weight = pl_module.linear.weight
        for callback in trainer.callbacks:
            if (
                isinstance(callback, ValidationLossEarlyStopping)
                and callback.best_state is not None
            ):
                weight = callback.best_state["linear.weight"]
        self._log_weights(trainer, weight)
        writer, means = self._writer(trainer), self._class_means(trainer)
        if writer is not None and means is not None:
            tiles = torch.cat([mean_tiles(means, len(means) == 2), weight_tiles(weight)])
            grid = self._grid(tiles, len(means))
            writer.add_image("weights_vs_means", grid, trainer.global_step)


class TrainingProgressBar(TQDMProgressBar):
    """Lightning's TQDM bar over the training steps, with no bar of its own per evaluation.

    The ten evaluations of an epoch take milliseconds each; a bar for each one would
    print thirty lines an epoch and cost more than the evaluation. The latest
    validation loss and accuracy appear on the training bar instead (the model logs
    them with ``prog_bar=True``). ``trainer.validate`` keeps its bar.

    Args:
        refresh_rate: Steps between redraws of the bar; 0 hides it.
    """

    def __init__(self, refresh_rate: int = 50) -> None:
        super().__init__(refresh_rate=check_int("refresh_rate", refresh_rate, 0))

    def init_validation_tqdm(self) -> Tqdm:
        if self.trainer.state.fn == "fit":
            return Tqdm(disable=True)
        return super().init_validation_tqdm()
