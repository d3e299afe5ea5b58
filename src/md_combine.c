/*
 * md_combine.c -- the driver: argument checks, OpenMP over row blocks, and
 * per (row, column tile) the gather of N frames into a tile of doubles,
 * followed by the method.
 *
 * A tile holds one row of up to TW columns for every frame, frame-major
 * (rows[i][x]), so per-pixel work over frames runs down a column and a
 * compare-exchange or an accumulation runs along w pixels at once.
 *
 * Bad values are stored as MD_BAD (+inf), which sorts after every good value.
 * Mean and sum are accumulated column-wise for every pixel, with bad values
 * contributing nothing.  Median and the rejection methods sort each pixel's
 * values, by a sorting network across the tile or by a scalar sort of the
 * pixel's good values; both give the same sorted values, so a pixel's result
 * never depends on its neighbours, the tile width or the thread count.
 *
 * Most tiles hold no bad value.  Where no frame is masked or normalised, a
 * tile is first gathered without any check, its column sums taken on the
 * way (gather_clean); if every sum is finite, so is every value, and the
 * method runs on the tile gather() would have made, with the sums reused for
 * the mean.  Otherwise the tile is gathered again, with the checks.  Both
 * ways give every pixel the same bits, so a tile's way may depend on its
 * neighbours (after a tile with bad values the cheap way is skipped for a
 * while) without any result depending on it.  For the rejection methods on
 * plain float32 or int16 frames the cheap way also sorts (gather_sorted): the
 * frames' own values keep the order of the tile's, and sort on narrower lanes.
 */
#ifndef _POSIX_C_SOURCE
#define _POSIX_C_SOURCE 200112L /* posix_memalign */
#endif
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#ifdef _OPENMP
#include <omp.h>
#endif

#include "md_internal.h"

/* Arrays of the rejection scratch, in its capacities: c, s, tmp, lo, hi,
 * moving, low, high, below, above and results (4); then the index arrays
 * done, order and offset, as wide as doubles. */
#define MD_VCLIP_DOUBLES 17

/* Capacity of the rejection queue, in tile widths. */
#define MD_QUEUE_TILES 8

/* Columns whose sums are accumulated together (in registers). */
#define MD_STRIP 16

/* Target size of a tile, in doubles (it should stay in the L1 cache). */
#ifndef MD_TILE_DOUBLES
#define MD_TILE_DOUBLES 2048
#endif

/* Sorting networks are used up to this many frames; beyond, scalar sorts.
 * (Measured: 201 frames, median, 15 s -> 1.5 s per 256 rows of 4096.) */
#define MD_NETWORK_MAX 1024

/* Fewest columns per tile: wide enough that a compare-exchange over a tile
 * row amortises its loop overhead when many frames make rows short. */
#define MD_TILE_MIN 64

const char *md_strerror(int status)
{
    switch (status) {
    case MD_OK: return "success";
    case MD_ERR_NOMEM: return "out of memory for the combination scratch";
    case MD_ERR_ARG: return "invalid argument to the combination core";
    default: return "unknown status";
    }
}

int md_openmp_enabled(void)
{
#ifdef _OPENMP
    return 1;
#else
    return 0;
#endif
}

int md_default_threads(void)
{
#ifdef _OPENMP
    return omp_get_max_threads();
#else
    return 1;
#endif
}

/* Columns per tile: about MD_TILE_DOUBLES values per tile, a multiple of
 * MD_STRIP, at least MD_TILE_MIN. */
static size_t tile_width(size_t nframes)
{
    size_t tw = MD_TILE_DOUBLES / nframes;
    tw -= tw % MD_STRIP;
    if (tw < MD_TILE_MIN) tw = MD_TILE_MIN;
    if (tw > 1024) tw = 1024;
    return tw;
}

/* ---- exact division by a small integer ---------------------------------------- */

/*
 * a / b correctly rounded (the bits of the division), for b a positive
 * integer below 2^50, by multiplications and FMAs, in a range of a that the
 * method is proven for (outside it, the caller divides).  With y = RN(1/b),
 * q = RN(a y) lies within 2 ulp of a/b, so the remainder r = a - q b is a
 * multiple of ulp(a/b)/2 below 4b of them: the FMA gets it exactly.
 * q + r y = a/b + r (y - 1/b) is then within 2^-104 * 2^e of a/b
 * (2^e <= |a/b|), while a/b, never a midpoint (that needs 54 significant
 * bits times b's odd part, more than a's 53), lies at least 2^(e-54) / b
 * from any: RN(q + r y) = RN(a/b).  The bounds need a/b normal and a b q
 * finite, hence the range; a = +-0 gives +0, signed as a.
 */

/* out = RN(a / b), with y = RN(1 / b); ok &= 0 when a lies outside the range. */
#define MD_EXACT_QUOTIENT(a, b, y, ok, out)                                                       \
    {                                                                                             \
        const double m_ = fabs(a), q_ = (a) * (y);                                                \
        const double r_ = __builtin_fma(-q_, (b), (a));                                           \
        ok &= (m_ >= 0x1p-960 && m_ <= 0x1p960) | (m_ == 0.0);                                    \
        out = copysign(__builtin_fma(r_, (y), q_), (a));                                          \
    }

/* dst[x] = num[x] / b for x < w; returns 0 after writing dst when some
 * numerator lies outside the range. */
#define MD_DIVIDE_BODY                                                                            \
    {                                                                                             \
        const double y = 1.0 / b;                                                                 \
        uint64_t ok = 1; /* as wide as a double: simpler vector code */                           \
        for (size_t x = 0; x < w; x++) MD_EXACT_QUOTIENT(num[x], b, y, ok, dst[x])                \
        return ok != 0;                                                                           \
    }

/* md_mean_variances' two divisions in one sweep; returns 0 as MD_DIVIDE_BODY. */
#define MD_MEAN_VARIANCES_BODY                                                                    \
    {                                                                                             \
        const double b1 = m - 1.0, b2 = m * m, y1 = 1.0 / b1, y2 = 1.0 / b2;                      \
        uint64_t ok = 1;                                                                          \
        for (size_t x = 0; x < w; x++) {                                                          \
            double q, v;                                                                          \
            MD_EXACT_QUOTIENT(ss[x], b1, y1, ok, q)                                               \
            const double t = k * q * m;                                                           \
            MD_EXACT_QUOTIENT(t, b2, y2, ok, v)                                                   \
            var[x] = v;                                                                           \
        }                                                                                         \
        return ok != 0;                                                                           \
    }

