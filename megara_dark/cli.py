"""The operator's command line: ``megara-dark run | run-many | simulate | demo | inspect``.

Results go to stdout (with ``--json``: one JSON document and nothing else);
progress, warnings and errors go to stderr: a rich display when stdout and
stderr are terminals, plain lines otherwise, only errors with ``--quiet``.

Exit codes: 0 done (QC GOOD or PARTIAL), 2 usage or validation error, 3 I/O
error, 4 product written but QC BAD, 130 interrupted (SIGINT or SIGTERM;
nothing partial is left), 1 an unexpected internal error (a bug).  Errors are
one line naming the file and the problem (a traceback only with ``--verbose``).
``run-many`` exits 3 when any observation result failed, 4 when all were
reduced but some QC is BAD.  ``--scheduler`` (and ``run-many``) use Dask, an
optional extra: without it they exit 2 saying how to install it.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import re
import shutil
import signal
import sys
import tempfile
import time
import warnings
from contextlib import contextmanager
from dataclasses import asdict
from datetime import datetime
from pathlib import Path

# NumPy, astropy and the modules that import them are imported where they are
# used, after main() has started hashing the files named (see megara_dark.digest).
from . import __version__, digest
from .errors import InputFileError, MegaraDarkError, OutputError, ValidationError

EXIT_OK, EXIT_BUG, EXIT_USAGE, EXIT_IO, EXIT_QC_BAD, EXIT_INTERRUPTED = 0, 1, 2, 3, 4, 130

# Options of the combination methods: the methods each applies to, and argparse keywords.
CLIP = ("sigclip", "ccdclip")
METHOD_OPTIONS = {
    "low": (CLIP, {"type": float, "help": "lower clipping limit in sigma (default 3)"}),
    "high": (CLIP, {"type": float, "help": "upper clipping limit in sigma (default 3)"}),
    "centre": (CLIP, {"choices": ("median", "mean"), "help": "centre (default median)"}),
    "spread": (("sigclip",), {"choices": ("mad", "std"), "help": "spread (default mad)"}),
    "maxiters": (CLIP, {"type": int, "help": "clipping iterations (default 10)"}),
    "sigma-floor": (CLIP, {"type": float, "help": "smallest spread, ADU (default 1 ADU step)"}),
    "gain": (("ccdclip",), {"type": float, "help": "e-/ADU (required by ccdclip)"}),
    "rdnoise": (("ccdclip",), {"type": float, "help": "read noise, e- (required by ccdclip)"}),
    "nlow": (("minmax",), {"type": int, "help": "lowest values dropped (default 1)"}),
    "nhigh": (("minmax",), {"type": int, "help": "highest values dropped (default 1)"}),
    "fclip": (("quantileclip",), {"type": float, "help": "fraction dropped at each end (0.1)"}),
}
DEMO_FRAMES = 5
SCHEDULERS = "tcp://HOST:PORT, or local[:N] to start N local worker processes (one per CPU)"


def version_text() -> str:
    from .combine import build_info

    info = build_info()
    openmp = "on" if info["openmp"] else "off"
    return (
        f"megara-dark {__version__} (OpenMP {openmp}, {info['default_threads']} threads by default)"
    )


# ---- arguments ------------------------------------------------------------------


class _Formatter(argparse.HelpFormatter):
    """Wraps one-paragraph texts (descriptions); keeps texts with line breaks (examples)."""

    def _fill_text(self, text, width, indent):
        if "\n" in text:
            return "".join(indent + line for line in text.splitlines(keepends=True))
        return super()._fill_text(text, width, indent)


class _Parser(argparse.ArgumentParser):
    """Usage errors: the usage line and one error line, exit 2."""

    def error(self, message):
        self.print_usage(sys.stderr)
        self.exit(EXIT_USAGE, f"megara-dark: error: {message}\n")


def _number(kind, minimum, strict=False):
    """An argparse type: a ``kind`` number >= minimum (> minimum when strict)."""

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
        if not (value > minimum if strict else value >= minimum):
            raise argparse.ArgumentTypeError(f"must be {'>' if strict else '>='} {minimum}")
        return value

    return parse


def build_parser() -> argparse.ArgumentParser:
    from .dask import INSTALL_HINT

    formatter = _Formatter
    parser = _Parser(
        prog="megara-dark",
        description="Master darks for MEGARA (GTC): validate, combine, QC, report.",
        epilog="exit codes:\n  0 done (QC GOOD or PARTIAL), 2 usage or validation error, "
        "3 I/O error,\n  4 product written but QC BAD, 130 interrupted (Ctrl-C, SIGTERM)\n\n"
        "examples:\n  megara-dark demo\n"
        "  megara-dark run dark_*.fits --bias master_bias.fits --out reduced/\n"
        "  megara-dark run-many OB1.yaml OB2.yaml --out reduced/ --scheduler local:4\n"
        "  megara-dark SUBCOMMAND --help",
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
        "  megara-dark run --obresult ob.yaml --out reduced/ --method sigclip --low 4 --json",
        formatter_class=formatter,
    )
    run.add_argument("frames", nargs="*", type=Path, help="dark frames (FITS)")
    run.add_argument("--obresult", type=Path, help="numina observation-result YAML instead")
    run.add_argument("--bias", type=Path, help="master bias FITS (default: the YAML's)")
    run.add_argument("--out", type=Path, required=True, help="folder of the products")
    _add_recipe_options(run)
    run.add_argument("--no-png", action="store_true", help="skip the quick-look PNG")
    run.add_argument(
        "--scheduler",
        help=f"combine on a Dask cluster: {SCHEDULERS} (needs {INSTALL_HINT})",
    )
    _add_output_options(run, "the report summary")

    many = sub.add_parser(
        "run-many",
        help="reduce many observation results in parallel on a Dask cluster",
        description="Reduce numina observation results (YAML files) in parallel on a Dask "
        "cluster, each into its own folder OUT/NAME (NAME: the YAML file's name without "
        "its suffix) with its master dark, processing log and JSON report.  A failure does "
        "not stop the others; a summary table ends the run.  Frames and master biases must "
        f"be readable at the same paths on every worker.  Needs {INSTALL_HINT}.",
        epilog="examples:\n"
        "  megara-dark run-many OB1.yaml OB2.yaml --out reduced/ --scheduler local:4\n"
        "  megara-dark run-many ob*.yaml --out reduced/ --scheduler tcp://HOST:8786 --json\n\n"
        "exit codes:\n  0 all reduced with QC GOOD or PARTIAL, 3 any observation result "
        "failed,\n  4 all reduced but some QC BAD, 2 usage error, 130 interrupted",
        formatter_class=formatter,
    )
    many.add_argument("obresults", nargs="+", type=Path, help="observation-result YAML files")
    many.add_argument("--bias", type=Path, help="master bias FITS for all (default: each YAML's)")
    many.add_argument("--out", type=Path, required=True, help="parent folder of the products")
    _add_recipe_options(many)
    many.add_argument(
        "--scheduler", default="local", help=f"{SCHEDULERS}; default: local (needs {INSTALL_HINT})"
    )
    _add_output_options(many, "the summary")

    sim = sub.add_parser(
        "simulate",
        help="write a simulated raw dark set and master bias",
        description="Write a realistic raw MEGARA dark set (two amplifiers, overscan, dark "
        "current, hot pixels, cosmic rays) and a matching master bias into --out.  Existing "
        "files are never overwritten.",
        epilog="example:\n  megara-dark simulate --out sim/ --frames 5 --exptime 3600 --seed 1",
        formatter_class=formatter,
    )
    sim.add_argument("--out", type=Path, required=True, help="folder of the files")
    sim.add_argument("--frames", type=_number(int, 1), default=5, help="default: 5")
    sim.add_argument(
        "--exptime", type=_number(float, 0, strict=True), default=3600.0, help="s; default: 3600"
    )
    sim.add_argument("--seed", type=int, help="random seed (default: a new one)")
    _add_output_options(sim, "the file names")

    demo = sub.add_parser(
        "demo",
        help="simulate a small set and reduce it (no data needed)",
        description=f"Simulate {DEMO_FRAMES} raw MEGARA dark frames and a master bias into a "
        "new folder under the current directory, reduce them, and print where everything is.",
        epilog="example:\n  megara-dark demo",
        formatter_class=formatter,
    )
    demo.add_argument(
        "--frames", type=_number(int, 1), default=DEMO_FRAMES, help=f"default: {DEMO_FRAMES}"
    )
    demo.add_argument("--seed", type=int, default=1, help="default: 1")
    _add_output_options(demo, "the report summary")

    inspect = sub.add_parser(
        "inspect",
        help="show a master dark's headers and QC, draw its quick-look PNG",
        description="Print the key headers and QC of a master dark and render its quick-look "
        "PNG (zscale image, histogram, per-frame medians from the report beside it).",
        epilog="example:\n  megara-dark inspect reduced/master_dark.fits",
        formatter_class=formatter,
    )
    inspect.add_argument("product", type=Path, help="master dark FITS")
    inspect.add_argument("--png", type=Path, help="where to draw (default: beside the FITS)")
    _add_output_options(inspect, "the headers and QC")
    for subparser in (run, many, sim, demo, inspect):  # for usage errors found after parsing
        subparser.set_defaults(parser=subparser)
    return parser


def _add_recipe_options(p: argparse.ArgumentParser) -> None:
    """The recipe's options (method and its parameters, unit, threads...): see _recipe_options."""
    from .combine import METHODS

    p.add_argument("--method", choices=METHODS, default="median", help="default: median")
    clipping = p.add_argument_group("method parameters (each for the methods named)")
    for name, (methods, keywords) in METHOD_OPTIONS.items():
        help_text = f"{'/'.join(methods)}: {keywords['help']}"
        clipping.add_argument(f"--{name}", **{**keywords, "help": help_text})
    p.add_argument(
        "--unit",
        choices=("counts", "rate"),
        default="counts",
        help="ADU per exposure (as megaradrp) or ADU/s; default: counts",
    )
    p.add_argument(
        "--threads",
        type=_number(int, 0),
        default=0,
        help="core threads (default 0: OpenMP's default)",
    )
    p.add_argument("--overwrite", action="store_true", help="replace existing products")
    p.add_argument("--allow-single", action="store_true", help="accept a one-frame set")
    p.add_argument("--strict", action="store_true", help="CHECKSUM mismatches are errors")


