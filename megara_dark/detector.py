"""MEGARA detector geometry and the overscan model of megaradrp 0.22.

A raw MEGARA 1x1 frame is 4212 rows x 4196 columns of 16-bit integers read by
two amplifiers (megaradrp's detector component ``2e02e135``; 0-based,
half-open ranges)::

    amp1  rows    0-2055   data columns 50-4145   overscan columns 4146-4195
    amp2  rows 2156-4211   data columns 50-4145   overscan columns    0-49

Rows 2056-2155 are overscan rows between the amplifiers (unused, as in
megaradrp).  Trimming keeps the data columns of both amplifiers' rows, stacked:
4112 x 4096, trimmed rows 0-2055 from amp1 and 2056-4111 from amp2.

Overscan (``OverscanCorrector`` of megaradrp): per amplifier, the mean of the
overscan columns of each row, computed by NumPy in the data's floating type
(float32 for 16-bit frames), is fitted along the (absolute raw) row number
with a least-squares cubic spline with one interior knot (row 1200 for amp1,
3100 for amp2; end knots at the amplifier's first and last rows), and the fit
is subtracted from every data pixel of the row, in float64, the result rounded
to the frame's type.  Here the same spline space is fitted in its B-spline
basis by a QR least-squares solve; it agrees with scipy's
``LSQUnivariateSpline`` (FITPACK) to about 1e-11 ADU.

This module holds no pixel arithmetic beyond those row means and the fit: it
returns per-row offsets and views of the data, for the combination core.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Literal

import numpy as np

from .errors import ValidationError

SPLINE_DEGREE = 3
# megaradrp's interior knots for the 1x1 layout, absolute raw rows (trimover.py).
MEGARA_KNOTS = (1200, 3100)
MEGARA_ROWS_PER_AMP = 2056
MEGARA_MIDDLE = 100
MEGARA_GAINS = (1.73, 1.6)  # e-/ADU, amp1 and amp2 (detector component gain1/gain2)
MEGARA_READ_NOISE = 3.4  # e-, both amplifiers (megaradrp schema default RDNOISE1/2)
MEGARA_DETECTOR = "CCD2231-84-0-E74"
# megaradrp's detector component: the calibration id it writes as NUM-OVPE and NUM-TRIM.
MEGARADRP_DETECTOR_UUID = "2e02e135-2325-47c9-9975-466b445b0b8b"
# Header keys of a binned readout (written by megaradrp's simulator).
BINNING_KEYS = ("VBIN", "HBIN")
UNSUPPORTED_BINNING = (
    "binned MEGARA frames are not supported (megaradrp 0.22 does not support them either: "
    "its overscan knots and geometry are fixed for 1x1 readouts)"
)


@dataclass(frozen=True)
class Amplifier:
    """One amplifier's regions of a raw frame (0-based slices)."""

    name: str
    rows: slice  # raw rows read by this amplifier (data and overscan)
    data_cols: slice  # raw columns of the data (trimmed) region
    overscan_cols: slice  # raw columns of the overscan used for the bias model
    trimmed_rows: slice  # rows of the trimmed frame holding this amplifier's data
    knot: int  # interior knot of the overscan spline, absolute raw row
    gain: float  # e-/ADU


@dataclass(frozen=True)
class Geometry:
    """A MEGARA-like two-amplifier layout: raw and trimmed shapes (rows, columns)."""

    name: str
    raw_shape: tuple[int, int]
    trimmed_shape: tuple[int, int]
    middle_rows: slice  # raw overscan rows between the amplifiers
    amplifiers: tuple[Amplifier, Amplifier]


