"""Combination of 2-D frames: the native ``combine()`` and a numina-compatible API.

``combine(frames, method, ...)`` reads N separate frames (NumPy arrays, memory
maps, astropy's raw FITS data) without stacking them, applies BSCALE/BZERO, a
bias, per-frame per-row offsets, zeros and scales inside the compiled core, and
returns a :class:`CombineResult`.  Per pixel, in this order:

1. physical value = ``bscale * raw + bzero``; a raw value equal to the frame's
   BLANK, NaN, +-inf or a non-zero mask value is *bad* and never used;
2. value = physical - ``bias`` - ``row_offsets[i, y]``;
3. value = (value - ``zeros[i]``) / ``scales[i]``;
4. rejection (the clipping methods), on the good values only;
5. combination of the survivors.

Output planes:

``data``
    the combined value (``fill``, NaN by default, where no good value is left);
``variance``
    the variance *of the combined value* (not of the input values), from the
    sample variance of the values used and a factor per method that makes it
    right for Gaussian noise at every N (see :mod:`megara_dark.variance`);
    NaN where fewer than two values are available;
``npix``
    number of values that went into ``data``;
``nrejected``
    good values removed by the rejection step (bad values are not counted).

Methods:

``mean``
    weighted mean (equal weights unless ``weights`` is given);
``median``
    exact median, an even count averaging the middle two (weights not allowed);
``sum``
    sum of the good values;
``sigclip``
    iterative sigma clipping, then the weighted mean of the survivors.  Centre
    ``median`` (default) or ``mean``; spread ``mad`` (1.4826 x the median
    absolute deviation from the centre, default) or ``std`` (sample standard
    deviation about the mean).  A value is kept when
    ``centre - low * spread <= value <= centre + high * spread``; the spread is
    at least ``sigma_floor`` (default: one quantisation step of integer input,
    so ties of integer data are not clipped).  Passes repeat on the survivors
    until nothing more is rejected, ``maxiters`` passes, or a pass would reject
    every value (then the previous survivors are kept).  A mean centre and a
    std sum the survivors in ascending order, so the clipping does not depend
    on the frame order.  The default is robust: with a mean/std centre no
    outlier can ever be rejected when N <= 10;
``ccdclip``
    as IRAF's: the spread is the CCD noise model at the centre value,
    ``sigma**2 = (rdnoise**2 + gain * max(centre, 0)) / gain**2`` (ADU, with
    ``gain`` in e-/ADU and ``rdnoise`` in e-), so a few frames suffice; the
    data must be in ADU above the bias;
``minmax``
    drop the ``nlow`` lowest and ``nhigh`` highest good values, mean of the rest
    (among equal values the one with the smaller weight counts as lower, here
    and in ``quantileclip``, so the result does not depend on the frame order);
``quantileclip``
    drop ``e = fclip * n`` good values at each end: the mean trimmed by
    ``floor(e)`` moved towards the mean trimmed by ``ceil(e)`` by the fraction
    of ``e``; ``npix = n - floor(e) - ceil(e)`` (when the ``ceil(e)`` trim would
    leave nothing: the ``floor(e)``-trimmed mean, ``npix = n - 2 floor(e)``).

Results are bit-identical for any ``nthreads`` and ``block_rows``.
"""

from __future__ import annotations

import math
import numbers
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from . import _core
from .variance import variance_factors

METHODS = ("mean", "median", "sum", "sigclip", "ccdclip", "minmax", "quantileclip")
CLIP_METHODS = ("sigclip", "ccdclip", "minmax", "quantileclip")
SUPPORTED_DTYPES = _core.INPUT_DTYPES
# Largest frame count whose npix fits the default int16 count planes.
INT16_MAX_FRAMES = 32767


class CombineWarning(UserWarning):
    """A combination that runs but cannot do what its parameters suggest."""


