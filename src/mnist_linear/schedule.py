"""Training a sweep's runs: in worker processes, each run claimed first, signals forwarded.

:func:`train_all` trains the runs of a sweep's folder that have no results.json, one per
worker (:mod:`mnist_linear.workers`) at a time. Each run is claimed with a ``.lock``
(:mod:`mnist_linear.locks`) so that two sweeps at once train it once; a run another
sweep holds is waited for. SIGINT and SIGTERM stop the trainings as Ctrl-C stops
train.py, and no run starts after them.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import time
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from pathlib import Path

from mnist_linear.grid import Run
from mnist_linear.locks import LOCK, claim, describe, holders, release, this_owner
from mnist_linear.workers import NOT_STARTED, context, train, worker_pool


def prepare(folder: Path) -> list[str]:
    """Ready a claimed run's folder; ``--ckpt_path`` of its last.ckpt when it has one.

    A run that never reached a checkpoint starts again: its folder is emptied, but for
    the claim.
    """
    last = folder / "checkpoints" / "last.ckpt"
    if last.is_file():
        return [f"--ckpt_path={last}"]
    for path in folder.iterdir():
        if path.is_dir():
            shutil.rmtree(path)
        elif path.name != LOCK:
            path.unlink()
    return []


def results_of(folder: Path) -> dict | None:
    try:
        return json.loads((folder / "results.json").read_text())
    except (OSError, ValueError):
        return None


KILLED = -1  # a run whose worker process ended in the middle of it


@dataclass
class Progress:
    """What :func:`train_all` did: runs that failed, finished by another sweep, signals."""

    failed: list[Run] = field(default_factory=list)
    by_others: list[Run] = field(default_factory=list)
    signals: list[int] = field(default_factory=list)


class Workers:
    """``jobs`` worker processes (:func:`~mnist_linear.workers.worker_pool`), one run each.

    A worker that dies in the middle of a run takes that run only: it is replaced by a
    new one. ``stop`` is set when the sweep is told to stop; no run starts after that.
    """

    def __init__(self, jobs: int) -> None:
        self.stop = context().Event()
        self.pools = [worker_pool(self.stop) for _ in range(jobs)]
        for pool in self.pools:  # start them now: their imports overlap
            pool.submit(int)

    def replace(self, index: int) -> None:
        self.pools[index].shutdown(wait=False)
        self.pools[index] = worker_pool(self.stop)

    def shutdown(self) -> None:
        self.stop.set()
        for pool in self.pools:
            pool.shutdown(wait=True, cancel_futures=True)


def train_all(
    folder: Path,
    runs: list[Run],
    arguments: Callable[[Run], list[str]],
    workers: Workers,
    threads: int,
) -> Progress:
    """Train the runs in ``folder`` without results.json, one per worker at a time.

    Each run is claimed first; ``arguments`` gives its train.py arguments, ``threads``
    is the number of threads they give it.

    A run another live sweep holds is waited for: when its lock goes, it is done (its
    results.json is there) or this sweep claims and trains it. On SIGINT or SIGTERM no
    run starts, and each running training gets SIGINT, which stops it as Ctrl-C stops
    train.py.
    """
    todo = [run for run in runs if results_of(folder / run.name) is None]
    jobs = len(workers.pools)
    print(f"{len(runs) - len(todo)} of {len(runs)} runs done already; {len(todo)} to train, "
          f"{jobs} at a time, {threads} thread(s) each.",
          flush=True)  # fmt: skip
    guard = folder / ".claims"
    guard.parent.mkdir(parents=True, exist_ok=True)
    running: dict[Future, tuple[Run, int, float]] = {}
    free = list(range(jobs))
    waiting: set[Run] = set()
    progress, finished, total, owner = Progress(), 0, len(todo), this_owner()

    def interrupt_trainings() -> None:
        workers.stop.set()
        for run, _, _ in running.values():
            for holder in holders(folder / run.name)[1:]:
                with contextlib.suppress(ProcessLookupError, ValueError):
                    os.kill(int(holder.partition("@")[0]), signal.SIGINT)

    def forward(signum: int, frame: object) -> None:
        progress.signals.append(signum)
        interrupt_trainings()

    previous = {sig: signal.signal(sig, forward) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        while (todo and not progress.signals) or running:
            for run in list(todo):
                if not free or progress.signals:
                    break
                place = folder / run.name
                held_by = claim(place, guard)
                if held_by is not None:
                    if run not in waiting:
                        waiting.add(run)
                        print(f"{run.name}: being trained by {describe(held_by)} (another "
                              f"sweep); waiting for it. If no sweep runs there (one that "
                              f"crashed on another host), remove {place / LOCK} and this "
                              "sweep trains it.", flush=True)  # fmt: skip
                    continue
                todo.remove(run)
                if results_of(place) is not None:  # the other sweep finished it
                    release(place)
                    progress.by_others.append(run)
                    finished += 1
                    print(f"[{finished}/{total}] {run.name}: trained by another sweep",
                          flush=True)  # fmt: skip
                    continue
                command = [*arguments(run), *prepare(place)]
                index = free.pop()
                future = workers.pools[index].submit(train, command, str(place), owner)
                running[future] = (run, index, time.perf_counter())
            if not running:
                time.sleep(0.1)
                continue
            done, _ = wait(running, timeout=0.1, return_when=FIRST_COMPLETED)
            for future in done:
                run, index, started = running.pop(future)
                free.append(index)
                release(folder / run.name)
                try:
                    code = future.result()
                except BrokenProcessPool:
                    code = KILLED
                    workers.replace(index)
                finished += 1
                seconds = time.perf_counter() - started
                said = outcome(run, folder / run.name, code, progress)
                print(f"[{finished}/{total}] {run.name}: {said} ({seconds:.1f} s)", flush=True)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if running:  # only if the sweep itself failed
            interrupt_trainings()
            wait(running)
        for run, _, _ in running.values():
            release(folder / run.name)
    return progress


def outcome(run: Run, folder: Path, code: int | None, progress: Progress) -> str:
    """How ``run``'s training in ``folder`` ended, in words; failures go to ``progress.failed``."""
    results = results_of(folder)
    if code == 0 and results is not None:
        return (f"val/acc {100 * results['val/acc']:.2f}%, "
                f"test/acc {100 * results['test/acc']:.2f}%")  # fmt: skip
    if progress.signals:
        if (folder / "checkpoints" / "last.ckpt").is_file():
            return "interrupted; resumes from its last.ckpt"
        if code is NOT_STARTED:
            return "not started"
        return "interrupted before its first checkpoint; starts again"
    progress.failed.append(run)
    if code == KILLED:
        return f"FAILED: its process was killed, see {folder / 'train.log'}"
    return f"FAILED with exit code {code}, see {folder / 'train.log'}"
