/*
 * md_vclip.c -- the rejection methods across the columns of a sorted, clean tile.
 *
 * Every rejection rule keeps an interval of values, so the survivors of a
 * sorted column are a run of rows [lo, hi).  For sigclip and ccdclip the
 * first clipping pass runs across the columns (centre, spread and bounds of
 * whole columns); columns it leaves whole stop there with the mean of all
 * their values, the others continue pixel by pixel from the run it left
 * (md_clip_sorted_from).  minmax and quantileclip keep the same run in every
 * column.  The arithmetic repeats md_reduce.c's operation for operation, so a
 * pixel gets the same bits whichever path computes it.
 */
#include <math.h>

#include "md_internal.h"

#define MD_MAD_TO_SIGMA 1.482602218505602 /* as md_reduce.c */

/*
 * md_reduce.c's mean_of_run for the same run [lo, hi) of every column (equal
 * weights): value, variance, npix and nrejected.  Runs shorter than two take
 * their variance from all n values, as there.
 */
MD_HOT static void mean_of_run(const md_params *p, double *const *rows, int n, int lo, int hi,
                               size_t w, md_vclip_scratch *sc, double *value, double *variance,
                               double *npix, double *nrej)
{
    const int used = hi - lo;
    const double k = p->var_factor[n], count = used, nd = n;
    double *restrict mean = sc->c, *restrict ss = sc->s;
    for (size_t x = 0; x < w; x++) mean[x] = ss[x] = 0.0;
    for (int i = lo; i < hi; i++) {
        const double *restrict r = rows[i];
        for (size_t x = 0; x < w; x++) mean[x] += r[x];
    }
    for (size_t x = 0; x < w; x++) mean[x] = mean[x] / count;
    const int from_all = used < 2;
    const int a = from_all ? 0 : lo, b = from_all ? n : hi;
    double *restrict centre = mean;
    if (from_all) { /* the variance comes from all n values, about their own mean */
        centre = sc->tmp;
        for (size_t x = 0; x < w; x++) centre[x] = 0.0;
        for (int i = 0; i < n; i++) {
            const double *restrict r = rows[i];
            for (size_t x = 0; x < w; x++) centre[x] += r[x];
        }
        for (size_t x = 0; x < w; x++) centre[x] = centre[x] / nd;
    }
    for (int i = a; i < b; i++) {
        const double *restrict r = rows[i];
        for (size_t x = 0; x < w; x++) {
            const double d = r[x] - centre[x];
            ss[x] += d * d;
        }
    }
    const double m = b - a;
    for (size_t x = 0; x < w; x++) {
        const double s2 = m >= 2 ? ss[x] / (m - m / m) : NAN;
        value[x] = used > 0 ? mean[x] : p->fill;
        variance[x] = used > 0 ? k * s2 * count / (count * count) : NAN;
        npix[x] = used;
        nrej[x] = n - used;
    }
}

/* Centre (into sc->c) and spread (into sc->s) of all n values of every
 * column, as md_reduce.c's centre_and_spread on a whole sorted column. */
MD_HOT static void centre_and_spread(const md_params *p, double *const *rows, int n, size_t w,
                                     md_vclip_scratch *sc)
{
    double *restrict c = sc->c, *restrict s = sc->s, *restrict mean = sc->tmp;
    for (size_t x = 0; x < w; x++) mean[x] = 0.0;
    for (int i = 0; i < n; i++) {
        const double *restrict r = rows[i];
        for (size_t x = 0; x < w; x++) mean[x] += r[x];
    }
    for (size_t x = 0; x < w; x++) mean[x] = mean[x] / n;
    if (p->centre == MD_CENTRE_MEAN) {
        for (size_t x = 0; x < w; x++) c[x] = mean[x];
    } else {
        const double *restrict lo = rows[(n - 1) / 2], *restrict hi = rows[n / 2];
        for (size_t x = 0; x < w; x++) c[x] = n % 2 ? hi[x] : (lo[x] + hi[x]) / 2.0;
    }
    if (p->method == MD_CCDCLIP) {
        const double rdnoise = p->rdnoise, gain = p->gain;
        for (size_t x = 0; x < w; x++) {
            const double signal = c[x] > 0.0 ? c[x] : 0.0;
            s[x] = sqrt(rdnoise * rdnoise + gain * signal) / gain;
        }
    } else if (p->spread == MD_SPREAD_STD) {
        for (size_t x = 0; x < w; x++) s[x] = 0.0;
        for (int i = 0; i < n; i++) {
            const double *restrict r = rows[i];
            for (size_t x = 0; x < w; x++) {
                const double d = r[x] - mean[x];
                s[x] += d * d;
            }
        }
        for (size_t x = 0; x < w; x++) s[x] = n >= 2 ? sqrt(s[x] / (n - 1)) : 0.0;
    } else { /* MAD: the median of the deviations, by network or kernel */
        for (int i = 0; i < n; i++) {
            const double *restrict r = rows[i];
            double *restrict dv = sc->dev_rows[i];
            for (size_t x = 0; x < w; x++) dv[x] = fabs(r[x] - c[x]);
        }
        if (sc->kernels) {
            sc->kernels->median(sc->dev_rows, w, s);
        } else {
            md_network_apply(sc->sort, sc->dev_rows, w);
            const double *restrict lo = sc->dev_rows[(n - 1) / 2], *restrict hi = sc->dev_rows[n / 2];
            for (size_t x = 0; x < w; x++) s[x] = n % 2 ? hi[x] : (lo[x] + hi[x]) / 2.0;
        }
        for (size_t x = 0; x < w; x++) s[x] = MD_MAD_TO_SIGMA * s[x];
    }
    const double floor_ = p->sigma_floor;
    for (size_t x = 0; x < w; x++) s[x] = s[x] < floor_ ? floor_ : s[x];
}

