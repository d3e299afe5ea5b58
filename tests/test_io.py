"""FITS inputs, observation results and staged outputs (megara_dark.io), mostly through DarkRecipe.

Broken files (not FITS, empty, a directory, a FIFO, truncated, corrupt headers...),
compressed and multi-extension files, every stored type against a float64 reference,
CHECKSUM mismatches and numina observation-result YAML files: each run checks that the
inputs stay byte-identical and no temp file is left (``run_recipe``).
"""

from __future__ import annotations

import gzip
import hashlib
import os
import re
import tempfile
import threading
from pathlib import Path

import numpy as np
import pytest
import yaml
from astropy.io import fits
from conftest import (
    RECIPE_GEOMETRY,
    esc,
    file_sha256,
    header_end,
    reference_master_dark,
    run_recipe,
    write_variant,
)

from megara_dark import digest
from megara_dark import io as io_module
from megara_dark.errors import InputFileError, OutputError, ValidationError
from megara_dark.io import (
    StagedOutputs,
    check_not_an_input,
    check_output_folder,
    inspect_fits,
    read_raw,
    sha256_file,
)

TOLERANCE = 1e-4  # ADU: the recipe's float32 overscan means against the float64 reference


def with_first(dark_set, path) -> list:
    return [path, *dark_set.frames[1:]]


def master(result) -> np.ndarray:
    return fits.getdata(result.master_dark).astype(np.float64)


# ---- files that are not usable FITS images ------------------------------------------------------


def test_not_fits(dark_set, tmp_path):
    path = tmp_path / "notes.fits"
    path.write_text("a text file, not FITS " * 200)
    with pytest.raises(ValidationError, match=f"{esc(path)}: is not a FITS file"):
        run_recipe(with_first(dark_set, path), dark_set.master_bias, tmp_path / "out")


def test_empty_file(dark_set, tmp_path):
    path = tmp_path / "empty.fits"
    path.touch()
    with pytest.raises(ValidationError, match=f"{esc(path)}: is empty \\(0 bytes\\)"):
        run_recipe(with_first(dark_set, path), dark_set.master_bias, tmp_path / "out")


def test_missing_file(dark_set, tmp_path):
    path = tmp_path / "nowhere.fits"
    with pytest.raises(InputFileError, match=f"{esc(path)}: no such file"):
        run_recipe(with_first(dark_set, path), dark_set.master_bias, tmp_path / "out")


def test_directory(dark_set, tmp_path):
    path = tmp_path / "folder.fits"
    path.mkdir()
    with pytest.raises(InputFileError, match=f"{esc(path)}: is a directory, not a file"):
        run_recipe(with_first(dark_set, path), dark_set.master_bias, tmp_path / "out")


def test_fifo_does_not_hang(dark_set, tmp_path):
    path = tmp_path / "pipe.fits"
    os.mkfifo(path)
    outcome = {}

    def attempt():
        try:
            run_recipe(with_first(dark_set, path), dark_set.master_bias, tmp_path / "out")
        except Exception as exc:
            outcome["error"] = exc

    worker = threading.Thread(target=attempt, daemon=True)
    worker.start()
    worker.join(timeout=20)
    if worker.is_alive():  # release a reader blocked on the FIFO, then fail
        os.close(os.open(path, os.O_WRONLY | os.O_NONBLOCK))
        worker.join(timeout=5)
        pytest.fail("the recipe blocked on a FIFO")
    assert isinstance(outcome.get("error"), InputFileError)
    assert str(outcome["error"]) == f"{path}: is not a regular file (FIFO, socket or device)"


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads any file")
def test_unreadable_file(dark_set, tmp_path):
    path = write_variant(dark_set.frames[0], tmp_path / "secret.fits")
    path.chmod(0)
    try:
        with pytest.raises(InputFileError, match=f"{esc(path)}: cannot be read: permission denied"):
            run_recipe(with_first(dark_set, path), dark_set.master_bias, tmp_path / "out")
    finally:
        path.chmod(0o644)


