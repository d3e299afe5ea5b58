/*
 * md_vclip.c -- the rejection methods across the columns of sorted, clean tiles.
 *
 * Every rejection rule keeps an interval of values, so the survivors of a
 * sorted column are a run of rows [lo, hi).  minmax and quantileclip keep the
 * same run in every column.  sigclip and ccdclip run their first pass across
 * all the columns of a tile (for sigclip's median/MAD and mean/std and up to
 * MD_KERNEL_MAX_FRAMES frames, md_kernels.c's md_kclip_* sort the tile and run
 * it with each column in registers), whose results are stored with the tile.
 * Up to MD_KERNEL_MAX_FRAMES frames, the columns that pass moved are copied to
 * a queue that collects them from tile after tile (with more frames, each
 * continues alone, in md_reduce.c).  When it is full, and at the end of each
 * row, the queue is flushed: the next passes run across the queued
 * columns (for those two pairs, by md_kernels.c's md_kpass_*), those that
 * stop are stored (their results replacing the tile's) and leave the queue.
 * A pass over a few hundred queued columns costs little more than their
 * arithmetic, where a pass over the few columns of one tile that still move
 * would mostly cost its loops' overhead.
 *
 * The arithmetic repeats md_reduce.c's operation for operation, so a pixel
 * gets the same bits whichever path computes it, in whichever batch.
 *
 * Rows of w columns are read from v[i * stride + x] (the tile, or the
 * queue).  Runs, flags and counts are held in doubles, so every loop runs on
 * one type of vector lane.  With `uniform`, every column has the run
 * [lo[0], hi[0]) and loops do not read lo and hi per column; the functions
 * that take it are inlined into callers that pass a constant.
 */
#include <math.h>

#include "md_internal.h"

#define MD_INLINE static inline __attribute__((always_inline))

/* Start and end of the run of column x (a0, b0: those of column 0). */
MD_INLINE double run_lo(const double *lo, double a0, size_t x, int uniform)
{
    return uniform ? a0 : lo[x];
}

MD_INLINE double run_hi(const double *hi, double b0, size_t x, int uniform)
{
    return uniform ? b0 : hi[x];
}

/* Whether row lies in the run of column x.  Loops over rows with uniform
 * runs visit only the rows of the run, [lo[0], hi[0]), so it needs no test. */
MD_INLINE int in_run(double row, const double *lo, const double *hi, size_t x, int uniform)
{
    return uniform || ((row >= lo[x]) & (row < hi[x]));
}

/* Means of the runs: (sum of rows lo[x] .. hi[x] - 1, in order) / (hi[x] - lo[x]). */
MD_INLINE void run_means(const double *v, size_t stride, int n, size_t w,
                         const double *restrict lo, const double *restrict hi, int uniform,
                         double *restrict mean)
{
    const double a0 = lo[0], b0 = hi[0];
    const int first = uniform ? (int)a0 : 0, last = uniform ? (int)b0 : n;
    for (size_t x = 0; x < w; x++) mean[x] = 0.0;
    for (int i = first; i < last; i++) {
        const double *restrict r = v + (size_t)i * stride;
        const double row = i;
        for (size_t x = 0; x < w; x++)
            mean[x] = in_run(row, lo, hi, x, uniform) ? mean[x] + r[x] : mean[x];
    }
    for (size_t x = 0; x < w; x++)
        mean[x] = mean[x] / (run_hi(hi, b0, x, uniform) - run_lo(lo, a0, x, uniform));
}

/* Whether any of the runs [lo[x], hi[x]) of w columns holds fewer than two rows. */
MD_INLINE int any_short_run(const double *restrict lo, const double *restrict hi, size_t w)
{
    int short_runs = 0;
    for (size_t x = 0; x < w; x++) short_runs |= hi[x] - lo[x] < 2.0;
    return short_runs;
}

/*
 * md_reduce.c's mean_of_run, last step: from the means and the sums of
 * squared deviations ss of the runs [lo[x], hi[x]) (of all n values for runs
 * shorter than two), the value, variance, npix and nrejected of every column.
 */
