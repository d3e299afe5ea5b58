"""A drop-in for numina 0.40's ``numina.array.combine`` (and ``numina.array._combine``).

``mean``, ``median``, ``sigmaclip``, ``minmax``, ``quantileclip``, ``sum``,
``flatcombine``, ``zerocombine`` and ``generic_combine`` keep numina's signatures,
positional order and defaults, and return numina's value: a tuple
``(value, variance, npix)`` of arrays shaped like the inputs, float64 unless
``dtype`` is given, written into ``out`` (a (3, ...) array or three arrays) or
``out_res``/``out_var``/``out_pix`` when given (values are cast with NumPy's
unsafe casting, as numina does).  Per pixel, each good value is normalised as
``(x - zeros[i]) / scales[i]`` and the outputs refer to the normalised values.

The variance plane has numina's meaning, which is *not* the variance of the
combined value (for that, use :func:`megara_dark.combine.combine`):

* ``mean``, ``minmax``, ``quantileclip``: the sample variance (ddof 1) ``s2`` of
  the values used;
* ``median``: ``s2 / 0.637`` over all good values (numina's constant);
* ``sum``: ``n**2 * s2``;
* ``sigmaclip``: the standard deviation ``sqrt(s2)`` of the values kept.

One value gives variance 0 (``sum``: NaN), as in numina.  With weights (numina
drops them), the plane holds ``npix * s2 * sum(w**2) / sum(w)**2`` (npix times
the variance of the weighted mean), which is ``s2`` for equal weights.

The low-level names of ``numina.array._combine`` are here too, so numina's own
tests run against this module: the method constructors (``mean_method()``,
``sigmaclip_method(low, high)``, ...) return small immutable
:class:`CombineMethod` objects of ours (numina's C capsules cannot be used), and
``generic_combine_1iter`` / ``generic_combine_miter`` are ``generic_combine``.

Deviations from numina
----------------------
1. NaN and +-inf input values are bad values, skipped like masked ones (numina
   lets them poison the mean, sum and sigmaclip, and gives order-dependent medians).
2. A pixel with no good value is NaN in value and variance, with npix 0 (numina
   gives 0, 0, 0).  Exception: ``generic_combine`` keeps numina's 0, 0, 0, because
   numina's own test of that function (``test_combine_mask_average``) pins it.
3. Masks: any non-zero value (including NaN, negatives and 0.5) is bad; numina
   casts to int32 and masks only values > 0.
4. ``minmax`` honours ``masks`` (numina drops them): it drops the ``nmin`` lowest
   and ``nmax`` highest *good* values.  Pixels where the parameters leave no
   value give 0, 0, 0 as in numina (numina's tests pin it); ``nmin + nmax``
   larger than the number of images raises ValueError (numina: RuntimeError;
   its skipped test expects ValueError).
5. ``weights`` reach ``mean``, ``sigmaclip`` (the final mean; the clipping
   statistics are unweighted), ``minmax`` and ``quantileclip``; numina drops them
   silently.  ``median`` ignores them, as numina; ``sum`` has no weights.
   Weights must be > 0 (numina's low level skips images with negative weights).
6. ``quantileclip`` moves from the mean trimmed by ``floor(e)`` (``e = n * fclip``)
   towards the mean trimmed by ``ceil(e)`` by the fraction ``e - floor(e)``;
   numina multiplies by ``ceil(e)`` and extrapolates (even to negative
   variances).  The variance is that of the ``floor(e)``-trimmed values.  Where
   trimming ``ceil(e)`` would leave nothing (e.g. 1 or 2 values with the default
   fclip), only ``floor(e)`` values are trimmed; numina gives 0, 0, 0 there (or
   minus the median, with npix 0, at n = 3 and fclip > 1/3).  ``fclip`` must lie in
   [0, 0.4]; numina's message says ``< 0.4`` but it accepts 0.4, as we do.
7. ``sigmaclip`` keeps values *on* the bounds ``mean - low * std`` and
   ``mean + high * std`` (numina rejects them), and needs ``low, high > 0``
   (numina accepts 0, which rejects everything and so nothing).
8. Shapes must be equal: numina broadcasts (e.g. a (3,) image with a (2, 3)
   one, or output planes larger than the inputs).  The error names the item.
9. ``flatcombine`` works (numina's always raises TypeError): values <= 0 are
   replaced by ``blank`` and their standard deviation by 0.
10. When both ``dtype`` and ``out_res``/``out_var``/``out_pix`` are given, the
    given planes are written and ``dtype`` types the others (numina ignores the
    given planes).  ``out`` with ``out_*`` raises; ``out`` must hold exactly 3
    planes.  New planes are plain C-ordered ndarrays (numina follows the
    inputs' layout and subclass).
11. Errors: clear ``ValueError``/``TypeError`` naming the item where numina
    raises MemoryError, RuntimeError, IndexError, SystemError or crashes; lists
    are accepted wherever numina needs ndarrays (``zeros``, ``weights``, images);
    scales must be non-zero and zeros/scales/weights finite; complex, string
    and object images raise TypeError (numina casts them).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from numbers import Integral

import numpy as np

from . import _core

__all__ = [
    "CombineError",
    "CombineMethod",
    "debug_method",
    "flatcombine",
    "generic_combine",
    "generic_combine_1iter",
    "generic_combine_miter",
    "mean",
    "mean_method",
    "median",
    "median_method",
    "minmax",
    "minmax_method",
    "quantileclip",
    "quantileclip_method",
    "sigmaclip",
    "sigmaclip_method",
    "sum",
    "sum_method",
    "zerocombine",
]

# numina divides the median's sample variance by this constant (close to 2 / pi).
NUMINA_MEDIAN_VARIANCE_DIVISOR = 0.637
# Largest fclip numina accepts.
FCLIP_MAX = 0.4
# Core method for each numina method.
_CORE_METHODS = {
    "mean": "mean",
    "median": "median",
    "sum": "sum",
    "sigmaclip": "sigclip",
    "minmax": "minmax",
    "quantileclip": "quantileclip",
}
# Planes the core writes directly when the caller's plane has one of these dtypes.
_FLOAT_PLANES = (np.dtype(np.float32), np.dtype(np.float64))
_COUNT_PLANES = tuple(np.dtype(t) for t in ("int16", "uint16", "int32", "int64")) + _FLOAT_PLANES


class CombineError(Exception):
    """numina's ``_combine.CombineError``; kept for name compatibility (never raised)."""