def _add_output_options(p: argparse.ArgumentParser, what: str) -> None:
    group = p.add_mutually_exclusive_group()
    group.add_argument("--quiet", action="store_true", help="print nothing but errors")
    group.add_argument("--verbose", action="store_true", help="every log line; tracebacks")
    p.add_argument("--json", action="store_true", help=f"print {what} as JSON on stdout")


def _recipe_options(args) -> dict:
    """DarkRecipe's keyword arguments from the options of _add_recipe_options."""
    return {
        "method": args.method,
        "method_params": _method_params(args),
        "unit": args.unit,
        "nthreads": args.threads,
        "overwrite": args.overwrite,
        "allow_single": args.allow_single,
        "strict": args.strict,
    }


def _method_params(args) -> dict:
    """The method parameters given, refusing those of another method (exit 2)."""
    params = {}
    for name, (methods, _) in METHOD_OPTIONS.items():
        value = getattr(args, name.replace("-", "_"))
        if value is None:
            continue
        if args.method not in methods:
            args.parser.error(f"--{name} applies to {' and '.join(methods)}, not {args.method}")
        params[name.replace("-", "_")] = value
    return params


# ---- progress display -----------------------------------------------------------


class Display:
    """Progress and messages on stderr.

    mode ``rich``: a line per step (spinner, bar, rows, time); ``plain``: the
    recipe's log lines and a line per quarter of the combination; ``quiet``:
    nothing.  ``echo(line)`` receives the recipe's log lines,
    ``progress(stage, done, total)`` its row-block progress.
    """

    LOG_LINE = re.compile(r"^\s*[\d.]+ s\s+(?P<level>[A-Z]+)\s+(?P<message>.*)$")
    STEP_END = re.compile(r"^(?P<name>.*): [\d.]+ s$")

    def __init__(self, mode: str, verbose: bool = False):
        self.mode = mode
        self.verbose = verbose
        self._rich = None  # rich.progress.Progress while running
        self._task = None  # (task id, step name) of the current step
        self._reported = None  # plain mode: (stage, quarter) last printed

    @classmethod
    def for_args(cls, args) -> Display:
        if args.quiet:
            return cls("quiet")
        terminal = sys.stdout.isatty() and sys.stderr.isatty()
        return cls("rich" if terminal else "plain", args.verbose)

    def __enter__(self) -> Display:
        if self.mode == "rich":
            from rich.console import Console
            from rich.progress import (
                BarColumn,
                Progress,
                SpinnerColumn,
                TaskProgressColumn,
                TextColumn,
                TimeElapsedColumn,
            )

            self._rich = Progress(
                SpinnerColumn(finished_text="[green]done"),
                TextColumn("{task.description}"),
                BarColumn(),
                TaskProgressColumn(),
                TextColumn("{task.fields[detail]}"),
                TimeElapsedColumn(),
                console=Console(stderr=True),
                redirect_stdout=False,
                redirect_stderr=False,
            )
            self._rich.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def stop(self) -> None:
        """End the rich display (before results are printed on stdout)."""
        if self._rich is not None:
            self._rich.stop()
            self._rich = None
            self.mode = "plain"

    def note(self, text: str, style: str | None = None) -> None:
        """A line of the CLI's own (not an error)."""
        if self._rich is not None:
            self._rich.console.print(text, style=style, markup=False, highlight=False)
        elif self.mode != "quiet":
            print(text, file=sys.stderr, flush=True)

    def warning(self, message, category, filename, lineno, file=None, line=None) -> None:
        """Python warnings as one line (``warnings.showwarning``)."""
        self.note(f"megara-dark: warning: {message}", "yellow")

    def echo(self, line: str) -> None:
        """A log line of the recipe."""
        if self._rich is None:
            self.note(line)
            return
        match = self.LOG_LINE.match(line)
        level, message = (match["level"], match["message"]) if match else ("INFO", line)
        end = self.STEP_END.match(message)
        if message.endswith(": start"):
            self._start(message.removesuffix(": start"))
        elif end and self._task is not None and end["name"] == self._task[1]:
            self._finish()
        elif level != "INFO":
            self.note(f"{level.lower()}: {message}", "yellow")
        elif self.verbose:
            self.note(message, "dim")

    def progress(self, stage: str, done: int, total: int) -> None:
        """Rows done of a stage (the combination, by row block)."""
        if self._rich is not None and self._task is not None:
            self._rich.update(
                self._task[0], total=total, completed=done, detail=f"{done}/{total} rows"
            )
        elif self.mode == "plain" and total > 0:
            quarter = 4 * done // total
            if quarter > 0 and (stage, quarter) != self._reported:
                self._reported = (stage, quarter)
                self.note(f"{stage}: {done}/{total} rows")

    @contextmanager
    def step(self, name: str):
        """A step of the CLI's own (simulation, quick-look PNG), timed like the recipe's."""
        t0 = time.perf_counter()
        if self._rich is not None:
            self._start(name)
        else:
            self.note(f"{name}: start")
        yield
        if self._rich is not None:
            self._finish()
        else:
            self.note(f"{name}: {time.perf_counter() - t0:.3f} s")

    def _start(self, name: str) -> None:
        if self._task is not None:
            self._finish()
        self._task = (self._rich.add_task(name, total=None, detail=""), name)

    def _finish(self) -> None:
        self._rich.update(self._task[0], total=1, completed=1)  # a full bar
        self._task = None