def damaged(dark_set, tmp_path, name, edit) -> Path:
    """A copy of the first frame whose bytes went through ``edit``."""
    path = tmp_path / name
    path.write_bytes(edit(dark_set.frames[0].read_bytes()))
    return path


def test_truncated_data(dark_set, tmp_path):
    path = damaged(dark_set, tmp_path, "short.fits", lambda b: b[: 2880 + 5000])
    with pytest.raises(
        ValidationError,
        match=f"{esc(path)}: is truncated: HDU 0 needs 11840 bytes of data after byte 2880, "
        "the file has 5000",
    ):
        run_recipe(with_first(dark_set, path), dark_set.master_bias, tmp_path / "out")


def test_naxis_larger_than_the_file(dark_set, tmp_path):
    path = damaged(
        dark_set,
        tmp_path,
        "tall.fits",
        lambda b: b.replace(b"NAXIS2  =                   74", b"NAXIS2  =                 7400"),
    )
    assert path.stat().st_size == dark_set.frames[0].stat().st_size
    with pytest.raises(
        ValidationError, match=f"{esc(path)}: is truncated: HDU 0 needs 1184000 bytes of data"
    ):
        run_recipe(with_first(dark_set, path), dark_set.master_bias, tmp_path / "out")


def test_missing_end_card(dark_set, tmp_path):
    def blank_end(data):
        end = header_end(data)
        return data[: end - 80] + b" " * 80 + data[end:]

    path = damaged(dark_set, tmp_path, "noend.fits", blank_end)
    with pytest.raises(
        ValidationError, match=f"{esc(path)}: corrupt FITS header in HDU 0: .*END card"
    ):
        run_recipe(with_first(dark_set, path), dark_set.master_bias, tmp_path / "out")


@pytest.mark.parametrize("bitpix", [b"17", b"24", b"-16"])
def test_invalid_bitpix(dark_set, tmp_path, bitpix):
    path = damaged(
        dark_set,
        tmp_path,
        "bitpix.fits",
        lambda b: b.replace(b"BITPIX  =                   16", b"BITPIX  = " + bitpix.rjust(20)),
    )
    with pytest.raises(
        ValidationError, match=f"{esc(path)}: HDU 0 has an invalid BITPIX {bitpix.decode()}$"
    ):
        run_recipe(with_first(dark_set, path), dark_set.master_bias, tmp_path / "out")


def test_header_not_padded(dark_set, tmp_path):
    """The header block is 80 bytes short: the data would be read 80 bytes off."""

    def unpad(data):
        end = header_end(data)
        return data[:end] + data[end + 80 :]

    path = damaged(dark_set, tmp_path, "unpadded.fits", unpad)
    with pytest.raises(
        ValidationError,
        match=f"{esc(path)}: HDU 0 header is not padded with blanks to 2880 bytes after END",
    ):
        run_recipe(with_first(dark_set, path), dark_set.master_bias, tmp_path / "out")


def test_unparsable_card(dark_set, tmp_path):
    """A card astropy cannot parse becomes text: an error naming the key, not a crash."""
    path = damaged(
        dark_set,
        tmp_path,
        "badcard.fits",
        lambda b: b.replace(b"OBSMODE = 'MegaraDarkImage'", b"OBSMODE =  MegaraDarkImage'"),
    )
    with pytest.raises(ValidationError, match=f"{esc(path)}: OBSMODE is .*, not a dark"):
        run_recipe(with_first(dark_set, path), dark_set.master_bias, tmp_path / "out")


# ---- CHECKSUM -----------------------------------------------------------------------------------


@pytest.fixture
def bad_checksum(dark_set, tmp_path) -> Path:
    """The first frame with CHECKSUM/DATASUM, then one data byte changed."""
    path = tmp_path / "sum.fits"
    with fits.open(dark_set.frames[0]) as hdul:
        hdul.writeto(path, checksum=True)
    data = bytearray(path.read_bytes())
    data[2880 + 3000] ^= 0x01
    path.write_bytes(bytes(data))
    return path


