"""Tests of the combination core through ``megara_dark.combine.combine()``.

Every method is checked against the slow twin (``reference.py``) over the
edge-case generator of ``conftest.py``; then the invariants (thread count and
block size, inputs untouched, no memory growth), the statistics (cosmic-ray
rejection, the variance plane against Monte Carlo), every misuse, Ctrl-C and
the build.  TWIN_EXAMPLES=n in the environment sets the number of hypothesis
examples per method for the twin comparison (a longer hunt for mismatches).
"""

from __future__ import annotations

import math
import os
import signal
import sys
import threading
import time
import tracemalloc
import warnings

import numpy as np
import pytest
import reference
from conftest import FrameSet, frame_sets, snapshot
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from megara_dark.combine import METHODS, CombineResult, CombineWarning, build_info, combine

WEIGHTED = ("mean", "sigclip", "ccdclip", "minmax", "quantileclip")


def examples(n: int) -> settings:
    """Hypothesis settings: n examples; the fixtures are shared by all examples."""
    checks = [*settings.default.suppress_health_check, HealthCheck.function_scoped_fixture]
    return settings(max_examples=n, suppress_health_check=checks)


def method_params(method: str, nframes: int):
    """A strategy for the parameters of a method (a few values each, so the
    variance factors of rejection methods are calibrated a few times only)."""
    fill = {"fill": st.sampled_from([-1.0, 0.0])}
    clip = {
        "centre": st.sampled_from(["median", "mean"]),
        "low": st.sampled_from([1.0, 2.5, 3.0]),
        "high": st.sampled_from([1.5, 3.0]),
        "maxiters": st.sampled_from([1, 2, 10]),
        "sigma_floor": st.sampled_from([0.0, 0.5, 2.0]),
    }
    if method == "sigclip":
        return st.fixed_dictionaries(
            {}, optional={**clip, **fill, "spread": st.sampled_from(["mad", "std"])}
        )
    if method == "ccdclip":
        required = {"gain": st.sampled_from([0.5, 4.0]), "rdnoise": st.sampled_from([0.0, 5.0])}
        return st.fixed_dictionaries(required, optional={**clip, **fill})
    if method == "minmax":
        return st.integers(0, min(3, nframes - 1)).flatmap(
            lambda nlow: st.fixed_dictionaries(
                {"nlow": st.just(nlow), "nhigh": st.integers(0, min(3, nframes - 1 - nlow))},
                optional=fill,
            )
        )
    if method == "quantileclip":
        fclip = st.sampled_from([0.0, 0.1, 0.25, 0.3, 0.49])
        return st.fixed_dictionaries({"fclip": fclip}, optional=fill)
    return st.fixed_dictionaries({}, optional=fill)


def quietly(function, *args, **kwargs):
    """Call without the CombineWarnings that some parameters deserve (tested apart)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CombineWarning)
        return function(*args, **kwargs)


def assert_matches_twin(got: CombineResult, want: reference.Reference, method: str, n: int):
    """Counts exactly; the median exactly (the same float64 operations, then a
    selection); means and variances to a few ulps of the pixel's largest value."""
    np.testing.assert_array_equal(got.npix, want.npix, err_msg="npix")
    np.testing.assert_array_equal(got.nrejected, want.nrejected, err_msg="nrejected")
    if method == "median":
        np.testing.assert_array_equal(got.data, want.data, err_msg="data")
    known = ~np.isnan(want.data)
    np.testing.assert_array_equal(np.isnan(got.data), ~known, err_msg="data NaN")
    limit = 1e-12 * (n * want.scale + np.abs(want.data))
    assert np.all(np.abs(got.data - want.data)[known] <= limit[known]), (got.data, want.data)
    known = ~np.isnan(want.variance)
    np.testing.assert_array_equal(np.isnan(got.variance), ~known, err_msg="variance NaN")
    limit = 1e-10 * n**2 * want.scale**2 + 1e-9 * np.abs(want.variance)
    assert np.all(np.abs(got.variance - want.variance)[known] <= limit[known]), (
        got.variance,
        want.variance,
    )


# ---- the slow twin over the edge-case generator ------------------------------------


@pytest.mark.parametrize("method", METHODS)
@examples(int(os.environ.get("TWIN_EXAMPLES", 60)))
@given(data=st.data())
def test_matches_twin_and_leaves_inputs_alone(method, data, fast_calibration):
    frame_set = data.draw(frame_sets(weights=method in WEIGHTED), label="frame_set")
    params = data.draw(method_params(method, frame_set.nframes), label="params")
    before = snapshot(frame_set)
    got = quietly(combine, frame_set.frames, method, dtype="float64", **frame_set.kwargs, **params)
    assert snapshot(frame_set) == before, "an input was modified"
    want = reference.combine(frame_set.frames, method, **frame_set.kwargs, **params)
    assert_matches_twin(got, want, method, frame_set.nframes)


HAND_FRAMES = [np.array([[v, 1.0]]) for v in (1.0, 2.0, 4.0, 40.0)]
HAND_MASKS = [np.array([[0, 1]])] * 4  # column 1 is masked in every frame


