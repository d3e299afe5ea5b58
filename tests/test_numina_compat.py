"""The numina-compatible API (megara_dark.numina_compat, re-exported by megara_dark.combine).

Expected values are worked out by hand (the behavioural spec of numina 0.40, checked
against numina itself) or by a float64 NumPy reference; the ``peers`` tests compare
with numina where both behave alike.
"""

import dataclasses
import inspect
import math
import subprocess
import sys

import numpy as np
import pytest

import megara_dark.combine as c
from megara_dark import numina_compat

NAN = math.nan


def px(*values, dtype=np.float64):
    """One single-pixel image per value (numina's tests use 1-D images like these)."""
    return [np.array([v], dtype=dtype) for v in values]


def planes(result):
    """(value, variance, npix) as float64 arrays, for comparisons."""
    assert isinstance(result, tuple) and len(result) == 3
    return [np.asarray(p, dtype=np.float64) for p in result]


def assert_result(result, value, variance, npix):
    got = planes(result)
    np.testing.assert_allclose(got[0], value, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(got[1], variance, rtol=1e-12, atol=1e-12)
    np.testing.assert_array_equal(got[2], npix)


# ---- names and signatures ---------------------------------------------------

SIGNATURES = {
    "mean": "(arrays, masks=None, dtype=None, out=None, out_res=None, out_var=None, "
    "out_pix=None, zeros=None, scales=None, weights=None)",
    "median": "(arrays, masks=None, dtype=None, out=None, out_res=None, out_var=None, "
    "out_pix=None, zeros=None, scales=None, weights=None)",
    "sigmaclip": "(arrays, masks=None, dtype=None, out=None, out_res=None, out_var=None, "
    "out_pix=None, zeros=None, scales=None, weights=None, low=3.0, high=3.0)",
    "minmax": "(arrays, masks=None, dtype=None, zeros=None, scales=None, weights=None, "
    "nmin=1, nmax=1)",
    "quantileclip": "(arrays, masks=None, out_res=None, out_var=None, out_pix=None, out=None, "
    "dtype=None, zeros=None, scales=None, weights=None, fclip=0.1)",
    "sum": "(arrays, masks=None, out_res=None, out_var=None, out_pix=None, out=None, "
    "dtype=None, zeros=None, scales=None)",
    "flatcombine": "(arrays, masks=None, scales=None, dtype=None, low=3.0, high=3.0, blank=1.0)",
    "zerocombine": "(arrays, masks, scales=None, dtype=None)",
    "generic_combine": "(method, arrays, out_res=None, out_var=None, out_pix=None, out=None, "
    "dtype=None, masks=None, zeros=None, scales=None, weights=None)",
}


@pytest.mark.parametrize("name", sorted(SIGNATURES))
def test_signature_is_numinas(name):
    func = getattr(c, name)
    assert str(inspect.signature(func)) == SIGNATURES[name]
    assert func.__name__ == name  # numina's combine_imgs reads method.__name__
    assert func is getattr(numina_compat, name)


def test_low_level_names():
    assert c.generic_combine_1iter is c.generic_combine
    assert c.generic_combine_miter is c.generic_combine
    assert issubclass(c.CombineError, Exception)
    assert c.debug_method("anything", 1) == c.mean_method()
    assert repr(c.sigmaclip_method(2.0, 1.5)) == "sigmaclip_method(2.0, 1.5)"
    assert repr(c.minmax_method(1, 2)) == "minmax_method(1, 2)"
    with pytest.raises(dataclasses.FrozenInstanceError):
        c.mean_method().name = "median"


def test_method_constructors_take_numinas_arguments():
    with pytest.raises(TypeError, match="positional"):
        c.minmax_method(nmin=1, nmax=1)
    with pytest.raises(TypeError, match="missing"):
        c.quantileclip_method()
    with pytest.raises(TypeError):
        c.mean_method(1)


def test_import_order_does_not_matter(tmp_path):
    for first in ("megara_dark.numina_compat", "megara_dark.combine"):
        code = (
            f"import {first}; import megara_dark.combine as c; print(c.mean(c.np.ones((2, 1)))[2])"
        )
        run = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, check=False, cwd=tmp_path
        )
        assert run.returncode == 0, run.stderr
        assert run.stdout.strip() == "[2.]"


# ---- values: the spec's worked examples ---------------------------------------

IMAGE = np.array([[1.0, 3.0], [1.0, -1.4]])
INPUTS = [IMAGE, IMAGE + 1]


def test_mean_returns_a_tuple_of_float64_planes():
    result = c.mean(INPUTS)
    assert_result(result, [[1.5, 3.5], [1.5, -0.9]], 0.5, 2)
    assert [p.dtype for p in result] == [np.float64] * 3