def test_checksum_mismatch_is_a_warning(dark_set, tmp_path, bad_checksum):
    result = run_recipe(with_first(dark_set, bad_checksum), dark_set.master_bias, tmp_path / "out")
    warnings = [w for w in result.report_data["warnings"] if w.startswith(f"{bad_checksum}: ")]
    assert warnings == [
        f"{bad_checksum}: Checksum verification failed for HDU ('PRIMARY', 1).",
        f"{bad_checksum}: Datasum verification failed for HDU ('PRIMARY', 1).",
    ]
    assert f"WARNING {bad_checksum}: Datasum verification failed" in result.log.read_text()


def test_checksum_mismatch_is_an_error_when_strict(dark_set, tmp_path, bad_checksum):
    with pytest.raises(ValidationError, match=f"{esc(bad_checksum)}: .*verification failed"):
        run_recipe(
            with_first(dark_set, bad_checksum), dark_set.master_bias, tmp_path / "out", strict=True
        )
    assert not (tmp_path / "out" / "master_dark.fits").exists()


def test_good_checksums_pass_when_strict(dark_set, tmp_path):
    frames = []
    for i, source in enumerate(dark_set.frames):
        frames.append(tmp_path / f"summed_{i}.fits")
        with fits.open(source) as hdul:
            hdul.writeto(frames[-1], checksum=True)
    result = run_recipe(frames, dark_set.master_bias, tmp_path / "out", strict=True)
    assert result.report_data["warnings"] == []


# ---- compressed and multi-extension files -------------------------------------------------------


def test_gzip_input_gives_the_same_master(dark_set, tmp_path):
    plain = run_recipe(dark_set.frames, dark_set.master_bias, tmp_path / "plain")
    zipped = []
    for source in dark_set.frames:
        zipped.append(tmp_path / f"{source.name}.gz")
        zipped[-1].write_bytes(gzip.compress(source.read_bytes()))
    result = run_recipe(zipped, dark_set.master_bias, tmp_path / "gz")
    np.testing.assert_array_equal(master(result), master(plain))
    assert [entry["sha256"] for entry in result.report_data["inputs"]] == [
        file_sha256(p) for p in zipped
    ]


def test_tile_compressed_input_gives_the_same_master(dark_set, tmp_path):
    plain = run_recipe(dark_set.frames, dark_set.master_bias, tmp_path / "plain")
    packed = []
    for source in dark_set.frames:
        packed.append(tmp_path / f"{source.stem}.fits.fz")
        with fits.open(source) as hdul:
            header = hdul[0].header.copy()
            fits.HDUList(
                [fits.PrimaryHDU(header=header), fits.CompImageHDU(hdul[0].data, header=header)]
            ).writeto(packed[-1])
    result = run_recipe(packed, dark_set.master_bias, tmp_path / "fz")
    np.testing.assert_array_equal(master(result), master(plain))


