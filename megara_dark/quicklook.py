"""The quick-look picture of a master dark and a summary of its headers.

The PNG has three panels: the master dark with a zscale stretch
(astropy.visualization), the histogram of its values, and the median of each
input frame (from the JSON report beside the product, when there is one).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from astropy.io import fits

from .io import StagedOutputs, writing

KEY_HEADERS = (
    "NUMTYPE",
    "BUNIT",
    "EXPTIME",
    "NUM-NCOM",
    "UUID",
    "NUM-BS",
    "DATE-OBS",
    "QCFLAG",
    "QCMEDIAN",
    "QCMEAN",
    "QCRSIG",
    "QCDARK",
    "QCDARKE",
    "QCHOT",
    "QCNAN",
)
PNG_SIZE_INCHES, PNG_DPI = (12.0, 4.5), 100  # 1200 x 450 pixels


def describe_product(path: str | Path) -> dict:
    """Key headers of a master dark and its report (when beside it)."""
    path = Path(path)
    with fits.open(path) as hdul:
        header = hdul[0].header
        headers = {k: header[k] for k in KEY_HEADERS if k in header}
        shape = hdul[0].shape
        extensions = [h.name for h in hdul[1:]]
    report = _report_beside(path)
    return {
        "path": str(path),
        "shape": list(shape),
        "extensions": extensions,
        "headers": headers,
        "qc": report.get("qc") if report else None,
    }


def _report_beside(path: Path) -> dict | None:
    candidate = path.with_suffix(".json")
    if candidate.is_file():
        return json.loads(candidate.read_text())
    return None


def draw_quicklook(product: str | Path, png: str | Path | None = None, overwrite=False) -> Path:
    """Draw the quick-look PNG of a master dark (written atomically); returns its path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from astropy.visualization import ImageNormalize, ZScaleInterval

    product = Path(product)
    png = Path(png) if png is not None else product.with_suffix(".png")
    with fits.open(product) as hdul:
        data = np.asarray(hdul[0].data, dtype=np.float32)
        unit = hdul[0].header.get("BUNIT", "")
        flag = hdul[0].header.get("QCFLAG", "?")
    report = _report_beside(product)
    finite = data[np.isfinite(data)]

    fig, (ax_image, ax_hist, ax_frames) = plt.subplots(
        1, 3, figsize=PNG_SIZE_INCHES, dpi=PNG_DPI, gridspec_kw={"width_ratios": [1.1, 1, 1]}
    )
    norm = ImageNormalize(data[::4, ::4], interval=ZScaleInterval())
    shown = ax_image.imshow(data[::4, ::4], origin="lower", cmap="gray", norm=norm)
    fig.colorbar(shown, ax=ax_image, label=unit)
    ax_image.set_title(f"{product.name} (QC {flag})")
    ax_image.set_xlabel("column / 4")
    ax_image.set_ylabel("row / 4")
    low, high = np.percentile(finite, [0.1, 99.9]) if finite.size else (0.0, 1.0)
    ax_hist.hist(finite, bins=200, range=(low, high), color="0.3")
    ax_hist.set_yscale("log")
    ax_hist.set_xlabel(f"master dark [{unit}]")
    ax_hist.set_ylabel("pixels")
    ax_hist.set_title("histogram (0.1-99.9 percentile)")
    frames = (report or {}).get("qc", {}).get("frames", [])
    if frames:
        medians = [f["median"] for f in frames]
        colours = ["tab:blue" if f["passed"] else "tab:red" for f in frames]
        ax_frames.scatter(range(1, len(medians) + 1), medians, c=colours)
        ax_frames.set_xlabel("input frame (red: left out)")
        ax_frames.set_ylabel("median above bias [ADU]")
    else:
        ax_frames.text(0.5, 0.5, "no report beside the product", ha="center", va="center")
    ax_frames.set_title("per-frame medians")
    fig.tight_layout()

    with StagedOutputs(overwrite) as staged:
        tmp = staged.stage(png)
        with writing(png):
            fig.savefig(tmp, format="png")
        staged.commit()
    plt.close(fig)
    return png
