"""Reading small metadata files (leases, records, manifests) without trusting what is on disk.

A store is a folder anybody can write into, so a file where hepc expects a small JSON document may
be a FIFO (an open() would wait forever for a writer), a device (/dev/zero never ends), a folder,
a huge file, or not UTF-8. `read_small` opens without blocking, accepts regular files only, and
reads at most `limit` bytes; every refusal is an OSError (or ValueError for size and decoding)
that callers already treat as "unreadable".

OSError messages for the user are built by `os_error_message`: "disk full at PATH", "read-only
file system at PATH", "permission denied at PATH", rather than raw errno text or a traceback.
"""

from __future__ import annotations

import errno
import json
import os
import re
import stat
from pathlib import Path
from typing import BinaryIO


class NotRegularFile(OSError):
    """The path is a FIFO, device, socket or folder where a regular file was expected."""


class TooLarge(ValueError):
    """The file is larger than the caller's bound."""


_FILE_KINDS = (
    (stat.S_ISDIR, "a directory"),
    (stat.S_ISFIFO, "a FIFO"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
)


def file_kind(mode: int) -> str:
    """What a path is when it is not a regular file, for messages ("is a FIFO, not a …")."""
    return next((kind for test, kind in _FILE_KINDS if test(mode)), "not a regular file")


def not_a_file(path: str | os.PathLike) -> str:
    """Why `path` cannot be read as a file, for messages: "no such file", "is a folder, not a file", "is a FIFO, not a regular file"."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return "no such file" if not os.path.lexists(path) else "no such file (a link to nothing)"
    except OSError as e:
        return f"cannot be read ({e.strerror or type(e).__name__})"
    if stat.S_ISDIR(mode):
        return "is a folder, not a file"
    return f"is {file_kind(mode)}, not a regular file"


def open_regular(path: str | os.PathLike) -> BinaryIO:
    """`path` opened for binary reading, never blocking; NotRegularFile unless it is a regular file.

    Opened with O_NONBLOCK (a FIFO would otherwise wait for a writer) and checked with fstat on the
    open descriptor, so a file swapped for something else after it was listed is caught too."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise NotRegularFile(errno.EINVAL, f"is {file_kind(mode)}, not a regular file", str(path))
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def read_small(path: str | os.PathLike, limit: int) -> bytes:
    """The bytes of the regular file `path`, at most `limit` of them (TooLarge beyond)."""
    with open_regular(path) as f:
        size = os.fstat(f.fileno()).st_size
        if size > limit:
            raise TooLarge(f"{path}: {size:,} bytes, larger than {limit:,}")
        data = f.read(limit + 1)  # a file growing meanwhile is still bounded
    if len(data) > limit:
        raise TooLarge(f"{path}: larger than {limit:,} bytes")
    return data


def read_json(path: str | os.PathLike, limit: int = 16 << 20):
    """A JSON document from a regular file of at most `limit` bytes (OSError / ValueError otherwise)."""
    return json.loads(read_small(path, limit).decode("utf-8"))


DISK_FULL = (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC))
DISK_FULL_OR_READ_ONLY = (*DISK_FULL, errno.EROFS)  # the disk, not the step or the data: nothing to blame there


def os_error_behind(e: BaseException | None) -> OSError | None:
    """The first OSError in `e`'s chain of causes (itself included), or None."""
    seen = set()
    while e is not None and id(e) not in seen:
        if isinstance(e, OSError):
            return e
        seen.add(id(e))
        e = e.__cause__ or e.__context__
    return None


def os_error_message(e: OSError, store_root: Path | None = None) -> str:
    """One readable line for an OSError the user can act on (the path first, then what is wrong)."""
    where = e.filename if e.filename is not None else (str(store_root) if store_root else "?")
    if e.errno in DISK_FULL:
        return f"disk full at {where}"
    if e.errno == errno.EROFS:
        inside = store_root is not None and _inside(where, store_root)
        what = f"store is read-only ({store_root})" if inside else "read-only file system"
        return f"{what}: cannot write {where}"
    if e.errno in (errno.EACCES, errno.EPERM):
        return f"permission denied at {where}"
    return f"{where}: {e.strerror or e}"


def _inside(path, root: Path) -> bool:
    try:
        real, base = os.path.realpath(path), os.path.realpath(root)
    except (OSError, ValueError):
        return False
    return real == base or real.startswith(base.rstrip(os.sep) + os.sep)


_SHORT_WRITE = re.compile(r"^\d+ requested and \d+ written$")  # numpy's tofile/save on a full disk (no errno)


def disk_error(e: BaseException, where: Path | None = None) -> OSError | None:
    """The OSError behind `e` if the disk is full or read-only (also when a writer wraps it). A short write
    without an errno (numpy's "N requested and M written") is a full disk at `where`."""
    found = os_error_behind(e)
    if found is None:
        return None
    if found.errno in DISK_FULL_OR_READ_ONLY:
        return found
    if found.errno is None and _SHORT_WRITE.match(str(found)):
        return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(where) if where is not None else None)
    return None