@pytest.mark.parametrize(
    ("values", "expected"),
    [((1, 4), (2.5, 4.5, 2)), ((1, 2, 6), (3, 7, 3)), ((5,), (5, 0, 1))],
)
def test_mean_values(values, expected):
    assert_result(c.mean(px(*values)), *expected)


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        ((1, 4), (2.5, 7.06436420722135, 2)),
        ((1, 2, 6), (2, 10.989010989010989, 3)),
        ((3, 1, 2, 10), (2.5, 26.164311878597593, 4)),
        ((1, 2, 6, 7), (4, 13.605442176870747, 4)),
        ((5,), (5, 0, 1)),
    ],
)
def test_median_values(values, expected):
    assert_result(c.median(px(*values)), *expected)


@pytest.mark.parametrize(
    ("values", "expected"),
    [((1, 4), (5, 18, 2)), ((1, 2, 6), (9, 63, 3)), ((5,), (5, NAN, 1))],
)
def test_sum_values(values, expected):
    value, variance, npix = planes(c.sum(px(*values)))
    assert value[0] == expected[0] and npix[0] == expected[2]
    np.testing.assert_allclose(variance, expected[1], rtol=1e-12)  # NaN for one value, as numina


def test_sum_with_masks():
    arrays = np.array([[1.0, 2.0], [3.0, 4.0]])
    value, variance, npix = planes(c.sum(arrays, masks=[[1, 0], [0, 0]]))
    np.testing.assert_array_equal(value, [3, 6])
    np.testing.assert_array_equal(variance, [NAN, 8])
    np.testing.assert_array_equal(npix, [1, 2])


@pytest.mark.parametrize(
    ("values", "low", "high", "expected"),
    [
        ((*range(1, 11), 100), 3, 3, (14.090909090909092, 28.637229415424406, 11)),
        ((*range(1, 11), 100), 1, 1, (5.5, 0.7071067811865476, 2)),
        ((-100, 3123, 2000, 3000, 2200, 2801, 16000), 2, 1, (2170.6666666666665, 1198.162537, 6)),
        ((1, 4), 3, 3, (2.5, 2.1213203435596424, 2)),
        ((7, 7, 7), 3, 3, (7, 0, 3)),
        ((5,), 3, 3, (5, 0, 1)),
    ],
)
def test_sigmaclip_values(values, low, high, expected):
    value, std, npix = planes(c.sigmaclip(px(*values), low=low, high=high))
    np.testing.assert_allclose([value[0], std[0]], expected[:2], rtol=1e-9)
    assert npix[0] == expected[2]


@pytest.mark.parametrize(
    ("values", "nmin", "nmax", "expected"),
    [
        ((1, 1, 1, 5), 1, 1, (1, 0, 2)),
        ((1, 2, 6, 7), 1, 1, (4, 8, 2)),
        ((1, 2, 6), 1, 1, (2, 0, 1)),
        ((1, 4), 1, 1, (0, 0, 0)),  # nothing left: numina's 0, 0, 0
        ((5, 1, 9), 0, 0, (5, 16, 3)),
    ],
)
def test_minmax_values(values, nmin, nmax, expected):
    assert_result(c.minmax(px(*values), nmin=nmin, nmax=nmax), *expected)


DECADE = (0, 1, 2, 3, 4, 5, 6, 7, 9, 100)


@pytest.mark.parametrize(
    ("fclip", "kept"),
    [(0.0, DECADE), (0.1, DECADE[1:-1]), (0.2, DECADE[2:-2])],
)
def test_quantileclip_whole_trims(fclip, kept):
    assert_result(
        c.quantileclip(px(*DECADE), fclip=fclip), np.mean(kept), np.var(kept, ddof=1), len(kept)
    )


def test_quantileclip_fractional_trim_interpolates_by_the_fraction():
    # e = 1.5: halfway from the mean trimmed by 1 (4.625) to the one trimmed by 2 (4.5);
    # numina multiplies by ceil(e) = 2 and gives (4.375, -0.125, 7).
    trimmed = DECADE[1:-1]
    assert_result(
        c.quantileclip(px(*DECADE), fclip=0.15), 4.5625, np.var(trimmed, ddof=1), 10 - 1 - 2
    )


def test_quantileclip_numinas_integer_cases():
    data = [np.array([i]) for i in range(10)]
    for fclip, npix in ((0.0, 10), (0.1, 8), (0.2, 6), (0.09, 9)):
        value, _, count = planes(c.quantileclip(data, fclip=fclip))
        assert value[0] == pytest.approx(4.5) and count[0] == npix


def test_quantileclip_with_nothing_left_after_ceil_trims_floor_only():
    # numina gives 0, 0, 0 for [1, 4] (e = 0.2) and (-2, 0, 0) for [1, 2, 6] at fclip 0.35.
    assert_result(c.quantileclip(px(1, 4)), 2.5, 4.5, 2)
    assert_result(c.quantileclip(px(1, 2, 6), fclip=0.35), 2, 0, 1)


def test_quantileclip_accepts_fclip_04():
    assert_result(c.quantileclip(px(*range(10)), fclip=0.4), 4.5, np.var([4, 5], ddof=1), 2)


def test_zeros_and_scales_normalise_each_value():
    arrays = np.array([[10.0, 20.0], [30.0, 40.0]])
    result = c.mean(arrays, zeros=np.array([1.0, 2.0]), scales=np.array([2.0, 4.0]))
    assert_result(result, [5.75, 9.5], [3.125, 0], [2, 2])


