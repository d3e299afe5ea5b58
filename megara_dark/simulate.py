"""Simulated raw MEGARA dark sets with known truth, plus a matching master bias.

Each raw frame is laid out as a real MEGARA 1x1 readout (see
:mod:`megara_dark.detector`): uint16 stored as BITPIX 16 with BZERO = 32768,
two amplifiers with their own bias level, gain and read noise, prescan and
overscan columns and the overscan rows between the amplifiers.  In ADU, a pixel
of amplifier k in frame i is ::

    round(bias_k + drift_ik + s_k(row) + [pattern + electrons / gain_k] + noise)

where ``s_k`` is a slow bias structure along the rows (a decay after the
start of the readout plus a long wave: the overscan spline follows most of it),
``drift_ik`` a per-frame level change, ``noise`` Gaussian read noise
(``read_noise / gain_k``), and the bracket exists only on real (data) pixels:
a fixed bias pattern (columns and pixels) and the electrons: dark current
(Poisson), hot pixels (Poisson, a known list) and cosmic rays (known pixels
per frame).  Values are clipped to 0-65535.

The master bias is what megaradrp's overscan correction leaves of the bias on
average: the fixed pattern plus the part of ``s_k`` the spline cannot follow.
So the expected master dark (median of the overscan-corrected frames minus the
master bias) is the dark signal alone, the mean ``electrons / gain`` in ADU per
exposure: :meth:`SimulatedSet.expected_master_dark`.  (A median of a few
frames of skewed Poisson data sits slightly below the mean: about -0.01 ADU at
the defaults.)

The dark current is drawn from an inverse-CDF table of 65536 equiprobable
Poisson quantiles (fast); its exact mean is the truth (``dark_electrons``,
within 1e-4 e- of ``dark_current * exptime``).  Saturation and non-linearity
are not modelled: the simulator refuses settings whose values could leave the
ADC range (only cosmic-ray pixels may clip at 65535).  Everything is drawn from
``numpy.random.Generator`` streams derived from ``seed`` and fixed row blocks,
so a seed gives identical files (UUIDs included) whatever the number of threads.
"""

from __future__ import annotations

import datetime
import math
import os
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from astropy.io import fits

from .detector import MEGARA, MEGARA_DETECTOR, MEGARA_READ_NOISE, Geometry, spline_fit
from .errors import OutputError

#: Instrument configuration of MEGARA at GTC (2017-05 to 2025-11) in megaradrp 0.22.
INSCONF = "ca3558e3-e50d-4bbc-86bd-da50a0998a48"
PIXEL_AREA_CM2 = 0.0015**2  # 15 um pixels
ADC_MAX = 65535
BLOCK_ROWS = 256  # fixed row blocks: each has its own random stream
LUT_SIZE = 1 << 16
READOUT_GAP_S = 60.0  # between the end of one exposure and the start of the next
DATE_FORMAT = "%Y-%m-%dT%H:%M:%S.%f"


@dataclass(frozen=True)
class HotPixels:
    """Hot pixels in trimmed coordinates and their extra dark current (e-/s)."""

    rows: np.ndarray
    cols: np.ndarray
    rate: np.ndarray


@dataclass(frozen=True)
class CosmicRays:
    """Pixels hit by cosmic rays in one frame (trimmed coordinates, unique) and e-."""

    rows: np.ndarray
    cols: np.ndarray
    electrons: np.ndarray


