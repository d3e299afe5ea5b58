"""Header validation of a dark set and its master bias, through DarkRecipe's Python API.

Every test runs the recipe (``run_recipe``: inputs byte-identical afterwards, no temp
file left) and asserts the message: the file and the problem.
"""

from __future__ import annotations

import os
import re
import shutil
import uuid

import numpy as np
import pytest
from astropy.io import fits
from conftest import RECIPE_GEOMETRY, esc, replace_card, run_recipe, write_variant

from megara_dark import recipe as recipe_module
from megara_dark.errors import ValidationError


def variant(dark_set, name="variant.fits", **kwargs):
    """A copy of the set's first frame with edits (see write_variant), in the set's folder."""
    return write_variant(dark_set.frames[0], dark_set.frames[0].parent / name, **kwargs)


def set_with(dark_set, **kwargs) -> list:
    """The set with its first frame replaced by an edited copy."""
    return [variant(dark_set, **kwargs), *dark_set.frames[1:]]


def raises(match):
    return pytest.raises(ValidationError, match=match)


# ---- the set ------------------------------------------------------------------------------------


def test_no_frames(dark_set, tmp_path):
    with raises("no input frames: a dark set needs at least one exposure"):
        run_recipe([], dark_set.master_bias, tmp_path / "out")


def test_one_frame_is_refused_unless_allowed(dark_set, tmp_path):
    one = dark_set.frames[:1]
    with raises(f"{esc(one[0])}: only one dark frame; .*allow it explicitly"):
        run_recipe(one, dark_set.master_bias, tmp_path / "out")
    assert not (tmp_path / "out" / "master_dark.fits").exists()

    result = run_recipe(one, dark_set.master_bias, tmp_path / "out", allow_single=True)
    assert result.qc.flag == "PARTIAL"
    assert "only 1 frames combined (minimum 3)" in result.qc.reasons
    with fits.open(result.master_dark) as hdul:
        assert hdul[0].header["NUM-NCOM"] == 1
        assert np.all(hdul["MAP"].data == 1)


@pytest.mark.parametrize("value", ["EMIR", "OSIRIS", None])
def test_wrong_instrument(dark_set, tmp_path, value):
    edit = {"remove": ["INSTRUME"]} if value is None else {"header": {"INSTRUME": value}}
    frames = set_with(dark_set, **edit)
    problem = "INSTRUME is missing" if value is None else f"INSTRUME is '{value}', not 'MEGARA'"
    with raises(f"{esc(frames[0])}: {problem}"):
        run_recipe(frames, dark_set.master_bias, tmp_path / "out")


@pytest.mark.parametrize(
    "obsmode", ["MegaraBiasImage", "MegaraFiberFlatImage", "MegaraArcCalibration", "MegaraLcbImage"]
)
def test_wrong_kind_from_obsmode(dark_set, tmp_path, obsmode):
    frames = set_with(dark_set, header={"OBSMODE": obsmode})
    with raises(f"{esc(frames[0])}: OBSMODE is '{obsmode}', not a dark \\('MegaraDarkImage'\\)"):
        run_recipe(frames, dark_set.master_bias, tmp_path / "out")


@pytest.mark.parametrize("imagetyp", ["IMAGE_BIAS", "IMAGE_FLAT", "IMAGE_ARC", "OBJECT"])
def test_wrong_kind_from_imagetyp(dark_set, tmp_path, imagetyp):
    frames = set_with(dark_set, header={"IMAGETYP": imagetyp})
    with raises(f"{esc(frames[0])}: IMAGETYP is '{imagetyp}', not a dark"):
        run_recipe(frames, dark_set.master_bias, tmp_path / "out")


