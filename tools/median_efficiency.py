"""Print n * Var(median of n standard normal values), n = 1..NMAX.

The median of n independent N(0, 1) values has variance E_n / n; this
script computes E_n by numerical integration of the order-statistic
densities (NumPy only) and prints the table used by
``megara_dark.variance``.  Run: ``python tools/median_efficiency.py``.
"""

import math

import numpy as np

NMAX = 100
x = np.linspace(-9.0, 9.0, 36001)
dx = x[1] - x[0]
phi = np.exp(-0.5 * x * x) / math.sqrt(2.0 * math.pi)
cdf = 0.5 * (1.0 + np.array([math.erf(v / math.sqrt(2.0)) for v in x]))
log_cdf = np.log(np.clip(cdf, 1e-300, None))
log_sf = np.log(np.clip(1.0 - cdf, 1e-300, None))


def cumulative_trapezoid(f: np.ndarray) -> np.ndarray:
    """Integral of f from x[0] to each x[j] (trapezoid rule)."""
    out = np.zeros_like(f)
    out[1:] = np.cumsum(0.5 * (f[1:] + f[:-1])) * dx
    return out


def odd(n: int) -> float:
    """n * Var of the middle order statistic, n = 2m + 1."""
    m = (n - 1) // 2
    log_c = math.lgamma(n + 1) - 2.0 * math.lgamma(m + 1)
    dens = np.exp(log_c + m * log_cdf + m * log_sf) * phi
    return n * float(np.sum(x * x * dens) * dx)


def even(n: int) -> float:
    """n * Var of the mean of the two middle order statistics, n = 2m."""
    m = n // 2
    log_c = math.lgamma(n + 1) - 2.0 * math.lgamma(m)
    a = np.exp((m - 1) * log_cdf) * phi  # density factor of the lower middle value
    b = np.exp((m - 1) * log_sf) * phi  # and of the upper one
    # E[(X + Y)^2] over X < Y: for each y, integrate x over (-inf, y).
    a0, a1, a2 = (cumulative_trapezoid(a * x**k) for k in range(3))
    inner = a2 + 2.0 * x * a1 + x * x * a0
    second = math.exp(log_c) * float(np.sum(b * inner) * dx)
    return n * second / 4.0


if __name__ == "__main__":
    values = [1.0] + [odd(n) if n % 2 else even(n) for n in range(2, NMAX + 1)]
    print("MEDIAN_EFFICIENCY = (")
    for i in range(0, NMAX, 5):
        print("    " + " ".join(f"{v:.6f}," for v in values[i : i + 5]))
    print(")")
