"""The assignment's training rules as Lightning callbacks."""

from __future__ import annotations

import itertools
import math
import os
from typing import Any, Literal, get_args

import lightning as L
import torch
from lightning.pytorch.callbacks import Timer, TQDMProgressBar
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_info, rank_zero_only, rank_zero_warn
from torchvision.utils import make_grid
from tqdm.auto import tqdm

from mnist_linear.errors import (
    FinitePositiveFloat,
    NonNegativeInt,
    PositiveInt,
    check_int,
)
from mnist_linear.splits import IMAGE_SIDE

TILE_PADDING = 2
Monitor = Literal["val/loss", "train/loss"]  # the losses LinearClassifier logs


class LearningRateAnnealing(L.Callback):
    """Set the learning rate before optimiser step t (from 0) to lr0 / (1 + t / T).

    lr0 is each parameter group's configured rate, kept as ``initial_lr`` in the group
    as PyTorch's schedulers do, so it travels in the optimiser's checkpoint. t is
    ``trainer.global_step``, so the rate is right after a resume without any state of
    its own. The rate of the last step is logged as ``lr`` at every evaluation.

    Args:
        T: Steps after which the rate has halved, finite and > 0; ``None`` keeps the rate
            constant.
    """

    def __init__(self, T: FinitePositiveFloat | None = 1000) -> None:
        # T = inf would also mean a constant rate; None is the one way to say it.
        finite = isinstance(T, int | float) and not isinstance(T, bool) and math.isfinite(T)
        if T is not None and not (finite and T > 0):
            raise ValueError(
                f"T must be a finite number > 0, or null for a constant rate, got {T!r}"
            )
        self.T = T

    def rate(self, lr0: float, step: int) -> float:
        """lr0 / (1 + step / T), or lr0 when T is None."""
        return lr0 if self.T is None else lr0 / (1.0 + step / self.T)

    def on_before_optimizer_step(
        self, trainer: L.Trainer, pl_module: L.LightningModule, optimizer: torch.optim.Optimizer
    ) -> None:
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
    """Stop on the epoch values of the validation loss; restore the weights of the best epoch.

    An epoch's value is its last evaluation, and the weights copied with it are the
    weights of that evaluation, so that the restored weights are exactly the ones whose
    loss was recorded. Two rules stop training:

    - ``"rises"`` (the assignment's): the last ``patience + 1`` epoch values increase
      strictly, that is ``patience`` rises in a row (an equal value is not a rise);
    - ``"no_improvement"`` (Lightning's ``EarlyStopping``): ``patience`` epochs in a
      row without a value below the best so far.

    A value that is not finite stops training at once, under either rule. When
    training ends, however it ends, the copy of the best epoch's weights is loaded back;
    with no finite value at all the weights are left as they are. With
    ``save_best``, the best weights are also written as
    ``best-epoch=E-step=S.ckpt`` next to the run's other checkpoints (S is the step of
    the evaluation). The history and the copy are part of every checkpoint, so that a
    resumed run decides as the uninterrupted one. Every process takes the same decision.

    Args:
        patience: Rises in a row (``"rises"``) or epochs without improvement
            (``"no_improvement"``) that stop training, at least 1.
        monitor: The loss to watch, as the model logs it: ``"val/loss"`` (the
            assignment's) or ``"train/loss"``. Only losses, since both rules take a
            lower value as better.
        rule: ``"rises"`` or ``"no_improvement"``, as above.
        save_best: Write the best weights as a checkpoint, in the folder of the
            Trainer's ``ModelCheckpoint``; nothing is written without one.
    """

    def __init__(
        self,
        patience: PositiveInt = 3,
        monitor: Monitor = "val/loss",
        rule: Literal["rises", "no_improvement"] = "rises",
        save_best: bool = True,
    ) -> None:
        self.patience = check_int("patience", patience, 1)
        if monitor not in get_args(Monitor):
            raise ValueError(f"monitor must be one of {list(get_args(Monitor))}, got {monitor!r}")
        if rule not in ("rises", "no_improvement"):
            raise ValueError(f"rule must be 'rises' or 'no_improvement', got {rule!r}")
        self.monitor, self.rule, self.save_best = monitor, rule, save_best
        self.history: list[float] = []
        self.last_epoch: int | None = None
        self.trained_epoch: int | None = None
        self.best_epoch: int | None = None
        self.best_step: int | None = None
        self.best_loss: float | None = None
        self.best_state: dict[str, torch.Tensor] | None = None
        self.best_name: str | None = None
        self.stopped_epoch: int | None = None
        self.stop_reason = ""
        self._latest: dict[str, Any] | None = None

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
        bar = getattr(trainer, "progress_bar_callback", None)
        if bar is not None and bar.is_enabled:
            message = "\n" + message  # not onto the end of the progress bar's line
        rank_zero_warn(message) if warn else rank_zero_info(message)

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # Resumed from the checkpoint of an epoch that ended in early stopping: stay stopped.
        if self.stopped_epoch is not None:
            trainer.should_stop = True
        self.ensure_best_file(trainer, pl_module)

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.trained_epoch = trainer.current_epoch

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or trainer.state.fn != "fit":
            return
        if self.stopped_epoch is not None:  # an evaluation after the stop changes nothing
            return
        value = self._current(trainer)
        if not math.isfinite(value):
            # The epoch's value is its last evaluation, this one: none of its earlier
            # finite values enters the history.
            self._latest = None
            self._stop(
                trainer,
                f"{self.monitor} is {value} at step {trainer.global_step}: "
                "the learning rate is too high",
                warn=True,
            )
            return
        self._latest = {
            "epoch": trainer.current_epoch,
            "step": trainer.global_step,
            "value": value,
            "state": {k: v.detach().clone() for k, v in pl_module.state_dict().items()},
        }

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        latest, self._latest = self._latest, None
        if latest is None or latest["epoch"] != trainer.current_epoch:
            return  # no evaluation in this epoch
        value = latest["value"]
        self.last_epoch = latest["epoch"]
        self.history.append(value)
        if self.best_loss is None or value < self.best_loss:
            self.best_epoch, self.best_step, self.best_loss = latest["epoch"], latest["step"], value
            self.best_state = latest["state"]
            self._save_best(trainer, pl_module)
        if self.rule == "rises":
            last = self.history[-(self.patience + 1) :]
            if len(last) == self.patience + 1 and _is_rise(last):
                rises = " < ".join(f"{v:.6g}" for v in last)
                reason = f"{self.monitor} rose {self.patience} epochs in a row ({rises})"
                self._stop(trainer, reason)
        elif self.last_epoch - self.best_epoch >= self.patience:
            self._stop(
                trainer,
                f"{self.monitor} did not improve on {self.best_loss:.6g} "
                f"for {self.patience} epochs",
            )

    def _best_file(self, trainer: L.Trainer) -> str | None:
        """Where this run keeps its best checkpoint: always in its own checkpoint folder."""
        folder = getattr(trainer.checkpoint_callback, "dirpath", None)
        if not self.save_best or folder is None or trainer.fast_dev_run or self.best_name is None:
            return None
        return os.path.join(folder, self.best_name)

    def _save_best(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Write the best weights as a checkpoint; the live weights are put back after.

        The previous best file is removed from this run's own folder only: the state
        keeps its name, never a path, so a checkpoint copied from another run cannot
        make this run delete that run's file.
        """
        previous = self._best_file(trainer)
        self.best_name = f"best-epoch={self.best_epoch}-step={self.best_step}.ckpt"
        path = self._best_file(trainer)
        if path is None:
            return
        live = {k: v.detach().clone() for k, v in pl_module.state_dict().items()}
        pl_module.load_state_dict(self.best_state)
        try:
            trainer.save_checkpoint(path, weights_only=False)
        finally:
            pl_module.load_state_dict(live)
        if previous is not None and previous != path:
            trainer.strategy.remove_checkpoint(previous)

    def ensure_best_file(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Write the best checkpoint if this run's folder lacks it (a resume in a new folder)."""
        path = self._best_file(trainer)
        exists = path is not None and os.path.isfile(path)
        # One decision for every process, since writing a checkpoint is collective.
        if path is not None and not trainer.strategy.reduce_boolean_decision(exists, all=True):
            self._save_best(trainer, pl_module)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.finish(trainer, pl_module)

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # A run resumed from the checkpoint of its last epoch trains nothing: Lightning
        # then calls neither on_train_start nor on_train_end, and the run's folder and
        # weights are settled here.
        self.ensure_best_file(trainer, pl_module)
        self.finish(trainer, pl_module)

    def finish(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Name the stop if early stopping did not stop training, and load the best weights back.

        The epoch of the stop is the last epoch trained (``None`` when none was), whether
        or not it was evaluated; the reason is the limit that ended training
        (:func:`limit_reached`). This callback is the one that restores the weights: when
        training ends, and again, harmlessly, when fitting ends.
        """
        if self.stopped_epoch is None:
            self.stopped_epoch = self.trained_epoch
            self.stop_reason = limit_reached(trainer)
        if self.best_state is not None:
            pl_module.load_state_dict(self.best_state)

    def state_dict(self) -> dict[str, Any]:
        return {
            "history": list(self.history),
            "last_epoch": self.last_epoch,
            "trained_epoch": self.trained_epoch,
            "best_epoch": self.best_epoch,
            "best_step": self.best_step,
            "best_loss": self.best_loss,
            "best_state": self.best_state,
            "best_name": self.best_name,
            "stopped_epoch": self.stopped_epoch,
            "stop_reason": self.stop_reason,
            "latest": self._latest,
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.history = list(state_dict["history"])
        self.last_epoch = state_dict["last_epoch"]
        self.trained_epoch = state_dict.get("trained_epoch", self.last_epoch)
        self.best_epoch = state_dict["best_epoch"]
        self.best_step = state_dict.get("best_step")
        self.best_loss = state_dict["best_loss"]
        self.best_state = state_dict["best_state"]
        # A name inside the run's own checkpoint folder; older checkpoints kept a full path.
        name = state_dict.get("best_name") or state_dict.get("best_path")
        self.best_name = None if name is None else os.path.basename(name)
        self.stopped_epoch = state_dict["stopped_epoch"]
        self.stop_reason = state_dict["stop_reason"]
        self._latest = state_dict["latest"]


def limit_reached(trainer: L.Trainer) -> str:
    """What ended a training that early stopping did not stop, as ``results.json`` says it.

    ``max_steps`` is an exact count and comes first; ``max_time`` is Lightning's ``Timer``
    callback with no time remaining; then ``max_epochs``. Anything else set
    ``trainer.should_stop`` (another callback), or the training had no batch to train.
    """
    if trainer.max_steps not in (None, -1) and trainer.global_step >= trainer.max_steps:
        return "max_steps reached"
    # Before max_epochs: an epoch the Timer ends early still counts as completed.
    for callback in trainer.callbacks:
        remaining = callback.time_remaining() if isinstance(callback, Timer) else None
        if remaining is not None and remaining <= 0:
            return "max_time reached"
    if trainer.max_epochs not in (None, -1) and trainer.current_epoch >= trainer.max_epochs:
        return "max_epochs reached"
    if trainer.should_stop:
        return "stopped by another callback (trainer.should_stop)"
    return "training ended before any limit (no training batches)"


def weight_tiles(weight: torch.Tensor) -> torch.Tensor:
    """The rows of W (K x 784) as K single-channel 28 x 28 images."""
    return weight.detach().float().cpu().reshape(-1, 1, IMAGE_SIDE, IMAGE_SIDE)


def mean_tiles(class_means: torch.Tensor, binary: bool) -> torch.Tensor:
    """Mean images as tiles; for two classes the positive class (label 1) comes first."""
    return weight_tiles(class_means.flip(0) if binary else class_means)


def tile_grid(tiles: torch.Tensor, nrow: int, padding: int = TILE_PADDING) -> torch.Tensor:
    """The tiles in rows of ``nrow``, each scaled to [0, 1] on its own, on a white background."""
    return make_grid(
        tiles, nrow=nrow, padding=padding, normalize=True, scale_each=True, pad_value=1.0
    )


class WeightImageLogger(L.Callback):
    """Log the weights of each class as 28 x 28 images to TensorBoard.

    ``weights``: a grid of the K weight images (bias left out, each tile scaled to
    [0, 1]) at the end of every epoch. ``restored_weights``: the same grid, once, for
    the weights that early stopping restores when training ends (a tag of its own, so
    that it hides no epoch's image). ``class_means``: the mean training image of each
    class, once per run. ``weights_vs_means``: the means above the restored weights,
    the assignment's picture. Rank zero only; nothing happens without a TensorBoard
    logger.

    Args:
        padding: Pixels between tiles.
    """

    def __init__(self, padding: NonNegativeInt = TILE_PADDING) -> None:
        self.padding = check_int("padding", padding, 0)

    @staticmethod
    def _writer(trainer: L.Trainer) -> Any:
        for logger in trainer.loggers:
            if isinstance(logger, TensorBoardLogger):
                return logger.experiment
        return None

    @staticmethod
    def _class_means(trainer: L.Trainer) -> torch.Tensor | None:
        return getattr(trainer.datamodule, "class_means", None)

    def _log(self, trainer: L.Trainer, tag: str, tiles: torch.Tensor, nrow: int) -> None:
        writer = self._writer(trainer)
        if writer is not None:
            grid = tile_grid(tiles, nrow, self.padding)
            writer.add_image(tag, grid, trainer.global_step)

    @rank_zero_only
    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        means = self._class_means(trainer)
        if means is not None:
            self._log(trainer, "class_means", mean_tiles(means, len(means) == 2), len(means))

    @rank_zero_only
    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        tiles = weight_tiles(pl_module.linear.weight)
        self._log(trainer, "weights", tiles, len(tiles))

    @rank_zero_only
    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        weight = pl_module.linear.weight
        for callback in trainer.callbacks:
            if isinstance(callback, ValidationLossEarlyStopping) and callback.best_state:
                weight = callback.best_state["linear.weight"]
        tiles = weight_tiles(weight)
        self._log(trainer, "restored_weights", tiles, len(tiles))
        means = self._class_means(trainer)
        if means is not None:
            both = torch.cat([mean_tiles(means, len(means) == 2), tiles])
            self._log(trainer, "weights_vs_means", both, len(means))


class TrainingProgressBar(TQDMProgressBar):
    """Lightning's TQDM bar over the training steps, with no bar of its own per evaluation.

    The ten evaluations of an epoch take milliseconds each; a bar for each one would
    print thirty lines an epoch and cost more than the evaluation. The latest
    validation loss and accuracy appear on the training bar instead (the model logs
    them with ``prog_bar=True``). ``trainer.validate`` keeps its bar. The training bar
    counts blocks (``block/s``): one block is the SGD steps of one evaluation interval.

    Args:
        refresh_rate: Training batches (blocks) between redraws of the bar; 0 hides it.
    """

    def __init__(self, refresh_rate: NonNegativeInt = 1) -> None:
        super().__init__(refresh_rate=check_int("refresh_rate", refresh_rate, 0))

    def init_train_tqdm(self) -> tqdm:
        bar = super().init_train_tqdm()
        bar.unit = "block"  # a training batch is a block of mini-batches (docs/design.md)
        return bar

    def init_validation_tqdm(self) -> tqdm:
        if self.trainer.state.fn == "fit":
            return tqdm(disable=True)
        return super().init_validation_tqdm()
