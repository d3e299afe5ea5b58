/*
 * md_sortnet.c -- sorting networks applied across the columns of a tile
 * (one compare-exchange works on w pixels at once, so it vectorises), and a
 * scalar sort for pixels that need one.
 */
#include <stdlib.h>

#include "md_internal.h"

typedef void (*emit_pair)(int i, int j, void *ctx);

/*
 * Batcher's odd-even merge sort for P = 2^k >= n inputs, keeping the
 * comparators whose both ends are < n.  Padding the inputs with +inf at
 * positions >= n makes every dropped comparator a no-op, so the kept ones
 * sort n values.  Its merges of sorted blocks of p inputs, p = 1, 2, 4 ...,
 * start from those of blocks of `from` (a power of two): the network sorts
 * when the blocks of `from` inputs are sorted first.  Calls emit(i, j, ctx)
 * for each comparator, i < j.
 */
static void batcher_pairs(int n, int from, emit_pair emit, void *ctx)
{
    int P = 1;
    while (P < n) P <<= 1;
    for (int p = from; p < P; p <<= 1)
        for (int k = p; k >= 1; k >>= 1)
            for (int j = k % p; j + k < P; j += 2 * k)
                for (int i = 0; i < k && i + j + k < P; i++) {
                    const int lo = i + j, hi = i + j + k;
                    if (lo / (2 * p) == hi / (2 * p) && hi < n) emit(lo, hi, ctx);
                }
}

/*
 * The bitonic merger for P = 2^k >= n inputs (Batcher's half-cleaners),
 * keeping the comparators whose both ends are < n.  It sorts any sequence
 * that falls and then rises; padded with +inf at positions >= n, the
 * sequence still does, and every dropped comparator is a no-op.  Calls
 * emit(i, j, ctx) for each comparator, i < j.
 */
static void bitonic_merger_pairs(int n, emit_pair emit, void *ctx)
{
    int P = 1;
    while (P < n) P <<= 1;
    for (int k = P / 2; k >= 1; k >>= 1)
        for (int i = 0; i < P; i++)
            if (!(i & k) && i + k < n) emit(i, i + k, ctx);
}

static void count_pair(int i, int j, void *ctx)
{
    (void)i;
    (void)j;
    (*(int *)ctx)++;
}

static void store_pair(int i, int j, void *ctx)
{
    md_network *net = ctx;
    net->a[net->ncomp] = i;
    net->b[net->ncomp] = j;
    net->ncomp++;
}

/* Keep only the comparators that can change the middle element(s). */
static int prune_to_median(md_network *net, int n)
{
    unsigned char *needed = calloc((size_t)n, 1);
    unsigned char *keep = calloc((size_t)(net->ncomp > 0 ? net->ncomp : 1), 1);
    int status = MD_ERR_NOMEM;
    if (!needed || !keep) goto done;
    needed[(n - 1) / 2] = 1;
    needed[n / 2] = 1;
    for (int c = net->ncomp - 1; c >= 0; c--) {
        if (needed[net->a[c]] || needed[net->b[c]]) {
            keep[c] = 1;
            needed[net->a[c]] = needed[net->b[c]] = 1;
        }
    }
    int m = 0;
    for (int c = 0; c < net->ncomp; c++) {
        if (keep[c]) {
            net->a[m] = net->a[c];
            net->b[m] = net->b[c];
            m++;
        }
    }
    net->ncomp = m;
    status = MD_OK;
done:
    free(needed);
    free(keep);
    return status;
}

/* The comparators of the network of that kind for n inputs, after the
 * sorts of blocks of `block` inputs (1: none). */
static void network_pairs(md_network_kind kind, int n, int block, emit_pair emit, void *ctx)
{
    if (kind == MD_NETWORK_VALLEY_MEDIAN) bitonic_merger_pairs(n, emit, ctx);
    else batcher_pairs(n, block, emit, ctx);
}

int md_network_build(md_network *net, int n, md_network_kind kind)
{
    _Static_assert(MD_NETWORK_BLOCK <= MD_KERNEL_MAX_FRAMES, "a kernel sorts each block");
    /* Above the kernels' frame counts, Batcher's sorts of blocks of 16 are
     * the kernels' (their values in registers), and the comparators merge. */
    const int blocks = kind != MD_NETWORK_VALLEY_MEDIAN && n > MD_KERNEL_MAX_FRAMES;
    int count = 0;
    net->n = n;
    net->block = blocks ? MD_NETWORK_BLOCK : 1;
    net->ncomp = 0;
    net->a = net->b = NULL;
    network_pairs(kind, n, net->block, count_pair, &count);
    const size_t size = (size_t)(count > 0 ? count : 1) * sizeof(int);
    net->a = malloc(size);
    net->b = malloc(size);
    if (!net->a || !net->b) {
        md_network_free(net);
        return MD_ERR_NOMEM;
    }
    network_pairs(kind, n, net->block, store_pair, net);
    if (kind != MD_NETWORK_SORT && n > 0) {
        const int status = prune_to_median(net, n);
        if (status != MD_OK) {
            md_network_free(net);
            return status;
        }
    }
    return MD_OK;
}

void md_network_free(md_network *net)
{
    free(net->a);
    free(net->b);
    net->a = net->b = NULL;
    net->ncomp = 0;
}

MD_HOT void md_network_apply(const md_network *net, double *const *rows, size_t w)
{
    if (net->block > 1)
        for (int i = 0; i < net->n; i += net->block) {
            const int rest = net->n - i, size = rest < net->block ? rest : net->block;
            md_kernel_table[size].sort(rows + i, w);
        }
    for (int c = 0; c < net->ncomp; c++) {
        double *restrict lo = rows[net->a[c]];
        double *restrict hi = rows[net->b[c]];
        for (size_t x = 0; x < w; x++) {
            /* The min/max shapes the compiler maps to vector min/max. */
            const double u = lo[x], v = hi[x];
            lo[x] = u < v ? u : v;
            hi[x] = v < u ? u : v;
        }
    }
}

/* One pass of insertion sort over elements g apart; wt follows v, and equal
 * values are ordered by weight (Shell sort is not stable, so this is what
 * makes the order, and which tied value minmax drops, depend on the
 * (value, weight) pairs only). */
static void gapped_insertion(double *v, double *wt, size_t n, size_t g)
{
    for (size_t i = g; i < n; i++) {
        const double x = v[i];
        const double xw = wt ? wt[i] : 0.0;
        size_t j = i;
        for (; j >= g && (v[j - g] > x || (wt && v[j - g] == x && wt[j - g] > xw)); j -= g) {
            v[j] = v[j - g];
            if (wt) wt[j] = wt[j - g];
        }
        v[j] = x;
        if (wt) wt[j] = xw;
    }
}

/* Shell sort with Knuth's gaps (1, 4, 13, 40, ...); plain insertion sort
 * for the small counts typical of a dark set. */
void md_sort(double *v, double *wt, size_t n)
{
    size_t g = 1;
    while (g < n / 3) g = 3 * g + 1;
    for (; g > 1; g /= 3) gapped_insertion(v, wt, n, g);
    gapped_insertion(v, wt, n, 1);
}

void md_sort_columns(const md_kernels *kernels, const md_network *net, double *const *rows,
                     size_t w)
{
    if (kernels) kernels->sort(rows, w);
    else md_network_apply(net, rows, w);
}