#if MD_LEVELS
MD_V4 static int divide_v4(double *restrict dst, const double *restrict num, size_t w, double b)
MD_DIVIDE_BODY
MD_V3 static int divide_v3(double *restrict dst, const double *restrict num, size_t w, double b)
MD_DIVIDE_BODY
MD_V4 static int mean_variances_v4(double *restrict var, const double *restrict ss, size_t w,
                                   double k, double m)
MD_MEAN_VARIANCES_BODY
MD_V3 static int mean_variances_v3(double *restrict var, const double *restrict ss, size_t w,
                                   double k, double m)
MD_MEAN_VARIANCES_BODY
#endif

void md_divide(double *restrict dst, const double *restrict num, size_t w, double b)
{
#if MD_LEVELS
    const int small = b < 0x1p50;
    if (small && __builtin_cpu_supports("x86-64-v4") && divide_v4(dst, num, w, b)) return;
    if (small && __builtin_cpu_supports("x86-64-v3") && divide_v3(dst, num, w, b)) return;
#endif
    for (size_t x = 0; x < w; x++) dst[x] = num[x] / b;
}

MD_HOT void md_mean_variances(double *restrict var, double *restrict tmp,
                              const double *restrict ss, size_t w, double k, double m)
{
#if MD_LEVELS
    const int small = m * m < 0x1p50;
    if (small && __builtin_cpu_supports("x86-64-v4") && mean_variances_v4(var, ss, w, k, m))
        return;
    if (small && __builtin_cpu_supports("x86-64-v3") && mean_variances_v3(var, ss, w, k, m))
        return;
#endif
    md_divide(tmp, ss, w, m - 1.0);
    for (size_t x = 0; x < w; x++) tmp[x] = k * tmp[x] * m;
    md_divide(var, tmp, w, m * m);
}

/* ---- argument checks ----------------------------------------------------- */

static int image_ok(const md_image *im)
{
    return im && im->data && md_dtype_size(im->dtype) != 0 && isfinite(im->bscale)
           && isfinite(im->bzero);
}

static int plane_ok(const md_plane *pl, int float_only)
{
    if (!pl->data) return 1;
    if (float_only) return pl->dtype == MD_FLOAT32 || pl->dtype == MD_FLOAT64;
    return md_dtype_size(pl->dtype) != 0;
}

static int params_ok(const md_params *p)
{
    if (!p->var_factor) return 0;
    switch (p->method) {
    case MD_MEAN: case MD_SUM: case MD_MEDIAN: return 1;
    case MD_MINMAX: return p->nlow >= 0 && p->nhigh >= 0;
    case MD_QUANTILECLIP: return p->fclip >= 0.0 && p->fclip < 0.5;
    case MD_SIGCLIP: case MD_CCDCLIP:
        if (!(p->low > 0.0 && p->high > 0.0 && p->maxiters >= 1 && p->sigma_floor >= 0.0))
            return 0;
        if (p->centre != MD_CENTRE_MEDIAN && p->centre != MD_CENTRE_MEAN) return 0;
        if (p->method == MD_CCDCLIP) return p->gain > 0.0 && p->rdnoise >= 0.0;
        return p->spread == MD_SPREAD_MAD || p->spread == MD_SPREAD_STD;
    default: return 0;
    }
}

static int inputs_ok(const md_inputs *in)
{
    if (in->nframes < 1 || !in->frames) return 0;
    for (size_t i = 0; i < in->nframes; i++) {
        if (!image_ok(&in->frames[i])) return 0;
        if (in->masks && in->masks[i].data && md_dtype_size(in->masks[i].dtype) == 0) return 0;
        if (in->scales && !(isfinite(in->scales[i]) && in->scales[i] != 0.0)) return 0;
        if (in->zeros && !isfinite(in->zeros[i])) return 0;
        if (in->weights && !(isfinite(in->weights[i]) && in->weights[i] > 0.0)) return 0;
    }
    return !in->bias || image_ok(in->bias);
}

/* ---- per-thread scratch ---------------------------------------------------- */

typedef struct workspace {
    size_t tw;           /* columns per tile */
    double *tile;        /* nframes x tw values (MD_BAD = bad) */
    double **rows;       /* nframes pointers into tile */
    double *bias;        /* tw bias values */
    unsigned char *mask; /* tw mask flags */
    double *nbad;        /* tw: bad values per column */
    double *ngood, *sw, *sww, *swx, *mean, *ss; /* tw column accumulators */
    double *value, *variance, *npix, *nrej;     /* tw results */
    double *pv, *pw;     /* nframes values/weights of one pixel */
    md_vclip_scratch vc; /* rejection across columns (md_vclip.c) */
    double *vc_doubles;  /* memory of vc ... */
    double *vc_queue;    /* ... and of its queue */
    double *row_results; /* with a queue: 4 x nx results of the row (vc.row) */
    int have_sums;       /* the tile is clean and swx holds its column sums */
    int sorted;          /* ... or the tile is clean and its columns sorted (gather_sorted) */
    int skip, backoff;   /* tiles gather_clean skips, and how many after a miss */
    int all_used;        /* npix = nframes and nrejected = 0: npix/nrej not set */
    int plain_float32;   /* a clean gather's values are the frames' floats (+ 0.0) */
    int plain_int16;     /* ... or the frames' int16 t as a * t + b, a > 0 (frames[0]'s) */
    int gathers_sorted;  /* clean tiles are gathered by gather_sorted */
    double fewest;       /* smallest npix stored by this thread */
} workspace;

static void workspace_free(workspace *ws)
{
    free(ws->tile);
    free(ws->rows);
    free(ws->mask);
    free(ws->bias);
    free(ws->pv);
    free(ws->pw);
    free(ws->vc_doubles);
    free(ws->vc_queue);
    free(ws->row_results);
    free(ws->vc.dev_rows);
    memset(ws, 0, sizeof *ws);
}