# ---- main -------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = _quick_start(argv)
    args, unknown = parser.parse_known_args(argv)
    if unknown:
        args.parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    handlers = {s: signal.signal(s, _interrupted) for s in (signal.SIGINT, signal.SIGTERM)}
    display = Display.for_args(args)
    try:
        with warnings.catch_warnings(), display:
            if args.quiet:
                warnings.simplefilter("ignore")
            else:
                warnings.showwarning = display.warning
            return _dispatch(args, display)
    except KeyboardInterrupt:
        return _fail(args, "interrupted; no partial product was left", EXIT_INTERRUPTED)
    except ValidationError as exc:
        return _fail(args, _one_per_line(exc.problems), EXIT_USAGE, exc)
    except (InputFileError, OutputError) as exc:
        return _fail(args, str(exc), EXIT_IO, exc)
    except OSError as exc:
        where = f"{exc.filename}: " if exc.filename else ""
        return _fail(args, f"{where}{exc.strerror or exc}", EXIT_IO, exc)
    except (MegaraDarkError, ValueError) as exc:  # bad parameters, a set that cannot be used
        return _fail(args, str(exc), EXIT_USAGE, exc)
    except Exception as exc:
        text = f"internal error ({type(exc).__name__}: {exc}); please report it with --verbose"
        return _fail(args, text, EXIT_BUG, exc)
    finally:
        for signum, handler in handlers.items():
            signal.signal(signum, handler)


