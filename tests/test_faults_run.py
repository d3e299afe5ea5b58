"""FAULTS.md cases 24-26, the run: interrupts, too little memory, determinism; one test
each, named for the case, through the Python API and the installed ``megara-dark``
command (full-size frames).

Faults land at exact moments in child processes (``fault_inject``): a signal the
process sends itself when it reaches a stage, an address-space limit set when the
combination starts.  One interrupt is also sent from outside, in real time, while the
C core runs.  Every run is guarded (``fault_kit.guarded``): inputs byte-identical,
products of an earlier run intact, nothing else left but the failure report of a run
that failed after validation.
"""

from __future__ import annotations

import functools
import random
import re
import signal
import subprocess
import time

import numpy as np
import pytest
from astropy.io import fits
from conftest import run_recipe
from fault_kit import (
    COMMAND,
    ENV,
    TIMEOUT,
    api_child,
    assert_error,
    child_env,
    cli,
    cli_refuses,
    guarded,
)

from megara_dark import recipe as recipe_module
from megara_dark.combine import combine
from megara_dark.detector import make_geometry
from megara_dark.simulate import simulate_dark_set

SMALL = (32, 64, 8, 10)  # make_geometry arguments of conftest's RECIPE_GEOMETRY
INTERRUPTED = "interrupted; no partial product was left"
INTERRUPT_REPORT = r"^interrupted \(SIGINT or SIGTERM\); no product was written$"
# Where an interrupt lands, and whether validation was over (a failure report is due).
STAGES = {
    "reading headers": ("validate headers: start", False),
    "reading pixels": ("overscan and frame statistics: start", True),
    "combining": ("combine rows", True),
    "writing": ("fsync 1", True),
}


@pytest.mark.parametrize("stage", STAGES)
def test_fault_24_interrupt_through_the_api(dark_set, tmp_path, stage):
    """Ctrl-C (SIGINT: KeyboardInterrupt) while reading the headers, reading the pixels,
    combining (in the core, between row chunks) or writing (the FITS written to its
    temp file, not yet renamed): nothing partial is left, older products are intact."""
    where, validated = STAGES[stage]
    out = tmp_path / "out"
    report = INTERRUPT_REPORT if validated else None
    with guarded([*dark_set.frames, dark_set.master_bias], out, failure_report=report):
        got = api_child(
            dark_set.frames,
            dark_set.master_bias,
            out,
            SMALL,
            cwd=tmp_path,
            fault={"signal": "SIGINT", "at": where},
        )
    assert got == {"error": "KeyboardInterrupt", "message": ""}


@pytest.mark.parametrize("signum", ["SIGINT", "SIGTERM"])
@pytest.mark.parametrize("stage", STAGES)
def test_fault_24_interrupt_through_the_command(megara_set, tmp_path, stage, signum):
    """Exit 130 and one error line, wherever SIGINT or SIGTERM lands."""
    where, validated = STAGES[stage]
    out = tmp_path / "out"
    cli_refuses(
        ["run", *megara_set.frames, "--bias", megara_set.master_bias, "--out", out, "--overwrite"],
        cwd=tmp_path,
        inputs=[*megara_set.frames, megara_set.master_bias],
        out=out,
        code=130,
        message=re.escape(INTERRUPTED),
        failure_report=INTERRUPT_REPORT if validated else None,
        env=child_env(tmp_path, {"signal": signum, "at": where}),
    )


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_fault_24_interrupt_from_outside_while_the_core_runs(megara_set, tmp_path, signum):
    """A real signal, sent once a quarter of the rows are combined: the core stops at its
    next check (every ~50 ms) and the command exits 130 within 2 s (1 s in practice)."""
    out = tmp_path / "out"
    args = [
        *COMMAND,
        "run",
        *map(str, megara_set.frames),
        "--bias",
        str(megara_set.master_bias),
        "--out",
        str(out),
        "--overwrite",
    ]
    with guarded(
        [*megara_set.frames, megara_set.master_bias], out, failure_report=INTERRUPT_REPORT
    ):
        with subprocess.Popen(
            args, cwd=tmp_path, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        ) as proc:
            lines, sent = [], None
            for line in proc.stderr:  # plain progress lines, as they come
                lines.append(line)
                if re.match(r"combine: \d+/\d+ rows$", line):
                    proc.send_signal(signum)
                    sent = time.perf_counter()
                    break
            stdout, rest = proc.communicate(timeout=TIMEOUT)
            waited = time.perf_counter() - (sent or 0.0)
    done = subprocess.CompletedProcess(args, proc.returncode, stdout, "".join(lines) + rest)
    assert sent is not None, done.stderr
    assert_error(done, 130, re.escape(INTERRUPTED))
    assert waited < 2.0, waited
    rows = [int(n) for n in re.findall(r"^combine: (\d+)/\d+ rows$", done.stderr, re.M)]
    assert rows and max(rows) < 4112  # it stopped before the end


# ---- 25: too little memory -------------------------------------------------------------------

BIG = (1024, 2048, 50, 100)  # make_geometry arguments: trimmed 2048 x 2048, planes of 48 MiB


