"""The sorting networks of the generated kernels (tools/gen_kernels.py, src/md_kernels.c).

A comparator network sorts every input when it sorts every input of zeros and ones
(the 0-1 principle, Knuth 5.3.4), so each network is run here on all 2^n such
inputs at once: one bit per input, a comparator being AND (the smaller value) and
OR (the larger).
"""

import importlib.util
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("gen_kernels", ROOT / "tools" / "gen_kernels.py")
gen_kernels = importlib.util.module_from_spec(spec)
spec.loader.exec_module(gen_kernels)


def all_inputs(n: int) -> list[np.ndarray]:
    """Wire i of every input x = 0 .. 2^n - 1 (bit i of x), 64 inputs per word."""
    words = np.arange(max(1, 2**n // 64), dtype=np.uint64)
    patterns = [0xAAAAAAAAAAAAAAAA, 0xCCCCCCCCCCCCCCCC, 0xF0F0F0F0F0F0F0F0,
                0xFF00FF00FF00FF00, 0xFFFF0000FFFF0000, 0xFFFFFFFF00000000]  # fmt: skip
    wires = []
    for i in range(n):
        if i < 6:
            wires.append(np.full(words.shape, patterns[i], np.uint64))
        else:
            wires.append(np.where((words >> np.uint64(i - 6)) & np.uint64(1), ~np.uint64(0), 0))
    if n < 6:  # only the first 2^n bits are inputs
        keep = np.uint64((1 << 2**n) - 1)
        wires = [w & keep for w in wires]
    return [w.astype(np.uint64) for w in wires]


def run(pairs, n: int) -> list[np.ndarray]:
    wires = all_inputs(n)
    for a, b in pairs:
        wires[a], wires[b] = wires[a] & wires[b], wires[a] | wires[b]
    return wires


@pytest.mark.parametrize("n", range(1, gen_kernels.MAX_FRAMES + 1))
def test_each_network_sorts_every_input(n):
    out = run(gen_kernels.sort_pairs(n), n)
    for k in range(n - 1):  # sorted: wire k's value <= wire k + 1's, for every input
        assert not np.any(out[k] & ~out[k + 1]), f"{n} inputs: wires {k}, {k + 1}"


@pytest.mark.parametrize("n", range(1, gen_kernels.MAX_FRAMES + 1))
def test_each_median_network_gives_the_middle(n):
    sorted_ = run(gen_kernels.sort_pairs(n), n)
    out = run(gen_kernels.median_pairs(n), n)
    for k in {(n - 1) // 2, n // 2}:
        assert np.array_equal(out[k], sorted_[k]), f"{n} inputs: middle wire {k}"


def test_the_smaller_networks_are_used():
    # 11 inputs: the smallest known network; 9 and 10: made from it by dropping wires.
    sizes = {n: (len(gen_kernels.sort_pairs(n)), len(gen_kernels.median_pairs(n)))
             for n in (9, 10, 11)}  # fmt: skip
    assert sizes == {9: (25, 21), 10: (30, 25), 11: (35, 28)}


def test_a_network_that_does_not_sort_fails():
    pairs = gen_kernels.sort_pairs(11)
    broken = pairs[:-1]
    out = run(broken, 11)
    assert any(np.any(out[k] & ~out[k + 1]) for k in range(10))


def test_the_generated_kernels_are_current():
    made = subprocess.run(
        [sys.executable, str(ROOT / "tools" / "gen_kernels.py")],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert made.stdout == (ROOT / "src" / "md_kernels.c").read_text()
