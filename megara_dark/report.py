"""The processing log (text) and the structured report (JSON, with a shipped schema)."""

from __future__ import annotations

import json
import math
import platform
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from importlib import resources
from pathlib import Path

import astropy
import numpy as np

from . import __version__
from .combine import build_info

REPORT_SCHEMA_ID = "https://megara-dark.invalid/schema/report-1.json"


def utc_now() -> str:
    """The current UTC time, ISO 8601 with seconds."""
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


class ProcessingLog:
    """What a run did, in order: steps with their timings, warnings and errors.

    ``echo`` (optional) receives every line as it is logged (the CLI's
    progress display); ``text()`` is the human-readable log file.
    """

    def __init__(self, echo: Callable[[str], None] | None = None):
        self.echo = echo
        self.lines: list[str] = []
        self.steps: list[dict] = []
        self.warnings: list[str] = []
        self.errors: list[str] = []
        self._start = time.perf_counter()

    def _add(self, level: str, message: str) -> None:
        elapsed = time.perf_counter() - self._start
        line = f"{elapsed:8.3f} s  {level:7s} {message}"
        self.lines.append(line)
        if self.echo is not None:
            self.echo(line)

    def info(self, message: str) -> None:
        self._add("INFO", message)

    def warning(self, message: str) -> None:
        self.warnings.append(message)
        self._add("WARNING", message)

    def error(self, message: str) -> None:
        self.errors.append(message)
        self._add("ERROR", message)

    @contextmanager
    def step(self, name: str) -> Iterator[None]:
        """Time a named step; its duration goes to the log and the report."""
        self.info(f"{name}: start")
        t0 = time.perf_counter()
        try:
            yield
        finally:
            seconds = time.perf_counter() - t0
            self.steps.append({"name": name, "seconds": round(seconds, 6)})
            self.info(f"{name}: {seconds:.3f} s")

    def text(self, title: str) -> str:
        return f"{title}\n" + "\n".join(self.lines) + "\n"


def software() -> dict:
    """Versions and threading of the software that made a product."""
    info = build_info()
    return {
        "megara_dark": __version__,
        "numpy": np.__version__,
        "astropy": astropy.__version__,
        "python": platform.python_version(),
        "openmp": info["openmp"],
        "default_threads": info["default_threads"],
    }


def jsonable(value):
    """NaN and infinities become None (JSON has no such numbers)."""
    if isinstance(value, dict):
        return {k: jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, Path):
        return str(value)
    return value


def write_json(path: Path, report: dict) -> None:
    """Write a report as indented JSON (NaN written as null)."""
    with open(path, "w", encoding="utf-8") as f:
        json.dump(jsonable(report), f, indent=2, allow_nan=False)
        f.write("\n")


def report_schema() -> dict:
    """The JSON Schema every report follows (shipped in megara_dark/schema/)."""
    text = resources.files("megara_dark").joinpath("schema/report.schema.json").read_text()
    return json.loads(text)