MD_INLINE void finish_runs(const md_params *p, int n, size_t w, const double *restrict lo,
                           const double *restrict hi, int uniform, const double *restrict mean,
                           const double *restrict ss, double *restrict value,
                           double *restrict variance, double *restrict npix,
                           double *restrict nrej)
{
    const double k = p->var_factor[n], nd = n, a0 = lo[0], b0 = hi[0], fill = p->fill;
    if (uniform && b0 - a0 >= 2.0) { /* the same divisors in every column */
        const double used = b0 - a0;
        md_mean_variances(variance, npix, ss, w, k, used); /* npix: scratch until set */
        for (size_t x = 0; x < w; x++) {
            value[x] = mean[x];
            npix[x] = used;
            nrej[x] = n - used;
        }
        return;
    }
    /* value .. nrej never overlap (distinct planes, or rows of one scratch). */
#pragma GCC ivdep
    for (size_t x = 0; x < w; x++) {
        const double used = run_hi(hi, b0, x, uniform) - run_lo(lo, a0, x, uniform);
        const double mx = mean[x], sx = ss[x];
        const double m = used < 2.0 ? nd : used;
        const double s2 = m >= 2 ? sx / (m - 1.0) : NAN; /* sw - sww / sw, weights 1 */
        value[x] = used > 0 ? mx : fill;
        variance[x] = used > 0 ? k * s2 * used / (used * used) : NAN;
        npix[x] = used;
        nrej[x] = n - used;
    }
}

/*
 * md_reduce.c's mean_of_run for the run [lo[x], hi[x]) of every column x
 * (equal weights): value, variance, npix and nrejected.  Runs shorter than
 * two take their variance from all n values, as there.
 */
MD_INLINE void mean_of_runs(const md_params *p, const double *v, size_t stride, int n, size_t w,
                            const double *restrict lo, const double *restrict hi, int uniform,
                            md_vclip_scratch *sc, double *restrict value,
                            double *restrict variance, double *restrict npix,
                            double *restrict nrej)
{
    const double nd = n, a0 = lo[0], b0 = hi[0];
    double *restrict mean = sc->c, *restrict ss = sc->s;
    run_means(v, stride, n, w, lo, hi, uniform, mean);
    const int short_runs = uniform ? b0 - a0 < 2.0 : any_short_run(lo, hi, w);
    const double *restrict whole = mean;
    if (short_runs) { /* their variance comes from all n values, about their own mean */
        double *restrict all = sc->tmp;
        for (size_t x = 0; x < w; x++) all[x] = 0.0;
        for (int i = 0; i < n; i++) {
            const double *restrict r = v + (size_t)i * stride;
            for (size_t x = 0; x < w; x++) all[x] += r[x];
        }
        for (size_t x = 0; x < w; x++) all[x] = all[x] / nd;
        whole = all;
    }
    /* The rows of the variance: with uniform runs, the run's or all. */
    const int first = uniform && !short_runs ? (int)a0 : 0;
    const int last = uniform && !short_runs ? (int)b0 : n;
    for (size_t x = 0; x < w; x++) ss[x] = 0.0;
    for (int i = first; i < last; i++) {
        const double *restrict r = v + (size_t)i * stride;
        const double row = i;
        for (size_t x = 0; x < w; x++) {
            const int from_all = run_hi(hi, b0, x, uniform) - run_lo(lo, a0, x, uniform) < 2.0;
            const double d = r[x] - (from_all ? whole[x] : mean[x]);
            ss[x] = from_all | in_run(row, lo, hi, x, uniform) ? ss[x] + d * d : ss[x];
        }
    }
    finish_runs(p, n, w, lo, hi, uniform, mean, ss, value, variance, npix, nrej);
}

