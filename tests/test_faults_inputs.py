"""FAULTS.md cases 1-20, the inputs: one test each, named for the case.

A refused input is refused through the Python API (small simulated frames) and through
the installed ``megara-dark`` command (full-size MEGARA frames: the command has no small
layout), each run guarded (``fault_kit.guarded``): the error type or exit code, every
problem line (file and problem) exactly, inputs byte-identical (sha256), products of an
earlier run intact, nothing else left.  Inputs the recipe accepts with a warning are
run through the API: the warning is in the report and the log, and the numbers are
those of an independent float64 reference.

Rule-by-rule tests of the same checks live beside the code: test_validate.py (header
rules), test_io.py (FITS structure), test_qc.py (the frame gate), test_recipe.py.
"""

from __future__ import annotations

import gzip
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from astropy.io import fits
from conftest import (
    RECIPE_GEOMETRY,
    files_unchanged,
    header_end,
    reference_corrected,
    reference_master_dark,
    replace_card,
    run_recipe,
    write_variant,
)
from fault_kit import (
    api_child,
    api_refuses,
    child_env,
    cli,
    cli_refuses,
    edited,
    guarded,
    new_exposure,
    primary_header,
    python_child,
)

from megara_dark import recipe as recipe_module
from megara_dark.detector import MEGARA, UNSUPPORTED_BINNING
from megara_dark.errors import InputFileError, ValidationError
from megara_dark.simulate import simulate_dark_set

TOLERANCE = 1e-4  # ADU: the recipe's float32 overscan means against the float64 reference


def as_pattern(problem) -> str:
    """A problem line as a regular expression (text is matched literally)."""
    return problem.pattern if isinstance(problem, re.Pattern) else re.escape(problem)


def validation_pattern(problems) -> str:
    """ValidationError's message for these problems."""
    head = "invalid input" if len(problems) == 1 else f"{len(problems)} problems with the inputs"
    return f"^{re.escape(head)}:\n  " + "\n  ".join(map(as_pattern, problems)) + "$"


def command_pattern(problems) -> str:
    """The command's error for these validation problems (one line each)."""
    if len(problems) == 1:
        return as_pattern(problems[0])
    head = re.escape(f"{len(problems)} problems with the inputs:")
    return head + "".join(f"\n  {as_pattern(p)}" for p in problems)


def refused_both_ways(
    build, dark_set, megara_set, tmp_path, *, error=ValidationError, options=(), **api_options
):
    """``build(sim, folder, geometry) -> (frames, bias, problems)`` makes a faulty set
    in ``folder``; the recipe (small set) and the command (full-size set) must refuse it
    naming exactly these problems (text, or re.Pattern), changing nothing: a
    ValidationError and exit 2, or an InputFileError (one problem) and exit 3."""
    for name, sim, geometry in (("api", dark_set, RECIPE_GEOMETRY), ("cli", megara_set, MEGARA)):
        folder = tmp_path / name
        folder.mkdir(parents=True)
        frames, bias, problems = build(sim, folder, geometry)
        out = folder / "out"
        if name == "api":
            match = (
                validation_pattern(problems)
                if error is ValidationError
                else f"^{as_pattern(problems[0])}$"
            )
            api_refuses(frames, bias, out, error, match, **api_options)
        else:
            args = ["run", *frames, "--bias", bias, "--out", out, "--overwrite", *options]
            cli_refuses(
                args,
                cwd=tmp_path,
                inputs=[*frames, bias],
                out=out,
                code=2 if error is ValidationError else 3,
                message=command_pattern(problems),
            )


def listing(frames, key, unit="") -> str:
    """How validate lists a key's values across the frames."""
    return "; ".join(f"{p}: {header_value(p, key)}{unit}" for p in frames)


def header_value(path, key):
    value = fits.getval(path, key)
    return value.strip() if isinstance(value, str) else value


# ---- 1-4: how many frames, which method -----------------------------------------------------


def test_fault_01_no_input_frames(dark_set, tmp_path):
    api_refuses(
        [],
        dark_set.master_bias,
        tmp_path / "api",
        ValidationError,
        "^invalid input:\n  no input frames: a dark set needs at least one exposure$",
    )
    ob = tmp_path / "ob.yaml"
    ob.write_text(
        yaml.safe_dump({"id": "d", "instrument": "MEGARA", "mode": "MegaraDarkImage", "frames": []})
    )
    problem = f"{ob}: 'frames' must be a non-empty list of file names"
    api_refuses(ob, dark_set.master_bias, tmp_path / "api", ValidationError, re.escape(problem))
    out = tmp_path / "cli"
    for args, message in (
        ([], "give dark frames or --obresult OB.yaml"),
        (["--obresult", ob], re.escape(problem)),
    ):
        cli_refuses(
            ["run", *args, "--bias", dark_set.master_bias, "--out", out, "--overwrite"],
            cwd=tmp_path,
            inputs=[ob, dark_set.master_bias],
            out=out,
            code=2,
            message=message,
        )


