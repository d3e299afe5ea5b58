"""Quality control of a dark set and its master dark: statistics, frame gate, flag.

Statistics of the master dark (ADU, or ADU/s in rate mode):
median, mean, robust sigma (1.4826 x MAD about the median), dark current
(ADU/s and, with the gain, e-/pixel/hour), hot pixels (above median +
``hot_sigma`` x robust sigma), the fraction of pixels with a good value in
fewer than all frames (bad or masked inputs; values a clipping method rejects
are not missing), and the count of pixels with no value (NaN).

Each input frame gets its own statistics (on a regular subsample of its
trimmed, overscan- and bias-corrected pixels) and passes a gate; a frame fails
with a reason when it is constant (readout failure), saturated, or its median
lies far from the other frames' (a light leak, a wrong exposure).

The flag is ``GOOD``, ``PARTIAL`` or ``BAD``; every threshold that moved it
away from GOOD is listed in ``reasons``.  Thresholds are in
:class:`QCThresholds` (documented there, configurable per run).
"""

from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field

import numpy as np

MAD_TO_SIGMA = 1.482602218505602
GOOD, PARTIAL, BAD = "GOOD", "PARTIAL", "BAD"
# Pixels per block of rows of the master's statistics (a few MiB of temporaries).
STATS_BLOCK_PIXELS = 1 << 18
# Medians of more values than this are found by selection in a bracket (_median).
SELECT_MIN_VALUES = 1 << 16
# Values of the regular subsample that brackets such a median.
SELECT_SAMPLE = 1 << 14


@dataclass(frozen=True)
class QCThresholds:
    """Limits that decide the QC flag (all configurable).

    hot_sigma: a hot pixel is above median + hot_sigma x robust sigma.
    frame_outlier_sigma, frame_outlier_min_adu: a frame fails when its median
        dark signal differs from the set's median of medians by more than
        frame_outlier_sigma robust scatters of the medians and by more than
        frame_outlier_min_adu (ADU).
    frame_saturated_fraction: a frame with more than this fraction of pixels
        at or above ``saturation_adu`` fails (raw ADU).
    partial_frames_fraction / bad_frames_fraction: fraction of frames failing
        the gate that makes the flag PARTIAL (more than 0) / BAD.
    min_frames: fewer frames combined than this is PARTIAL.
    partial_npix_fraction / bad_npix_fraction: fraction of pixels combined
        from fewer than all frames that makes the flag PARTIAL / BAD.
    partial_nan_fraction / bad_nan_fraction: the same for pixels with no value.
    partial_hot_fraction / bad_hot_fraction: the same for hot pixels.
    max_dark_e_per_hour: a median dark current above this (e-/pixel/hour)
        is BAD (light leak, shutter open); None disables the check.
    """

    hot_sigma: float = 5.0
    frame_outlier_sigma: float = 10.0
    frame_outlier_min_adu: float = 1.0
    saturation_adu: float = 65535.0
    frame_saturated_fraction: float = 0.01
    bad_frames_fraction: float = 0.5
    min_frames: int = 3
    partial_npix_fraction: float = 0.01
    bad_npix_fraction: float = 0.25
    partial_nan_fraction: float = 1e-4
    bad_nan_fraction: float = 0.01
    partial_hot_fraction: float = 0.001
    bad_hot_fraction: float = 0.05
    max_dark_e_per_hour: float | None = 100.0


@dataclass
class FrameStats:
    """One input frame: statistics of a subsample of its corrected pixels (ADU)."""

    path: str
    median: float
    robust_sigma: float
    saturated_fraction: float
    constant: bool = False  # every sampled raw value equal: the readout failed
    passed: bool = True
    reason: str = ""


@dataclass
class QCResult:
    """The flag, why, and the statistics it was decided from."""

    flag: str
    reasons: list[str]
    stats: dict
    frames: list[FrameStats] = field(default_factory=list)

    def as_dict(self) -> dict:
        return {
            "flag": self.flag,
            "reasons": list(self.reasons),
            "stats": dict(self.stats),
            "frames": [asdict(f) for f in self.frames],
        }


