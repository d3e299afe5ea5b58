/*
 * md_internal.h -- declarations shared by the core's translation units.
 * Not part of the public contract (see md_combine.h).
 */
#ifndef MD_INTERNAL_H
#define MD_INTERNAL_H

#include <stddef.h>
#include <stdint.h>

#include "md_combine.h"

/*
 * Hot loops are compiled for several x86-64 levels and picked at load time
 * (GCC function multi-versioning), so one portable build runs AVX-512 code
 * where the CPU has it.  Results do not depend on the level: the code never
 * contracts a * b + c into an FMA (-ffp-contract=off) and every reduction
 * keeps its order.
 */
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__linux__) \
    && !defined(MD_NO_CLONES)
#define MD_CLONES 1
#define MD_HOT __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define MD_CLONES 0
#define MD_HOT
#endif

/* A few loops no compiler vectorises well are written for one level with its
 * intrinsics (MD_V4: x86-64-v4, AVX-512), or built for two (v4, v3), each
 * called where __builtin_cpu_supports says the CPU has that level; other
 * CPUs and compilers take the portable loop. */
#if MD_CLONES && __GNUC__ >= 12
#define MD_LEVELS 1
#define MD_V4 __attribute__((target("arch=x86-64-v4")))
#define MD_V3 __attribute__((target("arch=x86-64-v3")))
#else
#define MD_LEVELS 0
#endif

/* 1 / Phi^-1(3/4): the MAD of a normal distribution times this is its sigma. */
#define MD_MAD_TO_SIGMA 1.482602218505602

/* Marker of a bad value inside the core's tiles: it sorts after every good
 * value, so a sorted column holds its good values first. */
#define MD_BAD INFINITY

/* ---- md_combine.c: exact division ------------------------------------- */

/* dst[x] = num[x] / b for x < w, b a positive integer: the bits of the
 * division, by multiplications where the CPU has FMA and the method applies,
 * else by division. */
void md_divide(double *restrict dst, const double *restrict num, size_t w, double b);

/* var[x] = k * (ss[x] / (m - 1)) * m / (m * m) for x < w: the variance of
 * the mean of m >= 2 equally weighted values from their sum of squared
 * deviations ss (md_reduce.c's mean_of_run, the same bits), by md_divide;
 * tmp: w doubles of scratch. */
void md_mean_variances(double *restrict var, double *restrict tmp, const double *restrict ss,
                       size_t w, double k, double m);

/* ---- md_load.c: reading images into double tiles ---------------------- */

/* dst[k] = physical value of pixel (y, x0 + k), k < w; BLANK pixels -> NaN. */
void md_load_values(const md_image *im, size_t y, size_t x0, size_t w, double *dst);

/* dst[k] = (physical(y, x0 + k) - sub[k]) - off, or MD_BAD for a BLANK, NaN or
 * infinite result, counted in nbad[k] (+= 1). */
void md_load_corrected(const md_image *im, size_t y, size_t x0, size_t w, const double *sub,
                       double off, double *dst, double *nbad);

/* For the count frames ims[j]: dst[j][k] = (physical(y, x0 + k) - sub[k]) -
 * offs[j], with NaN for BLANK and no other check (sub: the bias row, zeros
 * when with_bias is 0), and sum[k] += dst[j][k] in frame order: the bits
 * md_load_corrected gives every finite value. */
void md_load_sum(const md_image *ims, size_t count, size_t y, size_t x0, size_t w,
                 const double *sub, int with_bias, const double *offs, double *const *dst,
                 double *sum);

/* dst[k] = 1 where the mask pixel (y, x0 + k) is non-zero, else 0. */
void md_load_mask(const md_image *im, size_t y, size_t x0, size_t w, unsigned char *dst);

/* Store src[0..w) into row y, columns x0.., of an output plane.  Long rows
 * of float32 or int16 may be written by non-temporal stores: a thread that
 * stored rows runs an sfence before others read them. */
void md_store_row(const md_plane *pl, size_t y, size_t x0, size_t w, const double *src);

/* Store the value v into row y, columns x0..x0 + w, of an output plane (as
 * md_store_row would store w copies of it). */
void md_fill_row(const md_plane *pl, size_t y, size_t x0, size_t w, double v);

/* Size in bytes of one pixel of a dtype, 0 when the dtype is unknown. */
size_t md_dtype_size(int dtype);

/* ---- md_sortnet.c: sorting networks and scalar sorts -------------------- */

