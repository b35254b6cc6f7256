"""``python train.py --config configs/softmax.yaml``: fit, evaluate the restored weights, report.

A run writes, under ``<default_root_dir>/lightning_logs/version_N``: the TensorBoard
events, ``config.yaml`` (the resolved configuration), ``checkpoints/`` and
``results.json``. Bad input ends the program with one line on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning as L
import torch
import yaml
from jsonargparse import ArgumentError, Namespace
from lightning.fabric.plugins import CheckpointIO
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch.callbacks import ModelCheckpoint, ProgressBar
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from lightning.pytorch.utilities import rank_zero_info

from mnist_linear import folders, messages
from mnist_linear.callbacks import (
    LearningRateAnnealing,
    ValidationLossEarlyStopping,
    WeightImageLogger,
)
from mnist_linear.data import MNISTSubsetDataModule, SplitTooSmallError
from mnist_linear.errors import USAGE_ERROR, PositiveInt, Seed, check_folder, fail
from mnist_linear.files import NO_ROOM
from mnist_linear.folders import RunFolder, RunFolderError, launched_as_rank_zero, run_folder_of
from mnist_linear.mnist_files import DataFolderError, MNISTFilesError
from mnist_linear.model import LinearClassifier
from mnist_linear.resume import (
    CheckpointError,
    RunRecord,
    flat_settings,
    read_checkpoint,
    refused_changes,
    refused_shortening,
    segments_of,
)
from mnist_linear.run import AtomicCheckpointIO, RunResults
from mnist_linear.trainer_flags import (
    TrainerFlagError,
    check_evaluation_interval,
    check_trainer_flags,
)


class UsageError(Exception):
    """Bad input from the command line or a config file: reported in one line, exit code 2."""


def one_line(message: str) -> str:
    """``message`` with its line breaks and indentation folded into single spaces."""
    return " ".join(message.split())


# The parser's sections of class arguments: each is a mapping, never null or a number.
SECTIONS = ("trainer", "model", "data", "annealing", "early_stopping", "weight_images")


def _config_files(args: Any) -> list[str]:
    """The files given to ``--config`` in a command line (a list of strings), in order."""
    if not isinstance(args, list | tuple) or not all(isinstance(a, str) for a in args):
        return []  # a dict or Namespace of settings names no file
    finder = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    finder.add_argument("-c", "--config", action="append", default=[])
    known, _ = finder.parse_known_args(args)
    return [path for path in known.config if os.path.isfile(path)]


def _not_a_mapping(section: str, value: Any) -> str:
    """The refusal of a config section set to ``value``, which is not a mapping."""
    got = "null" if value is None else repr(value)
    return f"{section} must be a mapping of its options, or left out, got {got}"


def _section_not_a_mapping(path: str) -> str | None:
    """The refusal of the config file's first section that is set, but not to a mapping."""
    try:
        with open(path, encoding="utf-8") as f:
            content = yaml.safe_load(f)
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return None  # jsonargparse says what is wrong with the file
    if not isinstance(content, dict):
        return None
    for section in SECTIONS:
        if section in content and not isinstance(content[section], dict):
            return _not_a_mapping(section, content[section])
    return None


def _is_empty(path: str) -> bool:
    """Whether the file holds nothing but blank lines and comments."""
    with open(path, encoding="utf-8", errors="replace") as f:
        return all(not line.strip() or line.lstrip().startswith("#") for line in f)