@dataclass(frozen=True)
class CombineResult:
    """Planes of a combination, each of shape (ny, nx).

    data: combined value (float32 or float64); variance: variance of ``data``
    (same dtype); npix: number of values used; nrejected: good values removed
    by rejection (int16, or int32 beyond 32767 frames).  As ``out=``, any plane
    but ``data`` may be None: it is then not computed (nor stored).
    """

    data: np.ndarray
    variance: np.ndarray | None
    npix: np.ndarray | None
    nrejected: np.ndarray | None


def build_info() -> dict:
    """How the core was built: ``{"openmp": bool, "default_threads": int}``."""
    return _core.build_info()


def combine(
    frames: Sequence,
    method: str = "median",
    *,
    bias=None,
    masks: Sequence | None = None,
    zeros=None,
    scales=None,
    weights=None,
    row_offsets=None,
    bzero=None,
    bscale=None,
    blank=None,
    low: float = 3.0,
    high: float = 3.0,
    centre: str = "median",
    spread: str = "mad",
    maxiters: int = 10,
    sigma_floor: float | None = None,
    gain: float | None = None,
    rdnoise: float | None = None,
    nlow: int = 1,
    nhigh: int = 1,
    fclip: float = 0.1,
    fill: float = math.nan,
    dtype="float32",
    nthreads: int = 0,
    block_rows: int = 16,
    out: CombineResult | None = None,
    progress=None,
) -> CombineResult:
    """Combine N frames of one shape (ny, nx) pixel by pixel (see the module doc).

    Parameters
    ----------
    frames : sequence of 2-D arrays
        Any of uint8, int16, uint16, int32, int64, float32, float64, in either
        byte order, C-ordered or strided; never copied.
    method : str
        One of ``mean``, ``median``, ``sum``, ``sigclip``, ``ccdclip``,
        ``minmax``, ``quantileclip``.
    bias : 2-D array, optional
        Subtracted from every frame (physical units, e.g. ADU).
    masks : sequence of 2-D arrays or None, optional
        One per frame (an entry may be None); non-zero marks a bad pixel.
    zeros, scales, weights : sequences of N numbers, optional
        value = (value - zero) / scale; weights (> 0) for the mean-type methods.
    row_offsets : array (N, ny), optional
        Subtracted from row y of frame i (e.g. an overscan model, ADU).
    bzero, bscale : number or N numbers, optional
        physical = bscale * raw + bzero (FITS BZERO/BSCALE); default 0 and 1.
    blank : int, or N ints or None, optional
        Raw value marking an undefined pixel (FITS BLANK) of integer frames.
    low, high, centre, spread, maxiters, sigma_floor
        ``sigclip`` parameters (``low``/``high``/``centre``/``maxiters`` also
        for ``ccdclip``): limits in units of the spread.
    gain, rdnoise
        ``ccdclip``: e-/ADU and e- (required for that method).
    nlow, nhigh
        ``minmax``: how many low and high good values to drop.
    fclip
        ``quantileclip``: fraction of the good values dropped at each end.
    fill : float
        Value where no good value is left (npix = 0).
    dtype : float32 or float64
        Type of ``data`` and ``variance``.
    nthreads : int
        OpenMP threads, 0 for the default; block_rows: rows per thread task.
    out : CombineResult, optional
        Planes to write into instead of allocating new ones (a plane left
        None, but ``data``, is not computed).
    progress : callable, optional
        Called as ``progress(rows_done, rows_total)`` every ~50 ms of work.

    Returns
    -------
    CombineResult
    """
    frames = _as_frames(frames)
    n = len(frames)
    shape = frames[0].shape
    if method not in METHODS:
        raise ValueError(f"method {method!r} is not one of {', '.join(METHODS)}")
    params = _method_params(
        method, n, low, high, centre, spread, maxiters, gain, rdnoise, nlow, nhigh, fclip
    )
    scaling = [_per_frame(v, n, name, default) for v, name, default in
               ((bscale, "bscale", 1.0), (bzero, "bzero", 0.0))]  # fmt: skip
    if any(s == 0.0 for s in scaling[0]):
        raise ValueError("bscale must be non-zero for every frame")
    blanks = _blanks(blank, frames)
    vectors = _frame_vectors(n, zeros, scales, weights, method)
    if method in ("sigclip", "ccdclip"):
        params["sigma_floor"] = _sigma_floor(sigma_floor, frames, scaling[0], vectors["scales"])
    out = _outputs(out, shape, n, dtype)
    _core.combine_into(
        frames,
        out.data,
        variance=out.variance,
        npix=out.npix,
        nrejected=out.nrejected,
        method=method,
        bscale=scaling[0],
        bzero=scaling[1],
        blank=blanks,
        var_factor=variance_factors(method, n, **params),
        masks=_masks(masks, n, shape),
        bias=_bias(bias, shape),
        row_offsets=_row_offsets(row_offsets, n, shape[0]),
        fill=float(fill),
        nthreads=_non_negative_int(nthreads, "nthreads"),
        block_rows=max(1, _non_negative_int(block_rows, "block_rows")),
        progress=progress,
        **vectors,
        **params,
    )
    return out


