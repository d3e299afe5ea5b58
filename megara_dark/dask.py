"""Combinations and calibration campaigns on a Dask cluster, with the same bits as one machine.

``combine(frames, method, ..., client=None, rows_per_task=None)`` cuts the
image into blocks of rows.  One task per block reads only its rows of every
frame and runs :func:`megara_dark.combine.combine` (the same C kernel, the same
checks) on them with the matching rows of ``bias``, ``masks`` and
``row_offsets``; the client writes each block's planes into the full output
planes.  A pixel depends only on its own values, so the result is
bit-identical to the direct call for any split.  Frames given as FITS paths
(or :class:`~megara_dark.io.FitsImage`) are memory-mapped on the worker: the
client reads their headers, so the files must be readable at the same path by
the client and every worker (a shared file system).  Frames given as arrays
are sliced on the client and each task carries its block's rows (the
scheduler keeps them until the task is done, so a task lost with its worker
is rerun elsewhere; at most two tasks per worker thread are in flight).

``run_many(obresults, outdir=...)`` reduces many observation results with
:class:`~megara_dark.recipe.DarkRecipe`, one task each, every one in its own
folder; a failure is recorded in its :class:`CampaignResult` and does not stop
the others.  ``format_summary`` prints them as a table.

``get_client(scheduler)`` connects to ``tcp://HOST:PORT`` or starts
``local[:N]``.  Dask is optional (``pip install 'megara_dark[dask]'``): this
module imports without it and says how to install it when a function needs it.
"""

from __future__ import annotations

import inspect
import math
import numbers
import os
import re
import uuid
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from itertools import islice
from pathlib import Path

import numpy as np
from astropy.io import fits

from . import combine as core
from .combine import CombineResult, CombineWarning
from .io import FitsImage, inspect_fits, read_obresult, read_raw
from .variance import variance_factors

INSTALL_HINT = "pip install 'megara_dark[dask]'"
# Input bytes a combine task reads when rows_per_task is not given.
TASK_BYTES = 64 * 2**20
TASK_PREFIX = "megara-dark"
# LocalCluster options of "local[:N]": one-thread worker processes on the loopback
# interface, no dashboard.  The scheduler's plain HTTP server (health, metrics)
# would still take port 8787 and warn when it is in use: a free loopback port instead.
LOCAL_CLUSTER = {
    "threads_per_worker": 1,
    "processes": True,
    "host": "127.0.0.1",
    "dashboard_address": None,
    "scheduler_kwargs": {"dashboard": False, "dashboard_address": "127.0.0.1:0"},
}
PLANES = ("data", "variance", "npix", "nrejected")
# combine()'s parameters that go to every task unchanged: all but the frames, the
# planes cut into rows (_rows) and what stays on the client.
_PASSED = tuple(
    name
    for name in inspect.signature(core.combine).parameters
    if name not in ("frames", "method", "bias", "masks", "row_offsets", "out", "progress")
)
# The method parameters core._method_params checks: named as combine()'s keywords.
_METHOD_PARAMS = tuple(inspect.signature(core._method_params).parameters)[2:]


def _distributed():
    """The ``distributed`` module, or an ImportError saying how to install it."""
    try:
        import distributed
    except ImportError as exc:
        raise ImportError(
            f"megara_dark's Dask support needs dask.distributed, which is not installed: "
            f"{INSTALL_HINT}"
        ) from exc
    return distributed


def get_client(scheduler: str | None = None, *, timeout: float = 10.0):
    """A ``distributed.Client`` for a scheduler address or a local cluster.

    Parameters
    ----------
    scheduler : str or None
        ``"tcp://HOST:PORT"`` (or ``tls://``): connect to that scheduler;
        ``"local"`` or ``"local:N"``: start N worker processes of one thread
        each (default: one per CPU) on the loopback interface, without
        dashboard, closed with the client; None: the current default client,
        else a new local cluster (which becomes the default).
    timeout : float
        Seconds to wait for a remote scheduler.

    Raises
    ------
    ImportError
        dask.distributed is not installed (the message says how to install it).
    ValueError
        ``scheduler`` is neither form.  OSError: the scheduler cannot be reached.
    """
    distributed = _distributed()
    if scheduler is None:
        try:
            return distributed.default_client()
        except ValueError:  # no client yet
            scheduler = "local"
    local = re.fullmatch(r"local(?::(\d+))?", scheduler)
    if local:
        workers = int(local[1]) if local[1] else _cpu_count()
        if workers < 1:
            raise ValueError(f"scheduler {scheduler!r}: a local cluster needs at least 1 worker")
        return distributed.Client(n_workers=workers, **LOCAL_CLUSTER)
    if not re.fullmatch(r"(tcp|tls)://\S+:\d+", scheduler):
        raise ValueError(
            f"scheduler must be 'tcp://HOST:PORT' or 'local[:N]' (N worker processes), "
            f"got {scheduler!r}"
        )
    try:
        return distributed.Client(scheduler, timeout=timeout)
    except OSError as exc:
        raise OSError(f"cannot reach the Dask scheduler at {scheduler}: {exc}") from exc