@pytest.fixture(scope="module")
def big_set(tmp_path_factory):
    folder = tmp_path_factory.mktemp("big") / "raw"
    return simulate_dark_set(folder, nframes=3, seed=25, geometry=make_geometry(*BIG), threads=2)


def test_fault_25_too_little_memory(big_set, megara_set, tmp_path):
    """An address-space limit set when the combination starts: with 16 MB to spare the
    planes (10 bytes a pixel for the median, which rejects nothing) cannot be allocated
    and the error names the bytes needed; with 80 MB the run completes (one thread: no
    thread stacks to find room for)."""
    inputs = [*big_set.frames, big_set.master_bias]
    needed = "not enough memory for the planes of the master dark: {} x {} pixels need {} bytes"
    message = needed.format(2048, 2048, 2048 * 2048 * 10)
    out = tmp_path / "api"
    with guarded(inputs, out, failure_report=f"^{re.escape(message)}$"):
        got = api_child(
            big_set.frames,
            big_set.master_bias,
            out,
            BIG,
            cwd=tmp_path,
            fault={"as_headroom": 16 << 20},
        )
    assert got == {"error": "MegaraDarkError", "message": message}
    got = api_child(
        big_set.frames,
        big_set.master_bias,
        tmp_path / "enough",
        BIG,
        cwd=tmp_path,
        fault={"as_headroom": 80 << 20},
        nthreads=1,
    )
    assert got == {"error": None}
    assert np.all(fits.getdata(tmp_path / "enough" / "master_dark.fits", "MAP") == 3)

    out = tmp_path / "cli"
    message = needed.format(4112, 4096, 4112 * 4096 * 10)
    cli_refuses(
        ["run", *megara_set.frames, "--bias", megara_set.master_bias, "--out", out, "--overwrite"],
        cwd=tmp_path,
        inputs=[*megara_set.frames, megara_set.master_bias],
        out=out,
        code=2,
        message=re.escape(message),
        failure_report=f"^{re.escape(message)}$",
        env=child_env(tmp_path, {"as_headroom": 100 << 20}),
    )


# ---- 26: determinism -----------------------------------------------------------------------------


def product(path) -> tuple[dict, list[fits.Header]]:
    """The planes' bytes by HDU name, and the headers."""
    with fits.open(path) as hdul:
        return {h.name: h.data.tobytes() for h in hdul}, [h.header.copy() for h in hdul]


def assert_same_product(a, b, threads_differ=False) -> None:
    """Bit-identical planes; headers equal but for the product's UUID and the checksum
    that covers it (and the threads requested, when they differ)."""
    (planes_a, headers_a), (planes_b, headers_b) = product(a), product(b)
    assert planes_a == planes_b
    differing = {"UUID", "CHECKSUM", *(["MD THREADS"] if threads_differ else [])}
    for ha, hb in zip(headers_a, headers_b, strict=True):
        assert list(ha) == list(hb)
        assert {k for k in ha if ha[k] != hb[k]} <= differing
    assert headers_a[0]["UUID"] != headers_b[0]["UUID"]


def test_fault_26_determinism(dark_set, megara_set, tmp_path, monkeypatch):
    """The same bits for any thread count, row-block size, input order and rerun: the API
    (small frames, sigclip: rejection depends on every value) and the command."""
    frames, bias = list(dark_set.frames), dark_set.master_bias
    shuffled = frames[:]
    random.Random(26).shuffle(shuffled)
    first = run_recipe(frames, bias, tmp_path / "first", method="sigclip", nthreads=1)
    runs = {
        "2 threads": dict(nthreads=2),
        "default threads": dict(nthreads=0),
        "reversed": dict(frames=frames[::-1], nthreads=1),
        "shuffled": dict(frames=shuffled, nthreads=2),
        "rerun": dict(nthreads=1),
    }
    for name, options in runs.items():
        result = run_recipe(
            options.pop("frames", frames), bias, tmp_path / name, method="sigclip", **options
        )
        assert_same_product(first.master_dark, result.master_dark, options.get("nthreads") != 1)
    for rows in (1, 7, 64):  # the recipe takes the core's default; force others
        monkeypatch.setattr(recipe_module, "combine", functools.partial(combine, block_rows=rows))
        result = run_recipe(frames, bias, tmp_path / f"block {rows}", method="sigclip", nthreads=2)
        assert_same_product(first.master_dark, result.master_dark, threads_differ=True)

    outs = [tmp_path / "cli-1", tmp_path / "cli-2"]
    for out, threads, order in ((outs[0], 1, 1), (outs[1], 2, -1)):
        done = cli(
            "run",
            *megara_set.frames[::order],
            "--bias",
            megara_set.master_bias,
            "--out",
            out,
            "--threads",
            threads,
            "--no-png",
            "--quiet",
            cwd=tmp_path,
        )
        assert (done.returncode, done.stderr) == (0, "")
    assert_same_product(outs[0] / "master_dark.fits", outs[1] / "master_dark.fits", True)
