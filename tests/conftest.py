"""Shared fixtures and hypothesis strategies for megara_dark's tests.

``frame_sets()`` draws edge-case inputs for ``combine()``: sets of N = 1..70
frames (across the sorting-network limit of 64), each frame with its own dtype
(uint8, int16, uint16, int32, int64, float32, float64), byte order and memory
layout (contiguous, strided, Fortran, reversed, unaligned), with NaN/+-inf,
BLANK, masks (some pixels masked in every frame), a bias, row offsets, zeros,
scales and weights, BZERO/BSCALE (int16 with BZERO = 32768 is FITS's uint16),
in shapes 1x1, 1xn, nx1 and widths that cross the core's column tiles.
Structure comes from hypothesis; pixel values from a NumPy generator seeded by
hypothesis, so every example is reproducible.
"""

from __future__ import annotations

import signal
from dataclasses import dataclass, field

import numpy as np
import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

from megara_dark import variance


def pytest_configure(config):
    """A test run that a shell without job control started in the background (``&``)
    inherits SIGINT ignored, and so would every child process it starts; the tests of
    Ctrl-C need it handled as in a terminal (KeyboardInterrupt here, the default in the
    children, which Python then turns into KeyboardInterrupt too)."""
    if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)


settings.register_profile(
    "megara_dark",
    deadline=None,  # timings are noisy on the shared machine
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.load_profile("megara_dark")

INPUT_DTYPES = ("uint8", "int16", "uint16", "int32", "int64", "float32", "float64")
ARRANGEMENTS = ("contiguous", "strided", "fortran", "reversed", "unaligned")
# 1..8, 10, 11, 16, 21 and around the sorting-network limit (64).
FRAME_COUNTS = (1, 2, 3, 4, 5, 6, 7, 8, 10, 11, 16, 21, 64, 65, 70)
# Widths crossing the core's column strips (16) and tiles (16..1024 columns).
WIDTHS = (1, 2, 3, 16, 17, 33, 129, 1025)
HEIGHTS = (1, 2, 3, 5, 7, 17)


@dataclass
class FrameSet:
    """Inputs of one combination: ``combine(frames, method, **kwargs)``."""

    frames: list | np.ndarray
    kwargs: dict = field(default_factory=dict)

    @property
    def nframes(self) -> int:
        return len(self.frames)

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.frames[0].shape)

    def buffers(self) -> list[np.ndarray]:
        """Every input array and the arrays its memory belongs to."""
        arrays = [self.frames] if isinstance(self.frames, np.ndarray) else list(self.frames)
        for value in self.kwargs.values():
            if isinstance(value, np.ndarray):
                arrays.append(value)
            elif isinstance(value, list):
                arrays += [v for v in value if isinstance(v, np.ndarray)]
        owners = []
        for a in arrays:
            while isinstance(a, np.ndarray):
                owners.append(a)
                a = a.base
        return owners


def snapshot(frame_set: FrameSet) -> list[bytes]:
    """The bytes of every input buffer, to check later that nothing changed."""
    return [np.ascontiguousarray(a).view(np.uint8).tobytes() for a in frame_set.buffers()]


def arrange(raw: np.ndarray, big_endian: bool, arrangement: str, rng) -> np.ndarray:
    """An array equal to ``raw`` in the given byte order and memory layout;
    memory around a strided view holds garbage, so misreads show."""
    dtype = raw.dtype.newbyteorder(">") if big_endian else raw.dtype.newbyteorder("=")
    raw = raw.astype(dtype)
    if arrangement == "strided":
        parent = np.empty((2 * raw.shape[0] + 1, 3 * raw.shape[1] + 2), dtype)
        parent[...] = rng.integers(0, 100, parent.shape)
        if dtype.kind == "f":
            parent[::2] = np.nan
        view = parent[1::2, 2::3]
    elif arrangement == "fortran":
        view = np.asfortranarray(raw)
    elif arrangement == "reversed":
        view = raw[::-1, ::-1].copy()[::-1, ::-1]
    elif arrangement == "unaligned":
        buffer = np.empty(raw.nbytes + 1, np.uint8)
        view = buffer[1:].view(dtype).reshape(raw.shape)
    else:
        view = np.ascontiguousarray(raw)
    view[...] = raw
    return view