def make_geometry(
    rows_per_amp: int,
    data_cols: int,
    overscan: int = 50,
    middle_rows: int = 100,
    *,
    gains: tuple[float, float] = MEGARA_GAINS,
    name: str | None = None,
) -> Geometry:
    """Build MEGARA's layout for any size (the real one is :data:`MEGARA`).

    amp1 reads rows ``[0, R)`` with its overscan right of the data, amp2 rows
    ``[R + M, 2R + M)`` with its overscan left of the data; each side has
    ``overscan`` pre/overscan columns.  The knots scale with ``R`` from
    MEGARA's (1200 and 2156 + 944 for R = 2056), so small layouts behave alike.

    Parameters
    ----------
    rows_per_amp : int
        Data rows per amplifier, R (MEGARA: 2056); at least 8.
    data_cols : int
        Data columns, D (MEGARA: 4096).
    overscan : int
        Prescan and overscan columns on each side (MEGARA: 50).
    middle_rows : int
        Overscan rows between the amplifiers, M, even (MEGARA: 100).
    gains : (float, float)
        e-/ADU of amp1 and amp2.
    name : str, optional
        Label used in messages.
    """
    r, d, o, m = rows_per_amp, data_cols, overscan, middle_rows
    if r < 8 or d < 1 or o < 1 or m < 0 or m % 2:
        raise ValueError(
            f"geometry needs rows_per_amp >= 8, data_cols >= 1, overscan >= 1 and an even "
            f"middle_rows >= 0; got {r}, {d}, {o}, {m}"
        )
    full = MEGARA_ROWS_PER_AMP
    amp1 = Amplifier(
        "amp1",
        slice(0, r),
        slice(o, o + d),
        slice(o + d, o + d + o),
        slice(0, r),
        round(r * MEGARA_KNOTS[0] / full),
        gains[0],
    )
    amp2_start = r + m
    knot2 = amp2_start + round(r * (MEGARA_KNOTS[1] - (full + MEGARA_MIDDLE)) / full)
    amp2 = Amplifier(
        "amp2",
        slice(amp2_start, amp2_start + r),
        slice(o, o + d),
        slice(0, o),
        slice(r, 2 * r),
        knot2,
        gains[1],
    )
    raw_shape = (2 * r + m, d + 2 * o)
    label = name or f"MEGARA-like {raw_shape[0]} x {raw_shape[1]}"
    return Geometry(label, raw_shape, (2 * r, d), slice(r, r + m), (amp1, amp2))


#: The MEGARA 1x1 readout: raw 4212 x 4196, trimmed 4112 x 4096.
MEGARA = make_geometry(MEGARA_ROWS_PER_AMP, 4096, 50, MEGARA_MIDDLE, name="MEGARA 1x1")


# ---- recognising a frame ------------------------------------------------------------------------


def classify_frame(
    name: str,
    *,
    shape: tuple[int, ...] | None = None,
    header=None,
    geometry: Geometry = MEGARA,
) -> Literal["raw", "trimmed"]:
    """Tell a raw frame from an already-trimmed one, from its shape and header.

    Parameters
    ----------
    name : str
        The file (or frame label) named in error messages.
    shape : tuple, optional
        Data shape (rows, columns); taken from the header's NAXISn if omitted.
    header : mapping, optional
        FITS header of the image HDU: NAXIS/NAXIS1/NAXIS2 and the binning keys
        VBIN/HBIN are used when present.
    geometry : Geometry
        The expected layout (default: MEGARA 1x1).

    Returns
    -------
    "raw" or "trimmed"

    Raises
    ------
    ValidationError
        Naming ``name``: not a 2-D image, header and data shapes differ, a
        binned readout, or any other shape.
    """
    if header is not None:
        header_shape = _header_shape(name, header)
        if shape is not None and tuple(shape) != header_shape:
            raise _problem(
                name,
                f"data shape {tuple(shape)} differs from the header's "
                f"{header_shape} (NAXIS2, NAXIS1)",
            )
        shape = header_shape
        binning = {k: header[k] for k in BINNING_KEYS if str(header.get(k, 1)).strip() != "1"}
        if binning:
            keys = ", ".join(f"{k}={v!r}" for k, v in binning.items())
            raise _problem(name, f"{keys}: {UNSUPPORTED_BINNING}")
    if shape is None:
        raise ValueError("classify_frame needs a shape or a header")
    shape = tuple(int(n) for n in shape)
    if shape == geometry.raw_shape:
        return "raw"
    if shape == geometry.trimmed_shape:
        return "trimmed"
    raw, trimmed = (_rows_by_cols(s) for s in (geometry.raw_shape, geometry.trimmed_shape))
    binned = _binned_shapes(geometry).get(shape)
    if binned is not None:
        raise _problem(
            name, f"shape {_rows_by_cols(shape)} is a {binned} readout: {UNSUPPORTED_BINNING}"
        )
    raise _problem(
        name,
        f"shape {_rows_by_cols(shape)} is neither a raw {geometry.name} frame ({raw}) "
        f"nor a trimmed one ({trimmed})",
    )


