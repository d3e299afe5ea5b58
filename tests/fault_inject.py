"""Faults injected into a child process that runs megara_dark (the CLI or the Python API).

The child finds a ``sitecustomize.py`` on its PYTHONPATH that calls :func:`install`,
which reads the fault from the environment variable ``MEGARA_DARK_FAULT`` (JSON):

``{"nofile": n}``
    RLIMIT_NOFILE = n from the start.
``{"fsize": bytes, "after_fsyncs": k}``
    RLIMIT_FSIZE = bytes (a full disk, EFBIG instead of ENOSPC) once the recipe has
    flushed k products (0: from the start, so the FITS is the first to fail; 1: the
    log; 2: the report).
``{"as_headroom": bytes}``
    RLIMIT_AS = the address space in use + bytes when the combination starts (the
    planes of the master dark are allocated there).
``{"signal": "SIGINT", "at": where}``
    The process sends itself the signal, at a moment chosen exactly: ``where`` is a
    log message (``"overscan and frame statistics: start"``: the frames are mapped, the
    first pixels about to be read), ``"combine rows"`` (in the core's progress callback:
    between two row chunks, once a quarter of the rows are done) or ``"fsync 1"`` (just
    after the master dark's temp file is written and flushed, before it is renamed).
``{"opens": path}``
    Count, per file, how often it is opened, and the most descriptors open at once;
    written as JSON to ``path`` at exit.

Only the standard library and megara_dark are imported here (no pytest).
"""

from __future__ import annotations

import atexit
import json
import os
import resource
import signal
from collections import Counter

ENV = "MEGARA_DARK_FAULT"


def install() -> None:
    spec = os.environ.get(ENV)
    if not spec:
        return
    spec = json.loads(spec)
    if "nofile" in spec:
        resource.setrlimit(resource.RLIMIT_NOFILE, (spec["nofile"], spec["nofile"]))
    if "fsize" in spec:
        _limit_file_size(spec["fsize"], spec.get("after_fsyncs", 0))
    if "as_headroom" in spec:
        _limit_address_space(spec["as_headroom"])
    if "signal" in spec:
        _send_signal(getattr(signal, spec["signal"]), spec["at"])
    if "opens" in spec:
        _count_opens(spec["opens"])


def _limit_file_size(nbytes: int, after_fsyncs: int) -> None:
    def limit():
        resource.setrlimit(resource.RLIMIT_FSIZE, (nbytes, resource.RLIM_INFINITY))

    if after_fsyncs == 0:
        limit()
    else:
        _after_fsync(after_fsyncs, limit)


def _after_fsync(count: int, action) -> None:
    """Call ``action`` once the recipe's ``count``-th product flush is done."""
    from megara_dark import recipe

    real, done = recipe.fsync_file, []

    def fsync_file(path):
        real(path)
        done.append(path)
        if len(done) == count:
            action()

    recipe.fsync_file = fsync_file


def _address_space() -> int:
    """Bytes of address space in use (VmSize of /proc/self/status)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmSize:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmSize in /proc/self/status")


def _limit_address_space(headroom: int) -> None:
    from megara_dark.recipe import DarkRecipe

    real = DarkRecipe._combine

    def _combine(self, *args, **kwargs):
        limit = _address_space() + headroom
        resource.setrlimit(resource.RLIMIT_AS, (limit, resource.RLIM_INFINITY))
        return real(self, *args, **kwargs)

    DarkRecipe._combine = _combine


def _send_signal(signum: int, where: str) -> None:
    def send():
        os.kill(os.getpid(), signum)

    if where.startswith("fsync "):
        _after_fsync(int(where.split()[1]), send)
    elif where == "combine rows":
        from megara_dark import _core

        real = _core.combine_into

        def combine_into(*args, progress=None, **kwargs):
            def progress_hook(done, total):
                if 4 * done >= total and not sent:
                    sent.append(done)
                    send()
                if progress is not None:
                    progress(done, total)

            return real(*args, progress=progress_hook, **kwargs)

        sent = []
        _core.combine_into = combine_into
    else:
        from megara_dark.report import ProcessingLog

        real_add = ProcessingLog._add

        def _add(self, level, message):
            real_add(self, level, message)
            if message == where:
                send()

        ProcessingLog._add = _add


def _count_opens(path: str) -> None:
    import sys

    opens, most = Counter(), [0]

    def hook(event, args):
        if event == "open" and isinstance(args[0], (str, bytes, os.PathLike)):
            opens[os.fsdecode(args[0])] += 1
            most[0] = max(most[0], len(os.listdir("/proc/self/fd")))

    def report():
        with open(path, "w") as f:
            json.dump({"opens": opens, "most_descriptors": most[0]}, f)

    sys.addaudithook(hook)
    atexit.register(report)
