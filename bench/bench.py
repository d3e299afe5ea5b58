"""Time megara_dark's combination against its peers and the memory floor.

``python bench/bench.py`` prints one Markdown table and writes it, with the raw
numbers, to ``bench/results/bench-<date>.md`` and ``.json``.  Every row runs in
its own child process, on the same memory-mapped frames (.npy files in a
temporary folder, warm in the page cache); the parent polls the child's
anonymous memory (``RssAnon``), which leaves out the mapped input files.

Rows, for each case and method:

- ``floor``: a minimal OpenMP C loop (``floor.c``, compiled here with the
  system C compiler, ``-O3 -fopenmp``) that reads the N frames once and writes
  the same output planes into memory allocated beforehand; every time is also
  given as a multiple of it, and megara_dark's out= rows also as the median of
  call ÷ floor over pairs timed by turns in the row's process;
- ``megara_dark combine()`` and, when importable, megara_dark's
  numina-compatible API, each with outputs allocated once and reused
  (``out=``) and with the end-to-end call that allocates them (fresh memory
  costs a page fault per 4 KiB on first touch);
- for 11 raw frames, median, mean and sigclip also on raw and float32 input
  by turns in one process: the raw-against-float32 comparison, free of the
  drift between rows run minutes apart;
- the peers: numpy.median/mean, bottleneck.nanmedian/nanmean,
  astropy.stats.sigma_clip (+ mean), ccdproc.Combiner and
  numina.array.combine, timed from the list of frames to the combined image.

``--quick`` runs every code path on tiny frames once: a smoke test, not a
measurement, which exits with status 1 when a row failed (CI runs it).  Times
are medians of several runs on a machine that may be shared, so read them as
+-10 %.
"""

from __future__ import annotations

import argparse
import ctypes
import datetime
import importlib
import importlib.metadata
import importlib.util
import inspect
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
SHAPE = (4112, 4096)  # rows x columns of a MEGARA frame
QUICK_SHAPE = (64, 80)
BZERO = 32768  # raw MEGARA frames: int16 on disk (big-endian) + BZERO = 32768
N_SERIES = (3, 5, 11, 21, 51, 201)
METHODS = ("median", "mean", "sigclip", "minmax", "quantileclip", "ccdclip")
POLL_S = 0.005  # RssAnon polling period
MIB = 2**20

# Keyword arguments of megara_dark.combine.combine() for each method (its defaults otherwise).
NATIVE_KW = {
    "median": {},
    "mean": {},
    "sigclip": {},
    "minmax": {"nlow": 1, "nhigh": 1},
    "quantileclip": {"fclip": 0.1},
    "ccdclip": {"gain": 1.0, "rdnoise": 5.0},
}
# numina.array.combine function and keywords for each method (also megara_dark's numina API).
NUMINA_FUNC = {
    "median": ("median", {}),
    "mean": ("mean", {}),
    "sigclip": ("sigmaclip", {"low": 3.0, "high": 3.0}),
    "minmax": ("minmax", {"nmin": 1, "nmax": 1}),
    "quantileclip": ("quantileclip", {"fclip": 0.1}),
}
PEER_METHODS = {
    "numpy": ("median", "mean"),
    "bottleneck": ("median", "mean"),
    "astropy": ("sigclip",),
    "ccdproc": ("median", "mean", "sigclip", "minmax"),
    "numina": ("median", "mean", "sigclip", "minmax", "quantileclip"),
}
PEER_CALLS = {
    ("numpy", "median"): "numpy.median(frames, axis=0)",
    ("numpy", "mean"): "numpy.mean(frames, axis=0)",
    ("bottleneck", "median"): "bottleneck.nanmedian(stack, axis=0)",
    ("bottleneck", "mean"): "bottleneck.nanmean(stack, axis=0)",
    ("astropy", "sigclip"): "sigma_clip(stack, 3, maxiters=10, median, mad_std).mean(0)",
    ("ccdproc", "median"): "Combiner(ccds, float32).median_combine()",
    ("ccdproc", "mean"): "Combiner(ccds, float32).average_combine()",
    ("ccdproc", "sigclip"): "sigma_clipping(3, 3, median, mad_std) (1 pass) + average",
    ("ccdproc", "minmax"): "clip_extrema(1, 1) + average_combine()",
}
# Peak memory of a peer, in units of the stacked input (rough, for skipping only).
PEER_MEMORY_FACTOR = {"numpy": 2.5, "bottleneck": 2.5, "astropy": 6, "ccdproc": 6, "numina": 0.5}
# Floor output sets: combine() writes value, variance (float32), npix, nrejected
# (int16); the numina API writes value, variance, npix into one float32 (3, ny, nx).
FLOOR_OUTPUTS = {"native": 0, "numina": 1}
# The floor row of each output set, and the set each megara_dark tool writes.
FLOOR_TOOL = {"native": "floor", "numina": "floor (numina planes)"}
FLOOR_LAYOUT = {"megara_dark combine()": "native", "megara_dark numina API": "numina"}
# The raw case's rows that time raw and float32 input in turn, in one process.
IN_TURN = "megara_dark combine(), raw and float32 in turn"
# Imported before the baseline memory is taken.
TOOL_MODULES = {
    "megara_dark combine()": ("megara_dark.combine",),
    IN_TURN: ("megara_dark.combine",),
    "megara_dark numina API": ("megara_dark.combine",),
    "bottleneck": ("bottleneck",),
    "astropy": ("astropy.stats",),
    "ccdproc": ("ccdproc", "astropy.nddata"),
    "numina": ("numina.array.combine",),
}
FLOOR_KIND = {"float32": 0, "int16-swapped": 1, "uint16": 2, "int16": 3}


class Skip(Exception):
    """A row that cannot run here; the message says why."""


@dataclass(frozen=True)
class Case:
    """One data set: N frames of one kind, combined with some methods and tools."""

    name: str
    kind: str  # "float32" or "raw" (stored int16, big-endian, + BZERO)
    n: int
    nthreads: int
    methods: tuple
    peers: tuple = ()
    numina_api: bool = False
    in_turn: tuple = ()  # methods also timed on raw and float32 input in turn


