"""Where a run writes: a folder of its own, claimed before anything is written.

Every run writes into ``<save_dir>/<name>/version_N``, claimed with ``os.mkdir``: two
runs started at the same moment in one folder get two versions. A run resumed from a
checkpoint inside its own run folder continues in that folder. A logger's ``version``
may name a folder, but never one that holds another run. A run refused before it
trains removes the folder it made, and the folders made to hold it.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import time
from pathlib import Path
from typing import Any

from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_only

from mnist_linear.files import NO_ROOM
from mnist_linear.locks import LOCK, alive, describe, flocked, holders, ours, this_owner
from mnist_linear.run import AtomicTensorBoardLogger

VERSION_PREFIX = "version_"


def after_event_files(folder: Path) -> None:
    """Return once an event file made now would be read after ``folder``'s (at most 2 s).

    TensorBoard reads a folder's event files in the order of their names, which start
    with the second the file was made, then the host and the process ID. A resume made
    in the second its run's file was made could sort first, and its purge would then
    hide everything the interrupted run logged.
    """
    seconds = [int(p.name.split(".")[3]) for p in folder.glob("events.out.tfevents.*")
               if p.name.split(".")[3].isdigit()]  # fmt: skip
    wait = max(seconds, default=0) + 1 - time.time()
    if 0 < wait <= 2:  # a file dated further ahead is another clock's: not waited for
        time.sleep(wait)


_held: list[tuple[Path, int]] = []  # run folders this process holds, with their lock's fd


def let_go() -> None:
    """Release the run folders this process holds; train.py calls it as it ends."""
    while _held:
        run, fd = _held.pop()
        with contextlib.suppress(FileNotFoundError):
            (run / LOCK).unlink()
        os.close(fd)  # and with it the flock


class RunFolderError(ValueError):
    """A run folder that cannot be made or used; the message names the option."""


def launched_as_rank_zero() -> bool:
    """Whether this process is, or will be, global rank zero, before the Trainer knows it.

    Lightning's ``rank_zero_only.rank`` is read from ``RANK``, ``LOCAL_RANK`` or
    ``SLURM_PROCID`` on import; on nodes started by hand every node's ``LOCAL_RANK`` is
    0, and only ``NODE_RANK`` tells them apart.
    """
    node = os.environ.get("NODE_RANK") or os.environ.get("GROUP_RANK") or "0"
    return rank_zero_only.rank == 0 and ("RANK" in os.environ or int(node) == 0)


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


class RunFolder:
    """The folder one run writes into: claimed for it, or the run folder it resumes.

    Settled before the Trainer is made, so that everything the run writes has its
    place, and by rank zero only: the other processes learn it through Lightning. A
    configured ``TensorBoardLogger`` or ``CSVLogger`` writes into its
    ``save_dir/name/version`` (:meth:`for_logger`); otherwise the run logs to
    ``lightning_logs/version_N`` under ``default_root_dir`` (:meth:`trainer_arguments`).
    Either way, a resume from a checkpoint inside a run folder continues in that folder.

    Args:
        resumed_in: The run folder of the checkpoint the run resumes from, if any.
    """

    def __init__(self, resumed_in: Path | None = None) -> None:
        self.resumed_in = resumed_in
        self.path: Path | None = None
        self.claimed = False  # path is a new folder this process made
        self.made: Path | None = None  # the outermost folder made to hold it

    @property
    def resumed_here(self) -> bool:
        """Whether the run continues in the folder of the checkpoint it resumes from."""
        return self.path is not None and self.resumed_in == self.path.resolve()

    def for_logger(
        self, save_dir: str | os.PathLike, name: str | None, version: int | str | None
    ) -> int | str:
        """Settle the folder of a configured logger; the ``version`` that makes it write there.

        Without a version, a resume inside this logger's own folder continues there, and
        a new run claims the next ``version_N``. A version naming a folder that holds
        another run is refused, unless the run resumes that very folder.
        """
        name = name or "lightning_logs"
        if (
            version is None
            and self.resumed_in is not None
            and self.resumed_in.parent == Path(save_dir, name).resolve()
        ):
            self.path = self.resumed_in
            return logger_version(self.path)
        if version is not None:
            folder = named_run_folder(save_dir, name, version)
            if holds_a_run(folder) and folder.resolve() != self.resumed_in:
                raise RunFolderError(
                    f"--trainer.logger.version {version}: {folder} holds another run "
                    "(its config.yaml, checkpoints or results.json), and a run never "
                    "writes into another run's folder; resume that run with --ckpt_path "
                    f"{folder / 'checkpoints' / 'last.ckpt'}, or give another version"
                )
            self.made = first_missing(folder)
        else:
            self.made = first_missing(Path(save_dir, name))
        self._claim("--trainer.logger.save_dir", save_dir, name, version)
        return logger_version(self.path)

    def trainer_arguments(
        self,
        logger: Any,
        logger_args: dict[str, Any],
        root: str | os.PathLike,
        purge_step: int | None,
    ) -> dict[str, Any]:
        """The Trainer's arguments that make the run write into this folder.

        ``logger`` is the Trainer's, as configured: ``None`` or ``True`` for the default
        TensorBoard logger, which this folder's ``version_N`` under ``root`` gets;
        ``False`` for none, the folder then being ``default_root_dir``; otherwise a
        configured logger (with its ``logger_args``), whose folder :meth:`for_logger`
        settled. A resumed run's TensorBoard log starts at ``purge_step``, hiding what the
        interrupted run logged after its checkpoint.
        """
        purge = {} if purge_step is None else {"purge_step": purge_step}
        if logger not in (None, True, False):
            if isinstance(logger, TensorBoardLogger) and self.resumed_here:
                if purge and self.path is not None:
                    after_event_files(self.path)
                return {"logger": TensorBoardLogger(**{**logger_args, **purge})}
            return {}
        if self.resumed_in is not None:
            self.path = self.resumed_in
            if purge and logger is not False:
                after_event_files(self.path)
        elif launched_as_rank_zero():  # rank zero's folder reaches the others through Lightning
            self.made = first_missing(Path(root, "lightning_logs"))
            self._claim("--trainer.default_root_dir", root)
        if logger is False:
            return {} if self.path is None else {"default_root_dir": str(self.path)}
        run = self.path or Path(root, "lightning_logs", "unclaimed")
        version = None if self.path is None else logger_version(run)
        return {
            "logger": AtomicTensorBoardLogger(
                run.parents[1], run.parent.name, version, default_hp_metric=False, **purge
            )
        }

    def _claim(
        self,
        option: str,
        save_dir: str | os.PathLike,
        name: str = "lightning_logs",
        version: int | str | None = None,
    ) -> None:
        try:
            self.path, self.claimed = claim_run_folder(save_dir, name, version)
        except OSError as error:
            if error.errno in NO_ROOM:
                raise
            where = error.filename or Path(save_dir, name)
            raise RunFolderError(
                f"{option}: cannot make a run folder in {where}: {error.strerror}"
            ) from None

    def hold(self) -> None:
        """Hold the run folder while this process writes into it: ``<run>/.lock``, named
        by this process and ``flock``-ed until it ends (:func:`let_go`, or its death).

        Two processes writing into one folder at once (a run and a resume of it, two
        resumes, two runs given one logger ``version``) would write into each other's
        files: the later is refused in one line and removes nothing, even where it made
        the folder. A lock whose process ended (a run killed outright) holds no flock and
        is taken over. A folder whose lock names this process or its parent (a sweep's
        worker, the process it starts for a DDP run) is its own already; a live sweep's
        lock, which sweeps do not flock, refuses the run like any other.
        """
        run = self.path
        if run is None or not run.is_dir():
            return
        if not launched_as_rank_zero():
            return
        if ours(holders(run)):
            return
        fd = flocked(run)
        held = holders(run)
        if fd is None or (held and any(alive(h) for h in held) and not ours(held)):
            if fd is not None:  # a sweep's lock, which sweeps do not flock
                os.close(fd)
            self.claimed = False  # made by this process or not, the folder is the other's
            version = f"--trainer.logger.version {logger_version(run)}"
            option = "--ckpt_path" if self.resumed_here else version
            raise RunFolderError(
                f"{option}: the run folder {run} is being written by "
                f"{describe(held[0]) if held else 'another process'}; wait for it to end"
            )
        os.ftruncate(fd, 0)  # a lock left by a process that ended is taken over
        os.pwrite(fd, (this_owner() + "\n").encode(), 0)
        _held.append((run, fd))

    def discard(self) -> None:
        """Remove the folder this process claimed for a run refused before training.

        Only a folder it made itself and that holds no checkpoint: never a resumed run's
        folder, never one named by a logger's version that was there before (a sweep's).
        The folders made to hold it (``lightning_logs``, a new ``default_root_dir``) go
        too, if empty.
        """
        run, claimed, self.claimed = self.path, self.claimed, False
        if not claimed or run is None or not run.is_dir() or any(run.glob("checkpoints/*.ckpt")):
            return
        shutil.rmtree(run, ignore_errors=True)
        if self.made is not None:
            for folder in (run.parent, *run.parent.parents):
                with contextlib.suppress(OSError):  # not empty: another run's
                    folder.rmdir()
                if folder == self.made:
                    break
