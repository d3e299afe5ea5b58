"""Generate src/md_kernels.c: register-resident column kernels for 1..MAX_FRAMES frames.

For each frame count N the generated C has loops over the columns of a
tile, with the N values of a column held in local variables (one vector
register per frame once the compiler vectorises the loop across columns):

* ``md_kmedian_N``: the median by the pruned Batcher network;
* ``md_ksort_N``: the full Batcher network, storing the sorted column back;
* ``md_kclip_mad_N`` and ``md_kclip_std_N`` (N >= 3): the full sort, stored
  back, then the first clipping pass of sigclip (centre median and spread MAD,
  or centre mean and spread std) on the whole column, and the column's mean
  and squared deviations;
* ``md_kpass_mad_N`` and ``md_kpass_std_N`` (N >= 3): a later pass of the
  same on sorted columns that each keep their own run of rows (md_vclip.c's
  queue).

They do exactly the arithmetic of the generic paths in md_combine.c (same
operations in the same order), so a pixel gets the same bits whichever path
computes it.  Run: ``python tools/gen_kernels.py > src/md_kernels.c``.
"""

import re

MAX_FRAMES = 24
MIN_CLIP_FRAMES = 3  # fewer frames take md_vclip.c's loops
INTERLEAVE_FRAMES = 12  # more would not fit two strips in the vector registers


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


def pruned(pairs: list[tuple[int, int]], needed: set[int]) -> list[tuple[int, int]]:
    """The comparators of a network that the positions ``needed`` depend on."""
    kept = []
    for a, b in reversed(pairs):
        if a in needed or b in needed:
            kept.append((a, b))
            needed = needed | {a, b}
    return kept[::-1]


