"""DarkRecipe end to end: the master dark product, its numbers and how it is written.

Numbers are checked against an independent float64 reference (conftest's
``reference_master_dark``) and against the simulator's truth; every run checks that the
inputs stay byte-identical and that no temp file is left (``run_recipe``).
"""

from __future__ import annotations

import errno
import os
import re
import uuid

import numpy as np
import pytest
from astropy.io import fits
from conftest import (
    RECIPE_GEOMETRY,
    esc,
    file_sha256,
    physical_values,
    reference_corrected,
    reference_master_dark,
    run_recipe,
    write_variant,
)

from megara_dark import recipe as recipe_module
from megara_dark.detector import make_geometry
from megara_dark.errors import OutputError
from megara_dark.recipe import DarkRecipe, DarkRecipeInput, DarkRecipeResult
from megara_dark.simulate import simulate_dark_set
from megara_dark.variance import median_efficiency

TOLERANCE = 1e-4  # ADU: the recipe's float32 overscan means against the float64 reference
MEDIUM = make_geometry(200, 256, overscan=50, middle_rows=20)  # trimmed 400 x 256


def planes(path) -> dict[str, np.ndarray]:
    with fits.open(path) as hdul:
        return {hdu.name: hdu.data.copy() for hdu in hdul}


def history(header) -> list[str]:
    return [str(line) for line in header["HISTORY"]]


@pytest.fixture
def product(dark_set, tmp_path):
    """The recipe's run on the five-frame set (counts), and the product's HDUs."""
    result = run_recipe(dark_set.frames, dark_set.master_bias, tmp_path / "out")
    with fits.open(result.master_dark) as hdul:
        hdus = fits.HDUList([hdu.copy() for hdu in hdul])
    return result, hdus


# ---- the product --------------------------------------------------------------------------------


def test_api_types(product):
    result, _ = product
    assert DarkRecipe.RecipeInput is DarkRecipeInput
    assert DarkRecipe.RecipeResult is DarkRecipeResult
    assert (DarkRecipe.mode, DarkRecipe.mode_key, DarkRecipe.product) == (
        "MegaraDarkImage",
        "MEGARA_DARK_IMAGE",
        "MasterDark",
    )
    assert isinstance(result, DarkRecipeResult)
    assert [p.name for p in (result.master_dark, result.log, result.report)] == [
        "master_dark.fits",
        "master_dark.log",
        "master_dark.json",
    ]


def test_hdu_layout_as_megaradrp(product):
    _, hdus = product
    assert [hdu.name for hdu in hdus] == ["PRIMARY", "VARIANCE", "MAP"]
    assert [hdu.header["BITPIX"] for hdu in hdus] == [-32, -32, 16]
    assert [hdu.data.shape for hdu in hdus] == [RECIPE_GEOMETRY.trimmed_shape] * 3
    assert [hdu.data.dtype.str[1:] for hdu in hdus] == ["f4", "f4", "i2"]
    assert "BZERO" not in hdus["MAP"].header and "BSCALE" not in hdus["MAP"].header


def test_header_keywords(product, dark_set):
    result, hdus = product
    header = hdus[0].header
    first = fits.getheader(dark_set.frames[0])
    bias_uuid = fits.getval(dark_set.master_bias, "UUID")
    input_uuids = {fits.getval(p, "UUID") for p in dark_set.frames}
    assert header["NUMTYPE"] == "MasterDark"
    assert header["NUM-NCOM"] == 5
    assert header["NUM-BS"] == bias_uuid
    assert header["NUMRNAM"] == "DarkRecipe"
    assert header["BUNIT"] == "ADU"
    assert header["EXPTIME"] == 3600.0
    assert uuid.UUID(header["UUID"]).version == 4
    assert header["UUID"] not in input_uuids | {bias_uuid}
    assert header["UUID"] == result.report_data["recipe"]["uuid"]
    for key in ("INSTRUME", "OBSMODE", "DATE-OBS", "INSCONF", "DETECTOR", "READMODE"):
        assert header[key] == first[key], key
    stats = result.qc.stats
    assert header["QCFLAG"] == result.qc.flag == "GOOD"
    assert header["QCMEDIAN"] == pytest.approx(stats["median"], rel=1e-15)
    assert header["QCMEAN"] == pytest.approx(stats["mean"], rel=1e-15)
    assert header["QCRSIG"] == pytest.approx(stats["robust_sigma"], rel=1e-15)
    assert header["QCDARK"] == pytest.approx(stats["dark_current_adu_per_s"], rel=1e-15)
    assert header["QCDARKE"] == pytest.approx(stats["dark_current_e_per_pixel_per_hour"])
    assert (header["QCHOT"], header["QCNAN"]) == (stats["hot_pixels"], 0)


