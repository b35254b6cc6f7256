"""One training run: its own folder, its checkpoints written atomically, its results.json.

Every run writes into a folder of its own, ``<save_dir>/<name>/version_N``, claimed
with ``os.mkdir`` before anything is written: two runs started at the same moment in
one folder get two versions. A run resumed from a checkpoint inside its own run
folder continues in that folder.
"""

from __future__ import annotations

import io
import itertools
import json
import math
import os
import pickle
import tempfile
import time
import zipfile
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

VERSION_PREFIX = "version_"
CHECKPOINT_KEYS = ("state_dict", "global_step", "epoch")
RECORD_KEY = "mnist_linear_record"  # the run's settings, in every checkpoint it writes

# Settings a resume may change: they extend the run (its length) or change only what it
# writes and shows, never the arithmetic. Every other setting is the checkpoint's own.
RESUME_MAY_CHANGE = (
    "data.data_dir", "weight_images", "threads",
    "trainer.max_epochs", "trainer.max_steps", "trainer.max_time",
    "trainer.logger", "trainer.default_root_dir", "trainer.callbacks",
    "trainer.enable_progress_bar", "trainer.enable_model_summary",
    "trainer.enable_checkpointing", "trainer.enable_autolog_hparams", "trainer.barebones",
    "trainer.log_every_n_steps", "trainer.profiler", "trainer.detect_anomaly",
    "trainer.num_sanity_val_steps", "trainer.limit_test_batches",
    "trainer.limit_predict_batches", "trainer.model_registry",
)  # fmt: skip


def claim_version(parent: str | os.PathLike) -> int:
    """Create ``parent/version_N`` for the next free N and return N.

    ``os.mkdir`` fails for all but one of the processes that try the same N, so each
    process that calls this gets a folder of its own.
    """
    parent = Path(parent)
    parent.mkdir(parents=True, exist_ok=True)
    taken = [v for p in parent.iterdir() if isinstance(v := logger_version(p), int)]
    version = max(taken, default=-1) + 1
    while True:
        try:
            (parent / f"{VERSION_PREFIX}{version}").mkdir()
            return version
        except FileExistsError:
            version += 1


def named_run_folder(
    save_dir: str | os.PathLike, name: str = "lightning_logs", version: int | str = 0
) -> Path:
    """``save_dir/name/version_N`` (an int version) or ``save_dir/name/<version>`` (a str),
    where a ``TensorBoardLogger`` or ``CSVLogger`` with that version writes."""
    folder = version if isinstance(version, str) else f"{VERSION_PREFIX}{version}"
    return Path(save_dir) / name / folder


def claim_run_folder(
    save_dir: str | os.PathLike, name: str = "lightning_logs", version: int | str | None = None
) -> tuple[Path, bool]:
    """The run folder a logger with ``version`` writes into, made if need be.

    With ``version=None`` the next free N is claimed (:func:`claim_version`). Returns
    the folder and whether this call made it (``False``: it was there, as a sweep's run
    folder is).
    """
    if version is None:
        return named_run_folder(save_dir, name, claim_version(Path(save_dir) / name)), True
    folder = named_run_folder(save_dir, name, version)
    folder.parent.mkdir(parents=True, exist_ok=True)
    try:
        folder.mkdir()
    except FileExistsError:
        return folder, False
    return folder, True


def holds_a_run(folder: Path) -> bool:
    """Whether ``folder`` holds a run: its ``config.yaml``, ``results.json`` or a checkpoint."""
    records = (folder / "config.yaml", folder / "results.json")
    return any(path.is_file() for path in records) or any(folder.glob("checkpoints/*.ckpt"))


def first_missing(path: Path) -> Path | None:
    """The outermost folder of ``path`` that does not exist yet (``path`` itself, or a parent)."""
    missing = None
    for folder in (path, *path.parents):
        if folder.exists():
            return missing
        missing = folder
    return missing


def logger_version(folder: Path) -> int | str:
    """The ``version`` argument that makes a logger write into ``folder``."""
    number = folder.name[len(VERSION_PREFIX) :]
    return (
        int(number) if folder.name.startswith(VERSION_PREFIX) and number.isdigit() else folder.name
    )