@pytest.mark.parametrize(
    ("method", "params", "value", "npix"),
    [
        ("median", {}, 3.0, 4),  # (2 + 4) / 2
        ("mean", {}, 47 / 4, 4),
        ("mean", {"weights": [1, 1, 1, 0.1]}, 11 / 3.1, 4),
        ("sum", {}, 47.0, 4),
        ("minmax", {}, 3.0, 2),  # 1 and 40 dropped
        # e = 0.2 * 4 = 0.8: the plain mean 11.75 moved 0.8 of the way to the
        # mean of the middle two, 3; npix = 4 - 0 - 1.
        ("quantileclip", {"fclip": 0.2}, 11.75 + 0.8 * (3 - 11.75), 3),
        # median 3, MAD 1.5 (sigma 2.22): 40 goes; then 1, 2, 4 all stay.
        ("sigclip", {}, 7 / 3, 3),
        # centre 3 (the median), sigma sqrt(3): 40 is out; a single pass.
        ("ccdclip", {"gain": 1.0, "rdnoise": 0.0, "maxiters": 1}, 7 / 3, 3),
        # centre 3, sigma 10: the limits [-27, 33] drop 40; then nothing more.
        ("ccdclip", {"gain": 1.0, "rdnoise": 10.0 * math.sqrt(1 - 0.03)}, 7 / 3, 3),
    ],
)
def test_twin_and_core_give_hand_computed_values(method, params, value, npix):
    """A few pixels worked out by hand, so the twin is not only checked against the core."""
    for result in (
        combine(HAND_FRAMES, method, masks=HAND_MASKS, dtype="float64", **params),
        reference.combine(HAND_FRAMES, method, masks=HAND_MASKS, **params),
    ):
        assert result.data[0, 0] == pytest.approx(value, rel=1e-15)
        assert (result.npix[0, 0], result.nrejected[0, 0]) == (npix, 4 - npix)
        assert np.isnan(result.data[0, 1]) and result.npix[0, 1] == 0


def test_clipping_keeps_the_previous_survivors_when_a_pass_would_reject_all():
    """Two values 1000 apart against a noise model of sigma ~22: both are outside
    the limits, so nothing is rejected and their mean is returned."""
    frames = [np.full((1, 1), 0.0), np.full((1, 1), 1000.0)]
    for result in (
        quietly(combine, frames, "ccdclip", gain=1.0, rdnoise=0.0),
        reference.combine(frames, "ccdclip", gain=1.0, rdnoise=0.0),
    ):
        assert (result.data[0, 0], result.npix[0, 0], result.nrejected[0, 0]) == (500.0, 2, 0)


# ---- invariants ----------------------------------------------------------------------


def invariance_cases(n: int):
    """(method, parameters) covering every code path of the core for n frames."""
    return [
        ("mean", {}),
        ("median", {}),
        ("sum", {}),
        ("sigclip", {}),
        ("sigclip", {"centre": "mean", "spread": "std", "low": 1.0, "high": 1.0}),
        ("sigclip", {"low": 0.5, "high": 0.5}),  # runs cut down to one value
        ("sigclip", {"centre": "mean", "spread": "std", "low": 0.5, "high": 0.5}),
        ("ccdclip", {"gain": 1.0, "rdnoise": 3.0}),
        ("minmax", {"nlow": min(1, n - 1), "nhigh": 0}),
        ("quantileclip", {"fclip": 0.2}),
    ]


def planes(result: CombineResult) -> list[bytes]:
    return [getattr(result, name).tobytes() for name in ("data", "variance", "npix", "nrejected")]


def inputs_for(frame_set: FrameSet, method: str) -> dict:
    """The frame set's keyword arguments, without weights where the method refuses them."""
    return {k: v for k, v in frame_set.kwargs.items() if k != "weights" or method in WEIGHTED}


@examples(12)
@given(frame_set=frame_sets(tall=True, weights=True))
def test_bits_identical_for_any_thread_count_and_block_size(frame_set, fast_calibration):
    for method, params in invariance_cases(frame_set.nframes):
        kwargs = {**inputs_for(frame_set, method), **params}
        runs = [
            planes(quietly(combine, frame_set.frames, method, nthreads=t, block_rows=b, **kwargs))
            for t in (1, 2, 3)
            for b in (1, 7, 64)
        ]
        assert all(run == runs[0] for run in runs), method


@examples(15)
@given(frame_set=frame_sets(weights=True))
def test_float32_planes_are_the_float64_planes_rounded(frame_set, fast_calibration):
    for method, params in invariance_cases(frame_set.nframes):
        kwargs = {**inputs_for(frame_set, method), **params}
        single = quietly(combine, frame_set.frames, method, dtype="float32", **kwargs)
        double = quietly(combine, frame_set.frames, method, dtype="float64", **kwargs)
        assert single.data.dtype == single.variance.dtype == np.float32
        for name in ("data", "variance"):
            expected = getattr(double, name).astype(np.float32)
            np.testing.assert_array_equal(getattr(single, name), expected, err_msg=method)


@pytest.mark.parametrize("offset", [0, 1, 5])
@pytest.mark.parametrize("method", ["sigclip", "ccdclip"])
def test_long_rows_of_float32_and_int16_planes_are_the_float64_planes_converted(
    offset, method, rng
):
    """sigclip and ccdclip store whole rows at once, which the core writes to
    float32 and int16 planes by non-temporal stores where the CPU has AVX-512:
    whole cache lines in vectors, the rest one pixel at a time.  Planes that
    start `offset` pixels past an array's start move the lines' boundaries.
    Each plane must hold the float64 planes' values converted, NaNs included."""
    n, nx = 11, 1500
    values = rng.standard_t(2, (n, 3, nx)) * 3.0 + 100.0
    values[:, 1, 7:300] = np.nan  # no good value: the fill, and npix 0
    frames = list(values)
    kwargs = {"method": method, "gain": 4.0, "rdnoise": 0.5} if method == "ccdclip" else {}
    kwargs["method"] = method
    double = quietly(combine, frames, dtype="float64", **kwargs)

    def plane(dtype):
        return np.zeros((3, nx + offset), dtype)[:, offset:]

    out = CombineResult(
        data=plane(np.float32),
        variance=plane(np.float32),
        npix=plane(np.int16),
        nrejected=plane(np.int16),
    )
    single = quietly(combine, frames, out=out, **kwargs)
    for name in ("data", "variance"):
        want = getattr(double, name).astype(np.float32)
        np.testing.assert_array_equal(getattr(single, name), want, err_msg=name)
    for name in ("npix", "nrejected"):
        np.testing.assert_array_equal(getattr(single, name), getattr(double, name), err_msg=name)
    assert np.isnan(single.data[1, 7:300]).all() and (single.npix[1, 7:300] == 0).all()
    assert single.nrejected.max() >= 1