/* Centres of the runs into sc->c: their medians, or their means. */
MD_INLINE void run_centres(const md_params *p, const double *v, size_t stride, int n, size_t w,
                           const double *restrict lo, const double *restrict hi, int uniform,
                           md_vclip_scratch *sc)
{
    double *restrict c = sc->c;
    if (p->centre == MD_CENTRE_MEAN) {
        run_means(v, stride, n, w, lo, hi, uniform, c);
        return;
    }
    const double a0 = lo[0], b0 = hi[0];
    for (size_t x = 0; x < w; x++) {
        const int a = (int)run_lo(lo, a0, x, uniform);
        const int m = (int)run_hi(hi, b0, x, uniform) - a;
        const double upper = v[(size_t)(a + m / 2) * stride + x];
        const double lower = v[(size_t)(a + (m - 1) / 2) * stride + x];
        c[x] = m % 2 ? upper : (lower + upper) / 2.0;
    }
}

/*
 * Median absolute deviations of the runs from the centres sc->c, into
 * sc->s: the deviations of each run, the rows outside it +inf, sorted down
 * the columns; the middle of the run's count.  When every run is [0, n),
 * the median alone.
 */
MD_INLINE void run_mads(const double *v, size_t stride, int n, size_t w,
                        const double *restrict lo, const double *restrict hi, int uniform,
                        md_vclip_scratch *sc)
{
    const double a0 = lo[0], b0 = hi[0];
    const double *restrict c = sc->c;
    double *restrict s = sc->s;
    for (int i = 0; i < n; i++) {
        const double *restrict r = v + (size_t)i * stride;
        double *restrict dv = sc->dev_rows[i];
        const double row = i;
        for (size_t x = 0; x < w; x++) {
            const int in = (row >= run_lo(lo, a0, x, uniform)) & (row < run_hi(hi, b0, x, uniform));
            dv[x] = in ? fabs(r[x] - c[x]) : INFINITY;
        }
    }
    if (uniform && a0 == 0.0 && b0 == n && sc->kernels) {
        sc->kernels->median(sc->dev_rows, w, s);
        return;
    }
    md_sort_columns(sc->kernels, sc->sort, sc->dev_rows, w);
    const double *restrict dev = sc->dev_rows[0];
    const size_t dstride = sc->capacity;
    for (size_t x = 0; x < w; x++) {
        const int m = (int)(run_hi(hi, b0, x, uniform) - run_lo(lo, a0, x, uniform));
        const double upper = dev[(size_t)(m / 2) * dstride + x];
        const double lower = dev[(size_t)((m - 1) / 2) * dstride + x];
        s[x] = m % 2 ? upper : (lower + upper) / 2.0;
    }
}

/* Spreads of the runs about the centres sc->c, into sc->s (at least the floor). */
MD_INLINE void run_spreads(const md_params *p, const double *v, size_t stride, int n, size_t w,
                           const double *restrict lo, const double *restrict hi, int uniform,
                           md_vclip_scratch *sc)
{
    const double a0 = lo[0], b0 = hi[0];
    const double *restrict c = sc->c;
    double *restrict s = sc->s;
    if (p->method == MD_CCDCLIP) {
        const double rdnoise = p->rdnoise, gain = p->gain;
        for (size_t x = 0; x < w; x++) {
            const double signal = c[x] > 0.0 ? c[x] : 0.0;
            s[x] = sqrt(rdnoise * rdnoise + gain * signal) / gain;
        }
    } else if (p->spread == MD_SPREAD_STD) {
        const double *restrict mean = c;
        if (p->centre != MD_CENTRE_MEAN) {
            run_means(v, stride, n, w, lo, hi, uniform, sc->tmp);
            mean = sc->tmp;
        }
        const int first = uniform ? (int)a0 : 0, last = uniform ? (int)b0 : n;
        for (size_t x = 0; x < w; x++) s[x] = 0.0;
        for (int i = first; i < last; i++) {
            const double *restrict r = v + (size_t)i * stride;
            const double row = i;
            for (size_t x = 0; x < w; x++) {
                const double d = r[x] - mean[x];
                s[x] = in_run(row, lo, hi, x, uniform) ? s[x] + d * d : s[x];
            }
        }
        for (size_t x = 0; x < w; x++) {
            const double m = run_hi(hi, b0, x, uniform) - run_lo(lo, a0, x, uniform);
            s[x] = m >= 2 ? sqrt(s[x] / (m - 1)) : 0.0;
        }
    } else {
        run_mads(v, stride, n, w, lo, hi, uniform, sc);
        for (size_t x = 0; x < w; x++) s[x] = MD_MAD_TO_SIGMA * s[x];
    }
    const double floor_ = p->sigma_floor;
    for (size_t x = 0; x < w; x++) s[x] = s[x] < floor_ ? floor_ : s[x];
}