@dataclass(frozen=True)
class SimulatedSet:
    """Files of a simulated dark set and the truth behind them.

    Attributes
    ----------
    frames : tuple of Path
        Raw dark frames, in time order.
    master_bias : Path
        Trimmed float32 master bias (ADU).
    geometry : Geometry
        Layout of the raw frames (gains from its amplifiers).
    exptime : float
        Exposure time of every frame, s.
    seed : int
        Entropy that reproduces the set.
    read_noise, bias_levels : (float, float)
        Per amplifier: e-, and ADU before the per-frame drift.
    dark_current : float
        e-/s/pixel requested.
    dark_electrons : float
        Exact mean dark electrons per pixel per exposure (hot pixels excluded).
    hot_pixels : HotPixels
    cosmic_rays : tuple of CosmicRays, one per frame
    overscan_levels : float64 array (frames, trimmed rows)
        Expected overscan model of each frame, ADU: what a perfect fit returns.
    """

    frames: tuple[Path, ...]
    master_bias: Path
    geometry: Geometry
    exptime: float
    seed: int
    read_noise: tuple[float, float]
    bias_levels: tuple[float, float]
    dark_current: float
    dark_electrons: float
    hot_pixels: HotPixels
    cosmic_rays: tuple[CosmicRays, ...]
    overscan_levels: np.ndarray

    def expected_master_dark(self) -> np.ndarray:
        """Expected master dark in ADU per exposure (float64, trimmed shape)."""
        electrons = np.full(self.geometry.trimmed_shape, self.dark_electrons)
        hot = self.hot_pixels
        electrons[hot.rows, hot.cols] += hot.rate * self.exptime
        for amp in self.geometry.amplifiers:
            electrons[amp.trimmed_rows] /= amp.gain
        return electrons


