"""``python train.py --config configs/softmax.yaml``: fit, evaluate the restored weights, report.

A run writes, under ``<default_root_dir>/lightning_logs/version_N``: the TensorBoard
events, ``config.yaml`` (the resolved configuration), ``checkpoints/`` and
``results.json``. Bad input ends the program with one line on stderr and exit code 2.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning as L
from jsonargparse import ArgumentError
from lightning.fabric.plugins import CheckpointIO
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch.callbacks import ModelCheckpoint, ProgressBar
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_info, rank_zero_only

from mnist_linear.callbacks import (
    LearningRateAnnealing,
    ValidationLossEarlyStopping,
    WeightImageLogger,
)
from mnist_linear.data import MNISTSubsetDataModule, SplitTooSmallError
from mnist_linear.errors import USAGE_ERROR, fail
from mnist_linear.mnist_files import MNISTFilesError
from mnist_linear.model import LinearClassifier
from mnist_linear.run import (
    AtomicCheckpointIO,
    CheckpointError,
    RunRecord,
    RunResults,
    claim_run_folder,
    flat_settings,
    logger_version,
    read_checkpoint,
    refused_changes,
    run_folder_of,
    segments_of,
)


def launched_as_rank_zero() -> bool:
    """Whether this process is, or will be, global rank zero, before the Trainer knows it.

    Lightning's ``rank_zero_only.rank`` is read from ``RANK``, ``LOCAL_RANK`` or
    ``SLURM_PROCID`` on import; on nodes started by hand every node's ``LOCAL_RANK`` is
    0, and only ``NODE_RANK`` tells them apart.
    """
    node = os.environ.get("NODE_RANK") or os.environ.get("GROUP_RANK") or "0"
    return rank_zero_only.rank == 0 and ("RANK" in os.environ or int(node) == 0)


class UsageError(Exception):
    """Bad input from the command line or a config file: reported in one line, exit code 2."""


def one_line(message: str) -> str:
    """``message`` with its line breaks and indentation folded into single spaces."""
    return " ".join(message.split())


class MNISTLinearCLI(LightningCLI):
    """LightningCLI for :class:`LinearClassifier` on :class:`MNISTSubsetDataModule`.

    Each run gets a folder of its own (see :mod:`mnist_linear.run`), ``run_dir``, which
    holds its config.yaml, checkpoints, results.json and, with a logger, its logs.
    """

    run_dir: Path | None = None
    claimed = False  # run_dir is a new folder this process made
    checkpoint: dict[str, Any] | None = None
    config_text = ""

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.link_arguments("data.num_classes", "model.num_classes", apply_on="instantiate")
        # The assignment's rules, each a section of its own: --annealing.T, --early_stopping.*
        parser.add_lightning_class_args(LearningRateAnnealing, "annealing")
        parser.add_lightning_class_args(ValidationLossEarlyStopping, "early_stopping")
        parser.add_lightning_class_args(WeightImageLogger, "weight_images")
        parser.add_argument(
            "--ckpt_path",
            type=str | None,
            default=None,
            help="Checkpoint to resume training from, such as "
            "lightning_logs/version_0/checkpoints/last.ckpt. A checkpoint inside its own "
            "run folder resumes in that folder.",
        )

    def parse_arguments(self, parser: LightningArgumentParser, args: Any) -> None:
        try:
            super().parse_arguments(parser, args)
        except ArgumentError as error:  # jsonargparse's message names the option and the value
            raise UsageError(one_line(str(error))) from None
        ckpt_path = self.config.get("ckpt_path")
        if ckpt_path is not None:
            try:
                self.checkpoint = read_checkpoint(ckpt_path)
            except CheckpointError as error:
                raise UsageError(f"--ckpt_path: {error}") from None
            changes = refused_changes(self.checkpoint, self.settings())
            if changes:
                listed = ", ".join(f"{key} {old} -> {new}" for key, (old, new) in changes.items())
                raise UsageError(
                    f"--ckpt_path: a resume continues the checkpoint's run, which had other "
                    f"settings: {listed}; resume with the checkpoint's settings, or start a new "
                    "run without --ckpt_path"
                )

    def settings(self) -> dict[str, str]:
        """The run's resolved settings, flattened, without the config files and checkpoint."""
        config = {
            k: v for k, v in self.config.as_dict().items() if k not in ("config", "ckpt_path")
        }
        return flat_settings(config)

    def before_instantiate_classes(self) -> None:
        """Keep the config as given, then claim the run folder of a configured logger."""
        config = self.config.clone()
        config.ckpt_path = None  # a rerun with --config starts afresh
        sources = " ".join(str(path) for path in self.config.get("config") or [])
        header = f"# config: {sources}\n" if sources else ""  # for the report's titles
        self.config_text = header + self.parser.dump(config, skip_unset=False)
        loggers = self.config.trainer.logger
        first = loggers[0] if isinstance(loggers, list) and loggers else loggers
        class_path = getattr(first, "class_path", None) or ""
        if class_path.endswith(("TensorBoardLogger", "CSVLogger")) and launched_as_rank_zero():
            init = first.init_args
            name = init.get("name") or "lightning_logs"
            resumed_in = self._resumed_in()
            if (
                init.get("version") is None
                and resumed_in is not None
                and (resumed_in.parent == Path(init.save_dir, name).resolve())
            ):  # resumed inside this logger's own folder: continue there
                self.run_dir = resumed_in
            else:
                self.run_dir = claim_run_folder(init.save_dir, name, init.get("version"))
                self.claimed = init.get("version") is None
            init.version = logger_version(self.run_dir)

    def _resumed_in(self) -> Path | None:
        ckpt_path = self.config.get("ckpt_path")
        return None if ckpt_path is None else run_folder_of(ckpt_path)

    def discard_run_folder(self) -> None:
        """Remove the folder this process claimed for a run that was refused before training.

        Only a folder it created itself and that holds no checkpoint: never a resumed
        run's folder, never one named by ``--trainer.logger.version``.
        """
        run, claimed, self.claimed = self.run_dir, self.claimed, False
        if not claimed or run is None or not run.is_dir() or any(run.glob("checkpoints/*.ckpt")):
            return
        shutil.rmtree(run, ignore_errors=True)

    def instantiate_trainer(self, **kwargs: Any) -> L.Trainer:
        """The Trainer, with a run folder of its own under ``default_root_dir``.

        Without ``--trainer.logger`` it logs to TensorBoard; checkpoints are written
        atomically.
        """
        self._check_checkpoint_fits()
        trainer_config = self.config_init.get("trainer", {})
        callbacks = list(trainer_config.get("callbacks") or [])
        if trainer_config.get("enable_progress_bar") is False:
            # The configs tune the bar's refresh rate; turning the bar off removes it.
            callbacks = [c for c in callbacks if not isinstance(c, ProgressBar)]
        if trainer_config.get("enable_checkpointing") is False:
            callbacks = [c for c in callbacks if not isinstance(c, ModelCheckpoint)]
            rank_zero_info("Checkpointing is off: this run cannot be resumed.")
        kwargs.update(self._run_folder(trainer_config))
        ckpt_path = self.config.get("ckpt_path")
        segments = segments_of(self.checkpoint, self.settings(), ckpt_path)
        kwargs["callbacks"] = [
            *callbacks,
            RunRecord(self.run_dir, self.config_text, segments),
            RunResults(self.run_dir, hyperparameters(self.config)),
        ]
        plugins = trainer_config.get("plugins")
        plugins = [] if plugins is None else plugins if isinstance(plugins, list) else [plugins]
        if not any(isinstance(plugin, CheckpointIO) for plugin in plugins):
            kwargs["plugins"] = [*plugins, AtomicCheckpointIO()]
        try:
            return super().instantiate_trainer(**kwargs)
        except BaseException:
            self.discard_run_folder()  # a Trainer refused before anything was trained
            raise

    def _run_folder(self, trainer_config: dict[str, Any]) -> dict[str, Any]:
        """Trainer arguments that put a run without a configured logger in its own folder."""
        logger = trainer_config.get("logger")
        resumed_in = self._resumed_in()
        # Resumed: TensorBoard hides what the interrupted run logged after the checkpoint,
        # whose last evaluation and images were logged at its own step.
        purge = {} if resumed_in is None else {"purge_step": self.checkpoint["global_step"] + 1}
        if logger not in (None, True, False):  # its folder was claimed before instantiation
            resumed_here = self.run_dir is not None and resumed_in == self.run_dir.resolve()
            if isinstance(logger, TensorBoardLogger) and resumed_here:
                init_args = {**self.config.trainer.logger.init_args.as_dict(), **purge}
                return {"logger": TensorBoardLogger(**init_args)}
            return {}
        root = trainer_config.get("default_root_dir") or os.getcwd()
        if resumed_in is not None:
            self.run_dir = resumed_in
        elif launched_as_rank_zero():  # rank zero's folder reaches the others through Lightning
            self.run_dir, self.claimed = claim_run_folder(root), True
        if logger is False:
            return {} if self.run_dir is None else {"default_root_dir": str(self.run_dir)}
        run = self.run_dir or Path(root, "lightning_logs", "unclaimed")
        version = None if self.run_dir is None else logger_version(run)
        return {
            "logger": TensorBoardLogger(
                run.parents[1], run.parent.name, version, default_hp_metric=False, **purge
            )
        }

    def instantiate_classes(self) -> None:
        try:
            super().instantiate_classes()
        except (ValueError, MisconfigurationException) as error:  # a constructor's own check
            self.discard_run_folder()
            raise UsageError(one_line(str(error))) from None
        except UsageError:
            self.discard_run_folder()
            raise

    def _check_checkpoint_fits(self) -> None:
        """Refuse a checkpoint whose weights do not fit the model, before anything is written."""
        if self.checkpoint is None:
            return
        shapes = {k: tuple(v.shape) for k, v in self.model.state_dict().items()}
        saved = {k: tuple(v.shape) for k, v in self.checkpoint["state_dict"].items()}
        if saved != shapes:
            raise UsageError(
                f"--ckpt_path: {self.config.ckpt_path} holds weights of shapes {saved}, "
                f"this model has {shapes}"
            )