def _cpu_count() -> int:
    """CPUs this process may use."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


# ---- one combination over row blocks ----------------------------------------------


def combine(
    frames: Sequence,
    method: str = "median",
    *,
    client=None,
    rows_per_task: int | None = None,
    **kwargs,
) -> CombineResult:
    """:func:`megara_dark.combine.combine` on a Dask cluster, one task per block of rows.

    Parameters
    ----------
    frames : sequence of FITS paths, FitsImage or 2-D arrays (may be mixed)
        A FITS frame is memory-mapped on the workers; its BZERO, BSCALE and
        BLANK come from its header unless ``bzero``/``bscale``/``blank`` are given.
    method : str
        As :func:`megara_dark.combine.combine`.
    client : distributed.Client, optional
        Default: the current default client, else a new local cluster.
    rows_per_task : int, optional
        Rows per task; default about 64 MiB of input per task, and at least
        as many tasks as worker threads.
    **kwargs
        Every keyword argument of :func:`megara_dark.combine.combine` (bias,
        masks, row_offsets, zeros, ..., out, progress), with the same checks,
        all made on the client before any task starts.  ``nthreads`` are the
        OpenMP threads of each task (0: the worker's default, which Dask's
        nanny sets to 1); ``progress(rows_done, rows_total)`` is called on the
        client as blocks arrive.

    Returns
    -------
    CombineResult
        Bit-identical to ``megara_dark.combine.combine`` on the same frames.
    """
    distributed = _distributed()
    if isinstance(frames, (str, os.PathLike)):
        raise TypeError(f"frames must be a sequence of frames, got the single path {frames!r}")
    args = inspect.signature(core.combine).bind(frames, method, **kwargs)
    args.apply_defaults()
    options = args.arguments
    sources = [_source(f) for f in frames]
    standins = core._as_frames([_standin(s) for s in sources])
    n, shape = len(standins), standins[0].shape
    for key in ("bzero", "bscale", "blank"):
        if options[key] is None:
            options[key] = [_header_value(s, key) for s in sources]
    # Every check of the direct call before any task: the shapes on the whole
    # image, all the rest by the direct call itself on the first row.
    planes = {
        "bias": core._bias(options["bias"], shape),
        "masks": core._masks(options["masks"], n, shape),
        "row_offsets": core._row_offsets(options["row_offsets"], n, shape[0]),
    }
    out = core._outputs(options["out"], shape, n, options["dtype"])
    passed = {key: options[key] for key in _PASSED}
    core.combine([f[:1] for f in standins], method, **_rows(planes, 0, 1), **passed)
    factors = _variance_factors(method, n, passed)

    if rows_per_task is not None and (
        not isinstance(rows_per_task, numbers.Integral)
        or isinstance(rows_per_task, bool)
        or rows_per_task < 1
    ):
        raise ValueError(f"rows_per_task must be an integer >= 1, got {rows_per_task!r}")
    client = get_client(None) if client is None else client
    threads = max(1, sum(client.nthreads().values()))
    rows_per_task = rows_per_task or _auto_rows(standins, threads)
    token = uuid.uuid4().hex
    in_flight = {}

    def submit(y0: int):
        y1 = min(y0 + rows_per_task, shape[0])
        blocks = [
            s if isinstance(s, FitsImage) else f[y0:y1]
            for s, f in zip(sources, standins, strict=True)
        ]
        with warnings.catch_warnings():
            # Array frames: each task carries its rows on purpose (see the module doc).
            warnings.filterwarnings("ignore", "Sending large graph", UserWarning)
            future = client.submit(
                _combine_block,
                blocks,
                (y0, y1),
                method,
                {**passed, **_rows(planes, y0, y1)},
                factors,
                key=f"{TASK_PREFIX}-combine-{token}-{y0}",
            )
        in_flight[future] = (y0, y1)
        return future

    starts = iter(range(0, shape[0], rows_per_task))
    arrived = distributed.as_completed([submit(y0) for y0 in islice(starts, 2 * threads)])
    rows_done = 0
    try:
        for future in arrived:
            y0, y1 = in_flight.pop(future)
            block = future.result()
            for name in PLANES:
                plane = getattr(out, name)
                if plane is not None:  # a plane left None in ``out`` is not wanted
                    plane[y0:y1] = getattr(block, name)
            rows_done += y1 - y0
            if options["progress"] is not None:
                options["progress"](rows_done, shape[0])
            y0 = next(starts, None)
            if y0 is not None:
                arrived.add(submit(y0))
    finally:
        client.cancel(list(in_flight))  # after an error: the tasks still pending
    return out


def _combine_block(frames, rows, method, options, factors) -> CombineResult:
    """A task: the direct call on rows ``[y0, y1)`` of every frame (FitsImage
    frames are memory-mapped here), after checking that this process's
    variance factors are the client's."""
    if not np.array_equal(_variance_factors(method, len(frames), options), factors):
        raise RuntimeError(
            f"worker {_distributed().get_worker().address}: its variance factors for "
            f"{method} with {len(frames)} frames differ from the client's; client and "
            "workers need the same megara_dark build and NumPy version"
        )
    y0, y1 = rows
    frames = [read_raw(f)[y0:y1] if isinstance(f, FitsImage) else f for f in frames]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CombineWarning)  # the client has shown them
        return core.combine(frames, method, **options)


