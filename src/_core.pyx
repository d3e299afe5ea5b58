# cython: language_level=3, boundscheck=False, wraparound=False
"""Conversion and dispatch between NumPy arrays and the C core (md_combine.h).

This module holds no policy: ``megara_dark.combine`` validates arguments and
chooses parameters; here arrays become ``md_image``/``md_plane`` descriptors,
the GIL is released around the C call, and C status codes become exceptions.
"""

cimport numpy as cnp
from cpython.exc cimport PyErr_CheckSignals
from libc.stdlib cimport free, malloc
from libc.math cimport INFINITY
from libc.string cimport memset

from time import perf_counter

import numpy as np

cnp.import_array()


cdef extern from "md_combine.h" nogil:
    int MD_OK, MD_ERR_NOMEM, MD_ERR_ARG
    int MD_UINT8, MD_INT16, MD_UINT16, MD_INT32, MD_INT64, MD_FLOAT32, MD_FLOAT64
    int MD_MEAN, MD_SUM, MD_MEDIAN, MD_SIGCLIP, MD_CCDCLIP, MD_MINMAX, MD_QUANTILECLIP
    int MD_CENTRE_MEDIAN, MD_CENTRE_MEAN, MD_SPREAD_MAD, MD_SPREAD_STD

    ctypedef struct md_image:
        const void *data
        int dtype
        int swapped
        long long row_stride
        long long col_stride
        double bscale
        double bzero
        int has_blank
        long long blank

    ctypedef struct md_plane:
        void *data
        int dtype
        long long row_stride
        long long col_stride

    ctypedef struct md_inputs:
        size_t nframes, ny, nx
        const md_image *frames
        const md_image *masks
        const md_image *bias
        const double *row_offsets
        const double *zeros
        const double *scales
        const double *weights

    ctypedef struct md_params:
        int method
        int centre, spread
        double low, high
        int maxiters
        double sigma_floor
        double gain, rdnoise
        int nlow, nhigh
        double fclip
        double fill
        const double *var_factor

    ctypedef struct md_outputs:
        md_plane value
        md_plane variance
        md_plane npix
        md_plane nrejected
        int variance_as_std
        double *fewest

    int md_combine(const md_inputs *inp, const md_params *params, const md_outputs *out,
                   size_t row_begin, size_t row_end, int nthreads, size_t block_rows)
    const char *md_strerror(int status)
    int md_openmp_enabled()
    int md_default_threads()


METHODS = {
    "mean": MD_MEAN,
    "sum": MD_SUM,
    "median": MD_MEDIAN,
    "sigclip": MD_SIGCLIP,
    "ccdclip": MD_CCDCLIP,
    "minmax": MD_MINMAX,
    "quantileclip": MD_QUANTILECLIP,
}
CENTRES = {"median": MD_CENTRE_MEDIAN, "mean": MD_CENTRE_MEAN}
SPREADS = {"mad": MD_SPREAD_MAD, "std": MD_SPREAD_STD}

# NumPy (kind, itemsize) -> core dtype code.  Booleans and int8 are read as
# bytes, which is right for masks (non-zero = bad).
_DTYPES = {
    ("u", 1): MD_UINT8, ("b", 1): MD_UINT8, ("i", 1): MD_UINT8,
    ("i", 2): MD_INT16, ("u", 2): MD_UINT16, ("i", 4): MD_INT32, ("i", 8): MD_INT64,
    ("f", 4): MD_FLOAT32, ("f", 8): MD_FLOAT64,
}
INPUT_DTYPES = ("uint8", "int16", "uint16", "int32", "int64", "float32", "float64")
COUNT_DTYPES = ("uint8", "int16", "uint16", "int32", "int64", "float32", "float64")


def build_info():
    """Whether the core has OpenMP, and its default thread count."""
    return {"openmp": bool(md_openmp_enabled()), "default_threads": md_default_threads()}


def dtype_supported(dtype):
    """True when the core reads this NumPy dtype directly (any byte order)."""
    dtype = np.dtype(dtype)
    return (dtype.kind, dtype.itemsize) in _DTYPES


cdef int _code(object dtype) except -1:
    dtype = np.dtype(dtype)
    try:
        return _DTYPES[(dtype.kind, dtype.itemsize)]
    except KeyError:
        raise TypeError(f"the combination core cannot read dtype {dtype}") from None