def test_fault_02_one_frame(dark_set, megara_set, tmp_path):
    """Refused unless allowed; allowed, the product's QC says PARTIAL and why."""

    def one(sim, folder, geometry):
        frame = sim.frames[0]
        return (
            [frame],
            sim.master_bias,
            [
                f"{frame}: only one dark frame; a master dark from one frame keeps every cosmic "
                "ray (allow it explicitly to proceed)"
            ],
        )

    refused_both_ways(one, dark_set, megara_set, tmp_path)
    result = run_recipe(
        dark_set.frames[:1], dark_set.master_bias, tmp_path / "one", allow_single=True
    )
    assert result.qc.flag == "PARTIAL"
    assert result.qc.reasons[0] == "only 1 frames combined (minimum 3)"
    assert fits.getheader(result.master_dark)["QCFLAG"] == "PARTIAL"
    assert np.all(fits.getdata(result.master_dark, "MAP") == 1)
    np.testing.assert_allclose(
        fits.getdata(result.master_dark),
        reference_corrected(dark_set.frames[:1], dark_set.master_bias)[0],
        rtol=0,
        atol=TOLERANCE,
    )


def test_fault_03_two_frames_with_a_clipping_method(dark_set, tmp_path):
    """sigclip, ccdclip and quantileclip fall back to the mean and say so (report, log);
    minmax, which would drop both values, refuses, after validation: a failure report."""
    two = dark_set.frames[:2]
    mean = reference_corrected(two, dark_set.master_bias).mean(axis=0)
    for method, params in (
        ("sigclip", {}),
        ("ccdclip", {"gain": 1.7, "rdnoise": 3.4}),
        ("quantileclip", {"fclip": 0.2}),
    ):
        result = run_recipe(
            two, dark_set.master_bias, tmp_path / method, method=method, method_params=params
        )
        warning = (
            "quantileclip with 2 frames cannot drop a value at each end; nothing is clipped "
            "and the mean of both is returned"
            if method == "quantileclip"
            else f"{method} with 2 frames cannot tell which value is the outlier; nothing is "
            "rejected and the mean of both is returned"
        )
        assert result.report_data["warnings"] == [warning]
        assert f"WARNING {warning}" in result.log.read_text()
        np.testing.assert_allclose(fits.getdata(result.master_dark), mean, atol=TOLERANCE)
        assert np.all(fits.getdata(result.master_dark, "MAP") == 2)
    problem = "minmax drops nlow + nhigh = 2 values but there are only 2 frames"
    api_refuses(
        two,
        dark_set.master_bias,
        tmp_path / "minmax",
        ValueError,
        f"^{re.escape(problem)}$",
        failure_report=re.escape(f"ValueError: {problem}"),
        method="minmax",
    )


@pytest.fixture(scope="module")
def ten_darks(tmp_path_factory):
    """Ten raw darks on the small layout, with ten times the usual cosmic rays (about
    40 pixels a frame, at known places)."""
    folder = tmp_path_factory.mktemp("ten") / "raw"
    return simulate_dark_set(
        folder, nframes=10, seed=4, geometry=RECIPE_GEOMETRY, threads=1, cosmic_rate=0.2
    )


@pytest.mark.parametrize("n", [3, 5, 10])
def test_fault_04_sigma_clipping_of_ten_frames_or_fewer(ten_darks, tmp_path, n):
    """The default sigclip (median centre, MAD spread) rejects every cosmic ray at N = 3,
    5 and 10; a mean/std centre, which cannot reject anything there, is warned about."""
    frames, bias = ten_darks.frames[:n], ten_darks.master_bias
    result = run_recipe(frames, bias, tmp_path / "out", method="sigclip")
    assert result.report_data["warnings"] == []
    data = fits.getdata(result.master_dark).astype(np.float64)
    npix = fits.getdata(result.master_dark, "MAP")
    corrected = reference_corrected(frames, bias)
    hits = np.zeros((n, *RECIPE_GEOMETRY.trimmed_shape), bool)
    for k, rays in enumerate(ten_darks.cosmic_rays[:n]):
        hits[k, rays.rows, rays.cols] = True
    assert np.count_nonzero(hits.sum(axis=0) == 1) > 10 * n
    for y, x in zip(*np.nonzero(hits.sum(axis=0) == 1), strict=True):
        others = corrected[~hits[:, y, x], y, x]
        assert npix[y, x] <= n - 1, (y, x)  # the ray is rejected
        spread = max(np.std(others, ddof=1), 1.0) / np.sqrt(n - 1)
        assert abs(data[y, x] - others.mean()) <= 4 * spread + 1.0, (y, x)

    naive = run_recipe(
        frames,
        bias,
        tmp_path / "naive",
        method="sigclip",
        method_params={"centre": "mean", "spread": "std"},
    )
    bound = (n - 1) / np.sqrt(n)  # Samuelson: below the 3-sigma limits for every N <= 10
    warning = (
        f"sigclip with a mean/std centre cannot reject any value with {n} frames (no value "
        f"can lie more than {bound:.2f} sigma from the mean); use centre='median', "
        "spread='mad' (the default)"
    )
    assert naive.report_data["warnings"] == [warning]
    assert f"WARNING {warning}" in naive.log.read_text()
    assert naive.qc.stats["nrejected_total"] == 0


# ---- 5: more frames than open files ---------------------------------------------------------

MANY, FEW = 300, 30
SMALL = (32, 64, 8, 10)  # make_geometry arguments of RECIPE_GEOMETRY
MANY_CHILD = """
import json, tracemalloc
from megara_dark.detector import make_geometry
from megara_dark.recipe import DarkRecipe, DarkRecipeInput
frames, bias, out = json.load(open({spec!r}))
peaks = []
for count in ({few}, len(frames)):
    recipe = DarkRecipe(outdir=f"{{out}}/{{count}}", geometry=make_geometry(*{geometry}),
                        nthreads=1)
    def process(*args, reduce=recipe._process):  # the memory taken to read and combine
        tracemalloc.start()
        try:
            return reduce(*args)
        finally:
            peaks.append(tracemalloc.get_traced_memory()[1])
            tracemalloc.stop()
    recipe._process = process
    recipe.run(DarkRecipeInput(frames[:count], bias))
print(json.dumps(peaks))
"""