def _quick_start(argv: list[str] | None) -> argparse.ArgumentParser:
    """Build the parser, which imports NumPy and astropy (0.4 s), with the least delay:
    the files named after ``run`` are hashed meanwhile in another thread (see
    megara_dark.digest); NumPy's BLAS gets one thread (it only solves tiny spline fits
    here, and its pool takes 0.1 s to start); the garbage collector waits until the
    imports are done (they make no garbage, and it would take 0.06 s to find none).
    From the process's own command line (``argv`` None) the imported objects are then
    frozen out of the collector's reach (``gc.freeze``): they live as long as the
    process, and the collections at exit would spend 0.07 s looking through them."""
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    words = sys.argv[1:] if argv is None else list(argv)
    if words[:1] == ["run"]:
        digest.prefetch(words[1:])
    collecting = gc.isenabled()
    gc.disable()
    try:
        return build_parser()
    finally:
        if argv is None:
            gc.freeze()
        if collecting:
            gc.enable()


def _interrupted(signum, frame):
    """SIGINT or SIGTERM: stop where we are; further signals wait for the clean-up."""
    for s in (signal.SIGINT, signal.SIGTERM):
        signal.signal(s, signal.SIG_IGN)
    raise KeyboardInterrupt


def _one_per_line(problems: list[str]) -> str:
    if len(problems) == 1:
        return problems[0]
    return f"{len(problems)} problems with the inputs:" + "".join(f"\n  {p}" for p in problems)