/* A comparator network for n inputs: the inputs' blocks of `block` (the last
 * one shorter) sorted by the kernels when block > 1, then compare-exchange
 * (a[k], b[k]) for k < ncomp. */
typedef struct md_network {
    int n, block;
    int ncomp;
    int *a, *b;
} md_network;

/* Inputs per block of a network above MD_KERNEL_MAX_FRAMES inputs (a power of two). */
#define MD_NETWORK_BLOCK 16

/* The networks md_network_build makes for n inputs. */
typedef enum md_network_kind {
    MD_NETWORK_SORT,         /* Batcher's odd-even merge sort */
    MD_NETWORK_MEDIAN,       /* its comparators that the middle element(s) depend on */
    MD_NETWORK_VALLEY_MEDIAN /* the same for inputs that fall and then rise, as the
                                deviations from a centre do along a sorted column:
                                of the bitonic merger, far fewer */
} md_network_kind;

/* Build a network of that kind for n inputs.  Returns MD_OK or
 * MD_ERR_NOMEM.  Free with md_network_free. */
int md_network_build(md_network *net, int n, md_network_kind kind);
void md_network_free(md_network *net);

/*
 * Apply the network to columns of a tile: rows[i] points to w doubles, and
 * after the call rows[0][x] <= rows[1][x] <= ... for each column x.  Each
 * compare-exchange permutes NaN-free values (+inf included), so a column
 * always keeps its values; a median network puts only the middle in place
 * (a valley median network, only for columns that fall and then rise).
 */
void md_network_apply(const md_network *net, double *const *rows, size_t w);

/* Sort v[0..n) ascending; wt (may be NULL) is permuted alongside, and
 * equal values are then ordered by ascending weight. */
void md_sort(double *v, double *wt, size_t n);

/* ---- md_kernels.c: register-resident column kernels (generated) ---------- */

/*
 * For N <= MD_KERNEL_MAX_FRAMES frames and a tile whose N rows hold no bad
 * value: the median and the full sort of every column, its mean and squared
 * deviations, and sigclip's passes on sorted columns, with the column's
 * values in registers.  Same bits as the generic paths.
 */
#define MD_KERNEL_MAX_FRAMES 24

/* Arguments of a clipping pass (md_kpass_*) on columns of N sorted values:
 * the clip limits and the spread's floor (md_params), and per column the run
 * left by the pass, whether it moved (1.0) or stopped (0.0), and the mean and
 * the sum of squared deviations from it of its N values (md_vclip.c's
 * run_means and run_sumsq, bit for bit). */
typedef struct md_clip_args {
    double low, high, floor;
    double *lo, *hi, *moving, *mean, *sumsq;
} md_clip_args;

typedef void (*md_clip_kernel)(const double *const *rows, size_t w, const md_clip_args *a);

typedef struct md_kernels {
    void (*median)(double *const *rows, size_t w, double *value);
    /* The same for float32 rows read as they are (the same bits as their
     * values converted to double). */
    void (*median_f32)(const float *const *rows, size_t w, double *value);
    /* The middle raw values, rows (N - 1) / 2 and N / 2 of the sorted column,
     * of int16 rows read as they are (their bytes swapped when `swapped`). */
    void (*median_i16)(const uint16_t *const *rows, size_t w, int swapped, double *lower,
                       double *upper);
    void (*sort)(double *const *rows, size_t w);
    /* The sorted columns of float32 rows (bscale 1, bzero +0) or int16 rows
     * (bytes swapped when `swapped`; values a * t + b, a > 0) read as they
     * are, into the tile rows `out`: what md_load_sum and `sort` store, bit
     * for bit.  sort_f32 returns 0 (the tile unusable) when a column's values
     * are not all finite, else 1. */
    int (*sort_f32)(const float *const *rows, size_t w, double *const *out);
    void (*sort_i16)(const uint16_t *const *rows, size_t w, int swapped, double a, double b,
                     double *const *out);
    /* Per column, the mean of its N values and the sum of their squared
     * deviations from it (md_vclip.c's run_means and run_sumsq). */
    void (*moments)(const double *const *rows, size_t w, double *mean, double *sumsq);
    /* A pass of sigclip with centre median and spread MAD (pass_mad) or
     * centre mean and spread std (pass_std) on sorted columns, read and not
     * changed: a sorted tile, or a bucket of md_vclip.c's queue, whose
     * columns each hold a run of N values.  NULL below 3 frames. */
    md_clip_kernel pass_mad, pass_std;
} md_kernels;

extern const md_kernels md_kernel_table[MD_KERNEL_MAX_FRAMES + 1];