def test_truncated_gzip(dark_set, tmp_path):
    path = tmp_path / "cut.fits.gz"
    archive = gzip.compress(dark_set.frames[0].read_bytes())
    path.write_bytes(archive[: len(archive) // 2])
    with pytest.raises(ValidationError, match=f"{esc(path)}: cannot be decompressed or parsed"):
        run_recipe(with_first(dark_set, path), dark_set.master_bias, tmp_path / "out")


def extensions(source, target, names) -> Path:
    with fits.open(source) as hdul:
        header, data = hdul[0].header.copy(), hdul[0].data
    hdus = [fits.PrimaryHDU(header=header)] + [fits.ImageHDU(data, name=n) for n in names]
    fits.HDUList(hdus).writeto(target)
    return target


def test_several_image_extensions_are_ambiguous(dark_set, tmp_path):
    path = extensions(dark_set.frames[0], tmp_path / "mef.fits", ["AMP", "COPY"])
    with pytest.raises(
        ValidationError, match=f"{esc(path)}: holds 2 images \\(AMP, COPY\\): name the HDU to use"
    ):
        run_recipe(with_first(dark_set, path), dark_set.master_bias, tmp_path / "out")


def test_one_image_extension_is_used(dark_set, tmp_path):
    plain = run_recipe(dark_set.frames, dark_set.master_bias, tmp_path / "plain")
    path = extensions(dark_set.frames[0], tmp_path / "ext.fits", ["DATA"])
    result = run_recipe(with_first(dark_set, path), dark_set.master_bias, tmp_path / "ext")
    np.testing.assert_array_equal(master(result), master(plain))


# ---- stored types -------------------------------------------------------------------------------


def stored_as(dtype, bscale=1.0, bzero=0.0):
    """A write_variant data function: store (physical - bzero) / bscale as ``dtype``."""

    def convert(values):
        stored = (values - bzero) / bscale
        if np.dtype(dtype).kind == "f":
            return stored.astype(dtype)
        info = np.iinfo(dtype)
        assert info.min <= stored.min() and stored.max() <= info.max  # no wrap-around
        return np.rint(stored).astype(dtype)

    return convert, {"BSCALE": bscale, "BZERO": bzero}


@pytest.mark.parametrize(
    ("dtype", "bscale", "bzero"),
    [
        ("int16", 1.0, 0.0),
        ("int16", 1.0, 1000.0),
        ("int32", 1.0, 0.0),
        ("int32", 0.5, -7.0),
        ("int16", 0.25, 1024.0),
        ("float32", 1.0, 0.0),
        ("float64", 1.0, 0.0),
        ("float32", 2.0, 100.0),
    ],
)
def test_stored_types_give_the_reference_master(dark_set, tmp_path, dtype, bscale, bzero):
    """Every type gives the float64 reference and exactly the uint16 set's master."""
    convert, scaling = stored_as(dtype, bscale, bzero)
    frames = []
    for i, source in enumerate(dark_set.frames):
        frames.append(tmp_path / f"{dtype}_{i}.fits")
        with fits.open(source) as hdul:
            header = hdul[0].header.copy()
            hdu = fits.PrimaryHDU(convert(hdul[0].data.astype(np.float64)), header=header)
        hdu.header.update(scaling)  # after the data: astropy then stores them as given
        hdu.writeto(frames[-1])
    assert fits.getheader(frames[0])["BITPIX"] == np.dtype(dtype).itemsize * 8 * (
        -1 if dtype.startswith("float") else 1
    )
    plain = run_recipe(dark_set.frames, dark_set.master_bias, tmp_path / "uint16")
    result = run_recipe(frames, dark_set.master_bias, tmp_path / "out")
    reference = reference_master_dark(frames, dark_set.master_bias)
    np.testing.assert_allclose(master(result), reference, rtol=0, atol=TOLERANCE)
    np.testing.assert_array_equal(master(result), master(plain))
    assert result.report_data["inputs"][0]["bscale"] == bscale


def test_blank_pixels_are_left_out(dark_set, tmp_path):
    """BLANK marks a data pixel of one frame (int16, BZERO = 32768): combined from the others."""
    frames = list(dark_set.frames)
    amp2 = RECIPE_GEOMETRY.amplifiers[1]
    raw_pixel = (amp2.rows.start + 5, amp2.data_cols.start + 7)
    trimmed_pixel = (amp2.trimmed_rows.start + 5, 7)
    path = tmp_path / "blank.fits"
    with fits.open(frames[1], do_not_scale_image_data=True) as hdul:
        stored = hdul[0].data.copy()
        header = hdul[0].header.copy()
    stored[raw_pixel] = -32768
    header["BLANK"] = -32768
    fits.PrimaryHDU(stored, header=header).writeto(path)
    frames[1] = path
    result = run_recipe(frames, dark_set.master_bias, tmp_path / "out")
    reference = reference_master_dark(frames, dark_set.master_bias)
    assert np.isfinite(reference[trimmed_pixel])
    np.testing.assert_allclose(master(result), reference, rtol=0, atol=TOLERANCE)
    npix = fits.getdata(result.master_dark, "MAP")
    assert npix[trimmed_pixel] == 4
    assert np.count_nonzero(npix != 5) == 1


# ---- observation results ------------------------------------------------------------------------


def obresult(dark_set, name="ob.yaml", text=None, **changes) -> Path:
    """An observation-result YAML next to the frames (frame names relative to it)."""
    document = {
        "id": "dark-1",
        "instrument": "MEGARA",
        "mode": "MegaraDarkImage",
        "frames": [p.name for p in dark_set.frames],
        "requirements": {"master_bias": dark_set.master_bias.name},
    }
    document.update(changes)
    document = {k: v for k, v in document.items() if v is not None}
    path = dark_set.frames[0].parent / name
    path.write_text(yaml.safe_dump(document) if text is None else text)
    return path


def test_obresult_yaml(dark_set, tmp_path):
    path = obresult(dark_set)
    result = run_recipe(path, None, tmp_path / "out")
    plain = run_recipe(dark_set.frames, dark_set.master_bias, tmp_path / "plain")
    np.testing.assert_array_equal(master(result), master(plain))
    assert [e["path"] for e in result.report_data["inputs"]] == [str(p) for p in dark_set.frames]
    assert result.report_data["bias"]["path"] == str(dark_set.master_bias)


def test_obresult_images_alias_and_bias_argument(dark_set, tmp_path):
    path = obresult(
        dark_set, frames=None, requirements=None, images=[p.name for p in dark_set.frames]
    )
    result = run_recipe(path, dark_set.master_bias, tmp_path / "out")
    assert result.report_data["bias"]["sha256"] == file_sha256(dark_set.master_bias)


@pytest.mark.parametrize(
    ("changes", "problem"),
    [
        ({"id": None}, "'id' is missing"),
        ({"instrument": None}, "'instrument' is missing"),
        ({"mode": None}, "'mode' is missing"),
        ({"frames": None}, "'frames' must be a non-empty list of file names"),
        ({"frames": []}, "'frames' must be a non-empty list of file names"),
        ({"frames": "dark_000.fits"}, "'frames' must be a non-empty list of file names"),
        ({"frames": [1, 2]}, "'frames' must be a non-empty list of file names"),
        ({"instrument": "EMIR"}, "instrument is 'EMIR', not 'MEGARA'"),
        ({"mode": "MegaraBiasImage"}, "mode is 'MegaraBiasImage', not 'MegaraDarkImage'"),
        ({"requirements": ["master_bias.fits"]}, "'requirements' must be a mapping"),
    ],
)
def test_obresult_errors(dark_set, tmp_path, changes, problem):
    path = obresult(dark_set, **changes)
    with pytest.raises(ValidationError, match=f"{esc(path)}: {re.escape(problem)}"):
        run_recipe(path, None, tmp_path / "out")


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("id: [1, 2\nmode: x\n", "is not valid YAML"),
        ("", "must hold one observation result, found 0"),
        ("- a\n- b\n", "must hold one observation result, found 1"),
        ("id: 1\n---\nid: 2\n", "must hold one observation result, found 2"),
    ],
    ids=["syntax", "empty", "a list", "two documents"],
)
def test_obresult_not_one_mapping(dark_set, tmp_path, text, problem):
    path = obresult(dark_set, text=text)
    with pytest.raises(ValidationError, match=f"{esc(path)}: {problem}"):
        run_recipe(path, None, tmp_path / "out")


