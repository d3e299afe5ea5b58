/*
 * md_reduce.c -- the rejection methods, one pixel at a time, on its good
 * values sorted ascending.  Every rejection rule used here keeps an interval
 * of values, so the survivors are always a contiguous run [lo, hi) of the
 * sorted values and each iteration only moves the two ends inwards.
 */
#include <math.h>

#include "md_internal.h"

double md_sorted_median(const double *v, int n)
{
    return (n % 2) ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2.0;
}

/* Sample variance about the (weighted) mean, and the sums of weights.  Equal
 * weights (wt NULL) take loops without them: the same bits (1 * x == x and
 * the sums of ones are exact). */
static void weighted_moments(const double *v, const double *wt, int n, double *mean, double *s2,
                             double *v1, double *v2)
{
    double sw = 0.0, sww = 0.0, swx = 0.0, ss = 0.0;
    if (wt) {
        for (int i = 0; i < n; i++) {
            sw += wt[i];
            sww += wt[i] * wt[i];
            swx += wt[i] * v[i];
        }
    } else {
        sw = sww = n;
        for (int i = 0; i < n; i++) swx += v[i];
    }
    const double m = swx / sw;
    if (wt) {
        for (int i = 0; i < n; i++) {
            const double d = v[i] - m;
            ss += wt[i] * d * d;
        }
    } else {
        for (int i = 0; i < n; i++) {
            const double d = v[i] - m;
            ss += d * d;
        }
    }
    *mean = m;
    *s2 = n >= 2 ? ss / (sw - sww / sw) : NAN;
    *v1 = sw;
    *v2 = sww;
}

/* Median absolute deviation from c of sorted v[0..n).  The deviations below
 * c, c - v[right - 1 - i], and above it, v[right + j] - c, each rise with i
 * and j: the middle one of them all is found by bisecting how many of the
 * k + 1 smallest lie below c. */
static double sorted_mad(const double *v, int n, double c)
{
    int right = n / 2; /* the first value >= c, searched from the middle */
    while (right > 0 && v[right - 1] >= c) right--;
    while (right < n && v[right] < c) right++;
    const int nbelow = right, nabove = n - right, k = (n - 1) / 2;
    int lo = k + 1 - nabove > 0 ? k + 1 - nabove : 0, hi = k + 1 < nbelow ? k + 1 : nbelow;
    while (lo < hi) { /* the (i + 1)-th deviation below against the (k - i + 1)-th above */
        const int i = (lo + hi) / 2;
        if (c - v[right - 1 - i] < v[right + k - i] - c) lo = i + 1;
        else hi = i;
    }
    const int j = k + 1 - lo; /* the k + 1 smallest: lo below c, j above */
    const double last_below = lo > 0 ? c - v[right - lo] : -INFINITY;
    const double last_above = j > 0 ? v[right + j - 1] - c : -INFINITY;
    const double d = last_below > last_above ? last_below : last_above;
    if (n % 2) return d;
    const double next_below = lo < nbelow ? c - v[right - 1 - lo] : INFINITY;
    const double next_above = j < nabove ? v[right + j] - c : INFINITY;
    return (d + (next_below < next_above ? next_below : next_above)) / 2.0;
}

static double unweighted_mean(const double *v, int n)
{
    double s = 0.0;
    for (int i = 0; i < n; i++) s += v[i];
    return s / n;
}

/* Centre and spread of the current survivors v[0..n), n >= 1. */
static void centre_and_spread(const md_params *p, const double *v, int n, double *c, double *s)
{
    *c = p->centre == MD_CENTRE_MEAN ? unweighted_mean(v, n) : md_sorted_median(v, n);
    if (p->method == MD_CCDCLIP) {
        const double signal = *c > 0.0 ? *c : 0.0;
        *s = sqrt(p->rdnoise * p->rdnoise + p->gain * signal) / p->gain;
    } else if (p->spread == MD_SPREAD_STD) {
        double ss = 0.0;
        const double m = p->centre == MD_CENTRE_MEAN ? *c : unweighted_mean(v, n);
        for (int i = 0; i < n; i++) ss += (v[i] - m) * (v[i] - m);
        *s = n >= 2 ? sqrt(ss / (n - 1)) : 0.0;
    } else {
        *s = MD_MAD_TO_SIGMA * sorted_mad(v, n, *c);
    }
    if (*s < p->sigma_floor) *s = p->sigma_floor;
}

/* Iterative clipping of sorted v from the run [*lo, *hi) left by `done`
 * passes: returns the surviving run.  Stops when a pass rejects nothing,
 * after maxiters passes, or before a pass that would reject every value (the
 * previous survivors are kept). */
static void clip_iteratively(const md_params *p, const double *v, int done, int *lo, int *hi)
{
    int a = *lo, b = *hi;
    for (int it = done; it < p->maxiters; it++) {
        double c, s;
        centre_and_spread(p, v + a, b - a, &c, &s);
        const double low = c - p->low * s, high = c + p->high * s;
        int na = a, nb = b;
        while (na < nb && v[na] < low) na++;
        while (nb > na && v[nb - 1] > high) nb--;
        if ((na == a && nb == b) || na == nb) break;
        a = na;
        b = nb;
    }
    *lo = a;
    *hi = b;
}

/* Weighted mean of the run [lo, hi) and the variance of the result. */
static md_pixel mean_of_run(const md_params *p, const double *v, const double *wt, int n, int lo,
                            int hi)
{
    md_pixel r = {p->fill, NAN, hi - lo, n - (hi - lo)};
    if (hi <= lo) return r;
    double s2, v1, v2, m_all, v1_all, v2_all;
    weighted_moments(v + lo, wt ? wt + lo : NULL, hi - lo, &r.value, &s2, &v1, &v2);
    if (hi - lo < 2) weighted_moments(v, wt, n, &m_all, &s2, &v1_all, &v2_all);
    r.variance = p->var_factor[n] * s2 * v2 / (v1 * v1);
    return r;
}

/* Drop e = fclip * n values at each end: the mean of the run trimmed by
 * floor(e), moved towards the run trimmed by ceil(e) by the fraction of e;
 * npix = n - floor(e) - ceil(e) (numina's count). */
static md_pixel quantile_clip(const md_params *p, const double *v, const double *wt, int n)
{
    const double e = p->fclip * n;
    const int k0 = (int)floor(e), k1 = (int)ceil(e);
    md_pixel r = mean_of_run(p, v, wt, n, k0, n - k0);
    if (k1 == k0 || n - 2 * k1 <= 0) return r;
    const md_pixel r1 = mean_of_run(p, v, wt, n, k1, n - k1);
    r.value += (e - k0) * (r1.value - r.value);
    r.npix = n - k0 - k1;
    r.nrejected = k0 + k1;
    return r;
}

md_pixel md_reduce_sorted(const md_params *p, const double *v, const double *wt, int n)
{
    int lo = 0, hi = n;
    switch (p->method) {
    case MD_QUANTILECLIP: return quantile_clip(p, v, wt, n);
    case MD_MINMAX:
        lo = p->nlow < n ? p->nlow : n;
        hi = n - p->nhigh > lo ? n - p->nhigh : lo;
        break;
    case MD_SIGCLIP:
    case MD_CCDCLIP:
        if (n > 0) clip_iteratively(p, v, 0, &lo, &hi);
        break;
    default: break;
    }
    return mean_of_run(p, v, wt, n, lo, hi);
}

md_pixel md_clip_sorted_from(const md_params *p, const double *v, int n, int lo, int hi, int done)
{
    clip_iteratively(p, v, done, &lo, &hi);
    return mean_of_run(p, v, NULL, n, lo, hi);
}
