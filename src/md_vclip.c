/*
 * md_vclip.c -- the rejection methods across the columns of sorted, clean tiles.
 *
 * Every rejection rule keeps an interval of values, so the survivors of a
 * sorted column are a run of rows [lo, hi).  minmax and quantileclip keep the
 * same run in every column.  sigclip and ccdclip run their first pass across
 * all the columns of a tile (for sigclip's median/MAD and mean/std and up to
 * MD_KERNEL_MAX_FRAMES frames, by md_kernels.c's md_kpass_*, with each column
 * in registers), whose results are stored with the tile.
 * Up to MD_KERNEL_MAX_FRAMES frames, the run of each column that the pass
 * moved is copied to a queue that collects them from tile after tile, into
 * the bucket of its length m, rows 0 .. m - 1 (with more frames, each column
 * continues alone, in md_reduce.c).  When the queue is full, and at the end of
 * each row, it is flushed: bucket by bucket, from the longest runs down, the
 * next pass runs across the bucket's columns (for sigclip's two pairs, by
 * md_kernels.c's md_kpass_* for m values), whose runs are all [0, m): the
 * same rows in every column.  The columns that stop are stored; those that
 * move go to the bucket of their new, shorter run, which the same flush
 * takes later.  A pass over a bucket's few hundred columns costs little more
 * than their arithmetic, where a pass over the few columns of one tile that
 * still move would mostly cost its loops' overhead.
 *
 * The arithmetic repeats md_reduce.c's operation for operation, so a pixel
 * gets the same bits whichever path computes it, in whichever batch.
 *
 * Rows of w columns are read from v[i * stride + x] (the tile, or a bucket).
 * Every loop below takes the same run of rows [a, b) in all its columns.
 * Runs, flags and counts are held in doubles, so every loop runs on one type
 * of vector lane.
 */
#include <math.h>

#include "md_internal.h"

#define MD_INLINE static inline __attribute__((always_inline))

/* mean[x] = (sum of rows a .. b - 1 of column x, in order) / (b - a). */
MD_INLINE void run_means(const double *v, size_t stride, int a, int b, size_t w,
                         double *restrict mean)
{
    for (size_t x = 0; x < w; x++) mean[x] = 0.0;
    for (int i = a; i < b; i++) {
        const double *restrict r = v + (size_t)i * stride;
        for (size_t x = 0; x < w; x++) mean[x] += r[x];
    }
    const double used = b - a;
    for (size_t x = 0; x < w; x++) mean[x] = mean[x] / used;
}

/* ss[x] = sum over rows a .. b - 1 of (value - mean[x])^2, in order. */
MD_INLINE void run_sumsq(const double *v, size_t stride, int a, int b, size_t w,
                         const double *restrict mean, double *restrict ss)
{
    for (size_t x = 0; x < w; x++) ss[x] = 0.0;
    for (int i = a; i < b; i++) {
        const double *restrict r = v + (size_t)i * stride;
        for (size_t x = 0; x < w; x++) {
            const double d = r[x] - mean[x];
            ss[x] += d * d;
        }
    }
}

/* mean[x] and ss[x]: run_means and run_sumsq of the rows a .. b - 1, by the
 * generated kernel for b - a values when there is one (same bits). */
MD_INLINE void run_moments(const double *v, size_t stride, int a, int b, size_t w,
                           double *restrict mean, double *restrict ss)
{
    const int m = b - a;
    if (m >= 1 && m <= MD_KERNEL_MAX_FRAMES) {
        const double *rows[MD_KERNEL_MAX_FRAMES];
        for (int i = 0; i < m; i++) rows[i] = v + (size_t)(a + i) * stride;
        md_kernel_table[m].moments(rows, w, mean, ss);
        return;
    }
    run_means(v, stride, a, b, w, mean);
    run_sumsq(v, stride, a, b, w, mean, ss);
}

/*
 * md_reduce.c's mean_of_run, last step, for w columns of n values whose runs
 * hold m values each: from the means of the runs and their sums of squared
 * deviations ss (for runs shorter than two: those of all n values, about
 * their own mean), the value, variance, npix and nrejected of every column.
 */