def test_obresult_binary_file(dark_set, tmp_path):
    path = dark_set.frames[0].parent / "binary.yaml"
    path.write_bytes(b"\xff\xfe\x00\x01 not text")
    with pytest.raises(ValidationError, match=f"{esc(path)}: is not valid YAML: 'utf-8' codec"):
        run_recipe(path, None, tmp_path / "out")


def test_obresult_without_a_master_bias(dark_set, tmp_path):
    path = obresult(dark_set, requirements=None)
    with pytest.raises(
        ValidationError,
        match=f"{esc(path)}: no master bias given .* and no 'requirements: master_bias'",
    ):
        run_recipe(path, None, tmp_path / "out")


def test_obresult_naming_a_missing_frame(dark_set, tmp_path):
    path = obresult(dark_set, frames=["dark_000.fits", "dark_999.fits"])
    missing = path.parent / "dark_999.fits"
    with pytest.raises(InputFileError, match=f"{esc(missing)}: no such file"):
        run_recipe(path, None, tmp_path / "out")


# ---- io units -----------------------------------------------------------------------------------


def test_inspect_fits_reads_only_headers(dark_set):
    image = inspect_fits(dark_set.frames[0])
    assert image.shape == RECIPE_GEOMETRY.raw_shape
    assert image.raw_dtype == np.dtype(">i2")
    assert (image.bzero, image.bscale, image.blank) == (32768.0, 1.0, None)
    assert image.hdu == 0 and image.data_offset == 2880 and not image.compressed
    assert image.primary_header["UUID"] == fits.getval(dark_set.frames[0], "UUID")