@dataclass
class Row:
    """One measurement (one child process) and what the parent learnt of it."""

    case: str
    method: str
    tool: str
    outputs: str  # "preallocated" (floor), "out= reused", "allocated"
    spec: dict = field(repr=False)
    status: str = "ok"
    note: str = ""
    times: list = field(default_factory=list)
    time_s: float | None = None
    first_call_s: float | None = None  # the first call in a fresh process
    cpu_s: float | None = None  # CPU time of a call, all threads (median)
    peak_anon_mib: float | None = None
    base_anon_mib: float | None = None
    value_mean: float | None = None
    x_floor: float | None = None  # time_s over the case's floor row (run apart)
    x_floor_in_turn: float | None = None  # median of call ÷ floor, timed by turns
    speedup_alloc: float | None = None
    speedup_reuse: float | None = None
    cpu_wait: float | None = None  # fraction of the row's time some task waited for a CPU
    float32_s: float | None = None  # in-turn rows: float32 input, timed between the raw calls
    raw_over_float32: float | None = None  # in-turn rows: median of the pairs' ratios

    def skip(self, why: str) -> None:
        self.status, self.note = "skipped", why


# ---- the cases ------------------------------------------------------------------------------


def make_cases(threads: int, max_peer_frames: int) -> dict[str, list[Case]]:
    """Case groups by name (for --cases); threads is the default OpenMP thread count."""
    raw = []
    for n in N_SERIES:
        if n == 11:
            peers = ("numpy", "bottleneck", "numina")
            methods, in_turn = METHODS[:-1], ("median", "mean", "sigclip")
        else:
            peers = ("numpy",) if n <= max_peer_frames else ()
            methods, in_turn = ("median", "mean", "sigclip"), ()
        name = f"{n} x raw int16+BZERO, {threads} thr"
        raw.append(Case(name, "raw", n, threads, methods, peers, in_turn=in_turn))
    return {
        "float32": [
            Case(
                f"11 x float32, {threads} thr",
                "float32",
                11,
                threads,
                METHODS,
                tuple(PEER_METHODS),
                numina_api=True,
            )
        ],
        "threads": [Case("11 x float32, 1 thr", "float32", 11, 1, ("median", "mean", "sigclip"))],
        "raw": raw,
    }


def case_rows(case: Case, common: dict, api_ok: bool, mem_avail: int) -> list[Row]:
    """The rows of one case, in table order."""
    spec = dict(common, kind=case.kind, n=case.n, nthreads=case.nthreads)

    def row(method, tool, outputs, **extra):
        return Row(
            case.name,
            method,
            tool,
            outputs,
            dict(spec, method=method, tool=tool, outputs=outputs, **extra),
        )

    layouts = ("native", "numina") if case.numina_api else ("native",)
    rows = [row("—", FLOOR_TOOL[k], "preallocated", floor_outputs=k) for k in layouts]
    for method in case.methods:
        for outputs in ("out= reused", "allocated"):
            rows.append(row(method, "megara_dark combine()", outputs))
        if method in case.in_turn:
            rows.append(row(method, IN_TURN, "out= reused"))
        if case.numina_api and method in NUMINA_FUNC:
            for outputs in ("out= reused", "allocated"):
                r = row(method, "megara_dark numina API", outputs)
                if not api_ok:
                    r.skip("megara_dark's numina-compatible API not importable")
                rows.append(r)
        for peer in case.peers:
            if method not in PEER_METHODS[peer]:
                continue
            r = row(method, peer, "allocated")
            r.note = PEER_CALLS.get(
                (peer, method), f"numina.array.combine.{NUMINA_FUNC[method][0]}"
            )
            why = peer_skip_reason(peer, case, common["shape"], mem_avail)
            if why:
                r.skip(why)
            rows.append(r)
    if case.n > common["max_peer_frames"]:
        rows.append(row("—", "peers", "—"))
        rows[-1].skip(f"peers not run above {common['max_peer_frames']} frames (memory, minutes)")
    return rows


def peer_skip_reason(peer: str, case: Case, shape, mem_avail: int) -> str:
    """Why a peer cannot run in this case ('' when it can)."""
    if importlib.util.find_spec(peer) is None:
        return f"{peer} not installed"
    itemsize = 4 if case.kind == "float32" else 2
    need = PEER_MEMORY_FACTOR[peer] * case.n * shape[0] * shape[1] * itemsize
    if need > 0.5 * mem_avail:
        return (
            f"would need ~{need / 2**30:.1f} GiB; half the available memory is "
            f"{mem_avail / 2**31:.1f} GiB"
        )
    return ""


def bench_recipe(work: Path, repeats: int, timeout: float) -> list[Row]:
    """The whole recipe on 11 simulated raw FITS frames on disk (warm page cache), from the
    command line to the master dark, log and report written (no quick-look PNG), and
    megaradrp's DarkRecipe on the same files through ``numina run``.

    Each run is a fresh process, timed from its start to its exit, after one untimed run.
    """
    case, tool = "recipe, 11 raw FITS frames", "python -m megara_dark run --no-png"
    row = Row(case, "median", tool, "files", spec={})
    megaradrp = Row(case, "median", "megaradrp DarkRecipe (numina run)", "files", spec={})
    if importlib.util.find_spec("megara_dark.recipe") is None:
        row.skip("megara_dark.recipe does not exist yet")
        return [row, megaradrp]
    cli = [sys.executable, "-m", "megara_dark"]
    sim = run_command([*cli, "simulate", "--out", "raw", "--frames", "11"], timeout, cwd=work)
    if sim.returncode != 0:
        row.status, row.note = "failed", "simulate: " + (sim.stderr or ["timed out"])[-1]
        return [row, megaradrp]
    *frames, bias = sim.stdout
    commands = [
        [*cli, "run", *frames, "--bias", bias, "--out", f"reduced_{i}", "--no-png", "--quiet"]
        for i in range(repeats + 1)
    ]
    time_commands(row, commands, work, timeout)
    if row.status != "failed":
        row.note = "wall time of the process; simulated frames: megara_dark simulate"
    png = Row(case, "median", "python -m megara_dark run (+ quick-look PNG)", "files", spec={})
    commands = [
        [*cli, "run", *frames, "--bias", bias, "--out", f"reduced_png_{i}", "--quiet"]
        for i in range(repeats + 1)
    ]
    time_commands(png, commands, work, timeout)
    if png.status != "failed":
        png.note = "the PNG is drawn after the products are in place"
    numina = Path(sys.executable).with_name("numina")
    if importlib.util.find_spec("megaradrp") is None or not numina.exists():
        megaradrp.skip("megaradrp (numina run) is not installed")
        return [row, png, megaradrp]
    folders = [numina_run_folder(work / f"numina_{i}", work, frames, bias) for i in range(3)]
    commands = [[str(numina), "run", "ob.yaml", "-r", "control.yaml"] for _ in folders]
    time_commands(megaradrp, commands, folders, timeout)
    if megaradrp.status != "failed":
        megaradrp.note = "numina run ob.yaml (frames linked; numina copies them to its work folder)"
    return [row, png, megaradrp]


