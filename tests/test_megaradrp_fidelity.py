"""Our DarkRecipe against megaradrp 0.22's, on raw frames made by megaradrp's own simulator.

The raw darks and the raw bias come from megaradrp's detector simulator
(``MegaraDetectorSat``, ``simulate_dark_fits``, ``simulate_bias``) and the
master bias from megaradrp's ``BiasRecipe``; both DarkRecipes then reduce the
same files.  MEGARA's geometry is fixed in megaradrp, so the frames are full
size (4212 x 4196): three darks and one bias.

Conventions compared (documented in the README):

* PRIMARY: the same median of the overscan-corrected, trimmed frames minus the
  master bias; float32 rounding of the intermediate planes differs, so the
  planes agree to a tiny fraction of the dark level, not bit for bit.
* MAP: frames used per pixel, identical (no pixel is bad in these frames).
* VARIANCE: megaradrp writes ``s2 / 0.637`` (s2: the sample variance of the
  frames, ddof = 1); ours is the variance of the median,
  ``median_efficiency(n) * s2 / n``; so ``ours = theirs * 0.637 * K(n) / n``.
"""

from __future__ import annotations

import datetime
import time

import numpy as np
import pytest
from astropy.io import fits

pytest.importorskip("megaradrp")

import numina.instrument.assembly as assembly
from conftest import files_unchanged
from megaradrp.instrument.components.detector import MegaraDetectorSat, ReadParams
from megaradrp.recipes.calibration.bias import BiasRecipe
from megaradrp.recipes.calibration.dark import DarkRecipe as MegaradrpDarkRecipe
from megaradrp.simulation.actions import simulate_bias, simulate_dark_fits
from megaradrp.simulation.factory import MegaraImageFactory
from numina.core import DataFrame, ObservationResult

from megara_dark.recipe import DarkRecipe, DarkRecipeInput
from megara_dark.variance import median_efficiency

pytestmark = pytest.mark.peers

NFRAMES = 3
EXPTIME = 3600.0
DARK_RATE = 10.0 / 3600.0  # e-/s/pixel: 10 e-/hour, about 6 ADU per exposure
GAINS = (1.73, 1.6)  # e-/ADU, MEGARA's amplifiers
READ_NOISE_ADU = 2.0  # the simulator's read noise is in ADU
BIAS_LEVELS = (1000.0, 1005.0)
SEED = 422992983  # megaradrp's own dark test
INSCONF = "ca3558e3-e50d-4bbc-86bd-da50a0998a48"  # MEGARA at GTC, 2017-2025
START = datetime.datetime(2019, 2, 21, 1, 2, 2)
NUMINA_VARIANCE_FACTOR = 0.637  # numina's median divides the sample variance by this


def _detector() -> MegaraDetectorSat:
    read = [
        ReadParams(gain=g, ron=READ_NOISE_ADU, bias=b)
        for g, b in zip(GAINS, BIAS_LEVELS, strict=True)
    ]
    return MegaraDetectorSat(
        "Detector", (4112, 4096), 50, 50, qe=1.0, dark=DARK_RATE, readpars1=read[0],
        readpars2=read[1], bins="11",
    )  # fmt: skip


def _fix_header(header: fits.Header, when: datetime.datetime) -> None:
    """A reproducible DATE-OBS (the simulator writes the current time) and the
    instrument configuration of MEGARA at GTC (for numina's profile lookup);
    every other key is the simulator's."""
    header["DATE-OBS"] = when.strftime("%Y-%m-%dT%H:%M:%S.%f")[:-4]
    header["INSCONF"] = INSCONF


def _configuration(header: fits.Header):
    store = assembly.load_paths_store(["megaradrp.instrument.configs"])
    model = assembly.assembly_instrument(
        store, header["INSCONF"], header["DATE-OBS"][:19], by_key="uuid"
    )
    model.configure_with_header(header)
    return model


def _obresult(mode: str, paths) -> ObservationResult:
    ob = ObservationResult()
    ob.instrument = "MEGARA"
    ob.mode = mode
    ob.configuration = _configuration(fits.getheader(paths[0]))
    ob.frames = [DataFrame(filename=str(p)) for p in paths]
    return ob


