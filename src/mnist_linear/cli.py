"""``python train.py --config configs/softmax.yaml``: fit, evaluate the restored weights, report.

A run writes, under ``<default_root_dir>/lightning_logs/version_N``: the TensorBoard
events, ``config.yaml`` (the resolved configuration), ``checkpoints/`` and
``results.json``. Bad input ends the program with one line on stderr and exit code 2.
"""

from __future__ import annotations

import json
import logging
import os
import re
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning as L
from jsonargparse import ArgumentError
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch.callbacks import ProgressBar
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_only

from mnist_linear.callbacks import ValidationLossEarlyStopping
from mnist_linear.data import MNISTSubsetDataModule, SplitTooSmallError
from mnist_linear.errors import USAGE_ERROR, fail
from mnist_linear.files import atomic_write_text
from mnist_linear.mnist_files import MNISTFilesError
from mnist_linear.model import STAGES, LinearClassifier
from mnist_linear.profiling import NullProfiler

RESULT_KEYS = (
    *(f"{stage}/{metric}" for stage in STAGES for metric in ("loss", "acc")),
    "weight_norm",
)


class UsageError(Exception):
    """Bad input from the command line or a config file: reported in one line, exit code 2."""


def _one_line(message: str) -> str:
    return " ".join(message.split())


def _type_name(text: str) -> str:
    text = re.sub(r"<class '(?:[\w.]+\.)?(\w+)'>", r"\1", text).replace("NoneType", "null")
    return re.sub(r"\b(?:[a-z_]+\.)+([A-Z]\w*)", r"\1", text)


def describe_parse_error(message: str) -> str:
    """jsonargparse's error as one line: the option, the value received, the values allowed.

    ``Parser key "data.batch_size": Expected a <class 'int'>. Got value: zero`` becomes
    ``--data.batch_size: expected int, got 'zero'``. Where one of the errors is a
    constructor's own message (a ``ValueError``), that message is the one shown.
    """
    lines = [line.strip() for line in message.splitlines() if line.strip()]
    text = " ".join(lines)
    key = re.match(r'Parser key "([^"]+)":', text)
    option = f"--{key.group(1)}" if key else "--trainer.callbacks" if "Callback" in text else ""
    prefix = f"{option}: " if option else ""
    errors = [line[2:] for line in lines if line.startswith("- ")]
    own = [e for e in errors if not e.startswith(("Expected a", "Not a valid subclass", "a "))]
    if own:
        return prefix + own[0]
    got = re.search(r"Given value: (.*)$", text) or re.search(r"Got value: (.*)$", text)
    subtypes = re.search(r"Subtypes: \[(.*?)\] Errors:", text)
    expected = re.search(r"Expected a (<class '[\w.]+'>|\S+)", text)
    if got and (subtypes or expected):
        allowed = subtypes.group(1) if subtypes else expected.group(1)
        allowed = " or ".join(_type_name(t) for t in re.split(r", (?![^\[]*\])", allowed))
        return f"{prefix}expected {allowed}, got {got.group(1).strip()!r}"
    return _one_line(message if not key else f"{option}: {text[key.end() :].strip()}")


def _section_of(error: BaseException) -> str:
    """``data`` or ``model`` (or a callback's class name) whose constructor raised ``error``."""
    traceback, section = error.__traceback__, ""
    while traceback is not None:
        frame = traceback.tb_frame
        owner = frame.f_locals.get("self") if frame.f_code.co_name == "__init__" else None
        if isinstance(owner, L.LightningDataModule):
            section = "--data."
        elif isinstance(owner, L.LightningModule):
            section = "--model."
        elif isinstance(owner, L.Callback):
            section = f"--trainer.callbacks: {type(owner).__name__}: "
        elif isinstance(owner, L.Trainer):
            section = "--trainer: "
        traceback = traceback.tb_next
    return section


class MNISTLinearCLI(LightningCLI):
    """LightningCLI for :class:`LinearClassifier` on :class:`MNISTSubsetDataModule`."""

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.link_arguments("data.num_classes", "model.num_classes", apply_on="instantiate")
        parser.add_argument(
            "--ckpt_path",
            type=str | None,
            default=None,
            help="Checkpoint to resume training from, such as "
            "lightning_logs/version_0/checkpoints/last.ckpt.",
        )

    def parse_arguments(self, parser: LightningArgumentParser, args: Any) -> None:
        try:
            super().parse_arguments(parser, args)
        except ArgumentError as error:
            raise UsageError(describe_parse_error(str(error))) from None
        ckpt_path = self.config.get("ckpt_path")
        if ckpt_path is not None and not Path(ckpt_path).is_file():
            raise UsageError(f"--ckpt_path: no checkpoint file at {ckpt_path!r}")
        # LinearClassifier takes its own plain SGD steps (manual optimisation).
        trainer = self.config.get("trainer") or {}
        clip = trainer.get("gradient_clip_val")
        if clip is not None and clip != 0:
            raise UsageError(
                f"--trainer.gradient_clip_val: expected null or 0, got {clip!r}: "
                "each step is plain SGD on the hand-derived gradient, unclipped"
            )
        accumulate = trainer.get("accumulate_grad_batches", 1)
        if accumulate != 1:
            raise UsageError(
                f"--trainer.accumulate_grad_batches: expected 1, got {accumulate!r}: "
                "each batch is one SGD step; set --data.batch_size for larger batches"
            )

    def instantiate_trainer(self, **kwargs: Any) -> L.Trainer:
        """The Trainer, logging to TensorBoard under ``default_root_dir`` unless told otherwise.

        Without ``--trainer.profiler`` it gets a :class:`NullProfiler`.
        """
        trainer_config = self.config_init.get("trainer", {})
        if trainer_config.get("enable_progress_bar") is False and trainer_config.get("callbacks"):
            # The configs tune the bar's refresh rate; turning the bar off removes it.
            callbacks = trainer_config["callbacks"]
            trainer_config["callbacks"] = [c for c in callbacks if not isinstance(c, ProgressBar)]
        if trainer_config.get("logger") in (None, True):
            save_dir = trainer_config.get("default_root_dir") or os.getcwd()
            kwargs["logger"] = TensorBoardLogger(
                save_dir, name="lightning_logs", default_hp_metric=False
            )
        if trainer_config.get("profiler") is None:
            kwargs["profiler"] = NullProfiler()
        return super().instantiate_trainer(**kwargs)

    def instantiate_classes(self) -> None:
        try:
            super().instantiate_classes()
        except (ValueError, MisconfigurationException) as error:
            message = str(error)
            if "Subtypes:" in message:
                raise UsageError(describe_parse_error(message)) from None
            section = _section_of(error)
            if section == "--trainer: ":
                trainer = self.config.get("trainer", {})
                section = "--trainer ({}): ".format(
                    ", ".join(
                        f"{k}={trainer.get(k)!r}" for k in ("accelerator", "devices", "strategy")
                    )
                )
            raise UsageError(section + _one_line(message)) from None