def _source(frame):
    """A frame as the workers get it: a FitsImage without its headers, or an array."""
    if isinstance(frame, (str, os.PathLike)):
        frame = inspect_fits(Path(frame).absolute())
    if isinstance(frame, FitsImage):
        path = frame.path.absolute()  # the workers' folder may differ
        return replace(frame, path=path, header=fits.Header(), primary_header=fits.Header())
    return np.asarray(frame)


def _read_dtype(image: FitsImage) -> np.dtype:
    """The dtype read_raw returns for an image (compressed data arrive as float64)."""
    return np.dtype(np.float64) if image.compressed else image.raw_dtype


def _standin(source) -> np.ndarray:
    """An array with a FITS frame's shape and dtype that reads no file (zero strides)."""
    if isinstance(source, FitsImage):
        return np.broadcast_to(np.zeros((), _read_dtype(source)), source.shape)
    return source


def _header_value(source, key: str):
    """BZERO, BSCALE or BLANK of a FITS frame; the direct call's default for an array."""
    if not isinstance(source, FitsImage):
        return {"bzero": 0.0, "bscale": 1.0, "blank": None}[key]
    if key == "blank" and _read_dtype(source).kind not in "iu":
        return None
    return getattr(source, key)


def _rows(planes: dict, y0: int, y1: int) -> dict:
    """Rows ``[y0, y1)`` of bias, masks and row_offsets (None stays None)."""
    bias, masks, offsets = planes["bias"], planes["masks"], planes["row_offsets"]
    return {
        "bias": None if bias is None else bias[y0:y1],
        "masks": None if masks is None else [None if m is None else m[y0:y1] for m in masks],
        "row_offsets": None if offsets is None else offsets[:, y0:y1],
    }