@dataclass(frozen=True)
class CombineMethod:
    """A combination method with its parameters (numina's method capsules).

    name: one of ``mean``, ``median``, ``sum``, ``sigmaclip``, ``minmax``,
    ``quantileclip``; params: ``(name, value)`` pairs, already validated.
    Build them with the ``*_method`` functions.
    """

    name: str
    params: tuple = ()

    def __repr__(self) -> str:
        args = ", ".join(repr(v) for _, v in self.params)
        return f"{self.name}_method({args})"


# ---- method constructors (numina.array._combine) ------------------------------


def mean_method() -> CombineMethod:
    """The mean of the good values; variance: their sample variance (ddof 1)."""
    return CombineMethod("mean")


def median_method() -> CombineMethod:
    """The exact median (an even count averages the middle two); variance ``s2 / 0.637``."""
    return CombineMethod("median")


def sum_method() -> CombineMethod:
    """The sum of the good values; variance ``n**2 * s2`` (NaN for one value)."""
    return CombineMethod("sum")


def debug_method(*args) -> CombineMethod:
    """numina's debugging method, which is the mean (arguments are ignored, as in numina)."""
    return mean_method()


def sigmaclip_method(low, high, /) -> CombineMethod:
    """Iterative clipping about the mean by ``low``/``high`` standard deviations.

    Values in ``[mean - low * std, mean + high * std]`` are kept (numina: open
    interval); passes repeat until none is rejected or a pass would reject all.
    ``low`` and ``high`` must be finite and > 0 (numina accepts 0).
    """
    low, high = _clip_limit(low, "low"), _clip_limit(high, "high")
    return CombineMethod("sigmaclip", (("low", low), ("high", high)))


def minmax_method(nmin, nmax, /) -> CombineMethod:
    """Drop the ``nmin`` lowest and ``nmax`` highest good values, mean of the rest."""
    for value in (nmin, nmax):
        if not isinstance(value, Integral):
            raise TypeError(f"nmin and nmax must be integers, got {value!r}")
    if nmin < 0 or nmax < 0:
        raise ValueError(f"invalid parameter, nmin and nmax must be >= 0, got {nmin}, {nmax}")
    return CombineMethod("minmax", (("nmin", int(nmin)), ("nmax", int(nmax))))