def test_imagetyp_alone_says_dark(dark_set, tmp_path):
    """Real frames may lack IMAGETYP (OBSMODE suffices) or OBSMODE; one of them is needed."""
    no_obsmode = set_with(dark_set, remove=["OBSMODE"])
    result = run_recipe(no_obsmode, dark_set.master_bias, tmp_path / "ok")
    assert result.qc.flag == "GOOD"
    neither = [variant(dark_set, "neither.fits", remove=["OBSMODE", "IMAGETYP"])]
    with raises(f"{esc(neither[0])}: neither OBSMODE nor IMAGETYP says this is a dark exposure"):
        run_recipe([*neither, *dark_set.frames[1:]], dark_set.master_bias, tmp_path / "out")


def test_a_processed_product_is_not_a_raw_dark(dark_set, tmp_path):
    frames = set_with(dark_set, header={"NUMTYPE": "MasterDark"})
    with raises(f"{esc(frames[0])}: is a processed product \\(NUMTYPE='MasterDark'\\), not a dark"):
        run_recipe(frames, dark_set.master_bias, tmp_path / "out")


# ---- EXPTIME ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("edit", "problem"),
    [
        ({"remove": ["EXPTIME"]}, "EXPTIME is missing"),
        ({"header": {"EXPTIME": 0.0}}, "EXPTIME must be a positive number of seconds, got 0.0"),
        ({"header": {"EXPTIME": -30.0}}, "EXPTIME must be a positive number of seconds, got -30.0"),
        ({"header": {"EXPTIME": "3600"}}, "EXPTIME is not a number: '3600'"),
        ({"header": {"EXPTIME": True}}, "EXPTIME is not a number: True"),
    ],
    ids=["missing", "zero", "negative", "string", "boolean"],
)
def test_bad_exptime(dark_set, tmp_path, edit, problem):
    frames = set_with(dark_set, **edit)
    with raises(f"{esc(frames[0])}: {re.escape(problem)}"):
        run_recipe(frames, dark_set.master_bias, tmp_path / "out")


@pytest.mark.parametrize("text", ["NaN", "inf", "-nan"])
def test_exptime_not_a_finite_number(dark_set, tmp_path, text):
    frames = set_with(dark_set)
    replace_card(frames[0], "EXPTIME", text)
    with raises(f"{esc(frames[0])}: EXPTIME is not a number: '{text}'"):
        run_recipe(frames, dark_set.master_bias, tmp_path / "out")


@pytest.mark.parametrize(("key", "text"), [("GAIN1", "'MEGARA'"), ("GAIN2", "0"), ("GAIN1", "NaN")])
def test_gain_not_a_positive_number(dark_set, tmp_path, key, text):
    """The QC converts ADU to electrons with GAIN1/GAIN2 where a frame has them."""
    frames = set_with(dark_set)
    replace_card(frames[0], key, text)
    shown = {"'MEGARA'": "'MEGARA'", "0": "0", "NaN": "'NaN'"}[text]
    with raises(f"{esc(frames[0])}: {key} must be a positive number of e-/ADU, got {esc(shown)}"):
        run_recipe(frames, dark_set.master_bias, tmp_path / "out")


def test_exptime_duplicated(dark_set, tmp_path):
    path = dark_set.frames[0].parent / "twice.fits"
    with fits.open(dark_set.frames[0]) as hdul:
        header = hdul[0].header.copy()
        header.append(("EXPTIME", 3600.0, "again"), bottom=True)
        fits.PrimaryHDU(hdul[0].data, header=header).writeto(path)
    with raises(f"{esc(path)}: EXPTIME appears 2 times in the header"):
        run_recipe([path, *dark_set.frames[1:]], dark_set.master_bias, tmp_path / "out")


def test_mixed_exptime_is_an_error_in_counts_mode(dark_set, tmp_path):
    frames = set_with(dark_set, header={"EXPTIME": 1800.0})
    listing = "; ".join(
        f"{esc(p)}: {e} s" for p, e in zip(frames, [1800.0] + [3600.0] * 4, strict=True)
    )
    with raises(f"exposure times differ by more than 1% \\(use the rate unit .*\\): {listing}"):
        run_recipe(frames, dark_set.master_bias, tmp_path / "out")


