"""Resuming a run: what its checkpoints record, and what a resume may change.

A resume continues the checkpoint's run. Settings that would change it (the model, the
data, the optimizer, the seed, the rules) are refused; those in :data:`RESUME_MAY_CHANGE`
only extend it or change what it writes. Every checkpoint carries the settings of each
segment of its run (:class:`RunRecord`), so that the folder says what every step was
trained with.
"""

from __future__ import annotations

import itertools
import json
import os
import pickle
import zipfile
from pathlib import Path
from typing import Any

import lightning as L
import torch

from mnist_linear.files import atomic_write_text

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