def _to_raw(physical: np.ndarray, dtype: np.dtype, bscale: float, bzero: float) -> np.ndarray:
    """Raw values whose ``bscale * raw + bzero`` approximate ``physical``."""
    raw = (physical - bzero) / bscale
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        raw = np.clip(np.rint(raw), max(info.min, -(2.0**62)), min(info.max, 2.0**62))
    return raw.astype(dtype)


def _scaling(draw, dtypes: list[np.dtype]):
    """(bscale, bzero) per frame and how to pass them to combine()."""
    mode = draw(st.sampled_from(["none", "fits", "scalar", "per-frame"]))
    n = len(dtypes)
    if mode == "none":
        return [1.0] * n, [0.0] * n, {}
    if mode == "fits":  # int16 frames are FITS uint16 (BZERO = 32768), others as they are
        bzero = [32768.0 if d == np.int16 else 0.0 for d in dtypes]
        return [1.0] * n, bzero, {"bzero": bzero}
    choices = st.sampled_from([(1.0, 0.0), (0.5, 0.0), (2.0, -1000.0), (1.0, 32768.0), (0.25, 7.5)])
    if mode == "scalar":
        bscale, bzero = draw(choices)
        return [bscale] * n, [bzero] * n, {"bscale": bscale, "bzero": bzero}
    pairs = [draw(choices) for _ in range(n)]
    bscale, bzero = [p[0] for p in pairs], [p[1] for p in pairs]
    return bscale, bzero, {"bscale": bscale, "bzero": np.array(bzero)}


@st.composite
def frame_sets(draw, *, weights: bool = False, tall: bool = False, max_values: int = 12_000):
    """A FrameSet of edge cases (see the module docstring).

    weights: may draw ``weights`` (only for methods that take them); tall: 20..131
    rows (for row-block tests); max_values: bound on N * ny * nx.
    """
    n = draw(st.sampled_from([n for n in FRAME_COUNTS if not tall or n <= 21]))
    heights, widths = ((20, 37, 131), (1, 17, 33)) if tall else (HEIGHTS, WIDTHS)
    nx = draw(st.sampled_from([nx for nx in widths if n * heights[0] * nx <= max_values]))
    ny = draw(st.sampled_from([ny for ny in heights if n * ny * nx <= max_values]))
    shape = (ny, nx)
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))

    mixed = draw(st.booleans())
    one = draw(st.sampled_from(INPUT_DTYPES))
    dtypes = [np.dtype(draw(st.sampled_from(INPUT_DTYPES)) if mixed else one) for _ in range(n)]
    bscale, bzero, kwargs = _scaling(draw, dtypes)

    # Physical values: a level, Gaussian noise or small integer ties, cosmic rays.
    level = draw(st.sampled_from([0.0, 100.0, 1000.0, -50.0]))
    noise = draw(st.sampled_from(["gauss", "ties", "flat"]))
    if noise == "gauss":
        physical = level + draw(st.sampled_from([0.3, 5.0, 300.0])) * rng.standard_normal(
            (n, *shape)
        )
    elif noise == "ties":
        physical = level + rng.integers(0, 3, (n, *shape)).astype(float)
    else:
        physical = np.full((n, *shape), level)
    if draw(st.booleans()):
        physical[rng.random(physical.shape) < 0.03] = 1e5
    raws = [_to_raw(physical[i], dtypes[i], bscale[i], bzero[i]) for i in range(n)]

    # Bad values: NaN/+-inf in float frames, BLANK in integer frames.
    p_bad = draw(st.sampled_from([0.0, 0.05, 0.3]))
    blanks = [None] * n
    use_blank = p_bad > 0 and draw(st.booleans())
    for i, raw in enumerate(raws):
        bad = rng.random(shape) < p_bad
        if raw.dtype.kind == "f":
            raw[bad] = rng.choice([np.nan, np.inf, -np.inf], size=int(bad.sum()))
        elif use_blank:
            blanks[i] = int(np.iinfo(raw.dtype).min if rng.random() < 0.5 else raw.flat[0])
            raw[bad] = blanks[i]
    if use_blank and any(b is not None for b in blanks):
        same = all(b == blanks[0] for b in blanks) and blanks[0] is not None
        kwargs["blank"] = blanks[0] if same and draw(st.booleans()) else blanks

    layouts = [
        (draw(st.booleans()), draw(st.sampled_from(ARRANGEMENTS)))
        for _ in range(n if draw(st.booleans()) else 1)
    ]
    frames = [arrange(raw, *layouts[i % len(layouts)], rng) for i, raw in enumerate(raws)]
    if len(set(dtypes)) == 1 and layouts[0][1] == "contiguous" and draw(st.booleans()):
        frames = np.stack(frames)  # a 3-D stack is accepted too

    kwargs.update(_masks(draw, rng, n, shape))
    if draw(st.booleans()):
        bias = rng.normal(draw(st.sampled_from([0.0, 10.0])), 1.0, shape)
        dtype = np.dtype(draw(st.sampled_from(["float32", "float64", "int16", "uint16"])))
        if dtype.kind == "f" and draw(st.booleans()):
            bias[rng.random(shape) < 0.05] = np.nan  # a bad bias pixel spoils every frame
        kwargs["bias"] = arrange(
            _to_raw(bias, dtype, 1.0, 0.0) if dtype.kind in "iu" else bias.astype(dtype),
            draw(st.booleans()),
            draw(st.sampled_from(ARRANGEMENTS)),
            rng,
        )
    if draw(st.booleans()):
        offsets = rng.normal(0.0, 2.0, (n, shape[0]))
        kwargs["row_offsets"] = draw(
            st.sampled_from([offsets, offsets.astype(np.float32), offsets.tolist()])
        )
    if draw(st.booleans()):
        kwargs["zeros"] = rng.normal(0.0, 10.0, n).tolist()
    if draw(st.booleans()):
        signs = np.where(rng.random(n) < 0.1, -1.0, 1.0)
        kwargs["scales"] = signs * rng.uniform(0.5, 2.0, n)
    if weights and draw(st.booleans()):
        kwargs["weights"] = rng.uniform(0.1, 4.0, n)
    return FrameSet(frames, kwargs)


