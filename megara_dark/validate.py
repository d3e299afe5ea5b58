"""Header rules for a MEGARA dark set and its master bias (no pixel is read).

Real raw MEGARA frames may carry only INSTRUME, OBSMODE, EXPTIME and the
geometry keys, so only those are required; other keys (IMAGETYP, DARKTIME,
UUID, DATE-OBS, READMODE, RSPEED, DETECTOR, binning) are checked when present.
Every problem of every file is collected and reported together, each line
naming the file.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field

from . import detector
from .errors import ValidationError
from .io import FitsImage

DARK_OBSMODE = "MegaraDarkImage"
DARK_IMAGETYPES = ("IMAGE_DARK", "DARK")
BIAS_KINDS = {
    "NUMTYPE": ("MasterBias", "MASTER_BIAS"),
    "IMAGETYP": ("MASTER_BIAS",),
    "IMGTYPE": ("MASTER_BIAS",),
    "OBSMODE": ("MegaraBiasImage",),
}
# Keys that must agree across the set when present (readout and detector).
SET_CONSISTENT_KEYS = ("READMODE", "RSPEED", "DETECTOR")


@dataclass(frozen=True)
class SetOptions:
    """unit: "counts" (ADU per exposure, as megaradrp) or "rate" (ADU/s);
    exptime_tolerance: largest relative spread of EXPTIME (and of DARKTIME,
    when every frame has one) accepted in counts mode; allow_single: accept a
    one-frame set; geometry: the detector layout."""

    unit: str = "counts"
    exptime_tolerance: float = 0.01
    allow_single: bool = False
    geometry: detector.Geometry = detector.MEGARA


@dataclass
class DarkSet:
    """A validated set: frames (in the order given), bias, layout ("raw" or
    "trimmed"), each frame's EXPTIME (s) and the set's (their median)."""

    frames: list[FitsImage]
    bias: FitsImage
    layout: str
    exptimes: list[float]
    exptime: float
    warnings: list[str] = field(default_factory=list)


GAIN_KEYS = ("GAIN1", "GAIN2")  # e-/ADU of the two amplifiers, where the header has them


def _text(header, key) -> str | None:
    value = header.get(key)
    return None if value is None else str(value).strip()


def exptime_problem(image: FitsImage) -> str | None:
    """Why a frame's EXPTIME is unusable (missing, duplicated, not a positive number)."""
    header = image.primary_header if "EXPTIME" not in image.header else image.header
    count = header.count("EXPTIME") if "EXPTIME" in header else 0
    if count == 0:
        return f"{image.path}: EXPTIME is missing"
    if count > 1:
        return f"{image.path}: EXPTIME appears {count} times in the header"
    value = header["EXPTIME"]
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return f"{image.path}: EXPTIME is not a number: {value!r}"
    if not math.isfinite(value) or value <= 0:
        return f"{image.path}: EXPTIME must be a positive number of seconds, got {value!r}"
    return None


def frame_problems(image: FitsImage, geometry: detector.Geometry) -> list[str]:
    """Problems of one frame as a raw or trimmed MEGARA dark exposure."""
    h, path = image.primary_header, image.path
    problems = []
    instrument = _text(h, "INSTRUME")
    if instrument is None:
        problems.append(f"{path}: INSTRUME is missing (expected 'MEGARA')")
    elif instrument.upper() != "MEGARA":
        problems.append(f"{path}: INSTRUME is {instrument!r}, not 'MEGARA'")
    obsmode, imagetyp = _text(h, "OBSMODE"), _text(h, "IMAGETYP")
    if obsmode is not None and obsmode != DARK_OBSMODE:
        problems.append(f"{path}: OBSMODE is {obsmode!r}, not a dark ({DARK_OBSMODE!r})")
    if imagetyp is not None and imagetyp.upper() not in DARK_IMAGETYPES:
        problems.append(f"{path}: IMAGETYP is {imagetyp!r}, not a dark (IMAGE_DARK)")
    if obsmode is None and imagetyp is None:
        problems.append(f"{path}: neither OBSMODE nor IMAGETYP says this is a dark exposure")
    if _text(h, "NUMTYPE") is not None:
        problems.append(f"{path}: is a processed product (NUMTYPE={h['NUMTYPE']!r}), not a dark")
    problem = exptime_problem(image)
    if problem:
        problems.append(problem)
    for key in GAIN_KEYS:  # optional; the QC's e-/pixel/hour use them
        value = h.get(key)
        if key in h and not (_is_number(value) and value > 0):
            problems.append(f"{path}: {key} must be a positive number of e-/ADU, got {value!r}")
    try:
        layout(image, geometry)
    except ValidationError as exc:
        problems += exc.problems
    return problems


def layout(image: FitsImage, geometry: detector.Geometry) -> str:
    """ "raw" or "trimmed" (detector.classify_frame: shape, binning keys)."""
    header = _header_with_binning(image)
    return detector.classify_frame(
        str(image.path), shape=image.shape, header=header, geometry=geometry
    )


def _header_with_binning(image: FitsImage):
    """The image HDU's header, with the primary's binning keys when it lacks them."""
    header = image.header.copy()
    for key in detector.BINNING_KEYS:
        if key not in header and key in image.primary_header:
            header[key] = image.primary_header[key]
    return header


