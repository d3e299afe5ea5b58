"""Hypothesis strategies that corrupt real small FITS files, and the property they test.

``corrupted_files(good)`` draws one damaged file from the bytes of real files (a raw
dark of a tiny MEGARA-like layout, the same image in an extension, tile-compressed,
and the master bias): header cards deleted, repeated or given values of the wrong type
(NaN, huge, negative or text numbers, unterminated strings, non-ASCII bytes), odd
BITPIX, NAXIS and NAXISn beyond the data, the END card or the blank padding after it
damaged, bytes flipped anywhere, the file cut short or extended, the whole gzipped.

``check(path, role, good, folder)`` runs the recipe with the damaged file as one frame
(or as the master bias) of a good set: it must finish or raise a MegaraDarkError naming
the file, never anything else, leave the inputs byte-identical and no temp file.

Used by tests/test_faults_fuzz.py (a bounded number of examples in the default run)
and tools/fuzz_inputs.py (a long run).
"""

from __future__ import annotations

import faulthandler
import gzip
import hashlib
import io
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from astropy.io import fits
from hypothesis import strategies as st

from megara_dark.detector import make_geometry
from megara_dark.errors import MegaraDarkError
from megara_dark.recipe import DarkRecipe, DarkRecipeInput
from megara_dark.simulate import simulate_dark_set

TINY = make_geometry(8, 16, overscan=2, middle_rows=2, name="tiny MEGARA")  # raw 18 x 20
CARD = 80
BLOCK = 2880
HANG_SECONDS = 60  # an example taking longer is a hang: dump the stacks and stop

KEYS = ("SIMPLE", "BITPIX", "NAXIS", "NAXIS1", "NAXIS2", "NAXIS3", "EXTEND", "XTENSION",
        "PCOUNT", "GCOUNT", "BZERO", "BSCALE", "BLANK", "EXPTIME", "DARKTIME", "INSTRUME",
        "OBSMODE", "IMAGETYP", "NUMTYPE", "UUID", "DATE-OBS", "READMODE", "DETECTOR", "VBIN",
        "HBIN", "GAIN1", "EXTNAME", "ZIMAGE", "ZBITPIX", "ZNAXIS1", "ZNAXIS2", "ZCMPTYPE",
        "CHECKSUM", "DATASUM", "END")  # fmt: skip
NUMBERS = ("0", "1", "-1", "2", "3", "7", "8", "16", "-16", "17", "24", "32", "-32", "-64",
           "64", "128", "999", "1000", "65535", "2147483648", "9223372036854775808",
           "1" + "0" * 30, "-0", "1.5", "1E400", "-1E400", "NaN", "inf", "-inf", "1.0D5",
           "0x10", "1_000", "T", "F")  # fmt: skip
TEXTS = ("'MEGARA'", "'MegaraDarkImage'", "'IMAGE_DARK'", "'IMAGE_BIAS'", "'MasterBias'",
         "''", "'unterminated", "'it''s'", "' '", "'COMPRESSED_IMAGE'", "'RICE_1'",
         "'IMAGE   '", "'BINTABLE'", "'" + "x" * 68 + "'")  # fmt: skip


@dataclass(frozen=True)
class GoodSet:
    """A good tiny set: three raw darks and a master bias, and the bytes of each base
    file the strategies damage (``frame``, ``extension``, ``compressed``, ``bias``)."""

    frames: tuple[Path, ...]
    bias: Path
    bases: dict = field(repr=False)


def good_set(folder: Path) -> GoodSet:
    """Simulate the good set in ``folder`` (seeded: the same files every time)."""
    sim = simulate_dark_set(folder, nframes=3, seed=7, geometry=TINY, threads=1)
    with fits.open(sim.frames[0]) as hdul:
        header, data = hdul[0].header.copy(), hdul[0].data
    bases = {"frame": sim.frames[0].read_bytes(), "bias": sim.master_bias.read_bytes()}
    for name, hdu in (("extension", fits.ImageHDU), ("compressed", fits.CompImageHDU)):
        buffer = io.BytesIO()
        fits.HDUList([fits.PrimaryHDU(header=header), hdu(data, header=header)]).writeto(buffer)
        bases[name] = buffer.getvalue()
    return GoodSet(tuple(sim.frames), sim.master_bias, bases)


# ---- strategies ----------------------------------------------------------------------------


def _card(key: str, value: bytes) -> bytes:
    """An 80-byte card: KEY = value (right-aligned to column 30 when short)."""
    head = key.encode().ljust(8)[:8] + b"= "
    return (head + value.rjust(20)).ljust(CARD, b" ")[:CARD]


def _headers(data: bytes) -> list[list[int]]:
    """Offsets of the cards of each header that starts a block (SIMPLE or XTENSION),
    up to its END card (or the end of the file)."""
    headers = []
    for block in range(0, len(data), BLOCK):
        if data[block : block + 9] not in (b"SIMPLE  =", b"XTENSION="):
            continue
        cards = []
        for at in range(block, len(data) - CARD + 1, CARD):
            cards.append(at)
            if data[at : at + 8] == b"END     ":
                break
        if cards:
            headers.append(cards)
    return headers or [[0]]


values = st.one_of(
    st.sampled_from(NUMBERS).map(str.encode),
    st.sampled_from(TEXTS).map(str.encode),
    st.integers(-(2**70), 2**70).map(lambda v: str(v).encode()),
    st.floats(allow_nan=True, allow_infinity=True).map(lambda v: repr(v).encode()),
    st.binary(min_size=0, max_size=30),
    st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=40).map(str.encode),
)