def test_arrays_may_be_a_stacked_ndarray_or_a_generator():
    assert_result(c.mean(np.array([[1.0, 2.0], [3.0, 4.0]])), [2, 3], [2, 2], [2, 2])
    assert_result(c.mean(a for a in px(1, 4)), 2.5, 4.5, 2)


def test_masks_empty_sequence_means_no_masks():
    assert_result(c.mean(px(1, 4), masks=[]), 2.5, 4.5, 2)


def test_masked_nan_is_harmless():
    assert_result(c.mean(px(1, NAN, 3), masks=px(0, 1, 0)), 2, 2, 2)


def test_numinas_combine_imgs_cases():
    """numina's core/tests/test_utils.py values, through dtype='float32' like combine_imgs."""
    five = px(2000, 3000, 2200, 2800, 16000)
    for func, kw, expected in (
        (c.mean, {}, 5200),
        (c.median, {}, 2800),
        (c.minmax, {}, 2666.6667),
        (c.sigmaclip, {}, 5200),
    ):
        result = func(five, dtype="float32", **kw)
        assert result[0].dtype == np.float32
        assert result[0][0] == pytest.approx(expected, rel=1e-6)
    seven = px(-100, 3123, 2000, 3000, 2200, 2801, 16000)
    for func, kw, expected in (
        (c.minmax, {"nmin": 1, "nmax": 1}, 2624.8),
        (c.minmax, {"nmin": 2, "nmax": 2}, 2667.0),
        (c.minmax, {"nmin": 3, "nmax": 3}, 2801),
        (c.sigmaclip, {"high": 1, "low": 2}, 2170.6667),
    ):
        assert func(seven, dtype="float32", **kw)[0][0] == pytest.approx(expected, rel=1e-6)


def test_zerocombine_is_the_median_with_masks():
    arrays = px(1, 2, 6, 100)
    masks = px(0, 0, 0, 1, dtype=np.uint8)
    assert_result(c.zerocombine(arrays, masks), 2, 10.989010989010989, 3)
    normalised = np.array([1, 2, 3, 100])
    assert_result(
        c.zerocombine(arrays, None, scales=[1, 1, 2, 1]), 2.5, normalised.var(ddof=1) / 0.637, 4
    )


def test_flatcombine_blanks_non_positive_values():
    frames = [np.array([[1.0, -2.0, 0.0]]), np.array([[3.0, -4.0, 0.0]])]
    value, std, npix = planes(c.flatcombine(frames, blank=7.0))
    np.testing.assert_array_equal(value, [[2, 7, 7]])
    np.testing.assert_allclose(std, [[math.sqrt(2), 0, 0]])
    np.testing.assert_array_equal(npix, [[2, 2, 2]])


# ---- dtype and out rules ------------------------------------------------------


def test_dtype_gives_three_planes_of_that_type():
    value, variance, npix = c.mean(INPUTS, dtype="int16")
    assert value.dtype == variance.dtype == npix.dtype == np.int16
    np.testing.assert_array_equal(value, [[1, 3], [1, 0]])  # truncated toward 0
    np.testing.assert_array_equal(variance, 0)
    np.testing.assert_array_equal(npix, 2)


def test_float32_inputs_give_float64_planes():
    result = c.median([a.astype(np.float32) for a in INPUTS])
    assert [p.dtype for p in result] == [np.float64] * 3


def test_out_array_is_filled_and_its_planes_returned():
    out = np.zeros((3, 2, 2), np.int32)
    result = c.mean(INPUTS, out=out)
    assert all(r.base is out for r in result) and result is not out
    np.testing.assert_array_equal(out, [[[1, 3], [1, 0]], np.zeros((2, 2)), np.full((2, 2), 2)])


def test_out_list_items_are_returned_themselves():
    out = [np.empty((2, 2), np.float32), np.empty((2, 2)), np.empty((2, 2), np.int16)]
    result = c.median(INPUTS, out=out)
    assert all(r is o for r, o in zip(result, out, strict=True))
    np.testing.assert_allclose(result[0], [[1.5, 3.5], [1.5, -0.9]], rtol=1e-7)
    np.testing.assert_allclose(result[1], 0.5 / 0.637, rtol=1e-12)
    np.testing.assert_array_equal(result[2], 2)


def test_out_ignores_dtype():
    out = np.zeros((3, 2, 2))
    assert [p.dtype for p in c.mean(INPUTS, out=out, dtype="f4")] == [np.float64] * 3


def test_single_planes_are_used_and_the_others_allocated():
    out_pix = np.zeros((2, 2), np.int16)
    value, variance, npix = c.mean(INPUTS, out_pix=out_pix)
    assert npix is out_pix and (value.dtype, variance.dtype) == (np.float64, np.float64)
    np.testing.assert_array_equal(out_pix, 2)