def robust_stats(values: np.ndarray) -> tuple[float, float]:
    """Median and 1.4826 x MAD of the finite values (NaN, NaN if there are none)."""
    v = values[np.isfinite(values)]  # a copy, worked on in place below
    if v.size == 0:
        return float("nan"), float("nan")
    median = float(_median(v))
    np.abs(np.subtract(v, median, out=v), out=v)
    return median, float(MAD_TO_SIGMA * _median(v))


def _median(v: np.ndarray) -> np.floating:
    """``np.median`` of a 1-D array of finite values, the same number, found
    faster for large arrays: the ranks of the middle are bracketed by two
    values of a regular subsample, the values below the bracket counted and
    only those inside it partitioned (``np.median`` of all of them when the
    bracket misses, which is rare).  ``v`` may be reordered.
    """
    n = v.size
    if n <= SELECT_MIN_VALUES:
        return np.median(v, overwrite_input=True)
    middle = [(n - 1) // 2, n // 2]  # the ranks np.median averages (one when n is odd)
    sample = np.sort(v[:: n // SELECT_SAMPLE])
    centre, spread = sample.size // 2, 4 * math.isqrt(sample.size)  # 8 binomial sigmas
    low, high = sample[max(0, centre - spread)], sample[min(sample.size - 1, centre + spread)]
    below = np.count_nonzero(v < low)
    inside = v[(v >= low) & (v <= high)]
    if not below <= middle[0] <= middle[1] < below + inside.size:
        return np.median(v, overwrite_input=True)
    ranks = [r - below for r in middle]
    values = np.partition(inside, ranks)[ranks]
    return values[0] if n % 2 else np.mean(values)  # np.median's mean, in v's type


def frame_stats(
    path: str, corrected: np.ndarray, raw_physical_max: np.ndarray, saturation_adu: float
) -> FrameStats:
    """Statistics of one frame from a subsample: corrected values (ADU above
    bias) and the physical raw values of the same pixels (for saturation and a
    constant readout, which the bias and overscan corrections would hide)."""
    median, sigma = robust_stats(corrected)
    saturated = float(np.mean(raw_physical_max >= saturation_adu)) if raw_physical_max.size else 0.0
    constant = raw_physical_max.size > 0 and bool(np.all(raw_physical_max == raw_physical_max[0]))
    return FrameStats(path, median, sigma, saturated, constant)


def gate_frames(frames: list[FrameStats], thresholds: QCThresholds) -> None:
    """Mark the frames that fail the gate (passed=False, with a reason).

    Saturated and constant frames fail first; the outlier test then compares
    the other frames' medians with theirs alone (a saturated majority must not
    make the good frames look like outliers).
    """
    for f in frames:
        if f.saturated_fraction > thresholds.frame_saturated_fraction:
            f.passed = False
            f.reason = f"{100 * f.saturated_fraction:.1f}% of pixels saturated"
        elif f.constant or f.robust_sigma == 0:
            f.passed = False
            f.reason = "constant frame (every sampled pixel equal): readout failure"
    candidates = [f for f in frames if f.passed]
    if not candidates:
        return
    medians = np.array([f.median for f in candidates])
    centre = float(np.median(medians))
    scatter = MAD_TO_SIGMA * float(np.median(np.abs(medians - centre)))
    limit = max(thresholds.frame_outlier_sigma * scatter, thresholds.frame_outlier_min_adu)
    for f in candidates:
        if abs(f.median - centre) > limit:
            side = "above" if f.median > centre else "below"
            f.passed = False
            f.reason = (
                f"median {f.median:.3f} ADU is {abs(f.median - centre):.3f} ADU {side} the "
                f"set's {centre:.3f} (limit {limit:.3f}): "
                + ("light leak or wrong exposure?" if side == "above" else "wrong exposure?")
            )


def master_stats(
    data, npix, nframes: int, exptime: float, unit: str, gains, thresholds, sample_step: int = 17
) -> dict:
    """Statistics of the master dark planes (see the module doc).

    data: (ny, nx) master dark in ``unit`` ("ADU" or "ADU/s"); npix: frames
    with a good value per pixel (used or rejected), same shape; exptime: the
    set's exposure time (s); gains: e-/ADU of the two amplifiers (top and
    bottom halves of the rows), or None.
    Median and robust sigma come from every ``sample_step``-th pixel, in a
    second thread while the counts that need no limit are taken: about a
    million values of a 4112 x 4096 plane (standard error of the median 0.001
    sigma); 17 does not divide the 4096-pixel rows, so the sampled columns
    shift from row to row.  The other figures come from every pixel, in
    blocks of rows (no temporary the size of a plane).
    """
    flat = data.reshape(-1)
    rows = max(1, STATS_BLOCK_PIXELS // max(1, data.shape[1]))
    blocks = [slice(y, y + rows) for y in range(0, data.shape[0], rows)]
    with ThreadPoolExecutor(max_workers=1) as pool:  # NumPy releases the GIL
        robust = pool.submit(robust_stats, flat[::sample_step])
        finite_count = sum(int(np.count_nonzero(np.isfinite(data[b]))) for b in blocks)
        partial = sum(int(np.count_nonzero(npix[b] < nframes)) for b in blocks)
        median, sigma = robust.result()
    hot_limit = median + thresholds.hot_sigma * sigma  # NaN (no value) > limit is False
    hot = sum(int(np.count_nonzero(data[b] > hot_limit)) for b in blocks)
    nan_count = flat.size - finite_count
    if nan_count == 0:
        mean = float(np.mean(flat))
    else:  # rare: a copy of the finite values
        mean = float(np.mean(flat[np.isfinite(flat)])) if finite_count else float("nan")
    rate = median if unit == "ADU/s" else median / exptime
    stats = {
        "unit": unit,
        "median": median,
        "mean": mean,
        "robust_sigma": sigma,
        "dark_current_adu_per_s": rate,
        "hot_pixels": hot,
        "hot_fraction": hot / flat.size,
        "partial_fraction": partial / flat.size,
        "nan_count": nan_count,
        "nan_fraction": nan_count / flat.size,
    }
    if gains is not None:
        stats["gain_e_per_adu"] = [float(g) for g in gains]
        stats["dark_current_e_per_pixel_per_hour"] = rate * float(np.mean(gains)) * 3600.0
    return stats


def decide(stats: dict, frames: list[FrameStats], ncombined: int, thresholds: QCThresholds):
    """The QC flag and its reasons from the statistics and the frame gate."""
    bad, partial = [], []
    failed = [f for f in frames if not f.passed]
    if frames and len(failed) / len(frames) > thresholds.bad_frames_fraction:
        bad.append(f"{len(failed)} of {len(frames)} frames failed the gate")
    elif failed:
        partial.append(f"{len(failed)} of {len(frames)} frames failed the gate and were left out")
    if ncombined < thresholds.min_frames:
        partial.append(f"only {ncombined} frames combined (minimum {thresholds.min_frames})")
    t = thresholds
    fractions = (
        ("pixels with no value", stats["nan_fraction"], t.partial_nan_fraction, t.bad_nan_fraction),
        (
            "pixels combined from fewer frames",
            stats["partial_fraction"],
            t.partial_npix_fraction,
            t.bad_npix_fraction,
        ),
        ("hot pixels", stats["hot_fraction"], t.partial_hot_fraction, t.bad_hot_fraction),
    )
    for label, value, partial_limit, bad_limit in fractions:
        if value > bad_limit:
            bad.append(f"{100 * value:.3g}% {label} (BAD above {100 * bad_limit:g}%)")
        elif value > partial_limit:
            partial.append(f"{100 * value:.3g}% {label} (PARTIAL above {100 * partial_limit:g}%)")
    e_per_hour = stats.get("dark_current_e_per_pixel_per_hour")
    limit = thresholds.max_dark_e_per_hour
    if limit is not None and e_per_hour is not None and e_per_hour > limit:
        bad.append(f"dark current {e_per_hour:.3g} e-/pixel/hour above {limit:g}: light leak?")
    if bad:
        return BAD, bad + partial
    return (PARTIAL, partial) if partial else (GOOD, [])