def simulate_dark_set(
    outdir: str | os.PathLike,
    nframes: int = 5,
    exptime: float = 3600.0,
    *,
    seed: int | None = None,
    geometry: Geometry = MEGARA,
    dark_current: float = 3.0 / 3600.0,
    read_noise: tuple[float, float] = (MEGARA_READ_NOISE, MEGARA_READ_NOISE),
    bias_levels: tuple[float, float] = (1000.0, 1005.0),
    bias_drift: float = 1.0,
    bias_structure: float = 4.0,
    bias_pattern: float = 0.5,
    n_hot: int | None = None,
    hot_rates: tuple[float, float] = (0.01, 1.0),
    cosmic_rate: float = 0.02,
    imagetyp: bool = True,
    date_obs: str = "2024-03-15T20:00:00.00",
    prefix: str = "dark",
    threads: int = 0,
) -> SimulatedSet:
    """Write ``nframes`` raw dark frames and a master bias to ``outdir``.

    Parameters
    ----------
    outdir : path
        Folder for ``{prefix}_000.fits``... and ``master_bias.fits`` (created if
        needed); existing files are never overwritten (OutputError).
    nframes : int
        Number of dark frames (>= 1).
    exptime : float
        Exposure time, s (> 0); EXPTIME and DARKTIME of every frame.
    seed : int, optional
        Seed of all random draws; None draws one (kept in the result).
    geometry : Geometry
        Raw layout and gains (default: MEGARA 1x1, gains 1.73 and 1.6 e-/ADU).
    dark_current : float
        e-/s/pixel (default 3 e-/h).
    read_noise : (float, float)
        e- per amplifier.
    bias_levels : (float, float)
        ADU per amplifier.
    bias_drift : float
        rms ADU of the per-frame, per-amplifier bias level change.
    bias_structure : float
        ADU amplitude of the slow bias structure along the rows.
    bias_pattern : float
        rms ADU of the fixed bias pattern of the data pixels (half columns, half pixels).
    n_hot : int, optional
        Number of hot pixels (default one per 30000 pixels, at least 3).
    hot_rates : (float, float)
        Range of hot pixels' extra dark current, e-/s (log-uniform).
    cosmic_rate : float
        Cosmic-ray events per cm2 per s (15 um pixels); each hits 1-4 pixels.
    imagetyp : bool
        Also write IMAGETYP='IMAGE_DARK' (real frames may lack it).
    date_obs : str
        DATE-OBS of the first frame, 'YYYY-MM-DDThh:mm:ss.ss'.
    prefix : str
        File name prefix of the frames.
    threads : int
        Worker threads (0: one per CPU); the data do not depend on it.

    Returns
    -------
    SimulatedSet
    """
    _check_arguments(nframes, exptime, dark_current, read_noise, bias_drift, cosmic_rate)
    outdir = Path(outdir)
    paths = [outdir / f"{prefix}_{i:03d}.fits" for i in range(nframes)]
    bias_path = outdir / "master_bias.fits"
    for path in [*paths, bias_path]:
        if path.exists() or path.is_symlink():
            raise OutputError("exists; the simulator never overwrites a file", path)
    seed = np.random.SeedSequence(seed).entropy
    start = datetime.datetime.strptime(date_obs, DATE_FORMAT)
    trimmed = geometry.trimmed_shape
    npix = trimmed[0] * trimmed[1]

    rng = _generator(seed, 0)
    lut = _poisson_lut(dark_current * exptime)
    hot = _hot_pixels(rng, trimmed, max(3, npix // 30000) if n_hot is None else n_hot, hot_rates)
    _check_range(
        geometry,
        bias_levels,
        read_noise,
        5 * (bias_drift + bias_structure + bias_pattern),
        lut[-1] + hot.rate.max(initial=0.0) * exptime,
    )
    structure = _row_structure(geometry, bias_structure, rng)
    master_bias = _bias_pattern(geometry, bias_pattern, rng)
    residual, fitted = _overscan_split(geometry, structure)
    master_bias += residual[:, None].astype(np.float32)
    drifts = rng.normal(0.0, bias_drift, size=(nframes, 2))
    uuids = [uuid.UUID(bytes=rng.bytes(16), version=4) for _ in range(nframes + 1)]
    raw_amp, trimmed_amp = _amp_indices(geometry)
    bias = np.asarray(bias_levels, dtype=np.float64)
    levels = bias[trimmed_amp] + drifts[:, trimmed_amp] + fitted

    cosmic = []
    outdir.mkdir(parents=True, exist_ok=True)
    with ThreadPoolExecutor(max_workers=threads or os.cpu_count() or 1) as pool:
        for i, path in enumerate(paths):
            frame_rng = _generator(seed, 1, i)
            rays = _cosmic_rays(frame_rng, trimmed, cosmic_rate * PIXEL_AREA_CM2 * exptime)
            extra = _extra_electrons(frame_rng, hot, rays, exptime, trimmed[1])
            row_level = bias[raw_amp] + drifts[i, raw_amp] + structure
            frame = _Frame(geometry, row_level, read_noise, lut, master_bias, extra)
            raw = np.empty(geometry.raw_shape, dtype=np.uint16)
            jobs = [
                pool.submit(_fill_block, raw, block, _generator(seed, 2, i, b), frame)
                for b, block in enumerate(_blocks(geometry))
            ]
            for job in jobs:
                job.result()
            when = start + datetime.timedelta(seconds=i * (exptime + READOUT_GAP_S))
            header = _frame_header(when, exptime, uuids[i], geometry, read_noise, imagetyp)
            fits.PrimaryHDU(raw, header=header).writeto(path)
            cosmic.append(rays)
    before = start - datetime.timedelta(hours=1)
    fits.PrimaryHDU(master_bias, header=_bias_header(before, uuids[-1])).writeto(bias_path)
    return SimulatedSet(
        frames=tuple(paths),
        master_bias=bias_path,
        geometry=geometry,
        exptime=float(exptime),
        seed=seed,
        read_noise=tuple(float(r) for r in read_noise),
        bias_levels=tuple(float(b) for b in bias_levels),
        dark_current=float(dark_current),
        dark_electrons=float(lut.mean()),
        hot_pixels=hot,
        cosmic_rays=tuple(cosmic),
        overscan_levels=levels,
    )


@dataclass(frozen=True)
class _Frame:
    """What the row blocks of one frame are drawn from."""

    geometry: Geometry
    row_level: np.ndarray  # ADU per raw row: bias + drift + structure
    read_noise: tuple[float, float]  # e-
    lut: np.ndarray  # Poisson quantiles of the dark electrons
    master_bias: np.ndarray  # fixed bias of the data pixels (trimmed), ADU
    extra: tuple[np.ndarray, np.ndarray]  # sorted flat trimmed indices, electrons


def _check_range(geometry, bias_levels, read_noise, spread, electrons) -> None:
    """Refuse settings whose values could leave the ADC range (clipping is not modelled).

    ``spread``: ADU of bias changes; ``electrons``: most e- a pixel collects.
    """
    gains = [amp.gain for amp in geometry.amplifiers]
    noise = 5 * max(r / g for r, g in zip(read_noise, gains, strict=True))
    low = min(bias_levels) - spread - noise
    high = max(bias_levels) + spread + noise + electrons / min(gains)
    if low < 0 or high > ADC_MAX:
        raise ValueError(
            f"values could reach {low:.0f} to {high:.0f} ADU, outside 0-{ADC_MAX} (clipping "
            "is not modelled): change bias_levels, exptime, dark_current or hot_rates"
        )


def _check_arguments(nframes, exptime, dark_current, read_noise, bias_drift, cosmic_rate):
    if not isinstance(nframes, int) or nframes < 1:
        raise ValueError(f"nframes must be an integer >= 1, got {nframes!r}")
    if not (math.isfinite(exptime) and exptime > 0):
        raise ValueError(f"exptime must be a finite number of seconds > 0, got {exptime!r}")
    for name, value in (
        ("dark_current", dark_current),
        ("bias_drift", bias_drift),
        ("cosmic_rate", cosmic_rate),
        ("read_noise", min(read_noise)),
    ):
        if not (math.isfinite(value) and value >= 0):
            raise ValueError(f"{name} must be finite and >= 0, got {value!r}")


def _generator(seed: int, *key: int) -> np.random.Generator:
    """An independent stream for (purpose, frame, block) ``key``."""
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence(seed, spawn_key=key)))