def test_exptime_spread_within_the_tolerance_is_accepted(dark_set, tmp_path):
    frames = set_with(dark_set, header={"EXPTIME": 3610.0})
    result = run_recipe(frames, dark_set.master_bias, tmp_path / "out")
    assert result.report_data["exptime"] == 3600.0  # the set's: the median
    with raises("exposure times differ by more than 0.1%"):
        run_recipe(frames, dark_set.master_bias, tmp_path / "strict", exptime_tolerance=0.001)


def test_mixed_darktime_is_an_error_in_counts_mode_and_a_warning_in_rate_mode(dark_set, tmp_path):
    frames = set_with(dark_set, header={"DARKTIME": 3700.0})
    listing = "; ".join(f"{p}: {d} s" for p, d in zip(frames, [3700.0] + [3600.0] * 4, strict=True))
    message = f"dark times (DARKTIME) differ by more than 1%: {listing}"
    with raises(re.escape(message)):
        run_recipe(frames, dark_set.master_bias, tmp_path / "out")
    result = run_recipe(frames, dark_set.master_bias, tmp_path / "rate", unit="rate")
    assert result.report_data["warnings"] == [f"{message} (each frame is divided by its EXPTIME)"]


def test_darktime_absent_from_some_frames_is_not_compared(dark_set, tmp_path):
    frames = set_with(dark_set, remove=["DARKTIME"])
    assert run_recipe(frames, dark_set.master_bias, tmp_path / "out").report_data["warnings"] == []


# ---- shapes, readout, binning -------------------------------------------------------------------


def test_mixed_shapes_listed_from_headers_before_any_pixel_is_read(dark_set, tmp_path, monkeypatch):
    """A 6000 x 6000 frame whose data are a hole in a sparse file; nothing that reads
    pixels may be called: the shapes come from the headers."""
    big = dark_set.frames[0].parent / "big.fits"
    header = fits.getheader(dark_set.frames[0])
    header["NAXIS1"], header["NAXIS2"] = 6000, 6000
    header["UUID"], header["DATE-OBS"] = str(uuid.uuid4()), "2024-03-16T00:00:00.00"
    with open(big, "wb") as f:
        f.write(header.tostring().encode())
        f.truncate(f.tell() + 6000 * 6000 * 2)  # a hole: 72 MB that occupy no disk
    assert os.stat(big).st_blocks * 512 < 1 << 20

    def no_pixels(*args, **kwargs):
        raise AssertionError("a pixel was read")

    for name in ("read_raw", "verify_checksums", "sha256_file"):
        monkeypatch.setattr(recipe_module, name, no_pixels)
    frames = [*dark_set.frames[:2], big]
    listing = "; ".join(
        f"{p}: {s}" for p, s in zip(frames, ["74 x 80", "74 x 80", "6000 x 6000"], strict=True)
    )
    with raises("2 problems with the inputs") as info:
        run_recipe(frames, dark_set.master_bias, tmp_path / "out")
    assert info.value.problems == [
        f"{big}: shape 6000 x 6000 (rows x columns) is neither a raw small MEGARA frame "
        "(74 x 80 (rows x columns)) nor a trimmed one (64 x 64 (rows x columns))",
        f"frames of different shapes: {listing}",
    ]


@pytest.mark.parametrize("key", ["READMODE", "RSPEED", "DETECTOR"])
def test_mixed_readout_keys(dark_set, tmp_path, key):
    frames = set_with(dark_set, header={key: "MIRROR"})
    listing = "; ".join(
        f"{esc(p)}: {'MIRROR' if i == 0 else fits.getheader(p)[key]}" for i, p in enumerate(frames)
    )
    with raises(f"frames with different {key}: {listing}"):
        run_recipe(frames, dark_set.master_bias, tmp_path / "out")