def test_read_raw_is_a_read_only_map_of_the_stored_values(dark_set):
    image = inspect_fits(dark_set.frames[0])
    raw = read_raw(image)
    with fits.open(dark_set.frames[0], do_not_scale_image_data=True) as hdul:
        np.testing.assert_array_equal(raw, hdul[0].data)
    assert not raw.flags.owndata and not raw.flags.writeable  # a view of the file's map
    with pytest.raises(ValueError, match="read-only"):
        raw[0, 0] = 1


def test_sha256_file(tmp_path):
    path = tmp_path / "bytes.bin"
    data = os.urandom(3 * (1 << 20) + 17)
    path.write_bytes(data)
    assert sha256_file(path) == hashlib.sha256(data).hexdigest()
    (tmp_path / "empty").touch()
    assert sha256_file(tmp_path / "empty") == hashlib.sha256(b"").hexdigest()


def test_prefetched_digests(tmp_path):
    """Files hashed in the background (the command line starts this before its imports):
    the digest of the file as it is when asked for; anything that is not a regular file
    is skipped at once (a FIFO is never opened for long), a changed file is hashed again:
    one replaced while it may be hashed, one rewritten in place once it was.  (Cutting a
    file short while it is hashed would end the process: it is read through a map.)"""
    files = [tmp_path / f"f{i}.bin" for i in range(3)]
    for path in files:
        path.write_bytes(os.urandom((1 << 20) + 5))
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    digest.prefetch(["--out", str(tmp_path), str(fifo), tmp_path / "missing", *files])
    replacement = tmp_path / "replacement.bin"
    replacement.write_bytes(b"replaced")
    os.replace(replacement, files[2])  # the old bytes stay mapped while hashed
    for job in list(digest._queued.values()):
        job.done.wait()
    files[1].write_bytes(b"changed")  # in place, after it was hashed
    for path in files:
        assert digest.sha256_file(path) == hashlib.sha256(path.read_bytes()).hexdigest()


def product_hdul(planes) -> fits.HDUList:
    header = fits.Header([("OBJECT", "dark"), ("EXPTIME", 3600.0)])
    header.add_history("made here")
    return fits.HDUList(
        [
            fits.PrimaryHDU(planes[0], header=header),
            fits.ImageHDU(planes[1], name="VARIANCE"),
            fits.ImageHDU(planes[2], name="MAP"),
        ]
    )


