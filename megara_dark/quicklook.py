"""The quick-look picture of a master dark and a summary of its headers and QC.

The PNG (``PNG_PIXELS``, 1200 x 450) has three panels: the master dark with a
zscale stretch (astropy.visualization), binned by an integer factor to about
``MAX_SHOWN`` pixels a side (a mean over good pixels); the histogram of its
values; and the median of each input frame, from the JSON report beside the
product (same name, ``.json``) when it belongs to the product (same UUID).  Drawn with matplotlib's
Agg canvas, without pyplot (no global state, no display needed).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from astropy.io import fits

from .io import StagedOutputs, check_not_an_input, inspect_fits, writing

KEY_HEADERS = (
    "NUMTYPE",
    "IMAGETYP",
    "BUNIT",
    "EXPTIME",
    "NUM-NCOM",
    "UUID",
    "NUM-BS",
    "DATE-OBS",
    "NUMDRPV",
    "QCFLAG",
    "QCMEDIAN",
    "QCMEAN",
    "QCRSIG",
    "QCDARK",
    "QCDARKE",
    "QCHOT",
    "QCNAN",
)
PNG_SIZE_INCHES, PNG_DPI = (12.0, 4.5), 100
PNG_PIXELS = (1200, 450)  # width, height: PNG_SIZE_INCHES x PNG_DPI
MAX_SHOWN = 1024  # about the largest side of the image panel's array (binned; < 2x this)
HIST_BINS = 200
PERCENTILE_SAMPLE = 1 << 20  # values the histogram's range is taken from


def describe_product(path: str | Path) -> dict:
    """Key headers, shape, extensions and QC of a master dark (and its report).

    Returns a dict with ``path``, ``shape`` [rows, columns], ``extensions``,
    ``headers`` (the ``KEY_HEADERS`` present), ``report`` (the path of this
    product's JSON report beside it, or None), ``report_problem`` (why a report
    beside it was not used, or None) and ``qc`` (the report's QC, or None).
    Raises InputFileError or ValidationError naming the file.
    """
    image = inspect_fits(path)
    with fits.open(image.path) as hdul:
        extensions = [h.name for i, h in enumerate(hdul) if i != image.hdu]
    report, problem = report_beside(image.path, image.header.get("UUID"))
    return {
        "path": str(image.path),
        "shape": list(image.shape),
        "extensions": extensions,
        "headers": {k: image.header[k] for k in KEY_HEADERS if k in image.header},
        "report": None if report is None else str(image.path.with_suffix(".json")),
        "report_problem": problem,
        "qc": None if report is None else report.get("qc"),
    }


def report_beside(path: Path, product_uuid) -> tuple[dict | None, str | None]:
    """The JSON report next to a product (same name, ``.json``) if it is this
    product's (same UUID); else None and why (None too when there is no file)."""
    candidate = path.with_suffix(".json")
    if not candidate.is_file():
        return None, None
    try:
        report = json.loads(candidate.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        return None, f"{candidate}: not a readable report ({exc}); ignored"
    uuid = report.get("recipe", {}).get("uuid") if isinstance(report, dict) else None
    if product_uuid is None or uuid != product_uuid:
        return None, f"{candidate}: the report of another product (UUID differs); ignored"
    return report, None


def binned(data: np.ndarray, factor: int) -> np.ndarray:
    """Mean of the finite values in ``factor`` x ``factor`` blocks (NaN where none).

    Rows and columns beyond a multiple of ``factor`` are dropped.
    """
    if factor == 1:
        return data
    ny, nx = (n // factor for n in data.shape)
    blocks = data[: ny * factor, : nx * factor].reshape(ny, factor, nx, factor)
    good = np.isfinite(blocks)
    total = np.where(good, blocks, 0).sum(axis=(1, 3), dtype=np.float64)
    count = good.sum(axis=(1, 3))
    with np.errstate(invalid="ignore", divide="ignore"):
        return (total / count).astype(np.float32)


def draw_quicklook(product: str | Path, png: str | Path | None = None, overwrite=False) -> Path:
    """Draw the quick-look PNG of a master dark; returns its path.

    Parameters
    ----------
    product : path
        The master dark FITS (its primary image is drawn).
    png : path, optional
        Where to write (default: the product's name with ``.png``).
    overwrite : bool
        Replace an existing PNG (never the product).

    The PNG is written to a temporary file and renamed into place.
    """
    from astropy.visualization import ImageNormalize, ZScaleInterval
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    image = inspect_fits(product)
    png = Path(png) if png is not None else image.path.with_suffix(".png")
    check_not_an_input(png, [image.path])
    StagedOutputs(overwrite).check_target(png)
    with fits.open(image.path) as hdul:
        data = np.asarray(hdul[image.hdu].data, dtype=np.float32)
    unit = image.header.get("BUNIT", "")
    report, _ = report_beside(image.path, image.header.get("UUID"))
    finite = data[np.isfinite(data)]

    fig = Figure(figsize=PNG_SIZE_INCHES, dpi=PNG_DPI)
    FigureCanvasAgg(fig)
    ax_image, ax_hist, ax_frames = fig.subplots(1, 3, gridspec_kw={"width_ratios": [1.1, 1, 1]})

    factor = max(1, max(data.shape) // MAX_SHOWN)
    shown = binned(data, factor)
    if np.isfinite(shown).any():
        norm = ImageNormalize(shown, interval=ZScaleInterval())
        mappable = ax_image.imshow(shown, origin="lower", cmap="gray", norm=norm)
        fig.colorbar(mappable, ax=ax_image, label=unit)
    ax_image.set_title(f"{image.path.name} (QC {image.header.get('QCFLAG', '?')})")
    suffix = f" / {factor}" if factor > 1 else ""
    ax_image.set_xlabel(f"column{suffix}")
    ax_image.set_ylabel(f"row{suffix}")

    if finite.size:
        # A plot range: percentiles of a systematic subsample (the full sort takes ~1 s).
        low, high = np.percentile(finite[:: max(1, finite.size // PERCENTILE_SAMPLE)], [0.1, 99.9])
        if high <= low:  # a constant image
            low, high = low - 0.5, high + 0.5
        ax_hist.hist(finite, bins=HIST_BINS, range=(low, high), color="0.3")
        ax_hist.set_yscale("log")
    else:
        ax_hist.text(0.5, 0.5, "no finite value", ha="center", va="center")
    ax_hist.set_xlabel(f"master dark [{unit}]")
    ax_hist.set_ylabel("pixels")
    ax_hist.set_title("histogram (0.1-99.9 percentile)")

    frames = (report or {}).get("qc", {}).get("frames", [])
    if frames:
        index = np.arange(1, len(frames) + 1)
        medians = np.array([np.nan if f["median"] is None else f["median"] for f in frames])
        colours = ["tab:blue" if f["passed"] else "tab:red" for f in frames]
        ax_frames.scatter(index, medians, c=colours)
        ax_frames.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax_frames.set_xlabel("input frame (red: left out)")
        ax_frames.set_ylabel("median above bias [ADU]")
    else:
        ax_frames.text(0.5, 0.5, "no report of this product beside it", ha="center", va="center")
    ax_frames.set_title("per-frame medians")
    fig.tight_layout()

    with StagedOutputs(overwrite) as staged:
        tmp = staged.stage(png)
        with writing(png):
            fig.savefig(tmp, format="png", dpi=PNG_DPI)
        staged.commit()
    return png