def _fail(args, message: str, code: int, exc: Exception | None = None) -> int:
    if exc is not None and args.verbose:
        import traceback

        traceback.print_exception(exc)
    print(f"megara-dark: error: {message}", file=sys.stderr, flush=True)
    if args.json:
        _print_json({"status": "error", "exit_code": code, "error": message})
    return code


def _print_json(data: dict) -> None:
    from .report import jsonable

    print(json.dumps(jsonable(data), indent=2), flush=True)


def _dispatch(args, display: Display) -> int:
    if args.command == "run":
        return _run(args, display)
    if args.command == "run-many":
        return _run_many(args, display)
    if args.command == "simulate":
        return _simulate(args, display)
    if args.command == "demo":
        return _demo(args, display)
    return _inspect(args, display)


# ---- subcommands ----------------------------------------------------------------


def _run(args, display: Display) -> int:
    if not args.frames and args.obresult is None:
        args.parser.error("give dark frames or --obresult OB.yaml")
    if args.frames and args.obresult is not None:
        args.parser.error("give either dark frames or --obresult, not both")
    options = _recipe_options(args)
    with _dask_client(args.scheduler, display) as client:
        return _reduce(
            args,
            display,
            args.obresult if args.obresult is not None else args.frames,
            args.bias,
            args.out,
            client=client,
            **options,
        )


