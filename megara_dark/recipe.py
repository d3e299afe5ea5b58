"""The MEGARA Dark recipe (mode ``MegaraDarkImage``, product ``MasterDark``).

``DarkRecipe().run(DarkRecipeInput(obresult, master_bias))`` turns a dark image
set and a master bias into a master dark FITS (PRIMARY float32, VARIANCE
float32, MAP int16, as megaradrp), a processing log and a JSON report, and
returns a :class:`DarkRecipeResult` with the product path and the QC.

Steps, as megaradrp's DarkRecipe, with checks and without copies:
validate every header; model each raw frame's overscan per amplifier (cubic
spline along the rows); measure each frame on a subsample and leave out the
frames that fail the QC gate; combine (median by default) in the C core with
the overscan model as per-row offsets and the master bias subtracted per
pixel, reading each memory-mapped raw frame once; QC; write the products
atomically.  This module orchestrates; the arithmetic lives in the core
(:mod:`megara_dark.combine`), :mod:`megara_dark.detector` and :mod:`megara_dark.qc`.
"""

from __future__ import annotations

import math
import os
import uuid
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import numpy as np
from astropy.io import fits
from astropy.io.fits.verify import VerifyError

from . import __version__, dask, detector, qc
from .combine import CLIP_METHODS, CombineResult, CombineWarning, build_info, combine
from .errors import MegaraDarkError, ValidationError
from .io import (
    FitsImage,
    StagedOutputs,
    check_not_an_input,
    check_output_folder,
    fsync_file,
    inspect_fits,
    read_obresult,
    read_raw,
    sha256_file,
    verify_checksums,
    write_images,
    writing,
)
from .report import ProcessingLog, software, utc_now, write_json
from .validate import DarkSet, SetOptions, validate_dark_set

MODE = "MegaraDarkImage"
MODE_KEY = "MEGARA_DARK_IMAGE"
PRODUCT = "MasterDark"
UNITS = {"counts": "ADU", "rate": "ADU/s"}
# Keys of the raw header that describe the raw data, not the product.
RAW_STRUCTURE_KEYS = ("BZERO", "BSCALE", "BLANK", "CHECKSUM", "DATASUM", "BUNIT")
# Frame statistics use every k-th row and column, k chosen for about this many pixels
# (k = 16 on a MEGARA frame; every pixel of a small one, whose median needs them all).
FRAME_SAMPLE_PIXELS = 1 << 16
# The planes the combination writes: value and variance (float32), npix (int16), and
# nrejected (int16) for the clipping methods, which alone reject values.
PLANE_BYTES_PER_PIXEL = 4 + 4 + 2
REJECTED_BYTES_PER_PIXEL = 2


@dataclass
class DarkRecipeInput:
    """obresult: list of dark frame paths, or an observation-result YAML file
    (numina's format); master_bias: path of a MasterBias FITS (may be None when
    the YAML names it under ``requirements: master_bias``)."""

    obresult: str | Path | list
    master_bias: str | Path | None = None


@dataclass
class DarkRecipeResult:
    """master_dark: path of the product FITS; qc: flag, reasons and statistics;
    log, report: paths of the processing log and the JSON report; report_data:
    the report itself."""

    master_dark: Path
    qc: qc.QCResult
    log: Path
    report: Path
    report_data: dict = field(repr=False, default_factory=dict)


@dataclass(frozen=True)
class Products:
    """Where a run writes its products."""

    fits: Path
    log: Path
    report: Path

    @classmethod
    def in_folder(cls, folder: Path, name: str) -> Products:
        return cls(folder / f"{name}.fits", folder / f"{name}.log", folder / f"{name}.json")

    def all(self) -> list[Path]:
        return [self.fits, self.log, self.report]


