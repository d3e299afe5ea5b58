"""The raw dark set simulator (megara_dark.simulate) against its own truth."""

from __future__ import annotations

import math
import re
import uuid

import numpy as np
import pytest
from astropy.io import fits

from megara_dark.detector import (
    MEGARA,
    amplifier_views,
    classify_frame,
    make_geometry,
    overscan_offsets,
)
from megara_dark.errors import OutputError
from megara_dark.simulate import _poisson_lut, simulate_dark_set

SMALL = make_geometry(40, 64, overscan=8, middle_rows=10)  # raw 90 x 80
MEDIUM = make_geometry(200, 256, overscan=50, middle_rows=20)  # raw 420 x 356, 102400 pixels
DATE_OBS = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{2}$")


def corrected_frames(sim):
    """Per frame: raw data - overscan model - master bias (float64, trimmed), independently."""
    bias = fits.getdata(sim.master_bias).astype(np.float64)
    out = []
    for path in sim.frames:
        raw = fits.getdata(path)
        model = overscan_offsets(raw, geometry=sim.geometry, name=str(path))
        trimmed = np.vstack(amplifier_views(raw, sim.geometry)).astype(np.float64)
        out.append(trimmed - model.offsets[:, None] - bias)
    return np.array(out)


def quiet_mask(sim, frame):
    """Pixels free of hot pixels and of this frame's cosmic rays."""
    mask = np.ones(sim.geometry.trimmed_shape, dtype=bool)
    mask[sim.hot_pixels.rows, sim.hot_pixels.cols] = False
    rays = sim.cosmic_rays[frame]
    mask[rays.rows, rays.cols] = False
    return mask


def pixel_variance(sim, amp_index):
    """Expected variance of a corrected pixel, ADU^2: read noise, Poisson, quantisation."""
    gain = sim.geometry.amplifiers[amp_index].gain
    return (sim.read_noise[amp_index] ** 2 + sim.dark_electrons) / gain**2 + 1 / 12


def mean_sigma(sim, amp_index, nvalues):
    """Standard error of the mean of n corrected pixels over all frames, ADU.

    The pixels' own noise plus the overscan fit's: the fit's mean over the rows
    is the mean of the overscan block, shared by every pixel of a frame.
    """
    amp = sim.geometry.amplifiers[amp_index]
    overscan_pixels = (amp.rows.stop - amp.rows.start) * (
        amp.overscan_cols.stop - amp.overscan_cols.start
    )
    read = (sim.read_noise[amp_index] / amp.gain) ** 2 + 1 / 12
    variance = pixel_variance(sim, amp_index) / nvalues + read / overscan_pixels / len(sim.frames)
    return math.sqrt(variance)


@pytest.fixture(scope="module")
def medium(tmp_path_factory):
    return simulate_dark_set(
        tmp_path_factory.mktemp("medium"), nframes=7, seed=12345, geometry=MEDIUM
    )


@pytest.fixture(scope="module")
def medium_corrected(medium):
    return corrected_frames(medium)


# ---- files and headers --------------------------------------------------------------------------


def test_raw_frames_are_megara_raw_files(tmp_path):
    sim = simulate_dark_set(tmp_path, nframes=3, exptime=1200.0, seed=1, geometry=SMALL)
    assert [p.name for p in sim.frames] == ["dark_000.fits", "dark_001.fits", "dark_002.fits"]
    uuids, dates = set(), []
    for path in sim.frames:
        with fits.open(path, do_not_scale_image_data=True) as hdul:
            assert len(hdul) == 1
            header = hdul[0].header
            assert header["BITPIX"] == 16 and header["BZERO"] == 32768 and header["BSCALE"] == 1
            assert hdul[0].data.shape == (90, 80) and hdul[0].data.dtype == ">i2"
            stored = hdul[0].data.astype(np.int32) + 32768
        np.testing.assert_array_equal(fits.getdata(path), stored)  # astropy's uint16 view
        assert fits.getdata(path).dtype == np.uint16
        assert classify_frame(str(path), header=header, geometry=SMALL) == "raw"
        expected = {
            "INSTRUME": "MEGARA",
            "OBSMODE": "MegaraDarkImage",
            "IMAGETYP": "IMAGE_DARK",
            "EXPTIME": 1200.0,
            "DARKTIME": 1200.0,
            "INSCONF": "ca3558e3-e50d-4bbc-86bd-da50a0998a48",
            "VPH": "LR-B",
            "INSMODE": "LCB",
            "READMODE": "NORMAL",
            "RSPEED": "SLOW",
            "DETECTOR": "CCD2231-84-0-E74",
            "GAIN1": 1.73,
            "GAIN2": 1.6,
            "RDNOISE1": 3.4,
            "RDNOISE2": 3.4,
            "BUNIT": "ADU",
        }
        assert {key: header[key] for key in expected} == expected
        assert DATE_OBS.match(header["DATE-OBS"])
        assert uuid.UUID(header["UUID"]).version == 4
        uuids.add(header["UUID"])
        dates.append(header["DATE-OBS"])
    assert len(uuids) == 3
    assert dates == ["2024-03-15T20:00:00.00", "2024-03-15T20:21:00.00", "2024-03-15T20:42:00.00"]


