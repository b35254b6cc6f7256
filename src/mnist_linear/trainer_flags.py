"""Trainer flags that Lightning accepts when the Trainer is made, then fails on or ignores.

``check_val_every_n_epoch 0`` ends in a ZeroDivisionError once training starts, and
``-1`` is taken silently as 1; an integer ``val_check_interval`` larger than the
training blocks of an epoch is refused only after the run folder holds its log; an
accelerator this machine does not have is refused without naming the option. They are
checked here instead, before anything is written, with messages that name the
option, the value received and the values allowed.
"""

from __future__ import annotations

from typing import Any

from lightning.pytorch.accelerators import AcceleratorRegistry

# Integer flags of the Trainer, each null or at least its minimum (Lightning's meaning).
MINIMUMS = {
    "check_val_every_n_epoch": (1, "an integer >= 1 (evaluate every N epochs), or null"),
    "min_epochs": (0, "an integer >= 0, or null"),
    "min_steps": (0, "an integer >= 0, or null"),
    "log_every_n_steps": (0, "an integer >= 0 (0: no logging of training steps), or null"),
    "num_sanity_val_steps": (-1, "an integer >= -1 (-1: every batch), or null"),
}


class TrainerFlagError(ValueError):
    """A Trainer flag that cannot work; the message starts with ``--trainer.<flag>``."""


def available_accelerators() -> list[str]:
    """The ``--trainer.accelerator`` names this machine can run: ``auto``, each of
    Lightning's registered accelerators that is available, and ``gpu`` with CUDA or MPS."""
    names = sorted(n for n in AcceleratorRegistry.available_accelerators()
                   if AcceleratorRegistry[n]["accelerator"].is_available())  # fmt: skip
    return ["auto", *names, *(["gpu"] if {"cuda", "mps"} & set(names) else [])]


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def check_trainer_flags(trainer: dict[str, Any]) -> None:
    """Raise :class:`TrainerFlagError` for the first flag of ``trainer`` (the parsed section)
    whose value Lightning would accept now and fail on, or ignore, later."""
    for name, (minimum, allowed) in MINIMUMS.items():
        value = trainer.get(name)
        if value is not None and (not _is_int(value) or value < minimum):
            raise TrainerFlagError(f"--trainer.{name} must be {allowed}, got {value!r}")
    accelerator = trainer.get("accelerator")
    available = available_accelerators() if isinstance(accelerator, str) else []
    if isinstance(accelerator, str) and accelerator not in available:
        known = sorted({"auto", "gpu", *AcceleratorRegistry.available_accelerators()})
        here = ", ".join(available)
        if accelerator in known:
            raise TrainerFlagError(
                f"--trainer.accelerator {accelerator}: this machine has none; available here: "
                f"{here}"
            )
        raise TrainerFlagError(
            f"--trainer.accelerator must be one of {', '.join(known)} (available here: "
            f"{here}), got {accelerator!r}"
        )
    interval = trainer.get("val_check_interval")
    if _is_int(interval) and interval < 1:
        raise TrainerFlagError(
            "--trainer.val_check_interval must be an integer >= 1 (evaluate after every N "
            "training blocks), a fraction of an epoch in [0.0, 1.0] or a duration "
            f"DD:HH:MM:SS, got {interval!r}"
        )


def training_batches(blocks: int, limit: int | float) -> int:
    """The training batches of an epoch: the loader's ``blocks`` under ``limit_train_batches``
    (or ``overfit_batches``), an int a count, a float a fraction, as Lightning counts them."""
    return min(blocks, limit) if _is_int(limit) else int(blocks * limit)


def check_evaluation_interval(trainer: Any, blocks: int, steps: int) -> None:
    """Refuse an integer ``val_check_interval`` above the training batches of an epoch.

    ``blocks`` is the number of blocks the training loader yields in an epoch and
    ``steps`` the SGD steps they hold. Lightning evaluates after every N loader batches
    within an epoch, so N cannot exceed the epoch's batches unless
    ``check_val_every_n_epoch`` is null (N counted across epochs) or evaluation is off.
    """
    interval = trainer.val_check_interval
    if not _is_int(interval) or trainer.check_val_every_n_epoch is None:
        return
    if trainer.limit_val_batches == 0 or trainer.limit_train_batches == 0:
        return
    batches = training_batches(blocks, trainer.limit_train_batches)
    if batches == 0 or interval <= batches:
        return
    limit = trainer.limit_train_batches
    flag = "overfit_batches" if trainer.overfit_batches > 0 else "limit_train_batches"
    limited = "" if batches == blocks else f", {batches} of them under --trainer.{flag} {limit}"
    raise TrainerFlagError(
        f"--trainer.val_check_interval counts training blocks and must be at most {batches}, "
        f"the blocks of an epoch ({blocks}: --data.evaluations_per_epoch, at most one per "
        f"step of the {steps}{limited}), unless --trainer.check_val_every_n_epoch is null; "
        f"got {interval}"
    )
