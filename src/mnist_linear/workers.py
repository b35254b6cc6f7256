"""A sweep's worker processes: each imports torch and Lightning once and trains run after run.

A worker is the single process of a :class:`~concurrent.futures.ProcessPoolExecutor`
(:func:`worker_pool`), forked from a fork server that holds the imports (:func:`context`).
:func:`train` runs one run as ``train.py`` would, in the worker: its own Trainer, its own
folder, what it prints in its ``train.log``, its own seed. A run starts from the state a
new process has and leaves nothing to the next (:func:`fresh_state`). A run whose
strategy starts processes of its own (DDP) is trained by ``python -m mnist_linear.cli``
as a child, since Lightning starts those processes by running the main script again.

Signals: a worker ignores SIGINT between runs; during a run, SIGINT stops the training
as Ctrl-C stops ``train.py`` (Lightning's graceful shutdown, the ``last.ckpt`` of the
last finished epoch kept). The sweep sends it to the process named in the run's lock.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import random
import signal
import subprocess
import sys
import threading
import time
import traceback
import warnings
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

from mnist_linear.locks import add_process, alive, this_owner

NOT_STARTED = None  # train's result for a run the sweep stopped before it began
_stop: Any = None  # the sweep's multiprocessing Event: no run starts once it is set
_fresh: dict[str, Any] = {}  # the random states of a new process
_busy = threading.Event()


def context() -> multiprocessing.context.BaseContext:
    """The workers' start method: ``forkserver`` where there is one, else ``spawn``.

    The fork server is a new process that imports train.py's modules once (torch and
    Lightning among them, seconds), and each worker is a fork of it, ready at once; it
    serves every sweep of the process that started it, and starts no thread or GPU
    context that a fork could copy. Under ``spawn`` each worker imports them itself.
    """
    if "forkserver" not in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("spawn")
    server = multiprocessing.get_context("forkserver")
    server.set_forkserver_preload(["mnist_linear.cli"])
    return server


def worker_pool(stop: Any) -> ProcessPoolExecutor:
    """One worker process; :func:`train` runs in it. ``stop``: the sweep's Event."""
    return ProcessPoolExecutor(
        max_workers=1, mp_context=context(), initializer=_start, initargs=(stop, this_owner())
    )


def _start(stop: Any, sweep: str) -> None:
    global _stop
    _stop = stop
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a terminal's Ctrl-C: the sweep decides
    import mnist_linear.cli  # noqa: F401  (the imports a run needs, once per worker)

    remember_fresh_state()
    threading.Thread(target=_watch_sweep, args=(sweep,), daemon=True).start()


def remember_fresh_state() -> None:
    """Keep this process's environment and random states, for :func:`fresh_state`."""
    import numpy as np
    import torch

    _fresh.update(torch=torch.get_rng_state(), numpy=np.random.get_state(),
                  python=random.getstate(), environ=dict(os.environ))  # fmt: skip


def _watch_sweep(sweep: str) -> None:
    # A sweep killed outright (SIGKILL) leaves its workers waiting for work that never
    # comes: once the sweep is gone, a worker ends when its run, if any, has ended.
    while True:
        time.sleep(1)
        if not alive(sweep) and not _busy.is_set():
            os._exit(0)


def train(arguments: list[str], folder: str, owner: str) -> int | None:
    """Train one run of a sweep in this worker, as ``train.py ARGUMENTS`` would.

    ``folder`` is the run folder, whose ``.lock`` ``owner`` (the sweep) holds: this
    process adds itself there before it starts, so that the sweep can stop it. Returns
    the exit code ``train.py`` would have had (130 when interrupted outside the
    training), or :data:`NOT_STARTED` when the sweep stopped first.
    """
    _busy.set()
    try:
        if _stop.is_set():
            return NOT_STARTED
        add_process(Path(folder), owner)
        if _stop.is_set():  # the sweep may have read the lock just before it was written
            return NOT_STARTED
        with fresh_state(Path(folder) / "train.log"):
            return _run(arguments)
    finally:
        _busy.clear()