def bias_problems(
    bias: FitsImage, frames: list[FitsImage], geometry: detector.Geometry
) -> tuple[list[str], list[str]]:
    """Problems and warnings of the master bias against the frames."""
    h, path = bias.primary_header, bias.path
    problems, warnings = [], []
    kinds = {key: _text(h, key) for key in BIAS_KINDS if _text(h, key) is not None}
    wrong = [f"{k}={v!r}" for k, v in kinds.items() if v not in BIAS_KINDS[k]]
    if wrong:
        problems.append(f"{path}: not a master bias ({', '.join(wrong)})")
    elif not kinds:
        warnings.append(f"{path}: no NUMTYPE, IMAGETYP or OBSMODE; assumed to be a master bias")
    instrument = _text(h, "INSTRUME")
    if instrument is not None and instrument.upper() != "MEGARA":
        problems.append(f"{path}: INSTRUME is {instrument!r}, not 'MEGARA'")
    trimmed, raw = geometry.trimmed_shape, geometry.raw_shape
    if bias.shape != trimmed:
        state = "an untrimmed raw frame" if bias.shape == raw else "the wrong shape"
        problems.append(
            f"{path}: master bias is {bias.shape[0]} x {bias.shape[1]} ({state}); it must be "
            f"trimmed to {trimmed[0]} x {trimmed[1]}"
        )
    else:
        try:
            layout(bias, geometry)
        except ValidationError as exc:
            problems += exc.problems
    for frame in frames:
        if _same_file(bias.path, frame.path):
            problems.append(f"{path}: the master bias is also given as a dark frame")
    return problems, warnings


def _same_file(a, b) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return os.path.realpath(a) == os.path.realpath(b)


def set_problems(frames: list[FitsImage], options: SetOptions) -> tuple[list[str], list[str]]:
    """Problems and warnings of the set as a whole (count, shapes, EXPTIME, repeats)."""
    problems, warnings = [], []
    if len(frames) == 1 and not options.allow_single:
        problems.append(
            f"{frames[0].path}: only one dark frame; a master dark from one frame keeps every "
            "cosmic ray (allow it explicitly to proceed)"
        )
    shapes = {f.shape for f in frames}
    if len(shapes) > 1:
        listing = "; ".join(f"{f.path}: {f.shape[0]} x {f.shape[1]}" for f in frames)
        problems.append(f"frames of different shapes: {listing}")
    for key in SET_CONSISTENT_KEYS:
        values = {_text(f.primary_header, key) for f in frames}
        if len(values) > 1:
            listing = "; ".join(f"{f.path}: {_text(f.primary_header, key)}" for f in frames)
            problems.append(f"frames with different {key}: {listing}")
    tolerance = options.exptime_tolerance
    exptimes = [f.primary_header.get("EXPTIME") for f in frames]
    usable = [e for f, e in zip(frames, exptimes, strict=True) if exptime_problem(f) is None]
    if len(usable) == len(frames) and _differ(usable, tolerance):
        listing = "; ".join(f"{f.path}: {e} s" for f, e in zip(frames, exptimes, strict=True))
        if options.unit == "rate":
            warnings.append(f"exposure times differ, each frame is divided by its own: {listing}")
        else:
            problems.append(
                f"exposure times differ by more than {100 * tolerance:g}% "
                f"(use the rate unit to normalise each frame): {listing}"
            )
    darktimes = [f.primary_header.get("DARKTIME") for f in frames]
    if all(_is_number(d) for d in darktimes) and _differ(darktimes, tolerance):
        listing = "; ".join(f"{f.path}: {d} s" for f, d in zip(frames, darktimes, strict=True))
        message = f"dark times (DARKTIME) differ by more than {100 * tolerance:g}%: {listing}"
        if options.unit == "rate":
            warnings.append(f"{message} (each frame is divided by its EXPTIME)")
        else:
            problems.append(message)
    problems += _repeat_problems(frames)
    return problems, warnings


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _differ(values: list[float], tolerance: float) -> bool:
    """True when the values spread by more than ``tolerance`` times the largest."""
    return max(values) - min(values) > tolerance * max(values)


def _repeat_problems(frames: list[FitsImage]) -> list[str]:
    """The same file (path or link) or the same exposure (UUID, DATE-OBS) twice."""
    problems = []
    for i, a in enumerate(frames):
        for b in frames[i + 1 :]:
            if _same_file(a.path, b.path):
                problems.append(f"{b.path}: the same file as {a.path} (given twice)")
                continue
            for key in ("UUID", "DATE-OBS"):
                va, vb = _text(a.primary_header, key), _text(b.primary_header, key)
                if va is not None and va == vb:
                    problems.append(f"{b.path}: the same exposure as {a.path} ({key} {va})")
                    break
    return problems


def validate_dark_set(frames: list[FitsImage], bias: FitsImage, options: SetOptions) -> DarkSet:
    """Check every rule on the headers; raise one ValidationError listing all problems."""
    if not frames:
        raise ValidationError(["no input frames: a dark set needs at least one exposure"])
    problems: list[str] = []
    for image in frames:
        problems += frame_problems(image, options.geometry)
    more, warnings = set_problems(frames, options)
    problems += more
    more, bias_warnings = bias_problems(bias, frames, options.geometry)
    problems += more
    if problems:
        raise ValidationError(problems)
    layouts = {layout(f, options.geometry) for f in frames}
    exptimes = [float(f.primary_header["EXPTIME"]) for f in frames]
    return DarkSet(
        frames=list(frames),
        bias=bias,
        layout=layouts.pop(),
        exptimes=exptimes,
        exptime=float(sorted(exptimes)[len(exptimes) // 2]),
        warnings=warnings + bias_warnings,
    )