/* Point the rejection scratch into its block of memory. */
static void vclip_layout(workspace *ws, size_t nframes, size_t cap)
{
    md_vclip_scratch *vc = &ws->vc;
    double **arrays[] = {&vc->c,      &vc->s,   &vc->tmp,  &vc->lo,    &vc->hi,   &vc->moving,
                         &vc->low,    &vc->high, &vc->below, &vc->above, &vc->results};
    const size_t lengths[] = {1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 4};
    double *next = ws->vc_doubles;
    for (size_t k = 0; k < sizeof arrays / sizeof arrays[0]; k++) {
        *arrays[k] = next;
        next += lengths[k] * cap;
    }
    _Static_assert(sizeof(size_t) <= sizeof(double), "an index fits where a double does");
    vc->done = (size_t *)(void *)next;
    vc->order = vc->done + cap;
    vc->offset = vc->order + cap;
    next += 3 * cap;
    for (size_t i = 0; i < nframes; i++) vc->dev_rows[i] = next + i * cap;
    vc->capacity = cap;
    vc->pv = ws->pv;
    if (ws->vc_queue) md_vclip_queue_layout(vc, nframes, ws->vc_queue);
}

/* n zeroed doubles on a cache-line boundary (vector loads and stores of a
 * tile row then never straddle two lines), or NULL; free with free(). */
static double *alloc_doubles(size_t n)
{
    void *p = NULL;
    if (posix_memalign(&p, 64, n * sizeof(double)) != 0) return NULL;
    return memset(p, 0, n * sizeof(double));
}

/* tw is a multiple of MD_STRIP; memory is zeroed so padding is defined.
 * cap: columns of the rejection scratch (md_vclip.c), 0 when it is not used;
 * queue: whether it has a queue (not zeroed: only its columns are read), and
 * the results of rows of nx columns. */
static int workspace_alloc(workspace *ws, size_t nframes, size_t tw, size_t cap, int queue,
                           size_t nx)
{
    memset(ws, 0, sizeof *ws);
    ws->tw = tw;
    ws->fewest = INFINITY;
    double **planes[] = {&ws->bias, &ws->nbad, &ws->ngood, &ws->sw, &ws->sww, &ws->swx,
                         &ws->mean, &ws->ss, &ws->value, &ws->variance, &ws->npix, &ws->nrej};
    const size_t nplanes = sizeof planes / sizeof planes[0];
    ws->tile = alloc_doubles(nframes * tw);
    ws->rows = malloc(nframes * sizeof(double *));
    ws->mask = calloc(tw, 1);
    ws->bias = alloc_doubles(nplanes * tw); /* one block for the tw-long arrays */
    ws->pv = malloc(nframes * sizeof(double));
    ws->pw = malloc(nframes * sizeof(double));
    if (cap) {
        ws->vc_doubles = alloc_doubles((MD_VCLIP_DOUBLES + nframes) * cap);
        ws->vc.dev_rows = malloc(nframes * sizeof(double *));
    }
    if (cap && queue) {
        void *q = NULL;
        const size_t bytes = md_vclip_queue_doubles(nframes, cap) * sizeof(double);
        ws->vc_queue = posix_memalign(&q, 64, bytes) == 0 ? q : NULL;
        ws->row_results = alloc_doubles(4 * nx);
    }
    if (!ws->tile || !ws->rows || !ws->mask || !ws->bias || !ws->pv || !ws->pw
        || (cap && (!ws->vc_doubles || !ws->vc.dev_rows))
        || (cap && queue && (!ws->vc_queue || !ws->row_results))) {
        workspace_free(ws);
        return MD_ERR_NOMEM;
    }
    if (cap) vclip_layout(ws, nframes, cap);
    for (size_t k = 0; k < 4 && ws->row_results; k++) ws->vc.row[k] = ws->row_results + k * nx;
    for (size_t k = 1; k < nplanes; k++) *planes[k] = ws->bias + k * tw;
    for (size_t i = 0; i < nframes; i++) ws->rows[i] = ws->tile + i * tw;
    return MD_OK;
}

/* ---- one tile ---------------------------------------------------------------- */

/* The first byte of row y of an image. */
static inline const char *image_row(const md_image *im, size_t y)
{
    return (const char *)im->data + (ptrdiff_t)y * im->row_stride;
}

/* rows[i] = pixel (y, x0) of each frame, of plain float32 frames (ws->plain_float32). */
static void float32_rows(const md_inputs *in, size_t y, size_t x0, const float **rows)
{
    for (size_t i = 0; i < in->nframes; i++)
        rows[i] = (const float *)image_row(&in->frames[i], y) + x0;
}

/* rows[i] = pixel (y, x0) of each frame, of plain int16 frames (ws->plain_int16). */
static void int16_rows(const md_inputs *in, size_t y, size_t x0, const uint16_t **rows)
{
    for (size_t i = 0; i < in->nframes; i++)
        rows[i] = (const uint16_t *)image_row(&in->frames[i], y) + x0;
}

/* Fill rows[i][0..w) with the corrected values of row y, columns x0..;
 * bad values become MD_BAD and are counted per column in nbad. */
MD_HOT static void gather(const md_inputs *in, workspace *ws, size_t y, size_t x0, size_t w)
{
    double *restrict nbad = ws->nbad;
    const double *restrict bias = ws->bias;
    const unsigned char *restrict mask = ws->mask;
    for (size_t x = 0; x < w; x++) nbad[x] = 0.0;
    if (in->bias) md_load_values(in->bias, y, x0, w, ws->bias);
    else memset(ws->bias, 0, w * sizeof(double));
    for (size_t i = 0; i < in->nframes; i++) {
        double *restrict r = ws->rows[i];
        const double off = in->row_offsets ? in->row_offsets[i * in->ny + y] : 0.0;
        /* Zero 0 and scale 1 change no bit, so they are skipped. */
        const double zero = in->zeros ? in->zeros[i] : 0.0;
        const double scale = in->scales ? in->scales[i] : 1.0;
        const int normalise = zero != 0.0 || scale != 1.0;
        const int masked = in->masks && in->masks[i].data;
        if (!normalise && !masked) { /* the common case, in one pass */
            md_load_corrected(&in->frames[i], y, x0, w, bias, off, r, nbad);
            continue;
        }
        md_load_values(&in->frames[i], y, x0, w, r);
        for (size_t x = 0; x < w; x++) r[x] = (r[x] - bias[x]) - off;
        if (normalise)
            for (size_t x = 0; x < w; x++) r[x] = (r[x] - zero) / scale;
        if (masked) {
            md_load_mask(&in->masks[i], y, x0, w, ws->mask);
            for (size_t x = 0; x < w; x++) r[x] = mask[x] ? NAN : r[x];
        }
        for (size_t x = 0; x < w; x++) {
            const int bad = !(r[x] - r[x] == 0.0);
            r[x] = bad ? MD_BAD : r[x];
            nbad[x] += bad ? 1.0 : 0.0;
        }
    }
}