def _reduce(args, display: Display, frames, bias, outdir: Path, extra=None, **options) -> int:
    """Run the recipe and draw the PNG; print where the products are (or --json)."""
    from .io import StagedOutputs
    from .quicklook import draw_quicklook
    from .recipe import DarkRecipe, DarkRecipeInput

    recipe = DarkRecipe(outdir=outdir, echo=display.echo, progress=display.progress, **options)
    png = None
    if not getattr(args, "no_png", False):
        png = outdir / f"{recipe.name}.png"
        StagedOutputs(recipe.overwrite).check_target(png)  # before any work
    result = recipe.run(DarkRecipeInput(frames, bias))
    if png is not None:
        with display.step("quick-look PNG"):
            draw_quicklook(result.master_dark, png, overwrite=recipe.overwrite)
    summary = {
        "status": "ok",
        "exit_code": EXIT_QC_BAD if result.qc.flag == "BAD" else EXIT_OK,
        **(extra or {}),
        "master_dark": result.master_dark,
        "log": result.log,
        "report": result.report,
        "png": png,
        "qc": result.qc.flag,
        "reasons": result.qc.reasons,
        "stats": result.qc.stats,
    }
    display.stop()
    if args.json:
        _print_json(summary)
    elif not args.quiet:
        for key in (*(extra or {}), "master_dark", "log", "report", "png"):
            if summary[key] is not None:
                print(f"{key:12s} {summary[key]}")
        print(f"{'QC':12s} {result.qc.flag}" + "".join(f"\n  - {r}" for r in result.qc.reasons))
    return summary["exit_code"]


def _run_many(args, display: Display) -> int:
    """Each observation result reduced in its own folder on the cluster; the summary table."""
    from .dask import format_summary, run_many

    options = _recipe_options(args)
    total = len(args.obresults)
    done = []

    def arrived(result) -> None:
        done.append(result)
        flag = f"QC {result.qc_flag}" if result.ok else "FAILED"
        display.note(f"{result.obresult.name}: {flag} ({len(done)}/{total})")

    with (
        _dask_client(args.scheduler, display) as client,
        display.step(f"reduce {total} observation results"),
    ):
        results = run_many(
            args.obresults,
            bias=args.bias,
            outdir=args.out,
            client=client,
            on_result=arrived,
            **options,
        )
    failed = [r for r in results if not r.ok]
    if failed:
        code = EXIT_IO
    elif any(r.qc_flag == "BAD" for r in results):
        code = EXIT_QC_BAD
    else:
        code = EXIT_OK
    display.stop()
    if args.json:
        status = "failed" if failed else "ok"
        _print_json({"status": status, "exit_code": code, "results": list(map(asdict, results))})
    elif not args.quiet:
        print(format_summary(results))
    return code


@contextmanager
def _dask_client(scheduler: str | None, display: Display):
    """A Dask client for ``--scheduler`` (None: yields None), closed at the end
    with the local cluster it started; exit 2 if Dask is not installed."""
    if scheduler is None:
        yield None
        return
    from .dask import get_client

    if not display.verbose:  # Dask's log lines, here and in local workers: errors only
        os.environ.setdefault("DASK_LOGGING__DISTRIBUTED", "error")
    try:
        client = get_client(scheduler)
    except ImportError as exc:  # the message says how to install it
        raise MegaraDarkError(str(exc)) from None
    with client:
        workers = client.nthreads()
        display.note(
            f"Dask scheduler {client.scheduler.address}: {len(workers)} workers, "
            f"{sum(workers.values())} threads"
        )
        yield client


