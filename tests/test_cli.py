"""The installed ``megara-dark`` command (and ``python -m megara_dark``) in subprocesses.

The command line has no small detector layout, so the runs here use full-size
MEGARA frames: one demo (5 frames, simulated once for the module) provides the
raw set and a product; each further reduction takes a few seconds, so there are
few of them.  Run with plain ``pytest`` so that the installed package is tested.
"""

from __future__ import annotations

import json
import os
import pty
import re
import select
import signal
import struct
import subprocess
import sys
from pathlib import Path

import matplotlib.image
import numpy as np
import pytest
from astropy.io import fits
from conftest import CLI_ENV as ENV
from conftest import CLI_TIMEOUT as TIMEOUT
from conftest import COMMAND, cli, error_line

import megara_dark
from megara_dark.combine import build_info

MODULE = [sys.executable, "-m", "megara_dark"]
PNG_SIZE = (1200, 450)  # width, height of the quick-look PNG
ROWS = 4112  # trimmed rows of a MEGARA frame: the combination's progress total
ANSI = re.compile(r"\x1b\[")
RUN_OPTIONS = (
    "--obresult --bias --out --method --low --high --nlow --nhigh --fclip --unit --threads "
    "--overwrite --json --quiet --verbose"
).split()


def png_size(path: Path) -> tuple[int, int]:
    """(width, height) from a PNG's signature and IHDR chunk."""
    head = path.read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    assert head[12:16] == b"IHDR"
    return struct.unpack(">II", head[16:24])


def assert_quicklook(path: Path) -> None:
    assert png_size(path) == PNG_SIZE
    pixels = matplotlib.image.imread(path)
    assert pixels.shape[:2] == PNG_SIZE[::-1]
    assert pixels[..., :3].std() > 0.05  # something is drawn, not a blank page


def assert_plain(stderr: str) -> None:
    """Progress as plain lines: no escape codes, no carriage returns, the stages."""
    assert not ANSI.search(stderr) and "\r" not in stderr
    for stage in (
        "validate headers: start",
        "overscan and frame statistics: start",
        "write master dark: start",
    ):
        assert stage in stderr
    # Rows done across both amplifiers, a line per quarter: increasing, to the end.
    rows = [int(n) for n in re.findall(rf"^combine: (\d+)/{ROWS} rows$", stderr, re.MULTILINE)]
    assert len(rows) >= 2 and rows == sorted(set(rows)) and rows[-1] == ROWS


# ---- the demo, shared -------------------------------------------------------------


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """``megara-dark demo`` run in an empty folder: (its result, the folder it made)."""
    cwd = tmp_path_factory.mktemp("demo")
    result = cli("demo", cwd=cwd)
    made = list(cwd.iterdir())
    assert len(made) == 1 and made[0].name.startswith("megara-dark-demo-"), result.stderr
    return result, made[0]


@pytest.fixture(scope="module")
def raw_set(demo):
    raw = demo[1] / "raw"
    return sorted(raw.glob("dark_*.fits")), raw / "master_bias.fits"


@pytest.fixture(scope="module")
def bad_bias(raw_set, tmp_path_factory):
    """The demo's master bias 500 ADU too low: ~850 e-/pixel/hour of 'dark current' (BAD)."""
    path = tmp_path_factory.mktemp("bad") / "low_bias.fits"
    with fits.open(raw_set[1]) as hdul:
        fits.PrimaryHDU(hdul[0].data - np.float32(500), header=hdul[0].header).writeto(path)
    return path


def test_demo_from_an_empty_folder(demo):
    result, folder = demo
    assert result.returncode == 0, result.stderr
    reduced = folder / "reduced"
    names = ("master_dark.fits", "master_dark.log", "master_dark.json", "master_dark.png")
    assert sorted(p.name for p in reduced.iterdir()) == sorted(names)
    assert len(list((folder / "raw").glob("dark_*.fits"))) == 5
    # stdout says where everything is
    listed = dict(line.split(maxsplit=1) for line in result.stdout.splitlines()[:6])
    assert listed == {
        "raw": str(folder / "raw"),
        "master_dark": str(reduced / names[0]),
        "log": str(reduced / names[1]),
        "report": str(reduced / names[2]),
        "png": str(reduced / names[3]),
        "QC": "GOOD",
    }
    assert f"megara-dark inspect {reduced / names[0]}" in result.stdout
    assert_plain(result.stderr)
    assert "simulate 5 raw MEGARA dark frames: start" in result.stderr
    # the products are what they say
    with fits.open(reduced / names[0]) as hdul:
        assert hdul[0].header["QCFLAG"] == "GOOD" and hdul[0].header["NUM-NCOM"] == 5
        assert hdul[0].data.shape == (ROWS, 4096)
        product_uuid = hdul[0].header["UUID"]
    report = json.loads((reduced / names[2]).read_text())
    assert report["recipe"]["uuid"] == product_uuid and report["qc"]["flag"] == "GOOD"
    assert "combine (median, 5 frames)" in (reduced / names[1]).read_text()
    assert_quicklook(reduced / names[3])