def run_folder_of(checkpoint: str | os.PathLike) -> Path | None:
    """The run folder that holds ``checkpoint`` in its ``checkpoints/``, if it is one."""
    folder = Path(checkpoint).resolve().parent
    run = folder.parent
    if folder.name == "checkpoints" and (run / "config.yaml").is_file():
        return run
    return None


def flat_settings(config: dict[str, Any]) -> dict[str, str]:
    """``{"model.learning_rate": "0.2", ...}``: every leaf of a resolved config, as JSON text."""
    flat: dict[str, str] = {}

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, dict):
            for key, item in value.items():
                walk(f"{prefix}{key}.", item)
        elif isinstance(value, list) and any(isinstance(item, dict) for item in value):
            for index, item in enumerate(value):
                walk(f"{prefix}{index}.", item)
        else:
            flat[prefix[:-1]] = json.dumps(value, sort_keys=True, default=str)

    walk("", config)
    return flat


def may_change_on_resume(key: str) -> bool:
    return any(key == p or key.startswith(f"{p}.") for p in RESUME_MAY_CHANGE)


def changed_settings(before: dict[str, str], after: dict[str, str]) -> dict[str, list[str]]:
    """``{key: [before, after]}`` for each setting that differs, ``"unset"`` where absent."""
    return {
        key: [before.get(key, "unset"), after.get(key, "unset")]
        for key in sorted(before.keys() | after.keys())
        if before.get(key) != after.get(key)
    }


def recorded_settings(checkpoint: dict[str, Any]) -> dict[str, str]:
    """The settings that produced ``checkpoint``.

    Checkpoints of this project carry them all; for others, the model's and the data
    module's arguments that Lightning saved are what can be compared.
    """
    record = checkpoint.get(RECORD_KEY)
    if record:
        return dict(record["segments"][-1]["settings"])
    saved = {
        "model": checkpoint.get("hyper_parameters") or {},
        "data": checkpoint.get("datamodule_hyper_parameters") or {},
    }
    return flat_settings(
        {section: {k: v for k, v in args.items() if not k.startswith("_")}
         for section, args in saved.items()}
    )  # fmt: skip


def refused_changes(checkpoint: dict[str, Any], settings: dict[str, str]) -> dict[str, list[str]]:
    """The settings a resume from ``checkpoint`` with ``settings`` would change but may not."""
    recorded = recorded_settings(checkpoint)
    if RECORD_KEY not in checkpoint:  # compare only what both name
        recorded = {k: v for k, v in recorded.items() if k in settings}
        settings = {k: v for k, v in settings.items() if k in recorded}
    changes = changed_settings(recorded, settings)
    return {k: v for k, v in changes.items() if not may_change_on_resume(k)}


def segments_of(
    checkpoint: dict[str, Any] | None, settings: dict[str, str], resumed_from: str | None
) -> list[dict[str, Any]]:
    """The segments of a run, this one last: where each started and with which settings."""
    if checkpoint is None:
        return [{"first_step": 0, "resumed_from": None, "settings": settings}]
    record = checkpoint.get(RECORD_KEY)
    if record:
        before = [dict(s) for s in record["segments"]]
    else:  # a checkpoint without a record: its settings as far as it saved them
        before = [
            {"first_step": 0, "resumed_from": None, "settings": recorded_settings(checkpoint)}
        ]
    step = int(checkpoint["global_step"])
    return [*before, {"first_step": step, "resumed_from": resumed_from, "settings": settings}]