def test_given_planes_win_over_dtype():
    # numina ignores out_res when dtype is given (deviation 10).
    out_res = np.zeros((2, 2))
    value, variance, _ = c.mean(INPUTS, out_res=out_res, dtype="f4")
    assert value is out_res and variance.dtype == np.float32
    np.testing.assert_allclose(out_res, [[1.5, 3.5], [1.5, -0.9]])


@pytest.mark.parametrize("layout", ["strided", "fortran", "big-endian", "3-D strided"])
def test_any_writable_plane_gets_the_right_values(layout):
    frames = [np.arange(24.0).reshape(2, 3, 4) * k for k in (1, 2, 3)]
    expected = np.arange(24.0).reshape(2, 3, 4) * 2
    if layout == "strided":
        frames = [f[0] for f in frames]
        expected = expected[0]
        out = np.zeros((3, 3, 8))[:, :, ::2]
    elif layout == "fortran":
        frames = [f[0] for f in frames]
        expected = expected[0]
        out = [np.zeros((3, 4), order="F") for _ in range(3)]
    elif layout == "big-endian":
        out = np.zeros((3, 2, 3, 4), ">f8")
    else:
        out = np.zeros((3, 2, 3, 8))[..., ::2]  # cannot be viewed as 2-D: a temporary is used
    value, variance, npix = c.mean(frames, out=out)
    np.testing.assert_array_equal(value, expected)
    np.testing.assert_allclose(variance, np.var([1, 2, 3], ddof=1) * (expected / 2) ** 2)
    np.testing.assert_array_equal(npix, 3)


def test_zero_dimensional_and_3d_inputs_keep_their_shape():
    assert_result(c.mean([np.array(1.0), np.array(4.0)]), 2.5, 4.5, 2)
    assert c.mean([np.array(1.0)])[0].shape == ()
    cube = [np.full((2, 3, 4), v) for v in (1.0, 2.0, 6.0)]
    result = c.median(cube)
    assert all(p.shape == (2, 3, 4) for p in result)
    assert_result(result, 2, 7 / 0.637, 3)


def test_nan_into_an_integer_plane_warns():
    out = np.zeros((3, 1), np.int32)
    with pytest.warns(RuntimeWarning, match="invalid value"):
        c.mean(px(NAN), out=out)
    assert out[2, 0] == 0


@pytest.mark.parametrize(
    "dtype", ["bool", "int8", "uint8", "int16", ">i2", "uint16", ">i4", "uint32", "int64",
              "uint64", "float16", "float32", ">f8", "longdouble"],
)  # fmt: skip
def test_every_real_dtype_is_read_exactly(dtype):
    values = (0, 1, 1, 0, 1) if dtype == "bool" else (3, -2, 7, 5, 1)
    if np.dtype(dtype).kind == "u":
        values = tuple(abs(v) for v in values)
    arrays = px(*values, dtype=dtype)
    expected = np.array(values, dtype=np.float64)
    assert_result(c.mean(arrays), expected.mean(), expected.var(ddof=1), 5)
    assert_result(c.median(arrays), np.median(expected), expected.var(ddof=1) / 0.637, 5)


def test_inputs_are_not_modified():
    rng = np.random.default_rng(3)
    frames = [rng.normal(size=(4, 5)) for _ in range(5)]
    masks = [rng.random((4, 5)) < 0.3 for _ in range(5)]
    copies = [f.copy() for f in frames], [m.copy() for m in masks]
    for func in (c.mean, c.median, c.sigmaclip, c.minmax, c.quantileclip, c.sum, c.flatcombine):
        func(frames, masks=masks)
    for before, after in zip(copies, (frames, masks), strict=True):
        for b, a in zip(before, after, strict=True):
            np.testing.assert_array_equal(a, b)


# ---- deviations from numina -----------------------------------------------------


def nan_stack(frames, masks):
    """Frames as a float64 stack with bad values (masked, NaN, inf) set to NaN."""
    stack = np.array(frames, dtype=np.float64)
    stack[~np.isfinite(stack) | (np.array(masks) != 0)] = np.nan
    return stack


@pytest.mark.parametrize("seed", range(4))
def test_nan_inf_and_masked_values_are_skipped(seed):
    rng = np.random.default_rng(seed)
    n, shape = 6, (5, 7)
    frames = [rng.normal(10, 2, shape) for _ in range(n)]
    masks = [(rng.random(shape) < 0.2) * rng.choice([1, -1, 0.5, NAN], shape) for _ in range(n)]
    for f in frames:
        f[rng.random(shape) < 0.1] = rng.choice([NAN, np.inf, -np.inf])
    masks[0][0, 0] = 1  # a pixel with no good value
    for f in frames[1:]:
        f[0, 0] = NAN
    stack = nan_stack(frames, masks)
    count = np.sum(np.isfinite(stack), axis=0)
    good = count > 0
    stack, count = stack[:, good], count[good]
    mean = np.nansum(stack, axis=0) / count
    s2 = np.nansum((stack - mean) ** 2, axis=0) / np.maximum(count - 1, 1)  # 0 for one value
    expected = {
        "mean": (mean, s2),
        "median": (np.nanmedian(stack, axis=0), s2 / 0.637),
        "sum": (np.nansum(stack, axis=0), np.where(count > 1, count**2 * s2, NAN)),
    }
    for name, (value, variance) in expected.items():
        result = planes(getattr(c, name)(frames, masks=masks))
        np.testing.assert_allclose(result[0][good], value, rtol=1e-12)
        np.testing.assert_allclose(result[1][good], variance, rtol=1e-12)
        np.testing.assert_array_equal(result[2][good], count)
        assert np.isnan(result[0][0, 0]) and np.isnan(result[1][0, 0])  # numina: 0, 0