# ---- version, help, the module ------------------------------------------------------


@pytest.mark.parametrize("command", [COMMAND, MODULE], ids=["megara-dark", "python -m"])
def test_version_shows_openmp_and_threads(command, tmp_path):
    result = cli("--version", cwd=tmp_path, command=command)
    assert result.returncode == 0
    info = build_info()
    expected = (
        f"megara-dark {megara_dark.__version__} (OpenMP {'on' if info['openmp'] else 'off'}, "
        f"{info['default_threads']} threads by default)"
    )
    assert result.stdout.strip() == expected


@pytest.mark.parametrize(
    ("subcommand", "options"),
    [
        ("", ["run", "run-many", "simulate", "demo", "inspect", "exit codes"]),
        ("run", [*RUN_OPTIONS, "--scheduler"]),
        ("run-many", ["--out", "--bias", "--scheduler", "--method", "--json", "exit codes"]),
        ("simulate", ["--out", "--frames", "--exptime", "--seed"]),
        ("demo", ["--frames", "--seed", "--json", "--quiet"]),
        ("inspect", ["--png", "--json"]),
    ],
)
def test_help_on_every_subcommand_has_an_example(subcommand, options, tmp_path):
    result = cli(*subcommand.split(), "--help", cwd=tmp_path)
    assert result.returncode == 0 and result.stderr == ""
    assert re.search(r"^examples?:\n  megara-dark ", result.stdout, re.MULTILINE)
    for option in options:
        assert option in result.stdout


# ---- exit code 2: usage and validation -------------------------------------------


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["run", "a.fits", "--bias", "b.fits"], "the following arguments are required: --out"),
        (["run", "--out", "o"], "give dark frames or --obresult OB.yaml"),
        (["run", "a.fits", "--out", "o", "--frobnicate"], "unrecognized arguments: --frobnicate"),
        (["run", "a.fits", "--out", "o", "--nlow", "2"], "--nlow applies to minmax, not median"),
        (["run", "a.fits", "--out", "o", "--threads", "-1"], "--threads: must be >= 0"),
        (["simulate", "--out", "o", "--frames", "0"], "--frames: must be >= 1"),
        (["inspect"], "the following arguments are required: product"),
    ],
)
@pytest.mark.parametrize("command", [COMMAND, MODULE], ids=["megara-dark", "python -m"])
def test_usage_errors_exit_2(command, args, message, tmp_path):
    result = cli(*args, cwd=tmp_path, command=command)
    assert result.returncode == 2
    assert result.stdout == ""
    last = result.stderr.splitlines()[-1]
    assert last.startswith("megara-dark: error: ") and last.endswith(message)
    assert result.stderr.startswith(f"usage: megara-dark {args[0]}")
    assert list(tmp_path.iterdir()) == []


def test_validation_error_exit_2_names_the_file(raw_set, tmp_path):
    frames, bias = raw_set
    text = tmp_path / "notes.fits"
    text.write_text("not an image\n")
    out = tmp_path / "out"
    result = cli("run", frames[0], text, "--bias", bias, "--out", out, cwd=tmp_path)
    assert result.returncode == 2
    assert error_line(result.stderr) == (
        f"megara-dark: error: {text}: is not a FITS file (it does not start with SIMPLE = T)"
    )
    assert result.stdout == "" and not out.exists()  # validation fails before it is made
    verbose = cli("run", frames[0], text, "--bias", bias, "--out", out, "--verbose", cwd=tmp_path)
    assert verbose.returncode == 2
    assert "Traceback (most recent call last):" in verbose.stderr
    assert verbose.stderr.splitlines()[-1] == error_line(result.stderr)


# ---- exit code 3: input and output ---------------------------------------------------


def test_missing_input_exit_3_with_json_error(raw_set, tmp_path):
    frames, bias = raw_set
    missing = tmp_path / "dark_999.fits"
    result = cli(
        "run", frames[0], missing, "--bias", bias, "--out", tmp_path / "o", "--json", cwd=tmp_path
    )
    assert result.returncode == 3
    assert error_line(result.stderr) == f"megara-dark: error: {missing}: no such file"
    assert json.loads(result.stdout) == {
        "status": "error",
        "exit_code": 3,
        "error": f"{missing}: no such file",
    }