CLI_KWARGS: dict[str, Any] = dict(
    run=False,
    seed_everything_default=42,
    auto_configure_optimizers=False,
    save_config_callback=None,  # fit_and_report writes config.yaml into the run folder
    parser_kwargs={"exit_on_error": False, "allow_abbrev": False},  # a typo is no abbreviation
)


class _ParseOnly(MNISTLinearCLI):
    def before_instantiate_classes(self) -> None:
        pass

    def instantiate_classes(self) -> None:
        pass


def _quiet_lightning() -> None:
    # The seed is part of the saved config.yaml; its "Seed set" line would precede any error.
    logging.getLogger("lightning.fabric.utilities.seed").setLevel(logging.WARNING)
    # Lightning prints an advertisement for a cloud logger on every run; this project is offline.
    logging.getLogger("lightning.pytorch.utilities.rank_zero").addFilter(
        lambda record: not str(record.msg).startswith("💡 Tip")
    )
    # Lightning 2.6 calls a torch pytree API that torch 2.14 deprecates, on every run.
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)")


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


def hyperparameters(config: Any) -> dict[str, bool | float | int | str]:
    """The run's scalar settings, flattened (``model.l2_lambda``), for TensorBoard's HPARAMS."""
    flat: dict[str, bool | float | int | str] = {}

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, dict):
            for key, item in value.items():
                walk(f"{prefix}{key}.", item)
        elif isinstance(value, bool | int | float | str):  # PositiveFloat and such: plain types
            flat[prefix[:-1]] = next(
                t(value) for t in (bool, int, float, str) if isinstance(value, t)
            )
        elif value is None or (
            isinstance(value, list) and all(isinstance(v, int | float) for v in value)
        ):
            flat[prefix[:-1]] = str(value)

    walk("", {k: v for k, v in config.as_dict().items() if k not in ("config", "ckpt_path")})
    return flat


