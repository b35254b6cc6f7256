"""A run folder claimed by one sweep at a time: ``<run>/.lock``, holding ``PID@host:START``.

(train.py holds the same file while it writes into a run folder, ``flock``-ed as well:
:func:`flocked`, and :meth:`mnist_linear.folders.RunFolder.hold`.)

A sweep claims a run before it trains it and releases it when the training has ended,
so that two sweeps over the same folder never train a run twice. The lock is made
with ``O_CREAT | O_EXCL``, which succeeds in one process only; its first line is the
sweep, and the training's process is added below it (:func:`add_process`), so that a
training left running by a killed sweep still holds the run. A lock none of whose
processes is alive (on this host) is stale: a sweep takes it over by writing its own
lock over it with a rename. The decision that a lock is stale and the take-over happen
while holding ``flock`` on one guard file of the sweep, so two sweeps that find the
same stale lock take it over one after the other, and the second finds the first alive.

A process is named by its PID, its host and, on Linux, its start time (field 22 of
``/proc/PID/stat``, in clock ticks since boot), so that a PID the system has since
given to another process does not keep a lock alive: the process must also have
started at that time. A lock written without start times (by an older sweep, or where
there is no ``/proc``) names a live process only if that process runs Python, as
sweeps and their workers do; a live Python process of that PID still counts, and the
lock is then removed by hand. A lock of another host always counts as alive.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import socket
from pathlib import Path

from mnist_linear.files import atomic_write_text

LOCK = ".lock"


def start_time(pid: int) -> str | None:
    """When process ``pid`` started, in clock ticks since boot; ``None`` where unknown.

    Field 22 of ``/proc/PID/stat``, counted after the command name, which may hold
    spaces and parentheses.
    """
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rpartition(")")[2].split()[19]


def owner(pid: int) -> str:
    """``PID@host:START`` of process ``pid`` of this host, as locks hold it (``PID@host``
    without /proc)."""
    start = start_time(pid)
    return f"{pid}@{socket.gethostname()}" + ("" if start is None else f":{start}")


def this_owner() -> str:
    """:func:`owner` of this process."""
    return owner(os.getpid())


def ours(held: list[str]) -> bool:
    """Whether ``held`` (a lock's holders) names this process or the one that started it
    (a sweep's worker and the process it starts for a DDP run)."""
    return this_owner() in held or owner(os.getppid()) in held


def flocked(folder: Path) -> int | None:
    """``folder``'s lock, opened (made if need be) and ``flock``-ed by this process: its
    file descriptor; ``None`` if another process holds the flock. The flock ends when the
    descriptor is closed, or with the process, however it ends. Sweeps' locks
    (:func:`claim`) are not flock-ed: their holders are read from the file."""
    while True:
        fd = os.open(folder / LOCK, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return None
        try:
            if os.fstat(fd).st_ino == os.stat(folder / LOCK).st_ino:
                return fd
        except FileNotFoundError:
            pass
        os.close(fd)  # its holder removed it as we opened it: open the new one


def holders(folder: Path) -> list[str]:
    """The ``PID@host:START`` of each process in ``folder``'s lock, sweep first; ``[]``: none."""
    try:
        return (folder / LOCK).read_text().split()
    except FileNotFoundError:
        return []


def owner_of(folder: Path) -> str | None:
    """The ``PID@host:START`` of the sweep that holds ``folder``'s lock, or ``None``."""
    return next(iter(holders(folder)), None)


def describe(owner: str) -> str:
    """``PID 1234 on host``: a holder as the sweep's messages name it."""
    pid, _, place = owner.partition("@")
    return f"PID {pid} on {place.partition(':')[0]}"


def alive(owner: str) -> bool:
    """Whether the process named by ``owner`` may still be running.

    On this host: a process of that PID that started at that time; without a start
    time, a process of that PID that runs Python. A process on another host cannot be
    asked, so it counts as alive; so does a lock that names no process (a file this
    module did not write).
    """
    pid, _, place = owner.partition("@")
    host, _, start = place.partition(":")
    if host != socket.gethostname() or not pid.isdigit() or (start and not start.isdigit()):
        return True
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        pass
    if start:
        now = start_time(int(pid))
        return now is None or now == start  # None: it ended just now, or no /proc to ask
    return _runs_python(int(pid))


def _runs_python(pid: int) -> bool:
    """Whether process ``pid`` is a Python interpreter (its argv[0]); ``True`` where unknown."""
    try:
        command = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return True
    return Path(os.fsdecode(command.split(b"\0")[0])).name.startswith("python")


def claim(folder: Path, guard: Path) -> str | None:
    """Claim ``folder`` (made if needed) for this process.

    Returns ``None`` when this process now holds it, else the live owner's
    ``PID@host:START``.
    ``guard`` is a file of the sweep's own folder, locked while a claim is decided.
    """
    folder.mkdir(parents=True, exist_ok=True)
    me = this_owner()
    with open(guard, "a") as held:
        fcntl.flock(held, fcntl.LOCK_EX)  # released when the file closes, or the process dies
        try:
            fd = os.open(folder / LOCK, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666)
        except FileExistsError:
            held = holders(folder)
            if held and held[0] != me and any(alive(holder) for holder in held):
                return held[0]
            atomic_write_text(folder / LOCK, me + "\n")  # stale: take it over
            return None
        with os.fdopen(fd, "w") as lock:
            lock.write(me + "\n")
    return None


def add_process(folder: Path, owner: str) -> None:
    """Name this process, training ``folder`` for ``owner``, in the lock that ``owner`` holds."""
    atomic_write_text(folder / LOCK, f"{owner}\n{this_owner()}\n")


def release(folder: Path) -> None:
    """Remove ``folder``'s lock if this process holds it."""
    if owner_of(folder) == this_owner():
        with contextlib.suppress(FileNotFoundError):
            (folder / LOCK).unlink()