def test_output_folder_under_a_file_exit_3_before_any_work(raw_set, tmp_path):
    frames, bias = raw_set
    blocker = tmp_path / "file"
    blocker.write_text("")
    out = blocker / "reduced"
    result = cli("run", *frames, "--bias", bias, "--out", out, cwd=tmp_path)
    assert result.returncode == 3
    assert result.stderr.splitlines()[-1] == (
        f"megara-dark: error: {out}: output folder is not writable: Not a directory"
    )
    assert "validate headers" not in result.stderr  # failed before reading anything


root = pytest.mark.skipif(os.geteuid() == 0, reason="root ignores file permissions")


@root
def test_unwritable_output_folder_exit_3(raw_set, tmp_path):
    frames, bias = raw_set
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    result = cli("run", *frames, "--bias", bias, "--out", locked, cwd=tmp_path)
    assert result.returncode == 3
    assert f"error: {locked}: output folder is not writable" in result.stderr
    assert "validate headers" not in result.stderr


@root
def test_unreadable_input_exit_3(raw_set, tmp_path):
    frames, bias = raw_set
    secret = tmp_path / "secret.fits"
    secret.write_bytes(frames[0].read_bytes()[:2880])
    secret.chmod(0)
    result = cli("run", frames[0], secret, "--bias", bias, "--out", tmp_path / "o", cwd=tmp_path)
    assert result.returncode == 3
    assert error_line(result.stderr).endswith(f"{secret}: cannot be read: permission denied")


# ---- exit codes 0 and 4: runs ----------------------------------------------------------


def test_run_json_is_the_only_stdout(raw_set, tmp_path):
    frames, bias = raw_set
    out = tmp_path / "reduced"
    result = cli("run", *frames[:3], "--bias", bias, "--out", out, "--json", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)  # the whole of stdout
    assert summary["status"] == "ok" and summary["exit_code"] == 0
    assert summary["qc"] == "GOOD" and summary["reasons"] == []
    for key, suffix in (("master_dark", ".fits"), ("log", ".log"), ("report", ".json")):
        assert summary[key] == str(out / f"master_dark{suffix}")
    assert summary["png"] == str(out / "master_dark.png")
    report = json.loads((out / "master_dark.json").read_text())
    assert summary["stats"] == report["qc"]["stats"]
    assert [i["used"] for i in report["inputs"]] == [True] * 3
    assert_plain(result.stderr)
    assert_quicklook(out / "master_dark.png")
    # Products exist now: a second run refuses them (exit 3) before any work.
    again = cli("run", *frames[:3], "--bias", bias, "--out", out, cwd=tmp_path)
    assert again.returncode == 3
    assert error_line(again.stderr) == (
        f"megara-dark: error: {out / 'master_dark.png'}: exists already (replace it "
        "with --overwrite, or overwrite=True)"
    )


def test_qc_bad_exits_4_and_quiet_prints_nothing(raw_set, bad_bias, tmp_path):
    frames, _ = raw_set
    ob = tmp_path / "ob.yaml"
    ob.write_text(
        "id: bad-dark\ninstrument: MEGARA\nmode: MegaraDarkImage\nframes:\n"
        + "".join(f"  - {f}\n" for f in frames[:3])
        + f"requirements:\n  master_bias: {bad_bias}\n"
    )
    out = tmp_path / "reduced"
    result = cli("run", "--obresult", ob, "--out", out, "--quiet", "--no-png", cwd=tmp_path)
    assert (result.returncode, result.stdout, result.stderr) == (4, "", "")
    with fits.open(out / "master_dark.fits") as hdul:
        assert hdul[0].header["QCFLAG"] == "BAD"
    assert not (out / "master_dark.png").exists()

    inspected = cli("inspect", out / "master_dark.fits", "--json", cwd=tmp_path)
    assert inspected.returncode == 4
    description = json.loads(inspected.stdout)
    assert description["exit_code"] == 4 and description["headers"]["QCFLAG"] == "BAD"
    assert description["qc"]["flag"] == "BAD"
    assert any("light leak" in r for r in description["qc"]["reasons"])
    assert description["png"] == str(out / "master_dark.png")
    assert_quicklook(out / "master_dark.png")