def numina_run_folder(folder: Path, work: Path, frames: list[str], bias: str) -> Path:
    """A folder where ``numina run ob.yaml -r control.yaml`` reduces the set with megaradrp."""
    from astropy.io import fits

    (folder / "data").mkdir(parents=True)
    for path in [*frames, bias]:
        (folder / "data" / Path(path).name).symlink_to((work / path).resolve())
    names = ", ".join(Path(p).name for p in frames)
    (folder / "ob.yaml").write_text(
        f"id: dark-bench\ninstrument: MEGARA\nmode: MegaraDarkImage\nframes: [{names}]\n"
    )
    insconf = fits.getheader(work / frames[0])["INSCONF"]
    (folder / "control.yaml").write_text(
        "version: 1\nproducts:\n  MEGARA:\n"
        f"    {insconf}:\n"
        f"      - {{id: 1, type: MasterBias, tags: {{}}, content: {Path(bias).name}}}\n"
    )
    return folder


def time_commands(row: Row, commands: list[list[str]], cwd, timeout: float) -> None:
    """Run the commands one after the other (``cwd``: one folder, or one per command); the
    first is untimed (a warm-up), the median of the others is the row's time."""
    folders = cwd if isinstance(cwd, list) else [cwd] * len(commands)
    runs = []
    for command, folder in zip(commands, folders, strict=True):
        run = run_command(command, timeout, cwd=folder)
        if run.returncode != 0:
            row.status, row.note = "failed", (run.stderr or ["timed out"])[-1]
            return
        runs.append(run)
    row.first_call_s = runs[0].wall_s
    row.times = [r.wall_s for r in runs[1:]]
    row.time_s = statistics.median(row.times)
    row.peak_anon_mib = max(r.peak_anon_mib for r in runs)
    row.cpu_wait = statistics.median(r.cpu_wait or 0.0 for r in runs)


# ---- data -----------------------------------------------------------------------------------