cdef int _image(md_image *im, cnp.ndarray a, double bscale, double bzero, object blank) except -1:
    if a.ndim != 2:
        raise ValueError(f"expected a 2-D array, got {a.ndim} dimensions")
    im.data = cnp.PyArray_DATA(a)
    im.dtype = _code(a.dtype)
    im.swapped = 0 if a.dtype.isnative or a.dtype.itemsize == 1 else 1
    im.row_stride = a.strides[0]
    im.col_stride = a.strides[1]
    im.bscale = bscale
    im.bzero = bzero
    im.has_blank = blank is not None
    im.blank = int(blank) if blank is not None else 0
    return 0


cdef int _plane(md_plane *pl, object a, tuple shape, bint float_only) except -1:
    memset(pl, 0, sizeof(md_plane))
    if a is None:
        return 0
    cdef cnp.ndarray arr = a
    if a.shape != shape:
        raise ValueError(f"output plane has shape {a.shape}, expected {shape}")
    if not arr.flags.writeable:
        raise ValueError("output plane is read-only")
    if not arr.dtype.isnative:
        raise TypeError("output plane must be in native byte order")
    pl.dtype = _code(arr.dtype)
    if float_only and pl.dtype not in (MD_FLOAT32, MD_FLOAT64):
        raise TypeError(f"value and variance planes must be float32 or float64, not {arr.dtype}")
    pl.data = cnp.PyArray_DATA(arr)
    pl.row_stride = arr.strides[0]
    pl.col_stride = arr.strides[1]
    return 0


cdef const double *_vector(object v, Py_ssize_t n, str name) except? NULL:
    if v is None:
        return NULL
    cdef cnp.ndarray a = v
    if a.dtype != np.float64 or a.ndim != 1 or a.shape[0] != n or not a.flags.c_contiguous:
        raise ValueError(f"{name} must be a contiguous float64 vector of length {n}")
    return <const double *>cnp.PyArray_DATA(a)


def combine_into(list frames, value, *, str method, list bscale, list bzero, list blank,
                 cnp.ndarray var_factor, variance=None, npix=None, nrejected=None,
                 list masks=None, bias=None, tuple bias_scaling=(1.0, 0.0, None),
                 row_offsets=None, zeros=None, scales=None, weights=None,
                 str centre="median", str spread="mad", double low=3.0, double high=3.0,
                 int maxiters=10, double sigma_floor=0.0, double gain=1.0, double rdnoise=0.0,
                 int nlow=1, int nhigh=1, double fclip=0.1, double fill=np.nan,
                 int nthreads=0, Py_ssize_t block_rows=16, Py_ssize_t rows_between_checks=0,
                 progress=None, bint want_fewest=False, bint variance_as_std=False):
    """Run the core on already validated arguments, writing into the planes;
    with want_fewest, returns the smallest npix of any pixel (inf when there
    is no pixel, or without want_fewest).  With variance_as_std, the variance
    plane receives sqrt(variance * npix) (md_outputs; needs npix).

    frames: list of N 2-D arrays of one shape (ny, nx), any supported dtype
    and byte order; bscale/bzero/blank: N numbers (blank: int or None);
    var_factor: float64 vector of N + 1 factors.  The work is split in chunks
    of rows of about CHECK_INTERVAL seconds each; between chunks pending
    signals are handled, so Ctrl-C raises KeyboardInterrupt within that time.
    """
    cdef Py_ssize_t n = len(frames), i
    if n < 1:
        raise ValueError("no frames to combine")
    cdef tuple shape = tuple(frames[0].shape)
    if len(shape) != 2:
        raise ValueError(f"frame 0 has {len(shape)} dimensions, expected 2")
    cdef md_inputs inp
    cdef md_params par
    cdef md_outputs out
    cdef md_image bias_image
    memset(&inp, 0, sizeof(inp))
    memset(&par, 0, sizeof(par))
    memset(&out, 0, sizeof(out))

    inp.nframes = n
    inp.ny = shape[0]
    inp.nx = shape[1]
    cdef md_image *images = <md_image *>malloc(n * sizeof(md_image))
    cdef md_image *mask_images = NULL
    if images == NULL:
        raise MemoryError("cannot allocate frame descriptors")
    try:
        for i in range(n):
            if frames[i].shape != shape:
                raise ValueError(f"frame {i} has shape {frames[i].shape}, expected {shape}")
            _image(&images[i], frames[i], bscale[i], bzero[i], blank[i])
        inp.frames = images
        if masks is not None:
            mask_images = <md_image *>malloc(n * sizeof(md_image))
            if mask_images == NULL:
                raise MemoryError("cannot allocate mask descriptors")
            memset(mask_images, 0, n * sizeof(md_image))
            for i in range(n):
                if masks[i] is None:
                    continue
                if masks[i].shape != shape:
                    raise ValueError(f"mask {i} has shape {masks[i].shape}, expected {shape}")
                _image(&mask_images[i], masks[i], 1.0, 0.0, None)
            inp.masks = mask_images
        if bias is not None:
            if bias.shape != shape:
                raise ValueError(f"bias has shape {bias.shape}, expected {shape}")
            _image(&bias_image, bias, bias_scaling[0], bias_scaling[1], bias_scaling[2])
            inp.bias = &bias_image
        if row_offsets is not None:
            if row_offsets.shape != (n, shape[0]) or row_offsets.dtype != np.float64 \
                    or not row_offsets.flags.c_contiguous:
                raise ValueError(f"row_offsets must be a contiguous float64 array of shape "
                                 f"{(n, shape[0])}")
            inp.row_offsets = <const double *>cnp.PyArray_DATA(row_offsets)
        inp.zeros = _vector(zeros, n, "zeros")
        inp.scales = _vector(scales, n, "scales")
        inp.weights = _vector(weights, n, "weights")

        par.method = METHODS[method]
        par.centre = CENTRES[centre]
        par.spread = SPREADS[spread]
        par.low = low
        par.high = high
        par.maxiters = maxiters
        par.sigma_floor = sigma_floor
        par.gain = gain
        par.rdnoise = rdnoise
        par.nlow = nlow
        par.nhigh = nhigh
        par.fclip = fclip
        par.fill = fill
        par.var_factor = _vector(var_factor, n + 1, "var_factor")

        _plane(&out.value, value, shape, True)
        _plane(&out.variance, variance, shape, True)
        _plane(&out.npix, npix, shape, False)
        _plane(&out.nrejected, nrejected, shape, False)
        if variance_as_std and (variance is None or npix is None):
            raise ValueError("variance_as_std needs the variance and npix planes")
        out.variance_as_std = variance_as_std

        return _run(&inp, &par, &out, nthreads, block_rows, rows_between_checks, progress,
                    want_fewest)
    finally:
        free(images)
        free(mask_images)


