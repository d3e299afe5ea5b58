"""What every FAULTS.md test asserts, through the Python API and the installed command.

A fault run is guarded (:func:`guarded`): products of an earlier run are planted in
the output folder and every input file is hashed; afterwards every input must be
byte-identical (sha256), the old products intact, and nothing else left in the output
folder (no temp file, no partial product), except, when the run failed after
validation, its ``master_dark.failed.json`` (checked against the report schema).

Child processes (:func:`child_env`) get faults injected by ``fault_inject.py``
through a ``sitecustomize`` module: resource limits and signals at exact moments.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import subprocess
import sys
import uuid
from datetime import datetime, timedelta
from pathlib import Path

import jsonschema
import pytest
from astropy.io import fits
from conftest import RECIPE_GEOMETRY, file_sha256, regular_files

from megara_dark.recipe import DarkRecipe, DarkRecipeInput
from megara_dark.report import report_schema

COMMAND = [str(Path(sys.executable).parent / "megara-dark")]
TIMEOUT = 300
PRODUCTS = ("master_dark.fits", "master_dark.log", "master_dark.json", "master_dark.png")
FAILURE_REPORT = "master_dark.failed.json"
TESTS = Path(__file__).parent
# The command's environment: no colours, no terminal detection tricks.
ENV = {k: v for k, v in os.environ.items() if k not in ("FORCE_COLOR", "TTY_COMPATIBLE")}


# ---- the guard ----------------------------------------------------------------------------------


def plant_old_products(out: Path) -> dict[Path, bytes]:
    """Products of an 'earlier run' in ``out`` (created): {path: bytes}."""
    out.mkdir(parents=True, exist_ok=True)
    old = {out / name: f"old {name} of an earlier run\n".encode() for name in PRODUCTS}
    for path, data in old.items():
        path.write_bytes(data)
    return old


def input_files(inputs) -> list[Path]:
    """The inputs and every other readable file in their folders."""
    inputs = [Path(p) for p in inputs]
    return sorted({*regular_files({p.parent for p in inputs}), *(p for p in inputs if p.is_file())})


@contextlib.contextmanager
def guarded(inputs, out: Path, *, failure_report: str | None = None, plant: bool = True):
    """Check the block leaves inputs byte-identical, old products intact and nothing else.

    failure_report: None when the run must leave no failure report (it failed before
    or during validation), else a regular expression its ``errors`` must match.
    plant: put products of an earlier run in ``out`` first; else what ``out`` holds
    (if it exists) must stay as it is.
    """
    out = Path(out)
    old = plant_old_products(out) if plant else {}
    before = {p: file_sha256(p) for p in input_files(inputs)}
    listed = sorted(os.listdir(out)) if out.is_dir() else []
    yield
    assert {p: file_sha256(p) for p in before} == before, "an input changed"
    assert {p: p.read_bytes() for p in old} == old, "an older product changed"
    left = sorted(os.listdir(out)) if out.is_dir() else []
    assert left == sorted([*listed, *([FAILURE_REPORT] if failure_report else [])]), left
    if failure_report:
        assert_failure_report(out / FAILURE_REPORT, failure_report)


def assert_failure_report(path: Path, error: str) -> dict:
    """The failure report follows the schema and its error matches ``error``."""
    report = json.loads(path.read_text())
    validator = jsonschema.Draft202012Validator(report_schema())
    assert [e.message for e in validator.iter_errors(report)] == []
    assert report["status"] == "failed"
    assert any(re.search(error, e) for e in report["errors"]), report["errors"]
    return report


def run_api(frames, bias, out, **options):
    """DarkRecipe(overwrite=True) on the small test layout unless told otherwise."""
    options.setdefault("geometry", RECIPE_GEOMETRY)
    options.setdefault("overwrite", True)
    return DarkRecipe(outdir=out, **options).run(DarkRecipeInput(frames, bias))


def api_refuses(frames, bias, out, error, match, *, failure_report=None, plant=True, **options):
    """The recipe raises ``error`` matching ``match``, guarded (see :func:`guarded`);
    returns the exception."""
    inputs = [frames] if isinstance(frames, (str, os.PathLike)) else list(frames)
    inputs += [bias] if bias else []
    with guarded(inputs, out, failure_report=failure_report, plant=plant):
        with pytest.raises(error, match=match) as info:
            run_api(frames, bias, out, **options)
    return info.value


# ---- the command --------------------------------------------------------------------------------


def cli(*args, cwd: Path, env=None, timeout=TIMEOUT, **popen) -> subprocess.CompletedProcess:
    """Run the installed command with pipes and wait for it (``popen``: e.g. user=)."""
    return subprocess.run(
        [*COMMAND, *map(str, args)],
        cwd=cwd,
        env=env or ENV,
        capture_output=True,
        text=True,
        timeout=timeout,
        **popen,
    )


def cli_refuses(args, *, cwd, inputs, out, code, message, failure_report=None, plant=True, **run):
    """The command exits with ``code`` and ends stderr with the error ``message``
    (a regular expression, after ``megara-dark: error: ``), guarded."""
    with guarded(inputs, out, failure_report=failure_report, plant=plant):
        done = cli(*args, cwd=cwd, **run)
    assert_error(done, code, message)
    return done


def assert_error(done: subprocess.CompletedProcess, code: int, message: str) -> None:
    assert done.returncode == code, done.stderr
    assert done.stdout == ""
    assert "Traceback" not in done.stderr
    match = re.search(r"^megara-dark: error: (.*)\Z", done.stderr, re.MULTILINE | re.DOTALL)
    assert match, done.stderr
    assert re.fullmatch(message, match[1].rstrip("\n"), re.DOTALL), match[1]


def child_env(tmp_path: Path, fault: dict | None = None) -> dict:
    """The environment of a child process that installs ``fault`` (see fault_inject)."""
    site = tmp_path / "site"
    site.mkdir(exist_ok=True)
    (site / "sitecustomize.py").write_text("import fault_inject\n\nfault_inject.install()\n")
    env = {**ENV, "PYTHONPATH": os.pathsep.join([str(site), str(TESTS)])}
    if fault is not None:
        env["MEGARA_DARK_FAULT"] = json.dumps(fault)
    if fault is not None and "as_headroom" in fault:
        # One malloc arena: glibc's per-thread arenas keep address space reserved
        # (counted before the limit is set), where the planes could still be made.
        env["MALLOC_ARENA_MAX"] = "1"
    return env


def python_child(code: str, *, cwd: Path, env: dict, timeout=TIMEOUT, **popen):
    """Run Python code in a child (outside the source tree: the installed package)."""
    return subprocess.run(
        [sys.executable, "-c", code],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        **popen,
    )


API_CHILD = """
import json, sys
from megara_dark.detector import make_geometry
from megara_dark.errors import MegaraDarkError
from megara_dark.recipe import DarkRecipe, DarkRecipeInput
geometry = make_geometry(*{geometry})
try:
    DarkRecipe(outdir={out!r}, geometry=geometry, overwrite=True, **{options!r}).run(
        DarkRecipeInput({frames!r}, {bias!r}))
