"""SHA-256 of files, which may be started early, in a background thread.

The command line calls :func:`prefetch` with the files it was given before it
imports NumPy and astropy: hashlib releases the GIL, so the inputs are hashed
on another CPU while the imports run, and the recipe's :func:`sha256_file`
then finds each digest ready.  A prefetched digest is used only for the same
file unchanged (device, inode, size and modification time, at the start and
the end of its reading and when it is asked for); anything else, and any file
the prefetch could not read, is hashed again when asked for.

Standard library only, so that importing this module costs nothing.
"""

from __future__ import annotations

import hashlib
import mmap
import os
import stat
import threading
from pathlib import Path


class _Prefetched:
    """A file queued for hashing; ``done`` is set once ``digest`` is known (or None)."""

    def __init__(self, path: str):
        self.path = path
        self.digest: str | None = None
        self.done = threading.Event()


# (device, inode, size, mtime) of each file queued -> its prefetch.
_queued: dict[tuple[int, int, int, int], _Prefetched] = {}


def _identity(st: os.stat_result) -> tuple[int, int, int, int]:
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


def prefetch(paths) -> None:
    """Start hashing, in order, the regular files among ``paths`` (strings or
    paths; anything else, such as options or folders, is skipped) in a daemon
    thread, which never delays the end of the process."""
    jobs = []
    for path in paths:
        try:
            st = os.stat(path)
        except (OSError, TypeError, ValueError):
            continue
        key = _identity(st)
        if stat.S_ISREG(st.st_mode) and key not in _queued:
            _queued[key] = _Prefetched(os.fspath(path))
            jobs.append(_queued[key])
    if jobs:
        threading.Thread(
            target=_hash_all, args=(jobs,), name="sha256-prefetch", daemon=True
        ).start()


# Opening a FIFO for reading would wait for a writer: open without waiting (POSIX).
_OPEN_FLAGS = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)


def _hash_all(jobs: list[_Prefetched]) -> None:
    for job in jobs:
        try:
            with open(os.open(job.path, _OPEN_FLAGS), "rb", buffering=0) as f:
                before = os.fstat(f.fileno())
                if stat.S_ISREG(before.st_mode):
                    digest = _hash_open(f, before.st_size)
                    if _identity(os.fstat(f.fileno())) == _identity(before):
                        job.digest = digest
        except (OSError, ValueError):
            pass  # hashed again, and the error met, when asked for
        finally:
            job.done.set()


def _hash_open(f, size: int) -> str:
    """SHA-256 of the ``size`` bytes of an open regular file, hashed straight from
    the page cache through a read-only map: no copy, and one call that releases
    the GIL (reading in chunks would wait for the GIL at every chunk while the
    main thread imports).  As with the recipe's maps of the frames, a file cut
    short while it is read ends the process (SIGBUS)."""
    if size == 0:
        return hashlib.sha256().hexdigest()
    with mmap.mmap(f.fileno(), size, access=mmap.ACCESS_READ) as pages:
        return hashlib.sha256(pages).hexdigest()


def sha256_file(path: str | Path) -> str:
    """Hex SHA-256 of a file's bytes: the prefetched digest when the file was
    queued and is unchanged (waiting for it if needed), else read now
    (hashlib releases the GIL while hashing)."""
    try:
        job = _queued.pop(_identity(os.stat(path)), None)
    except OSError:
        job = None
    if job is not None:
        job.done.wait()
        if job.digest is not None:
            return job.digest
    with open(path, "rb", buffering=0) as f:
        return _hash_open(f, os.fstat(f.fileno()).st_size)
