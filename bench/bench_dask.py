"""Time a 201-frame combination on a local Dask cluster against the direct call.

``python bench/bench_dask.py`` writes 201 raw MEGARA-like frames (uint16 stored
as BITPIX 16 with BZERO = 32768, 4112 x 4096: 35 MB each, 7 GB in all) to a
temporary folder, then times, from the list of paths to the planes in memory:

- ``direct``: ``megara_dark.combine.combine`` on the memory-mapped frames
  (headers read with ``io.inspect_fits``), ``--workers`` OpenMP threads;
- ``dask local:W``: ``megara_dark.dask.combine`` on a local cluster of W
  one-thread worker processes, each task memory-mapping its rows.

Both read the same files from the page cache (one untimed warm-up call each;
it also pays the variance calibration of the clipping methods), and the
results are checked to be bit-identical.  ``--quick`` uses 256 x 256 frames
(26 MB of disk) and one repeat: a smoke test.  ``--data-dir DIR`` keeps the
frames between runs.  Times are medians; the machine may be shared.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from astropy.io import fits

from megara_dark import dask as md_dask
from megara_dark.combine import combine
from megara_dark.io import inspect_fits, read_raw

FULL_SHAPE = (4112, 4096)
QUICK_SHAPE = (256, 256)
METHOD_KW = {"ccdclip": {"gain": 1.6, "rdnoise": 3.4}}


def write_frames(folder: Path, nframes: int, shape: tuple[int, int]) -> list[Path]:
    """Raw uint16 darks (level 1000 ADU, 5 ADU noise, a few hot columns); existing
    files of the right shape are reused."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / f"dark_{i:03d}.fits" for i in range(nframes)]
    rng = np.random.default_rng(201)
    hot = np.zeros(shape, np.float32)
    hot[:, rng.choice(shape[1], 8, replace=False)] = 50.0
    for i, path in enumerate(paths):
        if path.exists() and inspect_fits(path).shape == shape:
            continue
        values = rng.normal(1000.0, 5.0, shape).astype(np.float32) + hot
        fits.PrimaryHDU(np.rint(values).astype(np.uint16)).writeto(path, overwrite=True)
        if (i + 1) % 25 == 0 or i + 1 == nframes:
            print(f"wrote {i + 1}/{nframes} frames", file=sys.stderr, flush=True)
    return paths


def direct(paths, method, threads):
    images = [inspect_fits(p) for p in paths]
    return combine(
        [read_raw(im) for im in images],
        method,
        bzero=[im.bzero for im in images],
        nthreads=threads,
        **METHOD_KW.get(method, {}),
    )


def timed(call, repeats: int):
    """(result of the warm-up call, its time, median time of the repeats) in s."""
    t0 = time.perf_counter()
    result = call()
    first = time.perf_counter() - t0
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        call()
        times.append(time.perf_counter() - t0)
    return result, first, statistics.median(times)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="256 x 256 frames, one repeat")
    parser.add_argument("--frames", type=int, default=201)
    parser.add_argument("--shape", help="ROWSxCOLS (default 4112x4096; --quick 256x256)")
    parser.add_argument("--workers", type=int, default=2, help="local workers = direct threads")
    parser.add_argument("--methods", default="median,mean,sigclip")
    parser.add_argument("--rows-per-task", type=int, default=None)
    parser.add_argument("--repeats", type=int, default=None, help="default 3 (--quick 1)")
    parser.add_argument("--data-dir", type=Path, help="keep (and reuse) the frames here")
    args = parser.parse_args(argv)
    shape = QUICK_SHAPE if args.quick else FULL_SHAPE
    if args.shape:
        shape = tuple(int(v) for v in args.shape.lower().split("x"))
    repeats = args.repeats or (1 if args.quick else 3)

    with tempfile.TemporaryDirectory(prefix="megara_dark-bench-dask-") as tmp:
        folder = args.data_dir or Path(tmp)
        t0 = time.perf_counter()
        paths = write_frames(folder, args.frames, shape)
        disk = sum(p.stat().st_size for p in paths)
        setup = time.perf_counter() - t0
        t0 = time.perf_counter()
        client = md_dask.get_client(f"local:{args.workers}")
        start = time.perf_counter() - t0
        rows = [("method", "run", "1st call (s)", f"median of {repeats} (s)", "÷ direct")]
        with client:
            for method in args.methods.split(","):
                expected, first, best = timed(
                    lambda m=method: direct(paths, m, args.workers), repeats
                )
                rows.append((method, f"direct, {args.workers} threads", first, best, 1.0))
                base = best
                got, first, best = timed(
                    lambda m=method: md_dask.combine(
                        paths,
                        m,
                        client=client,
                        rows_per_task=args.rows_per_task,
                        **METHOD_KW.get(m, {}),
                    ),
                    repeats,
                )
                for name in md_dask.PLANES:
                    assert getattr(got, name).tobytes() == getattr(expected, name).tobytes(), name
                rows.append((method, f"dask local:{args.workers}", first, best, best / base))
                print(f"{method} done", file=sys.stderr)

    print(
        f"{args.frames} frames of {shape[0]} x {shape[1]} uint16 (BZERO 32768), "
        f"{disk / 1e9:.2f} GB on disk, written in {setup:.0f} s; local cluster started in "
        f"{start:.1f} s; {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}; "
        "dask results bit-identical to direct\n"
    )
    print("| " + " | ".join(rows[0]) + " |")
    print("|" + "---|" * len(rows[0]))
    for method, run, first, best, ratio in rows[1:]:
        print(f"| {method} | {run} | {first:.2f} | {best:.2f} | {ratio:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