/*
 * The gather of a tile with no frame masked, zeroed or scaled, in one cheap
 * pass: rows[i][0..w) as gather() stores good values, and their column sums
 * in frame order in ws->swx (bad values are not marked, but make a sum NaN
 * or infinite).  Returns 1 when every sum is finite, so every value is good
 * and gather() would have stored the same tile (nbad is then zeroed when
 * zero_nbad); otherwise 0, and the tile must be gathered again by gather().
 */
MD_HOT static int gather_clean(const md_inputs *in, workspace *ws, size_t y, size_t x0, size_t w,
                               int zero_nbad)
{
    double *restrict sum = ws->swx;
    double *restrict offs = ws->pw;
    for (size_t x = 0; x < w; x++) sum[x] = 0.0;
    for (size_t i = 0; i < in->nframes; i++)
        offs[i] = in->row_offsets ? in->row_offsets[i * in->ny + y] : 0.0;
    if (in->bias) md_load_values(in->bias, y, x0, w, ws->bias); /* else it holds zeros */
    md_load_sum(in->frames, in->nframes, y, x0, w, ws->bias, in->bias != NULL, offs, ws->rows,
                sum);
    int bad = 0;
    for (size_t x = 0; x < w; x++) bad |= !(sum[x] - sum[x] == 0.0);
    if (bad) return 0;
    if (zero_nbad) memset(ws->nbad, 0, w * sizeof(double));
    return 1;
}

/*
 * For the rejection methods on plain float32 or int16 frames
 * (ws->gathers_sorted): the tile gather_clean would store, with its columns
 * sorted as md_sort_columns sorts them, by the kernels that sort the frames'
 * own values on lanes of their type and store them as doubles.  Returns 1
 * then, 0 when some value is not finite (the tile must be gathered by
 * gather()).
 */
MD_HOT static int gather_sorted(const md_inputs *in, workspace *ws, size_t y, size_t x0, size_t w)
{
    const md_kernels *kernels = &md_kernel_table[in->nframes];
    if (ws->plain_float32) {
        const float *rows[MD_KERNEL_MAX_FRAMES];
        float32_rows(in, y, x0, rows);
        return kernels->sort_f32(rows, w, ws->rows);
    }
    const md_image *f = &in->frames[0];
    const uint16_t *rows[MD_KERNEL_MAX_FRAMES];
    int16_rows(in, y, x0, rows);
    kernels->sort_i16(rows, w, f->swapped, f->bscale, f->bzero, ws->rows);
    return 1;
}

/*
 * Column sums over the good values, in frame order, with weights (NULL for
 * equal weights): ngood, sw = sum w, sww = sum w^2, swx = sum w x,
 * mean = swx / sw and, when want_ss, ss = sum w (x - mean)^2.  Equal
 * weights take a shorter loop with the same bits (1 * x == x).
 */
MD_HOT static void column_moments(size_t nframes, const double *weights, workspace *ws, size_t w,
                                  int want_ss)
{
    double *restrict ng = ws->ngood, *restrict sw = ws->sw, *restrict sww = ws->sww;
    double *restrict sx = ws->swx, *restrict mu = ws->mean, *restrict ss = ws->ss;
    for (size_t x = 0; x < w; x++) ng[x] = sw[x] = sww[x] = sx[x] = ss[x] = 0.0;
    for (size_t i = 0; i < nframes; i++) {
        const double *restrict r = ws->rows[i];
        if (weights) {
            const double wi = weights[i];
            for (size_t x = 0; x < w; x++) {
                const double v = r[x];
                ng[x] += v < MD_BAD ? 1.0 : 0.0;
                sw[x] += v < MD_BAD ? wi : 0.0;
                sww[x] += v < MD_BAD ? wi * wi : 0.0;
                sx[x] += v < MD_BAD ? wi * v : 0.0;
            }
        } else {
            for (size_t x = 0; x < w; x++) {
                const double v = r[x];
                ng[x] += v < MD_BAD ? 1.0 : 0.0;
                sx[x] += v < MD_BAD ? v : 0.0;
            }
        }
    }
    if (!weights)
        for (size_t x = 0; x < w; x++) sw[x] = sww[x] = ng[x];
    for (size_t x = 0; x < w; x++) mu[x] = sx[x] / sw[x];
    if (!want_ss) return;
    for (size_t i = 0; i < nframes; i++) {
        const double *restrict r = ws->rows[i];
        const double wi = weights ? weights[i] : 1.0;
        for (size_t x = 0; x < w; x++) {
            const double d = r[x] - mu[x];
            ss[x] += r[x] < MD_BAD ? wi * d * d : 0.0;
        }
    }
}

/* Variance of the combined value from the column moments (see md_params). */
static void column_variances(const md_params *p, workspace *ws, size_t w)
{
    const double *restrict ng = ws->ngood, *restrict sw = ws->sw, *restrict sww = ws->sww;
    const double *restrict ss = ws->ss;
    double *restrict var = ws->variance;
    for (size_t x = 0; x < w; x++) {
        const int n = (int)ng[x];
        const double s2 = ss[x] / (sw[x] - sww[x] / sw[x]);
        const double v = p->var_factor[n] * s2 * sww[x] / (sw[x] * sw[x]);
        var[x] = n >= 2 ? v : NAN;
    }
}