def test_master_bias_is_a_trimmed_float32_megara_master_bias(tmp_path):
    sim = simulate_dark_set(tmp_path, nframes=1, seed=2, geometry=SMALL)
    with fits.open(sim.master_bias) as hdul:
        assert len(hdul) == 1
        header, data = hdul[0].header, hdul[0].data
    assert header["BITPIX"] == -32 and data.shape == (80, 64)
    expected = {
        "INSTRUME": "MEGARA",
        "NUMTYPE": "MasterBias",
        "OBSMODE": "MegaraBiasImage",
        "IMAGETYP": "MASTER_BIAS",
        "EXPTIME": 0.0,
        "DARKTIME": 0.0,
        "BUNIT": "ADU",
    }
    assert {key: header[key] for key in expected} == expected
    assert uuid.UUID(header["UUID"]).version == 4
    assert header["UUID"] != fits.getval(sim.frames[0], "UUID")
    assert header["DATE-OBS"] < fits.getval(sim.frames[0], "DATE-OBS")
    assert classify_frame(str(sim.master_bias), header=header, geometry=SMALL) == "trimmed"


def test_imagetyp_is_optional(tmp_path):
    sim = simulate_dark_set(tmp_path, nframes=1, seed=3, geometry=SMALL, imagetyp=False)
    assert "IMAGETYP" not in fits.getheader(sim.frames[0])


def test_never_overwrites_a_file(tmp_path):
    existing = tmp_path / "master_bias.fits"
    existing.write_bytes(b"precious")
    with pytest.raises(OutputError, match=r"master_bias.fits: exists; the simulator never "):
        simulate_dark_set(tmp_path, nframes=2, seed=4, geometry=SMALL)
    assert existing.read_bytes() == b"precious"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["master_bias.fits"]  # nothing written
    (tmp_path / "master_bias.fits").unlink()
    (tmp_path / "dark_001.fits").write_bytes(b"frame")
    with pytest.raises(OutputError, match=r"dark_001.fits: exists"):
        simulate_dark_set(tmp_path, nframes=2, seed=4, geometry=SMALL)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dark_001.fits"]


def test_a_seed_gives_identical_files_for_any_thread_count(tmp_path):
    runs = [
        simulate_dark_set(tmp_path / name, nframes=2, seed=77, geometry=MEDIUM, threads=t)
        for name, t in (("a", 1), ("b", 3))
    ]
    other = simulate_dark_set(tmp_path / "c", nframes=2, seed=78, geometry=MEDIUM)
    for i in range(2):
        first, second = (run.frames[i].read_bytes() for run in runs)
        assert first == second
        assert fits.getdata(other.frames[i]).tolist() != fits.getdata(runs[0].frames[i]).tolist()
    assert runs[0].master_bias.read_bytes() == runs[1].master_bias.read_bytes()
    assert runs[0].seed == runs[1].seed == 77


def test_without_a_seed_the_entropy_reproduces_the_set(tmp_path):
    first = simulate_dark_set(tmp_path / "a", nframes=1, geometry=SMALL)
    again = simulate_dark_set(tmp_path / "b", nframes=1, geometry=SMALL, seed=first.seed)
    assert first.frames[0].read_bytes() == again.frames[0].read_bytes()


# ---- truth --------------------------------------------------------------------------------------