def quantileclip_method(fclip, /) -> CombineMethod:
    """Drop the fraction ``fclip`` (0 <= fclip <= 0.4) of the good values at each end."""
    fclip = _native._finite(fclip, "fclip")
    if not 0.0 <= fclip <= FCLIP_MAX:
        raise ValueError(f"invalid parameter fclip, must be 0 <= fclip <= {FCLIP_MAX}, got {fclip}")
    return CombineMethod("quantileclip", (("fclip", fclip),))


def _clip_limit(value, name: str) -> float:
    value = _native._finite(value, name)
    if value <= 0:
        raise ValueError(f"invalid parameter, {name} must be > 0, got {value}")
    return value


# ---- public functions (numina.array.combine) ----------------------------------


def mean(arrays, masks=None, dtype=None, out=None, out_res=None, out_var=None, out_pix=None,
         zeros=None, scales=None, weights=None):  # fmt: skip
    """Combine arrays by their (weighted) mean, numina style.

    Parameters
    ----------
    arrays : sequence of N arrays of one shape
        Images (any real dtype, either byte order).  NaN/inf are bad values.
    masks : sequence of N arrays or None, optional
        Non-zero marks a bad value (numina: int32(mask) > 0).
    dtype : dtype, optional
        Type of newly allocated planes (default float64).
    out : (3, ...) array or 3 arrays, optional
        Planes to write value, variance and npix into.
    out_res, out_var, out_pix : arrays, optional
        Single planes to write into (instead of ``out``).
    zeros, scales : N numbers, optional
        Each value becomes ``(x - zeros[i]) / scales[i]``.
    weights : N numbers > 0, optional
        Weights of the images (numina drops them).

    Returns
    -------
    tuple of 3 arrays
        Mean, sample variance (ddof 1; 0 for one value) and number of values
        used.  No good value: NaN, NaN, 0 (numina: 0, 0, 0).
    """
    return _combine(mean_method(), arrays, masks, dtype, out, out_res, out_var, out_pix,
                    zeros, scales, weights)  # fmt: skip


def median(arrays, masks=None, dtype=None, out=None, out_res=None, out_var=None, out_pix=None,
           zeros=None, scales=None, weights=None):  # fmt: skip
    """Combine arrays by their exact median, numina style.

    Parameters as :func:`mean`; ``weights`` are ignored, as in numina.

    Returns
    -------
    tuple of 3 arrays
        Median (an even count averages the middle two), numina's variance
        ``s2 / 0.637`` (``s2``: sample variance of the good values; 0 for one
        value) and number of good values.  No good value: NaN, NaN, 0 (numina:
        0, 0, 0).  NaN/inf are skipped (numina: order-dependent results).
    """
    return _combine(median_method(), arrays, masks, dtype, out, out_res, out_var, out_pix,
                    zeros, scales, None)  # fmt: skip


def sigmaclip(arrays, masks=None, dtype=None, out=None, out_res=None, out_var=None,
              out_pix=None, zeros=None, scales=None, weights=None, low=3.0, high=3.0):  # fmt: skip
    """Combine arrays by iterative sigma clipping about the mean, numina style.

    Parameters as :func:`mean`, plus ``low`` and ``high`` (> 0): the kept
    interval is ``[mean - low * std, mean + high * std]`` of the current values
    (numina: the open interval, and it accepts 0).  Passes repeat until nothing
    is rejected or a pass would reject everything.  ``weights`` weight the final
    mean (numina drops them); the clipping statistics are unweighted.

    Returns
    -------
    tuple of 3 arrays
        Mean of the kept values, their standard deviation (ddof 1; numina's
        plane 1 is the std here, not a variance) and their number.  No good
        value: NaN, NaN, 0 (numina: 0, 0, 0).
    """
    return _combine(sigmaclip_method(low, high), arrays, masks, dtype, out, out_res, out_var,
                    out_pix, zeros, scales, weights)  # fmt: skip