def _variance_factors(method: str, n: int, options: dict) -> np.ndarray:
    """The factors the direct call uses (calibrated and cached once per process)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CombineWarning)
        params = core._method_params(method, n, *(options[k] for k in _METHOD_PARAMS))
    return variance_factors(method, n, **params)


def _auto_rows(frames: list[np.ndarray], threads: int) -> int:
    """About TASK_BYTES of input per task, and at least one task per worker thread."""
    row_bytes = sum(f.shape[1] * f.dtype.itemsize for f in frames)
    ny = frames[0].shape[0]
    return max(1, min(TASK_BYTES // row_bytes, math.ceil(ny / threads)))


# ---- campaigns: many observation results, one task each ---------------------------


@dataclass(frozen=True)
class CampaignResult:
    """How one observation result of a campaign went.

    obresult: its YAML file; outdir: the folder of its products, log and
    report; ob_id, nframes: from the YAML (None when it cannot be read);
    qc_flag, master_dark: the product's QC flag and path (None on failure);
    error: ``"ExceptionType: message"`` of the failure, else None.
    """

    obresult: Path
    outdir: Path
    ob_id: str | None = None
    nframes: int | None = None
    qc_flag: str | None = None
    master_dark: Path | None = None
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


def run_many(
    obresults: Sequence,
    *,
    bias=None,
    outdir,
    client=None,
    on_result: Callable[[CampaignResult], None] | None = None,
    **recipe_options,
) -> list[CampaignResult]:
    """Reduce many observation results in parallel on a Dask cluster.

    Each YAML file ``NAME.yaml`` is reduced by ``DarkRecipe(outdir=outdir /
    NAME, **recipe_options)`` in one task; a failure (bad input, exception,
    worker lost more often than Dask retries) is recorded in that
    observation result's :class:`CampaignResult` and the others go on.

    Parameters
    ----------
    obresults : sequence of paths
        numina observation-result YAML files; their names (without suffix)
        must differ, they name the product folders.
    bias : path, optional
        Master bias for every observation result; default: each YAML's
        ``requirements: master_bias``.
    outdir : path
        Parent folder of the product folders.
    client : distributed.Client, optional
        Default: the current default client, else a new local cluster.
    on_result : callable, optional
        Called on the client with each CampaignResult as it arrives.
    **recipe_options
        Keyword arguments of :class:`~megara_dark.recipe.DarkRecipe` (method,
        method_params, unit, overwrite, geometry, ...), checked on the client.

    Returns
    -------
    list of CampaignResult
        In the order of ``obresults``.
    """
    from .recipe import DarkRecipe

    distributed = _distributed()
    paths = [Path(p).absolute() for p in obresults]
    if not paths:
        raise ValueError("no observation results to reduce")
    outdir = Path(outdir).absolute()
    folders = _product_folders(paths, outdir)
    DarkRecipe(outdir=outdir, **recipe_options)  # bad options fail here, once
    bias = None if bias is None else Path(bias).absolute()
    client = get_client(None) if client is None else client
    token = uuid.uuid4().hex
    futures = {
        client.submit(
            _reduce_one, path, bias, folder, recipe_options, key=f"{TASK_PREFIX}-ob-{token}-{i}"
        ): i
        for i, (path, folder) in enumerate(zip(paths, folders, strict=True))
    }
    results: list[CampaignResult | None] = [None] * len(paths)
    for future in distributed.as_completed(futures):
        i = futures[future]
        try:
            result = future.result()
        except Exception as exc:  # the task itself failed: its worker died too often
            result = CampaignResult(paths[i], folders[i], error=_error_text(exc))
        results[i] = result
        if on_result is not None:
            on_result(result)
    return results


def _product_folders(paths: list[Path], outdir: Path) -> list[Path]:
    """outdir / NAME for each NAME.yaml; two files of the same name are refused."""
    seen = {}
    for path in paths:
        if path.stem in seen:
            raise ValueError(
                f"{seen[path.stem]} and {path} would share the product folder "
                f"{outdir / path.stem}; rename one"
            )
        seen[path.stem] = path
    return [outdir / path.stem for path in paths]


def _reduce_one(obresult: Path, bias: Path | None, outdir: Path, options: dict) -> CampaignResult:
    """A task: one observation result through DarkRecipe, any failure recorded."""
    from .recipe import MODE, DarkRecipe, DarkRecipeInput

    result = CampaignResult(obresult, outdir)
    try:
        ob = read_obresult(obresult, mode=MODE)
        result = replace(result, ob_id=ob.id, nframes=len(ob.frames))
        product = DarkRecipe(outdir=outdir, **options).run(DarkRecipeInput(obresult, bias))
    except Exception as exc:  # one observation result's failure must not stop the campaign
        return replace(result, error=_error_text(exc))
    return replace(result, qc_flag=product.qc.flag, master_dark=product.master_dark)


def _error_text(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


def format_summary(results: Sequence[CampaignResult]) -> str:
    """The campaign as a plain-text table: OB id, frames, QC flag (FAILED on
    error) and the product path or the error, then a count line."""
    rows = [("OB", "frames", "QC", "product or error")]
    for r in results:
        rows.append(
            (
                r.ob_id if r.ob_id is not None else r.obresult.name,
                "-" if r.nframes is None else str(r.nframes),
                r.qc_flag if r.ok else "FAILED",
                str(r.master_dark) if r.ok else " | ".join(r.error.split("\n")),
            )
        )
    widths = [max(len(row[k]) for row in rows) for k in range(3)]
    lines = [
        "  ".join([*(c.ljust(w) for c, w in zip(row[:3], widths, strict=True)), row[3]])
        for row in rows
    ]
    flags = [r.qc_flag for r in results if r.ok]
    counts = ", ".join(f"{flags.count(f)} {f}" for f in ("GOOD", "PARTIAL", "BAD"))
    lines.append(
        f"{len(flags)} of {len(results)} reduced ({counts}), {len(results) - len(flags)} failed"
    )
    return "\n".join(lines)