PATH_CASES = [
    ("sigclip", {}),
    ("sigclip", {"maxiters": 1, "low": 1.0, "high": 1.0}),  # the first pass is the last
    ("sigclip", {"maxiters": 2, "low": 1.0, "high": 1.5}),
    ("sigclip", {"maxiters": 3, "low": 1.0, "high": 1.0}),
    ("sigclip", {"spread": "std", "low": 1.0, "high": 1.5}),
    ("sigclip", {"centre": "mean", "spread": "std", "low": 1.0, "high": 1.0}),
    ("sigclip", {"low": 0.5, "high": 0.5}),  # runs cut down to one value
    ("sigclip", {"centre": "mean", "spread": "std", "low": 0.5, "high": 0.5}),
    ("sigclip", {"centre": "mean", "low": 1.5, "high": 1.0, "sigma_floor": 0.5}),
    ("ccdclip", {"gain": 4.0, "rdnoise": 0.5, "low": 1.0, "high": 1.5}),
    ("minmax", {}),
    ("quantileclip", {"fclip": 0.3}),
]


@pytest.mark.parametrize("n", [2, 3, 4, 5, 8, 11, 12, 13, 16, 21, 24, 30, 33, 65])
@pytest.mark.parametrize(("method", "params"), PATH_CASES)
def test_columns_together_give_the_bits_of_one_pixel_at_a_time(n, method, params, rng):
    """Clean tiles without weights are clipped across their columns; equal
    weights take the per-pixel path.  Heavy-tailed and tied values make runs
    move for several passes; NaNs put some tiles on the per-pixel path."""
    shape = (5, 700)  # several tiles per row
    values = rng.standard_t(2, (n, *shape)) * 3.0 + 100.0
    values[:, 2] = np.round(values[:, 2])  # ties
    values[0, 3, ::97] = np.nan
    frames = list(values)
    if method == "minmax":
        params = {"nlow": min(n - 2, 1), "nhigh": 1}
    kwargs = {"method": method, "dtype": "float64", **params}
    together = quietly(combine, frames, **kwargs)
    alone = quietly(combine, frames, weights=[1.0] * n, **kwargs)
    for name in ("data", "variance", "npix", "nrejected"):
        np.testing.assert_array_equal(getattr(together, name), getattr(alone, name), err_msg=name)
    if n >= 4:  # the runs did move
        assert together.nrejected.max() >= 1
    if params.get("low") == 0.5 and n >= 3:  # runs of one value were clipped again
        assert (together.npix == 1).any()


@pytest.mark.parametrize("n", [11, 24])
def test_rows_that_fill_the_queue_give_the_bits_of_one_pixel_at_a_time(n, rng):
    """Every column has an outlier, so every column moves in the first pass and
    is queued for more: the queue (8 tiles wide) fills and is flushed several
    times within a row, then at the row's end, wherever the blocks of rows end."""
    values = rng.normal(100.0, 3.0, (n, 5, 3000))
    hit = rng.integers(0, n, values.shape[1:])
    np.put_along_axis(values, hit[None], 1000.0, axis=0)
    frames = list(values)
    alone = quietly(combine, frames, "sigclip", dtype="float64", weights=[1.0] * n)
    assert (alone.nrejected >= 1).all()
    for nthreads, block_rows in [(1, 0), (1, 3), (2, 1), (2, 2)]:
        together = quietly(
            combine, frames, "sigclip", dtype="float64", nthreads=nthreads, block_rows=block_rows
        )
        for name in ("data", "variance", "npix", "nrejected"):
            np.testing.assert_array_equal(
                getattr(together, name), getattr(alone, name), err_msg=f"{name} {block_rows}"
            )


@pytest.mark.parametrize("n", [25, 31, 32, 33, 40, 48, 49, 64, 65, 97])
def test_median_above_the_kernels_is_numpys(n, rng):
    """Above 24 frames a tile's columns are sorted in blocks of 16 by the kernels,
    then merged by the network: any count of whole and partial blocks, with ties,
    gives numpy's median exactly."""
    values = rng.standard_t(2, (n, 2, 300)) * 3.0 + 100.0
    values[:, 1] = np.round(values[:, 1])  # ties
    got = combine(list(values), "median", dtype="float64")
    np.testing.assert_array_equal(got.data, np.median(values, axis=0))


@pytest.mark.parametrize("n", [2, 3, 4, 11, 24, 30])
def test_median_of_a_clean_tile_gives_the_bits_of_a_tile_with_a_bad_value(n, rng):
    """A clean tile's median and variance come from the kernels for n frames
    (up to 24) or the full network; a tile with a bad value takes each column
    alone. A NaN in one column sends its tile down the second path: every
    other column of that tile must get the bits the first path gave it."""
    values = rng.standard_t(2, (n, 3, 700)) * 3.0 + 100.0
    values[:, 1] = np.round(values[:, 1])  # ties
    clean = combine(list(values), "median", dtype="float64")
    values[0, :, 400] = np.nan
    marked = combine(list(values), "median", dtype="float64")
    others = np.arange(values.shape[2]) != 400
    for name in ("data", "variance", "npix", "nrejected"):
        np.testing.assert_array_equal(
            getattr(marked, name)[:, others], getattr(clean, name)[:, others], err_msg=name
        )
    assert (marked.npix[:, 400] == n - 1).all()