def _masks(draw, rng, n: int, shape) -> dict:
    """masks=... (or nothing): per frame None or an array (bool, integer or
    float, any layout; non-zero or NaN = bad), some pixels masked in every frame."""
    mode = draw(st.sampled_from(["none", "some", "dead pixels"]))
    if mode == "none":
        return {}
    p = draw(st.sampled_from([0.05, 0.5]))
    dead = rng.random(shape) < (0.1 if mode == "dead pixels" else 0.0)
    masks = []
    for _ in range(n):
        if mode == "some" and rng.random() < 0.3:
            masks.append(None)
            continue
        flags = (rng.random(shape) < p) | dead
        dtype = np.dtype(draw(st.sampled_from(["bool", "uint8", "int32", "float32"])))
        mask = flags.astype(dtype)
        if dtype.kind == "f":  # any non-zero value is bad, NaN too; -0.0 is good
            mask = np.where(flags, rng.choice([1.0, np.nan, -3.5], shape), -0.0).astype(dtype)
        elif dtype.kind == "i":
            mask = mask * rng.choice([1, -7, 1 << 20], shape).astype(dtype)
        masks.append(arrange(mask, draw(st.booleans()), draw(st.sampled_from(ARRANGEMENTS)), rng))
    return {"masks": masks}


@pytest.fixture
def fast_calibration(monkeypatch):
    """Make the variance-factor calibration of rejection methods cheap.

    The twin comparisons check the core's use of the factors K (the reference
    calls the same ``variance_factors``), not K's accuracy, which the Monte
    Carlo tests check with the real settings; the cache is cleared on both
    sides so no cheap factor outlives the test.
    """
    variance._calibrated.cache_clear()
    monkeypatch.setattr(variance, "_CALIBRATION_VALUES", 1 << 12)
    monkeypatch.setattr(variance, "_CALIBRATION_MIN_PIXELS", 64)
    yield
    variance._calibrated.cache_clear()


@pytest.fixture
def rng():
    """A NumPy generator with a fixed seed."""
    return np.random.default_rng(20261126)


# ==================================================================================================
# Recipe tests (test_recipe, test_validate, test_io, test_qc, test_report, test_megaradrp_fidelity):
# small simulated dark sets, FITS variants, an independent float64 reference of the master dark
# and the checks every run must pass (inputs byte-identical, no temp file left).
# ==================================================================================================

