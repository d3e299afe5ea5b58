/*
 * md_vclip.c -- the rejection methods across the columns of a tile at once.
 *
 * For a tile whose N rows are sorted column by column and hold no bad value,
 * every column's survivors are a run [lo, hi) of rows, so centres, spreads,
 * bounds and the final mean are column-wise loops with per-column row
 * indices, which the compiler vectorises.  Each step repeats md_reduce.c's
 * arithmetic operation for operation (selects instead of skipped additions),
 * so every pixel gets the same bits as md_reduce_sorted would give it.
 */
#include <math.h>

#include "md_internal.h"

#define MD_MAD_TO_SIGMA 1.482602218505602 /* as md_reduce.c */

/* Element (row, x) of a tile of rows `stride` doubles apart (int arithmetic,
 * so per-column row indices become vector gathers). */
#define AT(base, stride, row, x) ((base)[(int)(row) * (int)(stride) + (int)(x)])

/* Median of the run [lo, hi) of every column. */
MD_HOT static void run_median(const double *t, size_t stride, const int *lo, const int *hi, size_t w,
                       double *c)
{
    for (size_t x = 0; x < w; x++) {
        const int m = hi[x] - lo[x];
        const double upper = AT(t, stride, lo[x] + m / 2, x);
        const double lower = AT(t, stride, lo[x] + (m - 1) / 2, x);
        c[x] = m % 2 ? upper : (lower + upper) / 2.0;
    }
}

/* Plain mean of the run [lo, hi) of every column, summed in row order. */
MD_HOT static void run_mean(const double *t, size_t stride, size_t n, const int *lo, const int *hi,
                     size_t w, double *mean)
{
    for (size_t x = 0; x < w; x++) mean[x] = 0.0;
    for (size_t i = 0; i < n; i++) {
        const double *restrict row = t + i * stride;
        for (size_t x = 0; x < w; x++) {
            const int in = ((int)i >= lo[x]) & ((int)i < hi[x]);
            mean[x] = in ? mean[x] + row[x] : mean[x];
        }
    }
    for (size_t x = 0; x < w; x++) mean[x] = mean[x] / (hi[x] - lo[x]);
}

/* Spread of the run of every column about its centre c (md_reduce.c's
 * centre_and_spread), floored at sigma_floor. */
MD_HOT static void run_spread(const md_params *p, const md_vclip_scratch *sc, const double *t,
                       size_t stride, size_t n, size_t w, double *s)
{
    const int *lo = sc->lo, *hi = sc->hi;
    const double *c = sc->c;
    const double rdnoise = p->rdnoise, gain = p->gain, floor_ = p->sigma_floor;
    if (p->method == MD_CCDCLIP) {
        for (size_t x = 0; x < w; x++) {
            const double signal = c[x] > 0.0 ? c[x] : 0.0;
            s[x] = sqrt(rdnoise * rdnoise + gain * signal) / gain;
        }
    } else if (p->spread == MD_SPREAD_STD) {
        double *m = sc->tmp;
        if (p->centre == MD_CENTRE_MEAN)
            for (size_t x = 0; x < w; x++) m[x] = c[x];
        else
            run_mean(t, stride, n, lo, hi, w, m);
        for (size_t x = 0; x < w; x++) s[x] = 0.0;
        for (size_t i = 0; i < n; i++) {
            const double *restrict row = t + i * stride;
            for (size_t x = 0; x < w; x++) {
                const int in = ((int)i >= lo[x]) & ((int)i < hi[x]);
                const double d = row[x] - m[x];
                s[x] = in ? s[x] + d * d : s[x];
            }
        }
        for (size_t x = 0; x < w; x++) {
            const int count = hi[x] - lo[x];
            s[x] = count >= 2 ? sqrt(s[x] / (count - 1)) : 0.0;
        }
    } else { /* MAD: sort each column's deviations, bad rows (+inf) last */
        double *dev = sc->dev;
        for (size_t i = 0; i < n; i++) {
            const double *restrict row = t + i * stride;
            double *restrict drow = dev + i * stride;
            for (size_t x = 0; x < w; x++) {
                const int in = ((int)i >= lo[x]) & ((int)i < hi[x]);
                drow[x] = in ? fabs(row[x] - c[x]) : MD_BAD;
            }
        }
        if (sc->kernels) sc->kernels->sort(sc->dev_rows, w);
        else md_network_apply(sc->sort, sc->dev_rows, w);
        for (size_t x = 0; x < w; x++) {
            const int m = hi[x] - lo[x];
            const double d_lo = AT(dev, stride, (m - 1) / 2, x), d_hi = AT(dev, stride, m / 2, x);
            s[x] = MD_MAD_TO_SIGMA * ((d_lo + d_hi) / 2.0);
        }
    }
    for (size_t x = 0; x < w; x++) s[x] = s[x] < floor_ ? floor_ : s[x];
}