class RunRecord(L.Callback):
    """What produced a run folder's checkpoints: ``config.yaml`` and ``segments.json``.

    ``config.yaml`` is the resolved configuration of the run's latest segment; it is
    written when training starts, so a run refused before that leaves the folder's old
    one alone. A resumed run is a new segment: every checkpoint carries the settings of
    all its segments, and ``segments.json`` lists them (first step, the checkpoint
    resumed from, the settings changed against the segment before), so that the
    folder says what every step was trained with.

    Args:
        run_dir: The run folder; ``None`` writes nothing.
        config_text: The ``config.yaml`` to write.
        segments: The run's segments, from :func:`segments_of`.
    """

    def __init__(
        self, run_dir: Path | None, config_text: str, segments: list[dict[str, Any]]
    ) -> None:
        self.run_dir, self.config_text, self.segments = run_dir, config_text, segments
        self.written = False

    def write(self, trainer: L.Trainer) -> None:
        if self.written or self.run_dir is None or not trainer.is_global_zero:
            return
        self.written = True
        atomic_write_text(self.run_dir / "config.yaml", self.config_text)
        if len(self.segments) > 1:
            listing = [{k: v for k, v in self.segments[0].items() if k != "settings"}]
            for before, segment in itertools.pairwise(self.segments):
                changes = changed_settings(before["settings"], segment["settings"])
                listing.append({
                    "first_step": segment["first_step"],
                    "resumed_from": segment["resumed_from"],
                    "changed": changes,
                })  # fmt: skip
            atomic_write_text(self.run_dir / "segments.json", json.dumps(listing, indent=2) + "\n")

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.write(trainer)

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.write(trainer)  # a resume with nothing left to train starts no training

    def on_save_checkpoint(
        self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        checkpoint[RECORD_KEY] = {"segments": self.segments}


class CheckpointError(ValueError):
    """A file given as a checkpoint that is not a readable Lightning checkpoint."""


def read_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """The checkpoint at ``path``, or :class:`CheckpointError` naming the file and the fault."""
    if not os.path.isfile(path):
        raise CheckpointError(f"no checkpoint file at {str(path)!r}")
    if not zipfile.is_zipfile(path):  # what torch.save writes, whole: a zip archive
        raise CheckpointError(
            f"{path} is not a checkpoint: not a whole file written by torch.save "
            "(truncated, or another kind of file)"
        )
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, pickle.UnpicklingError, EOFError, OSError, zipfile.BadZipFile) as error:
        raise CheckpointError(
            f"{path} is not a readable checkpoint: torch.load, loading weights only, "
            f"refused it ({type(error).__name__})"
        ) from None
    if not isinstance(checkpoint, dict):
        raise CheckpointError(f"{path} is not a Lightning checkpoint: it holds no dict")
    missing = [key for key in CHECKPOINT_KEYS if key not in checkpoint]
    if missing:
        raise CheckpointError(f"{path} is not a Lightning checkpoint: it has no {missing[0]!r}")
    if "optimizer_states" not in checkpoint:  # Lightning's save_checkpoint(weights_only=True)
        raise CheckpointError(
            f"{path} holds weights only, without the optimizer's state: it can be loaded with "
            "LinearClassifier.load_from_checkpoint, not resumed"
        )
    return checkpoint


def refused_shortening(checkpoint: dict[str, Any], trainer: dict[str, Any]) -> str | None:
    """Why a resume from ``checkpoint`` with the Trainer flags ``trainer`` would shorten the run.

    A resume may extend a run, never shorten it: ``max_epochs`` must reach the epoch the
    checkpoint is in (its ``epoch`` counts from 0) and ``max_steps`` its ``global_step``,
    else ``config.yaml`` would record a length its checkpoints had already passed.
    ``None`` (Lightning's default) and -1 (no limit) shorten nothing.
    """
    epochs, steps = int(checkpoint["epoch"]) + 1, int(checkpoint["global_step"])
    reached = {
        "max_epochs": (epochs, f"has reached epoch {epochs - 1} (counted from 0)"),
        "max_steps": (steps, f"has trained {steps} steps"),
    }
    for flag, (least, why) in reached.items():
        given = trainer.get(flag)
        if given is not None and given != -1 and given < least:
            return (
                f"--trainer.{flag} must be at least {least} to resume this checkpoint, which "
                f"{why}: a resume may extend a run, not shorten it; got {given}"
            )
    return None


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

    Runs in every process that trains, at ``on_fit_end``, so after every callback's
    ``on_train_end`` (early stopping's restore among them) whatever their order; rank
    zero writes ``results.json`` into the run folder and prints a summary. ``seconds``
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
        if stopping is not None:  # also when a resumed run had no epoch left to train
            stopping.ensure_best_file(trainer, pl_module)
            stopping.finish(trainer, pl_module)
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