@pytest.fixture(scope="module")
def megaradrp_set(tmp_path_factory):
    """Raw darks and a master bias, all made by megaradrp (global RNG restored after)."""
    folder = tmp_path_factory.mktemp("megaradrp_sim")
    # megaradrp's simulator draws from NumPy's legacy global generator.
    state = np.random.get_state()  # noqa: NPY002
    np.random.seed(SEED)  # noqa: NPY002
    try:
        detector = _detector()
        factory = MegaraImageFactory()
        bias_raw = factory.create_from_instrument(
            simulate_bias(detector), "bias_0.fits", detector, mode="MegaraBiasImage"
        )
        _fix_header(bias_raw[0].header, START)
        bias_raw.writeto(folder / "bias_0.fits")
        darks = []
        for i, hdul in enumerate(simulate_dark_fits(factory, detector, EXPTIME, NFRAMES)):
            _fix_header(hdul[0].header, START + datetime.timedelta(seconds=600 + 3660 * i))
            darks.append(folder / f"dark_{i}.fits")
            hdul.writeto(darks[-1])
    finally:
        np.random.set_state(state)  # noqa: NPY002
    bias_recipe = BiasRecipe()
    bias_input = bias_recipe.create_input(
        obresult=_obresult("MegaraBiasImage", [folder / "bias_0.fits"])
    )
    result = bias_recipe(bias_input)
    master_bias = folder / "master_bias.fits"
    result.master_bias.frame.writeto(master_bias)
    return darks, master_bias


@pytest.fixture(scope="module")
def products(megaradrp_set, tmp_path_factory):
    """(megaradrp's master dark, ours) as HDU lists, from the same files."""
    darks, master_bias = megaradrp_set
    with files_unchanged([*darks, master_bias]):
        recipe = MegaradrpDarkRecipe()
        rinput = recipe.create_input(
            obresult=_obresult("MegaraDarkImage", darks),
            master_bias=DataFrame(filename=str(master_bias)),
        )
        start = time.perf_counter()
        theirs = recipe.run(rinput).master_dark.frame
        middle = time.perf_counter()
        outdir = tmp_path_factory.mktemp("ours")
        ours = DarkRecipe(outdir=outdir).run(DarkRecipeInput(darks, master_bias))
        print(f"megaradrp {middle - start:.2f} s, ours {time.perf_counter() - middle:.2f} s")
    with fits.open(ours.master_dark) as hdul:
        mine = fits.HDUList([hdu.copy() for hdu in hdul])
    return theirs, mine, ours


def test_primary_agrees_to_1e4_of_the_dark_level(products):
    theirs, mine, _ = products
    level = float(np.median(theirs[0].data))
    assert 4.0 < level < 8.0  # 10 e-/h for an hour at 1.6-1.73 e-/ADU
    diff = np.abs(mine[0].data.astype(np.float64) - theirs[0].data.astype(np.float64))
    relative = float(diff.max()) / level
    equal = np.count_nonzero(diff == 0)
    print(
        f"PRIMARY: dark level {level:.4f} ADU, max |ours - megaradrp| = {diff.max():.3g} ADU "
        f"= {relative:.3g} of the level; {equal} of {diff.size} pixels equal"
    )
    assert relative <= 1e-4
    assert mine[0].data.dtype.newbyteorder("=") == theirs[0].data.dtype == np.float32


def test_map_is_identical(products):
    theirs, mine, _ = products
    assert mine["MAP"].data.dtype.newbyteorder("=") == theirs["MAP"].data.dtype == np.int16
    np.testing.assert_array_equal(mine["MAP"].data, theirs["MAP"].data)
    assert np.all(mine["MAP"].data == NFRAMES)


def test_variance_follows_the_documented_conventions(products):
    theirs, mine, _ = products
    factor = NUMINA_VARIANCE_FACTOR * median_efficiency(NFRAMES) / NFRAMES
    expected = theirs["VARIANCE"].data.astype(np.float64) * factor
    got = mine["VARIANCE"].data.astype(np.float64)
    scale = float(np.median(expected))
    worst = float(np.max(np.abs(got - expected)))
    print(f"VARIANCE: median {scale:.4f} ADU^2, max |ours - 0.637 K(3)/3 megaradrp| = {worst:.3g}")
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5 * scale)


def test_headers_match_megaradrp(products, megaradrp_set):
    theirs, mine, _ = products
    h_theirs, h_mine = theirs[0].header, mine[0].header
    for key in ("NUM-NCOM", "NUM-BS", "NUMTYPE", "NUMRNAM", "INSTRUME", "OBSMODE", "DATE-OBS"):
        assert h_mine[key] == h_theirs[key], key
    assert h_mine["UUID"] != h_theirs["UUID"]

    def history(header, prefix):
        return [line for line in header["HISTORY"] if str(line).startswith(prefix)]

    # Images by id (no UUID in the simulator's frames: 'dateobs:'), knots and overscan medians.
    for prefix in ("Image ", "Median of col overscan", "overscan1 knots", "overscan2 knots"):
        assert history(h_mine, prefix) == history(h_theirs, prefix), prefix
    assert len(history(h_mine, "Image dateobs:")) == NFRAMES