class MNISTLinearCLI(LightningCLI):
    """LightningCLI for :class:`LinearClassifier` on :class:`MNISTSubsetDataModule`.

    Each run gets a folder of its own (see :mod:`mnist_linear.run`), ``run_dir``, which
    holds its config.yaml, checkpoints, results.json and, with a logger, its logs.
    """

    folder = RunFolder()  # replaced by the run's own when its arguments are parsed
    checkpoint: dict[str, Any] | None = None
    config_text = ""

    @property
    def run_dir(self) -> Path | None:
        """The run's folder (``None`` in a process that does not write: not rank zero)."""
        return self.folder.path

    def add_default_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        """Lightning's ``--seed_everything``, typed so that a seed out of range is refused."""
        parser.add_argument(
            "--seed_everything",
            type=bool | Seed,
            default=self.seed_everything_default,
            help="Seed of seed_everything, from 0 to 2**32 - 1, set before the classes are "
            "made; false for none; true lets Lightning choose, which in Lightning 2.6 is the "
            "PL_GLOBAL_SEED environment variable if set, else 0 (config.yaml records it).",
        )

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.link_arguments("data.num_classes", "model.num_classes", apply_on="instantiate")
        # Nothing is logged per step (the evaluations are logged ten times an epoch), so no
        # step interval applies; with 1, Lightning has no ten blocks < 50 steps to warn of.
        parser.set_defaults({"trainer.log_every_n_steps": 1})
        # The assignment's rules, each a section of its own: --annealing.T, --early_stopping.*
        parser.add_lightning_class_args(LearningRateAnnealing, "annealing")
        parser.add_lightning_class_args(ValidationLossEarlyStopping, "early_stopping")
        parser.add_lightning_class_args(WeightImageLogger, "weight_images")
        parser.add_argument(
            "--threads",
            type=PositiveInt | None,
            default=None,
            help="torch's CPU threads for this run's evaluations, also given to the processes "
            "it starts (OMP_NUM_THREADS); the SGD steps of a mini-batch run on one thread. "
            "Default: torch's own, one per core.",
        )
        parser.add_argument(
            "--ckpt_path",
            type=str | None,
            default=None,
            help="Checkpoint to resume training from, such as "
            "lightning_logs/version_0/checkpoints/last.ckpt. A checkpoint inside its own "
            "run folder resumes in that folder.",
        )

    def parse_arguments(self, parser: LightningArgumentParser, args: Any) -> None:
        config_files = _config_files(sys.argv[1:] if args is None else args)
        for path in config_files:
            if _is_empty(path):
                raise UsageError(
                    f"--config {path}: the file holds no options; a config file is a mapping "
                    "such as 'model: {learning_rate: 0.1}'"
                )
        try:
            super().parse_arguments(parser, args)
        except ArgumentError as error:  # jsonargparse's message names the option and the value
            for path in config_files:  # unless a section left a required option without one
                found = _section_not_a_mapping(path)
                if found is not None:
                    raise UsageError(f"--config {path}: {found}") from None
            raise UsageError(one_line(str(error))) from None
        where = f"--config {' '.join(config_files)}: " if config_files else ""
        defaults = parser.get_defaults()
        for section in SECTIONS:
            value = self.config.get(section)
            # A section given as a number, then completed by a --section.key, keeps only that key.
            keys = set(vars(defaults[section]))
            if isinstance(value, Namespace) and not keys <= set(vars(value)):
                raise UsageError(f"{where}{section} must be a mapping of its options, or left out")
            if not isinstance(value, Namespace):
                raise UsageError(where + _not_a_mapping(section, value))
        try:
            check_trainer_flags(self.config.trainer.as_dict())
        except TrainerFlagError as error:
            raise UsageError(str(error)) from None
        for option, folder in self._output_folders():
            try:
                check_folder(option, str(folder))
            except ValueError as error:
                raise UsageError(str(error)) from None
        ckpt_path = self.config.get("ckpt_path")
        if ckpt_path is not None:
            try:
                self.checkpoint = read_checkpoint(ckpt_path)
            except CheckpointError as error:
                raise UsageError(f"--ckpt_path: {error}") from None
        self.folder = RunFolder(None if ckpt_path is None else run_folder_of(ckpt_path))

    def check_resume(self) -> None:
        """Refuse a resume that would change the checkpoint's run, or shorten it.

        Called once the seed is resolved, so that ``--seed_everything true`` compares as
        the seed it stands for.
        """
        if self.checkpoint is None:
            return
        changes = refused_changes(self.checkpoint, self.settings())
        if changes:
            listed = ", ".join(f"{key} {old} -> {new}" for key, (old, new) in changes.items())
            raise UsageError(
                f"--ckpt_path: a resume continues the checkpoint's run, which had other "
                f"settings: {listed}; resume with the checkpoint's settings, or start a new "
                "run without --ckpt_path"
            )
        shortening = refused_shortening(self.checkpoint, self.config.trainer.as_dict())
        if shortening:
            raise UsageError(shortening)

    def _output_folders(self) -> list[tuple[str, Any]]:
        """The options naming where the run writes, with their values: ``default_root_dir``
        and a configured logger's ``save_dir``."""
        folders = [("--trainer.default_root_dir", self.config.trainer.get("default_root_dir"))]
        logger = self._configured_logger()
        if logger is not None:
            folders.append(("--trainer.logger.save_dir", logger.init_args.get("save_dir")))
        return [(option, folder) for option, folder in folders if folder is not None]

    def _configured_logger(self) -> Namespace | None:
        """The first ``--trainer.logger`` when it is a TensorBoardLogger or a CSVLogger."""
        loggers = self.config.trainer.logger
        first = loggers[0] if isinstance(loggers, list) and loggers else loggers
        class_path = getattr(first, "class_path", None) or ""
        return first if class_path.endswith(("TensorBoardLogger", "CSVLogger")) else None

    def settings(self) -> dict[str, str]:
        """The run's resolved settings, flattened, without the config files and checkpoint."""
        config = {
            k: v for k, v in self.config.as_dict().items() if k not in ("config", "ckpt_path")
        }
        return flat_settings(config)

    def before_instantiate_classes(self) -> None:
        """Check a resume, keep the config as given, claim the run folder of a configured logger."""
        self.check_resume()
        config = self.config.clone()
        config.ckpt_path = None  # a rerun with --config starts afresh
        sources = " ".join(str(path) for path in self.config.get("config") or [])
        header = f"# config: {sources}\n" if sources else ""  # for the report's titles
        self.config_text = header + self.parser.dump(config, skip_unset=False)
        first = self._configured_logger()
        if first is not None and launched_as_rank_zero():
            init = first.init_args
            try:
                init.version = self.folder.for_logger(init.save_dir, init.get("name"),
                                                      init.get("version"))  # fmt: skip
            except RunFolderError as error:
                raise UsageError(str(error)) from None

    def discard_run_folder(self) -> None:
        """Remove the run folder this process made, if the run was refused before training."""
        self.folder.discard()

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
            trainer = super().instantiate_trainer(**kwargs)
        except BaseException:
            self.discard_run_folder()  # a Trainer refused before anything was trained
            raise
        # Last, after the callbacks' sections: it measures the weights early stopping restored.
        results = next(c for c in trainer.callbacks if isinstance(c, RunResults))
        trainer.callbacks = [*(c for c in trainer.callbacks if c is not results), results]
        return trainer

    def _run_folder(self, trainer_config: dict[str, Any]) -> dict[str, Any]:
        """The Trainer's arguments that make the run write into its folder."""
        logger = trainer_config.get("logger")
        configured = self._configured_logger()
        try:
            arguments = self.folder.trainer_arguments(
                logger,
                {} if configured is None else configured.init_args.as_dict(),
                trainer_config.get("default_root_dir") or os.getcwd(),
                None if self.checkpoint is None else self.checkpoint["global_step"] + 1,
            )
            self.folder.hold()
            return arguments
        except RunFolderError as error:
            raise UsageError(str(error)) from None

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


