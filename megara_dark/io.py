"""FITS input and product output: header inspection, raw memory maps, atomic writes.

Inputs are inspected from their headers only (no pixel read), every structural
problem becomes an error naming the file; the pixels are then memory-mapped
read-only as raw integers (BZERO/BSCALE are applied by the C core).  Products
are written to temporary files in the target folder and renamed into place
only when every product of the run has been written.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import gzip
import hashlib
import io
import math
import mmap
import os
import signal
import stat
import sys
import tempfile
import threading
import warnings
import weakref
import zlib
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from astropy.io import fits

from .digest import sha256_file  # noqa: F401 (part of this module's interface)
from .errors import InputFileError, OutputError, ValidationError

FITS_BLOCK = 2880
_UMASK = os.umask(0o022)  # read the process umask (and put it back)
os.umask(_UMASK)
# BITPIX -> big-endian raw dtype of the data array.
BITPIX_DTYPES = {8: ">u1", 16: ">i2", 32: ">i4", 64: ">i8", -32: ">f4", -64: ">f8"}
GZIP_MAGIC = b"\x1f\x8b"
# Keys that say where an HDU's data are and what they mean (besides NAXISn).
STRUCTURE_KEYS = ("SIMPLE", "XTENSION", "BITPIX", "NAXIS", "PCOUNT", "GCOUNT", "EXTEND",
                  "BZERO", "BSCALE", "BLANK", "ZIMAGE")  # fmt: skip


@dataclass(frozen=True)
class FitsImage:
    """A 2-D FITS image, described from its headers.

    ``shape`` is (NAXIS2, NAXIS1) = (rows, columns); ``raw_dtype`` is the
    big-endian type of the stored values; physical = bscale * raw + bzero;
    ``data_offset`` is the byte offset of the data, None when the file is
    compressed (its pixels are decompressed into memory).
    """

    path: Path
    header: fits.Header
    primary_header: fits.Header
    hdu: int
    shape: tuple[int, int]
    raw_dtype: np.dtype
    bzero: float
    bscale: float
    blank: int | None
    data_offset: int | None

    @property
    def compressed(self) -> bool:
        return self.data_offset is None


def _file_problem(path: Path, message: str) -> ValidationError:
    return ValidationError([f"{path}: {message}"])


def check_readable_file(path: Path) -> os.stat_result:
    """The stat of an existing, readable regular file, else InputFileError."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise InputFileError("no such file", path) from None
    except OSError as exc:
        raise InputFileError(f"cannot be read: {exc.strerror}", path) from None
    if stat.S_ISDIR(st.st_mode):
        raise InputFileError("is a directory, not a file", path)
    if not stat.S_ISREG(st.st_mode):
        raise InputFileError("is not a regular file (FIFO, socket or device)", path)
    if not os.access(path, os.R_OK):
        raise InputFileError("cannot be read: permission denied", path)
    return st


def inspect_fits(path: str | Path, *, hdu: int | str | None = None) -> FitsImage:
    """Describe the 2-D image of a FITS file from its headers (no pixel is read).

    The image is the primary HDU when it holds data, else the only image
    extension (or the extension named/numbered by ``hdu``); a gzipped file or a
    tile-compressed image (``.fz``) is accepted.  Raises InputFileError when the
    file cannot be read, ValidationError when it is not a usable FITS image.
    """
    path = Path(path)
    st = check_readable_file(path)
    if st.st_size == 0:
        raise _file_problem(path, "is empty (0 bytes)")
    with open(path, "rb") as f:
        magic = f.read(80)
    unzipped = _gunzip(path) if magic.startswith(GZIP_MAGIC) else None
    if unzipped is not None:
        magic = unzipped[:80]
    if not magic.startswith(b"SIMPLE  =") or magic[29:30] != b"T":
        raise _file_problem(path, "is not a FITS file (it does not start with SIMPLE = T)")
    # The structure is checked before astropy reads anything: it loops forever on some
    # impossible sizes (a negative NAXISn in a gzipped file).
    with open(path, "rb") if unzipped is None else io.BytesIO(unzipped) as f:
        headers = _read_headers(path, f, st.st_size if unzipped is None else len(unzipped))
    index = _choose_image_hdu(path, headers, hdu)
    header, offset = headers[index]
    if unzipped is not None or header.get("ZIMAGE", False) is True:
        return _inspect_with_astropy(path, index, headers[0][0], unzipped)
    return _describe(path, header, headers[0][0], index, offset, st.st_size)