/* Copy the good values of column x (and their frames' weights) to pv/pw. */
static int column_good_values(const md_inputs *in, workspace *ws, size_t x, int with_weights)
{
    int n = 0;
    for (size_t i = 0; i < in->nframes; i++) {
        const double v = ws->rows[i][x];
        if (v < MD_BAD) {
            ws->pv[n] = v;
            if (with_weights) ws->pw[n] = in->weights[i];
            n++;
        }
    }
    return n;
}

/* The generated kernels for nframes frames, or NULL when there are too many. */
static const md_kernels *kernels_for(size_t nframes)
{
    return nframes <= MD_KERNEL_MAX_FRAMES ? &md_kernel_table[nframes] : NULL;
}

/* 1 when no value of the tile's w columns is bad. */
static int tile_is_clean(const workspace *ws, size_t w)
{
    if (ws->have_sums || ws->sorted) return 1;
    int bad = 0;
    for (size_t x = 0; x < w; x++) bad |= ws->nbad[x] != 0.0;
    return !bad;
}

/* npix = nframes and nrejected = 0 for every column (see store_results). */
static void all_used(workspace *ws)
{
    ws->all_used = 1;
}

/* q[x] += (rows[j][x] - mu[x])^2 for j = 0 .. g - 1 in turn, g <= 4. */
static inline __attribute__((always_inline)) void add_squares(double *restrict q,
                                                              const double *restrict mu,
                                                              double *const *rows, size_t g,
                                                              size_t w)
{
    const double *restrict r0 = rows[0], *restrict r1 = rows[g > 1 ? 1 : 0];
    const double *restrict r2 = rows[g > 2 ? 2 : 0], *restrict r3 = rows[g > 3 ? 3 : 0];
    for (size_t x = 0; x < w; x++) {
        const double m = mu[x];
        double acc = q[x], d;
        d = r0[x] - m;
        acc += d * d;
        if (g > 1) {
            d = r1[x] - m;
            acc += d * d;
        }
        if (g > 2) {
            d = r2[x] - m;
            acc += d * d;
        }
        if (g > 3) {
            d = r3[x] - m;
            acc += d * d;
        }
        q[x] = acc;
    }
}

/*
 * Column sums (swx), and the means (into mean_out, or with want_var alone into
 * ws->mean), and with want_var the variances, of a tile holding no bad value,
 * without weights:
 * what column_moments and column_variances give N good values, by the same
 * operations in the same order, the divisions done by md_divide().  The sums
 * are gather_clean's when it gathered the tile.
 */
MD_HOT static void clean_moments(const md_inputs *in, const md_params *p, workspace *ws,
                                 size_t w, double *mean_out, int want_var)
{
    const size_t nf = in->nframes;
    const double n = (double)nf;
    double *restrict s = ws->swx, *restrict q = ws->ss;
    double *restrict mu = mean_out ? mean_out : ws->mean;
    if (!ws->have_sums) {
        for (size_t x = 0; x < w; x++) s[x] = 0.0;
        for (size_t i = 0; i < nf; i++) {
            const double *restrict r = ws->rows[i];
            for (size_t x = 0; x < w; x++) s[x] += r[x];
        }
    }
    if (!mean_out && !want_var) return;
    md_divide(mu, s, w, n);
    if (!want_var) return;
    double *restrict var = ws->variance;
    if (nf < 2) {
        for (size_t x = 0; x < w; x++) var[x] = NAN;
        return;
    }
    /* q = sum over frames of (x - mean)^2, up to four frames per sweep. */
    for (size_t x = 0; x < w; x++) q[x] = 0.0;
    for (size_t i = 0; i < nf; i += 4) {
        switch (nf - i) {
        case 1: add_squares(q, mu, ws->rows + i, 1, w); break;
        case 2: add_squares(q, mu, ws->rows + i, 2, w); break;
        case 3: add_squares(q, mu, ws->rows + i, 3, w); break;
        default: add_squares(q, mu, ws->rows + i, 4, w); break;
        }
    }
    /* as column_variances (ws->sw: scratch) */
    md_mean_variances(var, ws->sw, q, w, p->var_factor[nf], n);
}

MD_HOT static void tile_mean_or_sum(const md_inputs *in, const md_params *p, workspace *ws,
                                    size_t w, int want_var)
{
    const int sum = p->method == MD_SUM;
    if (!in->weights && tile_is_clean(ws, w)) {
        clean_moments(in, p, ws, w, sum ? NULL : ws->value, want_var);
        if (sum) memcpy(ws->value, ws->swx, w * sizeof(double));
        all_used(ws);
        return;
    }
    column_moments(in->nframes, in->weights, ws, w, want_var);
    const double *restrict sums = sum ? ws->swx : ws->mean;
    for (size_t x = 0; x < w; x++) {
        ws->value[x] = ws->ngood[x] > 0.0 ? sums[x] : p->fill;
        ws->npix[x] = ws->ngood[x];
        ws->nrej[x] = 0.0;
    }
    if (want_var) column_variances(p, ws, w);
}