@pytest.mark.parametrize("n", [1, 2, 3, 10, 11, 24])
@pytest.mark.parametrize("order", [">i2", "<i2"])
@pytest.mark.parametrize(("bscale", "bzero"), [(1.0, 32768.0), (0.37, -5.25), (3.0, 0.0)])
def test_median_of_int16_frames_gives_the_bits_of_their_physical_values(
    n, order, bscale, bzero, rng
):
    """Clean tiles of int16 frames (one byte order, one bscale > 0 and bzero, no
    bias) take the int16 median kernels on the raw values, read in place; their
    physical values as float64 take the kernels for doubles.  Ties, both ends of
    the int16 range, and a tile with a BLANK value (the per-column path) must
    give the same bits."""
    raw = rng.integers(-32768, 32768, (n, 3, 700)).astype(np.int16)
    raw[:, 1] = rng.integers(-2, 3, (n, 700))  # ties
    raw[:, 2, :20] = np.where(rng.random((n, 20)) < 0.5, -32768, 32767)
    raw[0, 0, 650] = -32767  # the BLANK below: bad
    frames = [f.astype(order) for f in raw]
    got = combine(frames, "median", dtype="float64", bscale=bscale, bzero=bzero, blank=-32767)
    physical = bscale * raw.astype(np.float64) + bzero
    physical[raw == -32767] = np.nan
    want = combine(list(physical), "median", dtype="float64")
    for name in ("data", "variance", "npix"):
        np.testing.assert_array_equal(getattr(got, name), getattr(want, name), err_msg=name)


@pytest.mark.parametrize("n", [2, 3, 9, 10, 11, 12, 24])
def test_median_of_float32_frames_gives_the_bits_of_their_float64_values(n, rng):
    """Clean tiles of plain float32 frames take the median kernels for floats, read
    in place; the same values as float64 take the kernels for doubles.  Ties, zeros
    of both signs (a tile's values are t + 0.0, so -0.0 becomes +0.0) and a tile
    with a bad value (the per-column path) must give the same bits."""
    values = (rng.standard_t(2, (n, 3, 700)) * 3.0).astype(np.float32)
    values[:, 1] = np.round(values[:, 1])  # ties
    values[:, 2, :300] = np.where(rng.random((n, 300)) < 0.5, -0.0, 0.0)  # signed zeros
    values[0, 0, 650] = np.nan
    single = combine(list(values), "median", dtype="float64")
    double = combine(list(values.astype(np.float64)), "median", dtype="float64")
    for name in ("data", "variance", "npix"):
        a, b = getattr(single, name), getattr(double, name)
        np.testing.assert_array_equal(a, b, err_msg=name)
        np.testing.assert_array_equal(np.signbit(a), np.signbit(b), err_msg=name)
    assert not np.signbit(single.data[2, :300]).any()  # -0.0 + 0.0 is +0.0


REJECTIONS = [
    ("sigclip", {}),
    ("sigclip", {"low": 0.5, "high": 0.5}),
    ("sigclip", {"centre": "mean", "spread": "std", "low": 1.0, "high": 1.0}),
    ("ccdclip", {"gain": 4.0, "rdnoise": 0.5, "low": 1.0, "high": 1.5}),
    ("minmax", {"nlow": 0, "nhigh": 1}),
    ("quantileclip", {"fclip": 0.3}),
]


def assert_same_planes(got: CombineResult, want: CombineResult, label: str):
    for name in ("data", "variance", "npix", "nrejected"):
        a, b = getattr(got, name), getattr(want, name)
        np.testing.assert_array_equal(a, b, err_msg=f"{name} {label}")
        np.testing.assert_array_equal(np.signbit(a), np.signbit(b), err_msg=f"{name} {label}")


@pytest.mark.parametrize("n", [2, 3, 11, 24])
@pytest.mark.parametrize(("method", "params"), REJECTIONS)
def test_rejection_of_float32_frames_gives_the_bits_of_their_float64_values(n, method, params, rng):
    """Clean tiles of plain float32 frames are sorted on float lanes as they are
    gathered; the same values as float64 are gathered, then sorted as doubles.
    Ties, zeros of both signs, a NaN and an infinity (tiles gathered with
    checks) and floats whose sum overflows (finite, but taken as bad by the
    float kernels' check) must give the same bits."""
    values = (rng.standard_t(2, (n, 4, 700)) * 3.0 + 10.0).astype(np.float32)
    values[:, 1] = np.round(values[:, 1])  # ties
    values[:, 2, :300] = np.where(rng.random((n, 300)) < 0.5, -0.0, 0.0)  # signed zeros
    values[0, 0, 650] = np.nan
    values[-1, 0, 100] = np.inf
    values[:, 3, 500:] = np.float32(3e38)  # sums overflow float32
    kwargs = {"method": method, "dtype": "float64", **params}
    single = quietly(combine, list(values), **kwargs)
    double = quietly(combine, list(values.astype(np.float64)), **kwargs)
    assert_same_planes(single, double, method)
    if n >= 3 and method == "sigclip":  # the runs did move
        assert single.nrejected.max() >= 1