# ---- argument checks (all before any pixel is read) -------------------------


def _as_frames(frames) -> list[np.ndarray]:
    if isinstance(frames, np.ndarray) and frames.ndim == 3:
        frames = list(frames)
    frames = [np.asarray(f) for f in frames]
    if not frames:
        raise ValueError("no frames to combine (need at least one)")
    shape0 = frames[0].shape
    for i, f in enumerate(frames):
        if f.ndim != 2:
            raise ValueError(f"frame {i}: expected a 2-D image, got shape {f.shape}")
        if f.shape != shape0:
            raise ValueError(f"frame {i}: shape {f.shape} differs from frame 0's {shape0}")
        if f.size == 0:
            raise ValueError(f"frame {i}: empty image of shape {f.shape}")
        if not _readable(f.dtype):
            raise TypeError(
                f"frame {i}: dtype {f.dtype} is not supported; use one of "
                f"{', '.join(SUPPORTED_DTYPES)} (either byte order)"
            )
    return frames


def _readable(dtype) -> bool:
    """True for the image dtypes the core reads as numbers (either byte order)."""
    return dtype.newbyteorder("=").name in SUPPORTED_DTYPES


def _finite(value, name: str) -> float:
    if not isinstance(value, numbers.Real) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    return float(value)


def _non_negative_int(value, name: str) -> int:
    if not isinstance(value, numbers.Integral) or isinstance(value, bool) or value < 0:
        raise ValueError(f"{name} must be an integer >= 0, got {value!r}")
    return int(value)


def _method_params(method, n, low, high, centre, spread, maxiters, gain, rdnoise, nlow, nhigh,
                   fclip) -> dict:  # fmt: skip
    """Core parameters of a method, checked; warns where they cannot work."""
    if method in ("sigclip", "ccdclip"):
        low, high = _finite(low, "low"), _finite(high, "high")
        if low <= 0 or high <= 0:
            raise ValueError(f"low and high must be > 0, got low={low}, high={high}")
        if centre not in ("median", "mean"):
            raise ValueError(f"centre must be 'median' or 'mean', got {centre!r}")
        if _non_negative_int(maxiters, "maxiters") < 1:
            raise ValueError("maxiters must be >= 1")
        params = {"low": low, "high": high, "centre": centre, "maxiters": int(maxiters)}
        if method == "ccdclip":
            if gain is None or rdnoise is None:
                raise ValueError("ccdclip needs gain (e-/ADU) and rdnoise (e-)")
            gain, rdnoise = _finite(gain, "gain"), _finite(rdnoise, "rdnoise")
            if gain <= 0 or rdnoise < 0:
                raise ValueError(f"ccdclip needs gain > 0 and rdnoise >= 0, got {gain}, {rdnoise}")
            params.update(gain=gain, rdnoise=rdnoise)
        else:
            if spread not in ("mad", "std"):
                raise ValueError(f"spread must be 'mad' or 'std', got {spread!r}")
            params["spread"] = spread
            _warn_if_clipping_cannot_reject(n, low, high, centre, spread)
        if n == 2:
            warnings.warn(
                f"{method} with 2 frames cannot tell which value is the outlier; "
                "nothing is rejected and the mean of both is returned",
                CombineWarning,
                stacklevel=3,
            )
        return params
    if method == "minmax":
        nlow, nhigh = _non_negative_int(nlow, "nlow"), _non_negative_int(nhigh, "nhigh")
        if nlow + nhigh >= n:
            raise ValueError(
                f"minmax drops nlow + nhigh = {nlow + nhigh} values but there are only {n} frames"
            )
        return {"nlow": nlow, "nhigh": nhigh}
    if method == "quantileclip":
        fclip = _finite(fclip, "fclip")
        if not 0.0 <= fclip < 0.5:
            raise ValueError(f"fclip must be in [0, 0.5), got {fclip}")
        if n == 2 and fclip > 0:
            warnings.warn(
                "quantileclip with 2 frames cannot drop a value at each end; "
                "nothing is clipped and the mean of both is returned",
                CombineWarning,
                stacklevel=3,
            )
        return {"fclip": fclip}
    return {}