def test_inspect_prints_headers_and_qc_and_draws_the_png(demo, tmp_path):
    product = demo[1] / "reduced" / "master_dark.fits"
    png = tmp_path / "look.png"
    result = cli("inspect", product, "--png", png, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    header = fits.getheader(product)
    for key in ("NUMTYPE", "BUNIT", "EXPTIME", "NUM-NCOM", "UUID", "QCFLAG", "QCMEDIAN"):
        assert f"{key:10s} {header[key]}" in lines
    assert "QC         GOOD" in lines
    assert sum(line.startswith("  frame ") and ", used " in line for line in lines) == 5
    assert f"png        {png}" in lines
    assert f"shape      {ROWS} x 4096; extensions VARIANCE, MAP" in lines
    assert_quicklook(png)


# ---- simulate ------------------------------------------------------------------------


def test_simulate_writes_a_set_and_never_overwrites(tmp_path):
    out = tmp_path / "sim"
    result = cli(
        "simulate",
        "--out",
        out,
        "--frames",
        "1",
        "--exptime",
        "600",
        "--seed",
        "7",
        "--json",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    written = json.loads(result.stdout)
    assert written["frames"] == [str(out / "dark_000.fits")]
    assert written["master_bias"] == str(out / "master_bias.fits")
    assert sorted(p.name for p in out.iterdir()) == ["dark_000.fits", "master_bias.fits"]
    assert fits.getheader(out / "dark_000.fits")["EXPTIME"] == 600.0
    before = {p: p.read_bytes() for p in out.iterdir()}

    again = cli("simulate", "--out", out, "--frames", "1", "--seed", "7", cwd=tmp_path)
    assert again.returncode == 3
    assert again.stderr.splitlines()[-1] == (
        f"megara-dark: error: {out / 'dark_000.fits'}: exists; simulate never overwrites a file"
    )
    assert {p: p.read_bytes() for p in out.iterdir()} == before  # nothing else left either


# ---- interrupts ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("signum", "command"),
    [(signal.SIGINT, COMMAND), (signal.SIGTERM, MODULE)],
    ids=["SIGINT", "SIGTERM"],
)
def test_interrupt_while_combining_exits_130_leaving_nothing(raw_set, signum, command, tmp_path):
    frames, bias = raw_set
    out = tmp_path / "reduced"
    out.mkdir()
    old = {out / f"master_dark{s}": f"old {s}".encode() for s in (".fits", ".log", ".json")}
    for path, data in old.items():
        path.write_bytes(data)
    args = [*command, "run", *map(str, frames), "--bias", str(bias), "--out", str(out)]
    with subprocess.Popen(
        [*args, "--overwrite"], cwd=tmp_path, env=ENV, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True,
    ) as proc:  # fmt: skip
        for line in proc.stderr:  # plain progress lines, as they come
            if line.rstrip().endswith("combine (median, 5 frames): start"):
                proc.send_signal(signum)
                break
        stdout, rest = proc.communicate(timeout=TIMEOUT)
    assert proc.returncode == 130, rest
    assert stdout == ""
    assert error_line(rest) == "megara-dark: error: interrupted; no partial product was left"
    assert f"{ROWS}/{ROWS} rows" not in rest
    # The old products are intact; the only new file is the failure report saying why.
    failed = out / "master_dark.failed.json"
    report = json.loads(failed.read_text())
    assert report["status"] == "failed" and report["outputs"] == []
    assert report["errors"] == ["interrupted (SIGINT or SIGTERM); no product was written"]
    assert {p: p.read_bytes() for p in out.iterdir() if p != failed} == old


# ---- a terminal --------------------------------------------------------------------------


def run_on_terminal(args: list, cwd: Path) -> tuple[int, str]:
    """Run with stdin, stdout and stderr on a pseudo-terminal: (exit code, output)."""
    leader, follower = pty.openpty()
    proc = subprocess.Popen(
        [*COMMAND, *map(str, args)],
        cwd=cwd,
        env={**ENV, "TERM": "xterm-256color", "COLUMNS": "120"},
        stdin=follower,
        stdout=follower,
        stderr=follower,
    )
    os.close(follower)
    chunks = []
    while select.select([leader], [], [], TIMEOUT)[0]:
        try:
            chunk = os.read(leader, 1 << 16)
        except OSError:  # EIO: the command closed the terminal
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(leader)
    return proc.wait(timeout=10), b"".join(chunks).decode(errors="replace")


def test_rich_progress_on_a_terminal(raw_set, tmp_path):
    frames, bias = raw_set
    code, output = run_on_terminal(
        ["run", *frames[:3], "--bias", bias, "--out", tmp_path / "o", "--no-png"], tmp_path
    )
    assert code == 0, output
    assert ANSI.search(output)  # a live display, not plain lines
    for step in ("validate headers", "overscan", "combine (median, 3 frames)", "write master dark"):
        assert step in output
    assert f"{ROWS}/{ROWS} rows" in output
    assert "INFO" not in output  # log lines are drawn as steps, not printed
    assert re.search(r"^QC +GOOD", output.replace("\r", ""), re.MULTILINE)