@pytest.mark.parametrize("n", [2, 3, 11, 24])
@pytest.mark.parametrize("order", [">i2", "<i2"])
@pytest.mark.parametrize(("bscale", "bzero"), [(1.0, 32768.0), (0.37, -5.25), (2.0**995, 0.0)])
@pytest.mark.parametrize(("method", "params"), REJECTIONS)
def test_rejection_of_int16_frames_gives_the_bits_of_their_physical_values(
    n, order, bscale, bzero, method, params, rng
):
    """Clean tiles of int16 frames (one byte order, one bscale > 0 and bzero, no
    bias, no BLANK) are sorted on int16 lanes as they are gathered, then made
    physical; their physical values as float64 are sorted as doubles.  Ties,
    both ends of the int16 range, and a scale too large for the int16 kernels
    (gathered as the float64 values are) must give the same bits; so must frames
    with a BLANK, which are gathered with checks."""
    raw = rng.integers(-32768, 32768, (n, 3, 700)).astype(np.int16)
    raw[:, 1] = rng.integers(-2, 3, (n, 700))  # ties
    raw[:, 2, :20] = np.where(rng.random((n, 20)) < 0.5, -32768, 32767)
    frames = [f.astype(order) for f in raw]
    kwargs = {"method": method, "dtype": "float64", **params}
    if method in ("sigclip", "ccdclip"):  # as int16 frames have by default
        kwargs["sigma_floor"] = bscale
    physical = bscale * raw.astype(np.float64) + bzero
    got = quietly(combine, frames, bscale=bscale, bzero=bzero, **kwargs)
    want = quietly(combine, list(physical), **kwargs)
    assert_same_planes(got, want, method)
    raw[0, 0, 650] = -32767  # the BLANK below: bad
    physical[raw == -32767] = np.nan
    frames = [f.astype(order) for f in raw]
    got = quietly(combine, frames, bscale=bscale, bzero=bzero, blank=-32767, **kwargs)
    want = quietly(combine, list(physical), **kwargs)
    assert_same_planes(got, want, f"{method} with a BLANK")


@pytest.mark.parametrize("n", [3, 11, 24])
@pytest.mark.parametrize("method", ["mean", "median"])
@pytest.mark.parametrize("scale", [2.0**-1000, 2.0**-500, 1.0, 2.0**480, 2.0**955])
def test_moments_of_a_clean_tile_give_the_bits_of_a_tile_with_a_bad_value(n, method, scale, rng):
    """A clean tile's mean and variance are divided by multiplications and FMAs
    (md_divide, md_mean_variances) where their proof holds, else by division; a
    tile with a bad value divides.  The scales put the sums (2^-1000, 2^955), the
    variances (2^480, 2^-500) or nothing (1) outside that proof, so both ways are
    checked."""
    values = (rng.standard_t(2, (n, 3, 700)) * 3.0 + 100.0) * scale
    clean = combine(list(values), method, dtype="float64")
    values[0, :, 400] = np.nan
    marked = combine(list(values), method, dtype="float64")
    others = np.arange(values.shape[2]) != 400
    for name in ("data", "variance"):
        np.testing.assert_array_equal(
            getattr(marked, name)[:, others], getattr(clean, name)[:, others], err_msg=name
        )


def test_writes_into_given_planes_of_any_layout(rng):
    frames = [rng.normal(100.0, 5.0, (9, 21)) for _ in range(5)]
    expected = combine(frames, "sigclip", dtype="float64")
    parent = np.zeros((4, 18, 63))
    out = CombineResult(
        data=parent[0, ::2, ::3],
        variance=np.zeros((21, 9)).T,
        npix=np.zeros((9, 21), np.int32),
        nrejected=np.zeros((9, 21), np.uint8),
    )
    assert combine(frames, "sigclip", out=out) is out
    for name in ("data", "variance", "npix", "nrejected"):
        np.testing.assert_array_equal(getattr(out, name), getattr(expected, name), err_msg=name)
    assert not parent[1:].any() and not parent[0, 1::2].any(), "wrote outside the view"


def test_planes_left_none_are_not_computed(rng):
    """out= with variance, npix or nrejected None: the other planes are the same bits."""
    frames = [rng.normal(100.0, 5.0, (9, 21)).astype(np.float32) for _ in range(5)]
    expected = combine(frames, "sigclip")
    names = ("data", "variance", "npix", "nrejected")
    for missing in names[1:]:
        planes = {name: np.zeros((9, 21), getattr(expected, name).dtype) for name in names}
        out = CombineResult(**{**planes, missing: None})
        assert combine(frames, "sigclip", out=out) is out
        for name in names:
            if name != missing:
                np.testing.assert_array_equal(getattr(out, name), getattr(expected, name))
    with pytest.raises(ValueError, match=r"out.data must be an array"):
        combine(frames, out=CombineResult(None, *(np.zeros((9, 21)) for _ in range(3))))


def rss_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@pytest.mark.skipif(not os.path.exists("/proc/self/statm"), reason="needs Linux /proc")
def test_no_memory_growth_over_repeated_calls(rng, fast_calibration):
    """C scratch, descriptors and networks are freed: RSS is flat over many calls
    (the scratch alone is ~40 KiB per call and thread, so a leak shows at once)."""
    sets = []
    for n in (9, 70):  # sorting networks and scalar sorts
        frames = [rng.normal(100.0, 5.0, (6, 40)).astype(np.float32) for _ in range(n)]
        masks = [rng.random((6, 40)) < 0.1 for _ in range(n)]
        sets.append((frames, {"masks": masks, "bias": np.ones((6, 40), ">i2")}))

    def run():
        for frames, kwargs in sets:
            for method, params in invariance_cases(len(frames)):
                combine(frames, method, **kwargs, **params)

    for _ in range(10):  # caches, calibrations and the allocator settle
        run()
    before = rss_bytes()
    for _ in range(50):
        run()
    assert rss_bytes() - before < 4 << 20