MD_INLINE void finish_runs(const md_params *p, int n, int m, size_t w, const double *restrict mean,
                           const double *restrict ss, double *restrict value,
                           double *restrict variance, double *restrict npix, double *restrict nrej)
{
    const double k = p->var_factor[n], used = m, fill = p->fill;
    if (m >= 2) {
        md_mean_variances(variance, npix, ss, w, k, used); /* npix: scratch until set */
        for (size_t x = 0; x < w; x++) value[x] = mean[x];
    } else { /* the variance comes from all n values */
        for (size_t x = 0; x < w; x++) {
            const double s2 = n >= 2 ? ss[x] / (n - 1.0) : NAN; /* sw - sww / sw, weights 1 */
            value[x] = m > 0 ? mean[x] : fill;
            variance[x] = m > 0 ? k * s2 * used / (used * used) : NAN;
        }
    }
    for (size_t x = 0; x < w; x++) {
        npix[x] = used;
        nrej[x] = n - used;
    }
}

/*
 * md_reduce.c's mean_of_run for the run [a, b) of every column of a tile of
 * n rows: value, variance, npix and nrejected.  Runs shorter than two take
 * their variance from all n values, as there.  Uses sc->c, sc->s and sc->tmp.
 */
MD_INLINE void mean_of_runs(const md_params *p, const double *v, size_t stride, int n, int a,
                            int b, size_t w, md_vclip_scratch *sc, double *restrict value,
                            double *restrict variance, double *restrict npix,
                            double *restrict nrej)
{
    if (b - a >= 2) {
        run_moments(v, stride, a, b, w, sc->c, sc->s);
    } else {
        run_means(v, stride, a, b, w, sc->c);
        run_moments(v, stride, 0, n, w, sc->tmp, sc->s);
    }
    finish_runs(p, n, b - a, w, sc->c, sc->s, value, variance, npix, nrej);
}

/* mid[x] = the median of m sorted values whose rows (m - 1) / 2 and m / 2 are
 * lower and upper (md_sorted_median, column by column). */
MD_INLINE void sorted_middles(const double *restrict lower, const double *restrict upper, int m,
                              size_t w, double *restrict mid)
{
    for (size_t x = 0; x < w; x++) mid[x] = m % 2 ? upper[x] : (lower[x] + upper[x]) / 2.0;
}

/* Centres of the runs [0, m) into sc->c: their medians, or their means. */
MD_INLINE void run_centres(const md_params *p, const double *v, size_t stride, int m, size_t w,
                           md_vclip_scratch *sc)
{
    double *restrict c = sc->c;
    if (p->centre == MD_CENTRE_MEAN) {
        run_means(v, stride, 0, m, w, c);
        return;
    }
    sorted_middles(v + (size_t)((m - 1) / 2) * stride, v + (size_t)(m / 2) * stride, m, w, c);
}

/* Median absolute deviations of the runs [0, m) from the centres sc->c, into
 * sc->s: the median of the deviations, by the kernels for m values, or else
 * (m = n, more frames than kernels) by the network sc->mad: along a sorted
 * run, the deviations from any centre fall and then rise. */
MD_INLINE void run_mads(const double *v, size_t stride, int m, size_t w, md_vclip_scratch *sc)
{
    const double *restrict c = sc->c;
    double *restrict s = sc->s;
    for (int i = 0; i < m; i++) {
        const double *restrict r = v + (size_t)i * stride;
        double *restrict dv = sc->dev_rows[i];
        for (size_t x = 0; x < w; x++) dv[x] = fabs(r[x] - c[x]);
    }
    if (m <= MD_KERNEL_MAX_FRAMES) {
        md_kernel_table[m].median(sc->dev_rows, w, s);
        return;
    }
    md_network_apply(sc->mad, sc->dev_rows, w);
    sorted_middles(sc->dev_rows[(m - 1) / 2], sc->dev_rows[m / 2], m, w, s);
}

