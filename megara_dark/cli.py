"""The operator's command line: ``megara-dark run | simulate | demo | inspect``.

Exit codes: 0 done (QC GOOD or PARTIAL), 2 usage or validation error, 3 I/O
error, 4 product written but QC BAD, 130 interrupted.  Errors are one line
naming the file and the problem (a traceback only with ``--verbose``).
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import time
from datetime import datetime
from pathlib import Path

from . import __version__
from .combine import METHODS, build_info
from .errors import InputFileError, MegaraDarkError, OutputError, ValidationError
from .report import jsonable

EXIT_OK, EXIT_USAGE, EXIT_IO, EXIT_QC_BAD, EXIT_INTERRUPTED = 0, 2, 3, 4, 130


def version_text() -> str:
    info = build_info()
    openmp = "on" if info["openmp"] else "off"
    return (
        f"megara-dark {__version__} (OpenMP {openmp}, {info['default_threads']} threads by default)"
    )


class _Parser(argparse.ArgumentParser):
    """argparse exits 2 on usage errors already; keep its message to one line."""

    def error(self, message):
        self.print_usage(sys.stderr)
        self.exit(EXIT_USAGE, f"megara-dark: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    formatter = argparse.RawDescriptionHelpFormatter
    parser = _Parser(
        prog="megara-dark",
        description="Master darks for MEGARA (GTC): validate, combine, QC, report.",
        epilog="example:\n  megara-dark demo\n  megara-dark run dark_*.fits --bias "
        "master_bias.fits --out reduced/",
        formatter_class=formatter,
    )
    parser.add_argument("--version", action="version", version=version_text())
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    run = sub.add_parser(
        "run",
        help="reduce a dark set into a master dark",
        description="Reduce raw (or trimmed) MEGARA dark frames and a master bias into a master "
        "dark FITS, a processing log, a JSON report and a quick-look PNG in --out.",
        epilog="examples:\n  megara-dark run dark_*.fits --bias master_bias.fits --out reduced/\n"
        "  megara-dark run --obresult ob.yaml --bias master_bias.fits --out reduced/ "
        "--method sigclip",
        formatter_class=formatter,
    )
    run.add_argument("frames", nargs="*", type=Path, help="dark frames (FITS)")
    run.add_argument("--obresult", type=Path, help="numina observation-result YAML instead")
    run.add_argument("--bias", type=Path, help="master bias FITS (or from the YAML)")
    run.add_argument("--out", type=Path, required=True, help="folder of the products")
    run.add_argument("--method", choices=METHODS, default="median", help="default: median")
    for name, kind, text in (
        ("low", float, "sigclip/ccdclip lower limit (sigma)"),
        ("high", float, "sigclip/ccdclip upper limit (sigma)"),
        ("maxiters", int, "clipping iterations"),
        ("sigma-floor", float, "sigclip: smallest spread (ADU)"),
        ("gain", float, "ccdclip: e-/ADU"),
        ("rdnoise", float, "ccdclip: e-"),
        ("nlow", int, "minmax: low values dropped"),
        ("nhigh", int, "minmax: high values dropped"),
        ("fclip", float, "quantileclip: fraction dropped at each end"),
    ):
        run.add_argument(f"--{name}", type=kind, help=text)
    run.add_argument("--centre", choices=("median", "mean"), help="sigclip/ccdclip centre")
    run.add_argument("--spread", choices=("mad", "std"), help="sigclip spread")
    run.add_argument(
        "--unit",
        choices=("counts", "rate"),
        default="counts",
        help="ADU per exposure (megaradrp) or ADU/s; default: counts",
    )
    run.add_argument("--threads", type=int, default=0, help="core threads (0: default)")
    run.add_argument("--overwrite", action="store_true", help="replace existing products")
    run.add_argument("--allow-single", action="store_true", help="accept a one-frame set")
    run.add_argument("--strict", action="store_true", help="CHECKSUM mismatches are errors")
    run.add_argument("--no-png", action="store_true", help="skip the quick-look PNG")
    _add_output_options(run)

    sim = sub.add_parser(
        "simulate",
        help="write a simulated raw dark set and master bias",
        description="Write a realistic raw MEGARA dark set (two amplifiers, overscan, dark "
        "current, hot pixels, cosmic rays) and a matching master bias into --out.",
        epilog="example:\n  megara-dark simulate --out sim/ --frames 5 --exptime 3600 --seed 1",
        formatter_class=formatter,
    )
    sim.add_argument("--out", type=Path, required=True)
    sim.add_argument("--frames", type=int, default=5)
    sim.add_argument("--exptime", type=float, default=3600.0, help="seconds")
    sim.add_argument("--seed", type=int, default=1)

    demo = sub.add_parser(
        "demo",
        help="simulate a small set and reduce it (no data needed)",
        description="Simulate a dark set into a new folder under the current directory, "
        "reduce it, and print where everything is.",
        epilog="example:\n  megara-dark demo",
        formatter_class=formatter,
    )
    demo.add_argument("--frames", type=int, default=5)
    demo.add_argument("--seed", type=int, default=1)
    _add_output_options(demo)

    inspect = sub.add_parser(
        "inspect",
        help="show a master dark's headers and QC, draw its quick-look PNG",
        description="Print the key headers and QC of a master dark and render its quick-look "
        "PNG (zscale image, histogram, per-frame medians).",
        epilog="example:\n  megara-dark inspect reduced/master_dark.fits",
        formatter_class=formatter,
    )
    inspect.add_argument("product", type=Path)
    inspect.add_argument("--png", type=Path, help="where to draw (default: beside the FITS)")
    _add_output_options(inspect)
    return parser


def _add_output_options(p: argparse.ArgumentParser) -> None:
    group = p.add_mutually_exclusive_group()
    group.add_argument("--quiet", action="store_true", help="print nothing but errors")
    group.add_argument("--verbose", action="store_true", help="more detail, tracebacks")
    p.add_argument("--json", action="store_true", help="print the report summary as JSON")


def _method_params(args) -> dict:
    names = ("low", "high", "maxiters", "sigma_floor", "gain", "rdnoise", "nlow", "nhigh")
    names += ("fclip", "centre", "spread")
    return {n: getattr(args, n) for n in names if getattr(args, n) is not None}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    previous = signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        return _dispatch(args)
    except KeyboardInterrupt:
        print("megara-dark: interrupted; no partial product was left", file=sys.stderr)
        return EXIT_INTERRUPTED
    except (ValidationError, ValueError, TypeError) as exc:
        return _fail(args, exc, EXIT_USAGE)
    except (InputFileError, OutputError, OSError) as exc:
        return _fail(args, exc, EXIT_IO)
    except MegaraDarkError as exc:
        return _fail(args, exc, EXIT_USAGE)
    finally:
        signal.signal(signal.SIGTERM, previous)


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt


def _fail(args, exc: Exception, code: int) -> int:
    if getattr(args, "verbose", False):
        import traceback

        traceback.print_exception(exc)
    print(f"megara-dark: error: {exc}", file=sys.stderr)
    return code


def _dispatch(args) -> int:
    if args.command == "run":
        return _run(args)
    if args.command == "simulate":
        return _simulate(args)
    if args.command == "demo":
        return _demo(args)
    return _inspect(args)


def _echo(args):
    """Where progress goes: nothing with --quiet, else plain lines on stderr."""
    if args.quiet:
        return None
    return lambda line: print(line, file=sys.stderr, flush=True)


def _reduce(args, frames, obresult, bias, outdir, method="median", params=None, **options) -> int:
    from .recipe import DarkRecipe, DarkRecipeInput

    recipe = DarkRecipe(method, params, outdir=outdir, echo=_echo(args), **options)
    result = recipe.run(DarkRecipeInput(obresult if obresult is not None else frames, bias))
    png = None
    if not getattr(args, "no_png", False):
        from .quicklook import draw_quicklook

        t0 = time.perf_counter()
        png = draw_quicklook(result.master_dark, overwrite=options.get("overwrite", False))
        if not args.quiet:
            print(f"quick-look PNG in {time.perf_counter() - t0:.2f} s", file=sys.stderr)
    summary = {
        "master_dark": str(result.master_dark),
        "log": str(result.log),
        "report": str(result.report),
        "png": None if png is None else str(png),
        "qc": result.qc.flag,
        "reasons": result.qc.reasons,
        "stats": result.qc.stats,
    }
    if args.json:
        print(json.dumps(jsonable(summary), indent=2))
    elif not args.quiet:
        for key in ("master_dark", "log", "report", "png"):
            if summary[key]:
                print(f"{key:12s} {summary[key]}")
        print(f"{'QC':12s} {result.qc.flag}" + "".join(f"\n  - {r}" for r in result.qc.reasons))
    return EXIT_QC_BAD if result.qc.flag == "BAD" else EXIT_OK


def _run(args) -> int:
    if not args.frames and args.obresult is None:
        raise ValidationError(["give dark frames or --obresult OB.yaml"])
    if args.frames and args.obresult is not None:
        raise ValidationError(["give either dark frames or --obresult, not both"])
    return _reduce(
        args,
        args.frames,
        args.obresult,
        args.bias,
        args.out,
        args.method,
        _method_params(args),
        unit=args.unit,
        nthreads=args.threads,
        overwrite=args.overwrite,
        allow_single=args.allow_single,
        strict=args.strict,
    )


def _simulate(args):
    from .simulate import simulate_dark_set

    sim = simulate_dark_set(args.out, nframes=args.frames, exptime=args.exptime, seed=args.seed)
    for path in [*sim.frames, sim.master_bias]:
        print(path)
    return EXIT_OK


def _demo(args) -> int:
    from .simulate import simulate_dark_set

    folder = Path.cwd() / f"megara-dark-demo-{datetime.now():%Y%m%d-%H%M%S}"
    if not args.quiet:
        print(f"simulating {args.frames} raw dark frames in {folder}", file=sys.stderr)
    sim = simulate_dark_set(folder / "raw", nframes=args.frames, seed=args.seed)
    args.no_png = False
    return _reduce(args, sim.frames, None, sim.master_bias, folder / "reduced")


def _inspect(args) -> int:
    from .quicklook import describe_product, draw_quicklook

    description = describe_product(args.product)
    png = draw_quicklook(args.product, png=args.png, overwrite=True)
    if args.json:
        print(json.dumps(jsonable({**description, "png": str(png)}), indent=2))
    elif not args.quiet:
        for key, value in description["headers"].items():
            print(f"{key:10s} {value}")
        print(f"{'png':10s} {png}")
    return EXIT_QC_BAD if description["headers"].get("QCFLAG") == "BAD" else EXIT_OK