def test_no_python_objects_or_references_leak(rng):
    """Traced Python memory is flat over 200 calls (a leak of 40 bytes a call
    would show) and the frames' reference counts are unchanged."""
    frames = [rng.normal(100.0, 5.0, (6, 40)) for _ in range(7)]
    masks = [np.zeros((6, 40), bool)] * 7
    counts = [sys.getrefcount(f) for f in frames]
    tracemalloc.start()
    try:
        for _ in range(50):  # free lists and caches fill up
            combine(frames, "sigclip", masks=masks)
        start = tracemalloc.get_traced_memory()[0]
        for _ in range(200):
            combine(frames, "sigclip", masks=masks)
        grown = tracemalloc.get_traced_memory()[0] - start
    finally:
        tracemalloc.stop()
    assert grown < 8 << 10
    assert [sys.getrefcount(f) for f in frames] == counts


# ---- statistics ----------------------------------------------------------------------


@pytest.mark.parametrize("n", [3, 5, 10])
@pytest.mark.parametrize("kind", ["float32", "FITS uint16"])
def test_sigclip_defaults_reject_cosmic_rays(n, kind, rng):
    """1e5 ADU (65535 for 16-bit data) in one frame at 50 pixels, each caught."""
    physical = 1000.0 + 5.0 * rng.standard_normal((n, 64, 80))
    hits = rng.choice(64 * 80, 50, replace=False)
    ys, xs = np.unravel_index(hits, (64, 80))
    frame_of_hit = rng.integers(0, n, 50)
    physical[frame_of_hit, ys, xs] = 1e5 if kind == "float32" else 65535.0
    if kind == "float32":
        frames, kwargs = list(physical.astype(np.float32)), {}
    else:  # raw FITS data: big-endian int16, BZERO = 32768
        raw = np.rint(physical - 32768.0).astype(">i2")
        frames, kwargs = list(raw), {"bzero": 32768.0}
    result = combine(frames, "sigclip", **kwargs)
    assert np.all(result.nrejected[ys, xs] >= 1)
    others = np.ma.masked_array(physical[:, ys, xs], physical[:, ys, xs] > 50000)
    assert np.all(result.data[ys, xs] >= others.min(axis=0) - 0.5)
    assert np.all(result.data[ys, xs] <= others.max(axis=0) + 0.5)


# Noise model of the ccdclip case: sigma**2 = (rdnoise**2 + gain * level) / gain**2.
CCD = {"gain": 2.0, "rdnoise": 6.0}
LEVEL = 1000.0
SIGMA = math.sqrt(CCD["rdnoise"] ** 2 + CCD["gain"] * LEVEL) / CCD["gain"]


@pytest.mark.parametrize("n", [3, 4, 5, 10, 21])
@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("kind", ["float64", "FITS uint16"])
def test_variance_plane_matches_monte_carlo(kind, method, n):
    """Mean of ``variance`` within 5% of the empirical variance of ``data`` over
    200 x 200 pixels of Gaussian noise, method defaults (integer data: with the
    default sigma floor).  At n = 10, 20% of the values are masked: pixels are
    then compared within groups of equal good count."""
    rng = np.random.default_rng(n)
    physical = LEVEL + SIGMA * rng.standard_normal((n, 200, 200))
    masks = list(rng.random((n, 200, 200)) < 0.2) if n == 10 else None
    params = CCD if method == "ccdclip" else {}
    if kind == "FITS uint16":
        frames, params = list(np.rint(physical - 32768).astype(">i2")), {**params, "bzero": 32768}
    else:
        frames = list(physical)
    result = combine(frames, method, masks=masks, dtype="float64", **params)
    usable = np.isfinite(result.variance)
    assert usable.mean() > 0.99
    good = (result.npix + result.nrejected)[usable]
    data, variance = result.data[usable], result.variance[usable]
    groups = [good == k for k in np.unique(good) if np.sum(good == k) > 100]
    empirical = sum(data[g].var(ddof=1) * g.sum() for g in groups) / sum(g.sum() for g in groups)
    predicted = sum(variance[g].sum() for g in groups) / sum(g.sum() for g in groups)
    assert predicted == pytest.approx(empirical, rel=0.05)


# ---- interruption, build, files, sizes -------------------------------------------------


def test_ctrl_c_stops_a_long_combine_within_a_fraction_of_a_second(fast_calibration):
    """SIGINT 1 s into a combination that takes about seven seconds (65 frames of
    1024 x 4096, sigclip with weights: each pixel sorted alone, one thread) raises
    KeyboardInterrupt promptly."""
    n, ny, nx = 65, 1024, 4096
    base = np.random.default_rng(1).standard_normal((ny, nx + n)).astype(np.float32)
    frames = [base[:, i : i + nx] for i in range(n)]  # distinct frames, one allocation
    combine([f[:2, :16] for f in frames], "sigclip")  # variance factors are calibrated first
    sent = []

    def interrupt():
        sent.append(time.perf_counter())
        os.kill(os.getpid(), signal.SIGINT)

    timer = threading.Timer(1.0, interrupt)
    timer.start()
    try:
        with pytest.raises(KeyboardInterrupt):
            combine(frames, "sigclip", weights=[1.0] * n, nthreads=1)
        latency = time.perf_counter() - sent[0]
    finally:
        timer.cancel()
    assert latency < 0.5