/* Sort the columns of a tile of n rows (md_network_apply): by the kernels for
 * n frames when there are (kernels not NULL), else by the full network net. */
void md_sort_columns(const md_kernels *kernels, const md_network *net, double *const *rows,
                     size_t w);

/* ---- md_vclip.c: rejection methods across a tile's columns ---------------- */

/* A bucket of md_vclip.c's queue: `count` columns whose runs hold m values,
 * copied to rows 0 .. m - 1 (row stride: the scratch's capacity). */
typedef struct md_bucket {
    double *v;      /* m rows of the runs */
    double *ss_all; /* per column: the squared deviations of all its n values from their mean */
    size_t *x;      /* per column: its column in the output row */
    size_t *passes; /* per column: the clipping passes it has had */
    size_t count;
} md_bucket;

/* Scratch of md_vclip_tile and md_vclip_flush, for tiles of n rows and up to
 * `capacity` columns, and a queue of as many columns. */
typedef struct md_vclip_scratch {
    const md_kernels *kernels; /* kernels for n frames, or NULL ... */
    const md_network *sort;    /* ... then this full sorting network, */
    const md_network *mad;     /* and this one for the middle of n deviations */
    size_t capacity;           /* columns of the arrays below; stride of dev and buckets */
    double **dev_rows;         /* n rows of deviations from the centres */
    double *c, *s, *tmp, *lo, *hi, *moving;        /* capacity each */
    double *low, *high, *below, *above;            /* capacity each */
    size_t *done, *order, *offset;                 /* capacity column indices each */
    double *results;                               /* 4 x capacity */
    double *queue;             /* memory of the buckets, NULL when there is no queue */
    md_bucket bucket[MD_KERNEL_MAX_FRAMES];        /* bucket[m]: runs of m values, m < n */
    double *pv;                /* n values of one column (more frames than kernels) */
    size_t queued;             /* columns in the buckets */
    /* With a queue: the results of the output row's columns (value,
     * variance, npix, nrejected; a row each), where md_vclip_flush writes
     * those of the columns it takes, at their x. */
    double *row[4];
} md_vclip_scratch;

/* Doubles of the queue's memory for n frames and `capacity` columns. */
size_t md_vclip_queue_doubles(size_t n, size_t capacity);

/* Point the buckets of sc (its capacity set) into `queue`, of
 * md_vclip_queue_doubles(n, capacity) doubles, not necessarily zeroed. */
void md_vclip_queue_layout(md_vclip_scratch *sc, size_t n, double *queue);

/*
 * MD_SIGCLIP (unweighted), MD_CCDCLIP, MD_MINMAX or MD_QUANTILECLIP for a tile
 * of n rows of w columns (rows[i] = rows[0] + i * stride, the pixels x0 ..
 * x0 + w - 1 of a row) holding no bad value, sorted here column by column
 * (unless `sorted`: already):
 * the results md_reduce_sorted gives each column, bit for bit, into value ..
 * nrej.  Except for the columns that sigclip or ccdclip queue for more
 * passes: md_vclip_flush writes their results into sc->row.  It runs when the
 * queue is full, and must run at the end of each row.
 */
void md_vclip_tile(const md_params *p, md_vclip_scratch *sc, double *const *rows, size_t stride,
                   size_t n, int sorted, size_t w, size_t x0, double *value, double *variance,
                   double *npix, double *nrej);
void md_vclip_flush(const md_params *p, md_vclip_scratch *sc, size_t n);

/* ---- md_reduce.c: rejection methods on one pixel ---------------------- */

/* The result for one pixel. */
typedef struct md_pixel {
    double value, variance;
    int npix, nrejected;
} md_pixel;

/* Median of sorted v[0..n), n >= 1. */
double md_sorted_median(const double *v, int n);

/*
 * MD_SIGCLIP, MD_CCDCLIP, MD_MINMAX or MD_QUANTILECLIP on the n good values
 * of one pixel, sorted ascending in v (weights wt permuted alongside, or
 * NULL): value = weighted mean of the survivors, variance as md_params says.
 */
md_pixel md_reduce_sorted(const md_params *p, const double *v, const double *wt, int n);

/*
 * MD_SIGCLIP or MD_CCDCLIP (equal weights) on sorted v[0..n) continued from
 * the run [lo, hi) left by `done` clipping passes: what md_reduce_sorted
 * gives when its first `done` passes left that run.
 */
md_pixel md_clip_sorted_from(const md_params *p, const double *v, int n, int lo, int hi, int done);

#endif /* MD_INTERNAL_H */