MD_HOT static void tile_median(const md_inputs *in, const md_params *p, const md_network *net,
                               workspace *ws, size_t y, size_t x0, size_t w, int want_var)
{
    const size_t nf = in->nframes;
    const md_kernels *kernels = kernels_for(nf);
    const int clean = tile_is_clean(ws, w);
    if (want_var && clean) { /* the median ignores weights */
        clean_moments(in, p, ws, w, NULL, 1);
    } else if (want_var) {
        column_moments(nf, NULL, ws, w, 1);
        column_variances(p, ws, w);
    }
    if (kernels && ws->have_sums && ws->plain_float32) { /* clean: the frames' rows */
        const float *rows[MD_KERNEL_MAX_FRAMES];
        float32_rows(in, y, x0, rows);
        kernels->median_f32(rows, w, ws->value);
        all_used(ws);
        return;
    }
    if (kernels && ws->have_sums && ws->plain_int16) { /* the raw values keep their order */
        const md_image *f = &in->frames[0];
        const uint16_t *rows[MD_KERNEL_MAX_FRAMES];
        int16_rows(in, y, x0, rows);
        double *restrict lower = ws->value, *restrict upper = ws->ss; /* ss: used by now */
        kernels->median_i16(rows, w, f->swapped, lower, upper);
        const double a = f->bscale, b = f->bzero; /* the tile's values: a * t + b */
        for (size_t x = 0; x < w; x++) {
            const double lo = a * lower[x] + b, hi = a * upper[x] + b;
            ws->value[x] = nf % 2 ? hi : (lo + hi) / 2.0;
        }
        all_used(ws);
        return;
    }
    if (kernels && clean) {
        kernels->median(ws->rows, w, ws->value);
        all_used(ws);
        return;
    }
    if (net) { /* every column as if it had no bad value; those that do are redone below */
        md_network_apply(net, ws->rows, w);
        const double *restrict lo = ws->rows[(nf - 1) / 2], *restrict hi = ws->rows[nf / 2];
        for (size_t x = 0; x < w; x++) ws->value[x] = (lo[x] + hi[x]) / 2.0;
        if (nf % 2)
            for (size_t x = 0; x < w; x++) ws->value[x] = lo[x];
    }
    for (size_t x = 0; x < w; x++) {
        ws->npix[x] = (double)nf - ws->nbad[x];
        ws->nrej[x] = 0.0;
    }
    for (size_t x = 0; x < w; x++) {
        if (net && ws->nbad[x] == 0.0) continue;
        const int n = column_good_values(in, ws, x, 0);
        md_sort(ws->pv, NULL, (size_t)n);
        ws->value[x] = n > 0 ? md_sorted_median(ws->pv, n) : p->fill;
    }
}

/* The tile's results into r[0 .. 3] (value, variance, npix, nrejected). */
MD_HOT static void tile_rejection(const md_inputs *in, const md_params *p, const md_network *net,
                                  workspace *ws, size_t x0, size_t w, double *const *r)
{
    const int weighted = in->weights != NULL;
    const md_kernels *kernels = kernels_for(in->nframes);
    if (net && tile_is_clean(ws, w)) { /* no bad value: sorted and reduced across the columns */
        md_vclip_tile(p, &ws->vc, ws->rows, ws->tw, in->nframes, ws->sorted, w, x0, r[0], r[1],
                      r[2], r[3]);
        return;
    }
    if (net) md_sort_columns(kernels, net, ws->rows, w);
    for (size_t x = 0; x < w; x++) {
        int n;
        if (net) { /* sorted, good values first */
            n = (int)(in->nframes - (size_t)ws->nbad[x]);
            for (int i = 0; i < n; i++) ws->pv[i] = ws->rows[i][x];
        } else {
            n = column_good_values(in, ws, x, weighted);
            md_sort(ws->pv, weighted ? ws->pw : NULL, (size_t)n);
        }
        const md_pixel px = md_reduce_sorted(p, ws->pv, weighted ? ws->pw : NULL, n);
        r[0][x] = px.value;
        r[1][x] = px.variance;
        r[2][x] = px.npix;
        r[3][x] = px.nrejected;
    }
}

/* Store the results r[0 .. 3] (value, variance, npix, nrejected; npix =
 * nframes and nrejected = 0 when all_used) into row y, columns x0 .. x0 + w - 1;
 * returns the smallest npix stored. */
static double store_results(const md_outputs *out, double *const *r, int all_used,
                            size_t nframes, size_t y, size_t x0, size_t w)
{
    md_store_row(&out->value, y, x0, w, r[0]);
    if (out->variance.data) md_store_row(&out->variance, y, x0, w, r[1]);
    if (all_used) {
        if (out->npix.data) md_fill_row(&out->npix, y, x0, w, (double)nframes);
        if (out->nrejected.data) md_fill_row(&out->nrejected, y, x0, w, 0.0);
        return (double)nframes;
    }
    if (out->npix.data) md_store_row(&out->npix, y, x0, w, r[2]);
    if (out->nrejected.data) md_store_row(&out->nrejected, y, x0, w, r[3]);
    if (!out->fewest) return (double)nframes;
    long long fewest = (long long)nframes; /* counts as integers: a vector min */
    for (size_t x = 0; x < w; x++) {
        const long long used = (long long)r[2][x];
        fewest = used < fewest ? used : fewest;
    }
    return (double)fewest;
}

/* An output plane as an image md_load_values reads (native order, no scaling). */
static md_image plane_image(const md_plane *pl)
{
    return (md_image){.data = pl->data, .dtype = pl->dtype, .row_stride = pl->row_stride,
                      .col_stride = pl->col_stride, .bscale = 1.0};
}

/* Row y of the variance plane replaced by sqrt(variance * npix), from the
 * stored planes (read back, tile by tile, into ws->value and ws->npix): as
 * NumPy's `variance *= npix; sqrt(variance)` gives it in the variance plane's
 * type.  npix holds small whole numbers, so the product is exact in double
 * before its rounding to float32. */
MD_HOT static void variance_row_to_std(const md_outputs *out, workspace *ws, size_t y,
                                       size_t nx, size_t tw)
{
    const md_plane *vp = &out->variance;
    const md_image var = plane_image(vp), npix = plane_image(&out->npix);
    const int single = vp->dtype == MD_FLOAT32; /* float32 arithmetic */
    for (size_t x0 = 0; x0 < nx; x0 += tw) {
        const size_t w = nx - x0 < tw ? nx - x0 : tw;
        double *restrict v = ws->value, *restrict m = ws->npix;
        md_load_values(&var, y, x0, w, v);
        md_load_values(&npix, y, x0, w, m);
        if (single)
            for (size_t x = 0; x < w; x++) v[x] = sqrtf((float)(v[x] * m[x]));
        else
            for (size_t x = 0; x < w; x++) v[x] = sqrt(v[x] * m[x]);
        md_store_row(vp, y, x0, w, v);
    }
}

/* Ask the CPU to fetch the pixels of row y, columns x0 .. x0 + w - 1, of an
 * image into its outer caches (not the L1, where the current tile works).
 * Images whose pixels lie far apart (a column stride above 16 bytes) are
 * skipped.  A prefetch never faults and changes no result. */
