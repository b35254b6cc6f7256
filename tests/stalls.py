"""A callback that stops a run at a point of its own: ``--trainer.callbacks+=stalls.Stall``."""

from __future__ import annotations

import time
from pathlib import Path

import lightning as L


class Stall(L.Callback):
    """At the start of epoch ``epoch`` (``last.ckpt`` then holds epoch ``epoch - 1``), touch
    ``marker`` and sleep, until the test kills or interrupts the process.

    Args:
        epoch: The epoch (from 0) whose start the run stalls at.
        marker: A file made when the run stalls, for the test to wait for.
    """

    def __init__(self, epoch: int, marker: str) -> None:
        self.epoch, self.marker = epoch, Path(marker)

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.current_epoch == self.epoch:
            self.marker.write_text("stalled\n")
            time.sleep(600)