def cards(header: fits.Header) -> list:
    """Keywords and values of a header but CHECKSUM (which covers the comments too)."""
    return [(c.keyword, c.value) for c in header.cards if c.keyword != "CHECKSUM"]


WRITE_CASES = [((37, 29), 256), ((1, 1), 1 << 20), ((64, 80), 1 << 20), ((301, 300), 4096)]


@pytest.mark.parametrize("folder", ["tmp_path", "/dev/shm"])
def test_write_images_as_astropy(folder, tmp_path, rng):
    """The product writer: astropy reads back the same data and headers, the CHECKSUM and
    DATASUM cards verify (warnings are errors here), DATASUM is astropy's own and the
    sha256 returned is the file's; small chunks (several per plane, odd sizes) and
    one-pixel planes included.  Chunks of whole pages are written with O_DIRECT where
    the file system allows it (the file's last chunk, of odd size, through the page
    cache); /dev/shm (tmpfs) refuses O_DIRECT, and the file is written through the
    page cache."""
    if folder == "tmp_path":
        check_write_images(tmp_path, rng)
    elif os.path.isdir(folder):
        with tempfile.TemporaryDirectory(dir=folder) as where:
            check_write_images(Path(where), rng)
    else:
        pytest.skip(f"no {folder}")


def check_write_images(tmp_path: Path, rng) -> None:
    for shape, chunk in WRITE_CASES:
        planes = [
            rng.normal(5.0, 2.0, shape).astype(np.float32),
            rng.normal(0.0, 1.0, shape).astype(np.float32),
            rng.integers(-3, 12, shape).astype(np.int16),
        ]
        planes[0].flat[0] = np.nan
        ours, theirs = tmp_path / "ours.fits", tmp_path / "theirs.fits"
        sha = io_module.write_images(ours, product_hdul(planes), chunk_bytes=chunk).result()
        product_hdul(planes).writeto(theirs, checksum=True, overwrite=True)
        assert sha == file_sha256(ours)
        assert ours.stat().st_size == theirs.stat().st_size
        with fits.open(ours, checksum=True) as got, fits.open(theirs, checksum=True) as want:
            assert len(got) == 3
            for a, b, plane in zip(got, want, planes, strict=True):
                assert a.data.dtype == plane.dtype.newbyteorder(">")
                assert a.data.tobytes() == plane.astype(a.data.dtype).tobytes()
                assert cards(a.header) == cards(b.header)  # DATASUM included


def test_staged_outputs_commit_and_discard(tmp_path):
    target = tmp_path / "product.txt"
    with StagedOutputs() as staged:
        tmp = staged.stage(target)
        tmp.write_text("new")
        assert tmp.parent == tmp_path and tmp.name.startswith(".product.txt.")
        assert not target.exists()
        staged.commit()
    assert target.read_text() == "new" and sorted(os.listdir(tmp_path)) == ["product.txt"]

    with pytest.raises(OutputError, match=f"{esc(target)}: exists already"):
        StagedOutputs().stage(target)
    with pytest.raises(RuntimeError, match="interrupted"), StagedOutputs(overwrite=True) as staged:
        staged.stage(target).write_text("partial")
        raise RuntimeError("interrupted")
    assert target.read_text() == "new" and sorted(os.listdir(tmp_path)) == ["product.txt"]


def test_output_folder_checks(dark_set, tmp_path):
    blocked = dark_set.frames[0] / "sub"  # a folder inside a file
    with pytest.raises(OutputError, match=f"{esc(blocked)}: output folder is not writable"):
        check_output_folder(blocked)
    made = check_output_folder(tmp_path / "new" / "folder")
    assert made.is_dir() and os.listdir(made) == []

    link = tmp_path / "link.fits"
    link.symlink_to(dark_set.frames[2])
    with pytest.raises(OutputError, match=f"{esc(link)}: would overwrite the input"):
        check_not_an_input(link, list(dark_set.frames))
    check_not_an_input(tmp_path / "other.fits", list(dark_set.frames))
