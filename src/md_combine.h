/*
 * md_combine.h -- the C contract of megara_dark's combination core.
 *
 * Plain C99, no Python.  Every entry point returns an int status (MD_OK = 0).
 * The caller owns every buffer; the core allocates only its own scratch and
 * frees it before returning.
 *
 * Memory layout: images are 2-D, addressed through byte strides,
 *   pixel (y, x) lives at  (const char *)data + y * row_stride + x * col_stride.
 * Units: whatever the caller's physical units are (ADU for MEGARA frames);
 * the core never rescales except through the documented bscale/bzero, bias,
 * row offsets, zeros and scales.
 *
 * Per pixel, in this order (frame i, row y, column x):
 *   1. physical = bscale_i * raw + bzero_i; a raw integer equal to the
 *      frame's BLANK, a non-finite value, or a non-zero mask value is bad;
 *   2. value = physical - bias(y, x) - row_offsets[i * ny + y];
 *   3. value = (value - zeros[i]) / scales[i];  non-finite results are bad;
 *   4. rejection (method dependent), on the good values only;
 *   5. combination of the surviving values.
 * Bad values never reach the combination; a pixel with no usable value gets
 * params.fill (NaN by default), npix = 0 and variance NaN.
 *
 * Reductions over frames run in a fixed order that does not depend on the
 * thread count, the row block size or the column tile width, so results are
 * bit-identical for any of them.
 */
#ifndef MD_COMBINE_H
#define MD_COMBINE_H

#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Status codes. */
#define MD_OK 0
#define MD_ERR_NOMEM 1 /* a scratch allocation failed */
#define MD_ERR_ARG 2   /* an argument is out of range or missing */

/* Pixel types of input images and output planes. */
#define MD_UINT8 1
#define MD_INT16 2
#define MD_UINT16 3
#define MD_INT32 4
#define MD_INT64 5
#define MD_FLOAT32 6
#define MD_FLOAT64 7

/* Combination methods. */
#define MD_MEAN 0         /* (weighted) mean of the good values */
#define MD_SUM 1          /* sum of the good values */
#define MD_MEDIAN 2       /* exact median; an even count averages the middle two */
#define MD_SIGCLIP 3      /* iterative sigma clipping, then the (weighted) mean */
#define MD_CCDCLIP 4      /* clipping against the CCD noise model, then the mean */
#define MD_MINMAX 5       /* drop nlow lowest and nhigh highest good values, mean */
#define MD_QUANTILECLIP 6 /* drop fclip * n good values at each end (interpolated), mean */

/* Clipping centre and spread (MD_SIGCLIP, MD_CCDCLIP uses the centre only). */
#define MD_CENTRE_MEDIAN 0
#define MD_CENTRE_MEAN 1
#define MD_SPREAD_MAD 0 /* 1.4826 * median absolute deviation from the centre */
#define MD_SPREAD_STD 1 /* sample standard deviation (n - 1) about the mean */

/* A read-only 2-D input image (a frame, a mask or the bias). */
typedef struct md_image {
    const void *data;     /* address of pixel (0, 0) */
    int dtype;            /* MD_UINT8 ... MD_FLOAT64 */
    int swapped;          /* non-zero: bytes are in non-native order */
    long long row_stride; /* bytes from (y, x) to (y + 1, x) */
    long long col_stride; /* bytes from (y, x) to (y, x + 1) */
    double bscale;        /* physical = bscale * raw + bzero (masks: ignored) */
    double bzero;
    int has_blank;        /* integer dtypes: raw == blank marks a bad pixel */
    long long blank;
} md_image;

/* A writable 2-D output plane; data == NULL means "do not produce". */
typedef struct md_plane {
    void *data;
    int dtype; /* value/variance: MD_FLOAT32 or MD_FLOAT64; counts: any */
    long long row_stride;
    long long col_stride;
} md_plane;

/* Everything that is read, for nframes images of ny x nx pixels. */
typedef struct md_inputs {
    size_t nframes, ny, nx;
    const md_image *frames;    /* nframes images */
    const md_image *masks;     /* NULL, or nframes images (data may be NULL) */
    const md_image *bias;      /* NULL, or one image subtracted from every frame */
    const double *row_offsets; /* NULL, or nframes * ny values, [i * ny + y] */
    const double *zeros;       /* NULL, or nframes values */
    const double *scales;      /* NULL, or nframes values, non-zero */
    const double *weights;     /* NULL, or nframes values > 0 (mean-type methods) */
} md_inputs;

/*
 * Method and its parameters.
 *
 * Variance of the combined value: with the "variance set" being the
 * surviving values when at least two survive, else all good values,
 *   s2  = sum w (x - m)^2 / (V1 - V2 / V1)  over the variance set
 *         (the unbiased sample variance when weights are equal),
 *   var = var_factor[n_good] * s2 * V2u / V1u^2,
 * where V1 = sum w, V2 = sum w^2, V1u/V2u are taken over the surviving
 * values and n_good is the number of good values of the pixel.  For an
 * unweighted mean var_factor = 1 gives s2 / n.  The caller chooses the
 * factors (median efficiency, calibration of clipped estimators, ...).
 * Fewer than two values in the variance set give a NaN variance.
 */
typedef struct md_params {
    int method;
    int centre, spread;       /* MD_SIGCLIP (centre also MD_CCDCLIP) */
    double low, high;         /* clip limits, in units of the spread (> 0) */
    int maxiters;             /* clipping iterations, >= 1 */
    double sigma_floor;       /* lower bound of the spread, >= 0 */
    double gain, rdnoise;     /* MD_CCDCLIP: e-/ADU (> 0) and e- (>= 0) */
    int nlow, nhigh;          /* MD_MINMAX, >= 0 */
    double fclip;             /* MD_QUANTILECLIP, 0 <= fclip < 0.5 */
    double fill;              /* value where no good value is left */
    const double *var_factor; /* nframes + 1 factors, see above */
} md_params;

/* The four output planes, each ny x nx. value is required. */
typedef struct md_outputs {
    md_plane value;     /* the combined value */
    md_plane variance;  /* variance of the combined value (see md_params) */
    md_plane npix;      /* number of values used in the combination */
    md_plane nrejected; /* good values removed by the rejection step */
    /* Non-zero: the variance plane receives sqrt(variance * npix) instead, the
     * standard deviation of the values used when var_factor is 1 (numina's
     * sigmaclip plane), computed from the stored planes in the variance
     * plane's type as NumPy would; needs the npix plane. */
    int variance_as_std;
    double *fewest; /* NULL, or set to the smallest npix of the rows combined */
} md_outputs;

/*
 * Combine rows [row_begin, row_end) of the inputs into the same rows of the
 * outputs.  nthreads = 0 uses the OpenMP default; block_rows (>= 1) is the
 * number of rows a thread takes at a time.  Returns MD_OK, MD_ERR_ARG or
 * MD_ERR_NOMEM; on error the outputs are partly written.
 */
int md_combine(const md_inputs *in, const md_params *params, const md_outputs *out,
               size_t row_begin, size_t row_end, int nthreads, size_t block_rows);

/* A short English description of a status code (static storage). */
const char *md_strerror(int status);

/* 1 when the core was built with OpenMP, else 0. */
int md_openmp_enabled(void);

/* The default number of threads (1 without OpenMP). */
int md_default_threads(void);

#ifdef __cplusplus
}
#endif

#endif /* MD_COMBINE_H */