@pytest.mark.parametrize(
    ("func", "expected"),
    [
        (c.mean, (2, 2, 2)),  # numina: nan, nan, 3
        (c.median, (2, 2 / 0.637, 2)),  # numina: 1 or 3, depending on the NaN's position
        (c.sum, (4, 8, 2)),
        (c.sigmaclip, (2, math.sqrt(2), 2)),
        (c.quantileclip, (2, 2, 2)),
    ],
)
def test_nan_does_not_poison(func, expected):
    assert_result(func(px(NAN, 1, 3)), *expected)
    assert_result(func(px(1, np.inf, 3)), *expected)


def test_pixel_with_no_good_value_is_nan_in_the_named_functions():
    frames = [np.array([[1.0, 2.0]]), np.array([[3.0, 4.0]])]
    masks = [np.array([[1, 0]]), np.array([[1, 0]])]
    for func in (c.mean, c.median, c.sigmaclip, c.minmax, c.quantileclip, c.sum):
        kw = {"nmin": 0, "nmax": 0} if func is c.minmax else {}
        value, variance, npix = planes(func(frames, masks=masks, **kw))
        assert np.isnan(value[0, 0]) and np.isnan(variance[0, 0]) and npix[0, 0] == 0
        assert np.isfinite(value[0, 1]) and npix[0, 1] == 2


@pytest.mark.parametrize("func", [c.mean, c.median, c.sigmaclip, c.minmax, c.quantileclip])
def test_conventions_reach_one_pixel_anywhere_in_a_large_image(func):
    """numina's variance 0 for one value, at the last pixel of an image the core
    combines in several chunks of rows, on two threads; fill-free planes elsewhere."""
    rng = np.random.default_rng(7)
    frames = list(rng.normal(100.0, 5.0, (5, 700, 300)))
    masks = [np.zeros((700, 300), np.uint8) for _ in range(5)]
    for m in masks[1:]:
        m[-1, -1] = 1  # one good value left
    kw = {"nmin": 0, "nmax": 0} if func is c.minmax else {}
    value, variance, npix = planes(func(frames, masks=masks, **kw))
    assert npix[-1, -1] == 1 and variance[-1, -1] == 0.0 and value[-1, -1] == frames[0][-1, -1]
    assert np.all(variance[:-1] > 0) and np.all(npix[:-1] >= 3)


def test_generic_combine_keeps_numinas_zero_for_no_good_value():
    # numina's test_combine_mask_average pins (0, 0, 0) for generic_combine.
    frames = [np.array([[1.0, 2.0]]), np.array([[3.0, NAN]])]
    masks = [np.array([[1, 0]]), np.array([[1, 0]])]
    for method in (c.mean_method(), c.median_method(), c.minmax_method(0, 0)):
        assert_result(c.generic_combine(method, frames, masks=masks), [[0, 2]], 0, [[0, 1]])


def test_mask_values_nonzero_are_bad():
    # numina casts to int32 and masks only > 0: it gives ([2, 3, 8], [2, 2, 0], [2, 2, 1]).
    arrays = np.array([[1.0, 2.0, 4.0], [3.0, 4.0, 8.0]])
    masks = np.array([[-1, 0.5, 2], [0, 0, 0]])
    assert_result(c.mean(arrays, masks=masks), [3, 4, 8], 0, 1)
    assert_result(
        c.mean(arrays, masks=[np.array([NAN, 0, 0]), None]), [3, 3, 6], [0, 2, 8], [1, 2, 2]
    )


def test_minmax_honours_masks():
    # numina ignores the mask and gives (26.5, 2401.67, 4).
    assert_result(c.minmax(px(1, 2, 3, 100), masks=px(0, 0, 0, 1), nmin=0, nmax=0), 2, 1, 3)
    # With masks, nmin + nmax can leave nothing at a pixel: numina's 0, 0, 0 there.
    assert_result(c.minmax(px(1, 2, 3, 100), masks=px(0, 1, 0, 1)), 0, 0, 0)


def test_minmax_leaving_nothing_is_zero_everywhere():
    data = [np.ones((2, 2))] * 4
    for nmin in range(5):
        assert_result(c.minmax(data, nmin=nmin, nmax=4 - nmin), 0, 0, 0)