def _gunzip(path: Path) -> bytes:
    """The decompressed bytes of a gzipped file (ValidationError if it cannot be)."""
    try:
        with gzip.open(path) as f:
            return f.read()
    except (OSError, EOFError, zlib.error) as exc:
        raise _file_problem(path, f"cannot be decompressed or parsed: {exc}") from None


def _read_headers(path: Path, f, size: int) -> list[tuple[fits.Header, int]]:
    """Every HDU's header and its data offset, checking that the data fit the file
    (``f``: the file's bytes, opened, ``size`` long).

    Blocks of zeros or blanks after the last HDU (padding some writers add)
    are accepted; anything else that does not parse is a corrupt header.
    """
    headers = []
    while f.tell() < size:
        start = f.tell()
        if headers and not f.read(FITS_BLOCK).strip(b"\0 "):
            continue  # a padding block
        f.seek(start)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # non-standard cards are not our concern
                header = fits.Header.fromfile(f, padding=True)
                for card in header.cards:  # unparsable values (EXPTIME = NaN) become text
                    card.verify("silentfix+ignore")
        except Exception as exc:  # astropy raises OSError, ValueError, ...
            problem = f"corrupt FITS header in HDU {len(headers)}: {exc}"
            raise _file_problem(path, problem) from None
        counts = Counter(card.keyword for card in header.cards)
        repeated = [k for k, n in counts.items() if n > 1 and _structural(k)]
        if repeated:
            problem = f"HDU {len(headers)} header repeats {', '.join(repeated)} (ambiguous)"
            raise _file_problem(path, problem)
        offset = f.tell()
        f.seek(offset - FITS_BLOCK)
        last = f.read(FITS_BLOCK).rstrip(b" ")
        if offset % FITS_BLOCK or not last.endswith(b"END") or len(last) % 80 != 3:
            raise _file_problem(
                path,
                f"HDU {len(headers)} header is not padded with blanks to 2880 bytes after "
                "END (its data would be read from the wrong place)",
            )
        nbytes = _data_bytes(path, header, len(headers))
        if offset + nbytes > size:
            raise _file_problem(
                path,
                f"is truncated: HDU {len(headers)} needs {nbytes} bytes of data after "
                f"byte {offset}, the file has {size - offset}",
            )
        headers.append((header, offset))
        f.seek(min(size, offset + -(-nbytes // FITS_BLOCK) * FITS_BLOCK))
    return headers


def _data_bytes(path: Path, header: fits.Header, index: int) -> int:
    """Size in bytes of an HDU's data, from BITPIX, NAXISn, PCOUNT and GCOUNT."""
    bitpix = header.get("BITPIX")
    if not _is_int(bitpix) or bitpix not in BITPIX_DTYPES:
        raise _file_problem(path, f"HDU {index} has an invalid BITPIX {bitpix!r}")
    naxis = header.get("NAXIS")
    if not _is_int(naxis) or not 0 <= naxis <= 999:
        raise _file_problem(path, f"HDU {index} has an invalid NAXIS {naxis!r}")
    if naxis == 0:
        return 0
    sizes = [header.get(f"NAXIS{k}") for k in range(1, naxis + 1)]
    if any(not _is_int(s) or s < 0 for s in sizes):
        raise _file_problem(path, f"HDU {index} has invalid NAXISn values {sizes}")
    pcount, gcount = header.get("PCOUNT", 0), header.get("GCOUNT", 1)
    if not (_is_int(pcount) and _is_int(gcount) and pcount >= 0 and gcount >= 0):
        raise _file_problem(path, f"HDU {index} has invalid PCOUNT, GCOUNT {pcount!r}, {gcount!r}")
    return abs(bitpix) // 8 * gcount * (pcount + math.prod(sizes))  # Python ints: no overflow


def _structural(key: str) -> bool:
    """A key that says where the data are or what they mean (BITPIX, NAXISn, BZERO...)."""
    return key in STRUCTURE_KEYS or (key.startswith("NAXIS") and key[5:].isdigit())


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_image(header: fits.Header) -> bool:
    if header.get("ZIMAGE", False) is True:
        return True
    xtension = header.get("XTENSION", "IMAGE")  # the primary HDU has none
    return str(xtension).strip() == "IMAGE" and header.get("NAXIS", 0) > 0


def _choose_image_hdu(path: Path, headers, hdu) -> int:
    if hdu is not None:
        for i, (h, _) in enumerate(headers):
            if hdu == i or (
                isinstance(hdu, str) and str(h.get("EXTNAME", "")).upper() == hdu.upper()
            ):
                return i
        raise _file_problem(path, f"has no HDU {hdu!r}")
    if headers[0][0].get("NAXIS", 0) > 0:
        return 0
    images = [i for i, (h, _) in enumerate(headers) if i > 0 and _is_image(h)]
    if not images:
        raise _file_problem(path, "holds no image (every HDU is empty or a table)")
    if len(images) > 1:
        names = [str(headers[i][0].get("EXTNAME", i)) for i in images]
        raise _file_problem(
            path, f"holds {len(images)} images ({', '.join(names)}): name the HDU to use"
        )
    return images[0]


def _describe(path, header, primary_header, index, offset, size=None) -> FitsImage:
    naxis = header.get("NAXIS")
    if naxis != 2:
        dims = [header.get(f"NAXIS{k}") for k in range(1, (naxis or 0) + 1)]
        raise _file_problem(
            path, f"image HDU {index} has NAXIS={naxis} {dims}; a 2-D image is needed"
        )
    bitpix = header["BITPIX"]
    bscale, bzero = header.get("BSCALE", 1.0), header.get("BZERO", 0.0)
    for key, value in (("BSCALE", bscale), ("BZERO", bzero)):
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not np.isfinite(value):
            raise _file_problem(path, f"{key} must be a finite number, got {value!r}")
    if bscale == 0:
        raise _file_problem(path, "BSCALE is 0")
    if BITPIX_DTYPES[bitpix][1] in "iu":  # the products are float32
        info = np.iinfo(BITPIX_DTYPES[bitpix])
        largest = abs(bscale) * max(-info.min, info.max) + abs(bzero)
        if largest > np.finfo(np.float32).max:
            raise _file_problem(
                path, f"BSCALE {bscale!r} and BZERO {bzero!r} give values beyond float32's range"
            )
    blank = header.get("BLANK")
    if blank is not None and (bitpix < 0 or not isinstance(blank, int)):
        blank = None  # BLANK has no meaning for float data (NaN marks undefined values)
    return FitsImage(
        path=path,
        header=header,
        primary_header=primary_header,
        hdu=index,
        shape=(header["NAXIS2"], header["NAXIS1"]),
        raw_dtype=np.dtype(BITPIX_DTYPES[bitpix]),
        bzero=float(bzero),
        bscale=float(bscale),
        blank=blank,
        data_offset=offset,
    )


def _inspect_with_astropy(path: Path, index: int, primary, unzipped) -> FitsImage:
    """A gzipped file (its bytes ``unzipped``) or a tile-compressed image: astropy
    decompresses the image HDU ``index`` (its structure already checked)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # astropy only warns on some damage
            with (
                open(path, "rb") if unzipped is None else io.BytesIO(unzipped) as f,
                fits.open(f, do_not_scale_image_data=True) as hdul,
            ):
                hdul.verify("exception")
                image = hdul[index]
                header = image.header.copy()
                shape = image.data.shape if image.data is not None else ()
    except Exception as exc:
        raise _file_problem(path, f"cannot be decompressed or parsed: {exc}") from None
    if len(shape) != 2:
        raise _file_problem(path, f"image HDU {index} has shape {shape}; a 2-D image is needed")
    return _describe(path, header, primary, index, None)


def read_raw(image: FitsImage) -> np.ndarray:
    """The stored (unscaled) values of an image, shape ``image.shape``.

    Uncompressed files are memory-mapped read-only (nothing is read until the
    core touches it) and closed at once: a map holds no file descriptor, so a
    set may have more frames than ``ulimit -n``.  Compressed files are
    decompressed into memory.
    """
    if not image.compressed:
        count = image.shape[0] * image.shape[1]
        try:
            buffer = _map_read_only(image.path, image.data_offset, count * image.raw_dtype.itemsize)
        except InputFileError:
            raise
        except OSError as exc:
            raise InputFileError(f"cannot be memory-mapped: {exc.strerror}", image.path) from None
        return np.frombuffer(buffer, dtype=image.raw_dtype, count=count).reshape(image.shape)
    with fits.open(image.path, do_not_scale_image_data=True) as hdul:
        return np.array(hdul[image.hdu].data)  # stored values (not scaled), native order


if os.name == "posix":
    _LIBC = ctypes.CDLL(None, use_errno=True)
    _LIBC.mmap.restype = ctypes.c_void_p
    _LIBC.mmap.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int,
                           ctypes.c_int, ctypes.c_long)  # fmt: skip
    _LIBC.munmap.argtypes = (ctypes.c_void_p, ctypes.c_size_t)
    _MAP_FAILED = ctypes.c_void_p(-1).value


def _map_read_only(path: Path, offset: int, nbytes: int) -> memoryview:
    """Bytes ``[offset, offset + nbytes)`` of a file, mapped read-only (libc mmap).

    The descriptor is closed before returning (Python's mmap keeps a duplicate
    open for as long as the map lives); the map is released (munmap) when the
    last array using it is gone.  Raises OSError, or InputFileError when the
    file is now shorter than its headers say.
    """
    if nbytes == 0:
        return memoryview(b"")
    if os.name != "posix":  # Windows: numpy's map (one open handle per frame)
        return memoryview(np.memmap(path, np.uint8, "r", offset, (nbytes,)))
    start = offset - offset % mmap.ALLOCATIONGRANULARITY
    length = offset + nbytes - start
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        size = os.fstat(fd).st_size
        if size < offset + nbytes:  # mapped pages past the end would crash the reader
            raise InputFileError(
                f"is {size} bytes, shorter than when its headers were read "
                f"({offset + nbytes} needed): was it changed during the run?",
                path,
            )
        address = _LIBC.mmap(None, length, mmap.PROT_READ, mmap.MAP_PRIVATE, fd, start)
        if address is None or address == _MAP_FAILED:
            code = ctypes.get_errno()
            raise OSError(code, os.strerror(code), str(path))
    finally:
        os.close(fd)
    pages = (ctypes.c_char * length).from_address(address)
    weakref.finalize(pages, _LIBC.munmap, address, length).atexit = False  # exit unmaps
    return memoryview(pages).toreadonly()[offset - start :]


def verify_checksums(image: FitsImage) -> list[str]:
    """Problems with the CHECKSUM/DATASUM cards of an image (reads its pixels).

    Returns an empty list when both match or are absent.
    """
    if "CHECKSUM" not in image.header and "DATASUM" not in image.header:
        return []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            with (
                open(image.path, "rb") as f,
                fits.open(f, checksum=True, do_not_scale_image_data=True) as hdul,
            ):
                _ = hdul[image.hdu].data
        except Exception as exc:  # astropy fails where our reader did not
            return [f"{image.path}: CHECKSUM/DATASUM cannot be verified: {exc}"]
    messages = [str(w.message).strip() for w in caught]  # astropy's end with a newline
    return [f"{image.path}: {m}" for m in messages if "verification failed" in m]


# ---- outputs ------------------------------------------------------------------

# CHECKSUM characters may not be punctuation (FITS standard 4.0, appendix J).
_CHECKSUM_EXCLUDED = frozenset(b":;<=>?@[\\]^_`")


def write_images(path: Path, hdul: fits.HDUList, chunk_bytes: int = 4 << 20) -> Future[str]:
    """Write an HDUList of 2-D images to a new FITS file ``path``, with CHECKSUM
    and DATASUM cards in every HDU; return a Future of the sha256 (hex) of the file.

    The file is the one ``hdul.writeto(path, checksum=True)`` writes, without
    its passes over the data: the data sums come from the arrays as they are
    in memory, and the bytes go out big-endian through a :class:`_ChunkedFile`
    of ``chunk_bytes`` (a multiple of 4).  The file is complete and closed on
    return; the hash of its last chunk may still be running (flush the file to
    disk meanwhile).  Each HDU's data must be a C-contiguous array of native
    byte order with 2- or 4-byte items (int16, int32, float32).  OSError when
    the file cannot be written.
    """
    hdul.verify("exception")
    hdul.update_extend()
    with _ChunkedFile(path, chunk_bytes) as out:
        for hdu in hdul:
            out.write(np.frombuffer(_header_with_checksums(hdu), np.uint8))
            flat = hdu.data.reshape(-1)
            out.write(flat, ">")
            out.write(np.zeros(-flat.nbytes % FITS_BLOCK, np.uint8))
    return out.sha256


class _ChunkedFile:
    """A new file written through buffers of ``chunk_bytes``: once full, each is
    hashed (SHA-256, in order) in one thread and written in another, while the
    caller fills the next (hashlib and ``os.write`` release the GIL).

    Where the system allows it and ``chunk_bytes`` is a whole number of pages,
    the file is opened with ``O_DIRECT``: the page-aligned buffers go to the
    disk without a copy into the page cache (fresh pages there cost about as
    much as the disk's own write), and a caller's ``fsync`` has little left to
    do.  A master dark of 168 MB took 0.21 s this way against 0.40 s through
    the page cache with the flush overlapped (medians of 6, 2 cores).  A
    direct write that fails or comes short (a last chunk of odd size, a file
    system that wants larger blocks, a full disk) is written again through the
    page cache, which gives the system's own error.  ``sha256`` is a Future of
    the hex digest once the block is left; on an error the writes stop and the
    file is closed (the caller removes it).
    """

    BUFFERS = 3

    def __init__(self, path: Path, chunk_bytes: int):
        flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_CLOEXEC", 0)
        direct = getattr(os, "O_DIRECT", 0) if chunk_bytes % mmap.PAGESIZE == 0 else 0
        try:
            self.fd = os.open(path, flags | direct, 0o666)
        except OSError as exc:  # EINVAL: a file system without direct writes (tmpfs)
            if not direct or exc.errno != errno.EINVAL:
                raise
            direct = 0
            self.fd = os.open(path, flags, 0o666)
        self.direct = bool(direct)
        # Anonymous maps: page-aligned, as direct writes need.
        self.buffers = [
            np.frombuffer(mmap.mmap(-1, chunk_bytes), np.uint8) for _ in range(self.BUFFERS)
        ]
        self.pending: list[tuple[Future, Future] | None] = [None] * self.BUFFERS
        self.k, self.filled = 0, 0  # the buffer being filled, and its bytes
        self.digest = hashlib.sha256()
        self.hasher = ThreadPoolExecutor(max_workers=1)
        self.writer = ThreadPoolExecutor(max_workers=1)
        self.sha256: Future[str] | None = None

    def write(self, items: np.ndarray, byteorder: str = "=") -> None:
        """Append the items of a 1-D array in the given byte order ("=": as
        they are; ">": big-endian)."""
        dtype = items.dtype.newbyteorder(byteorder)
        start = 0
        while start < items.size:
            buffer = self._free_buffer()
            room = buffer[self.filled :].view(dtype)[: items.size - start]
            np.copyto(room, items[start : start + room.size])
            start += room.size
            self.filled += room.nbytes
            if self.filled == buffer.size:
                self._send()

    def _free_buffer(self) -> np.ndarray:
        """The buffer being filled, once its last chunk is hashed and written."""
        if self.pending[self.k] is not None:
            for job in self.pending[self.k]:
                job.result()  # a write's OSError is raised here
            self.pending[self.k] = None
        return self.buffers[self.k]

    def _send(self) -> None:
        chunk = self.buffers[self.k][: self.filled]
        self.pending[self.k] = (
            self.hasher.submit(self.digest.update, chunk),
            self.writer.submit(self._write_all, chunk),
        )
        self.k, self.filled = (self.k + 1) % self.BUFFERS, 0

    def _write_all(self, chunk: np.ndarray) -> None:
        view = memoryview(chunk)
        while view:
            if self.direct and len(view) % mmap.PAGESIZE:
                self._stop_direct()
            try:
                written = os.write(self.fd, view)
            except OSError:
                if not self.direct:
                    raise
                written = 0
            if self.direct and written < len(view):
                self._stop_direct()
            view = view[written:]

    def _stop_direct(self) -> None:
        fcntl.fcntl(self.fd, fcntl.F_SETFL, fcntl.fcntl(self.fd, fcntl.F_GETFL) & ~os.O_DIRECT)
        self.direct = False

    def __enter__(self) -> _ChunkedFile:
        return self

    def __exit__(self, exc_type, *exc) -> None:
        done = False
        try:
            if exc_type is None:
                if self.filled:
                    self._send()
                for _ in range(self.BUFFERS):  # every write done, the last one included
                    self.k = (self.k + 1) % self.BUFFERS
                    self._free_buffer()
                self.sha256 = self.hasher.submit(self.digest.hexdigest)
                done = True
        finally:  # on an error: the running write ends before the file is closed
            self.writer.shutdown(wait=True, cancel_futures=not done)
            self.hasher.shutdown(wait=False, cancel_futures=not done)
            os.close(self.fd)


def _header_with_checksums(hdu) -> bytes:
    """The HDU's header as written, with its DATASUM and CHECKSUM cards set."""
    header, datasum = hdu.header, _data_sum(hdu.data)
    header["CHECKSUM"] = ("0" * 16, "HDU checksum")
    header["DATASUM"] = (str(datasum), "data unit checksum")
    block = header.tostring().encode("ascii")
    total = int(np.frombuffer(block, dtype=">u4").sum(dtype=np.uint64)) + datasum
    header["CHECKSUM"] = _encode_checksum(~_fold32(total) & 0xFFFFFFFF)
    return header.tostring().encode("ascii")


def _fold32(total: int) -> int:
    """A sum of 32-bit words folded to 32 bits with end-around carry (ones'
    complement addition)."""
    while total >> 32:
        total = (total & 0xFFFFFFFF) + (total >> 32)
    return total


def _data_sum(data: np.ndarray) -> int:
    """FITS DATASUM of an array as written big-endian: the ones' complement sum
    of its 32-bit words, from the (C-contiguous, native-order) array in memory.

    A 4-byte item is one word whatever the byte order.  Two 2-byte items a, b
    make the word ``a * 2**16 + b``; read natively on a little-endian machine
    the same bytes are ``b * 2**16 + a``, which times 2**16 is the word modulo
    2**32 - 1 (the modulus of ones' complement sums): their sum is rotated by
    16 bits.
    """
    if not (data.flags.c_contiguous and data.dtype.isnative and data.dtype.kind in "iuf"):
        raise ValueError(f"cannot sum {data.dtype} data that is not C-contiguous and native")
    flat = data.reshape(-1)
    if flat.itemsize == 4:
        return _fold32(int(np.add.reduce(flat.view(np.uint32), dtype=np.uint64)))
    if flat.itemsize != 2:
        raise ValueError(f"cannot sum {data.dtype} data (2- or 4-byte items only)")
    even = flat.size // 2 * 2
    total = _fold32(int(np.add.reduce(flat[:even].view(np.uint32), dtype=np.uint64)))
    if sys.byteorder == "little":
        total = ((total << 16) | (total >> 16)) & 0xFFFFFFFF
    if flat.size > even:  # the last item is the high half of a word padded with zeros
        total = _fold32(total + (int(flat[even:].view(np.uint16)[0]) << 16))
    return total


def _encode_checksum(value: int) -> str:
    """The 16 characters of a CHECKSUM card for the 32-bit complement of an
    HDU's sum (FITS standard 4.0, appendix J): each byte spread over four
    characters from '0', kept clear of punctuation, rotated by one."""
    chars = [0] * 16
    for i in range(4):
        quotient, remainder = divmod((value >> (24 - 8 * i)) & 0xFF, 4)
        ch = [0x30 + quotient + remainder] + [0x30 + quotient] * 3
        while any(c in _CHECKSUM_EXCLUDED for c in ch):
            for j in (0, 2):
                if ch[j] in _CHECKSUM_EXCLUDED or ch[j + 1] in _CHECKSUM_EXCLUDED:
                    ch[j] += 1
                    ch[j + 1] -= 1
        for j in range(4):
            chars[4 * j + i] = ch[j]
    return bytes(chars[15:] + chars[:15]).decode("ascii")


def check_output_folder(folder: str | Path, create: bool = True) -> Path:
    """Prove a folder writable by writing a temp file there, creating it if
    needed; with create=False a missing folder is checked through the nearest
    existing parent (nothing is created)."""
    folder = Path(folder)
    probe = folder
    if not create:
        while not probe.exists() and probe != probe.parent:
            probe = probe.parent
    try:
        if create:
            folder.mkdir(parents=True, exist_ok=True)
        if not probe.is_dir():
            raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), str(probe))
        with tempfile.NamedTemporaryFile(dir=probe, prefix=".megara_dark-probe-"):
            pass
    except OSError as exc:
        raise OutputError(f"output folder is not writable: {exc.strerror or exc}", folder) from None
    return folder


def check_not_an_input(output: Path, inputs: list[Path]) -> None:
    """Refuse an output path that is (or links to) one of the inputs."""
    out_real = os.path.realpath(output)
    for path in inputs:
        same = out_real == os.path.realpath(path)
        if not same and output.exists():
            try:
                same = os.path.samefile(output, path)
            except OSError:
                same = False
        if same:
            raise OutputError(f"would overwrite the input {path}; choose another output", output)


class StagedOutputs:
    """Products written to temp files in their folders, renamed into place together.

    ``stage(path)`` returns the temp path to write; ``commit()`` renames every
    staged file onto its target; leaving the ``with`` block without commit
    (an error, Ctrl-C) removes the temp files and leaves old products intact.
    """

    def __init__(self, overwrite: bool = False):
        self.overwrite = overwrite
        self._staged: list[tuple[Path, Path]] = []

    def check_target(self, path: Path) -> None:
        if path.exists() and not self.overwrite:
            raise OutputError(
                "exists already (replace it with --overwrite, or overwrite=True)", path
            )

    def stage(self, path: str | Path) -> Path:
        path = Path(path)
        self.check_target(path)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:
            os.fchmod(fd, 0o666 & ~_UMASK)  # as a plain open() would create it
        finally:
            os.close(fd)
        self._staged.append((Path(tmp), path))
        return Path(tmp)

    def commit(self) -> None:
        for _, path in self._staged:
            self.check_target(path)
        with interrupts_deferred():  # never half of the products renamed
            for tmp, path in self._staged:
                os.replace(tmp, path)
        self._staged.clear()

    def discard(self) -> None:
        for tmp, _ in self._staged:
            tmp.unlink(missing_ok=True)
        self._staged.clear()

    def __enter__(self) -> StagedOutputs:
        return self

    def __exit__(self, *exc) -> None:
        self.discard()


@contextmanager
def interrupts_deferred() -> Iterator[None]:
    """Hold SIGINT and SIGTERM until the block is done, then act on them.

    Python runs signal handlers in the main thread between bytecodes, so
    Ctrl-C could otherwise stop the block half-way; elsewhere than in the
    main thread (where handlers cannot be changed), or when a handler was not
    set from Python, the block runs as it is.
    """
    signums = (signal.SIGINT, signal.SIGTERM)
    if threading.current_thread() is not threading.main_thread() or any(
        signal.getsignal(s) is None for s in signums
    ):
        yield
        return
    held = []
    previous = {
        s: signal.signal(s, lambda signum, frame: held.append((signum, frame))) for s in signums
    }
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        for signum, frame in held:
            if callable(previous[signum]):
                previous[signum](signum, frame)
            elif previous[signum] == signal.SIG_DFL:
                signal.raise_signal(signum)


@contextmanager
def writing(path: Path) -> Iterator[None]:
    """Turn an OSError while writing a product into an OutputError naming it."""
    try:
        yield
    except OSError as exc:
        raise OutputError(f"cannot be written: {exc.strerror or exc}", path) from exc


def fsync_file(path: Path) -> None:
    """Flush a written file to disk (so a rename never exposes a short file)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# ---- observation results ---------------------------------------------------------


@dataclass(frozen=True)
class ObservationResult:
    """A numina observation result: id, instrument, mode, frame paths and the
    master bias named under ``requirements`` (None when absent)."""

    id: str
    instrument: str
    mode: str
    frames: list[Path]
    master_bias: Path | None


def read_obresult(path: str | Path, *, mode: str) -> ObservationResult:
    """Read a numina observation-result YAML file (one document).

    Frame paths (and ``requirements: master_bias``) are relative to the YAML
    file's folder unless absolute.  The instrument must be MEGARA and the mode
    ``mode``; every problem is a ValidationError naming the file.
    """
    import yaml  # imported here: only observation results need it

    path = Path(path)
    check_readable_file(path)
    try:
        documents = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise _file_problem(path, f"is not valid YAML: {exc}") from None
    if len(documents) != 1 or not isinstance(documents[0], dict):
        raise _file_problem(path, f"must hold one observation result, found {len(documents)}")
    doc = documents[0]
    problems = []
    for key in ("id", "instrument", "mode"):
        if key not in doc:
            problems.append(f"{path}: '{key}' is missing")
    frames = doc.get("frames", doc.get("images"))
    if not isinstance(frames, list) or not frames or not all(isinstance(f, str) for f in frames):
        problems.append(f"{path}: 'frames' must be a non-empty list of file names")
    if str(doc.get("instrument", "MEGARA")).upper() != "MEGARA":
        problems.append(f"{path}: instrument is {doc['instrument']!r}, not 'MEGARA'")
    if doc.get("mode", mode) != mode:
        problems.append(f"{path}: mode is {doc['mode']!r}, not {mode!r}")
    requirements = doc.get("requirements") or {}
    if not isinstance(requirements, dict):
        problems.append(f"{path}: 'requirements' must be a mapping")
        requirements = {}
    if problems:
        raise ValidationError(problems)
    bias = requirements.get("master_bias")
    return ObservationResult(
        id=str(doc["id"]),
        instrument=str(doc["instrument"]),
        mode=str(doc["mode"]),
        frames=[path.parent / f for f in frames],
        master_bias=None if bias is None else path.parent / str(bias),
    )