def test_build_info_reports_openmp():
    info = build_info()
    assert info["openmp"] is True
    assert isinstance(info["default_threads"], int) and info["default_threads"] >= 1


def test_reads_astropy_raw_fits_data_with_bzero_and_blank(tmp_path, rng):
    """Memory-mapped, unscaled FITS data (big-endian int16, BZERO = 32768, BLANK)
    give the same median as astropy's scaled physical values with BLANK as bad."""
    fits = pytest.importorskip("astropy.io.fits")
    physical = np.rint(rng.normal(30000.0, 50.0, (5, 9, 13))).astype(np.uint16)
    physical[0, 2, 3] = physical[3, 4, 5] = 0  # raw -32768 = BLANK
    for i, image in enumerate(physical):
        hdu = fits.PrimaryHDU(image)
        hdu.header["BLANK"] = -32768
        hdu.writeto(tmp_path / f"f{i}.fits")
    hduls = [fits.open(tmp_path / f"f{i}.fits", do_not_scale_image_data=True) for i in range(5)]
    try:
        raw = [h[0].data for h in hduls]
        assert raw[0].dtype == np.dtype(">i2") and not raw[0].flags.owndata  # a memory map
        header = hduls[0][0].header
        result = combine(raw, "median", bzero=header["BZERO"], blank=header["BLANK"])
        expected = reference.combine(list(physical), "median", masks=list(physical == 0))
        np.testing.assert_array_equal(result.data, expected.data)
        np.testing.assert_array_equal(result.npix, expected.npix)
        assert result.npix[2, 3] == result.npix[4, 5] == 4
        del raw
    finally:
        for h in hduls:
            h.close()


def test_counts_switch_to_int32_beyond_32767_frames():
    frames = [np.ones((1, 2), np.float32)] * 32768
    result = combine(frames, "mean")
    assert result.npix.dtype == np.int32 and result.npix.tolist() == [[32768, 32768]]
    assert result.data.tolist() == [[1.0, 1.0]]


# ---- misuse: one case per failure mode, the message asserted -------------------------

F = [np.zeros((3, 4))] * 3  # three good frames of 3 x 4


