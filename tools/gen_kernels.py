"""Generate src/md_kernels.c: register-resident column kernels for 1..MAX_FRAMES frames.

For each frame count N the generated C has loops over the columns of a
tile, with the N values of a column held in local variables (one vector
register per frame once the compiler vectorises the loop across columns):

* ``md_kmedian_N``: the median by the pruned Batcher network (``_f32``: of
  float32 rows; ``_i16``: the middle values of int16 rows);
* ``md_ksort_N``: the full Batcher network, storing the sorted column back
  (``_f32`` and ``_i16``: of float32 or int16 rows, into a tile of doubles);
* ``md_kmoments_N``: the mean of each column's N values and the sum of their
  squared deviations from it (md_vclip.c's run_means and run_sumsq);
* ``md_kpass_mad_N`` and ``md_kpass_std_N`` (N >= 3): a clipping pass of
  sigclip (centre median and spread MAD, or centre mean and spread std) on
  columns of N sorted values (a sorted tile, or a bucket of md_vclip.c's
  queue, whose columns each hold a run of N values), read and not changed,
  and each column's mean and squared deviations.

They do exactly the arithmetic of the generic paths in md_combine.c (same
operations in the same order), so a pixel gets the same bits whichever path
computes it.  Run: ``python tools/gen_kernels.py > src/md_kernels.c``.
"""

import functools
import re

MAX_FRAMES = 24
MIN_CLIP_FRAMES = 3  # fewer frames take md_vclip.c's loops
# Up to these frames a kernel's loop takes two strips of columns at once; more
# would not fit two strips in the vector registers.  The MAD pass holds more
# values at once (measured, 11 frames: one strip 5 % faster for the MAD pass,
# 13 % slower for the std pass).
INTERLEAVE_FRAMES = 12
INTERLEAVE_FRAMES_MAD = 10


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


# The smallest known sorting network for 11 inputs: 35 comparators, against
# Batcher's 38 (Knuth, The Art of Computer Programming, vol. 3, 5.3.4).
SMALLEST_KNOWN = {
    11: [
        (0, 9), (1, 6), (2, 4), (3, 7), (5, 8),
        (0, 1), (3, 5), (4, 10), (6, 9), (7, 8),
        (1, 3), (2, 5), (4, 7), (8, 10),
        (0, 4), (1, 2), (3, 7), (5, 9), (6, 8),
        (0, 1), (2, 6), (4, 5), (7, 8), (9, 10),
        (2, 4), (3, 6), (5, 7), (8, 9),
        (1, 2), (3, 4), (5, 6), (7, 8),
        (2, 3), (4, 5), (6, 7),
    ],
}  # fmt: skip


def without_wire(pairs: list[tuple[int, int]], n: int, wire: int, top: bool):
    """A network for n - 1 inputs made from one for n.  Given +inf (top) or -inf on
    input ``wire``, the network sorts the other values, and the infinity moves along
    the wires to the last (first) output: the comparators it meets either leave it in
    place or swap it with a value, so they are dropped, and a swap hands the wire over
    to that value.  The wires left are named by their outputs; a comparator may then
    take its smaller value to the higher-numbered wire, which MD_CMPX(a, b) allows (it
    puts the smaller on a)."""
    line_at = {w: w for w in range(n) if w != wire}  # wire -> the value's line
    kept = []
    for a, b in pairs:
        if (wire == a and top) or (wire == b and not top):  # the infinity moves
            other = b if wire == a else a
            line_at[wire] = line_at.pop(other)
            wire = other
        elif wire not in (a, b):
            kept.append((line_at[a], line_at[b]))
    output = {line: w for w, line in line_at.items()}
    rank = {w: k for k, w in enumerate(sorted(output.values()))}
    return [(rank[output[a]], rank[output[b]]) for a, b in kept]


@functools.cache
def candidate_networks(n: int) -> list[list[tuple[int, int]]]:
    """Sorting networks for n inputs: Batcher's, the smallest known, and those made
    from the candidates for n + 1 by dropping a wire, from SMALLEST_KNOWN's down to 9
    inputs (up to 8, Batcher's are as small as any: Knuth, 5.3.4)."""
    found = [batcher_pairs(n)] + ([SMALLEST_KNOWN[n]] if n in SMALLEST_KNOWN else [])
    if 9 <= n < max(SMALLEST_KNOWN):
        for pairs in candidate_networks(n + 1):
            found += [without_wire(pairs, n + 1, w, top) for w in range(n + 1) for top in (1, 0)]
    return found