def _run(arguments: list[str]) -> int:
    from mnist_linear.cli import fit_reporting_errors, make_cli

    try:
        signal.signal(signal.SIGINT, signal.default_int_handler)
        cli = make_cli(arguments)
        if cli.trainer.strategy.launcher is None:
            fit_reporting_errors(cli)
            return 0
        cli.discard_run_folder()
        return _child(arguments)
    except SystemExit as done:
        if done.code is None or isinstance(done.code, int):
            return done.code or 0
        print(done.code, file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("Interrupted.", file=sys.stderr)
        return 130
    except BaseException:
        traceback.print_exc()
        return 1
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)


def _child(arguments: list[str]) -> int:
    """``python -m mnist_linear.cli ARGUMENTS`` in a session of its own; SIGINT forwarded."""
    command = [sys.executable, "-m", "mnist_linear.cli", *arguments]
    child = subprocess.Popen(command, start_new_session=True)
    try:
        return child.wait()
    except KeyboardInterrupt:
        os.killpg(child.pid, signal.SIGINT)
        return child.wait()


@contextlib.contextmanager
def fresh_state(log: Path | None = None) -> Iterator[None]:
    """Run a training as if in a new process of this worker, what it prints going to ``log``.

    Inside: the environment and random states the worker started with, ``sys.argv``
    without arguments, and, with a ``log``, standard output and error (the file
    descriptors, so Lightning's and torch's output too) appended to it. After,
    everything a run changes for its process is put back as it was: the environment
    (Lightning sets ``PL_GLOBAL_SEED`` and ``OMP_NUM_THREADS``), torch's threads,
    deterministic mode, default dtype and cuDNN flags, the warning filters, the loggers'
    levels, filters and handlers, and Lightning's rank. The messages that Lightning
    shows once per process (its module-level ``WarningCache`` objects, Python's warning
    registries) are shown again by the next run.
    """
    import numpy as np
    import torch
    from lightning.pytorch.utilities import rank_zero_only

    environ, argv = dict(os.environ), sys.argv
    saved_torch = (
        torch.get_num_threads(),
        torch.are_deterministic_algorithms_enabled(),
        torch.is_deterministic_algorithms_warn_only_enabled(),
        torch.get_default_dtype(),
        torch.backends.cudnn.benchmark,
        torch.backends.cudnn.deterministic,
    )
    loggers = [logging.getLogger(), *(logging.getLogger(name) for name in
                                      list(logging.Logger.manager.loggerDict))]  # fmt: skip
    saved_loggers = [(lg, lg.level, list(lg.filters), list(lg.handlers), lg.propagate,
                      lg.disabled) for lg in loggers]  # fmt: skip
    rank = getattr(rank_zero_only, "rank", 0)
    os.environ.clear()
    os.environ.update(_fresh["environ"])
    torch.set_rng_state(_fresh["torch"])
    np.random.set_state(_fresh["numpy"])
    random.setstate(_fresh["python"])
    sys.argv = argv[:1]
    try:
        with warnings.catch_warnings(), _output_to(log) if log else contextlib.nullcontext():
            yield
    finally:
        sys.argv = argv
        os.environ.clear()
        os.environ.update(environ)
        threads, deterministic, warn_only, dtype, benchmark, cudnn_deterministic = saved_torch
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(deterministic, warn_only=warn_only)
        torch.set_default_dtype(dtype)
        torch.backends.cudnn.benchmark = benchmark
        torch.backends.cudnn.deterministic = cudnn_deterministic
        for lg, level, filters, handlers, propagate, disabled in saved_loggers:
            lg.setLevel(level)
            lg.filters[:] = filters
            lg.handlers[:] = handlers
            lg.propagate, lg.disabled = propagate, disabled
        rank_zero_only.rank = rank
        _forget_shown_messages()


@contextlib.contextmanager
def _output_to(log: Path) -> Iterator[None]:
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    with open(log, "ab") as file:
        os.dup2(file.fileno(), 1)
        os.dup2(file.fileno(), 2)
        try:
            yield
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            for fd in saved:
                os.close(fd)


def _forget_shown_messages() -> None:
    """Empty the message caches of Lightning's modules, so the next run shows them again.

    The one use of Lightning's internals here: ``warning_cache`` objects at module
    level (``WarningCache``, a set of the messages shown). A test fails if Lightning
    stops keeping them there.
    """
    from lightning_utilities.core.rank_zero import WarningCache

    for name, module in list(sys.modules.items()):
        if name.startswith(("lightning", "torchmetrics")) and module is not None:
            for value in list(vars(module).values()):
                if isinstance(value, WarningCache):
                    value.clear()