def test_header_history(product, dark_set):
    _, hdus = product
    lines = history(hdus[0].header)
    images = [line for line in lines if line.startswith("Image ")]
    assert images == [f"Image uuid:{fits.getval(p, 'UUID')}" for p in dark_set.frames]
    bias_uuid = fits.getval(dark_set.master_bias, "UUID")
    for expected in (
        f"Bias correction with {bias_uuid}",
        "Combined 5 images using 'median'",
        "Overscan1 correction is spline3",
        "Overscan2 correction is spline3",
        "Trimmed to 64 x 64",
    ):
        assert expected in lines, expected
    assert any(
        re.fullmatch(r"overscan1 knots \[0\.0, 0\.0, 0\.0, 0\.0, 19\.0, 31\.0.*", s) for s in lines
    )


def test_history_names_frames_by_date_without_uuid(dark_set, tmp_path):
    frames = [write_variant(p, tmp_path / p.name, remove=["UUID"]) for p in dark_set.frames[:3]]
    result = run_recipe(frames, dark_set.master_bias, tmp_path / "out")
    lines = history(fits.getheader(result.master_dark))
    assert [line for line in lines if line.startswith("Image ")] == [
        f"Image dateobs:{fits.getval(p, 'DATE-OBS')}" for p in frames
    ]


def test_bias_without_uuid_is_named_by_its_date(dark_set, tmp_path):
    """As megaradrp: NUM-BS is the bias UUID, else its DATE-OBS (without a prefix)."""
    bias = write_variant(dark_set.master_bias, tmp_path / "bias.fits", remove=["UUID"])
    result = run_recipe(dark_set.frames, bias, tmp_path / "out")
    header = fits.getheader(result.master_dark)
    date = fits.getval(bias, "DATE-OBS")
    assert header["NUM-BS"] == date
    assert f"Bias correction with {date}" in history(header)


def test_product_checksums_are_valid(product):
    result, _ = product
    with fits.open(result.master_dark, checksum=True) as hdul:  # warnings are errors here
        assert "CHECKSUM" in hdul[0].header and "DATASUM" in hdul[0].header
        _ = [hdu.data for hdu in hdul]


def test_raw_structure_keys_are_not_carried(product):
    _, hdus = product
    assert "BZERO" not in hdus[0].header and "BSCALE" not in hdus[0].header


# ---- the numbers --------------------------------------------------------------------------------


def test_planes_match_the_float64_reference(product, dark_set):
    _, hdus = product
    corrected = reference_corrected(dark_set.frames, dark_set.master_bias)
    np.testing.assert_allclose(hdus[0].data, np.median(corrected, axis=0), rtol=0, atol=TOLERANCE)
    expected_variance = median_efficiency(5) * corrected.var(axis=0, ddof=1) / 5
    np.testing.assert_allclose(hdus["VARIANCE"].data, expected_variance, rtol=1e-6)
    assert np.all(hdus["MAP"].data == 5)