/* Spreads of the runs [0, m) about the centres sc->c, into sc->s (at least the floor). */
MD_INLINE void run_spreads(const md_params *p, const double *v, size_t stride, int m, size_t w,
                           md_vclip_scratch *sc)
{
    const double *restrict c = sc->c;
    double *restrict s = sc->s;
    if (p->method == MD_CCDCLIP) {
        const double rdnoise = p->rdnoise, gain = p->gain;
        for (size_t x = 0; x < w; x++) {
            const double signal = c[x] > 0.0 ? c[x] : 0.0;
            s[x] = sqrt(rdnoise * rdnoise + gain * signal) / gain;
        }
    } else if (p->spread == MD_SPREAD_STD) { /* about the runs' means: c, or sc->tmp */
        if (p->centre == MD_CENTRE_MEAN) run_sumsq(v, stride, 0, m, w, c, s);
        else run_moments(v, stride, 0, m, w, sc->tmp, s);
        for (size_t x = 0; x < w; x++) s[x] = m >= 2 ? sqrt(s[x] / (m - 1)) : 0.0;
    } else {
        run_mads(v, stride, m, w, sc);
        for (size_t x = 0; x < w; x++) s[x] = MD_MAD_TO_SIGMA * s[x];
    }
    const double floor_ = p->sigma_floor;
    for (size_t x = 0; x < w; x++) s[x] = s[x] < floor_ ? floor_ : s[x];
}

/*
 * One clipping pass, as md_reduce.c's, on the runs [0, m) of w columns: a
 * column whose pass rejects nothing, or would reject everything, keeps its
 * run and stops (moving[x] = 0); the others take their new runs [lo[x],
 * hi[x]) (moving[x] = 1).  Uses sc->c, sc->s and sc->tmp.
 */
MD_INLINE void clip_pass(const md_params *p, const double *v, size_t stride, int m, size_t w,
                         md_vclip_scratch *sc)
{
    run_centres(p, v, stride, m, w, sc);
    run_spreads(p, v, stride, m, w, sc);
    const double k_low = p->low, k_high = p->high, used = m;
    const double *restrict c = sc->c, *restrict s = sc->s;
    double *restrict low = sc->low, *restrict high = sc->high;
    double *restrict below = sc->below, *restrict above = sc->above;
    for (size_t x = 0; x < w; x++) low[x] = c[x] - k_low * s[x];
    for (size_t x = 0; x < w; x++) high[x] = c[x] + k_high * s[x];
    /* low <= c <= high (c -/+ a positive multiple of s >= 0, or NaN, which
     * nothing passes): about a median, only the rows before the middle can be
     * below low, and only those after it above high. */
    const int median = p->centre == MD_CENTRE_MEDIAN;
    const int below_end = median ? m / 2 : m, above_begin = median ? (m + 1) / 2 : 0;
    for (size_t x = 0; x < w; x++) below[x] = above[x] = 0.0;
    for (int i = 0; i < below_end; i++) {
        const double *restrict r = v + (size_t)i * stride;
        for (size_t x = 0; x < w; x++) below[x] += r[x] < low[x] ? 1.0 : 0.0;
    }
    for (int i = above_begin; i < m; i++) {
        const double *restrict r = v + (size_t)i * stride;
        for (size_t x = 0; x < w; x++) above[x] += r[x] > high[x] ? 1.0 : 0.0;
    }
    double *restrict lo = sc->lo, *restrict hi = sc->hi, *restrict moving = sc->moving;
    for (size_t x = 0; x < w; x++) {
        const double na = below[x], nb = used - above[x] > na ? used - above[x] : na;
        /* As 0 <= na <= nb <= m, the new run's length L is neither m (nothing
         * rejected) nor 0 (everything): L (m - L) > 0, exact. */
        const int still = (nb - na) * (used - (nb - na)) > 0.0;
        lo[x] = still ? na : 0.0;
        hi[x] = still ? nb : used;
        moving[x] = still ? 1.0 : 0.0;
    }
}