def _problem(name: str, message: str) -> ValidationError:
    return ValidationError([f"{name}: {message}"])


def _rows_by_cols(shape: tuple[int, ...]) -> str:
    return " x ".join(str(n) for n in shape) + (" (rows x columns)" if len(shape) == 2 else "")


def _header_shape(name: str, header) -> tuple[int, int]:
    naxis = header.get("NAXIS")
    if naxis != 2:
        raise _problem(name, f"NAXIS = {naxis!r}: not a 2-D image")
    try:
        return int(header["NAXIS2"]), int(header["NAXIS1"])
    except (KeyError, TypeError, ValueError) as exc:
        raise _problem(name, f"NAXIS1/NAXIS2 missing or not integers ({exc})") from None


def _binned_shapes(geometry: Geometry) -> dict[tuple[int, int], str]:
    """Shapes of 2x binned readouts of ``geometry`` (raw and trimmed).

    Raw widths allow pre/overscan strips of full or half width: megaradrp's
    simulator scales them by the row factor, a real controller by the column one.
    """
    (raw_r, raw_c), (trim_r, trim_c) = geometry.raw_shape, geometry.trimmed_shape
    strip = raw_c - trim_c  # both pre/overscan strips
    shapes = {}
    for vbin, hbin in ((2, 1), (1, 2), (2, 2)):
        label = f"{vbin}x{hbin} (rows x columns) binned"
        shapes[(trim_r // vbin, trim_c // hbin)] = label
        for strips in (strip, strip // 2):
            shapes[(raw_r // vbin, trim_c // hbin + strips)] = label
    return shapes


# ---- views and the overscan model ---------------------------------------------------------------


def amplifier_views(frame: np.ndarray, geometry: Geometry = MEGARA) -> tuple[np.ndarray, ...]:
    """Each amplifier's trimmed data in a raw or trimmed frame, as views (no copy).

    For a raw frame ``frame[amp.rows, amp.data_cols]``, for a trimmed one
    ``frame[amp.trimmed_rows]``; either way the views of amp1 and amp2 are the
    rows ``amp.trimmed_rows`` of the trimmed frame.

    Parameters
    ----------
    frame : 2-D array
        Shape ``geometry.raw_shape`` or ``geometry.trimmed_shape``.
    geometry : Geometry
        The layout.

    Returns
    -------
    tuple of 2-D arrays, one per amplifier, each (rows per amplifier, data columns)
    """
    if frame.shape == geometry.raw_shape:
        return tuple(frame[amp.rows, amp.data_cols] for amp in geometry.amplifiers)
    if frame.shape == geometry.trimmed_shape:
        return tuple(frame[amp.trimmed_rows] for amp in geometry.amplifiers)
    raise ValueError(
        f"shape {_rows_by_cols(frame.shape)} is neither a raw {geometry.name} frame "
        f"({_rows_by_cols(geometry.raw_shape)}) nor a trimmed one "
        f"({_rows_by_cols(geometry.trimmed_shape)})"
    )


@dataclass(frozen=True)
class OverscanFit:
    """The overscan spline of one amplifier.

    ``knots`` is the full knot vector (absolute raw rows, FITPACK's layout) and
    ``coeffs`` the B-spline coefficients (ADU); ``median`` is the median of the
    whole overscan block in the working type (megaradrp's HISTORY value).
    """

    amplifier: str
    knots: tuple[float, ...]
    coeffs: tuple[float, ...]
    median: np.floating


@dataclass(frozen=True)
class OverscanModel:
    """A frame's overscan model: ``offsets`` (float64, ADU) per trimmed row."""

    offsets: np.ndarray
    fits: tuple[OverscanFit, ...]

    def history(self) -> list[str]:
        """megaradrp's overscan HISTORY lines (without the 'correction with/time' lines)."""
        lines = []
        for number, fit in enumerate(self.fits, start=1):
            lines += [
                f"Median of col overscan{number} is {fit.median}",
                f"Overscan{number} correction is spline{SPLINE_DEGREE}",
            ]
        for number, fit in enumerate(self.fits, start=1):
            # FITPACK pads the coefficients with degree + 1 zeros to the knot count.
            coeffs = list(fit.coeffs) + [0.0] * (SPLINE_DEGREE + 1)
            lines += [
                f"overscan{number} deg {SPLINE_DEGREE}",
                f"overscan{number} knots {list(fit.knots)}",
                f"overscan{number} coeffs {coeffs}",
            ]
        return lines


def overscan_offsets(
    raw: np.ndarray,
    *,
    bzero: float = 0.0,
    bscale: float = 1.0,
    blank: int | None = None,
    geometry: Geometry = MEGARA,
    name: str = "frame",
) -> OverscanModel:
    """megaradrp's overscan model of one raw frame, as one offset per trimmed row.

    Parameters
    ----------
    raw : 2-D array, shape ``geometry.raw_shape``
        Stored values, any integer or float type and byte order (e.g. astropy's
        raw memory map of a BITPIX 16 file); only the overscan columns are read.
    bzero, bscale : float
        physical = bscale * raw + bzero (ADU), the FITS BZERO/BSCALE.
    blank : int, optional
        Stored value of undefined pixels (FITS BLANK).  BLANK and non-finite
        overscan pixels are left out of their row's mean; a row with none left
        is left out of the fit (an error when more than half of an
        amplifier's rows are).
    geometry : Geometry
        Layout of the frame.
    name : str
        File or frame label for error messages.

    Returns
    -------
    OverscanModel
        ``offsets``: float64, shape (trimmed rows,), ADU: the spline of each
        amplifier evaluated at its data rows; megaradrp's corrected pixel is
        ``float32(float64(physical) - offsets[row])``.

    Notes
    -----
    The row means are taken as megaradrp takes them: NumPy's mean over the
    overscan columns of the physical values in the type astropy and numina
    give them, float32 for 8/16-bit integers and float32 data, float64 for
    wider integers and float64 data (megaradrp itself only runs on uint16
    and float data).
    """
    if raw.shape != geometry.raw_shape:
        raise ValueError(
            f"{name}: shape {_rows_by_cols(raw.shape)} is not a raw {geometry.name} frame "
            f"({_rows_by_cols(geometry.raw_shape)})"
        )
    single = raw.dtype.itemsize <= 2 or (raw.dtype.kind == "f" and raw.dtype.itemsize == 4)
    work = np.float32 if single else np.float64
    offsets = np.empty(geometry.trimmed_shape[0], dtype=np.float64)
    fits = []
    for amp in geometry.amplifiers:
        stored = raw[amp.rows, amp.overscan_cols]
        block = _physical(stored, bzero, bscale, work)
        bad = ~np.isfinite(block)
        if blank is not None and stored.dtype.kind in "iu":
            bad |= stored == blank
        valid = None
        if bad.any():  # megaradrp's plain mean where every pixel is good
            good = ~bad
            block = np.where(good, block, 0)
            counts = good.sum(axis=1)
            valid = counts > 0
            if np.count_nonzero(~valid) > valid.size // 2:
                raise _problem(
                    name,
                    f"{amp.name} overscan has no usable value in {np.count_nonzero(~valid)} "
                    f"of {valid.size} rows (BLANK or non-finite)",
                )
            means = block.sum(axis=1, dtype=np.float64) / np.maximum(counts, 1)
            block = block[good]
        else:
            means = block.mean(axis=1)
        rows = np.arange(amp.rows.start, amp.rows.stop)
        offsets[amp.trimmed_rows], knots, coeffs = spline_fit(rows, means, amp.knot, valid)
        fits.append(OverscanFit(amp.name, knots, coeffs, np.median(block)))
    return OverscanModel(offsets, tuple(fits))


def spline_fit(rows: np.ndarray, values: np.ndarray, knot: int, valid=None):
    """Least-squares cubic spline with one interior knot, evaluated at ``rows``.

    Parameters
    ----------
    rows : 1-D int array
        Consecutive row numbers (the end knots are the first and last).
    values : 1-D array
        One value per row.
    knot : int
        The interior knot, strictly inside the rows.
    valid : 1-D bool array, optional
        Rows whose values enter the fit (default: all); the fit is evaluated
        at every row.

    Returns
    -------
    fit : float64 array, shape of ``rows``
    knots : tuple of float, the full knot vector (length 9)
    coeffs : tuple of float, the 5 B-spline coefficients
    """
    start, stop = int(rows[0]), int(rows[-1]) + 1
    if not np.array_equal(rows, np.arange(start, stop)) or not start < knot < stop - 1:
        raise ValueError(f"rows must be consecutive around the knot {knot}, got {start}-{stop - 1}")
    design, q, r, knots = _spline_basis(start, stop, int(knot))
    values = np.asarray(values, dtype=np.float64)
    if valid is None:
        coeffs = np.linalg.solve(r, q.T @ values)
    else:
        coeffs = np.linalg.lstsq(design[valid], values[valid], rcond=None)[0]
    return design @ coeffs, tuple(knots.tolist()), tuple(coeffs.tolist())


@functools.lru_cache(maxsize=8)
def _spline_basis(start: int, stop: int, knot: int):
    """Cubic B-spline design matrix at rows ``[start, stop)`` and its QR factors."""
    last = float(stop - 1)
    knots = np.array([start] * 4 + [knot] + [last] * 4, dtype=np.float64)
    x = np.arange(start, stop, dtype=np.float64)
    # Cox-de Boor recursion; degree 0 puts the last row in the last non-empty
    # interval, [knot, last] (index degree + 1 of the knot vector).
    interval = np.minimum(np.searchsorted(knots, x, side="right") - 1, SPLINE_DEGREE + 1)
    basis = (np.arange(knots.size - 1) == interval[:, None]).astype(np.float64)
    for degree in range(1, SPLINE_DEGREE + 1):
        nxt = np.zeros((x.size, knots.size - 1 - degree))
        for i in range(nxt.shape[1]):
            left, right = knots[i + degree] - knots[i], knots[i + degree + 1] - knots[i + 1]
            if left > 0:
                nxt[:, i] += (x - knots[i]) / left * basis[:, i]
            if right > 0:
                nxt[:, i] += (knots[i + degree + 1] - x) / right * basis[:, i + 1]
        basis = nxt
    q, r = np.linalg.qr(basis)
    for array in (basis, q, r, knots):
        array.flags.writeable = False
    return basis, q, r, knots


def _physical(block: np.ndarray, bzero: float, bscale: float, work) -> np.ndarray:
    """bscale * block + bzero in type ``work`` (exact for 16-bit integers)."""
    if bzero == 0 and bscale == 1 and block.dtype == work:
        return block
    return (block.astype(np.float64) * bscale + bzero).astype(work)
