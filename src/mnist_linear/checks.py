"""What train.py would refuse before it trains, found without training: for the sweep.

:func:`parse_only` parses train.py's arguments; :func:`check_only` also runs the
constructors (the model's, the data module's, the callbacks', the Trainer's);
:func:`check_fit` then does what train.py does before its first step that needs the
data: the data module's ``check_fits`` (the label files), and ``fit`` up to
``on_train_start``, where Lightning checks its loaders against the Trainer's flags.
Each refusal is train.py's own one line, as a :class:`~mnist_linear.cli.UsageError`.
A check trains nothing and writes nothing but the MNIST files a run would build: it
claims no run folder, its logger is Lightning's ``DummyLogger``, and its Trainer keeps
no checkpoint callback, model summary or progress bar. It prints nothing.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import warnings
from collections.abc import Iterator, Sequence
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Checkpoint, ModelSummary, ProgressBar
from lightning.pytorch.loggers.logger import DummyLogger

from mnist_linear.cli import (
    CLI_KWARGS,
    MNISTLinearCLI,
    _quiet_lightning,
    check_before_fit,
    refusal,
)
from mnist_linear.data import MNISTSubsetDataModule
from mnist_linear.model import LinearClassifier

# The loggers whose INFO lines (devices, the model's summary) a check keeps to itself.
ANNOUNCERS = ("lightning.pytorch", "lightning.fabric", "lightning.pytorch.utilities.rank_zero")


class _ParseOnly(MNISTLinearCLI):
    def before_instantiate_classes(self) -> None:
        pass

    def instantiate_classes(self) -> None:
        pass


class _TrainingReached(Exception):
    """Raised by :class:`_StopAtTrainingStart`: the check got as far as training."""


class _StopAtTrainingStart(L.Callback):
    """End a check's ``fit`` where the first epoch would start, before any other callback."""

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        raise _TrainingReached


class _CheckOnly(MNISTLinearCLI):
    """Parse and run the constructors, the Trainer's among them, claiming no run folder."""

    def before_instantiate_classes(self) -> None:
        self.check_resume()

    def _run_folder(self, trainer_config: dict[str, Any]) -> dict[str, Any]:
        # A real logger would name a folder; a run without one is checked without one.
        return {"logger": False if trainer_config.get("logger") is False else DummyLogger()}

    def instantiate_trainer(self, **kwargs: Any) -> L.Trainer:
        trainer = super().instantiate_trainer(**kwargs)
        # A checkpoint callback may save on an exception, and a check ends in one; the
        # summary and the bar would print.
        dropped = Checkpoint | ModelSummary | ProgressBar
        kept = [c for c in trainer.callbacks if not isinstance(c, dropped)]
        trainer.callbacks = [_StopAtTrainingStart(), *kept]
        return trainer


@contextlib.contextmanager
def _checking() -> Iterator[None]:
    """A check prints nothing and leaves the process as it found it.

    Lightning warns when ``sys.argv`` and ``args`` both hold arguments; the Trainer
    announces its devices and sets torch's deterministic mode for the whole process;
    what a run would warn about, its own log shows.
    """
    _quiet_lightning()
    argv, sys.argv = sys.argv, sys.argv[:1]
    announcers = [logging.getLogger(name) for name in ANNOUNCERS]
    levels = [announcer.level for announcer in announcers]
    deterministic = torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    try:
        for announcer in announcers:
            announcer.setLevel(logging.WARNING)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        sys.argv = argv
        for announcer, level in zip(announcers, levels, strict=True):
            announcer.setLevel(level)
        torch.use_deterministic_algorithms(deterministic, warn_only=warn_only)


def parse_only(args: Sequence[str]) -> Any:
    """The config train.py would run with ``args``, instantiating nothing.

    Raises :class:`UsageError`, with train.py's one-line message, where train.py would
    refuse the arguments while parsing them.
    """
    _quiet_lightning()
    argv, sys.argv = sys.argv, sys.argv[:1]  # Lightning warns when both hold arguments
    try:
        cli = _ParseOnly(LinearClassifier, MNISTSubsetDataModule, args=list(args), **CLI_KWARGS)
    finally:
        sys.argv = argv
    return cli.config


def check_only(args: Sequence[str]) -> MNISTLinearCLI:
    """Refuse ``args`` as train.py would before it reads any data; the CLI, for :func:`check_fit`.

    Parses the arguments and instantiates the model, the data module, the callbacks and
    the Trainer, so that a constructor's own check (``nesterov`` without momentum, a
    batch larger than ``train_size``) is caught too. Raises :class:`UsageError` with
    train.py's one-line message. Reads and writes no file but the config files.
    """
    with _checking():
        return _CheckOnly(LinearClassifier, MNISTSubsetDataModule, args=list(args), **CLI_KWARGS)


def check_fit(
    cli: MNISTLinearCLI, seen: dict[str, MNISTSubsetDataModule]
) -> tuple[str, int] | None:
    """What train.py refuses once it has the data, before its first step: its line and code.

    As :func:`~mnist_linear.cli.fit_and_report` does: :func:`~mnist_linear.cli.check_before_fit`
    (the data module's ``check_fits`` for the Trainer's processes, an evaluation interval
    within the epoch), then, unless the strategy starts processes of its own (DDP would),
    ``fit``, stopped at ``on_train_start``: the splits are read and Lightning checks its
    loaders against the Trainer's flags (``limit_val_batches`` under one batch). The
    answer is :func:`~mnist_linear.cli.refusal`'s, train.py's own; ``None``: accepted.

    ``seen``: the data modules earlier checks accepted, by their settings and number
    of processes; one with the same is used again, so its files are read once.
    """
    trainer = cli.trainer
    key = f"{sorted(cli.datamodule.hparams.items())} on {trainer.world_size} process(es)"
    datamodule = seen.get(key, cli.datamodule)
    with _checking():
        try:
            check_before_fit(trainer, datamodule)
            if trainer.strategy.launcher is None:
                ckpt_path = cli.config.get("ckpt_path")
                trainer.fit(cli.model, datamodule=datamodule, ckpt_path=ckpt_path)
        except _TrainingReached:
            pass
        except Exception as error:
            answer = refusal(error)
            if answer is None:
                raise
            return answer
    seen[key] = datamodule
    return None