def test_weights_reach_the_mean_type_methods():
    # Weighted mean 25; plane 1: n * s2_w * V2 / V1**2 with s2_w = 200, V1 = 4, V2 = 10.
    assert_result(c.mean(px(10, 30), weights=[1, 3]), 25, 250, 2)
    assert_result(c.mean(px(10, 30), weights=[2, 2]), 20, 200, 2)  # equal weights: s2
    assert_result(c.minmax(px(0, 10, 30, 99), weights=[1, 1, 3, 1]), 25, 250, 2)
    assert_result(c.quantileclip(px(0, 10, 30, 99), weights=[1, 1, 3, 1], fclip=0.25), 25, 250, 2)
    value, std, npix = planes(c.sigmaclip(px(10, 30), weights=[1, 3]))
    assert (value[0], npix[0]) == (25, 2) and std[0] == pytest.approx(math.sqrt(250))


def test_median_ignores_weights_as_numina():
    assert_result(c.median(px(10, 30, 20), weights=[1, 1, 4]), 20, 100 / 0.637, 3)


def test_sigmaclip_keeps_values_on_the_bounds():
    # [0, 2, 4]: mean 2, std 2, bounds [0, 4] at low = high = 1; numina (open bounds): (2, 0, 1).
    assert_result(c.sigmaclip(px(0, 2, 4), low=1, high=1), 2, 2, 3)


def test_sigmaclip_iterates_until_nothing_is_rejected():
    values = (9, 10, 10, 11, 10, 9, 11, 10, 40, 200)
    # at 1.5 sigma, pass 1 drops 200, pass 2 drops 40, pass 3 drops nothing
    kept = values[:-2]
    assert_result(
        c.sigmaclip(px(*values), low=1.5, high=1.5), np.mean(kept), np.std(kept, ddof=1), 8
    )


@pytest.mark.parametrize("var_dtype", [np.float32, np.float64])
@pytest.mark.parametrize("npix_dtype", [np.uint8, np.int16, np.int32, np.float32])
def test_core_std_plane_has_the_bits_of_numpys_conversion(var_dtype, npix_dtype):
    """The core's variance_as_std plane is what NumPy's in-place `variance *= npix;
    sqrt(variance)` makes of its variance plane, bit for bit: pixels with 0, 1, 2 .. 9
    values, clipped and not, for each pair of plane types."""
    from megara_dark import _core

    rng = np.random.default_rng(17)
    n, shape = 9, (24, 301)
    frames = [rng.normal(100.0, 7.0, shape).astype(np.float32) for _ in range(n)]
    for i in range(n):
        frames[i][i, :] = NAN  # row i: 8 values, ...
        frames[i][10, : 30 * (i + 1)] = NAN  # row 10: 0, 1, ..., 8 and 9 values
    frames[3][12:, ::7] += 500.0  # outliers for clipping

    def run(as_std):
        value = np.empty(shape, var_dtype)
        variance, npix = np.empty(shape, var_dtype), np.empty(shape, npix_dtype)
        _core.combine_into(
            frames, value, method="sigclip", bscale=[1.0] * n, bzero=[0.0] * n,
            blank=[None] * n, var_factor=np.linspace(1.0, 2.0, n + 1), variance=variance,
            npix=npix, centre="mean", spread="std", low=2.0, high=2.0, maxiters=n,
            variance_as_std=as_std,
        )  # fmt: skip
        return variance, npix

    variance, npix = run(False)
    expected = variance.copy()
    expected *= npix
    np.sqrt(expected, out=expected)
    std, npix_again = run(True)
    np.testing.assert_array_equal(npix_again, npix)
    assert set(np.unique(npix)) == set(range(n + 1))
    np.testing.assert_array_equal(std, expected)
    np.testing.assert_array_equal(np.signbit(std), np.signbit(expected))
    assert np.isnan(expected).sum() == 60  # the pixels with no value or one


def test_core_std_plane_needs_npix():
    from megara_dark import _core

    frame = np.ones((2, 3), np.float32)
    with pytest.raises(ValueError, match="variance_as_std needs the variance and npix planes"):
        _core.combine_into(
            [frame], np.empty((2, 3)), method="mean", bscale=[1.0], bzero=[0.0], blank=[None],
            var_factor=np.ones(2), variance=np.empty((2, 3)), variance_as_std=True,
        )  # fmt: skip


def test_shapes_must_be_equal():
    with pytest.raises(ValueError, match=r"frame 1: shape \(3,\) differs from frame 0's \(2, 3\)"):
        c.mean([np.ones((2, 3)), np.arange(3.0)])
    with pytest.raises(ValueError, match=r"frame 1: shape \(1, 3\) differs from frame 0's \(3,\)"):
        c.mean([np.ones(3), np.ones((1, 3))])
    with pytest.raises(
        ValueError, match=r"out\[0\]: shape \(2, 3\) differs from the arrays' \(3,\)"
    ):
        c.mean([np.ones(3)], out=np.zeros((3, 2, 3)))


# ---- errors ---------------------------------------------------------------------

DATA = np.array([[1, 2], [1, 2]])