def _simulate(args, display: Display) -> int:
    """Simulate into a hidden folder inside --out, then move the files in: an
    interrupted or failed simulation leaves nothing."""
    from .io import check_output_folder
    from .simulate import simulate_dark_set

    out = check_output_folder(args.out)
    staging = Path(tempfile.mkdtemp(dir=out, prefix=".megara-dark-simulate-"))
    try:
        with display.step(f"simulate {args.frames} frames"):
            sim = simulate_dark_set(
                staging, nframes=args.frames, exptime=args.exptime, seed=args.seed
            )
        names = [p.name for p in [*sim.frames, sim.master_bias]]
        for name in names:
            if (out / name).exists() or (out / name).is_symlink():
                raise OutputError("exists; simulate never overwrites a file", out / name)
        for name in names:
            (staging / name).replace(out / name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    frames = [out / p.name for p in sim.frames]
    bias = out / sim.master_bias.name
    display.stop()
    if args.json:
        _print_json({"status": "ok", "frames": frames, "master_bias": bias, "seed": sim.seed})
    elif not args.quiet:
        for path in [*frames, bias]:
            print(path)
    return EXIT_OK


def _demo(args, display: Display) -> int:
    """A new folder under the current one: raw/ (simulated) and reduced/ (products).
    The folder is removed if the demo fails or is interrupted."""
    from .simulate import simulate_dark_set

    folder = _new_folder(Path.cwd() / f"megara-dark-demo-{datetime.now():%Y%m%d-%H%M%S}")
    raw, reduced = folder / "raw", folder / "reduced"
    try:
        with display.step(f"simulate {args.frames} raw MEGARA dark frames"):
            sim = simulate_dark_set(raw, nframes=args.frames, seed=args.seed)
        code = _reduce(args, display, sim.frames, sim.master_bias, reduced, {"raw": raw})
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise
    if not args.quiet and not args.json:
        print(f"\nlook at it:  megara-dark inspect {reduced / 'master_dark.fits'}")
    return code


def _new_folder(path: Path) -> Path:
    """Create a folder that did not exist (``path``, else ``path-2``, ``path-3``...)."""
    for k in range(1, 1000):
        candidate = path if k == 1 else path.with_name(f"{path.name}-{k}")
        try:
            candidate.mkdir()
            return candidate
        except FileExistsError:
            continue
        except OSError as exc:
            raise OutputError(f"cannot create the folder: {exc.strerror}", candidate) from None
    raise OutputError("cannot find a new folder name", path)


def _inspect(args, display: Display) -> int:
    from .quicklook import describe_product, draw_quicklook

    description = describe_product(args.product)
    if description["report_problem"] is not None:
        display.note(f"megara-dark: warning: {description['report_problem']}", "yellow")
    with display.step("quick-look PNG"):
        png = draw_quicklook(args.product, png=args.png, overwrite=True)
    flag = description["headers"].get("QCFLAG")
    display.stop()
    code = EXIT_QC_BAD if flag == "BAD" else EXIT_OK
    if args.json:
        _print_json({"status": "ok", "exit_code": code, **description, "png": png})
    elif not args.quiet:
        _print_description(description, png)
    return code


def _print_description(description: dict, png: Path) -> None:
    rows, cols = description["shape"]
    print(f"{'file':10s} {description['path']}")
    extensions = ", ".join(description["extensions"]) or "none"
    print(f"{'shape':10s} {rows} x {cols}; extensions {extensions}")
    for key, value in description["headers"].items():
        print(f"{key:10s} {value}")
    qc = description["qc"]
    if qc is not None:
        print(f"{'QC':10s} {qc['flag']}" + "".join(f"\n  - {r}" for r in qc["reasons"]))
        for i, frame in enumerate(qc["frames"], 1):
            median = "none" if frame["median"] is None else f"{frame['median']:.3f} ADU"
            state = "used" if frame["passed"] else f"left out: {frame['reason']}"
            print(f"  frame {i}: median {median}, {state}  {frame['path']}")
    print(f"{'report':10s} {description['report'] or 'none of this product beside it'}")
    print(f"{'png':10s} {png}")