def _not_a_tip(record: logging.LogRecord) -> bool:
    # Lightning prints an advertisement for a cloud logger on every run; this project is offline.
    return not str(record.msg).startswith("💡 Tip")


def _quiet_lightning() -> None:
    # The seed is part of the saved config.yaml; its "Seed set" line would precede any error.
    logging.getLogger("lightning.fabric.utilities.seed").setLevel(logging.WARNING)
    logging.getLogger("lightning.pytorch.utilities.rank_zero").addFilter(_not_a_tip)  # once
    # Lightning 2.6 calls a torch pytree API that torch 2.14 deprecates, on every run.
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)")


_quiet_lightning()  # also for the processes ddp_spawn starts: they import this, run no main


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


def check_before_fit(trainer: L.Trainer, datamodule: MNISTSubsetDataModule) -> None:
    """What train.py checks before it starts any process, reading only the label files."""
    datamodule.check_fits(trainer.world_size)
    check_evaluation_interval(trainer, *datamodule.training_blocks(trainer.world_size))


def fit_and_report(cli: MNISTLinearCLI) -> dict[str, Any] | None:
    """Fit (resuming from ``--ckpt_path``); config.yaml comes at the start, results.json at the end.

    Returns the results, or ``None`` in a process that did not train (the main process
    of ``ddp_spawn``, whose workers write results.json).
    """
    trainer, model, datamodule = cli.trainer, cli.model, cli.datamodule
    check_before_fit(trainer, datamodule)
    if trainer.strategy.launcher is None:
        trainer.callbacks.insert(0, messages.ReleaseMessages())
    else:  # processes of their own train (in ddp_spawn, none of them this one): let them print
        messages.let_through()
    threads = cli.config.get("threads")
    if threads is not None:  # Lightning's DDP leaves torch's threads alone when this is set
        os.environ["OMP_NUM_THREADS"] = str(threads)
        torch.set_num_threads(threads)
    with warnings.catch_warnings():
        if cli.folder.resumed_here:
            # A resume in its own folder finds its own checkpoints there; Lightning's
            # warning is for a new run writing over another's.
            warnings.filterwarnings("ignore", message="Checkpoint directory .* is not empty")
            # Nor has its checkpoint folder moved when it was named relative to another
            # working folder, or by another path.
            warnings.filterwarnings("ignore", message="The dirpath has changed from")
        trainer.fit(model, datamodule=datamodule, ckpt_path=cli.config.get("ckpt_path"))
    results = next(c for c in trainer.callbacks if isinstance(c, RunResults)).results
    if results is None and cli.run_dir is not None and (cli.run_dir / "results.json").is_file():
        results = json.loads((cli.run_dir / "results.json").read_text())
    return results


