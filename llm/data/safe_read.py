"""Reading the files a user hands over (corpora, checkpoints) without trusting them (host side, standard library).

* A path that is not a regular file (a FIFO, a device such as ``/dev/zero``, a socket) is refused before a byte is
  read: a read must neither wait forever for a writer nor run until memory is gone.
* A read stops one byte past the most the caller expects, so that the caller can tell "too large" without reading
  the rest.
* JSON that nests too deeply, or holds an integer of more digits than Python converts, is an :class:`UnreadableJSON`
  like any other malformed JSON, not a RecursionError or ValueError from inside the parser.

The callers turn these into their own one-line errors (DataError, CheckpointError), naming the file.
"""

from __future__ import annotations

import errno
import json
import os
import stat
import sys
from typing import Any

_KINDS = ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
          (stat.S_ISSOCK, "a socket"), (stat.S_ISDIR, "a directory"), (stat.S_ISLNK, "a symbolic link"))


class NotRegularFile(OSError):
    """The path names something other than a regular file; ``kind`` says what (``"a FIFO"``...)."""

    def __init__(self, path: str | os.PathLike, kind: str) -> None:
        super().__init__(f"{os.fspath(path)} is {kind}, not a regular file")
        self.kind = kind


class UnreadableJSON(ValueError):
    """Text that is not JSON this package reads; the message is one line without the file's name."""


def file_kind(mode: int) -> str:
    """What an ``st_mode`` names, as words: "a FIFO", "a character device"..."""
    for test, kind in _KINDS:
        if test(mode):
            return kind
    return "not a regular file"


def check_regular(path: str | os.PathLike) -> None:
    """Raise NotRegularFile unless `path` is (a symbolic link to) a regular file or a directory (the caller's to
    refuse); the OSError of ``stat`` when it cannot be looked at."""
    mode = os.stat(path).st_mode
    if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
        raise NotRegularFile(path, file_kind(mode))


def read_regular(path: str | os.PathLike, limit: int | None = None) -> bytes:
    """The bytes of regular file `path` (a symbolic link to one is followed), at most ``limit + 1`` of them.

    Raises NotRegularFile for anything else (IsADirectoryError for a directory), or the OSError of the open/read.
    """
    # O_NONBLOCK: opening a FIFO must not wait for a writer (it changes nothing for a regular file)
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    with os.fdopen(fd, "rb") as f:
        mode = os.fstat(fd).st_mode
        if stat.S_ISDIR(mode):
            raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), os.fspath(path))
        if not stat.S_ISREG(mode):
            raise NotRegularFile(path, file_kind(mode))
        return f.read() if limit is None else f.read(max(limit, 0) + 1)  # read(-1) would read it all


def parse_json(text: str | bytes) -> Any:
    """``json.loads``, with every way it can fail on untrusted text turned into :class:`UnreadableJSON`."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        what = exc.msg.removesuffix(" at")  # "Invalid control character at": the position follows, said once
        raise UnreadableJSON(f"{what} at line {exc.lineno}, column {exc.colno}") from None
    except UnicodeDecodeError:  # bytes that are not text: the caller, which decoded nothing, says so
        raise
    except RecursionError:  # "[[[[..." deeper than Python's stack
        raise UnreadableJSON("arrays or objects nested too deeply to read") from None
    except ValueError:  # an integer longer than int() converts (Python >= 3.11: sys.get_int_max_str_digits())
        limit = getattr(sys, "get_int_max_str_digits", lambda: 0)()
        longer = f" of more than {limit} digits" if limit else ""
        raise UnreadableJSON(f"an integer{longer} too long to read") from None


__all__ = ["NotRegularFile", "UnreadableJSON", "check_regular", "file_kind", "parse_json", "read_regular"]