def test_rate_unit_divides_each_frame_by_its_exposure_time(dark_set, tmp_path):
    counts = run_recipe(dark_set.frames, dark_set.master_bias, tmp_path / "counts")
    rate = run_recipe(dark_set.frames, dark_set.master_bias, tmp_path / "rate", unit="rate")
    header = fits.getheader(rate.master_dark)
    assert (header["BUNIT"], header["EXPTIME"]) == ("ADU/s", 3600.0)
    assert rate.report_data["unit"] == "ADU/s" and rate.qc.stats["unit"] == "ADU/s"
    exptimes = [3600.0] * 5
    reference = reference_master_dark(dark_set.frames, dark_set.master_bias, exptimes=exptimes)
    got = planes(rate.master_dark)
    np.testing.assert_allclose(got["PRIMARY"], reference, rtol=0, atol=TOLERANCE / 3600)
    np.testing.assert_allclose(
        got["PRIMARY"] * 3600.0, planes(counts.master_dark)["PRIMARY"], rtol=1e-6, atol=1e-5
    )
    assert rate.qc.stats["dark_current_adu_per_s"] == pytest.approx(
        counts.qc.stats["dark_current_adu_per_s"], rel=1e-6
    )


def test_rate_unit_normalises_mixed_exposure_times(dark_set, tmp_path):
    """Frame 0 claims 1800 s: in rate mode it is divided by 1800 s, and the report says so."""
    frames = [
        write_variant(dark_set.frames[0], tmp_path / "half.fits", header={"EXPTIME": 1800.0}),
        *dark_set.frames[1:],
    ]
    exptimes = [1800.0] + [3600.0] * 4
    result = run_recipe(frames, dark_set.master_bias, tmp_path / "out", unit="rate")
    reference = reference_master_dark(frames, dark_set.master_bias, exptimes=exptimes)
    np.testing.assert_allclose(
        planes(result.master_dark)["PRIMARY"], reference, rtol=0, atol=TOLERANCE / 1800
    )
    same = reference_master_dark(frames, dark_set.master_bias, exptimes=[3600.0] * 5)
    assert np.max(np.abs(reference - same)) > 100 * TOLERANCE / 1800  # the division matters
    report = result.report_data
    assert [entry["exptime"] for entry in report["inputs"]] == exptimes
    listing = "; ".join(f"{p}: {e} s" for p, e in zip(frames, exptimes, strict=True))
    warning = f"exposure times differ, each frame is divided by its own: {listing}"
    assert report["warnings"] == [warning]
    assert warning in result.log.read_text()


def test_agreement_with_the_simulator_truth(tmp_path):
    """On a larger set: the master dark is the simulated dark signal, within its variance."""
    sim = simulate_dark_set(tmp_path / "raw", nframes=7, seed=7, geometry=MEDIUM, threads=1)
    result = run_recipe(sim.frames, sim.master_bias, tmp_path / "out", geometry=MEDIUM)
    got = planes(result.master_dark)
    truth = sim.expected_master_dark()
    quiet = np.ones(truth.shape, bool)  # no hot pixel, no cosmic ray in any frame
    quiet[sim.hot_pixels.rows, sim.hot_pixels.cols] = False
    for rays in sim.cosmic_rays:
        quiet[rays.rows, rays.cols] = False
    residual = (got["PRIMARY"] - truth)[quiet]
    # The median of skewed Poisson data sits ~0.01 ADU below the mean (simulate's docstring).
    assert abs(residual.mean() + 0.01) < 0.02
    # VARIANCE is the variance of the median: on average, that of the residuals.
    assert np.var(residual) / np.mean(got["VARIANCE"][quiet]) == pytest.approx(1.0, abs=0.05)
    hot = got["PRIMARY"][sim.hot_pixels.rows, sim.hot_pixels.cols]
    expected_hot = truth[sim.hot_pixels.rows, sim.hot_pixels.cols]
    assert np.all(np.abs(hot - expected_hot) < 6 * np.sqrt(expected_hot + 10))
    assert result.qc.stats["hot_pixels"] == len(sim.hot_pixels.rows)
    electrons = sim.dark_electrons / np.mean([a.gain for a in MEDIUM.amplifiers])
    assert result.qc.stats["median"] == pytest.approx(electrons, abs=0.1)