def refusal(error: BaseException, run_dir: Path | None = None) -> tuple[str, int] | None:
    """train.py's one line and exit code for ``error`` raised before training, or ``None``.

    A split too small, a data folder or Trainer flag that cannot work, a flag Lightning
    refuses: exit 2. No MNIST source that works, no room to write: exit 1.
    """
    if isinstance(error, SplitTooSmallError | DataFolderError):
        return f"--data.{error}", USAGE_ERROR
    if isinstance(error, TrainerFlagError):
        return str(error), USAGE_ERROR
    if isinstance(error, MisconfigurationException):  # a Trainer flag that cannot apply here
        return one_line(str(error)), USAGE_ERROR
    if isinstance(error, MNISTFilesError):
        return str(error), 1
    if isinstance(error, OSError) and error.errno in NO_ROOM:
        return no_room(error, run_dir), 1
    return None


def make_cli(args: Sequence[str] | None = None) -> MNISTLinearCLI:
    """train.py's arguments parsed and its classes made; bad input ends in one line, exit 2."""
    _quiet_lightning()
    try:
        return MNISTLinearCLI(LinearClassifier, MNISTSubsetDataModule, args=args, **CLI_KWARGS)
    except UsageError as error:
        fail(str(error), USAGE_ERROR)
    except OSError as error:  # claiming the run folder
        if error.errno not in NO_ROOM:
            raise
        fail(no_room(error), 1)


def no_room(error: OSError, run_dir: Path | None = None) -> str:
    """The one line for a write that found no room: the file and the system's message."""
    where = error.filename or f"into {run_dir or 'the run folder'}"  # a library's write
    return f"cannot write {where}: {error.strerror}"


def fit_reporting_errors(cli: MNISTLinearCLI) -> None:
    """:func:`fit_and_report`; what stops it before training ends in one line and an exit code.

    The run folder goes with a refusal, unless it holds a checkpoint to resume from.
    """
    try:
        fit_and_report(cli)
    except Exception as error:
        answer = refusal(error, cli.run_dir)
        if answer is None:
            raise
        cli.discard_run_folder()
        fail(*answer)


def main(args: Sequence[str] | None = None) -> None:
    """Entry point of ``train.py``."""
    try:
        with messages.held_until_training():  # a refusal is printed alone
            fit_reporting_errors(make_cli(args))
    finally:
        folders.let_go()


if __name__ == "__main__":
    main()