def sort_pairs(n: int) -> list[tuple[int, int]]:
    """The smallest of the candidate sorting networks for n inputs."""
    return min(candidate_networks(n), key=len)


def pruned(pairs: list[tuple[int, int]], needed: set[int]) -> list[tuple[int, int]]:
    """The comparators of a network that the positions ``needed`` depend on."""
    kept = []
    for a, b in reversed(pairs):
        if a in needed or b in needed:
            kept.append((a, b))
            needed = needed | {a, b}
    return kept[::-1]


def median_pairs(n: int) -> list[tuple[int, int]]:
    """The fewest comparators the middle element(s) depend on, over the candidate
    networks."""
    middle = {(n - 1) // 2, n // 2}
    return min((pruned(pairs, middle) for pairs in candidate_networks(n)), key=len)


def code(statements: list[str]) -> str:
    """Statements as the body of a kernel's loop over the columns."""
    return "\n".join(f"        {line}" for line in statements)


def loads(n: int, kind: str = "double") -> list[str]:
    return [f"{kind} v{i} = r{i}[x];" for i in range(n)]


def network(pairs, name: str = "v") -> list[str]:
    return [f"MD_CMPX({name}{a}, {name}{b});" for a, b in pairs]


def row_pointers(n: int, kind: str = "const double", name: str = "r", array: str = "rows") -> str:
    """Locals name0..name{n-1} pointing to the rows array[0..n-1], of type kind."""
    return "\n".join(f"    {kind} *restrict {name}{i} = {array}[{i}];" for i in range(n))


def int16_loops(n: int, tail: list[str], ivdep: bool = False) -> str:
    """The loops over the columns of int16 rows r0..r{n-1} read as they are:
    with their bytes swapped when `swapped`, or not.  Each loads a column into
    int16 locals v0..v{n-1}, then runs ``tail``."""
    swapped = [f"int16_t v{i} = (int16_t)__builtin_bswap16(r{i}[x]);" for i in range(n)]
    native = [f"int16_t v{i} = (int16_t)r{i}[x];" for i in range(n)]
    pragma = "\n#pragma GCC ivdep" if ivdep else ""
    return f"""    if (swapped){pragma}
        for (size_t x = 0; x < w; x++) {{
{code(swapped + tail)}
        }}
    else{pragma}
        for (size_t x = 0; x < w; x++) {{
{code(native + tail)}
        }}"""


def stores(n: int) -> list[str]:
    return [f"r{i}[x] = v{i};" for i in range(n)]


def kernel_median(n: int, kind: str = "double") -> str:
    """The median of each column: of a tile's rows, or (kind float) of float32
    rows read as they are, the network on floats (twice the lanes of a vector).
    The float kernel's middle values are converted to double, exactly, plus
    +0.0, as md_load_sum makes a tile's values from floats with a bzero of +0
    (-0.0 becomes +0.0), so both kernels give the same bits."""
    if kind == "float":
        lo, hi = f"((double)v{n // 2 - 1} + 0.0)", f"((double)v{n // 2} + 0.0)"
    else:
        lo, hi = f"v{n // 2 - 1}", f"v{n // 2}"
    mid = hi if n % 2 else f"({lo} + {hi}) / 2.0"
    suffix = "_f32" if kind == "float" else ""
    given = "const float" if kind == "float" else "double"
    return f"""
MD_HOT static void md_kmedian{suffix}_{n}({given} *const *rows, size_t w,
                                   double *restrict value)
{{
{row_pointers(n, f"const {kind}")}
    for (size_t x = 0; x < w; x++) {{
{code(loads(n, kind) + network(median_pairs(n)))}
        value[x] = {mid};
    }}
}}
"""


def kernel_median_i16(n: int) -> str:
    """The middle value(s) of each column of int16 rows read as they are (bytes
    swapped when `swapped`), as doubles: the network on int16 lanes (four times
    the lanes of doubles).  With a positive scale, the physical values a t + b
    keep the order of the raw t, so the caller makes the median of a tile's
    values from these (md_combine.c's tile_median)."""
    middles = [f"lower[x] = v{(n - 1) // 2};", f"upper[x] = v{n // 2};"]
    return f"""
MD_HOT static void md_kmedian_i16_{n}(const uint16_t *const *rows, size_t w, int swapped,
                                  double *restrict lower, double *restrict upper)
{{
{row_pointers(n, "const uint16_t")}
{int16_loops(n, network(median_pairs(n)) + middles)}
}}
"""


def kernel_sort(n: int) -> str:
    return f"""
MD_HOT static void md_ksort_{n}(double *const *rows, size_t w)
{{
{row_pointers(n, "double")}
    /* The rows are distinct, non-overlapping rows of one tile. */
#pragma GCC ivdep
    for (size_t x = 0; x < w; x++) {{
{code(loads(n) + network(sort_pairs(n)) + stores(n))}
    }}
}}
"""


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


def kernel_sort_narrow(n: int, kind: str) -> str:
    """The sorted columns of float32 (kind "f32") or int16 ("i16") rows read as
    they are, by the network on lanes of their type (two or four times the
    lanes of doubles), stored into a tile's rows as md_load_sum makes a tile's
    values from them: (double)v + 0.0 for floats of bscale 1 and bzero +0
    (-0.0 becomes +0.0), a * (double)t + b for int16 t with a > 0, values in
    the order of the t.  Same bits as md_load_sum then md_ksort_N.  The float
    kernel returns 0, with the tile unusable, when a sum of a column's floats
    is not finite (a NaN would not sort), else 1."""
    out = row_pointers(n, "double", "o", "out")
    if kind == "f32":
        total = " + ".join(f"v{i}" for i in range(n))
        body = [f"float v{i} = r{i}[x];" for i in range(n)]
        body += [f"const float total = {total};", "bad |= !(total - total == 0.0f);"]
        body += network(sort_pairs(n)) + [f"o{i}[x] = (double)v{i} + 0.0;" for i in range(n)]
        return f"""
MD_HOT static int md_ksort_f32_{n}(const float *const *rows, size_t w, double *const *out)
{{
{row_pointers(n, "const float")}
{out}
    int bad = 0;
    /* The frames' rows and the tile's do not overlap. */
#pragma GCC ivdep
    for (size_t x = 0; x < w; x++) {{
{code(body)}
    }}
    return !bad;
}}
"""
    tail = network(sort_pairs(n)) + [f"o{i}[x] = a * (double)v{i} + b;" for i in range(n)]
    return f"""
MD_HOT static void md_ksort_i16_{n}(const uint16_t *const *rows, size_t w, int swapped, double a,
                                  double b, double *const *out)
{{
{row_pointers(n, "const uint16_t")}
{out}
    /* The frames' rows and the tile's do not overlap. */
{int16_loops(n, tail, ivdep=True)}
}}
"""


def moments_body(n: int) -> list[str]:
    """The mean (mean_) of a column's n values v0..v{n-1} and the sum of their
    squared deviations from it (ss), in md_vclip.c's order."""
    body = ["double sum = 0.0;"] + [f"sum += v{i};" for i in range(n)]
    body += [f"const double mean_ = sum / {n}.0;", "double ss = 0.0, d;"]
    return body + [f"d = v{i} - mean_; ss += d * d;" for i in range(n)]


def pass_body(n: int, spread: str) -> list[str]:
    """The statements of a pass on one sorted column (x) of n values, one per
    item: centre and spread, limits, counts and the column's results."""
    body = loads(n, "const double") + moments_body(n)
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
    # The column is sorted: a value below low has only values below low before
    # it, so the count below is one more than the last such row (above high:
    # the first such row's distance from the end), as counting them would give.
    body += [
        "s = s < floor_ ? floor_ : s;",
        "const double low = c - k_low * s, high = c + k_high * s;",
        "double below = 0.0, above = 0.0;",
    ]
    body += [f"below = v{i} < low ? {i + 1}.0 : below;" for i in below_rows]
    body += [f"above = v{i} > high ? {n - i}.0 : above;" for i in reversed(above_rows)]
    body += [
        # The run [0, n) becomes [na, nb) unless the pass rejected nothing or
        # everything; the stores of the run, whether it moved, the moments.
        # `still` as clip_pass's test: L (n - L) > 0 for the new length L. GCC
        # 12 vectorises it for every n; !((na == 0 & nb == n) | na == nb), the
        # same truth, left the loops of n = 4 and 5, and n = 3's last, scalar.
        f"const double na = below, nb = {n}.0 - above > na ? {n}.0 - above : na;",
        f"const int still = (nb - na) * ({n}.0 - (nb - na)) > 0.0;",
        "lo[x] = still ? na : 0.0;",
        f"hi[x] = still ? nb : {n}.0;",
        "moving[x] = still ? 1.0 : 0.0;",
        "mean[x] = mean_;",
        "sumsq[x] = ss;",
    ]
    return body


def strip(body: list[str], suffix: str, column: str) -> list[str]:
    """The statements for one strip of columns: locals renamed with ``suffix``,
    column ``x`` replaced by ``column``."""
    names = r"\b(v\d+|dl\d+|dr\d+|t\d+|sum|mean_|ss|d|c|s|low|high|below|above|na|nb|still)\b"
    return [re.sub(r"\[x\]", f"[{column}]", re.sub(names, rf"\1{suffix}", line)) for line in body]


def column_loops(n: int, body: list[str], interleave: int = INTERLEAVE_FRAMES) -> str:
    """The loops of a kernel over the columns, running ``body`` on each column of
    n values.  Each column is one long chain of dependent operations: up to
    ``interleave`` frames the loop takes two strips of columns at once,
    statement by statement, and two independent chains keep the vector units
    busy."""
    single = code(strip(body, "", "x"))
    if n > interleave:
        return f"""#pragma GCC ivdep
    for (size_t x = 0; x < w; x++) {{
{single}
    }}"""
    pairs = zip(strip(body, "_a", "x"), strip(body, "_b", "x + h"), strict=True)
    both = "\n".join(f"        {a}\n        {b}" for a, b in pairs)
    return f"""    /* Columns [0, h) with [h, 2h), then the rest one at a time. */
    const size_t h = w / 2 / 8 * 8;
#pragma GCC ivdep
    for (size_t x = 0; x < h; x++) {{
{both}
    }}
#pragma GCC ivdep
    for (size_t x = 2 * h; x < w; x++) {{
{single}
    }}"""


def kernel_moments(n: int) -> str:
    """Each column's mean and sum of squared deviations (md_vclip.c's run_means
    and run_sumsq for n rows)."""
    body = loads(n, "const double") + moments_body(n) + ["mean[x] = mean_;", "sumsq[x] = ss;"]
    return f"""
MD_HOT static void md_kmoments_{n}(const double *const *rows, size_t w, double *restrict mean,
                                 double *restrict sumsq)
{{
{row_pointers(n)}
{column_loops(n, body)}
}}
"""


def kernel_pass(n: int, spread: str) -> str:
    """A clipping pass on sorted columns, as md_vclip.c's clip_pass does it
    for the run [0, n), and each column's mean and sum of squared deviations
    (mean_of_runs for the run [0, n))."""
    interleave = INTERLEAVE_FRAMES_MAD if spread == "mad" else INTERLEAVE_FRAMES
    return f"""
MD_HOT static void md_kpass_{spread}_{n}(const double *const *rows, size_t w,
                                    const md_clip_args *a)
{{
{row_pointers(n)}
    const double k_low = a->low, k_high = a->high, floor_ = a->floor;
    double *restrict lo = a->lo, *restrict hi = a->hi, *restrict moving = a->moving;
    double *restrict mean = a->mean, *restrict sumsq = a->sumsq;
{column_loops(n, pass_body(n, spread), interleave)}
}}
"""


def main() -> None:
    print("/* Generated by tools/gen_kernels.py: do not edit; rerun the script. */")
    print('#include <math.h>\n\n#include "md_internal.h"')
    print("\n/* Compare-exchange: the min/max shapes the compiler maps to vector min/max. */")
    print(
        "#define MD_CMPX(a, b) do { const __typeof__(a) lo_ = a < b ? a : b; "
        "b = b < a ? a : b; a = lo_; } while (0)"
    )
    for n in range(1, MAX_FRAMES + 1):
        print(kernel_median(n), end="")
        print(kernel_median(n, "float"), end="")
        print(kernel_median_i16(n), end="")
        print(kernel_sort(n), end="")
        print(kernel_sort_narrow(n, "f32"), end="")
        print(kernel_sort_narrow(n, "i16"), end="")
        print(kernel_moments(n), end="")
        if n >= MIN_CLIP_FRAMES:
            print(kernel_pass(n, "mad"), end="")
            print(kernel_pass(n, "std"), end="")
    print("\nconst md_kernels md_kernel_table[MD_KERNEL_MAX_FRAMES + 1] = {")
    print("    {NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL},")
    for n in range(1, MAX_FRAMES + 1):
        clips = f"md_kpass_mad_{n}, md_kpass_std_{n}" if n >= MIN_CLIP_FRAMES else "NULL, NULL"
        medians = f"md_kmedian_{n}, md_kmedian_f32_{n}, md_kmedian_i16_{n}"
        sorts = f"md_ksort_{n}, md_ksort_f32_{n}, md_ksort_i16_{n}"
        kernels = f"{medians}, {sorts}, md_kmoments_{n}, {clips}"
        print(f"    {{{kernels}}},")
    print("};")


if __name__ == "__main__":
    main()