def test_trimmed_frames_are_accepted(dark_set, tmp_path):
    """Frames already overscan-corrected and trimmed (float32) give the raw set's master."""
    corrected = reference_corrected(dark_set.frames, dark_set.master_bias)
    bias = physical_values(dark_set.master_bias)
    frames = []
    for i, source in enumerate(dark_set.frames):
        frames.append(tmp_path / f"trimmed_{i}.fits")
        header = fits.getheader(source)
        fits.PrimaryHDU((corrected[i] + bias).astype(np.float32), header=header).writeto(frames[-1])
    raw = run_recipe(dark_set.frames, dark_set.master_bias, tmp_path / "raw")
    result = run_recipe(frames, dark_set.master_bias, tmp_path / "trimmed")
    assert result.report_data["layout"] == "trimmed"
    assert not any(
        line.startswith("Overscan") for line in history(fits.getheader(result.master_dark))
    )
    np.testing.assert_allclose(
        planes(result.master_dark)["PRIMARY"],
        planes(raw.master_dark)["PRIMARY"],
        atol=2 * TOLERANCE,
    )


def test_nan_and_inf_pixels_are_bad(dark_set, tmp_path):
    """Float frames: NaN/+-inf data pixels are left out and counted in MAP, never propagated."""
    amp1 = RECIPE_GEOMETRY.amplifiers[0]
    spots = [(3, 4), (10, 20), (10, 21)]
    values = [np.nan, np.inf, -np.inf]
    frames = []
    for i, source in enumerate(dark_set.frames):

        def spoil(data, i=i):
            if i < 3:
                row, col = spots[i]
                data[amp1.rows.start + row, amp1.data_cols.start + col] = values[i]
            return data.astype(np.float32)

        frames.append(write_variant(source, tmp_path / f"float_{i}.fits", data=spoil))
    result = run_recipe(frames, dark_set.master_bias, tmp_path / "out")
    got = planes(result.master_dark)
    assert np.all(np.isfinite(got["PRIMARY"])) and np.all(np.isfinite(got["VARIANCE"]))
    assert sorted(map(tuple, np.argwhere(got["MAP"] == 4))) == spots
    assert np.count_nonzero(got["MAP"] == 5) == got["MAP"].size - 3
    spoiled = reference_corrected(frames, dark_set.master_bias)
    spoiled[~np.isfinite(spoiled)] = np.nan
    np.testing.assert_allclose(
        got["PRIMARY"], np.nanmedian(spoiled, axis=0), rtol=0, atol=TOLERANCE
    )


def test_blank_in_the_overscan_is_not_used(dark_set, tmp_path):
    amp2 = RECIPE_GEOMETRY.amplifiers[1]
    path = tmp_path / "blank.fits"
    with fits.open(dark_set.frames[1], do_not_scale_image_data=True) as hdul:
        stored, header = hdul[0].data.copy(), hdul[0].header.copy()
    stored[amp2.rows.start + 3, amp2.overscan_cols.start + 1] = -32768
    header["BLANK"] = -32768
    fits.PrimaryHDU(stored, header=header).writeto(path)
    frames = [dark_set.frames[0], path, *dark_set.frames[2:]]
    result = run_recipe(frames, dark_set.master_bias, tmp_path / "out")
    reference = reference_master_dark(frames, dark_set.master_bias)  # BLANK as NaN: nanmean
    np.testing.assert_allclose(planes(result.master_dark)["PRIMARY"], reference, atol=TOLERANCE)