# Target time between two checks for Ctrl-C (seconds).
CHECK_INTERVAL = 0.05


cdef double _run(md_inputs *inp, md_params *par, md_outputs *out, int nthreads,
                 Py_ssize_t block_rows, Py_ssize_t rows_between_checks, progress,
                 bint want_fewest) except? -1:
    """Run the rows in chunks, handling signals (and calling progress(rows
    done, rows in all), when given) between chunks.  Unless
    rows_between_checks is given, a chunk's rows double or halve (down to one
    row per thread) so a chunk takes about CHECK_INTERVAL; when that is less
    than block_rows per thread, blocks shrink so every thread still gets rows
    (results depend on neither).  Returns the smallest npix written (with
    want_fewest; else inf)."""
    cdef size_t y = 0, y_end, ny = inp.ny, step, block
    cdef size_t threads = nthreads if nthreads > 0 else md_default_threads()
    cdef int status = MD_OK
    cdef double elapsed, fewest = INFINITY, chunk_fewest = INFINITY
    out.fewest = &chunk_fewest if want_fewest else NULL
    if block_rows < 1:
        raise ValueError(f"block_rows must be >= 1, got {block_rows}")
    if nthreads < 0:
        raise ValueError(f"nthreads must be >= 0, got {nthreads}")
    step = rows_between_checks if rows_between_checks > 0 else block_rows * threads
    while y < ny:
        y_end = y + step if y + step < ny else ny
        block = min(<size_t>block_rows, (step + threads - 1) // threads)
        elapsed = perf_counter()
        with nogil:
            status = md_combine(inp, par, out, y, y_end, nthreads, block)
        if status == MD_ERR_NOMEM:
            raise MemoryError(md_strerror(status).decode())
        if status != MD_OK:
            raise ValueError(md_strerror(status).decode())
        PyErr_CheckSignals()
        fewest = min(fewest, chunk_fewest)
        y = y_end
        if progress is not None:
            progress(y, ny)
        elapsed = perf_counter() - elapsed
        if rows_between_checks <= 0 and elapsed < CHECK_INTERVAL / 2:
            step *= 2
        elif rows_between_checks <= 0 and elapsed > CHECK_INTERVAL and step > threads:
            step = max(threads, step // 2)
    return fewest