/* select_columns for the columns j0 .. m - 1, the first k found. */
static inline __attribute__((always_inline)) size_t select_from(const double *restrict keep,
                                                                double want, size_t j0,
                                                                size_t m, size_t *restrict index,
                                                                size_t k)
{
    for (size_t j = j0; j < m; j++) {
        index[k] = j;
        k += keep[j] == want;
    }
    return k;
}

#if MD_LEVELS
#include <immintrin.h>
/* select_columns, 8 columns per step by AVX-512's compress (no compiler
 * vectorises the scalar loop), then the rest one at a time.  Each store of 8
 * indices at index + k ends before index + j + 8 <= index + m. */
MD_V4 static size_t select_v4(const double *restrict keep, double want, size_t m,
                              size_t *restrict index)
{
    _Static_assert(sizeof(size_t) == 8, "an index is a 64-bit lane");
    const __m512d wanted = _mm512_set1_pd(want);
    __m512i j8 = _mm512_setr_epi64(0, 1, 2, 3, 4, 5, 6, 7);
    size_t k = 0, j = 0;
    for (; j + 8 <= m; j += 8) {
        const __mmask8 sel = _mm512_cmp_pd_mask(_mm512_loadu_pd(keep + j), wanted, _CMP_EQ_OQ);
        _mm512_storeu_si512((void *)(index + k), _mm512_maskz_compress_epi64(sel, j8));
        k += (size_t)__builtin_popcount(sel);
        j8 = _mm512_add_epi64(j8, _mm512_set1_epi64(8));
    }
    return select_from(keep, want, j, m, index, k);
}
#endif

/* Indices j < m where keep[j] == want, into index; returns how many. */
static size_t select_columns(const double *restrict keep, double want, size_t m,
                             size_t *restrict index)
{
#if MD_LEVELS
    if (__builtin_cpu_supports("x86-64-v4")) return select_v4(keep, want, m, index);
#endif
    return select_from(keep, want, 0, m, index, 0);
}

size_t md_vclip_queue_doubles(size_t n, size_t capacity)
{
    size_t rows = 0; /* per bucket m < n: m rows, then ss_all, x and passes */
    for (size_t m = 1; m < n; m++) rows += m + 3;
    return rows * capacity;
}

void md_vclip_queue_layout(md_vclip_scratch *sc, size_t n, double *queue)
{
    _Static_assert(sizeof(size_t) <= sizeof(double), "an index fits where a double does");
    const size_t cap = sc->capacity;
    double *next = queue;
    for (size_t m = 1; m < n; m++) {
        md_bucket *bk = &sc->bucket[m];
        bk->v = next;
        bk->ss_all = next + m * cap;
        bk->x = (size_t *)(void *)(next + (m + 1) * cap);
        bk->passes = (size_t *)(void *)(next + (m + 2) * cap);
        bk->count = 0;
        next += (m + 3) * cap;
    }
    sc->queue = queue;
    sc->queued = 0;
}

/*
 * Queue the columns j = cols[t], t < k, of v (rows `stride` apart) that moved
 * to the runs [sc->lo[j], sc->hi[j]), of at most `longest` values: each run's
 * rows go to the end of the bucket of its length, rows 0 .., with the
 * column's x (x0 + j when xs is NULL), its ss_all[j] and its passes, one more
 * than passes[j] (none when NULL).  The columns are taken bucket by bucket,
 * longest runs first, so each row is copied by one loop over the bucket's
 * columns; each length's selection leaves the columns not yet taken at the
 * front of cols (which it overwrites), so the next one reads only those.
 */