@st.composite
def card_edit(draw, data: bytes) -> bytes:
    """Delete, repeat, or set (to a drawn value) a card of a header, or insert a new
    one before its END."""
    offsets = draw(st.sampled_from(_headers(data)))
    op = draw(st.sampled_from(["delete", "repeat", "set", "insert"]))
    at = draw(st.sampled_from(offsets))
    card = data[at : at + CARD]
    if op == "delete":
        return data[:at] + data[at + CARD :] + b" " * CARD
    if op == "repeat":
        return data[:at] + card + data[at:-CARD]
    key = draw(st.sampled_from(KEYS)) if op == "insert" else card[:8].decode("ascii", "replace")
    new = _card(key.strip(), draw(values))
    if op == "set":
        return data[:at] + new + data[at + CARD :]
    end = offsets[-1]
    return data[:end] + new + data[end:-CARD]


@st.composite
def key_value(draw, data: bytes) -> bytes:
    """One of the structural keys (BITPIX, NAXISn, BZERO...) set to a drawn number."""
    key = draw(st.sampled_from(["BITPIX", "NAXIS", "NAXIS1", "NAXIS2", "BZERO", "BSCALE",
                                "BLANK", "PCOUNT", "GCOUNT", "EXPTIME"]))  # fmt: skip
    value = draw(st.one_of(st.sampled_from(NUMBERS), st.integers(-(2**64), 2**64).map(str)))
    for at in draw(st.sampled_from(_headers(data))):
        if data[at : at + 8] == key.encode().ljust(8):
            return data[:at] + _card(key, value.encode()) + data[at + CARD :]
    return data


@st.composite
def padding_edit(draw, data: bytes) -> bytes:
    """Damage the END card of a header or the blanks after it up to the data."""
    end = draw(st.sampled_from(_headers(data)))[-1]
    after = end + CARD
    op = draw(st.sampled_from(["blank END", "nul padding", "garbage padding", "drop", "add"]))
    if op == "blank END":
        return data[:end] + b" " * CARD + data[after:]
    start = -(-after // BLOCK) * BLOCK
    if op == "nul padding":
        return data[:after] + b"\0" * (start - after) + data[start:]
    if op == "garbage padding":
        junk = draw(st.binary(min_size=1, max_size=max(1, start - after)))
        return data[:after] + junk + data[after + len(junk) :]
    count = draw(st.integers(1, 200))
    if op == "drop":
        return data[:after] + data[after + count :]
    return data[:after] + b" " * count + data[after:]


@st.composite
def byte_edit(draw, data: bytes) -> bytes:
    """Flip bytes anywhere, cut the file short, or add bytes at its end."""
    op = draw(st.sampled_from(["flip", "cut", "append"] if data else ["append"]))
    if op == "cut":
        return data[: draw(st.integers(0, len(data) - 1))]
    if op == "append":
        return data + draw(st.one_of(st.binary(max_size=400), st.just(b"\0" * BLOCK),
                                     st.just(b" " * BLOCK), st.just(data[:BLOCK])))  # fmt: skip
    out = bytearray(data)
    for _ in range(draw(st.integers(1, 8))):
        at = draw(st.integers(0, len(out) - 1))
        out[at] = draw(st.integers(0, 255))
    return bytes(out)


@st.composite
def corrupted_files(draw, good: GoodSet) -> tuple[str, str, bytes]:
    """(role "frame" or "bias", file suffix, bytes) of a damaged file."""
    base = draw(st.sampled_from(sorted(good.bases)))
    data = good.bases[base]
    edits = {"cards": card_edit, "keys": key_value, "padding": padding_edit, "bytes": byte_edit}
    for name in draw(st.lists(st.sampled_from(sorted(edits)), min_size=1, max_size=4)):
        data = draw(edits[name](data))
    suffix = ".fits"
    if draw(st.booleans()) and draw(st.booleans()):  # a quarter of them gzipped
        data = gzip.compress(data, compresslevel=1)
        if draw(st.booleans()):
            data = data[: draw(st.integers(0, len(data) - 1))]
        suffix = ".fits.gz"
    return ("bias" if base == "bias" else "frame"), suffix, data


# ---- the property ----------------------------------------------------------------------------


def _sha256(paths) -> dict:
    return {p: hashlib.sha256(Path(p).read_bytes()).hexdigest() for p in paths}


def check(role: str, suffix: str, data: bytes, good: GoodSet, folder: Path) -> str:
    """Run the recipe with the damaged file; returns the outcome ("ok" or the error's
    class name).  Raises AssertionError when the property fails (any other exception
    propagates: it is a finding too)."""
    path = folder / f"damaged{suffix}"
    path.write_bytes(data)
    frames, bias = list(good.frames), good.bias
    if role == "bias":
        bias = path
    else:
        frames[0] = path
    inputs = [*frames, bias]
    before = _sha256(inputs)
    out = folder / "out"
    faulthandler.dump_traceback_later(HANG_SECONDS, exit=True)
    try:
        DarkRecipe(outdir=out, geometry=TINY, overwrite=True).run(DarkRecipeInput(frames, bias))
        outcome = "ok"
    except MegaraDarkError as exc:
        assert str(path) in str(exc), f"the error does not name {path}: {exc}"
        outcome = type(exc).__name__
    finally:
        faulthandler.cancel_dump_traceback_later()
    assert _sha256(inputs) == before, "an input changed"
    left = sorted(p.name for p in out.iterdir()) if out.is_dir() else []
    assert not [n for n in left if n.startswith(".")], f"temp files left: {left}"
    if outcome == "ok":
        assert {"master_dark.fits", "master_dark.log", "master_dark.json"} <= set(left)
        with fits.open(out / "master_dark.fits") as hdul:
            assert hdul[0].data.shape == TINY.trimmed_shape
            assert np.all(hdul["MAP"].data <= 3)
    return outcome
