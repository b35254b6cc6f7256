"""A callback that stops a run at a point of its own: ``--trainer.callbacks+=stalls.Stall``."""

from __future__ import annotations

import time
from pathlib import Path

import lightning as L


class Stall(L.Callback):
    """At the start of epoch ``epoch`` (``last.ckpt`` then holds epoch ``epoch - 1``), make
    ``stalled`` in the run's folder and sleep, until the test kills or interrupts the
    process. A run whose folder already holds ``stalled`` (a resume) goes on.

    Args:
        epoch: The epoch (from 0) whose start the run stalls at.
        only: The name of the one run folder that stalls (a sweep's run); None: any.
    """

    def __init__(self, epoch: int, only: str | None = None) -> None:
        self.epoch, self.only = epoch, only

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        marker = Path(trainer.log_dir) / "stalled"
        if self.only is not None and marker.parent.name != self.only:
            return
        if trainer.current_epoch == self.epoch and not marker.exists():
            marker.write_text("stalled\n")
            time.sleep(600)
