"""The lock that keeps two training runs from writing checkpoints to one destination: ``.NAME.lock`` beside it.

The lock file is opened without following a symbolic link and must be a regular file, so that taking the lock never
writes through a link (or blocks on a FIFO) someone left there.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from llm.data.safe_read import file_kind
from llm.errors import CheckpointError
from llm.checkpoint._common import _os_reason
from llm.checkpoint.writer import _ANOTHER, _target


class CheckpointLock:
    """An exclusive lock on a checkpoint destination, held by one training run: ``.NAME.lock`` beside it.

    The lock is ``flock`` on that file, so the kernel releases it when the process dies (even by kill -9): a lock
    file left behind never blocks the next run. :meth:`release` (or leaving the ``with`` block) removes it.
    """

    def __init__(self, path: Path, fd: int | None) -> None:
        self.path, self._fd = path, fd

    def release(self) -> None:
        if self._fd is None:
            return
        try:  # unlink while still holding it: a run that opened the old file sees it is gone and retries
            os.unlink(self.path)
        except OSError:
            pass
        os.close(self._fd)
        self._fd = None

    def __enter__(self) -> "CheckpointLock":
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def lock_destination(path: str | os.PathLike) -> CheckpointLock:
    """Take the lock that keeps two runs from writing checkpoints to the same `path` (raises CheckpointError if held).

    Where ``fcntl`` is missing (Windows) nothing is locked.
    """
    try:
        import fcntl
    except ImportError:
        return CheckpointLock(Path(os.devnull), None)
    target = Path(os.path.realpath(os.path.abspath(_target(path))))  # every spelling of one directory: one lock
    lock_path = target.parent / f".{target.name}.lock"
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise CheckpointError(f"cannot save a checkpoint to {path}: {_os_reason(exc)} "
                              f"({exc.filename or target.parent}); choose a directory you can write to") from None
    while True:
        fd = _open_lock_file(lock_path)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            try:
                holder = os.pread(fd, 64, 0).decode("ascii", "replace").strip()
            except OSError:
                holder = ""
            os.close(fd)
            who = f" (process {holder})" if holder.isdigit() else ""
            raise CheckpointError(f"another run{who} is writing checkpoints to {target} (it holds {lock_path}); "
                                  f"wait for it to finish, stop it, or {_ANOTHER}", param="out") from None
        try:
            same = os.fstat(fd).st_ino == os.lstat(lock_path).st_ino
        except OSError:
            same = False
        if not same:  # released and removed between our open and our lock: take the new file instead
            os.close(fd)
            continue
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode("ascii"), 0)
        except OSError:
            pass
        return CheckpointLock(lock_path, fd)


def _open_lock_file(lock_path: Path) -> int:
    """The lock file, opened (created if missing) without following a symbolic link: a link or anything else that
    is not a regular file there is refused, so that taking the lock never writes through it."""
    flags = os.O_RDWR | os.O_CREAT | os.O_NONBLOCK | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
    refuse = (f"cannot lock {lock_path}: it is not a regular file (%s), and a lock must never write through it; "
              "remove it or choose another destination (out)")
    try:
        fd = os.open(lock_path, flags, 0o666)
    except OSError as exc:
        if os.path.islink(lock_path):  # O_NOFOLLOW: ELOOP on Linux, EMLINK on some BSDs
            raise CheckpointError(refuse % "a symbolic link", param="out") from None
        raise CheckpointError(f"cannot lock {lock_path}: {_os_reason(exc)}; choose a destination (out) in a "
                              "directory you can write to", param="out") from None
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):  # a FIFO, a device, a socket
        os.close(fd)
        raise CheckpointError(refuse % file_kind(mode), param="out")
    return fd