/*
 * One clipping pass, as md_reduce.c's, on the runs [lo, hi) of w columns: a
 * column whose pass rejects nothing, or would reject everything, keeps its
 * run and stops (moving[x] = 0); the others take their new runs
 * (moving[x] = 1).  Returns how many columns still move.
 */
MD_INLINE size_t clip_pass(const md_params *p, const double *v, size_t stride, int n, size_t w,
                           double *restrict lo, double *restrict hi, int uniform,
                           double *restrict moving, md_vclip_scratch *sc)
{
    run_centres(p, v, stride, n, w, lo, hi, uniform, sc);
    run_spreads(p, v, stride, n, w, lo, hi, uniform, sc);
    const double a0 = lo[0], b0 = hi[0], k_low = p->low, k_high = p->high;
    const double *restrict c = sc->c, *restrict s = sc->s;
    double *restrict low = sc->low, *restrict high = sc->high;
    double *restrict below = sc->below, *restrict above = sc->above;
    for (size_t x = 0; x < w; x++) low[x] = c[x] - k_low * s[x];
    for (size_t x = 0; x < w; x++) high[x] = c[x] + k_high * s[x];
    for (size_t x = 0; x < w; x++) below[x] = above[x] = 0.0;
    const int first = uniform ? (int)a0 : 0, last = uniform ? (int)b0 : n;
    for (int i = first; i < last; i++) {
        const double *restrict r = v + (size_t)i * stride;
        const double row = i;
        for (size_t x = 0; x < w; x++) {
            const int in = in_run(row, lo, hi, x, uniform);
            below[x] += in & (r[x] < low[x]) ? 1.0 : 0.0;
            above[x] += in & (r[x] > high[x]) ? 1.0 : 0.0;
        }
    }
    size_t count = 0;
    for (size_t x = 0; x < w; x++) {
        const double a = run_lo(lo, a0, x, uniform), b = run_hi(hi, b0, x, uniform);
        const double na = a + below[x], nb = b - above[x] > na ? b - above[x] : na;
        const int still = !(((na == a) & (nb == b)) | (na == nb));
        lo[x] = still ? na : a;
        hi[x] = still ? nb : b;
        moving[x] = still ? 1.0 : 0.0;
        count += (size_t)still;
    }
    return count;
}

/* Indices j < m where keep[j] == want, into index; returns how many. */
static size_t select_columns(const double *restrict keep, double want, size_t m,
                             size_t *restrict index)
{
    size_t k = 0;
    for (size_t j = 0; j < m; j++) {
        index[k] = j;
        k += keep[j] == want;
    }
    return k;
}

/* dst[i * dst_stride + j] = src[i * src_stride + index[j]] for i < n, j < k.
 * In place (dst == src, the same stride) when index[j] >= j: every value is
 * read before a later j could overwrite it. */
MD_HOT static void gather_columns(double *dst, size_t dst_stride, const double *src,
                                  size_t src_stride, int n, const size_t *restrict index,
                                  size_t k)
{
    for (int i = 0; i < n; i++) {
        double *d = dst + (size_t)i * dst_stride;
        const double *s = src + (size_t)i * src_stride;
#pragma GCC ivdep
        for (size_t j = 0; j < k; j++) d[j] = s[index[j]];
    }
}

/* Copy the columns of the tile that still move, with their runs and
 * output columns, to the end of the queue. */