def test_fault_05_more_frames_than_the_open_file_limit(tmp_path):
    """300 frames with ``ulimit -n`` 64: no descriptor is held per frame (each map is
    made and its file closed at once); a file is opened 4 times per run (its headers
    twice, its map, its hash) however many row blocks there are; memory does not grow
    with the frames' pixels: 270 more frames take less than a third of their raw bytes
    more (their headers, row offsets and statistics: about 3 KB a frame; a copy of their
    pixels would take all of those bytes or twice as many; peaks of 30 and 300 frames)."""
    sim = simulate_dark_set(
        tmp_path / "raw", nframes=MANY, seed=5, geometry=RECIPE_GEOMETRY, threads=1
    )
    frames, out = [str(p) for p in sim.frames], tmp_path / "out"
    spec, opens = tmp_path / "spec.json", tmp_path / "opens.json"
    spec.write_text(json.dumps([frames, str(sim.master_bias), str(out)]))
    code = MANY_CHILD.format(spec=str(spec), few=FEW, geometry=SMALL)
    with files_unchanged([*sim.frames, sim.master_bias]):
        done = python_child(
            code, cwd=tmp_path, env=child_env(tmp_path, {"nofile": 64, "opens": str(opens)})
        )
    assert done.returncode == 0, done.stderr
    products = ["master_dark.fits", "master_dark.json", "master_dark.log"]
    for count in (FEW, MANY):
        assert sorted(p.name for p in (out / str(count)).iterdir()) == products
    counted = json.loads(opens.read_text())
    assert {p: counted["opens"].get(p) for p in frames} == {
        p: 8 if i < FEW else 4 for i, p in enumerate(frames)
    }
    assert counted["most_descriptors"] < 16
    few, many = json.loads(done.stdout)
    added = (MANY - FEW) * sim.frames[0].stat().st_size
    assert many - few < added / 3, (few, many, added)
    with fits.open(out / str(MANY) / "master_dark.fits") as hdul:
        assert np.all(hdul["MAP"].data == MANY)
        reference = reference_master_dark(sim.frames, sim.master_bias)
        np.testing.assert_allclose(hdul[0].data, reference, rtol=0, atol=TOLERANCE)


# ---- 6-11: headers ----------------------------------------------------------------------------


def test_fault_06_frames_of_different_shapes(dark_set, megara_set, tmp_path, monkeypatch):
    """A frame claiming 6000 x 6000 (its data a hole in a sparse file): each file and
    shape is listed, from the headers, before any pixel is read (nothing that reads
    pixels may be called)."""

    def no_pixels(*args, **kwargs):
        raise AssertionError("a pixel was read")

    for name in ("read_raw", "verify_checksums", "sha256_file"):
        monkeypatch.setattr(recipe_module, name, no_pixels)

    def build(sim, folder, geometry):
        big = folder / "big.fits"
        header = fits.getheader(sim.frames[0])
        header.update({"NAXIS1": 6000, "NAXIS2": 6000, **new_exposure(sim.frames[0], big)})
        with open(big, "wb") as f:
            f.write(header.tostring().encode())
            f.truncate(f.tell() + 6000 * 6000 * 2)  # a hole: 72 MB that occupy no disk
        frames = [*sim.frames[:2], big]
        raw, trimmed = (
            " x ".join(map(str, s)) for s in (geometry.raw_shape, geometry.trimmed_shape)
        )
        shapes = [raw, raw, "6000 x 6000"]
        return (
            frames,
            sim.master_bias,
            [
                f"{big}: shape 6000 x 6000 (rows x columns) is neither a raw {geometry.name} frame "
                f"({raw} (rows x columns)) nor a trimmed one ({trimmed} (rows x columns))",
                "frames of different shapes: "
                + "; ".join(f"{p}: {s}" for p, s in zip(frames, shapes, strict=True)),
            ],
        )

    refused_both_ways(build, dark_set, megara_set, tmp_path)


@pytest.mark.parametrize("fault", ["wrong shape", "untrimmed", "binned"])
def test_fault_07_master_bias_of_the_wrong_shape_binning_or_trim_state(
    dark_set, megara_set, tmp_path, fault
):
    def build(sim, folder, geometry):
        rows, cols = geometry.trimmed_shape
        bias = folder / "bias.fits"
        if fault == "binned":
            edited(sim.master_bias, bias, header={"VBIN": 2})
            return sim.frames, bias, [f"{bias}: VBIN=2: {UNSUPPORTED_BINNING}"]
        shape, state = (
            ((rows - 4, cols), "the wrong shape")
            if fault == "wrong shape"
            else (geometry.raw_shape, "an untrimmed raw frame")
        )
        write_variant(sim.master_bias, bias, data=lambda d: np.zeros(shape, np.float32))
        return (
            sim.frames,
            bias,
            [
                f"{bias}: master bias is {shape[0]} x {shape[1]} ({state}); it must be trimmed "
                f"to {rows} x {cols}"
            ],
        )

    refused_both_ways(build, dark_set, megara_set, tmp_path)


