"""Writing files so that a reader never sees half of one."""

from __future__ import annotations

import contextlib
import errno
import os
import tempfile
from collections.abc import Iterable
from pathlib import Path

# The disk or the user's quota is full, or a file passed the size limit (ulimit -f): not bad
# input, and not a fault of the folder either.
NO_ROOM = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})


def current_umask() -> int:
    """The process's umask, which can only be read by setting it."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: str | os.PathLike, chunks: Iterable[bytes]) -> None:
    """Write ``chunks`` to ``path`` through a temporary file in the same folder and a rename.

    A reader sees the old file or the whole new one, never a prefix: an interrupted
    writer leaves at most a hidden ``.tmp`` file behind, which nothing reads. The file
    gets the mode a plain ``open()`` would give it (0644 under umask 022), not the
    0600 of :func:`tempfile.mkstemp`. An ``OSError`` (a full disk, say) names ``path``
    as its ``filename``, whichever step failed.
    """
    path = Path(path)
    try:
        _write_and_rename(path, chunks)
    except OSError as error:
        if error.errno is None:
            raise
        # OSError(errno, ...) is the subclass of that errno: FileNotFoundError stays one.
        raise OSError(error.errno, error.strerror, str(path)) from error


def _write_and_rename(path: Path, chunks: Iterable[bytes]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.chmod(tmp, 0o666 & ~current_umask())
        with os.fdopen(fd, "wb") as f:
            for chunk in chunks:
                f.write(chunk)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """:func:`atomic_write_bytes` for UTF-8 text."""
    atomic_write_bytes(path, [text.encode("utf-8")])
