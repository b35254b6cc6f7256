"""A run's checkpoints written atomically, its log's hparams.yaml too, and its results.json."""

from __future__ import annotations

import io
import json
import math
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.fabric.plugins import TorchCheckpointIO
from lightning.pytorch.core.saving import save_hparams_to_yaml
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_only

from mnist_linear.callbacks import ValidationLossEarlyStopping
from mnist_linear.files import atomic_write_bytes, atomic_write_text
from mnist_linear.model import STAGES


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's ``torch.save`` checkpoints, written through a temporary file and a rename.

    A process killed while a checkpoint is written leaves the previous file whole
    (and at most a hidden ``.tmp`` file), so ``last.ckpt`` always resumes.
    """

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: str | os.PathLike, storage_options: Any = None
    ) -> None:
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} takes no storage_options")
        buffer = io.BytesIO()
        torch.save(checkpoint, buffer)
        atomic_write_bytes(path, [buffer.getbuffer()])


class AtomicTensorBoardLogger(TensorBoardLogger):
    """Lightning's ``TensorBoardLogger`` whose ``hparams.yaml`` is written atomically.

    Lightning writes the file in place; here it is written by Lightning's own
    ``save_hparams_to_yaml`` into a hidden temporary file, then put in place with
    :func:`~mnist_linear.files.atomic_write_bytes`, so that a reader never sees half of
    it and a link at its path is replaced, never followed out of the run folder.
    """

    @rank_zero_only
    def save(self) -> None:
        path = Path(self.log_dir) / self.NAME_HPARAMS_FILE
        local = "://" not in str(self.log_dir)  # a remote save_dir keeps Lightning's write
        if local and path.parent.is_dir() and not path.is_file():
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
            os.close(fd)
            try:
                save_hparams_to_yaml(tmp, self.hparams)
                atomic_write_bytes(path, [Path(tmp).read_bytes()])
            finally:
                os.unlink(tmp)
        super().save()  # flushes the events; hparams.yaml exists, so Lightning leaves it


class RunResults(L.Callback):
    """Measure the final weights on the three whole splits when fitting ends.

    Runs in every process that trains, at ``on_fit_end``, and must come after the
    early-stopping callback in the Trainer's callbacks, whose ``on_fit_end`` restores
    the best weights (train.py puts it last); rank zero writes ``results.json`` into
    the run folder and prints a summary. ``seconds``
    counts from the start of fitting to the end of this evaluation; ``threads`` is
    torch's number of CPU threads when fitting started.

    Rank zero also logs the run's hyperparameters with its results (``hp/val_acc``,
    ...) to TensorBoard, for the HPARAMS tab that compares the runs of a sweep.

    Args:
        run_dir: The run folder; ``None`` writes nothing.
        hparams: The run's settings, flattened (``{"model.l2_lambda": 0.001, ...}``).
    """

    def __init__(
        self, run_dir: str | os.PathLike | None, hparams: dict[str, Any] | None = None
    ) -> None:
        self.run_dir = None if run_dir is None else Path(run_dir)
        self.hparams = dict(hparams or {})
        self.results: dict[str, Any] | None = None
        self._started = time.perf_counter()
        self.threads = torch.get_num_threads()

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._started = time.perf_counter()
        self.threads = torch.get_num_threads()

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        stopping = next(
            (c for c in trainer.callbacks if isinstance(c, ValidationLossEarlyStopping)), None
        )
        datamodule = trainer.datamodule
        splits = datamodule.splits()
        # Lightning's teardown has moved the model to the CPU; the splits stay where the
        # evaluations read them, and the measurement happens there, as they did.
        where, device = pl_module.device, splits["train"].tensors[0].device
        pl_module.to(device)
        results: dict[str, Any] = {}
        try:
            for stage, split in splits.items():
                # As the evaluation loop passes them on: in 16-true or bf16-true, say,
                # the pixels in that dtype.
                batches = [trainer.precision_plugin.convert_input(batch)
                           for batch in datamodule.eval_batches(split)]  # fmt: skip
                loss, accuracy = pl_module.measure(batches)
                results[f"{stage}/loss"], results[f"{stage}/acc"] = loss, accuracy
            results["weight_norm"] = float(pl_module.linear.weight.detach().norm())
        finally:
            pl_module.to(where)
        results.update(
            best_epoch=None if stopping is None else stopping.best_epoch,
            best_step=None if stopping is None else stopping.best_step,
            stopped_epoch=None if stopping is None else stopping.stopped_epoch,
            stop_reason=None if stopping is None else stopping.stop_reason,
            global_step=trainer.global_step,
            threads=self.threads,
            seconds=round(time.perf_counter() - self._started, 3),
        )
        self.results = without_non_finite(results)
        results = self.results
        if trainer.is_global_zero and self.run_dir is not None:
            write_results(self.run_dir, results)
        if trainer.is_global_zero:
            metrics = {f"hp/{key.replace('/', '_')}": value for key, value in results.items()
                       if isinstance(value, int | float) and key != "seconds"}  # fmt: skip
            for logger in trainer.loggers:
                if isinstance(logger, TensorBoardLogger):
                    logger.log_hyperparams(self.hparams, metrics)
                    logger.finalize("success")


def without_non_finite(results: dict[str, Any]) -> dict[str, Any]:
    """``results`` with each value that is not a finite number as ``None`` (JSON's null).

    JSON has no NaN or infinity; ``stop_reason`` then names the values made null.
    """
    bad = [k for k, v in results.items() if isinstance(v, float) and not math.isfinite(v)]
    if not bad:
        return results
    why = f"{', '.join(bad)} not finite, written as null"
    reason = results.get("stop_reason")
    return {
        **results,
        **dict.fromkeys(bad),
        "stop_reason": f"{reason}; {why}" if reason else why,
    }


def _number(value: float | None, spec: str, scale: float = 1, unit: str = "") -> str:
    return "not finite" if value is None else format(scale * value, spec) + unit


def write_results(run_dir: Path, results: dict[str, Any]) -> None:
    """``results.json`` in ``run_dir`` (strict JSON: finite numbers only), and a summary."""
    path = run_dir / "results.json"
    results = without_non_finite(results)
    atomic_write_text(path, json.dumps(results, indent=2, allow_nan=False) + "\n")
    rows = "\n".join(
        f"  {s:<5}  loss {_number(results[f'{s}/loss'], '.4f')}  "
        f"acc {_number(results[f'{s}/acc'], '.2f', 100, '%')}"
        for s in STAGES
    )
    stopped, best = results["stopped_epoch"], results["best_epoch"]
    reason = results["stop_reason"]
    print(
        ("No epoch trained" if stopped is None else f"Stopped in epoch {stopped}")
        + (f" ({reason})" if reason else "")
        + f" after {results['global_step']} steps and {results['seconds']:.1f} s.\n"
        + (
            "Weights as training left them (no evaluation to restore)"
            if best is None
            else f"Weights of epoch {best}"
        )
        + f":\n{rows}\nResults: {path}",
        flush=True,
    )