import contextlib  # noqa: E402
import hashlib  # noqa: E402
import os  # noqa: E402
import re  # noqa: E402
from pathlib import Path  # noqa: E402

from astropy.io import fits  # noqa: E402

from megara_dark.detector import make_geometry  # noqa: E402
from megara_dark.recipe import DarkRecipe, DarkRecipeInput  # noqa: E402
from megara_dark.simulate import simulate_dark_set  # noqa: E402

#: Raw 74 x 80, trimmed 64 x 64: MEGARA's layout in small.
RECIPE_GEOMETRY = make_geometry(32, 64, overscan=8, middle_rows=10, name="small MEGARA")
RECIPE_SEED = 20261126


def file_sha256(path) -> str:
    """Hex SHA-256 of a file's bytes."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def esc(path) -> str:
    """A path as a regular expression matching it literally (for pytest.raises(match=...))."""
    return re.escape(str(path))


def regular_files(folders) -> list[Path]:
    """The readable regular files (links followed; no FIFO, no directory) in the folders."""
    found = []
    for folder in map(Path, folders):
        if folder.is_dir():
            found += [p for p in folder.iterdir() if p.is_file() and os.access(p, os.R_OK)]
    return sorted(found)


@contextlib.contextmanager
def files_unchanged(paths):
    """Assert that every file is byte-identical after the block, whatever the block does."""
    before = {str(p): file_sha256(p) for p in paths}
    try:
        yield
    finally:
        assert {p: file_sha256(p) for p in before} == before, "an input file changed"


def temp_files(folder) -> list[str]:
    """Hidden temporary files a run may leave in its output folder."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def run_recipe(frames, bias, outdir, **options):
    """``DarkRecipe(outdir=outdir, **options).run(DarkRecipeInput(frames, bias))`` on
    RECIPE_GEOMETRY (unless ``geometry`` is given), checking that, whatever happens,
    every file in the inputs' folders stays byte-identical and no temp file is left."""
    options.setdefault("geometry", RECIPE_GEOMETRY)
    listed = [frames] if isinstance(frames, (str, os.PathLike)) else list(frames)
    folders = {Path(p).parent for p in [*listed, bias] if p is not None} - {Path(outdir)}
    try:
        with files_unchanged(regular_files(folders)):
            return DarkRecipe(outdir=outdir, **options).run(DarkRecipeInput(frames, bias))
    finally:
        assert temp_files(outdir) == []


def write_variant(source, target, *, header=None, remove=(), data=None) -> Path:
    """Copy the FITS image ``source`` to ``target``: header keys set (``header``) and
    removed, physical values transformed by ``data`` (a function of a float64 array,
    returning the array to store; uint16 is written with BZERO = 32768 as MEGARA)."""
    with fits.open(source) as hdul:
        values = hdul[0].data
        new_header = hdul[0].header.copy()
    for key in ("BZERO", "BSCALE", "BLANK", *remove):
        new_header.remove(key, ignore_missing=True, remove_all=True)
    new_header.update(header or {})
    if data is not None:
        values = data(values.astype(np.float64))
    fits.PrimaryHDU(values, header=new_header).writeto(target)
    return Path(target)


def header_end(data: bytes) -> int:
    """Byte offset just after the END card of the primary header."""
    for start in range(0, len(data), 80):
        if data[start : start + 80].rstrip() == b"END":
            return start + 80
    raise AssertionError("no END card")


def replace_card(path, key: str, text: str) -> None:
    """Rewrite a header card's value field in place (values astropy refuses to write)."""
    data = Path(path).read_bytes()
    start = data.index(f"{key:8s}= ".encode())
    card = f"{key:8s}= {text:>20s}".ljust(80).encode()
    Path(path).write_bytes(data[:start] + card + data[start + 80 :])


def _spline_fit(rows: np.ndarray, values: np.ndarray, knot: int) -> np.ndarray:
    """Least-squares cubic spline, one interior knot, in the truncated power basis."""
    x = (rows - rows[0]) / (rows[-1] - rows[0])
    k = (knot - rows[0]) / (rows[-1] - rows[0])
    basis = np.column_stack([x**0, x, x**2, x**3, np.clip(x - k, 0, None) ** 3])
    coeffs = np.linalg.lstsq(basis, values, rcond=None)[0]
    return basis @ coeffs