def make_frames(data_dir: Path, shape, n_raw: int, n_float: int, log) -> None:
    """Write n_raw raw frames (stored int16, big-endian; physical = stored + BZERO) and the
    first n_float of them again as float32 physical values, unless already there.

    Physical values: 1000 ADU + Gaussian noise (sigma 5 ADU) + cosmic rays on 1e-4 of the
    pixels (100 to 30000 ADU above).
    """
    manifest = data_dir / "manifest.json"
    names = [f"raw_{i:03d}.npy" for i in range(n_raw)]
    names += [f"float32_{i:03d}.npy" for i in range(n_float)]
    if manifest.exists() and all((data_dir / name).exists() for name in names):
        have = json.loads(manifest.read_text())
        if have["shape"] == list(shape) and have["n_raw"] >= n_raw and have["n_float"] >= n_float:
            return
    rng = np.random.default_rng(20251126)
    npix = shape[0] * shape[1]
    t0 = time.perf_counter()
    for i in range(max(n_raw, n_float)):
        phys = rng.standard_normal(shape, dtype=np.float32)
        phys *= 5.0
        phys += 1000.0
        np.rint(phys, out=phys)
        hits = rng.integers(0, npix, size=max(1, npix // 10000))
        phys.flat[hits] += rng.integers(100, 30000, size=hits.size).astype(np.float32)
        if i < n_raw:
            np.save(data_dir / f"raw_{i:03d}.npy", (phys - BZERO).astype(">i2"))
        if i < n_float:
            np.save(data_dir / f"float32_{i:03d}.npy", phys)
        if (i + 1) % 20 == 0:
            log(f"  data: {i + 1} frames ({time.perf_counter() - t0:.0f} s)")
    manifest.write_text(json.dumps({"shape": list(shape), "n_raw": n_raw, "n_float": n_float}))


def open_frames(spec: dict) -> list[np.ndarray]:
    """The case's frames, memory-mapped read-only."""
    prefix = "float32" if spec["kind"] == "float32" else "raw"
    data_dir = Path(spec["data_dir"])
    return [np.load(data_dir / f"{prefix}_{i:03d}.npy", mmap_mode="r") for i in range(spec["n"])]


# ---- the child: one row -------------------------------------------------------------------


def rss_anon_kib(pid: int | str = "self") -> int:
    """Anonymous resident memory of a process, KiB (0 once it has gone)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("RssAnon:"):
                    return int(line.split()[1])
    except (FileNotFoundError, ProcessLookupError):
        pass
    return 0


def output_planes(shape, layout: str):
    """Output planes allocated once (FLOOR_OUTPUTS' layouts): for combine() (``native``)
    value, variance (float32), npix, nrejected (int16); for the numina API
    (``numina``) one float32 array (3, ny, nx): value, variance, npix."""
    if layout == "numina":
        return np.empty((3, *shape), np.float32)
    f32, i16 = np.float32, np.int16
    return tuple(np.empty(shape, dtype) for dtype in (f32, f32, i16, i16))


def floor_call(frames, spec, planes=None):
    """The floor loop on these frames, writing into planes (output_planes() for
    spec["floor_outputs"]; allocated here, once, when not given)."""
    lib = ctypes.CDLL(spec["floor_lib"])
    fn = lib.bench_floor
    fn.restype = ctypes.c_int
    fn.argtypes = [
        ctypes.c_void_p,
        ctypes.c_int,
        ctypes.c_int,
        ctypes.c_size_t,
        ctypes.c_float,
        ctypes.c_void_p,
        ctypes.c_void_p,
        ctypes.c_void_p,
        ctypes.c_int,
        ctypes.c_void_p,
        ctypes.c_int,
    ]
    dtype = frames[0].dtype
    kind = {"f": "float32", "u": "uint16"}.get(dtype.kind, "int16")
    if kind == "int16" and not dtype.isnative:
        kind = "int16-swapped"
    if not all(f.flags.c_contiguous for f in frames):
        raise Skip("floor needs C-contiguous frames")
    ptrs = (ctypes.c_void_p * len(frames))(*[f.ctypes.data for f in frames])
    layout = spec["floor_outputs"]
    if planes is None:
        planes = output_planes(frames[0].shape, layout)
    outputs = FLOOR_OUTPUTS[layout]
    value, variance, counts = planes[0], planes[1], planes[2]
    nrejected = planes[3] if outputs == 0 else None
    bzero = BZERO if spec["kind"] == "raw" else 0.0
    args = (
        ptrs,
        len(frames),
        FLOOR_KIND[kind],
        value.size,
        bzero,
        value.ctypes.data,
        variance.ctypes.data,
        counts.ctypes.data,
        outputs,
        None if nrejected is None else nrejected.ctypes.data,
        spec["nthreads"],
    )

    def call():  # keeps the planes alive as long as it is
        if fn(*args) != 0:
            raise RuntimeError("bench_floor failed")
        return planes[0]

    return call


def native_call(frames, spec, planes=None):
    """megara_dark.combine.combine() with reused or freshly allocated outputs (out=:
    ``planes``, output_planes() for ``native``, or allocated here, once)."""
    from megara_dark.combine import CombineResult, combine

    method = spec["method"]
    kw = dict(NATIVE_KW[method], nthreads=spec["nthreads"])
    if spec["kind"] == "raw":
        kw["bzero"] = BZERO
    if spec["outputs"] == "allocated":
        return lambda: combine(frames, method, **kw).data
    if planes is None:
        planes = output_planes(frames[0].shape, "native")
    out = CombineResult(*planes)
    return lambda: combine(frames, method, out=out, **kw).data


def numina_api_module():
    """megara_dark's numina-compatible functions (a module), or None."""
    import megara_dark.combine as native

    if all(hasattr(native, name) for name, _ in NUMINA_FUNC.values()):
        return native
    try:
        return importlib.import_module("megara_dark.numina_compat")
    except ImportError:
        return None


def numina_style_call(module, frames, spec, out=None):
    """A numina-style function (numina's own or megara_dark's), dtype float32 (out=:
    ``out``, output_planes() for ``numina``, or allocated here, once)."""
    name, kw = NUMINA_FUNC[spec["method"]]
    fn = getattr(module, name)
    if spec["outputs"] == "allocated":
        return lambda: fn(frames, dtype="float32", **kw)[0]
    if "out" not in inspect.signature(fn).parameters:
        raise Skip(f"{name}() takes no out= (as numina's)")
    if out is None:
        out = output_planes(frames[0].shape, "numina")
    return lambda: fn(frames, dtype="float32", out=out, **kw)[0]


def peer_call(frames, spec):
    """A peer's combination, timed from the list of frames to the combined image."""
    tool, method = spec["tool"], spec["method"]
    if tool == "numina":
        import numina.array.combine

        return numina_style_call(numina.array.combine, frames, spec)
    if tool == "numpy":
        fn = np.median if method == "median" else np.mean
        return lambda: fn(frames, axis=0)
    if tool == "bottleneck":
        import bottleneck

        fn = bottleneck.nanmedian if method == "median" else bottleneck.nanmean
        return lambda: fn(np.stack(frames), axis=0)
    if tool == "astropy":
        from astropy.stats import sigma_clip

        def clip_mean():
            clipped = sigma_clip(
                np.stack(frames),
                sigma=3,
                maxiters=10,
                cenfunc="median",
                stdfunc="mad_std",
                axis=0,
                masked=True,
                copy=False,
            )
            return clipped.mean(axis=0).filled(np.nan)

        return clip_mean
    if tool == "ccdproc":
        from astropy.nddata import CCDData
        from ccdproc import Combiner

        ccds = [CCDData(f, unit="adu") for f in frames]

        def ccdproc_combine():
            combiner = Combiner(ccds, dtype=np.float32)
            if method == "median":
                return combiner.median_combine().data
            if method == "sigclip":
                combiner.sigma_clipping(
                    low_thresh=3, high_thresh=3, func="median", dev_func="mad_std"
                )
            elif method == "minmax":
                combiner.clip_extrema(nlow=1, nhigh=1)
            return combiner.average_combine().data

        return ccdproc_combine
    raise ValueError(f"unknown tool {tool!r}")


def child(spec: dict) -> dict:
    """Run one row: set up, note the baseline memory, time the call; return the result."""
    tool = spec["tool"]
    for module in TOOL_MODULES.get(tool, ()):
        importlib.import_module(module)
    if tool == IN_TURN:
        return in_turn_child(spec)
    frames = open_frames(spec)
    is_peer = tool in PEER_METHODS
    if is_peer and spec["kind"] == "raw":
        # What astropy hands a user of a raw frame (uint=True): uint16 physical values.
        frames = [(f.astype(np.int32) + BZERO).astype(np.uint16) for f in frames]
    # megara_dark's out= rows are also timed by turns with their floor, on the same planes.
    layout = FLOOR_LAYOUT.get(tool) if spec["outputs"] == "out= reused" else None
    try:
        baseline = rss_anon_kib()
        planes = output_planes(frames[0].shape, layout) if layout else None
        if tool.startswith("floor"):
            call = floor_call(frames, spec)
        elif tool == "megara_dark combine()":
            call = native_call(frames, spec, planes)
        elif tool == "megara_dark numina API":
            module = numina_api_module()
            if module is None:
                raise Skip("megara_dark's numina-compatible API not importable")
            call = numina_style_call(module, frames, spec, planes)
        else:
            call = peer_call(frames, spec)
    except Skip as why:
        return {"status": "skipped", "note": str(why)}
    # megara_dark and the floor get one untimed warm-up call (it maps the input pages,
    # touches reused outputs, fills caches); a first call slower than spec["slow"]
    # seconds is the only one, and the measurement.
    warmup = 0 if is_peer else 1
    repeats = spec["peer_repeats"] if is_peer else spec["repeats"]
    times, cpu_times, first_call, value_mean = [], [], None, None
    for i in range(warmup + repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        result = call()
        elapsed, cpu = time.perf_counter() - t0, time.process_time() - c0
        if i == 0:
            first_call = elapsed
            value_mean = float(np.mean(result, dtype=np.float64))  # buffered: no big copy
        del result  # before the next run: one set of outputs alive at a time
        if i >= warmup or first_call > spec["slow"]:
            times.append(elapsed)
            cpu_times.append(cpu)
        if first_call > spec["slow"]:
            break
    result = {
        "status": "ok",
        "times": times,
        "cpu_times": cpu_times,
        "first_call": first_call,
        "base_anon_kib": baseline,
        "value_mean": value_mean,
    }
    if layout and first_call <= spec["slow"]:
        floor = floor_call(frames, dict(spec, floor_outputs=layout), planes)
        floor()
        turns, _ = by_turns({"call": call, "floor": floor}, 2 * spec["repeats"] + 1)
        result["in_turn_times"], result["floor_in_turn_times"] = turns["call"], turns["floor"]
    return result


def by_turns(calls: dict, pairs: int) -> tuple[dict, dict]:
    """Call two calls (a dict of two) by turns, (a, b), (b, a), (a, b), ..., pairs times
    each, so that both meet the same state of the machine.  Returns the wall times and
    the CPU times (all threads) of each, in call order, by name."""
    names = list(calls)
    times = {name: [] for name in names}
    cpu_times = {name: [] for name in names}
    for i in range(pairs):
        for name in names if i % 2 == 0 else names[::-1]:
            t0, c0 = time.perf_counter(), time.process_time()
            calls[name]()
            times[name].append(time.perf_counter() - t0)
            cpu_times[name].append(time.process_time() - c0)
    return times, cpu_times


def in_turn_child(spec: dict) -> dict:
    """megara_dark combine() with out= on the raw frames and on the same physical values
    as float32, called by turns after a warm-up call of each: 2 x repeats + 1 pairs.
    The row's times are the raw calls'; ``float32_times`` the others', in the same order."""
    baseline = rss_anon_kib()
    calls = {}
    for kind in ("raw", "float32"):
        kind_spec = dict(spec, kind=kind)
        calls[kind] = native_call(open_frames(kind_spec), kind_spec)
        calls[kind]()
    times, cpu_times = by_turns(calls, 2 * spec["repeats"] + 1)
    return {
        "status": "ok",
        "times": times["raw"],
        "float32_times": times["float32"],
        "cpu_times": cpu_times["raw"],
        "first_call": None,
        "base_anon_kib": baseline,
        "value_mean": None,
    }


# ---- the parent -----------------------------------------------------------------------------


def cpu_stall_us() -> int | None:
    """Microseconds that some task waited for a CPU since boot (Linux PSI), or None."""
    try:
        with open("/proc/pressure/cpu") as f:
            return int(f.readline().split("total=")[1])
    except (OSError, IndexError, ValueError):
        return None


@dataclass
class Run:
    """What a child process did: exit status, output lines, wall time, peak RssAnon."""

    returncode: int | None  # None: killed after the timeout
    stdout: list[str]
    stderr: list[str]
    wall_s: float
    peak_anon_mib: float
    cpu_wait: float | None


def run_command(cmd: list[str], timeout: float, cwd=None) -> Run:
    """Run cmd, polling its RssAnon every POLL_S; kill it after timeout seconds."""
    stall0 = cpu_stall_us()
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        start, peak, timed_out = time.monotonic(), 0, False
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, text=True, cwd=cwd)
        while proc.poll() is None:
            peak = max(peak, rss_anon_kib(proc.pid))
            if time.monotonic() - start > timeout:
                proc.kill()
                timed_out = True
            time.sleep(POLL_S)
        wall = time.monotonic() - start
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read().splitlines(), err.read().strip().splitlines()
    stall1 = cpu_stall_us()
    wait = None if stall0 is None or stall1 is None else (stall1 - stall0) / 1e6 / wall
    return Run(None if timed_out else proc.returncode, stdout, stderr, wall, peak / 1024, wait)


def run_row(row: Row, timeout: float) -> None:
    """Run a row in a child process of this script; fill in the row."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", json.dumps(row.spec)]
    run = run_command(cmd, timeout)
    row.peak_anon_mib, row.cpu_wait = run.peak_anon_mib, run.cpu_wait
    lines = [ln for ln in run.stdout if ln.startswith("BENCH-RESULT ")]
    if run.returncode is None:
        row.skip(f"took more than {timeout:.0f} s (--timeout)")
        return
    if run.returncode != 0 or not lines:
        row.status = "failed"
        row.note = run.stderr[-1] if run.stderr else f"child exited with {run.returncode}"
        return
    result = json.loads(lines[-1][len("BENCH-RESULT ") :])
    row.status = result["status"]
    if row.status != "ok":
        row.note = result["note"]
        return
    row.times = result["times"]
    row.time_s = statistics.median(row.times)
    row.first_call_s = result["first_call"]
    row.cpu_s = statistics.median(result["cpu_times"])
    row.base_anon_mib = result["base_anon_kib"] / 1024
    row.peak_anon_mib = max(row.peak_anon_mib, row.base_anon_mib)  # polling may miss it
    row.value_mean = result["value_mean"]
    if "in_turn_times" in result:
        pairs = zip(result["in_turn_times"], result["floor_in_turn_times"], strict=True)
        row.x_floor_in_turn = statistics.median(c / f for c, f in pairs)
    if "float32_times" in result:
        pairs = zip(row.times, result["float32_times"], strict=True)
        row.float32_s = statistics.median(result["float32_times"])
        row.raw_over_float32 = statistics.median(r / f for r, f in pairs)
        row.note = (
            f"float32 {row.float32_s:.3g} s in the same loop; raw ÷ float32 "
            f"{row.raw_over_float32:.2f} (median of {len(row.times)} pairs)"
        )


def add_ratios(rows: list[Row]) -> None:
    """x floor for every row; peer ÷ megara_dark combine() for the peers; output checks."""
    by_key = {(r.case, r.method, r.tool, r.outputs): r for r in rows if r.status == "ok"}
    for r in rows:
        if r.status != "ok":
            continue
        floor_tool = FLOOR_TOOL[FLOOR_LAYOUT.get(r.tool, "native")]
        floor = by_key.get((r.case, "—", floor_tool, "preallocated"))
        if floor:
            r.x_floor = r.time_s / floor.time_s
        if r.tool not in PEER_METHODS:
            continue
        alloc = by_key.get((r.case, r.method, "megara_dark combine()", "allocated"))
        reuse = by_key.get((r.case, r.method, "megara_dark combine()", "out= reused"))
        if alloc:
            r.speedup_alloc = r.time_s / alloc.time_s
        if reuse:
            r.speedup_reuse = r.time_s / reuse.time_s
        if alloc and r.method in ("median", "mean") and r.value_mean is not None:
            diff = abs(r.value_mean - alloc.value_mean) / max(abs(alloc.value_mean), 1e-30)
            if diff > 1e-5:
                r.note += f"; image mean differs from megara_dark's by {diff:.1e} (relative)"


def machine_info(threads_info: dict, floor_cc: str) -> dict:
    """What the numbers came from."""
    model = platform.processor() or platform.machine()
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    meminfo = {}
    with open("/proc/meminfo") as f:
        for line in f:
            key, value = line.split(":", 1)
            meminfo[key] = int(value.split()[0]) * 1024

    def version(name):
        try:
            return importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            return "not installed"

    git = ["git", "-C", str(HERE), "rev-parse", "--short", "HEAD"]
    checkout = subprocess.run(git, capture_output=True, text=True, check=False).stdout.strip()
    return {
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "checkout": checkout or "unknown",
        "cpu": model,
        "cores": os.cpu_count(),
        "memory_gib": round(meminfo["MemTotal"] / 2**30, 1),
        "available_gib": round(meminfo["MemAvailable"] / 2**30, 1),
        "python": platform.python_version(),
        "versions": {
            n: version(n)
            for n in ("megara_dark", "numpy", "astropy", "bottleneck", "ccdproc", "numina")
        },
        "openmp": threads_info["openmp"],
        "default_threads": threads_info["default_threads"],
        "floor_compiler": floor_cc,
        "load_average_start": os.getloadavg()[0],
    }


def machine_line(m: dict) -> str:
    v = m["versions"]
    omp = f"OpenMP on, {m['default_threads']} threads" if m["openmp"] else "OpenMP off"
    return (
        f"{m['cpu']}, {m['cores']} cores, {m['memory_gib']} GiB RAM "
        f"({m['available_gib']} GiB available at start); Python {m['python']}, "
        f"numpy {v['numpy']}, astropy {v['astropy']}, bottleneck {v['bottleneck']}, "
        f"ccdproc {v['ccdproc']}, numina {v['numina']}; megara_dark {v['megara_dark']} ({omp}); "
        f"floor: {m['floor_compiler']}; load average {m['load_average_start']:.2f} at start, "
        f"{m['load_average_end']:.2f} at end; bench checkout {m['checkout']}; {m['date']}"
    )


def compile_floor(build_dir: Path) -> tuple[str | None, str]:
    """Compile floor.c into a shared library; (path or None, compiler description or error)."""
    cc = os.environ.get("CC", "cc")
    lib = build_dir / "floor.so"
    cmd = [cc, "-O3", "-fopenmp", "-shared", "-fPIC", "-o", str(lib), str(HERE / "floor.c")]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, check=False)
        version = subprocess.run([cc, "--version"], capture_output=True, text=True, check=False)
    except OSError as exc:
        return None, f"cannot run {cc}: {exc}"
    if done.returncode != 0:
        return None, f"{' '.join(cmd)} failed: {done.stderr.strip().splitlines()[-1]}"
    return str(lib), f"{version.stdout.splitlines()[0]} -O3 -fopenmp"


def fmt(value, digits=3, suffix=""):
    if value is None:
        return ""
    if value >= 100:
        return f"{value:.0f}{suffix}"
    return f"{value:.{digits}g}{suffix}"


def _delta(r: Row) -> float | None:
    return None if r.base_anon_mib is None else r.peak_anon_mib - r.base_anon_mib


def _note(r: Row) -> str:
    return (r.note if r.status == "ok" else f"{r.status.upper()}: {r.note}").replace("|", "/")


# Table columns: title, cell text of a row.
COLUMNS = [
    ("case", lambda r: r.case),
    ("method", lambda r: r.method),
    ("implementation", lambda r: r.tool),
    ("outputs", lambda r: r.outputs),
    ("time [s]", lambda r: fmt(r.time_s) if r.status == "ok" else "—"),
    ("runs", lambda r: str(len(r.times)) if r.times else ""),
    ("CPU [s]", lambda r: fmt(r.cpu_s)),
    ("1st call [s]", lambda r: fmt(r.first_call_s)),
    ("x floor", lambda r: fmt(r.x_floor, 3, "x")),
    ("x floor, in turn", lambda r: fmt(r.x_floor_in_turn, 3, "x")),
    ("peer ÷ md (alloc)", lambda r: fmt(r.speedup_alloc, 3, "x")),
    ("peer ÷ md (out=)", lambda r: fmt(r.speedup_reuse, 3, "x")),
    ("peak anon [MiB]", lambda r: fmt(r.peak_anon_mib) if r.status == "ok" else ""),
    ("Δ anon [MiB]", lambda r: fmt(_delta(r))),
    ("CPU wait", lambda r: "" if r.cpu_wait is None else f"{100 * r.cpu_wait:.0f} %"),
    ("note", _note),
]


def markdown(rows: list[Row], machine: dict, settings: dict) -> str:
    """The table, the machine line and what the columns mean."""
    head = [title for title, _ in COLUMNS]
    lines = [
        f"**Machine:** {machine_line(machine)}",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "|".join("---" for _ in head) + "|",
    ]
    for r in rows:
        lines.append("| " + " | ".join(cell(r) for _, cell in COLUMNS) + " |")
    lines += [
        "",
        f"Frames of {settings['shape'][0]} x {settings['shape'][1]} pixels, memory-mapped .npy "
        "files warm in the page cache (raw: stored int16, big-endian, BZERO = 32768, as in a "
        "FITS file; megara_dark reads them as they are, the peers get the uint16 physical "
        "values astropy would hand them, converted before the clock starts). "
        f"Time: median of the runs ({settings['repeats']} for megara_dark and the floor after "
        f"one warm-up call; {settings['peer_repeats']} for a peer; a row whose first call took "
        f"more than {settings['slow']:.0f} s is timed by that call alone). "
        "**floor**: a minimal OpenMP C loop that reads the N frames once and writes the same "
        "output planes (combine(): value + variance float32, npix + nrejected int16; numina "
        "API: one float32 (3, ny, nx) array) into memory allocated beforehand. "
        "**x floor, in turn**: for out= rows, the median of call ÷ floor over "
        f"{2 * settings['repeats'] + 1} pairs timed by turns in the row's process, the "
        "floor writing the same output planes (x floor divides by the case's floor row, "
        "run apart). "
        "**1st call**: the first call in a fresh process (input pages mapped, one-off "
        "caches filled: megara_dark calibrates a clipping method's variance factors on its "
        "first use). "
        "**out= reused**: outputs allocated once and passed again (the steady state); "
        "**allocated**: the end-to-end call that allocates its outputs, paying the first touch "
        "of fresh memory (a page fault per 4 KiB, about 3 s/GiB on this kind of machine). "
        "**raw and float32 in turn**: 11 raw frames and the same values as float32, combined "
        "by turns in one process (2 x repeats + 1 pairs): the two inputs meet the same state "
        "of the machine, which rows run minutes apart do not; time: the raw calls. "
        "**peer ÷ md**: the peer's time over megara_dark combine()'s for the same case and "
        "method (allocating or out=); peers are timed from the list of frames to the combined "
        "image (their own stacking included) and always allocate. "
        "**peak anon**: highest RssAnon of the row's child process (polled every 5 ms; mapped "
        "input files are page cache and do not count); **Δ anon**: peak minus the child's "
        "RssAnon after its imports and inputs, before any output was allocated. "
        "**CPU**: CPU time of one call, all threads (OpenMP threads spin a little while "
        "they wait), less sensitive to other work than the wall time. "
        "**CPU wait**: share of the row's wall time during which some task on the machine "
        "waited for a CPU (Linux PSI): the machine is shared with other work, and a row with "
        "a high figure was slowed by it (times are ±10 % at best).",
    ]
    return "\n".join(lines)


def targets(rows: list[Row]) -> list[str]:
    """The figures issue 4 sets targets for, measured (not asserted)."""
    ok = [r for r in rows if r.status == "ok"]

    def find(case_prefix, method, tool, outputs):
        return next(
            (
                r
                for r in ok
                if r.case.startswith(case_prefix)
                and r.method == method
                and r.tool == tool
                and r.outputs == outputs
            ),
            None,
        )

    out = []
    main = next(
        (r.case for r in ok if r.case.startswith("11 x float32") and "1 thr" not in r.case), None
    )
    if main is None:
        return out
    limits = {"median": 1.5, "mean": 1.3, "sigclip": 3, "minmax": 3, "quantileclip": 3}
    for method, limit in limits.items():
        api = find(main, method, "megara_dark numina API", "out= reused")
        native = find(main, method, "megara_dark combine()", "out= reused")
        parts = [f"{method}: target ≤ {limit}x floor"]
        for name, r in (("numina API", api), ("combine()", native)):
            if r and r.x_floor:
                turns = f" ({r.x_floor_in_turn:.2f}x in turn)" if r.x_floor_in_turn else ""
                parts.append(f"{name} out= {r.x_floor:.2f}x{turns}")
        out.append("; ".join(parts))
    for peer, limit in (("numina", 100), ("ccdproc", 300)):
        r = find(main, "median", peer, "allocated")
        if r and r.speedup_reuse:
            out.append(
                f"median vs {peer}: target ≥ {limit}x; measured {r.speedup_reuse:.0f}x "
                f"(out=), {r.speedup_alloc:.0f}x (allocating)"
            )
    for method in ("median", "mean", "sigclip"):
        f32 = find(main, method, "megara_dark combine()", "out= reused")
        raw = find("11 x raw", method, "megara_dark combine()", "out= reused")
        in_turn = find("11 x raw", method, IN_TURN, "out= reused")
        parts = [f"raw vs float32 ({method}, out=)"]
        if f32 and raw:
            parts.append(f"rows apart: {raw.time_s:.3g} s vs {f32.time_s:.3g} s")
        if in_turn:
            parts.append(
                f"in turn: {in_turn.time_s:.3g} s vs {in_turn.float32_s:.3g} s, "
                f"raw ÷ float32 {in_turn.raw_over_float32:.2f}"
            )
        if len(parts) > 1:
            out.append("; ".join(parts))
    big = find("201 x raw", "median", "megara_dark combine()", "allocated")
    if big and big.base_anon_mib is not None:
        planes = 2 * 4 + 2 * 2  # bytes per pixel of the four output planes
        ny, nx = big.spec["shape"]
        out.append(
            f"201 frames (median, allocating): peak anon {big.peak_anon_mib:.0f} MiB "
            f"(Δ {_delta(big):.0f} MiB); target < planes + 1 GiB = "
            f"{planes * ny * nx / MIB + 1024:.0f} MiB"
        )
    recipe = next((r for r in ok if r.case.startswith("recipe") and r.time_s), None)
    if recipe:
        out.append(
            f"whole recipe, 11 raw frames, command line to products (no PNG): "
            f"{recipe.time_s:.2f} s wall; target ≤ 1.0 s"
        )
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--quick",
        action="store_true",
        help="tiny frames, one run: a smoke test (exit status 1 when a row failed)",
    )
    parser.add_argument("--repeats", type=int, default=5, help="runs of megara_dark and the floor")
    parser.add_argument("--peer-repeats", type=int, default=3, help="runs of a peer")
    parser.add_argument(
        "--slow",
        type=float,
        default=20.0,
        help="a row whose first call takes longer (s) is timed by that call alone",
    )
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds per row")
    parser.add_argument(
        "--max-peer-frames", type=int, default=51, help="peers are not run on more frames than this"
    )
    parser.add_argument(
        "--cases",
        default="float32,threads,raw,recipe",
        help="comma-separated groups: float32, threads, raw, recipe",
    )
    parser.add_argument("--no-peers", action="store_true", help="megara_dark and the floor only")
    parser.add_argument(
        "--data-dir",
        type=Path,
        help="keep the generated frames here and reuse them (default: a "
        "temporary folder, removed at the end)",
    )
    parser.add_argument("--results", type=Path, default=HERE / "results")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.child:
        result = child(json.loads(args.child))
        print("BENCH-RESULT " + json.dumps(result), flush=True)
        return 0

    def log(msg):
        print(msg, file=sys.stderr, flush=True)

    from megara_dark.combine import build_info

    info = build_info()
    if args.quick:
        args.repeats = args.peer_repeats = 1
    shape = QUICK_SHAPE if args.quick else SHAPE
    groups = [g.strip() for g in args.cases.split(",") if g.strip()]
    cases_by_group = make_cases(info["default_threads"], args.max_peer_frames)
    unknown = set(groups) - {*cases_by_group, "recipe"}
    if unknown:
        parser.error(f"unknown case group(s) {', '.join(sorted(unknown))}")
    cases = [c for g in groups if g != "recipe" for c in cases_by_group[g]]
    if args.no_peers:
        cases = [replace(c, peers=()) for c in cases]

    work = Path(tempfile.mkdtemp(prefix="megara_dark_bench_"))
    data_dir = args.data_dir or work
    data_dir.mkdir(parents=True, exist_ok=True)
    try:
        floor_lib, floor_cc = compile_floor(work)
        machine = machine_info(info, floor_cc)
        log(f"machine: {machine['cpu']}, {machine['cores']} cores; data in {data_dir}")
        n_raw = max((c.n for c in cases if c.kind == "raw"), default=0)
        n_float = max((c.n for c in cases if c.kind == "float32" or c.in_turn), default=0)
        make_frames(data_dir, shape, n_raw, n_float, log)
        common = {
            "data_dir": str(data_dir),
            "shape": list(shape),
            "floor_lib": floor_lib,
            "repeats": args.repeats,
            "peer_repeats": args.peer_repeats,
            "slow": args.slow,
            "max_peer_frames": args.max_peer_frames,
        }
        mem_avail = int(machine["available_gib"] * 2**30)
        api_ok = numina_api_module() is not None
        rows = [r for c in cases for r in case_rows(c, common, api_ok, mem_avail)]
        for i, row in enumerate(rows, 1):
            if row.status != "ok":
                continue
            if row.tool.startswith("floor") and floor_lib is None:
                row.skip(floor_cc)
                continue
            run_row(row, args.timeout)
            shown = f"{row.time_s:.3g} s" if row.status == "ok" else f"{row.status}: {row.note}"
            log(
                f"[{i}/{len(rows)}] {row.case} · {row.method} · {row.tool} · {row.outputs}: {shown}"
            )
        if "recipe" in groups:
            log("recipe: simulating 11 raw frames and running the command line")
            rows += bench_recipe(work, args.repeats, args.timeout)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    machine["load_average_end"] = os.getloadavg()[0]
    add_ratios(rows)

    settings = {
        "shape": list(shape),
        "repeats": args.repeats,
        "peer_repeats": args.peer_repeats,
        "slow": args.slow,
        "quick": args.quick,
        "timeout": args.timeout,
    }
    text = markdown(rows, machine, settings)
    goals = [] if args.quick else targets(rows)
    if goals:
        text += "\n\nIssue 4 targets, as measured:\n\n" + "\n".join(f"- {g}" for g in goals)
    print(text)
    args.results.mkdir(parents=True, exist_ok=True)
    stamp = datetime.datetime.now().strftime("%Y-%m-%dT%H%M%S") + ("-quick" if args.quick else "")
    (args.results / f"bench-{stamp}.md").write_text(text + "\n")
    doc = {
        "machine": machine,
        "settings": settings,
        "targets": goals,
        "rows": [{k: v for k, v in asdict(r).items() if k != "spec"} for r in rows],
    }
    (args.results / f"bench-{stamp}.json").write_text(json.dumps(doc, indent=1) + "\n")
    log(f"written: {args.results / f'bench-{stamp}.md'} and .json")
    failed = [r for r in rows if r.status == "failed"]
    for r in failed:
        log(f"FAILED: {r.case} · {r.method} · {r.tool} · {r.outputs}: {r.note}")
    return 1 if args.quick and failed else 0


if __name__ == "__main__":
    sys.exit(main())