def minmax(arrays, masks=None, dtype=None, zeros=None, scales=None, weights=None, nmin=1,
           nmax=1):  # fmt: skip
    """Combine arrays by the mean after dropping extreme values, numina style.

    Parameters as :func:`mean` (no ``out`` planes, as in numina), plus ``nmin``
    and ``nmax``: how many of the lowest and highest *good* values to drop.
    ``masks`` are honoured (numina ignores them) and ``weights`` weight the mean
    (numina drops them).

    Returns
    -------
    tuple of 3 arrays
        Mean of the remaining values, their sample variance and their number.
        Where ``nmin + nmax`` leaves no value: 0, 0, 0 (as numina).  No good
        value: NaN, NaN, 0.

    Raises
    ------
    ValueError
        ``nmin`` or ``nmax`` < 0, or ``nmin + nmax`` larger than the number of
        arrays (numina raises RuntimeError).
    """
    return _combine(minmax_method(nmin, nmax), arrays, masks, dtype, None, None, None, None,
                    zeros, scales, weights)  # fmt: skip


def quantileclip(arrays, masks=None, out_res=None, out_var=None, out_pix=None, out=None,
                 dtype=None, zeros=None, scales=None, weights=None, fclip=0.1):  # fmt: skip
    """Combine arrays by a mean trimmed of a fraction at each end, numina style.

    Parameters as :func:`mean`, plus ``fclip`` in [0, 0.4].  With ``n`` good
    values and ``e = fclip * n``: the mean trimmed by ``floor(e)`` values at each
    end, moved towards the mean trimmed by ``ceil(e)`` by ``e - floor(e)``
    (numina: by ``ceil(e)``, which extrapolates).  ``weights`` weight the means.

    Returns
    -------
    tuple of 3 arrays
        Trimmed mean, sample variance of the ``floor(e)``-trimmed values (numina
        interpolates it like the value) and ``n - floor(e) - ceil(e)``.  Where
        trimming ``ceil(e)`` leaves nothing, only ``floor(e)`` values are trimmed
        and npix is ``n - 2 floor(e)`` (numina: 0, 0, 0).  No good value: NaN,
        NaN, 0.
    """
    return _combine(quantileclip_method(fclip), arrays, masks, dtype, out, out_res, out_var,
                    out_pix, zeros, scales, weights)  # fmt: skip


def sum(arrays, masks=None, out_res=None, out_var=None, out_pix=None, out=None, dtype=None,
        zeros=None, scales=None):  # fmt: skip
    """Combine arrays by the sum of their good values, numina style.

    Parameters as :func:`mean` (no weights, as in numina).

    Returns
    -------
    tuple of 3 arrays
        Sum, numina's variance ``n**2 * s2`` (NaN for a single value, as numina)
        and number of good values ``n``.  No good value: NaN, NaN, 0 (numina: 0,
        0, 0).
    """
    return _combine(sum_method(), arrays, masks, dtype, out, out_res, out_var, out_pix,
                    zeros, scales, None)  # fmt: skip


def flatcombine(arrays, masks=None, scales=None, dtype=None, low=3.0, high=3.0, blank=1.0):
    """Combine flat fields: :func:`sigmaclip`, then values <= 0 become ``blank``.

    Where the value is <= 0 it is replaced by ``blank`` and its standard
    deviation by 0; npix is kept.  numina's version always raises TypeError.

    Returns
    -------
    tuple of 3 arrays
        As :func:`sigmaclip`.
    """
    value, spread, npix = sigmaclip(arrays, masks=masks, dtype=dtype, scales=scales, low=low,
                                    high=high)  # fmt: skip
    blanked = value <= 0
    value[blanked] = blank
    spread[blanked] = 0
    return value, spread, npix


def zerocombine(arrays, masks, scales=None, dtype=None):
    """Combine bias (zero) frames: :func:`median` with ``masks`` (required, may be None)."""
    return median(arrays, masks=masks, scales=scales, dtype=dtype)