def physical_values(path) -> np.ndarray:
    """bscale * stored + bzero of the (single) image of a FITS file, float64, BLANK as NaN."""
    with fits.open(path, do_not_scale_image_data=True) as hdul:
        hdu = next(h for h in hdul if h.data is not None)
        stored = np.asarray(hdu.data)
        values = stored.astype(np.float64)
        if "BLANK" in hdu.header and stored.dtype.kind in "iu":
            values[stored == hdu.header["BLANK"]] = np.nan
        return values * hdu.header.get("BSCALE", 1.0) + hdu.header.get("BZERO", 0.0)


def reference_corrected(frames, bias, geometry=RECIPE_GEOMETRY, exptimes=None) -> np.ndarray:
    """Independent float64 reference of the corrected frames, (N, rows, columns).

    Per raw frame and amplifier, as megaradrp: the mean of each row's overscan
    columns (BLANK values left out), fitted along the raw rows by a least-squares
    cubic spline with one interior knot, is subtracted from the row's data
    columns; the amplifiers' data are stacked (trimmed) and the master bias
    subtracted; in rate mode each frame is divided by its exposure time.
    """
    bias_values = physical_values(bias)
    out = []
    for k, path in enumerate(frames):
        raw = physical_values(path)
        pieces = []
        for amp in geometry.amplifiers:
            rows = np.arange(amp.rows.start, amp.rows.stop)
            means = np.nanmean(raw[amp.rows, amp.overscan_cols], axis=1)  # BLANK left out
            level = _spline_fit(rows, means, amp.knot)
            pieces.append(raw[amp.rows, amp.data_cols] - level[:, None])
        corrected = np.vstack(pieces) - bias_values
        out.append(corrected / exptimes[k] if exptimes is not None else corrected)
    return np.array(out)


def reference_master_dark(frames, bias, geometry=RECIPE_GEOMETRY, exptimes=None) -> np.ndarray:
    """The median over frames of :func:`reference_corrected`, NaN (BLANK) ignored."""
    return np.nanmedian(reference_corrected(frames, bias, geometry, exptimes), axis=0)


@pytest.fixture
def dark_set(tmp_path):
    """Five raw darks and their master bias on RECIPE_GEOMETRY, in ``tmp_path / "raw"``."""
    return simulate_dark_set(
        tmp_path / "raw", nframes=5, seed=RECIPE_SEED, geometry=RECIPE_GEOMETRY, threads=1
    )


@pytest.fixture(scope="session")
def megara_set(tmp_path_factory):
    """Three full-size raw MEGARA darks and their master bias, simulated once per session
    (for the command line, which has no small layout); never to be modified."""
    return simulate_dark_set(
        tmp_path_factory.mktemp("megara") / "raw", nframes=3, seed=RECIPE_SEED, threads=2
    )


# ==================================================================================================
# Command-line tests (test_cli, test_dask): the installed ``megara-dark`` command in a subprocess.
# ==================================================================================================

import subprocess  # noqa: E402
import sys  # noqa: E402

COMMAND = [str(Path(sys.executable).parent / "megara-dark")]
CLI_ENV = {k: v for k, v in os.environ.items() if k not in ("FORCE_COLOR", "TTY_COMPATIBLE")}
CLI_TIMEOUT = 300
ERROR_LINE = re.compile(r"^megara-dark: error: .+$")


def cli(*args, cwd: Path, command=COMMAND) -> subprocess.CompletedProcess:
    """Run the command with pipes (not a terminal) and wait for it."""
    return subprocess.run(
        [*command, *map(str, args)],
        cwd=cwd,
        env=CLI_ENV,
        capture_output=True,
        text=True,
        timeout=CLI_TIMEOUT,
    )


def error_line(stderr: str) -> str:
    """The error: stderr's last line, the only error line, and no traceback."""
    lines = stderr.splitlines()
    assert ERROR_LINE.match(lines[-1]), stderr
    assert sum(bool(ERROR_LINE.match(line)) for line in lines) == 1, stderr
    assert "Traceback" not in stderr
    return lines[-1]
