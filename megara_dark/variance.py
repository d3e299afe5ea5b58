"""Factors that turn a pixel's sample variance into the variance of its combined value.

The core computes, per pixel, ``var = K[n] * s2 * V2 / V1**2`` where ``s2`` is the
unbiased (weighted) sample variance of the values used, ``V1``/``V2`` the sums of
their weights and squared weights (``V2 / V1**2 == 1 / n`` for equal weights), and
``n`` the number of good values.  This module chooses ``K``, one factor per ``n``:

* ``mean``: 1 (the classic ``s2 / n``);
* ``sum``: ``n**2`` (``n * s2``);
* ``median``: the exact small-sample efficiency of the median of Gaussian data,
  ``n * Var(median) / sigma**2`` (1.346 at n = 3, 1.509 at n = 11, pi/2 as n grows),
  tabulated by ``tools/median_efficiency.py``;
* rejection methods (``sigclip``, ``ccdclip``, ``minmax``, ``quantileclip``):
  calibrated on Gaussian noise by running the same core with a fixed seed, so the
  variance plane is right on average for the chosen parameters and frame count
  (clipping at small N also rejects good values, which a plain ``s2 / n`` ignores).
"""

from __future__ import annotations

import functools
import math

import numpy as np

from . import _core

# n * Var(median of n N(0, 1) values), n = 1..100 (tools/median_efficiency.py).
# fmt: off
MEDIAN_EFFICIENCY = (
    1.000000, 1.000000, 1.346013, 1.192799, 1.434168,
    1.288456, 1.473128, 1.345447, 1.494912, 1.383265,
    1.508787, 1.410195, 1.518387, 1.430351, 1.525420,
    1.446004, 1.530792, 1.458515, 1.535029, 1.468742,
    1.538455, 1.477261, 1.541283, 1.484465, 1.543656,
    1.490639, 1.545677, 1.495987, 1.547418, 1.500667,
    1.548933, 1.504795, 1.550264, 1.508464, 1.551442,
    1.511747, 1.552492, 1.514701, 1.553435, 1.517374,
    1.554285, 1.519804, 1.555056, 1.522022, 1.555758,
    1.524056, 1.556400, 1.525927, 1.556989, 1.527654,
    1.557532, 1.529253, 1.558034, 1.530738, 1.558500,
    1.532121, 1.558932, 1.533412, 1.559336, 1.534619,
    1.559713, 1.535752, 1.560065, 1.536815, 1.560396,
    1.537816, 1.560708, 1.538761, 1.561001, 1.539652,
    1.561277, 1.540496, 1.561539, 1.541295, 1.561786,
    1.542054, 1.562021, 1.542775, 1.562243, 1.543460,
    1.562455, 1.544113, 1.562656, 1.544736, 1.562848,
    1.545331, 1.563031, 1.545899, 1.563206, 1.546443,
    1.563373, 1.546964, 1.563533, 1.547463, 1.563686,
    1.547942, 1.563833, 1.548402, 1.563974, 1.548844,
)
# fmt: on

# Beyond the table: pi/2 - c/n, with c fitted at n = 99 (odd) and n = 100 (even).
_ODD_TAIL = (math.pi / 2 - MEDIAN_EFFICIENCY[98]) * 99
_EVEN_TAIL = (math.pi / 2 - MEDIAN_EFFICIENCY[99]) * 100

# Calibration of rejection methods: frame counts up to this are simulated one by
# one; larger counts reuse the last factor (the factors flatten out with n).
CALIBRATION_MAX_FRAMES = 64
_CALIBRATION_SEED = 20261126
_CALIBRATION_VALUES = 1 << 18  # simulated values per frame count (~1-2% precision)
_CALIBRATION_MIN_PIXELS = 8192


def median_efficiency(n: int) -> float:
    """``n * Var(median) / sigma**2`` for n Gaussian values (1 for n <= 2)."""
    if n <= len(MEDIAN_EFFICIENCY):
        return MEDIAN_EFFICIENCY[max(n, 1) - 1]
    return math.pi / 2 - (_ODD_TAIL if n % 2 else _EVEN_TAIL) / n


def variance_factors(method: str, nframes: int, **params) -> np.ndarray:
    """The factors ``K[0..nframes]`` (float64) for a method and its core parameters.

    ``params`` are the keyword arguments passed to the core for that method
    (clipping limits, iterations, ...); only rejection methods use them.
    """
    n = np.arange(nframes + 1, dtype=np.float64)
    if method == "mean":
        return np.ones(nframes + 1)
    if method == "sum":
        return n * n
    if method == "median":
        return np.array([median_efficiency(int(k)) for k in n])
    # sigma_floor is in data units (one quantisation step of integer data) and
    # meant for noise well above it, where it changes nothing; at the unit noise
    # of the calibration it would stop most clipping, so it is left out.
    key = tuple(sorted((k, v) for k, v in params.items() if k != "sigma_floor"))
    calibrated = _calibrated(method, min(nframes, CALIBRATION_MAX_FRAMES), key)
    factors = np.empty(nframes + 1)
    factors[: len(calibrated)] = calibrated
    factors[len(calibrated) :] = calibrated[-1]
    return factors


@functools.lru_cache(maxsize=32)
def _calibrated(method: str, nmax: int, key: tuple) -> tuple[float, ...]:
    """K[0..nmax] = Var(value) / mean(s2 V2 / V1**2) on simulated Gaussian frames."""
    params = dict(key)
    sigma, level = _calibration_noise(method, params)
    rng = np.random.default_rng(_CALIBRATION_SEED)
    factors = [1.0, 1.0]
    for n in range(2, nmax + 1):
        npix = max(_CALIBRATION_MIN_PIXELS, _CALIBRATION_VALUES // n)
        frames = list(level + sigma * rng.standard_normal((n, 1, npix)))
        value = np.empty((1, npix))
        variance = np.empty((1, npix))
        _core.combine_into(
            frames,
            value,
            variance=variance,
            method=method,
            bscale=[1.0] * n,
            bzero=[0.0] * n,
            blank=[None] * n,
            var_factor=np.ones(n + 1),
            **params,
        )
        usable = np.isfinite(variance) & np.isfinite(value)
        estimated = variance[usable].mean() if usable.sum() > 1 else 0.0
        factors.append(float(value[usable].var() / estimated) if estimated > 0 else 1.0)
    return tuple(factors)


def _calibration_noise(method: str, params: dict) -> tuple[float, float]:
    """Noise sigma and level (ADU) for calibrating a method: unit noise, or for
    ccdclip the noise its CCD model predicts at the level simulated."""
    if method != "ccdclip":
        return 1.0, 0.0
    gain, rdnoise = params["gain"], params["rdnoise"]
    level = 0.0 if rdnoise > 0 else 100.0 / gain
    return math.sqrt(rdnoise**2 + gain * level) / gain, level