MD_HOT static void queue_runs(md_vclip_scratch *sc, const double *v, size_t stride, size_t *cols,
                              size_t k, int longest, const double *ss_all, size_t x0,
                              const size_t *xs, const size_t *passes)
{
    const double *lo = sc->lo, *hi = sc->hi;
    size_t *restrict group = sc->order, *restrict offset = sc->offset;
    const size_t cap = sc->capacity;
    size_t left = k; /* cols[0 .. left): not yet queued */
    for (int m = longest; m >= 1 && left > 0; m--) {
        size_t c = 0, r = 0; /* select_columns' loop, splitting the columns */
        for (size_t t = 0; t < left; t++) {
            const size_t j = cols[t];
            const size_t here = hi[j] - lo[j] == m;
            group[c] = j;
            cols[r] = j;
            c += here;
            r += 1 - here;
        }
        left = r;
        if (c == 0) continue;
        md_bucket *bk = &sc->bucket[m];
        const size_t base = bk->count;
        for (size_t u = 0; u < c; u++) {
            const size_t j = group[u];
            offset[u] = (size_t)lo[j] * stride + j;
            bk->x[base + u] = xs ? xs[j] : x0 + j;
            bk->ss_all[base + u] = ss_all[j];
            bk->passes[base + u] = passes ? passes[j] + 1 : 1;
        }
        for (int i = 0; i < m; i++) {
            double *restrict dst = bk->v + (size_t)i * cap + base;
            const double *restrict src = v + (size_t)i * stride;
#pragma GCC ivdep
            for (size_t u = 0; u < c; u++) dst[u] = src[offset[u]];
        }
        bk->count = base + c;
    }
}

/* The generated pass of k (NULL: none) for p's sigclip, or NULL
 * (md_internal.h). */
static md_clip_kernel generated_pass(const md_params *p, const md_kernels *k)
{
    if (!k || p->method != MD_SIGCLIP) return NULL;
    if (p->centre == MD_CENTRE_MEDIAN && p->spread == MD_SPREAD_MAD) return k->pass_mad;
    if (p->centre == MD_CENTRE_MEAN && p->spread == MD_SPREAD_STD) return k->pass_std;
    return NULL;
}

/* The pass on the runs [0, m) of w columns v (rows `stride` apart), by the
 * kernel `generated` or else clip_pass: the runs it leaves in sc->lo and
 * sc->hi, whether they moved in sc->moving, and the means of the runs [0, m)
 * and their squared deviations in sc->c and sc->s. */
MD_INLINE void pass_and_moments(const md_params *p, md_clip_kernel generated, const double *v,
                                size_t stride, int m, size_t w, md_vclip_scratch *sc)
{
    if (generated) {
        const double *rows[MD_KERNEL_MAX_FRAMES];
        for (int i = 0; i < m; i++) rows[i] = v + (size_t)i * stride;
        const md_clip_args args = {.low = p->low, .high = p->high, .floor = p->sigma_floor,
                                   .lo = sc->lo, .hi = sc->hi, .moving = sc->moving,
                                   .mean = sc->c, .sumsq = sc->s};
        generated(rows, w, &args);
        return;
    }
    clip_pass(p, v, stride, m, w, sc);
    run_moments(v, stride, 0, m, w, sc->c, sc->s);
}

