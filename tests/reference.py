"""The slow twin: a pure-NumPy float64 reference of :func:`megara_dark.combine.combine`.

Written from the documented semantics (the module docstring of
``megara_dark.combine`` and the variance formula of ``megara_dark.variance``),
not from the C code, and meant to be obviously right rather than fast: the
inputs are corrected as a float64 stack, then every pixel is reduced on its own
in a Python loop over its good values, kept in frame order.  Clipping tracks the
surviving values with a boolean mask, never with sorted runs.  Only for small
data (a few thousand pixels).
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass

import numpy as np

from megara_dark.variance import variance_factors

# 1.4826: the MAD of a Gaussian in units of its sigma is Phi^-1(3/4).
MAD_TO_SIGMA = 1.0 / statistics.NormalDist().inv_cdf(0.75)


@dataclass
class Reference:
    """float64 planes of shape (ny, nx); npix and nrejected as int64; scale:
    the largest absolute good value of each pixel (0 where none), for tolerances."""

    data: np.ndarray
    variance: np.ndarray
    npix: np.ndarray
    nrejected: np.ndarray
    scale: np.ndarray


def combine(
    frames,
    method="median",
    *,
    bias=None,
    masks=None,
    zeros=None,
    scales=None,
    weights=None,
    row_offsets=None,
    bzero=None,
    bscale=None,
    blank=None,
    low=3.0,
    high=3.0,
    centre="median",
    spread="mad",
    maxiters=10,
    sigma_floor=None,
    gain=None,
    rdnoise=None,
    nlow=1,
    nhigh=1,
    fclip=0.1,
    fill=math.nan,
) -> Reference:
    """Same arguments and meaning as ``combine()`` (without the output options)."""
    frames = [np.asarray(f) for f in frames]
    n = len(frames)
    values, good = corrected_stack(
        frames, bias, masks, zeros, scales, row_offsets, bzero, bscale, blank
    )
    if sigma_floor is None:
        sigma_floor = default_sigma_floor(frames, bscale, scales)
    params = {
        "sigclip": dict(
            low=low, high=high, centre=centre, maxiters=maxiters, spread=spread,
            sigma_floor=sigma_floor,
        ),
        "ccdclip": dict(
            low=low, high=high, centre=centre, maxiters=maxiters, gain=gain, rdnoise=rdnoise,
            sigma_floor=sigma_floor,
        ),
        "minmax": dict(nlow=nlow, nhigh=nhigh),
        "quantileclip": dict(fclip=fclip),
    }.get(method, {})  # fmt: skip
    k = variance_factors(method, n, **params)
    w_all = np.ones(n) if weights is None else np.asarray(weights, dtype=np.float64)

    shape = frames[0].shape
    out = Reference(
        data=np.full(shape, float(fill)),
        variance=np.full(shape, np.nan),
        npix=np.zeros(shape, np.int64),
        nrejected=np.zeros(shape, np.int64),
        scale=np.zeros(shape),
    )
    for y, x in np.ndindex(shape):
        use = good[:, y, x]
        v, w = values[use, y, x], w_all[use]
        value, npix, var_set = reduce_pixel(method, v, w, params)
        out.npix[y, x] = npix
        out.nrejected[y, x] = v.size - npix
        out.scale[y, x] = np.max(np.abs(v), initial=0.0)
        if value is not None:
            out.data[y, x] = value
            out.variance[y, x] = combined_variance(k[v.size], v, w, var_set)
    return out


def reduce_pixel(method, v, w, params):
    """(value or None, npix, variance set as a bool mask over v) of one pixel's
    good values v (frame order) with weights w."""
    every = np.ones(v.size, bool)
    if v.size == 0:
        return None, 0, every
    if method == "median":
        return float(np.median(v)), v.size, every
    if method == "sum":
        return float(np.sum(v)), v.size, every
    if method == "quantileclip":
        return quantile_clip(v, w, **params)
    if method in ("sigclip", "ccdclip"):
        used = sigma_clip(v, **params)
    else:
        used = minmax(v, w, **params) if method == "minmax" else every
    value = weighted_mean(v[used], w[used]) if used.any() else None
    return value, int(used.sum()), used


def corrected_stack(frames, bias, masks, zeros, scales, row_offsets, bzero, bscale, blank):
    """Steps 1-3 of the documented order for every frame: values (N, ny, nx)
    float64 and good (N, ny, nx) bool."""
    n = len(frames)
    bscale = per_frame(bscale, n, 1.0)
    bzero = per_frame(bzero, n, 0.0)
    blank = blank if isinstance(blank, (list, tuple)) else [blank] * n
    values = np.empty((n, *frames[0].shape))
    good = np.ones(values.shape, bool)
    for i, raw in enumerate(frames):
        v = bscale[i] * raw.astype(np.float64) + bzero[i]
        if blank[i] is not None:
            good[i] &= raw != blank[i]
        if masks is not None and masks[i] is not None:
            good[i] &= np.asarray(masks[i]) == 0  # a NaN mask value is bad too
        if bias is not None:
            v = v - np.asarray(bias).astype(np.float64)
        if row_offsets is not None:
            v = v - np.asarray(row_offsets, dtype=np.float64)[i][:, np.newaxis]
        if zeros is not None:
            v = v - float(zeros[i])
        if scales is not None:
            v = v / float(scales[i])
        good[i] &= np.isfinite(v)  # NaN, +-inf in the frame, bias or the corrections
        values[i] = v
    return values, good


def per_frame(value, n, default):
    """A number or one number per frame, as a list of n floats."""
    if value is None:
        return [default] * n
    if np.ndim(value) == 0:
        return [float(value)] * n
    return [float(v) for v in value]


def default_sigma_floor(frames, bscale, scales):
    """One quantisation step of the integer frames (largest over them), else 0."""
    bscale = per_frame(bscale, len(frames), 1.0)
    steps = [
        abs(bscale[i]) / (1.0 if scales is None else abs(float(scales[i])))
        for i, f in enumerate(frames)
        if f.dtype.kind in "iu"
    ]
    return max(steps, default=0.0)


def weighted_mean(v, w):
    return float(np.sum(w * v) / np.sum(w))


def combined_variance(k, v, w, survivors):
    """k * s2 * V2 / V1**2: s2 the unbiased weighted sample variance of the
    survivors (of all good values when fewer than two survive), V1, V2 the sums
    of the survivors' weights and squared weights."""
    vs, ws = (v[survivors], w[survivors]) if survivors.sum() >= 2 else (v, w)
    if vs.size < 2:
        return math.nan
    m = np.sum(ws * vs) / np.sum(ws)
    v1, v2 = np.sum(ws), np.sum(ws**2)
    s2 = np.sum(ws * (vs - m) ** 2) / (v1 - v2 / v1)
    w_surv = w[survivors]
    return float(k * s2 * np.sum(w_surv**2) / np.sum(w_surv) ** 2)