@pytest.mark.parametrize("mean", [0.0, 0.5, 3.0, 47.2])
def test_poisson_table_follows_the_poisson_law(mean):
    table = _poisson_lut(mean)
    assert table.size == 65536 and np.all(np.diff(table.astype(np.int64)) >= 0)
    counts = np.bincount(table) / table.size
    k = np.arange(counts.size)
    pmf = (
        np.exp(k * math.log(mean) - mean - np.array([math.lgamma(n + 1) for n in k]))
        if mean
        else (k == 0).astype(float)
    )
    np.testing.assert_allclose(counts, pmf, rtol=0, atol=1.01 / table.size)
    assert abs(table.mean() - mean) < 2e-4


def test_hot_pixels_and_expected_master_dark(medium):
    hot, shape = medium.hot_pixels, MEDIUM.trimmed_shape
    assert hot.rows.size == max(3, shape[0] * shape[1] // 30000)
    flat = hot.rows * shape[1] + hot.cols
    assert np.unique(flat).size == flat.size
    assert np.all((hot.rate >= 0.01) & (hot.rate <= 1.0))
    expected = medium.expected_master_dark()
    assert expected.shape == shape and expected.dtype == np.float64
    amp1, amp2 = MEDIUM.amplifiers
    electrons = medium.dark_electrons
    assert abs(electrons - 3.0) < 1e-4
    normal = np.ones(shape, dtype=bool)
    normal[hot.rows, hot.cols] = False
    assert np.all(expected[amp1.trimmed_rows][normal[amp1.trimmed_rows]] == electrons / 1.73)
    assert np.all(expected[amp2.trimmed_rows][normal[amp2.trimmed_rows]] == electrons / 1.6)
    gains = np.where(hot.rows < amp2.trimmed_rows.start, 1.73, 1.6)
    np.testing.assert_allclose(
        expected[hot.rows, hot.cols], (electrons + hot.rate * 3600.0) / gains, rtol=1e-12
    )


def test_bias_levels_read_noise_and_overscan_regions(tmp_path):
    sim = simulate_dark_set(
        tmp_path,
        nframes=2,
        seed=5,
        geometry=MEDIUM,
        bias_drift=0.0,
        bias_structure=0.0,
        read_noise=(3.4, 5.0),
    )
    for path in sim.frames:
        raw = fits.getdata(path).astype(np.float64)
        for k, amp in enumerate(MEDIUM.amplifiers):
            sigma = sim.read_noise[k] / amp.gain
            overscan = raw[amp.rows, amp.overscan_cols]
            prescan = raw[amp.rows, slice(0, 50) if k == 0 else slice(306, 356)]
            half = slice(200, 210) if k == 0 else slice(210, 220)  # this amplifier's middle rows
            for region in (overscan, prescan, raw[half]):
                tolerance = 5 * math.sqrt((sigma**2 + 1 / 12) / region.size)
                assert abs(region.mean() - sim.bias_levels[k]) < tolerance
            # column differences remove any level: read noise (plus quantisation) alone
            measured = np.std(overscan[:, 1:] - overscan[:, :-1]) / math.sqrt(2)
            assert measured == pytest.approx(math.sqrt(sigma**2 + 1 / 12), rel=0.03)


def test_overscan_model_recovers_the_true_levels(medium):
    # The fit of the noisy row means is unbiased with mean squared error sigma_row^2 * 5 / n
    # (trace of the 5-parameter hat matrix): a chi-square over frames and amplifiers.
    ratios = []
    for i, path in enumerate(medium.frames):
        model = overscan_offsets(fits.getdata(path), geometry=MEDIUM)
        for k, amp in enumerate(MEDIUM.amplifiers):
            error = model.offsets[amp.trimmed_rows] - medium.overscan_levels[i, amp.trimmed_rows]
            sigma_row2 = ((medium.read_noise[k] / amp.gain) ** 2 + 1 / 12) / 50
            ratios.append(np.mean(error**2) / (sigma_row2 * 5 / error.size))
            assert np.ptp(medium.overscan_levels[i, amp.trimmed_rows]) > 2  # structure matters
    assert 0.5 < np.mean(ratios) < 1.6


def test_dark_level_and_noise_after_correction(medium, medium_corrected):
    for k, amp in enumerate(MEDIUM.amplifiers):
        values = np.concatenate(
            [
                frame[amp.trimmed_rows][quiet_mask(medium, i)[amp.trimmed_rows]]
                for i, frame in enumerate(medium_corrected)
            ]
        )
        variance = pixel_variance(medium, k)
        expected = medium.dark_electrons / amp.gain
        assert abs(values.mean() - expected) < 5 * mean_sigma(medium, k, values.size)
        assert values.var() == pytest.approx(variance, rel=0.03)


def test_poisson_dark_current_dominates_when_large(tmp_path):
    sim = simulate_dark_set(
        tmp_path, nframes=3, seed=6, geometry=MEDIUM, dark_current=0.05, exptime=2000.0
    )  # 100 e- per pixel
    corrected = corrected_frames(sim)
    for k, amp in enumerate(MEDIUM.amplifiers):
        values = np.concatenate(
            [
                frame[amp.trimmed_rows][quiet_mask(sim, i)[amp.trimmed_rows]]
                for i, frame in enumerate(corrected)
            ]
        )
        sigma = mean_sigma(sim, k, values.size)
        assert abs(values.mean() - sim.dark_electrons / amp.gain) < 5 * sigma
        assert sim.dark_electrons == pytest.approx(100.0, abs=1e-4)
        assert values.var() == pytest.approx(pixel_variance(sim, k), rel=0.03)


def test_median_of_corrected_frames_is_the_expected_master_dark(medium, medium_corrected):
    median = np.median(medium_corrected, axis=0)
    expected = medium.expected_master_dark()
    hot = medium.hot_pixels
    normal = np.ones(MEDIUM.trimmed_shape, dtype=bool)
    normal[hot.rows, hot.cols] = False
    assert abs(np.mean(median[normal] - expected[normal])) < 0.05  # ADU; noise ~0.01
    gains = np.where(hot.rows < MEDIUM.amplifiers[1].trimmed_rows.start, 1.73, 1.6)
    sigma = np.sqrt(3.4**2 + expected[hot.rows, hot.cols] * gains) / gains
    error = median[hot.rows, hot.cols] - expected[hot.rows, hot.cols]
    assert np.all(np.abs(error) < 5 * 1.25 * sigma / math.sqrt(7))
    assert np.all(expected[hot.rows, hot.cols] > 10)  # hot pixels stand out of a ~2 ADU dark


def test_cosmic_rays_are_exactly_where_the_truth_says(medium, medium_corrected):
    expected = medium.expected_master_dark()
    sigma = math.sqrt(max(pixel_variance(medium, k) for k in (0, 1)))
    hot = np.zeros(MEDIUM.trimmed_shape, dtype=bool)
    hot[medium.hot_pixels.rows, medium.hot_pixels.cols] = True
    for i, frame in enumerate(medium_corrected):
        rays = medium.cosmic_rays[i]
        assert rays.rows.size > 0
        residual = frame - expected
        gains = np.where(rays.rows < MEDIUM.amplifiers[1].trimmed_rows.start, 1.73, 1.6)
        excess = residual[rays.rows, rays.cols] - rays.electrons / gains
        assert np.all(np.abs(excess[~hot[rays.rows, rays.cols]]) < 6 * sigma)
        # no unexplained outliers elsewhere (hot pixels carry their own Poisson noise)
        assert np.max(np.abs(residual[quiet_mask(medium, i)])) < 7 * sigma


def test_master_bias_holds_what_the_overscan_leaves(tmp_path):
    sim = simulate_dark_set(tmp_path, nframes=1, seed=8, geometry=MEDIUM, bias_pattern=0.0)
    bias = fits.getdata(sim.master_bias)
    # no pattern: each row is constant, the part of the row structure the spline cannot follow
    np.testing.assert_array_equal(bias, np.repeat(bias[:, :1], bias.shape[1], axis=1))
    assert 0 < np.max(np.abs(bias)) < 0.5  # much less than the 4 ADU structure
    for amp in MEDIUM.amplifiers:  # least-squares residuals are orthogonal to constants
        assert abs(np.mean(bias[amp.trimmed_rows, 0])) < 1e-6


# ---- argument errors ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"nframes": 0}, r"nframes must be an integer >= 1, got 0"),
        ({"exptime": 0.0}, r"exptime must be a finite number of seconds > 0, got 0.0"),
        ({"exptime": math.nan}, r"exptime must be a finite number of seconds > 0, got nan"),
        ({"dark_current": -1.0}, r"dark_current must be finite and >= 0, got -1.0"),
        ({"read_noise": (3.4, -1.0)}, r"read_noise must be finite and >= 0, got -1.0"),
        ({"n_hot": 10_000}, r"n_hot must be between 0 and a tenth of the pixels, got 10000"),
        ({"hot_rates": (1.0, 0.5)}, r"hot_rates must be 0 < low <= high \(e-/s\)"),
        ({"hot_rates": (50.0, 100.0)}, r"values could reach \d+ to \d+ ADU, outside 0-65535"),
        ({"bias_levels": (1000.0, 10.0)}, r"values could reach -\d+ to \d+ ADU, outside 0-65535"),
    ],
    ids=[
        "nframes",
        "exptime-0",
        "exptime-nan",
        "dark-current",
        "read-noise",
        "n-hot",
        "hot-rates",
        "saturation",
        "below-zero",
    ],
)
def test_bad_arguments_are_refused_before_writing(tmp_path, kwargs, message):
    with pytest.raises(ValueError, match=message):
        simulate_dark_set(tmp_path, seed=9, geometry=SMALL, **kwargs)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_full_megara_frame(tmp_path):
    sim = simulate_dark_set(tmp_path, nframes=1, seed=10)
    raw = fits.getdata(sim.frames[0])
    assert raw.shape == (4212, 4196) and raw.dtype == np.uint16
    assert fits.getdata(sim.master_bias).shape == (4112, 4096)
    corrected = corrected_frames(sim)[0]
    quiet = quiet_mask(sim, 0)
    for k, amp in enumerate(MEGARA.amplifiers):
        values = corrected[amp.trimmed_rows][quiet[amp.trimmed_rows]]
        sigma = mean_sigma(sim, k, values.size)
        assert abs(values.mean() - sim.dark_electrons / amp.gain) < 5 * sigma
    assert sim.hot_pixels.rows.size == 4112 * 4096 // 30000
    assert 1000 < sum(r.rows.size for r in sim.cosmic_rays) < 20000