def test_fault_08_exposure_and_dark_times_differ(dark_set, megara_set, tmp_path):
    """Counts: refused beyond the 1% tolerance (both keys listed); rate: each frame is
    divided by its own EXPTIME and the report says so."""

    def build(sim, folder, geometry):
        short = edited(sim.frames[0], folder / "short.fits", header={"EXPTIME": 1800.0})
        late = edited(sim.frames[1], folder / "late.fits", header={"DARKTIME": 3700.0})
        frames = [short, late, *sim.frames[2:]]
        return (
            frames,
            sim.master_bias,
            [
                "exposure times differ by more than 1% (use the rate unit to normalise each "
                f"frame): {listing(frames, 'EXPTIME', ' s')}",
                "dark times (DARKTIME) differ by more than 1%: "
                f"{listing(frames, 'DARKTIME', ' s')}",
            ],
        )

    refused_both_ways(build, dark_set, megara_set, tmp_path)
    frames = [tmp_path / "api" / "short.fits", tmp_path / "api" / "late.fits", *dark_set.frames[2:]]
    result = run_recipe(frames, dark_set.master_bias, tmp_path / "rate", unit="rate")
    exptimes = [1800.0] + [3600.0] * 4
    assert {e["path"]: e["exptime"] for e in result.report_data["inputs"]} == {
        str(p): e for p, e in zip(frames, exptimes, strict=True)
    }
    assert result.report_data["warnings"] == [
        "exposure times differ, each frame is divided by its own: "
        f"{listing(frames, 'EXPTIME', ' s')}",
        f"dark times (DARKTIME) differ by more than 1%: {listing(frames, 'DARKTIME', ' s')} "
        "(each frame is divided by its EXPTIME)",
    ]
    for warning in result.report_data["warnings"]:
        assert f"WARNING {warning}" in result.log.read_text()
    reference = reference_master_dark(frames, dark_set.master_bias, exptimes=exptimes)
    np.testing.assert_allclose(fits.getdata(result.master_dark), reference, atol=TOLERANCE / 1800)


def test_fault_09_exptime_missing_nan_not_positive_text_or_twice(dark_set, megara_set, tmp_path):
    def build(sim, folder, geometry):
        source = sim.frames[0]
        missing = edited(source, folder / "missing.fits", remove=["EXPTIME"])
        nan = edited(source, folder / "nan.fits")
        replace_card(nan, "EXPTIME", "NaN")
        zero = edited(source, folder / "zero.fits", header={"EXPTIME": 0.0})
        negative = edited(source, folder / "negative.fits", header={"EXPTIME": -30.0})
        text = edited(source, folder / "text.fits", header={"EXPTIME": "3600"})
        twice = edited(source, folder / "twice.fits", append=[("EXPTIME", 3600.0)])
        return (
            [*sim.frames, missing, nan, zero, negative, text, twice],
            sim.master_bias,
            [
                f"{missing}: EXPTIME is missing",
                f"{nan}: EXPTIME is not a number: 'NaN'",
                f"{zero}: EXPTIME must be a positive number of seconds, got 0.0",
                f"{negative}: EXPTIME must be a positive number of seconds, got -30.0",
                f"{text}: EXPTIME is not a number: '3600'",
                f"{twice}: EXPTIME appears 2 times in the header",
            ],
        )

    refused_both_ways(build, dark_set, megara_set, tmp_path)


def test_fault_10_wrong_kind_instrument_binning_or_mixed_readout(dark_set, megara_set, tmp_path):
    def build(sim, folder, geometry):
        source = sim.frames[0]
        cards = {
            "bias": {"IMAGETYP": "IMAGE_BIAS", "OBSMODE": "MegaraBiasImage"},
            "flat": {"OBSMODE": "MegaraFiberFlatImage"},
            "arc": {"IMAGETYP": "IMAGE_ARC"},
            "object": {"IMAGETYP": "OBJECT", "OBSMODE": "MegaraLcbImage"},
            "emir": {"INSTRUME": "EMIR"},
            "binned": {"VBIN": 2},
            "fast": {"READMODE": "FAST"},
            "other": {"DETECTOR": "CCD-OTHER"},
        }
        made = {k: edited(source, folder / f"{k}.fits", header=v) for k, v in cards.items()}
        frames = [*sim.frames, *made.values()]
        return (
            frames,
            sim.master_bias,
            [
                f"{made['bias']}: OBSMODE is 'MegaraBiasImage', not a dark ('MegaraDarkImage')",
                f"{made['bias']}: IMAGETYP is 'IMAGE_BIAS', not a dark (IMAGE_DARK)",
                f"{made['flat']}: OBSMODE is 'MegaraFiberFlatImage', not a dark "
                "('MegaraDarkImage')",
                f"{made['arc']}: IMAGETYP is 'IMAGE_ARC', not a dark (IMAGE_DARK)",
                f"{made['object']}: OBSMODE is 'MegaraLcbImage', not a dark ('MegaraDarkImage')",
                f"{made['object']}: IMAGETYP is 'OBJECT', not a dark (IMAGE_DARK)",
                f"{made['emir']}: INSTRUME is 'EMIR', not 'MEGARA'",
                f"{made['binned']}: VBIN=2: {UNSUPPORTED_BINNING}",
                f"frames with different READMODE: {listing(frames, 'READMODE')}",
                f"frames with different DETECTOR: {listing(frames, 'DETECTOR')}",
            ],
        )

    refused_both_ways(build, dark_set, megara_set, tmp_path)