/* md_reduce.c's clip_iteratively, column-wise: the surviving runs in lo/hi. */
MD_HOT static void clip_columns(const md_params *p, md_vclip_scratch *sc, const double *t, size_t stride,
                         size_t n, size_t w)
{
    int *lo = sc->lo, *hi = sc->hi, *active = sc->active;
    for (size_t x = 0; x < w; x++) {
        lo[x] = 0;
        hi[x] = (int)n;
        active[x] = 1;
    }
    for (int it = 0; it < p->maxiters; it++) {
        int any = 0;
        for (size_t x = 0; x < w; x++) any |= active[x];
        if (!any) break;
        if (p->centre == MD_CENTRE_MEAN) run_mean(t, stride, n, lo, hi, w, sc->c);
        else run_median(t, stride, lo, hi, w, sc->c);
        run_spread(p, sc, t, stride, n, w, sc->s);
        int *below = sc->below, *above = sc->above;
        const double *c = sc->c, *s = sc->s, k_low = p->low, k_high = p->high;
        for (size_t x = 0; x < w; x++) below[x] = above[x] = 0;
        for (size_t i = 0; i < n; i++) {
            const double *restrict row = t + i * stride;
            for (size_t x = 0; x < w; x++) {
                const double v = row[x];
                const int in = ((int)i >= lo[x]) & ((int)i < hi[x]);
                below[x] += in & (v < c[x] - k_low * s[x]);
                above[x] += in & (v > c[x] + k_high * s[x]);
            }
        }
        for (size_t x = 0; x < w; x++) {
            const int na = lo[x] + below[x];
            const int nb = hi[x] - above[x] > na ? hi[x] - above[x] : na;
            const int stop = (na == lo[x] && nb == hi[x]) || na == nb;
            const int move = active[x] && !stop;
            lo[x] = move ? na : lo[x];
            hi[x] = move ? nb : hi[x];
            active[x] = move;
        }
    }
}

/* md_reduce.c's mean_of_run (equal weights), column-wise. */
MD_HOT static void mean_of_runs(const md_params *p, md_vclip_scratch *sc, const double *t, size_t stride,
                         size_t n, size_t w, double *value, double *variance, double *npix,
                         double *nrej)
{
    const int *lo = sc->lo, *hi = sc->hi;
    double *sw = sc->c, *sx = sc->s, *mean = sc->tmp, *ss = sc->tmp2;
    double *mean_all = sc->tmp3, *ss_all = sc->tmp4;
    for (size_t x = 0; x < w; x++) sw[x] = sx[x] = ss[x] = mean_all[x] = ss_all[x] = 0.0;
    for (size_t i = 0; i < n; i++) {
        const double *restrict row = t + i * stride;
        for (size_t x = 0; x < w; x++) {
            const int in = ((int)i >= lo[x]) & ((int)i < hi[x]);
            const double v = row[x];
            sw[x] = in ? sw[x] + 1.0 : sw[x];
            sx[x] = in ? sx[x] + v : sx[x];
            mean_all[x] += v; /* all n values: the variance of runs shorter than two */
        }
    }
    const double nd = (double)n;
    for (size_t x = 0; x < w; x++) {
        mean[x] = sx[x] / sw[x];
        mean_all[x] = mean_all[x] / nd;
    }
    for (size_t i = 0; i < n; i++) {
        const double *restrict row = t + i * stride;
        for (size_t x = 0; x < w; x++) {
            const int in = ((int)i >= lo[x]) & ((int)i < hi[x]);
            const double v = row[x];
            const double d = v - mean[x], d_all = v - mean_all[x];
            ss[x] = in ? ss[x] + d * d : ss[x];
            ss_all[x] += d_all * d_all;
        }
    }
    const double k = p->var_factor[n], fill = p->fill;
    for (size_t x = 0; x < w; x++) {
        const int used = hi[x] - lo[x];
        const double s2_run = ss[x] / (sw[x] - sw[x] / sw[x]);
        const double s2_all = n >= 2 ? ss_all[x] / (nd - nd / nd) : NAN;
        const double s2 = used >= 2 ? s2_run : s2_all;
        value[x] = used > 0 ? mean[x] : fill;
        variance[x] = used > 0 ? k * s2 * sw[x] / (sw[x] * sw[x]) : NAN;
        npix[x] = used;
        nrej[x] = (double)n - used;
    }
}

/* The same run [lo, hi) in every column. */
static void same_run(md_vclip_scratch *sc, size_t w, int lo, int hi)
{
    for (size_t x = 0; x < w; x++) {
        sc->lo[x] = lo;
        sc->hi[x] = hi;
    }
}

MD_HOT void md_vclip_tile(const md_params *p, md_vclip_scratch *sc, const double *tile,
                          size_t stride, size_t n, size_t w, double *value, double *variance,
                          double *npix, double *nrej)
{
    const int nn = (int)n;
    switch (p->method) {
    case MD_MINMAX: {
        const int lo = p->nlow < nn ? p->nlow : nn;
        same_run(sc, w, lo, nn - p->nhigh > lo ? nn - p->nhigh : lo);
        break;
    }
    case MD_QUANTILECLIP: {
        const double e = p->fclip * nn;
        const int k0 = (int)floor(e), k1 = (int)ceil(e);
        same_run(sc, w, k0, nn - k0);
        mean_of_runs(p, sc, tile, stride, n, w, value, variance, npix, nrej);
        if (k1 == k0 || nn - 2 * k1 <= 0) return;
        double *other = sc->other;
        same_run(sc, w, k1, nn - k1);
        mean_of_runs(p, sc, tile, stride, n, w, other, other + w, other + 2 * w, other + 3 * w);
        for (size_t x = 0; x < w; x++) {
            value[x] += (e - k0) * (other[x] - value[x]);
            npix[x] = nn - k0 - k1;
            nrej[x] = k0 + k1;
        }
        return;
    }
    default: clip_columns(p, sc, tile, stride, n, w); break;
    }
    mean_of_runs(p, sc, tile, stride, n, w, value, variance, npix, nrej);
}