def _warn_if_clipping_cannot_reject(n, low, high, centre, spread) -> None:
    """Samuelson: |x - mean| <= std * (n - 1) / sqrt(n), so a mean/std clip with
    limits above that bound can never reject anything."""
    if centre == "mean" and spread == "std" and n >= 2:
        bound = (n - 1) / math.sqrt(n)
        if min(low, high) >= bound:
            warnings.warn(
                f"sigclip with a mean/std centre cannot reject any value with {n} frames "
                f"(no value can lie more than {bound:.2f} sigma from the mean); "
                "use centre='median', spread='mad' (the default)",
                CombineWarning,
                stacklevel=4,
            )


def _per_frame(value, n: int, name: str, default: float) -> list[float]:
    """A number or one number per frame, as a list of n floats."""
    if value is None:
        return [default] * n
    if isinstance(value, numbers.Real):
        return [_finite(value, name)] * n
    values = list(value)
    if len(values) != n:
        raise ValueError(f"{name} has {len(values)} values, expected one per frame ({n})")
    return [_finite(v, f"{name}[{i}]") for i, v in enumerate(values)]


def _blanks(blank, frames) -> list:
    n = len(frames)
    values = [blank] * n if blank is None or isinstance(blank, numbers.Integral) else list(blank)
    if len(values) != n:
        raise ValueError(f"blank has {len(values)} values, expected one per frame ({n})")
    for i, (b, f) in enumerate(zip(values, frames, strict=True)):
        if b is not None and f.dtype.kind not in "iu":
            raise ValueError(f"frame {i}: BLANK applies to integer data, not {f.dtype}")
        if b is not None and not isinstance(b, numbers.Integral):
            raise ValueError(f"frame {i}: BLANK must be an integer, got {b!r}")
        if b is not None and not np.iinfo(f.dtype).min <= b <= np.iinfo(f.dtype).max:
            raise ValueError(f"frame {i}: BLANK {b} is outside the range of {f.dtype}")
    return [None if b is None else int(b) for b in values]


def _frame_vectors(n, zeros, scales, weights, method) -> dict:
    """zeros/scales/weights as contiguous float64 vectors of length n (or None)."""
    vectors = {}
    for name, value in (("zeros", zeros), ("scales", scales), ("weights", weights)):
        if value is None:
            vectors[name] = None
            continue
        v = np.array(value, dtype=np.float64, ndmin=1)
        if v.ndim != 1 or v.shape[0] != n:
            raise ValueError(f"{name} must hold one number per frame ({n}), got shape {v.shape}")
        if not np.all(np.isfinite(v)):
            raise ValueError(f"{name} must be finite, got {v.tolist()}")
        vectors[name] = v
    if vectors["scales"] is not None and np.any(vectors["scales"] == 0):
        raise ValueError("scales must be non-zero")
    if vectors["weights"] is not None:
        if np.any(vectors["weights"] <= 0):
            raise ValueError("weights must be > 0")
        if method in ("median", "sum"):
            raise ValueError(f"weights are not used by the {method}; drop them or use 'mean'")
    return vectors


