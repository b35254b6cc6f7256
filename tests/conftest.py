"""Shared fixtures and helpers: the real MNIST files, built once per machine, and no network."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from mnist_linear import sweep, workers
from mnist_linear.cli import main
from mnist_linear.data import MNISTSubsetDataModule
from mnist_linear.mnist_files import ensure_mnist

# Deterministic cuBLAS needs this set before its first call in the process; Lightning sets
# it only when a deterministic Trainer is made, which in a test session may come later.
os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")

REPO = Path(__file__).resolve().parents[1]
LOOPBACK = ("127.0.0.1", "::1", "localhost")
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


@pytest.fixture(autouse=True)
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail any test that tries to reach another machine."""

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
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / "mnist-linear" / "data"


@pytest.fixture(scope="session")
def mnist_root() -> Path:
    """A data folder holding the four canonical raw files (:func:`data_cache`).

    Tests that change files work on :func:`mnist_copy`, never on this folder.
    """
    root = data_cache()
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
    """The run's TensorBoard event files, read whole (every scalar and image kept)."""
    accumulator = EventAccumulator(str(folder), size_guidance={"scalars": 0, "images": 0})
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


def run_train(
    *args: str, root: Path, mnist: Path, timeout: float = 240
) -> subprocess.CompletedProcess:
    """``python train.py ARGS`` as a user types it, writing under ``root``, data from ``mnist``."""
    command = [
        sys.executable,
        str(REPO / "train.py"),
        *args,
        f"--data.data_dir={mnist}",
        f"--trainer.default_root_dir={root}",
        "--trainer.enable_progress_bar=false",
    ]
    return subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=timeout)


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