def median_pairs(n: int) -> list[tuple[int, int]]:
    """The comparators the middle element(s) depend on."""
    return pruned(batcher_pairs(n), {(n - 1) // 2, n // 2})


def code(statements: list[str]) -> str:
    """Statements as the body of a kernel's loop over the columns."""
    return "\n".join(f"        {line}" for line in statements)


def loads(n: int, kind: str = "double") -> list[str]:
    return [f"{kind} v{i} = r{i}[x];" for i in range(n)]


def network(pairs, name: str = "v") -> list[str]:
    return [f"MD_CMPX({name}{a}, {name}{b});" for a, b in pairs]


def row_pointers(n: int, writable: bool = False) -> str:
    kind = "double" if writable else "const double"
    return "\n".join(f"    {kind} *restrict r{i} = rows[{i}];" for i in range(n))


def stores(n: int) -> list[str]:
    return [f"r{i}[x] = v{i};" for i in range(n)]


def kernel_median(n: int) -> str:
    mid = f"v{n // 2}" if n % 2 else f"(v{n // 2 - 1} + v{n // 2}) / 2.0"
    return f"""
MD_HOT static void md_kmedian_{n}(double *const *rows, size_t w, double *restrict value)
{{
{row_pointers(n)}
    for (size_t x = 0; x < w; x++) {{
{code(loads(n) + network(median_pairs(n)))}
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
{code(loads(n) + network(batcher_pairs(n)) + stores(n))}
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


class Temporaries:
    """Statements that name each step of an expression t0, t1, ... (a nested
    conditional expression would keep the compiler from vectorising)."""

    def __init__(self):
        self.lines: list[str] = []

    def let(self, expression: str) -> str:
        name = f"t{len(self.lines)}"
        self.lines.append(f"const double {name} = {expression};")
        return name

    def smallest(self, terms: list[str]) -> str:
        """The smallest of the terms, by a balanced tree."""
        while len(terms) > 1:
            pairs = zip(terms[::2], terms[1::2], strict=False)
            terms = [self.let(f"{a} < {b} ? {a} : {b}") for a, b in pairs] + (
                [terms[-1]] if len(terms) % 2 else []
            )
        return terms[0]

    def kth_of_two(self, k: int, h: int) -> str:
        """The k-th smallest (from 1) of two sorted lists dl1..dl{h} and
        dr1..dr{h}: the least, over the ways of taking i from the first and
        k - i from the second, of the largest taken."""
        terms = []
        for i in range(max(0, k - h), min(k, h) + 1):
            if i == 0:
                terms.append(f"dr{k}")
            elif i == k:
                terms.append(f"dl{k}")
            else:
                a, b = f"dl{i}", f"dr{k - i}"
                terms.append(self.let(f"{b} < {a} ? {a} : {b}"))
        return self.smallest(terms)


def mad_of_sorted(n: int) -> list[str]:
    """The centre (median) c and spread s = MD_MAD_TO_SIGMA * MAD of a sorted
    column v0..v{n-1}.  The deviations below the centre, c - v, and above it,
    v - c, are two sorted lists (each |v - c| to the bit), so the middle of
    all the deviations is a selection from two sorted lists, not a sort."""
    h = n // 2
    t = Temporaries()
    if n % 2:  # c = v{h}; its own deviation, 0, is the smallest of all
        body = [f"const double c = v{h};"]
        body += [f"const double dl{j} = c - v{h - j};" for j in range(1, h + 1)]
        body += [f"const double dr{j} = v{h + j} - c;" for j in range(1, h + 1)]
        mid = t.kth_of_two(h, h)
    else:
        body = [f"const double c = (v{h - 1} + v{h}) / 2.0;"]
        body += [f"const double dl{j} = c - v{h - j};" for j in range(1, h + 1)]
        body += [f"const double dr{j} = v{h - 1 + j} - c;" for j in range(1, h + 1)]
        mid = f"({t.kth_of_two(h, h)} + {t.kth_of_two(h + 1, h)}) / 2.0"
    return body + t.lines + [f"double s = MD_MAD_TO_SIGMA * ({mid});"]


def clip_body(n: int, spread: str) -> list[str]:
    """The statements of the first pass on one column (x), one per item:
    sort, store, centre and spread, limits, counts and the column's results."""
    body = loads(n) + network(batcher_pairs(n)) + stores(n)
    # The mean and squared deviations of all n values, in md_vclip.c's order.
    body += ["double sum = 0.0;"] + [f"sum += v{i};" for i in range(n)]
    body += [f"const double mean_ = sum / {n}.0;", "double ss = 0.0, d;"]
    body += [f"d = v{i} - mean_; ss += d * d;" for i in range(n)]
    if spread == "mad":
        body += mad_of_sorted(n)
    else:
        body += ["const double c = mean_;", f"double s = sqrt(ss / {n - 1}.0);"]
    # low <= c <= high (the limits are c -/+ a positive multiple of s >= 0, or
    # NaN, which nothing passes): about the median of the sorted column only
    # the values before the middle can be below low, and after it above high.
    below_rows, above_rows = range(n), range(n)
    if spread == "mad":
        below_rows, above_rows = range(n // 2), range((n + 1) // 2, n)
    below = tree_sum([f"(v{i} < low ? 1.0 : 0.0)" for i in below_rows])
    above = tree_sum([f"(v{i} > high ? 1.0 : 0.0)" for i in above_rows])
    body += LIMITS
    body += [f"const double below = {below};", f"const double above = {above};"]
    return body + new_run("0.0", f"{n}.0", "below")


LIMITS = [
    "s = s < floor_ ? floor_ : s;",
    "const double low = c - k_low * s, high = c + k_high * s;",
]


def new_run(start: str, end: str, na: str) -> list[str]:
    """After the counts below and above the limits: the column's run [start, end)
    becomes [na, nb) unless the pass rejected nothing or everything; the stores
    of the run, whether it moved, and the mean and squared deviations."""
    return [
        f"const double na = {na}, nb = {end} - above > na ? {end} - above : na;",
        f"const int still = !(((na == {start}) & (nb == {end})) | (na == nb));",
        f"lo[x] = still ? na : {start};",
        f"hi[x] = still ? nb : {end};",
        "moving[x] = still ? 1.0 : 0.0;",
        "mean[x] = mean_;",
        "sumsq[x] = ss;",
    ]


def strip(body: list[str], suffix: str, column: str) -> list[str]:
    """The statements for one strip of columns: locals renamed with ``suffix``,
    column ``x`` replaced by ``column``."""
    names = r"\b(v\d+|e\d+|dl\d+|dr\d+|t\d+|sum|mean_|ss|d|c|s|low|high|below|above|na|nb|still)\b"
    return [re.sub(r"\[x\]", f"[{column}]", re.sub(names, rf"\1{suffix}", line)) for line in body]


def kernel_clip(n: int, spread: str) -> str:
    """The first clipping pass on whole columns, as md_vclip.c's clip_pass
    does it for the run [0, n), and each column's mean and sum of squared
    deviations (mean_of_runs for the run [0, n)).  Up to INTERLEAVE_FRAMES
    frames the loop takes two strips of columns at once, statement by
    statement: each column is one long chain of dependent operations, and two
    independent chains keep the vector units busy."""
    body = clip_body(n, spread)
    single = code(strip(body, "", "x"))
    loops = f"""#pragma GCC ivdep
    for (size_t x = 0; x < w; x++) {{
{single}
    }}"""
    if n <= INTERLEAVE_FRAMES:
        pairs = zip(strip(body, "_a", "x"), strip(body, "_b", "x + h"), strict=True)
        both = "\n".join(f"        {a}\n        {b}" for a, b in pairs)
        loops = f"""    /* Columns [0, h) with [h, 2h), then the rest one at a time. */
    const size_t h = w / 2 / 8 * 8;
#pragma GCC ivdep
    for (size_t x = 0; x < h; x++) {{
{both}
    }}
#pragma GCC ivdep
    for (size_t x = 2 * h; x < w; x++) {{
{single}
    }}"""
    return f"""
MD_HOT static void md_kclip_{spread}_{n}(double *const *rows, size_t w, const md_clip_args *a)
{{
{row_pointers(n, writable=True)}
    const double k_low = a->low, k_high = a->high, floor_ = a->floor;
    double *restrict lo = a->lo, *restrict hi = a->hi, *restrict moving = a->moving;
    double *restrict mean = a->mean, *restrict sumsq = a->sumsq;
{loops}
}}
"""


def v_shaped_pairs(n: int, needed: set[int]) -> list[tuple[int, int]]:
    """Comparators that sort n values falling then rising (a V), as far as the
    positions ``needed``: Batcher's bitonic merge of the next power of two,
    the missing values taken as +inf (their comparators do nothing)."""
    p2 = 1
    while p2 < n:
        p2 <<= 1
    pairs = []
    half = p2 // 2
    while half >= 1:
        pairs += [
            (i, i + half)
            for start in range(0, p2, 2 * half)
            for i in range(start, start + half)
            if i + half < n
        ]
        half //= 2
    return pruned(pairs, needed)


def pick(values: str, index: str, count: int, into: str) -> list[str]:
    """``into`` = values[index] for an index that varies by column: a blend per position."""
    return [f"double {into} = 0.0;"] + [
        f"{into} = {i}.0 == {index} ? {values}{i} : {into};" for i in range(count)
    ]


def kernel_pass(n: int, spread: str) -> str:
    """A later clipping pass on sorted columns that each keep their own run
    [lo[x], hi[x]), as md_vclip.c's clip_pass, and the mean and sum of squared
    deviations of each column's run before the pass (mean_of_runs, for the
    columns that stop).  The columns are read, not changed."""
    body = ["const double from = lo[x], to = hi[x], m = to - from;"]
    body += loads(n, "const double")
    body += [f"const int in{i} = ({i}.0 >= from) & ({i}.0 < to);" for i in range(n)]
    body += ["double sum = 0.0;"] + [f"sum = in{i} ? sum + v{i} : sum;" for i in range(n)]
    body += ["const double mean_ = sum / m;", "double ss = 0.0, d;"]
    body += [f"d = v{i} - mean_; ss = in{i} ? ss + d * d : ss;" for i in range(n)]
    if spread == "mad":
        body += [
            "const double half = floor(m / 2.0), half_below = floor((m - 1.0) / 2.0);",
            "const int odd = m != 2.0 * half;",
            "const double iu = from + half, il = from + half_below;",
        ]
        body += pick("v", "iu", n, "upper") + pick("v", "il", n, "lower")
        body += ["const double c = odd ? upper : (lower + upper) / 2.0;"]
        body += [f"double e{i} = in{i} ? fabs(v{i} - c) : INFINITY;" for i in range(n)]
        # Down the sorted column the deviations fall to the centre and rise
        # after it, +inf outside the run: sorted as far as the middle of the
        # longest run by a bitonic merge.
        body += network(v_shaped_pairs(n, set(range(n // 2 + 1))), "e")
        body += pick("e", "half", n // 2 + 1, "su") + pick("e", "half_below", n // 2 + 1, "sl")
        body += ["double s = MD_MAD_TO_SIGMA * (odd ? su : (sl + su) / 2.0);"]
    else:
        body += ["const double c = mean_;", "double s = m >= 2.0 ? sqrt(ss / (m - 1.0)) : 0.0;"]
    # The run's values below low (above high): as low <= c <= high and c lies
    # in the run, either none, or they and every value before (after) the run.
    below = tree_sum([f"(v{i} < low ? 1.0 : 0.0)" for i in range(n)])
    above = tree_sum([f"(v{i} > high ? 1.0 : 0.0)" for i in range(n)])
    body += LIMITS
    body += [
        f"const double below_all = {below}, above_all = {above}, after = {n}.0 - to;",
        "const double below = below_all - from > 0.0 ? below_all - from : 0.0;",
        "const double above = above_all - after > 0.0 ? above_all - after : 0.0;",
    ]
    body += new_run("from", "to", "from + below")
    return f"""
MD_HOT static void md_kpass_{spread}_{n}(double *const *rows, size_t w, const md_clip_args *a)
{{
{row_pointers(n)}
    const double k_low = a->low, k_high = a->high, floor_ = a->floor;
    double *restrict lo = a->lo, *restrict hi = a->hi, *restrict moving = a->moving;
    double *restrict mean = a->mean, *restrict sumsq = a->sumsq;
#pragma GCC ivdep
    for (size_t x = 0; x < w; x++) {{
{code(body)}
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
            print(kernel_pass(n, "mad"), end="")
            print(kernel_pass(n, "std"), end="")
    print("\nconst md_kernels md_kernel_table[MD_KERNEL_MAX_FRAMES + 1] = {")
    print("    {NULL, NULL, NULL, NULL, NULL, NULL},")
    for n in range(1, MAX_FRAMES + 1):
        clips = (
            f"md_kclip_mad_{n}, md_kclip_std_{n}, md_kpass_mad_{n}, md_kpass_std_{n}"
            if n >= MIN_CLIP_FRAMES
            else "NULL, NULL, NULL, NULL"
        )
        print(f"    {{md_kmedian_{n}, md_ksort_{n}, {clips}}},")
    print("};")


if __name__ == "__main__":
    main()