@pytest.mark.parametrize(
    ("frames", "kwargs", "error", "message"),
    [
        pytest.param([], {}, ValueError, r"no frames to combine", id="no-frames"),
        pytest.param(np.zeros((0, 3, 4)), {}, ValueError, r"no frames", id="empty-stack"),
        pytest.param([F[0], np.zeros(4)], {}, ValueError,
                     r"frame 1: expected a 2-D image, got shape \(4,\)", id="not-2d"),
        pytest.param([F[0], F[0], np.zeros((3, 5))], {}, ValueError,
                     r"frame 2: shape \(3, 5\) differs from frame 0's \(3, 4\)", id="mixed-shapes"),
        pytest.param([np.zeros((0, 4))], {}, ValueError, r"frame 0: empty image", id="empty-frame"),
        pytest.param([F[0], F[0].astype(complex)], {}, TypeError,
                     r"frame 1: dtype complex128 is not supported; use one of uint8, ",
                     id="complex-frame"),
        pytest.param([F[0], F[0].astype(np.int8)], {}, TypeError,
                     r"frame 1: dtype int8 is not supported", id="int8-frame"),
        pytest.param([F[0].astype(np.uint32)], {}, TypeError,
                     r"frame 0: dtype uint32 is not supported", id="uint32-frame"),
        pytest.param([F[0].astype(bool)], {}, TypeError,
                     r"frame 0: dtype bool is not supported", id="bool-frame"),
        pytest.param(F, {"method": "average"}, ValueError,
                     r"method 'average' is not one of mean, median, ", id="unknown-method"),
        pytest.param(F, {"method": "sigclip", "low": 0}, ValueError,
                     r"low and high must be > 0, got low=0.0, high=3.0", id="low-not-positive"),
        pytest.param(F, {"method": "sigclip", "high": math.inf}, ValueError,
                     r"high must be a finite number, got inf", id="high-infinite"),
        pytest.param(F, {"method": "sigclip", "centre": "mode"}, ValueError,
                     r"centre must be 'median' or 'mean', got 'mode'", id="bad-centre"),
        pytest.param(F, {"method": "sigclip", "spread": "iqr"}, ValueError,
                     r"spread must be 'mad' or 'std', got 'iqr'", id="bad-spread"),
        pytest.param(F, {"method": "sigclip", "maxiters": 0}, ValueError,
                     r"maxiters must be >= 1", id="maxiters-zero"),
        pytest.param(F, {"method": "sigclip", "maxiters": 2.5}, ValueError,
                     r"maxiters must be an integer", id="maxiters-not-integer"),
        pytest.param(F, {"method": "sigclip", "sigma_floor": -1.0}, ValueError,
                     r"sigma_floor must be >= 0, got -1.0", id="negative-sigma-floor"),
        pytest.param(F, {"method": "ccdclip", "gain": 1.0}, ValueError,
                     r"ccdclip needs gain \(e-/ADU\) and rdnoise \(e-\)", id="ccdclip-no-noise"),
        pytest.param(F, {"method": "ccdclip", "gain": 0.0, "rdnoise": 3.0}, ValueError,
                     r"ccdclip needs gain > 0 and rdnoise >= 0, got 0.0, 3.0", id="ccdclip-gain-0"),
        pytest.param(F, {"method": "minmax", "nlow": 2, "nhigh": 1}, ValueError,
                     r"minmax drops nlow \+ nhigh = 3 values but there are only 3 frames",
                     id="minmax-drops-all"),
        pytest.param(F, {"method": "minmax", "nlow": -1}, ValueError,
                     r"nlow must be an integer >= 0, got -1", id="minmax-negative"),
        pytest.param(F, {"method": "quantileclip", "fclip": 0.5}, ValueError,
                     r"fclip must be in \[0, 0.5\), got 0.5", id="fclip-too-big"),
        pytest.param(F, {"bscale": [1, 0, 1]}, ValueError,
                     r"bscale must be non-zero for every frame", id="bscale-zero"),
        pytest.param(F, {"bzero": [1, 2]}, ValueError,
                     r"bzero has 2 values, expected one per frame \(3\)", id="bzero-count"),
        pytest.param(F, {"bzero": [0, math.nan, 0]}, ValueError,
                     r"bzero\[1\] must be a finite number, got nan", id="bzero-nan"),
        pytest.param(F, {"blank": -1}, ValueError,
                     r"frame 0: BLANK applies to integer data, not float64", id="blank-float"),
        pytest.param([F[0].astype(np.int16)] * 3, {"blank": [0, 1.5, 0]}, ValueError,
                     r"frame 1: BLANK must be an integer, got 1.5", id="blank-not-integer"),
        pytest.param([F[0].astype(np.int16)] * 3, {"blank": [0, 0]}, ValueError,
                     r"blank has 2 values, expected one per frame \(3\)", id="blank-count"),
        pytest.param([F[0].astype(np.int16)] * 3, {"blank": 70000}, ValueError,
                     r"frame 0: BLANK 70000 is outside the range of int16", id="blank-range"),
        pytest.param(F, {"zeros": [1, 2]}, ValueError,
                     r"zeros must hold one number per frame \(3\), got shape \(2,\)",
                     id="zeros-count"),
        pytest.param(F, {"scales": [1, math.inf, 1]}, ValueError,
                     r"scales must be finite, got \[1.0, inf, 1.0\]", id="scales-infinite"),
        pytest.param(F, {"scales": [1, 0, 1]}, ValueError,
                     r"scales must be non-zero", id="scales-zero"),
        pytest.param(F, {"method": "mean", "weights": [1, -1, 1]}, ValueError,
                     r"weights must be > 0", id="weights-negative"),
        pytest.param(F, {"method": "median", "weights": [1, 2, 3]}, ValueError,
                     r"weights are not used by the median; drop them or use 'mean'",
                     id="weights-with-median"),
        pytest.param(F, {"method": "sum", "weights": [1, 2, 3]}, ValueError,
                     r"weights are not used by the sum", id="weights-with-sum"),
        pytest.param(F, {"masks": [None, None]}, ValueError,
                     r"got 2 masks for 3 frames", id="mask-count"),
        pytest.param(F, {"masks": [None, np.zeros((4, 3)), None]}, ValueError,
                     r"mask 1: shape \(4, 3\) differs from the frames' \(3, 4\)",
                     id="mask-shape"),
        pytest.param(F, {"bias": np.zeros((3, 5))}, ValueError,
                     r"bias: shape \(3, 5\) differs from the frames' \(3, 4\)", id="bias-shape"),
        pytest.param(F, {"bias": np.zeros((3, 4), complex)}, TypeError,
                     r"bias: dtype complex128 is not supported", id="bias-dtype"),
        pytest.param(F, {"row_offsets": np.zeros((4, 3))}, ValueError,
                     r"row_offsets must have shape \(frames, rows\) = \(3, 3\), got \(4, 3\)",
                     id="row-offsets-shape"),
        pytest.param(F, {"row_offsets": [[0, 0, 0], [0, 0, math.nan], [0, 0, 0]]}, ValueError,
                     r"row_offsets must be finite; frame 1, row 2 is nan", id="row-offsets-nan"),
        pytest.param(F, {"dtype": "float16"}, TypeError,
                     r"dtype must be float32 or float64, got float16", id="output-dtype"),
        pytest.param(F, {"nthreads": -1}, ValueError,
                     r"nthreads must be an integer >= 0, got -1", id="negative-threads"),
        pytest.param(F, {"block_rows": 2.0}, ValueError,
                     r"block_rows must be an integer >= 0, got 2.0", id="block-rows-float"),
    ],
)  # fmt: skip
def test_misuse_is_refused_with_a_clear_message(frames, kwargs, error, message):
    with pytest.raises(error, match=message):
        combine(frames, **kwargs)


def test_misuse_of_output_planes_is_refused():
    planes = {name: np.zeros((3, 4)) for name in ("data", "variance", "npix", "nrejected")}
    with pytest.raises(ValueError, match=r"out.npix: shape \(4, 3\) differs from the frames'"):
        combine(F, out=CombineResult(**{**planes, "npix": np.zeros((4, 3))}))
    with pytest.raises(TypeError, match=r"value and variance planes must be float32 or float64"):
        combine(F, out=CombineResult(**{**planes, "data": np.zeros((3, 4), np.int32)}))
    read_only = np.zeros((3, 4))
    read_only.flags.writeable = False
    with pytest.raises(ValueError, match=r"output plane is read-only"):
        combine(F, out=CombineResult(**{**planes, "variance": read_only}))


def test_sigclip_warns_where_it_cannot_reject():
    with pytest.warns(CombineWarning, match=r"sigclip with 2 frames cannot tell which value"):
        combine(F[:2], "sigclip")
    with pytest.warns(CombineWarning, match=r"with a mean/std centre cannot reject any value "
                      r"with 5 frames \(no value can lie more than 1.79 sigma"):  # fmt: skip
        combine([F[0]] * 5, "sigclip", centre="mean", spread="std")