def _early_stopping(trainer: L.Trainer) -> ValidationLossEarlyStopping | None:
    return next((c for c in trainer.callbacks if isinstance(c, ValidationLossEarlyStopping)), None)


def evaluate(
    trainer: L.Trainer, model: L.LightningModule, datamodule: L.LightningDataModule
) -> dict:
    """Loss and accuracy of ``model`` as it is on the three splits, without logging them.

    The progress bar stays quiet too: three bars for three batches would only clutter
    the end of the run.
    """
    loggers, trainer.loggers = trainer.loggers, []
    bar = trainer.progress_bar_callback
    bar_was_on = bar is not None and bar.is_enabled
    if bar_was_on:
        bar.disable()
    try:
        outputs = trainer.validate(model, datamodule=datamodule, verbose=False)
    finally:
        trainer.loggers = loggers
        if bar_was_on:
            bar.enable()
    merged = {k: float(v) for output in outputs for k, v in output.items()}
    return {key: merged[key] for key in RESULT_KEYS}


def fit_and_report(cli: MNISTLinearCLI) -> dict[str, Any]:
    """Fit (resuming from ``--ckpt_path``), evaluate the final weights, write results.json."""
    trainer, model, datamodule = cli.trainer, cli.model, cli.datamodule
    start = time.perf_counter()
    trainer.fit(model, datamodule=datamodule, ckpt_path=cli.config.get("ckpt_path"))
    results = evaluate(trainer, model, datamodule)
    stopping = _early_stopping(trainer)
    results.update(
        best_epoch=None if stopping is None else stopping.best_epoch,
        stopped_epoch=None if stopping is None else stopping.stopped_epoch,
        stop_reason=None if stopping is None else stopping.stop_reason,
        global_step=trainer.global_step,
        seconds=round(time.perf_counter() - start, 3),
    )
    log_dir = trainer.log_dir  # a collective call under DDP: every rank makes it
    _write_results(log_dir, results)
    return results


@rank_zero_only
def _write_results(log_dir: str | None, results: dict[str, Any]) -> None:
    path = Path(log_dir or ".") / "results.json"
    atomic_write_text(path, json.dumps(results, indent=2) + "\n")
    rows = "\n".join(
        f"  {s:<5}  loss {results[f'{s}/loss']:.4f}  acc {100 * results[f'{s}/acc']:.2f}%"
        for s in STAGES
    )
    print(
        f"Stopped in epoch {results['stopped_epoch']} ({results['stop_reason']}) after "
        f"{results['global_step']} steps and {results['seconds']:.1f} s.\n"
        f"Weights of epoch {results['best_epoch']}:\n{rows}\nResults: {path}"
    )


def main(args: Sequence[str] | None = None) -> None:
    """Entry point of ``train.py``."""
    # The seed is part of the saved config.yaml; its "Seed set" line would precede any error.
    logging.getLogger("lightning.fabric.utilities.seed").setLevel(logging.WARNING)
    # Lightning prints an advertisement for a cloud logger on every run; this project is offline.
    logging.getLogger("lightning.pytorch.utilities.rank_zero").addFilter(
        lambda record: not str(record.msg).startswith("💡 Tip")
    )
    # Lightning 2.6 calls a torch pytree API that torch 2.14 deprecates, on every run.
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)")
    try:
        cli = MNISTLinearCLI(
            LinearClassifier,
            MNISTSubsetDataModule,
            run=False,
            args=args,
            seed_everything_default=42,
            auto_configure_optimizers=False,
            save_config_kwargs={"overwrite": True},
            parser_kwargs={"exit_on_error": False},
        )
    except UsageError as error:
        fail(str(error), USAGE_ERROR)
    try:
        fit_and_report(cli)
    except SplitTooSmallError as error:
        fail(f"--data.{error}", USAGE_ERROR)
    except MNISTFilesError as error:
        fail(str(error), 1)


if __name__ == "__main__":
    main()