def _sigma_floor(sigma_floor, frames, bscales, scales) -> float:
    """The given floor, or one quantisation step of integer input (0 for floats)."""
    if sigma_floor is not None:
        floor = _finite(sigma_floor, "sigma_floor")
        if floor < 0:
            raise ValueError(f"sigma_floor must be >= 0, got {floor}")
        return floor
    steps = [
        abs(b) / (abs(scales[i]) if scales is not None else 1.0)
        for i, (f, b) in enumerate(zip(frames, bscales, strict=True))
        if f.dtype.kind in "iu"
    ]
    return max(steps, default=0.0)


def _masks(masks, n, shape):
    if masks is None:
        return None
    masks = list(masks)
    if len(masks) != n:
        raise ValueError(f"got {len(masks)} masks for {n} frames")
    converted = []
    for i, m in enumerate(masks):
        if m is None:
            converted.append(None)
            continue
        m = np.asarray(m)
        if m.shape != shape:
            raise ValueError(f"mask {i}: shape {m.shape} differs from the frames' {shape}")
        if not _core.dtype_supported(m.dtype):
            m = m != 0
        converted.append(m)
    return converted


def _bias(bias, shape):
    if bias is None:
        return None
    bias = np.asarray(bias)
    if bias.shape != shape:
        raise ValueError(f"bias: shape {bias.shape} differs from the frames' {shape}")
    if not _readable(bias.dtype):
        raise TypeError(f"bias: dtype {bias.dtype} is not supported")
    return bias


def _row_offsets(row_offsets, n, ny):
    if row_offsets is None:
        return None
    r = np.ascontiguousarray(row_offsets, dtype=np.float64)
    if r.shape != (n, ny):
        raise ValueError(f"row_offsets must have shape (frames, rows) = {(n, ny)}, got {r.shape}")
    if not np.all(np.isfinite(r)):
        i, y = np.argwhere(~np.isfinite(r))[0]
        raise ValueError(f"row_offsets must be finite; frame {i}, row {y} is {r[i, y]}")
    return r


def _count_dtype(n: int) -> type:
    """The type of the count planes (npix, nrejected) for n frames."""
    return np.int16 if n <= INT16_MAX_FRAMES else np.int32


def _outputs(out, shape, n, dtype) -> CombineResult:
    dtype = np.dtype(dtype)
    if dtype not in (np.float32, np.float64):
        raise TypeError(f"dtype must be float32 or float64, got {dtype}")
    count_dtype = _count_dtype(n)
    if out is None:
        return CombineResult(
            data=np.empty(shape, dtype),
            variance=np.empty(shape, dtype),
            npix=np.empty(shape, count_dtype),
            nrejected=np.empty(shape, count_dtype),
        )
    if out.data is None:
        raise ValueError("out.data must be an array (only the other planes may be None)")
    for name in ("data", "variance", "npix", "nrejected"):
        plane = getattr(out, name)
        if plane is not None and plane.shape != shape:
            raise ValueError(f"out.{name}: shape {plane.shape} differs from the frames' {shape}")
    return out


# ---- numina-compatible API (numina.array.combine and numina.array._combine) ----
# Last in this module: it shadows the builtin sum here (numina's name), and
# numina_compat imports this module's checks.
from .numina_compat import (  # noqa: E402, F401
    CombineError,
    CombineMethod,
    debug_method,
    flatcombine,
    generic_combine,
    generic_combine_1iter,
    generic_combine_miter,
    mean,
    mean_method,
    median,
    median_method,
    minmax,
    minmax_method,
    quantileclip,
    quantileclip_method,
    sigmaclip,
    sigmaclip_method,
    sum,
    sum_method,
    zerocombine,
)