def generic_combine(method, arrays, out_res=None, out_var=None, out_pix=None, out=None,
                    dtype=None, masks=None, zeros=None, scales=None, weights=None):  # fmt: skip
    """Combine arrays with a method object from ``mean_method()`` and the like.

    Parameters as :func:`mean`; ``weights`` reach every method but the median
    (ignored) and the sum (ValueError).  Unlike the named functions, a pixel with
    no good value gives numina's 0, 0, 0 here, because numina's own tests of
    this function pin it.

    Raises
    ------
    TypeError
        ``method`` is not one of this module's method objects (numina's C
        capsules and other callables cannot be used).
    """
    return _combine(method, arrays, masks, dtype, out, out_res, out_var, out_pix, zeros, scales,
                    weights, fill=0.0)  # fmt: skip


generic_combine_1iter = generic_combine
generic_combine_miter = generic_combine


# ---- the shared implementation ------------------------------------------------


def _combine(method, arrays, masks, dtype, out, out_res, out_var, out_pix, zeros, scales,
             weights, fill=math.nan):  # fmt: skip
    """Check everything, run the core into 2-D views or temporaries, apply numina's
    conventions, and return the (value, variance, npix) planes."""
    if not isinstance(method, CombineMethod):
        raise TypeError(
            f"method must be made by mean_method(), median_method(), ... of this module, "
            f"got {method!r} (numina's C capsules cannot be used)"
        )
    frames, shape = _frames(arrays)
    n = len(frames)
    flat = _shape_2d(shape)
    frames = _native._as_frames([f.reshape(flat) for f in frames])
    if masks is not None and len(masks) == 0:
        masks = None  # numina: an empty sequence means no masks
    if masks is not None:
        masks = [m if m is None else m.reshape(flat) for m in _native._masks(masks, n, shape)]
    core = _CORE_METHODS[method.name]
    vectors = _native._frame_vectors(
        n, zeros, scales, None if method.name == "median" else weights, core
    )
    params = dict(method.params)
    if method.name == "minmax" and params["nmin"] + params["nmax"] > n:
        raise ValueError(
            f"invalid parameter, nmin + nmax = {params['nmin'] + params['nmax']} is larger "
            f"than the number of images ({n})"
        )
    planes = _planes(out, out_res, out_var, out_pix, dtype, shape)
    targets = [
        _target(plane, flat, kinds)
        for plane, kinds in zip(planes, (_FLOAT_PLANES, _FLOAT_PLANES, _COUNT_PLANES), strict=True)
    ]
    value, variance, npix = targets
    # Only minmax can leave no value of a pixel that has good ones (sigmaclip
    # never takes a pass that rejects all; quantileclip keeps n - 2 floor(fclip n) >= 1);
    # nrejected tells those pixels apart from pixels without a good value.
    can_empty = method.name == "minmax"
    nrejected = np.empty(flat, _native._count_dtype(n)) if can_empty else None
    fewest = _core.combine_into(
        frames,
        value,
        variance=variance,
        npix=npix,
        nrejected=nrejected,
        method=core,
        bscale=[1.0] * n,
        bzero=[0.0] * n,
        blank=[None] * n,
        var_factor=_variance_factors(method, n),
        masks=masks,
        fill=fill,
        **vectors,
        **_core_params(method, n),
        want_fewest=True,
        variance_as_std=method.name == "sigmaclip",  # sqrt(variance * npix): the std
    )
    _numina_conventions(method, value, variance, npix, nrejected, fill, fewest)
    for plane, target in zip(planes, targets, strict=True):
        if not np.may_share_memory(plane, target):
            np.copyto(plane, target.reshape(plane.shape), casting="unsafe")
    return tuple(planes)


def _frames(arrays) -> tuple[list[np.ndarray], tuple]:
    """The images as arrays the core reads, and their common shape."""
    if not hasattr(arrays, "__iter__"):
        raise TypeError(f"arrays must be a sequence of arrays, got {type(arrays).__name__}")
    frames = [np.asarray(a) for a in arrays]
    if not frames:
        raise ValueError("data sequence is empty: no arrays to combine")
    shape = frames[0].shape
    for i, f in enumerate(frames):
        if f.shape != shape:
            raise ValueError(
                f"frame {i}: shape {f.shape} differs from frame 0's {shape} "
                "(numina would broadcast; give arrays of one shape)"
            )
    return [_core_readable(f) for f in frames], shape