def test_fault_11_the_same_frame_twice(dark_set, megara_set, tmp_path):
    """The same path, a symbolic link, a hard link, a copy (the same UUID)."""

    def build(sim, folder, geometry):
        f0, f1, f2 = sim.frames[:3]
        link, hard, copy = folder / "link.fits", folder / "hard.fits", folder / "copy.fits"
        link.symlink_to(f1)
        os.link(f2, hard)
        shutil.copyfile(f0, copy)
        exposure = fits.getval(f0, "UUID")
        return (
            [f0, f1, f2, f0, link, hard, copy],
            sim.master_bias,
            [
                f"{f0}: the same file as {f0} (given twice)",
                f"{copy}: the same exposure as {f0} (UUID {exposure})",
                f"{link}: the same file as {f1} (given twice)",
                f"{hard}: the same file as {f2} (given twice)",
                f"{copy}: the same exposure as {f0} (UUID {exposure})",
            ],
        )

    refused_both_ways(build, dark_set, megara_set, tmp_path)


# ---- 12-17: files -----------------------------------------------------------------------------


def test_fault_12_not_fits_empty_directory_fifo_missing(dark_set, megara_set, tmp_path):
    """Not FITS and empty: ValidationError (exit 2), both listed; a directory, a FIFO
    (never opened: no hang) or a missing file: InputFileError (exit 3)."""

    def not_images(sim, folder, geometry):
        text, empty = folder / "notes.fits", folder / "empty.fits"
        text.write_text("a text file, not FITS\n" * 200)
        empty.touch()
        return (
            [text, empty, *sim.frames[1:]],
            sim.master_bias,
            [
                f"{text}: is not a FITS file (it does not start with SIMPLE = T)",
                f"{empty}: is empty (0 bytes)",
            ],
        )

    refused_both_ways(not_images, dark_set, megara_set, tmp_path / "text")
    for kind, make, problem in (
        ("directory", Path.mkdir, "is a directory, not a file"),
        ("fifo", os.mkfifo, "is not a regular file (FIFO, socket or device)"),
        ("missing", lambda p: None, "no such file"),
    ):

        def build(sim, folder, geometry, kind=kind, make=make, problem=problem):
            path = folder / f"{kind}.fits"
            make(path)
            return [*sim.frames, path], sim.master_bias, [f"{path}: {problem}"]

        refused_both_ways(build, dark_set, megara_set, tmp_path / kind, error=InputFileError)


def as_nobody() -> dict:
    """subprocess arguments for a child that file permissions apply to: none when we are
    not root, else run as nobody (skipped when nobody cannot run this interpreter)."""
    if os.geteuid() != 0:
        return {}
    user = {"user": "nobody", "group": "nogroup"}
    try:
        subprocess.run(
            [sys.executable, "-c", "import megara_dark"],
            cwd="/",
            check=True,
            capture_output=True,
            timeout=60,
            **user,
        )
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("root reads any file, and nobody cannot run this interpreter")
    return user


def test_fault_12_unreadable_file(dark_set, tmp_path_factory):
    """Permissions (as root, who reads anything, the runs are made as nobody): the API
    and the command (the unreadable frame first: inspected first, refused at once)."""
    user = as_nobody()
    folder = tmp_path_factory.mktemp("shared")
    folder.chmod(0o777)  # others may enter, nobody may write the products
    frames = [Path(shutil.copy(p, folder)) for p in dark_set.frames]
    bias = Path(shutil.copy(dark_set.master_bias, folder))
    secret = Path(shutil.copy(frames[0], folder / "secret.fits"))
    secret.chmod(0)
    problem = f"{secret}: cannot be read: permission denied"
    for out in (folder / "api", folder / "cli"):
        out.mkdir(mode=0o777)
        out.chmod(0o777)
    with guarded([*frames, bias], folder / "api"):
        got = api_child([secret, *frames[1:]], bias, folder / "api", SMALL, cwd=folder, popen=user)
    assert got == {"error": "InputFileError", "message": problem}
    cli_refuses(
        ["run", secret, *frames[1:], "--bias", bias, "--out", folder / "cli", "--overwrite"],
        cwd=folder,
        inputs=[*frames, bias],
        out=folder / "cli",
        code=3,
        message=re.escape(problem),
        **user,
    )


def test_fault_13_truncated_data_or_naxis_beyond_the_file(dark_set, megara_set, tmp_path):
    """An error, not a warning, from the headers and the file size."""

    def build(sim, folder, geometry):
        data = sim.frames[0].read_bytes()
        _, offset = primary_header(sim.frames[0])
        short = folder / "short.fits"
        short.write_bytes(data[: offset + 5000])
        rows, cols = geometry.raw_shape
        tall = edited(sim.frames[0], folder / "tall.fits", header={"NAXIS2": rows + 100})
        _, tall_offset = primary_header(tall)
        return (
            [short, tall, *sim.frames[1:]],
            sim.master_bias,
            [
                f"{short}: is truncated: HDU 0 needs {rows * cols * 2} bytes of data after byte "
                f"{offset}, the file has 5000",
                f"{tall}: is truncated: HDU 0 needs {(rows + 100) * cols * 2} bytes of data after "
                f"byte {tall_offset}, the file has {tall.stat().st_size - tall_offset}",
            ],
        )

    refused_both_ways(build, dark_set, megara_set, tmp_path)