MD_HOT void md_vclip_tile(const md_params *p, md_vclip_scratch *sc, double *const *rows,
                          size_t stride, size_t nframes, int sorted, size_t w, size_t x0,
                          double *value, double *variance, double *npix, double *nrej)
{
    const int n = (int)nframes;
    const double *tile = rows[0];
    if (!sorted) md_sort_columns(sc->kernels, sc->sort, rows, w);
    switch (p->method) {
    case MD_MINMAX: {
        const int a = p->nlow < n ? p->nlow : n;
        const int b = n - p->nhigh > a ? n - p->nhigh : a;
        mean_of_runs(p, tile, stride, n, a, b, w, sc, value, variance, npix, nrej);
        return;
    }
    case MD_QUANTILECLIP: {
        const double e = p->fclip * n;
        const int k0 = (int)floor(e), k1 = (int)ceil(e);
        mean_of_runs(p, tile, stride, n, k0, n - k0, w, sc, value, variance, npix, nrej);
        if (k1 == k0 || n - 2 * k1 <= 0) return;
        double *other = sc->results;
        mean_of_runs(p, tile, stride, n, k1, n - k1, w, sc, other, other + w, other + 2 * w,
                     other + 3 * w);
        for (size_t x = 0; x < w; x++) {
            value[x] += (e - k0) * (other[x] - value[x]);
            npix[x] = n - k0 - k1;
            nrej[x] = k0 + k1;
        }
        return;
    }
    default: break;
    }
    /* Room in the queue for every column of the tile (a flush uses the scratch). */
    if (sc->queue && sc->queued + w > sc->capacity) md_vclip_flush(p, sc, nframes);
    /* The first pass, and the results of the columns that stopped. */
    pass_and_moments(p, generated_pass(p, sc->kernels), tile, stride, n, w, sc);
    finish_runs(p, n, n, w, sc->c, sc->s, value, variance, npix, nrej);
    /* The columns that moved: queued, their results replaced when the queue
     * is flushed; or above MD_KERNEL_MAX_FRAMES, where a pass over queued
     * columns would sort their deviations with the whole network, continued
     * alone. */
    const double *lo = sc->lo, *hi = sc->hi;
    const size_t moved = select_columns(sc->moving, 1.0, w, sc->done);
    if (sc->queue) {
        queue_runs(sc, tile, stride, sc->done, moved, n - 1, sc->s, x0, NULL, NULL);
        sc->queued += moved;
        return;
    }
    for (size_t j = 0; j < moved; j++) {
        const size_t x = sc->done[j];
        for (int i = 0; i < n; i++) sc->pv[i] = tile[(size_t)i * stride + x];
        const md_pixel r = md_clip_sorted_from(p, sc->pv, n, (int)lo[x], (int)hi[x], 1);
        value[x] = r.value;
        variance[x] = r.variance;
        npix[x] = r.npix;
        nrej[x] = r.nrejected;
    }
}

/* Write the results r (value, variance, npix, nrejected, capacity apart) of
 * the columns j listed in sc->done into sc->row, at columns xs[j]. */
static void store_done(md_vclip_scratch *sc, const size_t *xs, const double *r, size_t count)
{
    const size_t *restrict done = sc->done;
    for (size_t k = 0; k < 4; k++) {
        double *restrict dst = sc->row[k];
        const double *restrict src = r + k * sc->capacity;
        for (size_t t = 0; t < count; t++) dst[xs[done[t]]] = src[done[t]];
    }
}

/* The next pass on the columns of bucket m: those that stop, and those whose
 * last pass it was before (their runs are final), are stored into sc->row;
 * the others move to the buckets of their new runs. */
MD_HOT static void flush_bucket(const md_params *p, md_vclip_scratch *sc, int n, int m)
{
    md_bucket *bk = &sc->bucket[m];
    const size_t k = bk->count, cap = sc->capacity;
    pass_and_moments(p, generated_pass(p, &md_kernel_table[m]), bk->v, cap, m, k, sc);
    /* A run too short for its variance takes that of all the values. */
    const double *ss = m < 2 ? bk->ss_all : sc->s;
    double *r = sc->results; /* value, variance, npix, nrejected */
    finish_runs(p, n, m, k, sc->c, ss, r, r + cap, r + 2 * cap, r + 3 * cap);
    double *restrict moving = sc->moving;
    const double last = p->maxiters;
    for (size_t j = 0; j < k; j++) moving[j] = (double)bk->passes[j] < last ? moving[j] : 0.0;
    store_done(sc, bk->x, r, select_columns(moving, 0.0, k, sc->done));
    const size_t moved = select_columns(moving, 1.0, k, sc->done);
    bk->count = 0; /* its columns move to shorter runs, other buckets */
    queue_runs(sc, bk->v, cap, sc->done, moved, m - 1, bk->ss_all, 0, bk->x, bk->passes);
}

MD_HOT void md_vclip_flush(const md_params *p, md_vclip_scratch *sc, size_t nframes)
{
    /* A column moves only to a shorter run: to a bucket taken later. */
    for (int m = (int)nframes - 1; m >= 1; m--)
        if (sc->bucket[m].count) flush_bucket(p, sc, (int)nframes, m);
    sc->queued = 0;
}