static void enqueue(md_vclip_scratch *sc, const double *tile, size_t stride, int n, size_t w,
                    size_t x0)
{
    const size_t m = sc->queued, cap = sc->capacity;
    size_t *restrict index = sc->done;
    const size_t k = select_columns(sc->moving, 1.0, w, index);
    gather_columns(sc->queue + m, cap, tile, stride, n, index, k);
    for (size_t j = 0; j < k; j++) {
        const size_t x = index[j];
        sc->qlo[m + j] = sc->lo[x];
        sc->qhi[m + j] = sc->hi[x];
        sc->qx[m + j] = x0 + x;
    }
    sc->queued = m + k;
}

/* The generated kernel for p's sigclip, its first pass (first = 1) or a
 * later one (first = 0), or NULL (md_internal.h). */
static md_clip_kernel generated_pass(const md_params *p, const md_vclip_scratch *sc, int first)
{
    const md_kernels *k = sc->kernels;
    if (!k || p->method != MD_SIGCLIP) return NULL;
    if (p->centre == MD_CENTRE_MEDIAN && p->spread == MD_SPREAD_MAD)
        return first ? k->clip_mad : k->pass_mad;
    if (p->centre == MD_CENTRE_MEAN && p->spread == MD_SPREAD_STD)
        return first ? k->clip_std : k->pass_std;
    return NULL;
}