static void prefetch_span(const md_image *im, size_t y, size_t x0, size_t w)
{
    const long long cs = im->col_stride;
    if (cs > 16 || cs < -16) return;
    const char *row = image_row(im, y);
    const uintptr_t a = (uintptr_t)(row + (ptrdiff_t)x0 * cs);
    const uintptr_t b = (uintptr_t)(row + (ptrdiff_t)(x0 + w - 1) * cs);
    const uintptr_t hi = a < b ? b : a;
    for (uintptr_t line = (a < b ? a : b) & ~(uintptr_t)63; line <= hi; line += 64)
        __builtin_prefetch((const void *)line, 0, 1);
}

/* Prefetch the tile that follows (y, x0) in a block of rows ending at y1 (on
 * row y, or the first of row y + 1), of every frame and the bias, while the
 * method works on this one: its gather then reads from the cache. */
static void prefetch_next_tile(const md_inputs *in, size_t tw, size_t y, size_t x0, size_t y1)
{
    size_t x = x0 + tw;
    if (x >= in->nx) {
        if (++y >= y1) return;
        x = 0;
    }
    const size_t w = in->nx - x < tw ? in->nx - x : tw;
    for (size_t i = 0; i < in->nframes; i++) prefetch_span(&in->frames[i], y, x, w);
    if (in->bias) prefetch_span(in->bias, y, x, w);
}

static void combine_rows(const md_inputs *in, const md_params *p, const md_outputs *out,
                         const md_network *net, workspace *ws, size_t tw, size_t y0, size_t y1,
                         int try_clean)
{
    const int want_var = out->variance.data != NULL;
    const int mean_or_sum = p->method == MD_MEAN || p->method == MD_SUM; /* never read nbad */
    /* With a queue, the results go to the row's (vc.row), stored once the
     * row's last queued columns are; else each tile's are stored. */
    const int by_row = ws->row_results != NULL;
    double *const tile_results[4] = {ws->value, ws->variance, ws->npix, ws->nrej};
    for (size_t y = y0; y < y1; y++) {
        for (size_t x0 = 0; x0 < in->nx; x0 += tw) {
            const size_t w = in->nx - x0 < tw ? in->nx - x0 : tw;
            /* The gathers store the same tile (gather_sorted's sorted);
             * after a tile the cheap gather found bad values, it is skipped
             * for 1, 2, 4 ... 64 tiles. */
            ws->have_sums = ws->sorted = 0;
            if (try_clean && ws->skip == 0) {
                if (ws->gathers_sorted) ws->sorted = gather_sorted(in, ws, y, x0, w);
                else ws->have_sums = gather_clean(in, ws, y, x0, w, !mean_or_sum);
                const int clean = ws->have_sums || ws->sorted;
                ws->backoff = clean ? 0 : ws->backoff ? 2 * ws->backoff : 1;
                if (ws->backoff > 64) ws->backoff = 64;
                ws->skip = ws->backoff;
            } else if (ws->skip > 0) {
                ws->skip--;
            }
            if (!ws->have_sums && !ws->sorted) gather(in, ws, y, x0, w);
            prefetch_next_tile(in, tw, y, x0, y1);
            ws->all_used = 0;
            switch (p->method) {
            case MD_MEAN:
            case MD_SUM: tile_mean_or_sum(in, p, ws, w, want_var); break;
            case MD_MEDIAN: tile_median(in, p, net, ws, y, x0, w, want_var); break;
            default: {
                double *in_row[4];
                for (size_t k = 0; k < 4 && by_row; k++) in_row[k] = ws->vc.row[k] + x0;
                tile_rejection(in, p, net, ws, x0, w, by_row ? in_row : tile_results);
                break;
            }
            }
            if (by_row) continue;
            const double fewest =
                store_results(out, tile_results, ws->all_used, in->nframes, y, x0, w);
            ws->fewest = fewest < ws->fewest ? fewest : ws->fewest;
        }
        if (by_row) {
            if (ws->vc.queued) md_vclip_flush(p, &ws->vc, in->nframes);
            const double fewest = store_results(out, ws->vc.row, 0, in->nframes, y, 0, in->nx);
            ws->fewest = fewest < ws->fewest ? fewest : ws->fewest;
        }
        if (out->variance_as_std) variance_row_to_std(out, ws, y, in->nx, tw);
    }
}

/* ---- entry point ---------------------------------------------------------- */

/* 1 when an image's pixels of `size` bytes lie in contiguous rows, each pixel
 * aligned to its size: a kernel can read its rows as arrays. */
static int plain_rows(const md_image *im, size_t size)
{
    return im->col_stride == (long long)size && (uintptr_t)im->data % size == 0
           && im->row_stride % (long long)size == 0;
}

/* 1 when every frame is float32 in native byte order, in aligned contiguous
 * rows, with bscale 1 and bzero +0, and there is no bias and no row offset:
 * then a clean gather (gather_clean) holds each frame's floats as doubles,
 * -0.0 made +0.0 by the bzero, which the float kernels can read in place. */
static int frames_plain_float32(const md_inputs *in)
{
    if (in->bias || in->row_offsets) return 0;
    for (size_t i = 0; i < in->nframes; i++) {
        const md_image *im = &in->frames[i];
        if (im->dtype != MD_FLOAT32 || im->swapped || !plain_rows(im, sizeof(float))
            || im->bscale != 1.0 || im->bzero != 0.0 || signbit(im->bzero))
            return 0;
    }
    return 1;
}

/* 1 when every frame is int16 in one byte order, in aligned contiguous rows,
 * with one bscale > 0 and one bzero, and there is no bias and no row offset:
 * then a clean gather holds each raw t as bscale * t + bzero, in the order of
 * the t, which the int16 median kernels can sort in place. */
static int frames_plain_int16(const md_inputs *in)
{
    if (in->bias || in->row_offsets) return 0;
    const md_image *f = &in->frames[0];
    if (!(f->bscale > 0.0)) return 0;
    for (size_t i = 0; i < in->nframes; i++) {
        const md_image *im = &in->frames[i];
        if (im->dtype != MD_INT16 || im->swapped != f->swapped || !plain_rows(im, sizeof(int16_t))
            || im->bscale != f->bscale || im->bzero != f->bzero)
            return 0;
    }
    return 1;
}