@pytest.mark.parametrize("keys", [{"VBIN": 2}, {"HBIN": 2}, {"VBIN": 2, "HBIN": 2}])
def test_binned_frames_from_header_keys(dark_set, tmp_path, keys):
    frames = set_with(dark_set, header=keys)
    shown = ", ".join(f"{k}={v}" for k, v in keys.items())
    with raises(f"{esc(frames[0])}: {shown}: binned MEGARA frames are not supported"):
        run_recipe(frames, dark_set.master_bias, tmp_path / "out")


def test_binned_frames_from_their_shape(dark_set, tmp_path):
    """Every frame binned 2x1 (rows): the shape tells, even without VBIN/HBIN."""
    rows = RECIPE_GEOMETRY.raw_shape[0]
    frames = [
        write_variant(p, tmp_path / f"binned_{i}.fits", data=lambda d: d[: rows // 2])
        for i, p in enumerate(dark_set.frames[:3])
    ]
    with raises(f"{esc(frames[0])}: shape 37 x 80 .* is a 2x1 .* binned readout: binned MEGARA"):
        run_recipe(frames, dark_set.master_bias, tmp_path / "out")


# ---- repeats ------------------------------------------------------------------------------------


def test_same_path_twice(dark_set, tmp_path):
    frames = [*dark_set.frames, dark_set.frames[1]]
    p = esc(dark_set.frames[1])
    with raises(f"{p}: the same file as {p} \\(given twice\\)"):
        run_recipe(frames, dark_set.master_bias, tmp_path / "out")


@pytest.mark.parametrize("link", [os.symlink, os.link], ids=["symlink", "hard link"])
def test_same_file_through_a_link(dark_set, tmp_path, link):
    linked = tmp_path / "linked.fits"
    link(dark_set.frames[2], linked)
    with raises(f"{esc(linked)}: the same file as {esc(dark_set.frames[2])} \\(given twice\\)"):
        run_recipe([*dark_set.frames, linked], dark_set.master_bias, tmp_path / "out")


def test_same_exposure_by_uuid(dark_set, tmp_path):
    copy = tmp_path / "copy.fits"
    shutil.copyfile(dark_set.frames[3], copy)
    exposure = fits.getval(copy, "UUID")
    with raises(
        f"{esc(copy)}: the same exposure as {esc(dark_set.frames[3])} \\(UUID {exposure}\\)"
    ):
        run_recipe([*dark_set.frames, copy], dark_set.master_bias, tmp_path / "out")


def test_same_exposure_by_date_obs_without_uuid(dark_set, tmp_path):
    a = write_variant(dark_set.frames[0], tmp_path / "a.fits", remove=["UUID"])
    b = write_variant(dark_set.frames[0], tmp_path / "b.fits", remove=["UUID"])
    date = fits.getval(a, "DATE-OBS")
    with raises(f"{esc(b)}: the same exposure as {esc(a)} \\(DATE-OBS {date}\\)"):
        run_recipe([a, b, *dark_set.frames[1:]], dark_set.master_bias, tmp_path / "out")


# ---- the master bias ----------------------------------------------------------------------------


def bias_variant(dark_set, name, *, shape=None, header=None, remove=()):
    data = None if shape is None else (lambda d: np.zeros(shape, np.float32))
    return write_variant(
        dark_set.master_bias,
        dark_set.master_bias.parent / name,
        header=header,
        remove=remove,
        data=data,
    )


def test_master_bias_of_the_wrong_shape(dark_set, tmp_path):
    bias = bias_variant(dark_set, "small.fits", shape=(60, 64))
    with raises(f"{esc(bias)}: master bias is 60 x 64 \\(the wrong shape\\); it must be trimmed "
                "to 64 x 64"):  # fmt: skip
        run_recipe(dark_set.frames, bias, tmp_path / "out")


def test_master_bias_untrimmed(dark_set, tmp_path):
    bias = bias_variant(dark_set, "raw.fits", shape=RECIPE_GEOMETRY.raw_shape)
    with raises(f"{esc(bias)}: master bias is 74 x 80 \\(an untrimmed raw frame\\)"):
        run_recipe(dark_set.frames, bias, tmp_path / "out")


def test_master_bias_binned(dark_set, tmp_path):
    by_shape = bias_variant(dark_set, "half.fits", shape=(32, 64))
    with raises(f"{esc(by_shape)}: master bias is 32 x 64 \\(the wrong shape\\)"):
        run_recipe(dark_set.frames, by_shape, tmp_path / "out")
    by_keys = bias_variant(dark_set, "vbin.fits", header={"VBIN": 2})
    with raises(f"{esc(by_keys)}: VBIN=2: binned MEGARA frames are not supported"):
        run_recipe(dark_set.frames, by_keys, tmp_path / "out")


@pytest.mark.parametrize(
    ("header", "shown"),
    [
        ({"NUMTYPE": "MasterDark", "OBSMODE": "MegaraDarkImage"}, "NUMTYPE='MasterDark'"),
        ({"IMAGETYP": "IMAGE_BIAS"}, "IMAGETYP='IMAGE_BIAS'"),
        ({"OBSMODE": "MegaraFiberFlatImage"}, "OBSMODE='MegaraFiberFlatImage'"),
    ],
)
def test_master_bias_not_a_bias(dark_set, tmp_path, header, shown):
    bias = bias_variant(dark_set, "notbias.fits", header=header)
    with raises(f"{esc(bias)}: not a master bias \\(.*{re.escape(shown)}"):
        run_recipe(dark_set.frames, bias, tmp_path / "out")


def test_a_raw_dark_given_as_the_master_bias(dark_set, tmp_path):
    bias = dark_set.frames[4]
    with raises(
        f"{esc(bias)}: not a master bias \\(IMAGETYP='IMAGE_DARK', OBSMODE='MegaraDarkImage'\\)"
    ) as info:
        run_recipe(dark_set.frames[:4], bias, tmp_path / "out")
    assert info.value.problems[1] == (
        f"{bias}: master bias is 74 x 80 (an untrimmed raw frame); it must be trimmed to 64 x 64"
    )


def test_master_bias_without_kind_keys_is_assumed_with_a_warning(dark_set, tmp_path):
    bias = bias_variant(dark_set, "plain.fits", remove=["NUMTYPE", "IMAGETYP", "OBSMODE"])
    result = run_recipe(dark_set.frames, bias, tmp_path / "out")
    warning = f"{bias}: no NUMTYPE, IMAGETYP or OBSMODE; assumed to be a master bias"
    assert warning in result.report_data["warnings"]
    assert warning in result.log.read_text()


def test_master_bias_also_given_as_a_frame(dark_set, tmp_path):
    with raises(f"{esc(dark_set.master_bias)}: the master bias is also given as a dark frame"):
        run_recipe([*dark_set.frames, dark_set.master_bias], dark_set.master_bias, tmp_path / "out")


def test_no_master_bias(dark_set, tmp_path):
    with raises("no master bias given \\(the recipe requires master_bias\\)"):
        run_recipe(dark_set.frames, None, tmp_path / "out")


# ---- every problem at once ----------------------------------------------------------------------


def test_every_problem_is_listed_once(dark_set, tmp_path):
    a = variant(dark_set, "a.fits", header={"INSTRUME": "EMIR", "EXPTIME": -1.0})
    b = write_variant(
        dark_set.frames[1], tmp_path / "b.fits", header={"OBSMODE": "MegaraBiasImage"}
    )
    with raises("^3 problems with the inputs:\n") as info:
        run_recipe([a, b, *dark_set.frames[2:]], dark_set.master_bias, tmp_path / "out")
    assert info.value.problems == [
        f"{a}: INSTRUME is 'EMIR', not 'MEGARA'",
        f"{a}: EXPTIME must be a positive number of seconds, got -1.0",
        f"{b}: OBSMODE is 'MegaraBiasImage', not a dark ('MegaraDarkImage')",
    ]
    assert not (tmp_path / "out" / "master_dark.fits").exists()
