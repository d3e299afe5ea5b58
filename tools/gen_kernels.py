"""Generate src/md_kernels.c: register-resident column kernels for 1..MAX_FRAMES frames.

For each frame count N the generated C has two loops over the columns of a
tile, with the N values of a column held in local variables (one vector
register per frame once the compiler vectorises the loop across columns):

* ``md_kmedian_N``: the median by the pruned Batcher network;
* ``md_ksort_N``: the full Batcher network, storing the sorted column back;
* ``md_kclip_mad_N`` and ``md_kclip_std_N`` (N >= 3): the full sort, stored
  back, then the first clipping pass of sigclip (centre median and spread MAD,
  or centre mean and spread std) on the whole column (md_vclip.c takes it
  from there).

They do exactly the arithmetic of the generic paths in md_combine.c (same
operations in the same order), so a pixel gets the same bits whichever path
computes it.  Run: ``python tools/gen_kernels.py > src/md_kernels.c``.
"""

MAX_FRAMES = 24
MIN_CLIP_FRAMES = 3  # fewer frames take md_vclip.c's loops


def batcher_pairs(n: int) -> list[tuple[int, int]]:
    """Batcher's odd-even merge sort for n inputs (padding pairs dropped)."""
    p2 = 1
    while p2 < n:
        p2 <<= 1
    pairs = []
    p = 1
    while p < p2:
        k = p
        while k >= 1:
            j = k % p
            while j + k < p2:
                for i in range(min(k, p2 - j - k)):
                    lo, hi = i + j, i + j + k
                    if lo // (2 * p) == hi // (2 * p) and hi < n:
                        pairs.append((lo, hi))
                j += 2 * k
            k >>= 1
        p <<= 1
    return pairs


def median_pairs(n: int) -> list[tuple[int, int]]:
    """The comparators the middle element(s) depend on."""
    needed = {(n - 1) // 2, n // 2}
    kept = []
    for a, b in reversed(batcher_pairs(n)):
        if a in needed or b in needed:
            kept.append((a, b))
            needed |= {a, b}
    return kept[::-1]


def loads(n: int) -> str:
    return "\n".join(f"        double v{i} = r{i}[x];" for i in range(n))


def network(pairs) -> str:
    return "\n".join(f"        MD_CMPX(v{a}, v{b});" for a, b in pairs)


def row_pointers(n: int, writable: bool = False) -> str:
    kind = "double" if writable else "const double"
    return "\n".join(f"    {kind} *restrict r{i} = rows[{i}];" for i in range(n))


def stores(n: int) -> str:
    return "\n".join(f"        r{i}[x] = v{i};" for i in range(n))


def kernel_median(n: int) -> str:
    mid = f"v{n // 2}" if n % 2 else f"(v{n // 2 - 1} + v{n // 2}) / 2.0"
    return f"""
MD_HOT static void md_kmedian_{n}(double *const *rows, size_t w, double *restrict value)
{{
{row_pointers(n)}
    for (size_t x = 0; x < w; x++) {{
{loads(n)}
{network(median_pairs(n))}
        value[x] = {mid};
    }}
}}
"""


def kernel_sort(n: int) -> str:
    return f"""
MD_HOT static void md_ksort_{n}(double *const *rows, size_t w)
{{
{row_pointers(n, writable=True)}
    /* The rows are distinct, non-overlapping rows of one tile. */
#pragma GCC ivdep
    for (size_t x = 0; x < w; x++) {{
{loads(n)}
{network(batcher_pairs(n))}
{stores(n)}
    }}
}}
"""


def tree_sum(terms: list[str]) -> str:
    """A sum of exact terms (counts) as a balanced tree: a short dependency chain."""
    while len(terms) > 1:
        terms = [f"({a} + {b})" for a, b in zip(terms[::2], terms[1::2], strict=False)] + (
            [terms[-1]] if len(terms) % 2 else []
        )
    return terms[0]


def kernel_clip(n: int, spread: str) -> str:
    """The first clipping pass on whole columns, as md_vclip.c's clip_pass
    does it for the run [0, n)."""
    if spread == "mad":
        centre = f"v{n // 2}" if n % 2 else f"(v{n // 2 - 1} + v{n // 2}) / 2.0"
        devs = "\n".join(f"        double e{i} = fabs(v{i} - c);" for i in range(n))
        pairs = "\n".join(f"        MD_CMPX(e{a}, e{b});" for a, b in median_pairs(n))
        mid = f"e{n // 2}" if n % 2 else f"(e{n // 2 - 1} + e{n // 2}) / 2.0"
        spread_code = f"""        const double c = {centre};
{devs}
{pairs}
        double s = MD_MAD_TO_SIGMA * ({mid});"""
    else:
        total = "\n".join(f"        sum += v{i};" for i in range(n))
        squares = "\n".join(f"        d = v{i} - c;\n        ss += d * d;" for i in range(n))
        spread_code = f"""        double sum = 0.0;
{total}
        const double c = sum / {n}.0;
        double ss = 0.0, d;
{squares}
        double s = sqrt(ss / {n - 1}.0);"""
    below = tree_sum([f"(v{i} < low ? 1.0 : 0.0)" for i in range(n)])
    above = tree_sum([f"(v{i} > high ? 1.0 : 0.0)" for i in range(n)])
    return f"""
MD_HOT static void md_kclip_{spread}_{n}(double *const *rows, size_t w, const md_clip_args *a)
{{
{row_pointers(n, writable=True)}
    const double k_low = a->low, k_high = a->high, floor_ = a->floor;
    double *restrict lo = a->lo, *restrict hi = a->hi, *restrict moving = a->moving;
#pragma GCC ivdep
    for (size_t x = 0; x < w; x++) {{
{loads(n)}
{network(batcher_pairs(n))}
{stores(n)}
{spread_code}
        s = s < floor_ ? floor_ : s;
        const double low = c - k_low * s, high = c + k_high * s;
        const double below = {below};
        const double above = {above};
        const double na = below, nb = {n}.0 - above > na ? {n}.0 - above : na;
        const int still = !(((na == 0.0) & (nb == {n}.0)) | (na == nb));
        lo[x] = still ? na : 0.0;
        hi[x] = still ? nb : {n}.0;
        moving[x] = still ? 1.0 : 0.0;
    }}
}}
"""


def main() -> None:
    print("/* Generated by tools/gen_kernels.py: do not edit; rerun the script. */")
    print('#include <math.h>\n\n#include "md_internal.h"')
    print("\n/* Compare-exchange: the min/max shapes the compiler maps to vector min/max. */")
    print(
        "#define MD_CMPX(a, b) do { const double lo_ = a < b ? a : b; "
        "b = b < a ? a : b; a = lo_; } while (0)"
    )
    for n in range(1, MAX_FRAMES + 1):
        print(kernel_median(n), end="")
        print(kernel_sort(n), end="")
        if n >= MIN_CLIP_FRAMES:
            print(kernel_clip(n, "mad"), end="")
            print(kernel_clip(n, "std"), end="")
    print("\nconst md_kernels md_kernel_table[MD_KERNEL_MAX_FRAMES + 1] = {")
    print("    {NULL, NULL, NULL, NULL},")
    for n in range(1, MAX_FRAMES + 1):
        clips = f"md_kclip_mad_{n}, md_kclip_std_{n}" if n >= MIN_CLIP_FRAMES else "NULL, NULL"
        print(f"    {{md_kmedian_{n}, md_ksort_{n}, {clips}}},")
    print("};")


if __name__ == "__main__":
    main()