def test_results_do_not_depend_on_threads_order_or_reruns(dark_set, tmp_path):
    runs = [
        run_recipe(dark_set.frames, dark_set.master_bias, tmp_path / "a", nthreads=1),
        run_recipe(dark_set.frames, dark_set.master_bias, tmp_path / "b", nthreads=2),
        run_recipe(dark_set.frames[::-1], dark_set.master_bias, tmp_path / "c"),
        run_recipe(dark_set.frames, dark_set.master_bias, tmp_path / "d"),
    ]
    first = planes(runs[0].master_dark)
    for result in runs[1:]:
        for name, plane in planes(result.master_dark).items():
            assert plane.tobytes() == first[name].tobytes(), name
    assert len({fits.getval(r.master_dark, "UUID") for r in runs}) == 4


# ---- writing ------------------------------------------------------------------------------------


def test_no_temp_file_is_left_and_only_the_products_are_written(product, tmp_path):
    result, _ = product
    assert sorted(os.listdir(tmp_path / "out")) == [
        "master_dark.fits",
        "master_dark.json",
        "master_dark.log",
    ]
    assert result.master_dark.parent == tmp_path / "out"


def test_existing_products_are_refused_and_left_intact(dark_set, tmp_path):
    first = run_recipe(dark_set.frames, dark_set.master_bias, tmp_path / "out")
    paths = [first.master_dark, first.log, first.report]
    before = {p: file_sha256(p) for p in paths}
    with pytest.raises(
        OutputError,
        match=f"{esc(first.master_dark)}: exists already \\(replace it with --overwrite",
    ):
        run_recipe(dark_set.frames, dark_set.master_bias, tmp_path / "out")
    assert {p: file_sha256(p) for p in paths} == before
    again = run_recipe(dark_set.frames, dark_set.master_bias, tmp_path / "out", overwrite=True)
    assert fits.getval(again.master_dark, "UUID") != fits.getval(dark_set.frames[0], "UUID")
    assert file_sha256(again.master_dark) != before[first.master_dark]


def test_an_existing_log_alone_is_refused_before_computing(dark_set, tmp_path, monkeypatch):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "master_dark.log").write_text("an old log")

    def no_work(*args, **kwargs):
        raise AssertionError("validation started")

    monkeypatch.setattr(DarkRecipe, "_validate", no_work)
    with pytest.raises(OutputError, match=r"master_dark\.log: exists already"):
        run_recipe(dark_set.frames, dark_set.master_bias, tmp_path / "out")
    assert (tmp_path / "out" / "master_dark.log").read_text() == "an old log"


def test_an_output_equal_to_an_input_is_always_refused(dark_set, tmp_path):
    folder, frame = dark_set.frames[0].parent, dark_set.frames[0]
    with pytest.raises(
        OutputError,
        match=f"{esc(frame)}: would overwrite the input {esc(frame)}",
    ):
        run_recipe(dark_set.frames, dark_set.master_bias, folder, name=frame.stem, overwrite=True)
    out = tmp_path / "out"
    out.mkdir()
    (out / "master_dark.fits").symlink_to(dark_set.master_bias)
    with pytest.raises(
        OutputError,
        match=r"master_dark\.fits: would overwrite the input .*master_bias\.fits; choose another",
    ):
        run_recipe(dark_set.frames, dark_set.master_bias, out, overwrite=True)
    assert (out / "master_dark.fits").is_symlink()


def test_a_failed_write_leaves_old_products_intact(dark_set, tmp_path, monkeypatch):
    old = run_recipe(dark_set.frames, dark_set.master_bias, tmp_path / "out")
    paths = [old.master_dark, old.log, old.report]
    before = {p: file_sha256(p) for p in paths}

    def disk_full(path, report):
        path.write_text('{"partial": ')
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(recipe_module, "write_json", disk_full)
    with pytest.raises(
        OutputError,
        match=f"{esc(old.report)}: cannot be written: No space left on device",
    ):
        run_recipe(dark_set.frames, dark_set.master_bias, tmp_path / "out", overwrite=True)
    assert {p: file_sha256(p) for p in paths} == before
