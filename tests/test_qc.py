"""Quality control (megara_dark.qc): statistics, the frame gate and the GOOD / PARTIAL / BAD flag.

Units on constructed data against NumPy, then dark sets made to be GOOD, PARTIAL and
BAD, reduced by DarkRecipe (``run_recipe``), with the reasons asserted.
"""

from __future__ import annotations

import re

import numpy as np
import pytest
from astropy.io import fits
from conftest import RECIPE_GEOMETRY, reference_master_dark, run_recipe, write_variant

from megara_dark import qc
from megara_dark.detector import make_geometry
from megara_dark.report import jsonable
from megara_dark.simulate import simulate_dark_set

MEDIUM = make_geometry(200, 256, overscan=50, middle_rows=20)


# ---- statistics ---------------------------------------------------------------------------------


def test_robust_stats_against_numpy(rng):
    values = rng.normal(10.0, 2.0, 1001)
    values[::50] = np.nan
    finite = values[np.isfinite(values)]
    median, sigma = qc.robust_stats(values)
    assert median == np.median(finite)
    assert sigma == 1.482602218505602 * np.median(np.abs(finite - np.median(finite)))
    assert sigma == pytest.approx(2.0, rel=0.1)


@pytest.mark.parametrize("n", [qc.SELECT_MIN_VALUES + 1, qc.SELECT_MIN_VALUES + 2, 200_001])
def test_median_by_selection_is_numpys(rng, n):
    """Large arrays: the bracketed selection gives np.median's number and type, for odd
    and even sizes, ties, float32 and float64, sorted values, two far-apart halves, and
    a subsample that misses the middle (every sampled value huge: np.median's own way)."""
    sampled = np.zeros(n, np.float32)
    sampled[:: n // qc.SELECT_SAMPLE] = 1e6
    cases = [
        rng.normal(5.0, 1.0, n).astype(np.float32),
        rng.integers(0, 4, n).astype(np.float32),
        np.sort(rng.normal(0.0, 1.0, n)),
        np.where(np.arange(n) % 2 == 0, 0.0, 1000.0) + rng.normal(0.0, 1.0, n),
        sampled,
    ]
    for values in cases:
        expected = np.median(values)
        got = qc._median(values.copy())
        assert got == expected and type(got) is type(expected)


def test_robust_stats_of_nothing_is_nan():
    assert all(np.isnan(qc.robust_stats(np.array([np.nan, np.inf]))))
    assert all(np.isnan(qc.robust_stats(np.array([]))))


def test_frame_stats_saturation(rng):
    corrected = rng.normal(0.0, 1.0, 400)
    raw = np.full(400, 1000.0)
    raw[:10] = 65535.0
    stats = qc.frame_stats("f.fits", corrected, raw, saturation_adu=65535.0)
    assert stats.saturated_fraction == 10 / 400
    assert (stats.median, stats.robust_sigma) == qc.robust_stats(corrected)
    assert stats.passed and stats.reason == ""


def test_master_stats_on_constructed_planes(rng):
    data = rng.normal(5.0, 1.0, (100, 100)).astype(np.float32)
    data[10, 10:15] = 500.0  # 5 hot pixels
    data[50, 50] = np.nan
    npix = np.full((100, 100), 4, np.int16)
    npix[:2] = 3  # 200 pixels from fewer frames
    thresholds = qc.QCThresholds()
    stats = qc.master_stats(data, npix, 4, 100.0, "ADU", [1.5, 2.5], thresholds, sample_step=1)
    finite = data[np.isfinite(data)]
    median = float(np.median(finite))
    sigma = 1.482602218505602 * float(np.median(np.abs(finite - median)))
    assert stats["median"] == median
    assert stats["robust_sigma"] == pytest.approx(sigma, rel=1e-6)  # float32 arithmetic
    assert stats["mean"] == pytest.approx(float(np.mean(finite.astype(np.float64))), rel=1e-6)
    assert stats["hot_pixels"] == np.count_nonzero(finite > median + 5 * sigma) == 5
    assert stats["hot_fraction"] == 5 / 10_000
    assert (stats["nan_count"], stats["nan_fraction"]) == (1, 1 / 10_000)
    assert stats["partial_fraction"] == 200 / 10_000
    assert stats["dark_current_adu_per_s"] == median / 100.0
    assert stats["dark_current_e_per_pixel_per_hour"] == pytest.approx(median / 100.0 * 2.0 * 3600)
    rate = qc.master_stats(data, npix, 4, 100.0, "ADU/s", None, thresholds, sample_step=1)
    assert rate["dark_current_adu_per_s"] == median
    assert "dark_current_e_per_pixel_per_hour" not in rate


# ---- the frame gate -----------------------------------------------------------------------------


def frame(median, sigma=2.0, saturated=0.0, name="f") -> qc.FrameStats:
    return qc.FrameStats(name, median, sigma, saturated)


def test_gate_leaves_out_constant_saturated_and_outlying_frames():
    frames = [
        frame(2.0, name="a"),
        frame(2.1, name="b"),
        frame(1.9, name="c"),
        frame(2.0, sigma=0.0, name="constant"),
        frame(2.0, saturated=0.5, name="saturated"),
        frame(40.0, name="leak"),
        frame(-20.0, name="short"),
    ]
    qc.gate_frames(frames, qc.QCThresholds())
    outcome = {f.path: (f.passed, f.reason) for f in frames}
    assert outcome["a"] == outcome["b"] == outcome["c"] == (True, "")
    assert outcome["constant"] == (
        False,
        "constant frame (every sampled pixel equal): readout failure",
    )
    assert outcome["saturated"] == (False, "50.0% of pixels saturated")
    assert outcome["leak"] == (
        False,
        "median 40.000 ADU is 38.000 ADU above the set's 2.000 (limit 1.483): "
        "light leak or wrong exposure?",
    )
    assert outcome["short"][0] is False
    assert outcome["short"][1].endswith("ADU below the set's 2.000 (limit 1.483): wrong exposure?")


def test_gate_outliers_are_judged_without_saturated_frames():
    frames = [frame(60000.0, saturated=1.0) for _ in range(3)] + [frame(2.0), frame(2.2)]
    qc.gate_frames(frames, qc.QCThresholds())
    assert [f.passed for f in frames] == [False, False, False, True, True]


def test_gate_limit_is_the_larger_of_the_scatter_and_the_floor():
    spread = [frame(m) for m in (0.0, 0.5, 1.0, 1.5, 2.0, 9.0)]
    qc.gate_frames(spread, qc.QCThresholds(frame_outlier_sigma=3.0))
    # centre 1.25, scatter 1.4826 * 0.75: limit 3.336; only 9.0 is beyond
    assert [f.passed for f in spread] == [True] * 5 + [False]
    tight = [frame(m) for m in (2.0, 2.0, 2.0, 2.9, 3.1)]
    qc.gate_frames(tight, qc.QCThresholds())
    assert [f.passed for f in tight] == [True, True, True, True, False]  # floor: 1 ADU


# ---- the flag -----------------------------------------------------------------------------------


def good_stats(**changes) -> dict:
    stats = {
        "nan_fraction": 0.0,
        "partial_fraction": 0.0,
        "hot_fraction": 0.0,
        "dark_current_e_per_pixel_per_hour": 3.0,
    }
    stats.update(changes)
    return stats


@pytest.mark.parametrize(
    ("changes", "flag", "reason"),
    [
        ({}, "GOOD", None),
        ({"nan_fraction": 2e-4}, "PARTIAL", "0.02% pixels with no value (PARTIAL above 0.01%)"),
        ({"nan_fraction": 0.02}, "BAD", "2% pixels with no value (BAD above 1%)"),
        (
            {"partial_fraction": 0.02},
            "PARTIAL",
            "2% pixels combined from fewer frames (PARTIAL above 1%)",
        ),
        ({"partial_fraction": 0.3}, "BAD", "30% pixels combined from fewer frames (BAD above 25%)"),
        ({"hot_fraction": 0.002}, "PARTIAL", "0.2% hot pixels (PARTIAL above 0.1%)"),
        ({"hot_fraction": 0.06}, "BAD", "6% hot pixels (BAD above 5%)"),
        (
            {"dark_current_e_per_pixel_per_hour": 250.0},
            "BAD",
            "dark current 250 e-/pixel/hour above 100: light leak?",
        ),
    ],
)
def test_decide(changes, flag, reason):
    frames = [frame(2.0) for _ in range(5)]
    got_flag, reasons = qc.decide(good_stats(**changes), frames, 5, qc.QCThresholds())
    assert (got_flag, reasons) == (flag, [] if reason is None else [reason])


def test_decide_counts_failed_frames_and_few_frames():
    frames = [frame(2.0) for _ in range(5)]
    frames[0].passed = False
    assert qc.decide(good_stats(), frames, 4, qc.QCThresholds()) == (
        "PARTIAL",
        ["1 of 5 frames failed the gate and were left out"],
    )
    for f in frames[:3]:
        f.passed = False
    assert qc.decide(good_stats(), frames, 2, qc.QCThresholds()) == (
        "BAD",
        ["3 of 5 frames failed the gate", "only 2 frames combined (minimum 3)"],
    )
    relaxed = qc.QCThresholds(bad_frames_fraction=0.7, min_frames=2)
    assert qc.decide(good_stats(), frames, 2, relaxed) == (
        "PARTIAL",
        ["3 of 5 frames failed the gate and were left out"],
    )


def test_dark_current_limit_can_be_disabled():
    thresholds = qc.QCThresholds(max_dark_e_per_hour=None)
    stats = good_stats(dark_current_e_per_pixel_per_hour=1e6)
    assert qc.decide(stats, [frame(2.0)] * 3, 3, thresholds) == ("GOOD", [])


# ---- sets made to be GOOD, PARTIAL and BAD ------------------------------------------------------


def leak(amount: float):
    """A write_variant data function: light on the data pixels, a gradient along the rows."""
    amps = RECIPE_GEOMETRY.amplifiers

    def add(data):
        for amp in amps:
            rows = np.arange(amp.rows.stop - amp.rows.start)[:, None]
            data[amp.rows, amp.data_cols] += amount * (1 + rows / rows.size)
        return np.clip(np.rint(data), 0, 65535).astype(np.uint16)

    return add


def consistent(result):
    """The flag and the reasons agree across the result, the header and the report."""
    header = fits.getheader(result.master_dark)
    assert header["QCFLAG"] == result.qc.flag == result.report_data["qc"]["flag"]
    assert result.report_data["qc"] == jsonable(result.qc.as_dict())
    assert f"QC {result.qc.flag}" in result.log.read_text()


def test_a_good_set(dark_set, tmp_path):
    result = run_recipe(dark_set.frames, dark_set.master_bias, tmp_path / "out")
    assert (result.qc.flag, result.qc.reasons) == ("GOOD", [])
    assert all(f.passed for f in result.qc.frames)
    consistent(result)


def test_a_light_leak_in_one_frame_is_left_out(dark_set, tmp_path):
    leaky = write_variant(dark_set.frames[2], tmp_path / "leaky.fits", data=leak(30.0))
    frames = [*dark_set.frames[:2], leaky, *dark_set.frames[3:]]
    result = run_recipe(frames, dark_set.master_bias, tmp_path / "out")
    assert (result.qc.flag, result.qc.reasons) == (
        "PARTIAL",
        ["1 of 5 frames failed the gate and were left out"],
    )
    gated = result.qc.frames[2]
    assert not gated.passed and [f.passed for f in result.qc.frames].count(False) == 1
    assert re.fullmatch(
        r"median 4\d\.\d{3} ADU is 4\d\.\d{3} ADU above the set's \d\.\d{3} \(limit \d\.\d{3}\): "
        r"light leak or wrong exposure\?",
        gated.reason,
    ), gated.reason
    consistent(result)
    with fits.open(result.master_dark) as hdul:
        assert hdul[0].header["NUM-NCOM"] == 4
        assert np.all(hdul["MAP"].data == 4)
        lines = [str(s) for s in hdul[0].header["HISTORY"]]  # long lines span several cards
        used = [*frames[:2], *frames[3:]]
        np.testing.assert_allclose(
            hdul[0].data, reference_master_dark(used, dark_set.master_bias), atol=1e-4
        )
    assert f"Left out leaky.fits: {gated.reason}" in "".join(lines)
    assert [s for s in lines if s.startswith("Image ")] == [
        f"Image uuid:{fits.getval(p, 'UUID')}" for p in used
    ]
    entry = result.report_data["inputs"][2]
    assert entry["used"] is False and entry["qc"]["reason"] == gated.reason
    assert f"WARNING {leaky}: left out: {gated.reason}" in result.log.read_text()


def test_two_frames_are_partial(dark_set, tmp_path):
    result = run_recipe(dark_set.frames[:2], dark_set.master_bias, tmp_path / "out")
    assert result.qc.flag == "PARTIAL"
    assert result.qc.reasons[0] == "only 2 frames combined (minimum 3)"
    # The median of two frames is their mean: cosmic rays survive, at half height.
    assert all("hot pixels (PARTIAL above" in r for r in result.qc.reasons[1:])
    consistent(result)


def test_most_frames_saturated_by_a_leak_is_bad(dark_set, tmp_path):
    frames = list(dark_set.frames)
    for i in (0, 2, 4):
        frames[i] = write_variant(frames[i], tmp_path / f"lit_{i}.fits", data=leak(1e5))
    result = run_recipe(frames, dark_set.master_bias, tmp_path / "out")
    assert result.qc.flag == "BAD"
    assert result.qc.reasons[:2] == [
        "3 of 5 frames failed the gate",
        "only 2 frames combined (minimum 3)",
    ]
    assert all("hot pixels (PARTIAL above" in r for r in result.qc.reasons[2:])  # cosmic rays
    assert [f.reason for f in result.qc.frames] == [
        "100.0% of pixels saturated" if i in (0, 2, 4) else "" for i in range(5)
    ]
    assert np.all(fits.getdata(result.master_dark, "MAP") == 2)
    consistent(result)


def test_every_frame_failing_the_gate_makes_no_product(dark_set, tmp_path):
    frames = [
        write_variant(p, tmp_path / f"lit_{i}.fits", data=leak(1e5))
        for i, p in enumerate(dark_set.frames[:3])
    ]
    with pytest.raises(Exception, match="every frame failed the QC gate; no master dark was made"):
        run_recipe(frames, dark_set.master_bias, tmp_path / "out")
    assert not (tmp_path / "out" / "master_dark.fits").exists()


@pytest.mark.parametrize(
    ("method", "npix"), [("minmax", 3), ("quantileclip", 3), ("sigclip", None)]
)
def test_values_rejected_on_purpose_are_not_missing(dark_set, tmp_path, method, npix):
    """minmax drops 2 of 5 values everywhere: the product is not short of data."""
    params = {"fclip": 0.2} if method == "quantileclip" else {}
    result = run_recipe(
        dark_set.frames, dark_set.master_bias, tmp_path / "out", method=method, method_params=params
    )
    counts = fits.getdata(result.master_dark, "MAP")
    if npix is not None:
        assert np.all(counts == npix)
    assert result.qc.stats["nrejected_total"] == np.count_nonzero(counts) * 5 - counts.sum()
    assert result.qc.stats["partial_fraction"] == 0.0
    assert result.qc.flag == "GOOD", result.qc.reasons


def test_bad_inputs_make_pixels_partial(dark_set, tmp_path, rng):
    """NaN in 3% of one float frame's data pixels: 3% of the pixels are short of a value."""
    spoiled = rng.random(RECIPE_GEOMETRY.trimmed_shape) < 0.03

    def nan_pixels(data):
        for amp in RECIPE_GEOMETRY.amplifiers:
            view = data[amp.rows, amp.data_cols]
            view[spoiled[amp.trimmed_rows]] = np.nan
        return data.astype(np.float32)

    frames = [write_variant(dark_set.frames[0], tmp_path / "nan.fits", data=nan_pixels)]
    frames += dark_set.frames[1:]
    result = run_recipe(frames, dark_set.master_bias, tmp_path / "out")
    fraction = spoiled.mean()
    assert result.qc.stats["partial_fraction"] == fraction
    assert (result.qc.flag, result.qc.reasons) == (
        "PARTIAL",
        [f"{100 * fraction:.3g}% pixels combined from fewer frames (PARTIAL above 1%)"],
    )


@pytest.fixture
def hot_set(tmp_path):
    """A set with a dark current of 1000 e-/pixel/hour (limit 100)."""
    return simulate_dark_set(
        tmp_path / "raw", 5, 3600.0, seed=5, geometry=RECIPE_GEOMETRY, dark_current=1000 / 3600
    )


def test_a_dark_current_far_above_the_limit_is_bad(hot_set, tmp_path):
    result = run_recipe(hot_set.frames, hot_set.master_bias, tmp_path / "out")
    e_per_hour = result.qc.stats["dark_current_e_per_pixel_per_hour"]
    assert e_per_hour == pytest.approx(1000.0, rel=0.02)
    assert result.qc.flag == "BAD"
    assert result.qc.reasons == [
        f"dark current {e_per_hour:.3g} e-/pixel/hour above 100: light leak?"
    ]
    consistent(result)


def test_thresholds_are_configurable(hot_set, tmp_path):
    thresholds = qc.QCThresholds(max_dark_e_per_hour=2000.0)
    result = run_recipe(
        hot_set.frames, hot_set.master_bias, tmp_path / "out", qc_thresholds=thresholds
    )
    assert (result.qc.flag, result.qc.reasons) == ("GOOD", [])


def test_hot_pixels_found_are_the_simulated_ones(tmp_path):
    sim = simulate_dark_set(tmp_path / "raw", nframes=7, seed=11, geometry=MEDIUM, n_hot=40)
    result = run_recipe(sim.frames, sim.master_bias, tmp_path / "out", geometry=MEDIUM)
    data = fits.getdata(result.master_dark)
    stats = result.qc.stats
    found = np.argwhere(data > stats["median"] + 5 * stats["robust_sigma"])
    assert sorted(map(tuple, found)) == sorted(
        zip(sim.hot_pixels.rows, sim.hot_pixels.cols, strict=True)
    )
    assert stats["hot_pixels"] == 40
    assert result.qc.flag == "GOOD"  # 40 of 102400 pixels: below the PARTIAL fraction