@pytest.mark.parametrize(
    ("call", "error", "message"),
    [
        (lambda: c.generic_combine("dum", [DATA]), TypeError, "method must be made by mean_method"),
        (lambda: c.generic_combine(len, [DATA]), TypeError, "numina's C capsules cannot be used"),
        (lambda: c.mean([]), ValueError, "data sequence is empty"),
        (lambda: c.mean(5), TypeError, "arrays must be a sequence of arrays, got int"),
        (lambda: c.mean([DATA], masks=[DATA, DATA]), ValueError, "got 2 masks for 1 frames"),
        (
            lambda: c.mean([DATA], masks=[np.array([True, False, True])]),
            ValueError,
            r"mask 0: shape \(3,\) differs from the frames' \(2, 2\)",
        ),
        (
            lambda: c.mean([DATA], out_res=np.empty((2, 239))),
            ValueError,
            r"out_res: shape \(2, 239\) differs from the arrays' \(2, 2\)",
        ),
        (
            lambda: c.mean([DATA], out=np.zeros((3, 2, 2)), out_res=np.zeros((2, 2))),
            ValueError,
            "give either out or out_res/out_var/out_pix, not both",
        ),
        (lambda: c.mean([DATA], out=np.zeros((2, 2, 2))), ValueError, "out must hold 3 planes"),
        (lambda: c.mean([DATA], out_var=[[0, 0], [0, 0]]), TypeError, "out_var must be a NumPy"),
        (
            lambda: c.mean([DATA], scales=[[1, 2]]),
            ValueError,
            r"scales must hold one number per frame \(1\), got shape \(1, 2\)",
        ),
        (lambda: c.mean([DATA], zeros=[1, 2]), ValueError, "zeros must hold one number per frame"),
        (lambda: c.mean([DATA], weights=[1, 2]), ValueError, "weights must hold one number"),
        (lambda: c.mean([DATA], scales=[0]), ValueError, "scales must be non-zero"),
        (lambda: c.mean([DATA], zeros=[NAN]), ValueError, "zeros must be finite"),
        (lambda: c.mean([DATA, DATA], weights=[1, 0]), ValueError, "weights must be > 0"),
        (
            lambda: c.generic_combine(c.sum_method(), [DATA], weights=[1]),
            ValueError,
            "weights are not used by the sum",
        ),
        (lambda: c.minmax([DATA], nmin=-1), ValueError, "invalid parameter, nmin and nmax must be"),
        (lambda: c.minmax([], nmin=-1), ValueError, "nmin and nmax must be >= 0"),  # method first
        (lambda: c.minmax([DATA], nmin=1.5), TypeError, "nmin and nmax must be integers"),
        (
            lambda: c.minmax([DATA] * 2, nmin=2, nmax=1),
            ValueError,
            r"nmin \+ nmax = 3 is larger than the number of images \(2\)",
        ),
        (lambda: c.minmax([DATA]), ValueError, r"nmin \+ nmax = 2 is larger"),
        (lambda: c.sigmaclip([DATA], low=-1), ValueError, "invalid parameter, low must be > 0"),
        (lambda: c.sigmaclip([DATA], high=0), ValueError, "invalid parameter, high must be > 0"),
        (lambda: c.sigmaclip([DATA], low=NAN), ValueError, "low must be a finite number"),
        (
            lambda: c.quantileclip([DATA], fclip=0.41),
            ValueError,
            r"invalid parameter fclip, must be 0 <= fclip <= 0.4, got 0.41",
        ),
        (lambda: c.quantileclip([DATA], fclip=-0.01), ValueError, "invalid parameter fclip"),
        (lambda: c.quantileclip([DATA], fclip=NAN), ValueError, "fclip must be a finite number"),
        (
            lambda: c.mean([DATA.astype(complex)]),
            TypeError,
            "frame 0: dtype complex128 is not supported",
        ),
        (lambda: c.mean([np.ones((2, 0))]), ValueError, r"frame 0: empty image of shape \(2, 0\)"),
        (lambda: c.minmax([DATA], out=np.zeros((3, 2, 2))), TypeError, "unexpected keyword"),
        (lambda: c.sum([DATA], weights=[1]), TypeError, "unexpected keyword"),
    ],
)
def test_error(call, error, message):
    with pytest.raises(error, match=message):
        call()


def test_read_only_out_plane():
    out = [np.zeros((2, 2)) for _ in range(3)]
    out[1].flags.writeable = False
    with pytest.raises(ValueError, match=r"out\[1\] is read-only"):
        c.mean([DATA], out=out)


# ---- differential tests against numina ----------------------------------------------


@pytest.fixture
def numina():
    return pytest.importorskip("numina.array.combine")


def random_stack(seed, n, shape=(6, 7), with_masks=True):
    """Frames of mixed dtypes, masks that leave at least one value per pixel, zeros, scales."""
    rng = np.random.default_rng(seed)
    frames = [
        rng.normal(100, 10, shape).astype(rng.choice(["float32", "float64"]))
        if rng.random() < 0.7
        else rng.integers(0, 200, shape).astype(rng.choice(["uint16", ">i4"]))
        for _ in range(n)
    ]
    masks = None
    if with_masks:
        masks = [rng.random(shape) < 0.25 for _ in range(n)]
        masks[0] &= np.any(~np.array(masks[1:]), axis=0) if n > 1 else False
    zeros = rng.normal(0, 5, n) if rng.random() < 0.5 else None
    scales = rng.uniform(0.5, 2, n) if rng.random() < 0.5 else None
    return frames, {"masks": masks, "zeros": zeros, "scales": scales}