def fit_and_report(cli: MNISTLinearCLI) -> dict[str, Any] | None:
    """Fit (resuming from ``--ckpt_path``); config.yaml comes at the start, results.json at the end.

    Returns the results, or ``None`` in a process that did not train (the main process
    of ``ddp_spawn``, whose workers write results.json).
    """
    trainer, model, datamodule = cli.trainer, cli.model, cli.datamodule
    datamodule.check_fits(trainer.world_size)  # before any process is started
    trainer.fit(model, datamodule=datamodule, ckpt_path=cli.config.get("ckpt_path"))
    results = next(c for c in trainer.callbacks if isinstance(c, RunResults)).results
    if results is None and cli.run_dir is not None and (cli.run_dir / "results.json").is_file():
        results = json.loads((cli.run_dir / "results.json").read_text())
    return results


def main(args: Sequence[str] | None = None) -> None:
    """Entry point of ``train.py``."""
    _quiet_lightning()
    try:
        cli = MNISTLinearCLI(LinearClassifier, MNISTSubsetDataModule, args=args, **CLI_KWARGS)
    except UsageError as error:
        fail(str(error), USAGE_ERROR)
    try:
        fit_and_report(cli)
    except SplitTooSmallError as error:
        cli.discard_run_folder()
        fail(f"--data.{error}", USAGE_ERROR)
    except MNISTFilesError as error:
        cli.discard_run_folder()
        fail(str(error), 1)
    except MisconfigurationException as error:  # a Trainer flag that cannot apply here
        cli.discard_run_folder()
        fail(one_line(str(error)), USAGE_ERROR)


if __name__ == "__main__":
    main()