except (MegaraDarkError, KeyboardInterrupt) as exc:
    print(json.dumps({{"error": type(exc).__name__, "message": str(exc)}}))
    sys.exit(1)
print(json.dumps({{"error": None}}))
"""


def api_child(frames, bias, out, geometry_args, *, cwd, fault=None, popen=None, **options):
    """The recipe run in a child with a fault injected: {"error": type name or None,
    "message": text}; popen: more arguments of subprocess.run (timeout, user)."""
    code = API_CHILD.format(
        geometry=tuple(geometry_args),
        out=str(out),
        options=options,
        frames=[str(p) for p in frames],
        bias=str(bias),
    )
    done = python_child(code, cwd=cwd, env=child_env(cwd, fault), **(popen or {}))
    assert done.returncode in (0, 1) and done.stdout, done.stderr
    return json.loads(done.stdout.splitlines()[-1])


# ---- inputs -------------------------------------------------------------------------------------


def primary_header(path) -> tuple[fits.Header, int]:
    """The primary header of a FITS file and the byte offset of its data."""
    with open(path, "rb") as f:
        header = fits.Header.fromfile(f)
        return header, f.tell()


def new_exposure(source, target) -> dict:
    """UUID and DATE-OBS for a copy of ``source`` at ``target`` that is another
    exposure (both derived from the target's path)."""
    target_id = uuid.uuid5(uuid.NAMESPACE_URL, str(target))
    date = datetime.fromisoformat(fits.getval(source, "DATE-OBS"))
    date += timedelta(seconds=1 + target_id.int % 10**8)
    return {"UUID": str(target_id), "DATE-OBS": date.isoformat(timespec="milliseconds")}


def edited(source, target, *, header=None, remove=(), append=(), another=True) -> Path:
    """A copy of ``source`` with primary-header cards set, removed and appended (a
    repeated key); the data bytes are copied as they are.  another: the copy is another
    exposure (:func:`new_exposure`), not a repeat of its source."""
    old, offset = primary_header(source)
    new = old.copy()
    for key in remove:
        new.remove(key, ignore_missing=True, remove_all=True)
    if another:
        new.update(new_exposure(source, target))
    new.update(header or {})
    for card in append:
        new.append(card, bottom=True)
    with open(source, "rb") as f:
        f.seek(offset)
        data = f.read()
    Path(target).write_bytes(new.tostring().encode() + data)
    return Path(target)