def assert_same(ours, theirs):
    ours, theirs = planes(ours), planes(theirs)
    np.testing.assert_allclose(ours[0], theirs[0], rtol=1e-12, atol=1e-9)
    np.testing.assert_allclose(ours[1], theirs[1], rtol=1e-10, atol=1e-9, equal_nan=True)
    np.testing.assert_array_equal(ours[2], theirs[2])


@pytest.mark.peers
@pytest.mark.parametrize("seed", range(12))
@pytest.mark.parametrize("name", ["mean", "median", "sum", "sigmaclip"])
def test_same_as_numina(numina, name, seed):
    n = 1 + seed
    frames, kw = random_stack(seed, n)
    extra = {"low": 1.5, "high": 2.0} if name == "sigmaclip" else {}
    assert_same(
        getattr(c, name)(frames, **kw, **extra), getattr(numina, name)(frames, **kw, **extra)
    )


@pytest.mark.peers
@pytest.mark.parametrize("seed", range(8))
def test_generic_combine_same_as_numina_with_all_masked_pixels(numina, seed):
    frames, kw = random_stack(seed, 3 + seed)
    kw["masks"][0][0, :] = True
    for m in kw["masks"][1:]:
        m[0, :] = True
    for method in ("mean_method", "median_method", "sum_method"):
        ours = c.generic_combine(getattr(c, method)(), frames, **kw)
        theirs = numina.generic_combine(getattr(numina.intl, method)(), frames, **kw)
        assert_same(ours, theirs)
        assert np.all(planes(ours)[2][0] == 0)


@pytest.mark.peers
@pytest.mark.parametrize(
    ("n", "nmin", "nmax"), [(2, 0, 0), (3, 1, 1), (5, 2, 0), (8, 2, 3), (9, 4, 5)]
)
def test_minmax_same_as_numina_without_masks(numina, n, nmin, nmax):
    frames, kw = random_stack(n, n, with_masks=False)
    ours = c.minmax(frames, nmin=nmin, nmax=nmax, **kw)
    assert_same(ours, numina.minmax(frames, nmin=nmin, nmax=nmax, **kw))


@pytest.mark.peers
@pytest.mark.parametrize(
    ("n", "fclip"), [(5, 0.0), (5, 0.2), (10, 0.1), (10, 0.3), (20, 0.25), (20, 0.4)]
)
def test_quantileclip_same_as_numina_for_whole_trims(numina, n, fclip):
    """Where n * fclip is an integer, numina's interpolation factor does not matter."""
    frames, kw = random_stack(n, n, with_masks=False)
    ours = c.quantileclip(frames, fclip=fclip, **kw)
    assert_same(ours, numina.quantileclip(frames, fclip=fclip, **kw))


@pytest.mark.peers
def test_weighted_mean_same_as_numinas_low_level(numina):
    """numina's public API drops weights; its low level uses them.  Same value; our
    plane 1 is n * V2 / V1**2 times numina's weighted sample variance."""
    low = pytest.importorskip("numina.array._combine")
    frames, _ = random_stack(7, 5, with_masks=False)
    weights = np.array([1.0, 2.0, 0.5, 3.0, 1.5])
    ours = planes(c.mean(frames, weights=weights))
    theirs = planes(low.generic_combine(low.mean_method(), frames, scales=None, weights=weights))
    np.testing.assert_allclose(ours[0], theirs[0], rtol=1e-12)
    factor = 5 * np.sum(weights**2) / np.sum(weights) ** 2
    np.testing.assert_allclose(ours[1], factor * theirs[1], rtol=1e-10)
    np.testing.assert_array_equal(ours[2], theirs[2])


@pytest.mark.peers
@pytest.mark.parametrize("name", ["mean", "median", "sigmaclip", "quantileclip", "sum"])
def test_out_planes_same_as_numina(numina, name):
    frames, kw = random_stack(1, 10, with_masks=False)
    ours = [np.zeros((6, 7), t) for t in ("f4", "i4", "i2")]
    theirs = [p.copy() for p in ours]
    getattr(c, name)(frames, out=ours, **kw)
    getattr(numina, name)(frames, out=theirs, **kw)
    np.testing.assert_allclose(ours[0], theirs[0], rtol=1e-6)
    # Truncation to int32 can differ by one where the two variances differ in the last ulp.
    assert np.max(np.abs(ours[1].astype(float) - theirs[1])) <= 1
    np.testing.assert_array_equal(ours[2], theirs[2])


@pytest.mark.peers
@pytest.mark.parametrize("name", sorted(SIGNATURES))
def test_signatures_match_numina(numina, name):
    assert inspect.signature(getattr(c, name)) == inspect.signature(getattr(numina, name))