@pytest.mark.peers
@pytest.mark.slow
def test_megaradrp_accepts_the_set_and_its_dark_recipe_finds_the_truth(tmp_path):
    datamodel = pytest.importorskip("megaradrp.datamodel")
    dark = pytest.importorskip("megaradrp.recipes.calibration.dark")
    assembly = pytest.importorskip("numina.instrument.assembly")
    core = pytest.importorskip("numina.core")
    sim = simulate_dark_set(tmp_path, nframes=3, seed=11)
    for path in [*sim.frames, sim.master_bias]:
        with fits.open(path) as hdul:
            datamodel.check_obj_megara(hdul)  # megaradrp's schema checks (numina --validate)
    header = fits.getheader(sim.frames[0])
    store = assembly.load_paths_store(["megaradrp.instrument.configs"])
    config = assembly.assembly_instrument(
        store, header["INSCONF"], header["DATE-OBS"][:19], by_key="uuid"
    )
    config.configure_with_header(header)
    obresult = core.ObservationResult()
    obresult.instrument, obresult.mode, obresult.configuration = "MEGARA", "MegaraDarkImage", config
    obresult.frames = [core.DataFrame(filename=str(p)) for p in sim.frames]
    recipe = dark.DarkRecipe()
    inputs = recipe.create_input(
        obresult=obresult, master_bias=core.DataFrame(filename=str(sim.master_bias))
    )
    master = recipe.run(inputs).master_dark.frame[0].data.astype(np.float64)
    expected = sim.expected_master_dark()
    normal = np.ones(MEGARA.trimmed_shape, dtype=bool)
    normal[sim.hot_pixels.rows, sim.hot_pixels.cols] = False
    for k, amp in enumerate(MEGARA.amplifiers):
        error = (master - expected)[amp.trimmed_rows][normal[amp.trimmed_rows]]
        assert abs(error.mean()) < 0.03  # ADU: median-of-3 skew (~-0.01) and overscan noise
        # the median of 3 normal values has variance 0.449 sigma^2
        assert error.std() == pytest.approx(math.sqrt(0.449 * pixel_variance(sim, k)), rel=0.1)
    hot = sim.hot_pixels
    relative = (master - expected)[hot.rows, hot.cols] / expected[hot.rows, hot.cols]
    assert np.median(np.abs(relative)) < 0.05