/* The first clipping pass on whole columns: the run [lo, hi) left by it and
 * whether the column moved (active); a pass that would reject everything
 * leaves the whole column, as md_reduce.c. */
MD_HOT static void first_pass(const md_params *p, double *const *rows, int n, size_t w,
                              md_vclip_scratch *sc)
{
    centre_and_spread(p, rows, n, w, sc);
    const double k_low = p->low, k_high = p->high;
    const double *restrict c = sc->c, *restrict s = sc->s;
    double *restrict lo = sc->lo, *restrict hi = sc->hi, *restrict active = sc->active;
    for (size_t x = 0; x < w; x++) lo[x] = hi[x] = 0.0;
    for (int i = 0; i < n; i++) {
        const double *restrict r = rows[i];
        for (size_t x = 0; x < w; x++) {
            lo[x] += r[x] < c[x] - k_low * s[x] ? 1.0 : 0.0;
            hi[x] += r[x] > c[x] + k_high * s[x] ? 1.0 : 0.0; /* counted above */
        }
    }
    for (size_t x = 0; x < w; x++) {
        const double b = n - hi[x] > lo[x] ? n - hi[x] : lo[x];
        const int move = !(lo[x] == 0.0 && b == n) && lo[x] != b;
        active[x] = move ? 1.0 : 0.0;
        lo[x] = move ? lo[x] : 0.0;
        hi[x] = move ? b : n;
    }
}

MD_HOT void md_vclip_tile(const md_params *p, md_vclip_scratch *sc, double *const *rows,
                          size_t nframes, size_t w, double *value, double *variance,
                          double *npix, double *nrej)
{
    const int n = (int)nframes;
    switch (p->method) {
    case MD_MINMAX: {
        const int lo = p->nlow < n ? p->nlow : n;
        mean_of_run(p, rows, n, lo, n - p->nhigh > lo ? n - p->nhigh : lo, w, sc, value,
                    variance, npix, nrej);
        return;
    }
    case MD_QUANTILECLIP: {
        const double e = p->fclip * n;
        const int k0 = (int)floor(e), k1 = (int)ceil(e);
        mean_of_run(p, rows, n, k0, n - k0, w, sc, value, variance, npix, nrej);
        if (k1 == k0 || n - 2 * k1 <= 0) return;
        double *other = sc->other;
        mean_of_run(p, rows, n, k1, n - k1, w, sc, other, other + w, other + 2 * w,
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
    first_pass(p, rows, n, w, sc);
    mean_of_run(p, rows, n, 0, n, w, sc, value, variance, npix, nrej);
    for (size_t x = 0; x < w; x++) { /* columns the first pass moved: one by one */
        if (sc->active[x] == 0.0) continue;
        for (int i = 0; i < n; i++) sc->pv[i] = rows[i][x];
        const md_pixel r = md_clip_sorted_from(p, sc->pv, n, (int)sc->lo[x], (int)sc->hi[x], 1);
        value[x] = r.value;
        variance[x] = r.variance;
        npix[x] = r.npix;
        nrej[x] = r.nrejected;
    }
}