def test_fault_14_corrupt_header(dark_set, megara_set, tmp_path):
    """No END card, an invalid BITPIX, a header block 80 bytes short, NULs for blanks."""

    def build(sim, folder, geometry):
        data = sim.frames[0].read_bytes()
        end = header_end(data)
        _, offset = primary_header(sim.frames[0])
        variants = {
            "noend": data[: end - 80] + b" " * 80 + data[end:],
            "bitpix": data.replace(
                b"BITPIX  =                   16", b"BITPIX  =                   17", 1
            ),
            "short": data[:end] + data[end + 80 :],
            "nuls": data[:end] + b"\0" * (offset - end) + data[offset:],
        }
        paths = {k: folder / f"{k}.fits" for k in variants}
        for k, v in variants.items():
            paths[k].write_bytes(v)
        unpadded = "header is not padded with blanks to 2880 bytes after END (its data would "
        unpadded += "be read from the wrong place)"
        return (
            [*paths.values(), *sim.frames[1:]],
            sim.master_bias,
            [
                re.compile(
                    f"{re.escape(str(paths['noend']))}: corrupt FITS header in HDU 0: .*END.*"
                ),
                f"{paths['bitpix']}: HDU 0 has an invalid BITPIX 17",
                f"{paths['short']}: HDU 0 {unpadded}",
                f"{paths['nuls']}: HDU 0 {unpadded}",
            ],
        )

    refused_both_ways(build, dark_set, megara_set, tmp_path)


def damaged_checksum(source, target) -> Path:
    """A copy with CHECKSUM/DATASUM cards, then one data byte changed."""
    with fits.open(source) as hdul:
        hdul.writeto(target, checksum=True)
    _, offset = primary_header(target)
    data = bytearray(Path(target).read_bytes())
    data[offset + 3000] ^= 0x01
    Path(target).write_bytes(bytes(data))
    return Path(target)