def ascending_sum(terms) -> float:
    """The terms added one at a time, in the given order."""
    total = 0.0
    for term in terms:
        total += float(term)
    return total


def ascending_mean(v) -> float:
    """Mean of the values summed in ascending order, as documented for the
    clipping's centre (so a clip does not depend on the frame order)."""
    return ascending_sum(np.sort(v)) / v.size


def centre_and_spread(v, centre, spread, sigma_floor, gain=None, rdnoise=None):
    """Centre of the values and their spread (at least sigma_floor)."""
    c = float(np.median(v)) if centre == "median" else ascending_mean(v)
    if gain is not None:  # ccdclip: the CCD noise model at the centre, in ADU
        s = math.sqrt(rdnoise**2 + gain * max(c, 0.0)) / gain
    elif spread == "std":  # about the mean, squares summed in the values' ascending order
        squares = (np.sort(v) - ascending_mean(v)) ** 2
        s = math.sqrt(ascending_sum(squares) / (v.size - 1)) if v.size >= 2 else 0.0
    else:
        s = MAD_TO_SIGMA * float(np.median(np.abs(v - c)))
    return c, max(s, sigma_floor)


def sigma_clip(v, *, low, high, centre, maxiters, sigma_floor, spread="mad", gain=None,
               rdnoise=None):  # fmt: skip
    """Survivors (bool mask over v) of iterative clipping: keep
    c - low * s <= value <= c + high * s among the current survivors; stop when
    a pass rejects nothing, after maxiters passes, or when a pass would reject
    every value (the previous survivors stay)."""
    alive = np.ones(v.size, bool)
    for _ in range(maxiters if v.size else 0):
        c, s = centre_and_spread(v[alive], centre, spread, sigma_floor, gain, rdnoise)
        keep = alive & (v >= c - low * s) & (v <= c + high * s)
        if keep.sum() in (0, alive.sum()):
            break
        alive = keep
    return alive


def ascending(v, w):
    """Indices sorting v ascending, equal values by ascending weight."""
    return np.lexsort((w, v))


def minmax(v, w, *, nlow, nhigh):
    """Drop the nlow lowest and then the nhigh highest values (see ascending)."""
    order = ascending(v, w)
    alive = np.zeros(v.size, bool)
    alive[order[nlow : max(v.size - nhigh, nlow)]] = True
    return alive


def quantile_clip(v, w, fclip):
    """(value, npix, variance set): drop e = fclip * n values at each end
    (n >= 1).  The value is the mean trimmed by floor(e) moved towards the mean
    trimmed by ceil(e) by the fraction of e, npix = n - floor(e) - ceil(e).
    When the ceil(e) trim would leave nothing, the floor(e)-trimmed mean and
    count are the answer.  The variance set is the floor(e)-trimmed values."""
    n = v.size
    e = fclip * n
    k0, k1 = math.floor(e), math.ceil(e)
    order = ascending(v, w)
    floor_trim = np.zeros(n, bool)
    floor_trim[order[k0 : n - k0]] = True
    value = weighted_mean(v[floor_trim], w[floor_trim])
    if k1 == k0 or n - 2 * k1 <= 0:
        return value, n - 2 * k0, floor_trim
    ceil_trim = order[k1 : n - k1]
    value += (e - k0) * (weighted_mean(v[ceil_trim], w[ceil_trim]) - value)
    return value, n - k0 - k1, floor_trim