def _core_readable(a: np.ndarray) -> np.ndarray:
    """numina reads every real dtype as float64; the core reads most of them as they
    are.  The rest (bool, uint32, uint64, float16, long double, and int8, which the
    core would read as uint8) are converted to float64."""
    kind = a.dtype.kind
    if kind not in "biuf":
        return a  # complex, strings, objects: the native checks reject them
    if kind == "b" or (kind == "i" and a.dtype.itemsize == 1) or not _core.dtype_supported(a.dtype):
        return a.astype(np.float64)
    return a


def _shape_2d(shape: tuple) -> tuple[int, int]:
    """The 2-D shape the core works on: () -> (1, 1), (n,) -> (1, n), (..., m) -> (rows, m)."""
    if len(shape) == 0:
        return (1, 1)
    return (math.prod(shape[:-1]), shape[-1])


def _planes(out, out_res, out_var, out_pix, dtype, shape) -> list[np.ndarray]:
    """The caller's output planes, or new ones (float64 unless ``dtype`` is given)."""
    if out is not None:
        if any(p is not None for p in (out_res, out_var, out_pix)):
            raise ValueError("give either out or out_res/out_var/out_pix, not both")
        if len(out) != 3:
            raise ValueError(f"out must hold 3 planes (value, variance, npix), got {len(out)}")
        given, labels = [out[0], out[1], out[2]], ("out[0]", "out[1]", "out[2]")
    else:
        given, labels = [out_res, out_var, out_pix], ("out_res", "out_var", "out_pix")
    planes = []
    for plane, label in zip(given, labels, strict=True):
        if plane is None:
            plane = np.empty(shape, np.float64 if dtype is None else dtype)
        elif not isinstance(plane, np.ndarray):
            raise TypeError(f"{label} must be a NumPy array, got {type(plane).__name__}")
        elif plane.shape != shape:
            raise ValueError(f"{label}: shape {plane.shape} differs from the arrays' {shape}")
        elif not plane.flags.writeable:
            raise ValueError(f"{label} is read-only")
        planes.append(plane)
    return planes


def _target(plane: np.ndarray, flat: tuple, dtypes: tuple) -> np.ndarray:
    """A 2-D view of the plane when the core can write it, else a float64 temporary."""
    if plane.dtype in dtypes:
        view = plane.reshape(flat)
        if np.may_share_memory(view, plane):
            return view
    return np.empty(flat, np.float64)


def _variance_factors(method: CombineMethod, n: int) -> np.ndarray:
    """K[0..n] such that the core's ``K[n] * s2 * V2 / V1**2`` is numina's plane
    (sigmaclip: ones, its variance is rescaled by npix afterwards)."""
    k = np.arange(n + 1, dtype=np.float64)
    p = dict(method.params)
    if method.name == "mean":
        return k
    if method.name == "median":
        return k / NUMINA_MEDIAN_VARIANCE_DIVISOR
    if method.name == "sum":
        return k**3
    if method.name == "minmax":  # values kept
        return np.maximum(k - p["nmin"] - p["nmax"], 0.0)
    if method.name == "quantileclip":  # values kept by the floor(e) trim
        return k - 2 * np.floor(p["fclip"] * k)
    return np.ones(n + 1)


def _core_params(method: CombineMethod, n: int) -> dict:
    p = dict(method.params)
    if method.name == "sigmaclip":
        # Each rejecting pass drops at least one value and never the last, so n
        # passes always reach the pass that rejects nothing.
        return {"low": p["low"], "high": p["high"], "centre": "mean", "spread": "std",
                "maxiters": n, "sigma_floor": 0.0}  # fmt: skip
    if method.name == "minmax":
        return {"nlow": p["nmin"], "nhigh": p["nmax"]}
    return p


def _numina_conventions(method, value, variance, npix, nrejected, fill, fewest) -> None:
    """In place: numina's variance 0 for one value, and 0, 0, 0 where the parameters
    leave no value (fill where there is no good value).  Nothing to do where every
    pixel has two values or more (fewest, the core's smallest npix)."""
    if fewest > 1:
        return
    if method.name != "sum":
        np.putmask(variance, npix == 1, 0.0)
    if fill != 0.0 and nrejected is None:
        return
    empty = npix == 0
    if fill != 0.0:
        empty &= nrejected > 0
    value[empty] = 0.0
    variance[empty] = 0.0


# combine.py re-exports this module's names at its end, so it is imported last.
from . import combine as _native  # noqa: E402