class DarkRecipe:
    """Master dark from a MEGARA dark image set (see the module doc).

    Parameters
    ----------
    method : str
        Combination method of :func:`megara_dark.combine.combine` (default
        ``median``, as megaradrp).
    method_params : dict, optional
        Its parameters (e.g. ``{"low": 4.0}`` for sigclip).
    outdir : path
        Folder of the products (created if needed).
    unit : "counts" or "rate"
        ADU accumulated in the set's exposure time (megaradrp) or ADU/s (each
        frame divided by its EXPTIME).
    nthreads : int
        Threads of the core (0: default).
    qc_thresholds : QCThresholds, optional
    overwrite : bool
        Replace existing products (never an input).
    allow_single : bool
        Accept a set of one frame (QC flags it).
    exptime_tolerance : float
        Largest relative EXPTIME (and DARKTIME) spread in counts mode.
    strict : bool
        CHECKSUM/DATASUM mismatches are errors instead of warnings.
    name : str
        Base name of the products (``name.fits``, ``.log``, ``.json``).
    geometry : detector.Geometry
        The detector layout (MEGARA 1x1; smaller ones for tests).
    echo : callable, optional
        Receives each log line as it happens (progress display).
    progress : callable, optional
        Called as ``progress(stage, done, total)`` while a long stage runs:
        ``progress("combine", rows_done, rows_total)`` between row blocks of
        the combination, rows counted across both amplifiers.
    client : distributed.Client, optional
        Combine on this Dask cluster (:func:`megara_dark.dask.combine`, the
        same bits); default: in this process.
    """

    RecipeInput = DarkRecipeInput
    RecipeResult = DarkRecipeResult
    mode = MODE
    mode_key = MODE_KEY
    product = PRODUCT

    def __init__(
        self,
        method="median",
        method_params=None,
        *,
        outdir=".",
        unit="counts",
        nthreads=0,
        qc_thresholds=None,
        overwrite=False,
        allow_single=False,
        exptime_tolerance=0.01,
        strict=False,
        name="master_dark",
        geometry=detector.MEGARA,
        echo=None,
        progress=None,
        client=None,
    ):
        if unit not in UNITS:
            raise ValueError(f"unit must be 'counts' or 'rate', got {unit!r}")
        self.method = method
        self.method_params = dict(method_params or {})
        self.outdir = Path(outdir)
        self.unit = unit
        self.nthreads = nthreads
        self.thresholds = qc_thresholds or qc.QCThresholds()
        self.overwrite = overwrite
        self.geometry = geometry
        self.options = SetOptions(unit, exptime_tolerance, allow_single, geometry)
        self.strict = strict
        self.name = name
        self.echo = echo
        self.progress = progress
        self.client = client

    # ---- the run ------------------------------------------------------------

    def run(self, rinput: DarkRecipeInput) -> DarkRecipeResult:
        """Reduce the set; raises MegaraDarkError (ValidationError, InputFileError,
        OutputError) with a message naming the file and the problem."""
        log = ProcessingLog(self.echo)
        log.info(f"megara_dark {__version__} DarkRecipe ({MODE}), method {self.method}")
        frame_paths, bias_path = self._resolve_inputs(rinput)
        products = Products.in_folder(self.outdir, self.name)
        with log.step("check outputs"):
            staged = StagedOutputs(self.overwrite)
            for path in products.all():
                check_not_an_input(path, [*frame_paths, bias_path])
                staged.check_target(path)
            check_output_folder(self.outdir, create=False)
        with log.step("validate headers"):
            dark_set = self._validate(frame_paths, bias_path, log)
        check_output_folder(self.outdir)
        try:
            return self._reduce(dark_set, staged, products, log)
        except BaseException as exc:  # Ctrl-C too: the failure report says why
            log.error(_failure_reason(exc))
            self._write_failure_report(products, dark_set, log)
            raise

    def _reduce(self, dark_set, staged, products, log) -> DarkRecipeResult:
        """Everything after validation: process, QC and write the products."""
        paths = [*(f.path for f in dark_set.frames), dark_set.bias.path]
        hasher = ThreadPoolExecutor(max_workers=1)
        try:
            with staged:
                digests = {p: hasher.submit(sha256_file, p) for p in paths}
                planes, frames_qc, used, overscan = self._process(dark_set, log)
                with log.step("quality control"):
                    result_qc = self._quality(dark_set, planes, frames_qc, used)
                log.info(f"QC {result_qc.flag}" + "".join(f"; {r}" for r in result_qc.reasons))
                checksums = {str(p): f.result() for p, f in digests.items()}
                report = self._write(
                    staged, products, dark_set, planes, result_qc, used, overscan, checksums, log
                )
        except MemoryError as exc:  # numpy's message names the bytes it needed
            raise MegaraDarkError(f"not enough memory: {exc or 'an allocation failed'}") from None
        finally:  # on an error, hash no more inputs
            hasher.shutdown(wait=True, cancel_futures=True)
        return DarkRecipeResult(products.fits, result_qc, products.log, products.report, report)

    def _write_failure_report(self, products, dark_set, log) -> None:
        """Best effort: ``<name>.failed.json`` says why the run failed (older
        products stay untouched); nothing is raised if it cannot be written."""
        report = {
            "schema": "megara_dark.report/1",
            "status": "failed",
            "created": utc_now(),
            "recipe": {
                "name": "DarkRecipe",
                "mode": MODE,
                "mode_key": MODE_KEY,
                "product": PRODUCT,
            },
            "inputs": [{"path": str(f.path)} for f in dark_set.frames],
            "bias": {"path": str(dark_set.bias.path)},
            "method": {"name": self.method, "params": self.method_params},
            "unit": UNITS[self.unit],
            "threads": {"requested": self.nthreads, **_threads()},
            "steps": log.steps,
            "outputs": [],
            "software": software(),
            "warnings": list(log.warnings),
            "errors": list(log.errors),
            "log": log.lines,
        }
        path = products.report.with_name(f"{self.name}.failed.json")
        try:
            with StagedOutputs(overwrite=True) as staged:
                write_json(staged.stage(path), report)
                staged.commit()
        except OSError:
            pass

    def _resolve_inputs(self, rinput: DarkRecipeInput) -> tuple[list[Path], Path]:
        obresult, bias = rinput.obresult, rinput.master_bias
        missing = "no master bias given (the recipe requires master_bias)"
        if isinstance(obresult, (str, Path)) and Path(obresult).suffix.lower() in (".yaml", ".yml"):
            ob = read_obresult(obresult, mode=MODE)
            frames, bias = ob.frames, bias if bias is not None else ob.master_bias
            missing = f"{obresult}: {missing} and no 'requirements: master_bias'"
        elif isinstance(obresult, (str, Path)):
            frames = [Path(obresult)]
        else:
            frames = [Path(p) for p in obresult]
        if bias is None:
            raise ValidationError([missing])
        return frames, Path(bias)

    def _validate(self, frame_paths, bias_path, log) -> DarkSet:
        problems, images = [], []
        for path in frame_paths:
            try:
                images.append(inspect_fits(path))
            except ValidationError as exc:
                problems += exc.problems
        try:
            bias = inspect_fits(bias_path)
        except ValidationError as exc:
            problems += exc.problems
        if problems:
            raise ValidationError(problems)
        dark_set = validate_dark_set(images, bias, self.options)
        # A canonical order (time of observation, then identifiers) makes the
        # product independent of the order the frames were given in.
        order = sorted(range(len(images)), key=lambda i: _observation_order(images[i]))
        dark_set.frames = [dark_set.frames[i] for i in order]
        dark_set.exptimes = [dark_set.exptimes[i] for i in order]
        for message in dark_set.warnings:
            log.warning(message)
        for image in [*dark_set.frames, dark_set.bias]:
            for problem in verify_checksums(image):
                if self.strict:
                    raise ValidationError([problem])
                log.warning(problem)
        log.info(f"{len(images)} {dark_set.layout} frames, EXPTIME {dark_set.exptime:g} s")
        return dark_set

    def _process(self, dark_set: DarkSet, log):
        """Overscan models, frame gate and the combination: the planes of the product."""
        raws = [read_raw(f) for f in dark_set.frames]
        bias = _physical(dark_set.bias, read_raw(dark_set.bias))

        def measure(frame, raw):  # one frame's overscan model and statistics
            model = self._overscan(dark_set, frame, raw)
            return model, self._frame_stats(frame, raw, model, bias)

        with log.step("overscan and frame statistics"):
            with ThreadPoolExecutor(max_workers=2) as pool:  # NumPy releases the GIL
                measured = list(pool.map(measure, dark_set.frames, raws))
            overscan = [model for model, _ in measured]
            frames_qc = [stats for _, stats in measured]
            qc.gate_frames(frames_qc, self.thresholds)
        used = [i for i, s in enumerate(frames_qc) if s.passed]
        for s in frames_qc:
            if not s.passed:
                log.warning(f"{s.path}: left out: {s.reason}")
        if not used:
            raise MegaraDarkError("every frame failed the QC gate; no master dark was made")
        with log.step(f"combine ({self.method}, {len(used)} frames)"):
            planes = self._combine(dark_set, raws, overscan, bias, used, log)
        return planes, frames_qc, used, overscan

    def _overscan(self, dark_set: DarkSet, image: FitsImage, raw) -> detector.OverscanModel | None:
        """A raw frame's overscan model (None for a trimmed set)."""
        if dark_set.layout != "raw":
            return None
        return detector.overscan_offsets(
            raw,
            bzero=image.bzero,
            bscale=image.bscale,
            blank=image.blank,
            geometry=self.geometry,
            name=str(image.path),
        )

    def _frame_stats(self, image: FitsImage, raw, model, bias) -> qc.FrameStats:
        step = max(1, math.isqrt(raw.size // FRAME_SAMPLE_PIXELS))
        pieces, raw_values = [], []
        for rows, view in _amplifier_pieces(raw, self.geometry):
            sample = view[::step, ::step].astype(np.float64) * image.bscale + image.bzero
            raw_values.append(sample.ravel())
            offsets = model.offsets[rows][::step, None] if model is not None else 0.0
            with np.errstate(invalid="ignore"):  # inf - inf: bad pixels, left out of the stats
                pieces.append((sample - offsets - bias[rows][::step, ::step]).ravel())
        return qc.frame_stats(
            str(image.path),
            np.concatenate(pieces),
            np.concatenate(raw_values),
            self.thresholds.saturation_adu,
        )

    def _combine(self, dark_set, raws, overscan, bias, used, log) -> CombineResult:
        shape = self.geometry.trimmed_shape
        n = len(used)
        rejects = self.method in CLIP_METHODS
        bytes_per_pixel = PLANE_BYTES_PER_PIXEL + (REJECTED_BYTES_PER_PIXEL if rejects else 0)
        try:
            out = CombineResult(
                data=np.empty(shape, np.float32),
                variance=np.empty(shape, np.float32),
                npix=np.empty(shape, np.int16),
                nrejected=np.empty(shape, np.int16) if rejects else None,
            )
        except MemoryError:
            raise MegaraDarkError(
                f"not enough memory for the planes of the master dark: {shape[0]} x {shape[1]} "
                f"pixels need {shape[0] * shape[1] * bytes_per_pixel} bytes"
            ) from None
        frames = [dark_set.frames[i] for i in used]
        scales = [dark_set.exptimes[i] for i in used] if self.unit == "rate" else None
        combine_rows = combine if self.client is None else partial(dask.combine, client=self.client)
        for rows, views in _trimmed_pieces([raws[i] for i in used], self.geometry):
            offsets = None
            if dark_set.layout == "raw":
                offsets = np.stack([overscan[i].offsets[rows] for i in used])
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always", CombineWarning)
                combine_rows(
                    views,
                    self.method,
                    bias=bias[rows],
                    row_offsets=offsets,
                    bzero=[f.bzero for f in frames],
                    bscale=[f.bscale for f in frames],
                    blank=[f.blank if f.raw_dtype.kind in "iu" else None for f in frames],
                    scales=scales,
                    nthreads=self.nthreads,
                    out=CombineResult(
                        *(
                            None if plane is None else plane[rows]
                            for plane in (out.data, out.variance, out.npix, out.nrejected)
                        )
                    ),
                    progress=None
                    if self.progress is None
                    else lambda done, _, first=rows.start: self.progress(
                        "combine", first + done, shape[0]
                    ),
                    **self.method_params,
                )
            for w in caught:
                if str(w.message) not in log.warnings:
                    log.warning(str(w.message))
        log.info(f"combined {n} frames into {shape[0]} x {shape[1]} planes")
        return out

    def _quality(self, dark_set, planes, frames_qc, used) -> qc.QCResult:
        unit = UNITS[self.unit]
        # Pixels short of good values (bad or masked inputs); values a clipping
        # method rejects on purpose (minmax always drops some) are not missing.
        rejected = planes.nrejected
        good = planes.npix if rejected is None else planes.npix + rejected
        stats = qc.master_stats(
            planes.data,
            good,
            len(used),
            dark_set.exptime,
            unit,
            _gains(dark_set.frames[used[0]], self.geometry),
            self.thresholds,
        )
        stats["nrejected_total"] = 0 if rejected is None else int(rejected.sum(dtype=np.int64))
        flag, reasons = qc.decide(stats, frames_qc, len(used), self.thresholds)
        return qc.QCResult(flag, reasons, stats, frames_qc)

    # ---- products -----------------------------------------------------------

    def _write(
        self, staged, products, dark_set, planes, result_qc, used, overscan, checksums, log
    ) -> dict:
        product_uuid = str(uuid.uuid4())
        hdul = self._product_hdul(dark_set, planes, result_qc, used, overscan, product_uuid, log)
        tmp_fits = staged.stage(products.fits)
        # The log and the report are written after this step: they hold its timing.
        with log.step("write master dark"), writing(products.fits):
            fits_digest = write_images(tmp_fits, hdul)
            fsync_file(tmp_fits)  # while the last chunks are hashed
            fits_sha256 = fits_digest.result()
        tmp_log = staged.stage(products.log)
        with writing(products.log):
            tmp_log.write_text(log.text(f"megara_dark DarkRecipe log, {utc_now()}"))
            fsync_file(tmp_log)
        report = self._report(
            dark_set,
            result_qc,
            used,
            overscan,
            checksums,
            products,
            {products.fits: fits_sha256, products.log: sha256_file(tmp_log)},
            product_uuid,
            log,
        )
        tmp_report = staged.stage(products.report)
        with writing(products.report):
            write_json(tmp_report, report)
            fsync_file(tmp_report)
        staged.commit()
        return report

    def _product_hdul(self, dark_set, planes, result_qc, used, overscan, product_uuid, log):
        first = dark_set.frames[used[0]]
        header = _writable_header(first, log)
        header.strip()
        for key in RAW_STRUCTURE_KEYS:
            header.remove(key, ignore_missing=True, remove_all=True)
        bias_id = _image_id(dark_set.bias, prefix=False)
        stats = result_qc.stats
        header.update(
            {
                "BUNIT": (UNITS[self.unit], "unit of the master dark"),
                "EXPTIME": (dark_set.exptime, "[s] exposure time of the dark set"),
                "IMAGETYP": ("MASTER_DARK", "image type"),
                "NUMTYPE": (PRODUCT, "Product type"),
                "NUM-NCOM": (len(used), "number of combined frames"),
                "UUID": (product_uuid, "identifier of this product"),
                "NUM-BS": (bias_id, "master bias used"),
                "NUMRNAM": ("DarkRecipe", "recipe name"),
                "NUMDRP": ("megara_dark", "reduction software"),
                "NUMDRPV": (__version__, "reduction software version"),
                "QCFLAG": (result_qc.flag, "QC flag: GOOD, PARTIAL or BAD"),
                "QCMEDIAN": (_card(stats["median"]), f"[{UNITS[self.unit]}] median"),
                "QCMEAN": (_card(stats["mean"]), f"[{UNITS[self.unit]}] mean"),
                "QCRSIG": (_card(stats["robust_sigma"]), "robust sigma (1.4826 MAD)"),
                "QCDARK": (_card(stats["dark_current_adu_per_s"]), "[ADU/s] dark current"),
                "QCHOT": (stats["hot_pixels"], "hot pixels"),
                "QCNAN": (stats["nan_count"], "pixels with no value"),
                "HIERARCH MD METHOD": self.method,
                "HIERARCH MD THREADS": self.nthreads,
                "HIERARCH MD OPENMP": build_info()["openmp"],
            }
        )
        for key, value in sorted(self.method_params.items()):
            header[f"HIERARCH MD PARAM {key.upper()}"] = value
        if "dark_current_e_per_pixel_per_hour" in stats:
            header["QCDARKE"] = (
                _card(stats["dark_current_e_per_pixel_per_hour"]),
                "[e-/pixel/hour] dark current",
            )
        for line in self._history(dark_set, result_qc, used, overscan, bias_id):
            header.add_history(line)
        return fits.HDUList(
            [
                fits.PrimaryHDU(planes.data, header=header),
                fits.ImageHDU(planes.variance, name="VARIANCE"),
                fits.ImageHDU(planes.npix, name="MAP"),
            ]
        )

    def _history(self, dark_set, result_qc, used, overscan, bias_id) -> list[str]:
        shape = self.geometry.trimmed_shape
        lines = []
        if dark_set.layout == "raw":
            lines.append("Overscan correction: per-row mean of the overscan columns, cubic spline")
            lines += overscan[used[0]].history()
            lines.append(f"Trimmed to {shape[0]} x {shape[1]}")
        lines.append(f"Bias correction with {bias_id}")
        params = ", ".join(f"{k}={v}" for k, v in sorted(self.method_params.items()))
        lines.append(f"Combined {len(used)} images using '{self.method}'")
        if params:
            lines.append(f"Combination parameters: {params}")
        lines += [f"Image {_image_id(dark_set.frames[i])}" for i in used]
        for s in result_qc.frames:
            if not s.passed:
                lines.append(f"Left out {Path(s.path).name}: {s.reason}")
        lines.append(f"Unit {UNITS[self.unit]}; megara_dark {__version__}; QC {result_qc.flag}")
        return lines

    def _report(
        self,
        dark_set,
        result_qc,
        used,
        overscan,
        checksums,
        products,
        output_sums,
        product_uuid,
        log,
    ) -> dict:
        inputs = []
        for i, (f, exptime) in enumerate(zip(dark_set.frames, dark_set.exptimes, strict=True)):
            entry = {
                "path": str(f.path),
                "sha256": checksums[str(f.path)],
                "exptime": exptime,
                "date_obs": f.primary_header.get("DATE-OBS"),
                "uuid": f.primary_header.get("UUID"),
                "shape": list(f.shape),
                "dtype": f.raw_dtype.name,
                "bzero": f.bzero,
                "bscale": f.bscale,
                "used": i in used,
                "qc": {k: v for k, v in vars(result_qc.frames[i]).items() if k != "path"},
            }
            if overscan[i] is not None:
                entry["overscan"] = {  # by amplifier, as the schema says
                    fit.amplifier: {
                        "knots": fit.knots,
                        "coeffs": fit.coeffs,
                        "median": float(fit.median),
                    }
                    for fit in overscan[i].fits
                }
            inputs.append(entry)
        bias = dark_set.bias
        return {
            "schema": "megara_dark.report/1",
            "status": "ok",
            "created": utc_now(),
            "recipe": {
                "name": "DarkRecipe",
                "mode": MODE,
                "mode_key": MODE_KEY,
                "product": PRODUCT,
                "uuid": product_uuid,
            },
            "inputs": inputs,
            "bias": {
                "path": str(bias.path),
                "sha256": checksums[str(bias.path)],
                "uuid": bias.primary_header.get("UUID"),
                "shape": list(bias.shape),
                "dtype": bias.raw_dtype.name,
            },
            "layout": dark_set.layout,
            "method": {"name": self.method, "params": self.method_params},
            "unit": UNITS[self.unit],
            "exptime": dark_set.exptime,
            "threads": {"requested": self.nthreads, **_threads()},
            "steps": log.steps,
            "outputs": [{"path": str(p), "sha256": s} for p, s in output_sums.items()],
            "qc": result_qc.as_dict(),
            "software": software(),
            "warnings": list(log.warnings),
            "errors": list(log.errors),
        }


# ---- helpers --------------------------------------------------------------------


def _physical(image: FitsImage, raw: np.ndarray) -> np.ndarray:
    """The physical values of a (small) image: the raw array itself when unscaled."""
    if image.bscale == 1.0 and image.bzero == 0.0 and raw.dtype.kind == "f":
        return raw
    return raw.astype(np.float64) * image.bscale + image.bzero


def _failure_reason(exc: BaseException) -> str:
    """One line for the log and the failure report: why the run stopped."""
    if isinstance(exc, KeyboardInterrupt):
        return "interrupted (SIGINT or SIGTERM); no product was written"
    if isinstance(exc, MegaraDarkError):  # its message already names the file and problem
        return str(exc)
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


def _writable_header(image: FitsImage, log: ProcessingLog) -> fits.Header:
    """A copy of a frame's primary header without the cards astropy would refuse to
    write (a corrupt keyword), each left out with a warning."""
    cards = []
    for card in image.primary_header.copy().cards:
        try:
            card.verify("exception")
        except VerifyError as exc:
            lines = str(exc).strip().splitlines()[1:-1]  # between astropy's head and note
            reason = "; ".join(line.strip() for line in lines)
            log.warning(f"{image.path}: header card left out of the product: {reason}")
            continue
        cards.append(card)
    return fits.Header(cards)


def _amplifier_pieces(frame, geometry):
    """(trimmed rows, view of the frame's data) for each amplifier, raw or trimmed."""
    rows = (a.trimmed_rows for a in geometry.amplifiers)
    return zip(rows, detector.amplifier_views(frame, geometry), strict=True)


def _trimmed_pieces(raws, geometry):
    """For each amplifier: its trimmed rows and every frame's view of them."""
    views = [detector.amplifier_views(raw, geometry) for raw in raws]
    for k, amp in enumerate(geometry.amplifiers):
        yield amp.trimmed_rows, [v[k] for v in views]


def _gains(image: FitsImage, geometry):
    """e-/ADU of the two amplifiers: GAIN1/GAIN2 from the header, else the detector's."""
    h = image.primary_header
    amp1, amp2 = geometry.amplifiers
    return [float(h.get("GAIN1", amp1.gain)), float(h.get("GAIN2", amp2.gain))]


def _observation_order(image: FitsImage) -> tuple[str, str, str]:
    """Sort key of a frame: DATE-OBS, UUID, then the resolved path."""
    h = image.primary_header
    return (str(h.get("DATE-OBS", "")), str(h.get("UUID", "")), os.path.realpath(image.path))


def _image_id(image: FitsImage, prefix: bool = True) -> str:
    """megaradrp's identifier of an image: uuid:..., else dateobs:..., else file:..."""
    h = image.primary_header
    for key, tag in (("UUID", "uuid"), ("DATE-OBS", "dateobs")):
        if h.get(key) is not None:
            return f"{tag}:{h[key]}" if prefix else str(h[key])
    return f"file:{image.path.name}" if prefix else image.path.name


def _card(value: float):
    """A header value: NaN/inf cannot be written to FITS, so they become strings."""
    return float(value) if np.isfinite(value) else str(value)


def _threads() -> dict:
    info = build_info()
    return {
        "openmp": info["openmp"],
        "default": info["default_threads"],
        "omp_num_threads_env": os.environ.get("OMP_NUM_THREADS"),
    }