def test_fault_15_checksum_mismatch(dark_set, megara_set, tmp_path):
    """An error with --strict; otherwise a warning, on stderr, in the log and the report
    (the API's warning: test_io.py::test_checksum_mismatch_is_a_warning)."""

    def build(sim, folder, geometry):
        path = damaged_checksum(sim.frames[0], folder / "sum.fits")
        return (
            [path, *sim.frames[1:]],
            sim.master_bias,
            [f"{path}: Checksum verification failed for HDU ('PRIMARY', 1)."],
        )

    refused_both_ways(build, dark_set, megara_set, tmp_path, options=["--strict"], strict=True)
    path = tmp_path / "cli" / "sum.fits"
    out = tmp_path / "cli" / "lenient"
    done = cli(
        "run",
        path,
        *megara_set.frames[1:],
        "--bias",
        megara_set.master_bias,
        "--out",
        out,
        "--no-png",
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr
    warnings = [
        f"{path}: Checksum verification failed for HDU ('PRIMARY', 1).",
        f"{path}: Datasum verification failed for HDU ('PRIMARY', 1).",
    ]
    report = json.loads((out / "master_dark.json").read_text())
    assert report["warnings"] == warnings
    for warning in warnings:
        assert re.search(rf"WARNING +{re.escape(warning)}$", done.stderr, re.MULTILINE)
        assert f"WARNING {warning}" in (out / "master_dark.log").read_text()


def stored(source, target, dtype, bscale=1.0, bzero=0.0, edit=None) -> Path:
    """A copy storing (physical - bzero) / bscale as ``dtype`` (FITS BSCALE/BZERO);
    edit(stored, header) may change them before writing."""
    with fits.open(source) as hdul:
        header = hdul[0].header.copy()
        values = (hdul[0].data.astype(np.float64) - bzero) / bscale
    if np.dtype(dtype).kind in "iu":
        info = np.iinfo(dtype)
        assert info.min <= values.min() and values.max() <= info.max  # no wrap-around
        values = np.rint(values)
    values = values.astype(dtype)
    if edit is not None:
        edit(values, header)
    for key in ("BZERO", "BSCALE"):
        header.remove(key, ignore_missing=True)
    hdu = fits.PrimaryHDU(values, header=header)
    hdu.header.update({"BSCALE": bscale, "BZERO": bzero})  # after the data: kept as given
    hdu.writeto(target)
    return Path(target)


def test_fault_16_every_stored_type_in_one_set(dark_set, tmp_path):
    """uint16 (int16 + BZERO 32768) with BLANK, int16 and int32 with BSCALE/BZERO,
    float32, float64 with BSCALE, all big-endian as FITS: the float64 reference."""
    amp = RECIPE_GEOMETRY.amplifiers[1]
    blank_at, trimmed_at = (
        (amp.rows.start + 5, amp.data_cols.start + 7),
        (amp.trimmed_rows.start + 5, 7),
    )

    def with_blank(values, header):
        values[blank_at] = -32768
        header["BLANK"] = -32768

    f = dark_set.frames
    frames = [
        stored(f[0], tmp_path / "uint16.fits", np.int16, 1.0, 32768.0, with_blank),
        stored(f[1], tmp_path / "int16.fits", np.int16, 4.0, 32768.0),
        stored(f[2], tmp_path / "int32.fits", np.int32, 0.5, -7.0),
        stored(f[3], tmp_path / "float32.fits", np.float32),
        stored(f[4], tmp_path / "float64.fits", np.float64, 2.0, 100.0),
    ]
    assert [fits.getval(p, "BITPIX") for p in frames] == [16, 16, 32, -32, -64]
    result = run_recipe(frames, dark_set.master_bias, tmp_path / "out")
    reference = reference_master_dark(frames, dark_set.master_bias)  # BLANK as NaN
    np.testing.assert_allclose(fits.getdata(result.master_dark), reference, rtol=0, atol=TOLERANCE)
    npix = fits.getdata(result.master_dark, "MAP")
    assert npix[trimmed_at] == 4 and np.count_nonzero(npix != 5) == 1
    assert [(e["dtype"], e["bscale"], e["bzero"]) for e in result.report_data["inputs"]] == [
        ("int16", 1.0, 32768.0),
        ("int16", 4.0, 32768.0),
        ("int32", 0.5, -7.0),
        ("float32", 1.0, 0.0),
        ("float64", 2.0, 100.0),
    ]


def gzipped(source, target) -> Path:
    Path(target).write_bytes(gzip.compress(Path(source).read_bytes(), compresslevel=1))
    return Path(target)


def tile_compressed(source, target) -> Path:
    """A .fz file: an empty primary HDU and the image in a compressed extension."""
    with fits.open(source) as hdul:
        header = hdul[0].header.copy()
        fits.HDUList(
            [fits.PrimaryHDU(header=header), fits.CompImageHDU(hdul[0].data, header=header)]
        ).writeto(target)
    return Path(target)


def extensions(source, target, names) -> Path:
    """An empty primary HDU and the image in an extension per name."""
    with fits.open(source) as hdul:
        header, data = hdul[0].header.copy(), hdul[0].data
    hdus = [fits.PrimaryHDU(header=header)] + [fits.ImageHDU(data, name=n) for n in names]
    fits.HDUList(hdus).writeto(target)
    return Path(target)


def test_fault_17_compressed_and_multi_extension_files(dark_set, megara_set, tmp_path):
    """.fits.gz, .fz (data in extension 1) and one image extension: the plain set's master,
    bit for bit; a truncated .gz or .fz and several images (no HDU named): refused."""
    f = dark_set.frames
    plain = run_recipe(f, dark_set.master_bias, tmp_path / "plain")
    accepted = [
        gzipped(f[0], tmp_path / "a.fits.gz"),
        tile_compressed(f[1], tmp_path / "b.fits.fz"),
        extensions(f[2], tmp_path / "c.fits", ["DATA"]),
        *f[3:],
    ]
    result = run_recipe(accepted, dark_set.master_bias, tmp_path / "packed")
    for name in ("PRIMARY", "VARIANCE", "MAP"):
        assert (
            fits.getdata(result.master_dark, name).tobytes()
            == fits.getdata(plain.master_dark, name).tobytes()
        ), name

    def build(sim, folder, geometry):
        cut_gz = folder / "cut.fits.gz"
        archive = gzipped(sim.frames[0], folder / "whole.gz").read_bytes()
        cut_gz.write_bytes(archive[: len(archive) // 2])
        cut_fz = folder / "cut.fits.fz"
        whole = tile_compressed(sim.frames[1], folder / "whole.fz")
        with fits.open(whole) as hdul:
            data_start = hdul.fileinfo(1)["datLoc"]
        cut_fz.write_bytes(whole.read_bytes()[: data_start + 100])  # 100 bytes of tiles
        mef = extensions(sim.frames[2], folder / "mef.fits", ["AMP", "COPY"])
        return (
            [cut_gz, cut_fz, mef],
            sim.master_bias,
            [
                re.compile(f"{re.escape(str(cut_gz))}: cannot be decompressed or parsed: .+"),
                re.compile(
                    f"{re.escape(str(cut_fz))}: is truncated: HDU 1 needs \\d+ bytes of data "
                    "after byte \\d+, the file has \\d+"
                ),
                f"{mef}: holds 2 images (AMP, COPY): name the HDU to use",
            ],
        )

    refused_both_ways(build, dark_set, megara_set, tmp_path)


# ---- 18-20: pixels and frames -----------------------------------------------------------------


def spoiled(source, target, spots) -> Path:
    """A float32 copy with values set at raw (row, column) spots: {spot: value}."""

    def spoil(values):
        for spot, value in spots.items():
            values[spot] = value
        return values.astype(np.float32)

    return write_variant(source, target, data=spoil, header=new_exposure(source, target))


def test_fault_18_nan_and_inf_pixels(dark_set, tmp_path):
    """NaN, +inf and -inf in the data and the overscan of float frames: left out (the
    overscan's from its row means), counted in MAP and QC, never in the product."""
    amp1, amp2 = RECIPE_GEOMETRY.amplifiers
    data_spots = [
        (amp1.rows.start + 3, amp1.data_cols.start + 4),
        (amp2.rows.start + 10, amp2.data_cols.start + 20),
        (7, amp1.data_cols.start),
    ]
    trimmed = [(3, 4), (amp2.trimmed_rows.start + 10, 20), (7, 0)]
    scan = (amp2.rows.start + 2, amp2.overscan_cols.start + 1)
    values = [np.nan, np.inf, -np.inf]
    frames = [
        spoiled(p, tmp_path / f"s{i}.fits", {data_spots[i]: values[i]} if i < 3 else {})
        for i, p in enumerate(dark_set.frames)
    ]
    frames[3] = spoiled(dark_set.frames[3], tmp_path / "scan.fits", {scan: np.inf})
    result = run_recipe(frames, dark_set.master_bias, tmp_path / "out")
    with fits.open(result.master_dark) as hdul:
        data, variance, npix = (hdul[k].data for k in ("PRIMARY", "VARIANCE", "MAP"))
    assert np.all(np.isfinite(data)) and np.all(np.isfinite(variance))
    assert sorted(map(tuple, np.argwhere(npix == 4))) == sorted(trimmed)
    assert np.count_nonzero(npix == 5) == npix.size - 3
    assert result.qc.stats["partial_fraction"] == 3 / npix.size
    assert (result.qc.stats["nan_count"], result.qc.flag) == (0, "GOOD")
    # The reference leaves the overscan's NaN out of its row mean: inf is treated alike.
    (tmp_path / "ref").mkdir()
    nan_scan = spoiled(dark_set.frames[3], tmp_path / "ref" / "scan.fits", {scan: np.nan})
    corrected = reference_corrected([*frames[:3], nan_scan, frames[4]], dark_set.master_bias)
    corrected[~np.isfinite(corrected)] = np.nan
    np.testing.assert_allclose(data, np.nanmedian(corrected, axis=0), rtol=0, atol=TOLERANCE)


def test_fault_19_a_pixel_bad_in_every_frame(dark_set, tmp_path):
    """NaN in every frame at one pixel, NaN in the master bias at another: the master is
    NaN there (the documented fill), MAP 0, counted in QC (PARTIAL, with the reason).
    A pixel rejected in every frame cannot happen: a clipping pass that would reject
    every value keeps the previous survivors (test_combine.py)."""
    amp1 = RECIPE_GEOMETRY.amplifiers[0]
    spot = (amp1.rows.start + 6, amp1.data_cols.start + 9)
    frames = [
        spoiled(p, tmp_path / f"n{i}.fits", {spot: np.nan}) for i, p in enumerate(dark_set.frames)
    ]
    bias = write_variant(
        dark_set.master_bias,
        tmp_path / "bias.fits",
        data=lambda d: np.where(np.indices(d.shape).sum(0) == 0, np.nan, d),
    )
    holes = {(6, 9), (0, 0)}
    result = run_recipe(frames, bias, tmp_path / "out")
    with fits.open(result.master_dark) as hdul:
        data, npix, header = hdul[0].data, hdul["MAP"].data, hdul[0].header
    assert set(map(tuple, np.argwhere(np.isnan(data)))) == holes
    assert set(map(tuple, np.argwhere(npix == 0))) == holes
    fraction = len(holes) / data.size
    assert result.qc.stats["nan_count"] == header["QCNAN"] == len(holes)
    assert result.qc.flag == "PARTIAL"
    assert f"{100 * fraction:.3g}% pixels with no value (PARTIAL above 0.01%)" in result.qc.reasons
    report = json.loads(result.report.read_text())
    assert report["qc"]["stats"]["nan_count"] == len(holes)


def test_fault_20_outlier_frames_left_out_with_a_reason(dark_set, tmp_path):
    """A light leak, a saturated frame and an all-zero readout among five good frames:
    each left out by the gate with its reason (log, report, header); the master is the
    good frames' (the all-zero frame was caught only by chance before: see the report)."""
    amps = RECIPE_GEOMETRY.amplifiers

    def on_data(change):
        def edit(values):
            for amp in amps:
                values[amp.rows, amp.data_cols] = change(values[amp.rows, amp.data_cols])
            return np.clip(np.rint(values), 0, 65535).astype(np.uint16)

        return edit

    source = dark_set.frames[0]
    bad = {
        "leak": on_data(lambda v: v + 30.0),
        "saturated": on_data(lambda v: np.full_like(v, 65535.0)),
        "zeros": lambda v: np.zeros(v.shape, np.uint16),
    }
    made = {
        k: write_variant(
            source,
            tmp_path / f"{k}.fits",
            data=edit,
            header=new_exposure(source, tmp_path / f"{k}.fits"),
        )
        for k, edit in bad.items()
    }
    frames = [*dark_set.frames, *made.values()]
    result = run_recipe(frames, dark_set.master_bias, tmp_path / "out")
    reasons = {Path(s.path).stem: s.reason for s in result.qc.frames if not s.passed}
    assert reasons.keys() == made.keys()
    leak = re.fullmatch(
        r"median (\S+) ADU is (\S+) ADU above the set's \S+ \(limit \S+\): "
        r"light leak or wrong exposure\?",
        reasons["leak"],
    )
    assert leak and 25 < float(leak[2]) < 35, reasons["leak"]
    assert reasons["saturated"] == "100.0% of pixels saturated"
    assert reasons["zeros"] == "constant frame (every sampled pixel equal): readout failure"
    assert (result.qc.flag, result.qc.reasons) == (
        "PARTIAL",
        ["3 of 8 frames failed the gate and were left out"],
    )
    log = result.log.read_text()
    for name, path in made.items():
        warning = f"{path}: left out: {reasons[name]}"
        assert warning in result.report_data["warnings"] and f"WARNING {warning}" in log
    assert [e["used"] for e in result.report_data["inputs"]] == [True] * 5 + [False] * 3
    np.testing.assert_allclose(
        fits.getdata(result.master_dark),
        reference_master_dark(dark_set.frames, dark_set.master_bias),
        rtol=0,
        atol=TOLERANCE,
    )
    assert np.all(fits.getdata(result.master_dark, "MAP") == 5)