/* 1 when every value a t + b of plain int16 frames (frames_plain_int16) is
 * good: no frame has a BLANK, and a and b keep every value finite.
 * gather_sorted's int16 kernels then store what gather_clean would. */
static int int16_values_good(const md_inputs *in)
{
    const md_image *f = &in->frames[0];
    for (size_t i = 0; i < in->nframes; i++)
        if (in->frames[i].has_blank) return 0;
    return fabs(f->bscale) <= 0x1p990 && fabs(f->bzero) <= 0x1p990; /* |a t + b| < 2^1006 */
}

int md_combine(const md_inputs *in, const md_params *p, const md_outputs *out,
               size_t row_begin, size_t row_end, int nthreads, size_t block_rows)
{
    if (!in || !p || !out || !inputs_ok(in) || !params_ok(p)) return MD_ERR_ARG;
    if (!out->value.data || !plane_ok(&out->value, 1) || !plane_ok(&out->variance, 1)
        || !plane_ok(&out->npix, 0) || !plane_ok(&out->nrejected, 0))
        return MD_ERR_ARG;
    if (out->variance_as_std && !(out->variance.data && out->npix.data)) return MD_ERR_ARG;
    if (row_begin > row_end || row_end > in->ny || block_rows < 1 || nthreads < 0)
        return MD_ERR_ARG;
    if (out->fewest) *out->fewest = INFINITY;
    if (row_begin == row_end || in->nx == 0) return MD_OK;

    /* A network sorts the tile's columns when the frames are few enough and
     * the method needs sorted values without weights attached. */
    const int sorts = p->method != MD_MEAN && p->method != MD_SUM;
    const int use_net = sorts && in->nframes <= MD_NETWORK_MAX
                        && (p->method == MD_MEDIAN || !in->weights);
    md_network net = {0}, mad = {0};
    if (use_net) {
        const md_network_kind kind = p->method == MD_MEDIAN ? MD_NETWORK_MEDIAN : MD_NETWORK_SORT;
        const int status = md_network_build(&net, (int)in->nframes, kind);
        if (status != MD_OK) return status;
    }
    /* Above the kernels' frame counts, the MADs of the clipping's first pass
     * (md_vclip.c's run_mads) take the middle of each column's deviations. */
    if (use_net && p->method == MD_SIGCLIP && p->spread == MD_SPREAD_MAD
        && in->nframes > MD_KERNEL_MAX_FRAMES) {
        const int status = md_network_build(&mad, (int)in->nframes, MD_NETWORK_VALLEY_MEDIAN);
        if (status != MD_OK) {
            md_network_free(&net);
            return status;
        }
    }

    /* gather_clean applies when no frame is masked or normalised (as gather()
     * decides it: a zero of 0 and a scale of 1 are no normalisation). */
    int try_clean = 1;
    for (size_t i = 0; i < in->nframes; i++) {
        if (in->masks && in->masks[i].data) try_clean = 0;
        if (in->zeros && in->zeros[i] != 0.0) try_clean = 0;
        if (in->scales && in->scales[i] != 1.0) try_clean = 0;
    }

    const size_t tw = tile_width(in->nframes);
    /* The rejection methods reduce clean tiles across their columns
     * (md_vclip.c); sigclip and ccdclip queue columns for more passes, up to
     * MD_KERNEL_MAX_FRAMES frames. */
    const int iterates = (p->method == MD_SIGCLIP || p->method == MD_CCDCLIP)
                         && in->nframes <= MD_KERNEL_MAX_FRAMES;
    const size_t vclip_cap = !use_net || p->method == MD_MEDIAN ? 0
                             : iterates                       ? MD_QUEUE_TILES * tw
                                                              : tw;
    const size_t nblocks = (row_end - row_begin + block_rows - 1) / block_rows;
    const int plain_float32 = frames_plain_float32(in);
    const int plain_int16 = in->nframes > 0 && frames_plain_int16(in);
    /* The rejection methods' clean tiles, sorted as they are gathered. */
    const int gathers_sorted = use_net && p->method != MD_MEDIAN && kernels_for(in->nframes)
                               && (plain_float32 || (plain_int16 && int16_values_good(in)));
    int status = MD_OK;

#ifdef _OPENMP
    /* No more threads than row blocks: idle threads only cost a wake-up,
     * which on a busy machine can take longer than a small combination. */
    int nt = nthreads > 0 ? nthreads : omp_get_max_threads();
    if ((size_t)nt > nblocks) nt = (int)nblocks;
#pragma omp parallel num_threads(nt)
#endif
    {
        workspace ws;
        const int queue = iterates && in->nframes > 1; /* one frame never moves */
        const int ws_status = workspace_alloc(&ws, in->nframes, tw, vclip_cap, queue, in->nx);
        ws.vc.kernels = kernels_for(in->nframes);
        ws.plain_float32 = plain_float32;
        ws.plain_int16 = plain_int16;
        ws.gathers_sorted = gathers_sorted;
        ws.vc.sort = use_net ? &net : NULL;
        ws.vc.mad = &mad;
        if (ws_status != MD_OK) {
#ifdef _OPENMP
#pragma omp atomic write
#endif
            status = ws_status;
        }
#ifdef _OPENMP
#pragma omp barrier
#pragma omp for schedule(dynamic, 1)
#endif
        for (size_t b = 0; b < nblocks; b++) {
            int failed;
#ifdef _OPENMP
#pragma omp atomic read
#endif
            failed = status;
            if (failed != MD_OK) continue;
            const size_t y0 = row_begin + b * block_rows;
            const size_t y1 = y0 + block_rows < row_end ? y0 + block_rows : row_end;
            combine_rows(in, p, out, use_net ? &net : NULL, &ws, tw, y0, y1, try_clean);
        }
        const double fewest = ws.fewest;
        if (out->fewest) {
#ifdef _OPENMP
#pragma omp critical(md_fewest)
#endif
            *out->fewest = fewest < *out->fewest ? fewest : *out->fewest;
        }
#if defined(__x86_64__)
        __builtin_ia32_sfence(); /* the non-temporal stores of md_store_row, done */
#endif
        workspace_free(&ws);
    }
    md_network_free(&net);
    md_network_free(&mad);
    return status;
}