def _poisson_lut(mean: float) -> np.ndarray:
    """65536 equiprobable quantiles of Poisson(mean), uint32, ascending."""
    if mean == 0:
        return np.zeros(LUT_SIZE, dtype=np.uint32)
    k = np.arange(int(mean + 12 * math.sqrt(mean) + 30))
    log_pmf = k * math.log(mean) - mean - np.array([math.lgamma(n + 1) for n in k])
    cdf = np.cumsum(np.exp(log_pmf))
    quantiles = (np.arange(LUT_SIZE) + 0.5) / LUT_SIZE
    return np.minimum(np.searchsorted(cdf, quantiles), k[-1]).astype(np.uint32)


def _hot_pixels(rng, shape, count, rates) -> HotPixels:
    if not 0 <= count <= shape[0] * shape[1] // 10:
        raise ValueError(f"n_hot must be between 0 and a tenth of the pixels, got {count}")
    low, high = rates
    if not 0 < low <= high:
        raise ValueError(f"hot_rates must be 0 < low <= high (e-/s), got {rates}")
    flat = np.sort(rng.choice(shape[0] * shape[1], size=count, replace=False))
    rate = np.exp(rng.uniform(math.log(low), math.log(high), size=count))
    return HotPixels(flat // shape[1], flat % shape[1], rate)


def _amp_spans(geometry: Geometry) -> tuple[slice, slice]:
    """Raw rows belonging to each amplifier: its rows plus its half of the middle rows."""
    middle = geometry.middle_rows
    split = (middle.start + middle.stop) // 2
    return slice(0, split), slice(split, geometry.raw_shape[0])


def _amp_indices(geometry: Geometry) -> tuple[np.ndarray, np.ndarray]:
    """The amplifier (0 or 1) of each raw row and of each trimmed row."""
    raw = np.zeros(geometry.raw_shape[0], dtype=np.intp)
    trimmed = np.zeros(geometry.trimmed_shape[0], dtype=np.intp)
    raw[_amp_spans(geometry)[1]] = 1
    trimmed[geometry.amplifiers[1].trimmed_rows] = 1
    return raw, trimmed


def _row_structure(geometry: Geometry, amplitude: float, rng) -> np.ndarray:
    """Slow bias structure s(row), ADU, per raw row: decay plus a long wave."""
    structure = np.empty(geometry.raw_shape[0])
    length = geometry.trimmed_shape[0] / 2
    for span in _amp_spans(geometry):
        x = np.arange(span.stop - span.start) / length
        phase = rng.uniform(0, 2 * math.pi)
        structure[span] = amplitude * (np.exp(-x / 0.15) + 0.25 * np.sin(5 * x + phase))
    return structure


def _bias_pattern(geometry: Geometry, rms: float, rng) -> np.ndarray:
    """Fixed bias pattern of the data pixels (trimmed shape): columns + pixels, ADU."""
    pattern = rng.standard_normal(geometry.trimmed_shape, dtype=np.float32)
    pattern *= rms / math.sqrt(2)
    for amp in geometry.amplifiers:
        columns = rng.normal(0.0, rms / math.sqrt(2), size=geometry.trimmed_shape[1])
        pattern[amp.trimmed_rows] += columns.astype(np.float32)
    return pattern


def _overscan_split(geometry: Geometry, structure: np.ndarray):
    """Per trimmed row: the part of the structure the overscan spline leaves, and the fit."""
    residual = np.empty(geometry.trimmed_shape[0])
    fitted = np.empty(geometry.trimmed_shape[0])
    for amp in geometry.amplifiers:
        rows = np.arange(amp.rows.start, amp.rows.stop)
        fit = spline_fit(rows, structure[amp.rows], amp.knot)[0]
        fitted[amp.trimmed_rows] = fit
        residual[amp.trimmed_rows] = structure[amp.rows] - fit
    return residual, fitted


def _cosmic_rays(rng, shape, events_per_pixel: float) -> CosmicRays:
    """Short straight tracks of 1-4 pixels, log-normal charge (median 2000 e-)."""
    count = rng.poisson(events_per_pixel * shape[0] * shape[1])
    length = rng.integers(1, 5, size=count)
    step = np.array([(0, 1), (1, 0), (1, 1), (1, -1)])[rng.integers(0, 4, size=count)]
    start = np.column_stack([rng.integers(0, n, size=count) for n in shape])
    charge = rng.lognormal(math.log(2000.0), 0.6, size=count) / length
    event = np.repeat(np.arange(count), length)
    offset = np.arange(event.size) - np.repeat(np.cumsum(length) - length, length)
    pixel = start[event] + step[event] * offset[:, None]
    inside = np.all((pixel >= 0) & (pixel < shape), axis=1)
    flat = pixel[inside, 0] * shape[1] + pixel[inside, 1]
    unique, where = np.unique(flat, return_inverse=True)
    electrons = np.bincount(where, weights=charge[event][inside], minlength=unique.size)
    return CosmicRays(unique // shape[1], unique % shape[1], electrons)


def _extra_electrons(rng, hot: HotPixels, rays: CosmicRays, exptime: float, width: int):
    """Hot-pixel (Poisson) and cosmic-ray electrons of one frame: sorted flat indices, e-."""
    flat = np.concatenate([hot.rows * width + hot.cols, rays.rows * width + rays.cols])
    electrons = np.concatenate([rng.poisson(hot.rate * exptime).astype(np.float64), rays.electrons])
    unique, where = np.unique(flat, return_inverse=True)
    return unique, np.bincount(where, weights=electrons, minlength=unique.size)


def _blocks(geometry: Geometry) -> list[tuple[int, int, int, bool]]:
    """Row blocks (start, stop, amplifier, holds data) that never straddle a region."""
    blocks = []
    for k, (amp, span) in enumerate(zip(geometry.amplifiers, _amp_spans(geometry), strict=True)):
        for lo, hi, data in (
            (span.start, amp.rows.start, False),
            (amp.rows.start, amp.rows.stop, True),
            (amp.rows.stop, span.stop, False),
        ):
            blocks += [(r, min(r + BLOCK_ROWS, hi), k, data) for r in range(lo, hi, BLOCK_ROWS)]
    return blocks


def _fill_block(raw, block, rng, frame: _Frame) -> None:
    """Write rows [start, stop) of ``raw`` (uint16 ADU) from the block's own stream."""
    start, stop, k, data = block
    amp = frame.geometry.amplifiers[k]
    value = rng.standard_normal((stop - start, raw.shape[1]), dtype=np.float32)
    value *= np.float32(frame.read_noise[k] / amp.gain)
    value += frame.row_level[start:stop, None].astype(np.float32)
    if data:
        width = frame.geometry.trimmed_shape[1]
        t0 = start - amp.rows.start + amp.trimmed_rows.start
        t1 = t0 + stop - start
        draws = rng.integers(0, LUT_SIZE, size=(stop - start, width), dtype=np.uint16)
        electrons = frame.lut[draws].astype(np.float32)
        flat, extra = frame.extra
        lo, hi = np.searchsorted(flat, (t0 * width, t1 * width))
        electrons.ravel()[flat[lo:hi] - t0 * width] += extra[lo:hi].astype(np.float32)
        electrons *= np.float32(1.0 / amp.gain)
        electrons += frame.master_bias[t0:t1]
        value[:, amp.data_cols] += electrons
    np.rint(value, out=value)
    np.clip(value, 0, ADC_MAX, out=value)
    raw[start:stop] = value


def _frame_header(when, exptime, frame_uuid, geometry, read_noise, imagetyp) -> fits.Header:
    header = _common_header(when, frame_uuid)
    header["OBSMODE"] = ("MegaraDarkImage", "Observing mode")
    if imagetyp:
        header["IMAGETYP"] = ("IMAGE_DARK", "Image type")
    header["OBSTYPE"] = "CALIBRATION"
    header["EXPTIME"] = (float(exptime), "Exposure time [s]")
    header["DARKTIME"] = (float(exptime), "Dark time [s]")
    header["READMODE"] = ("NORMAL", "Readout mode")
    header["RSPEED"] = ("SLOW", "Readout speed")
    for k, amp in enumerate(geometry.amplifiers):
        header[f"GAIN{k + 1}"] = (float(amp.gain), f"Gain of amplifier {k + 1} [e-/ADU]")
        header[f"RDNOISE{k + 1}"] = (float(read_noise[k]), f"Read noise of amplifier {k + 1} [e-]")
    header["BUNIT"] = ("ADU", "Unit of the data")
    return header


def _bias_header(when, bias_uuid) -> fits.Header:
    header = _common_header(when, bias_uuid)
    header["OBSMODE"] = ("MegaraBiasImage", "Observing mode")
    header["IMAGETYP"] = ("MASTER_BIAS", "Image type")
    header["NUMTYPE"] = ("MasterBias", "Product type")
    header["EXPTIME"] = (0.0, "Exposure time [s]")
    header["DARKTIME"] = (0.0, "Dark time [s]")
    header["BUNIT"] = ("ADU", "Unit of the data")
    return header


def _common_header(when, image_uuid) -> fits.Header:
    header = fits.Header()
    header["ORIGIN"] = ("megara_dark.simulate", "Simulated data")
    header["OBSERVAT"] = ("ORM", "Observatory")
    header["TELESCOP"] = ("GTC", "Telescope")
    header["INSTRUME"] = ("MEGARA", "Instrument")
    header["DETECTOR"] = (MEGARA_DETECTOR, "Detector")
    header["INSCONF"] = (INSCONF, "Instrument configuration")
    header["UUID"] = (str(image_uuid), "Image identifier")
    header["DATE-OBS"] = (when.strftime(DATE_FORMAT)[:-4], "Start of the exposure (UTC)")
    header["VPH"] = ("LR-B", "Volume phase holographic grating")
    header["INSMODE"] = ("LCB", "Instrument mode")
    return header