MD_HOT void md_vclip_tile(const md_params *p, md_vclip_scratch *sc, const md_outputs *out,
                          double *const *rows, size_t stride, size_t nframes, size_t w, size_t y,
                          size_t x0, double *value, double *variance, double *npix, double *nrej)
{
    const int n = (int)nframes;
    const double *tile = rows[0];
    double *lo = sc->lo, *hi = sc->hi;
    const md_clip_kernel fused = generated_pass(p, sc, 1);
    if (!fused) md_sort_columns(sc->kernels, sc->sort, rows, w);
    switch (p->method) {
    case MD_MINMAX:
        lo[0] = p->nlow < n ? p->nlow : n;
        hi[0] = n - p->nhigh > lo[0] ? n - p->nhigh : lo[0];
        mean_of_runs(p, tile, stride, n, w, lo, hi, 1, sc, value, variance, npix, nrej);
        return;
    case MD_QUANTILECLIP: {
        const double e = p->fclip * n;
        const int k0 = (int)floor(e), k1 = (int)ceil(e);
        lo[0] = k0, hi[0] = n - k0;
        mean_of_runs(p, tile, stride, n, w, lo, hi, 1, sc, value, variance, npix, nrej);
        if (k1 == k0 || n - 2 * k1 <= 0) return;
        double *other = sc->results;
        lo[0] = k1, hi[0] = n - k1;
        mean_of_runs(p, tile, stride, n, w, lo, hi, 1, sc, other, other + w, other + 2 * w,
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
    /* Room for every column of the tile (a flush uses the scratch). */
    if (sc->queued + w > sc->capacity) md_vclip_flush(p, sc, nframes, out, y);
    size_t moved = 0;
    if (fused) {
        const md_clip_args args = {.low = p->low, .high = p->high, .floor = p->sigma_floor,
                                   .lo = lo, .hi = hi, .moving = sc->moving,
                                   .mean = sc->c, .sumsq = sc->s};
        fused(rows, w, &args);
        for (size_t x = 0; x < w; x++) moved += sc->moving[x] != 0.0;
    } else {
        lo[0] = 0.0, hi[0] = n;
        moved = clip_pass(p, tile, stride, n, w, lo, hi, 1, sc->moving, sc);
    }
    if (moved > 0 && p->maxiters == 1) { /* every run is final */
        mean_of_runs(p, tile, stride, n, w, lo, hi, 0, sc, value, variance, npix, nrej);
        return;
    }
    /* The results of the columns that did not move; those that did are
     * queued, and their results replaced when the queue is flushed. */
    const double a = 0.0, b = n;
    if (fused) /* it left the means and squared deviations in sc->c, sc->s */
        finish_runs(p, n, w, &a, &b, 1, sc->c, sc->s, value, variance, npix, nrej);
    else
        mean_of_runs(p, tile, stride, n, w, &a, &b, 1, sc, value, variance, npix, nrej);
    if (moved == 0) return;
    if (sc->kernels) {
        enqueue(sc, tile, stride, n, w, x0);
        return;
    }
    /* Above MD_KERNEL_MAX_FRAMES a pass over queued columns would sort their
     * deviations with the whole network: continue each column alone. */
    for (size_t x = 0; x < w; x++) {
        if (sc->moving[x] == 0.0) continue;
        for (int i = 0; i < n; i++) sc->pv[i] = tile[(size_t)i * stride + x];
        const md_pixel r = md_clip_sorted_from(p, sc->pv, n, (int)lo[x], (int)hi[x], 1);
        value[x] = r.value;
        variance[x] = r.variance;
        npix[x] = r.npix;
        nrej[x] = r.nrejected;
    }
}

/* Store the results r (value, variance, npix, nrejected, capacity apart) of
 * the queued columns listed in sc->done into row y of the output planes. */
static void store_done(const md_outputs *out, md_vclip_scratch *sc, size_t y, const double *r,
                       size_t count)
{
    const md_plane *planes[] = {&out->value, &out->variance, &out->npix, &out->nrejected};
    for (size_t k = 0; k < 4; k++)
        if (planes[k]->data)
            md_scatter(planes[k], y, sc->qx, r + k * sc->capacity, sc->done, count);
    if (!out->fewest) return;
    const double *npix = r + 2 * sc->capacity;
    for (size_t k = 0; k < count; k++) {
        const double used = npix[sc->done[k]];
        sc->fewest = used < sc->fewest ? used : sc->fewest;
    }
}

MD_HOT void md_vclip_flush(const md_params *p, md_vclip_scratch *sc, size_t nframes,
                           const md_outputs *out, size_t y)
{
    const int n = (int)nframes;
    const size_t cap = sc->capacity;
    double *q = sc->queue, *qlo = sc->qlo, *qhi = sc->qhi;
    size_t *qx = sc->qx;
    double *r = sc->results; /* value, variance, npix, nrejected */
    size_t m = sc->queued;
    const md_clip_kernel generated = generated_pass(p, sc, 0);
    double *rows[MD_KERNEL_MAX_FRAMES];
    for (int i = 0; generated && i < n; i++) rows[i] = q + (size_t)i * cap;
    for (int it = 1; it < p->maxiters && m > 0; it++) {
        const int last = it + 1 >= p->maxiters;
        if (generated) {
            const md_clip_args args = {.low = p->low, .high = p->high, .floor = p->sigma_floor,
                                       .lo = qlo, .hi = qhi, .moving = sc->moving,
                                       .mean = sc->c, .sumsq = sc->s};
            generated(rows, m, &args);
        } else {
            clip_pass(p, q, cap, n, m, qlo, qhi, 0, sc->moving, sc);
        }
        /* The results of the columns that stopped: from the means and
         * squared deviations of their runs the kernel left, unless a run is
         * too short for them (its variance is taken from all the values). */
        if (generated && !last && !any_short_run(qlo, qhi, m))
            finish_runs(p, n, m, qlo, qhi, 0, sc->c, sc->s, r, r + cap, r + 2 * cap, r + 3 * cap);
        else
            mean_of_runs(p, q, cap, n, m, qlo, qhi, 0, sc, r, r + cap, r + 2 * cap, r + 3 * cap);
        /* Store the columns that stopped (all of them after the last pass);
         * move the others to the front. */
        if (last) {
            for (size_t j = 0; j < m; j++) sc->done[j] = j;
            store_done(out, sc, y, r, m);
            break;
        }
        store_done(out, sc, y, r, select_columns(sc->moving, 0.0, m, sc->done));
        size_t *restrict index = sc->done;
        const size_t kept = select_columns(sc->moving, 1.0, m, index);
        gather_columns(q, cap, q, cap, n, index, kept);
        for (size_t j = 0; j < kept; j++) {
            const size_t from = index[j];
            qlo[j] = qlo[from];
            qhi[j] = qhi[from];
            qx[j] = qx[from];
        }
        m = kept;
    }
    sc->queued = 0;
}
