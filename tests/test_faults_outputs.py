"""FAULTS.md cases 21-23, the outputs: one test each, named for the case, through the
Python API (small frames) and the installed ``megara-dark`` command (full-size frames).

Every run is guarded (``fault_kit.guarded``): inputs byte-identical, products of an
earlier run intact, nothing else left (no temp file) but, where the run failed after
validation and the folder could take it, ``master_dark.failed.json`` saying why.  The
disk-full runs are children with RLIMIT_FSIZE set (EFBIG, "File too large", stands for
ENOSPC: both are an OSError of the same write) at the moment that makes each product's
write fail (``fault_inject``).
"""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path

import pytest
from conftest import esc
from fault_kit import (
    api_child,
    api_refuses,
    child_env,
    cli_refuses,
    guarded,
)

from megara_dark.errors import OutputError

SMALL = (32, 64, 8, 10)  # make_geometry arguments of conftest's RECIPE_GEOMETRY
EXISTS = "exists already \\(replace it with --overwrite, or overwrite=True\\)"


def test_fault_21_output_exists_or_is_an_input(dark_set, megara_set, tmp_path):
    """Existing products: refused without overwrite, before any header is read; an output
    that is an input (by name or through a link): refused even with overwrite."""
    lines = []
    out = tmp_path / "api"
    api_refuses(
        dark_set.frames,
        dark_set.master_bias,
        out,
        OutputError,
        f"^{esc(out / 'master_dark.fits')}: {EXISTS}$",
        overwrite=False,
        echo=lines.append,
    )
    assert not any("validate headers" in line for line in lines)
    out = tmp_path / "cli"
    done = cli_refuses(
        ["run", *megara_set.frames, "--bias", megara_set.master_bias, "--out", out],
        cwd=tmp_path,
        inputs=[*megara_set.frames, megara_set.master_bias],
        out=out,
        code=3,
        message=f"{esc(out / 'master_dark.png')}: {EXISTS}",
    )
    assert "validate headers" not in done.stderr

    # A product named as a frame, in the frames' folder.
    frame = dark_set.frames[0]
    api_refuses(
        dark_set.frames,
        dark_set.master_bias,
        frame.parent,
        OutputError,
        f"^{esc(frame)}: would overwrite the input {esc(frame)}; choose another output$",
        plant=False,
        name=frame.stem,
    )
    # A product that is a link to an input: neither the link nor the input is touched.
    for name, sim, run in (("api-link", dark_set, None), ("cli-link", megara_set, "cli")):
        out = tmp_path / name
        out.mkdir()
        (out / "master_dark.fits").symlink_to(sim.master_bias)
        message = (
            f"{esc(out / 'master_dark.fits')}: would overwrite the input "
            f"{esc(sim.master_bias)}; choose another output"
        )
        if run is None:
            api_refuses(sim.frames, sim.master_bias, out, OutputError, f"^{message}$", plant=False)
        else:
            cli_refuses(
                [
                    "run",
                    *sim.frames,
                    "--bias",
                    sim.master_bias,
                    "--out",
                    out,
                    "--overwrite",
                    "--no-png",
                ],
                cwd=tmp_path,
                inputs=[*sim.frames, sim.master_bias],
                out=out,
                code=3,
                message=message,
                plant=False,
            )
        assert (out / "master_dark.fits").readlink() == sim.master_bias


def unwritable_folders(tmp_path):
    """(label, output folder, the OS's reason) of folders no run can write, as any user."""
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder\n")
    folders = [("under a file", blocker / "reduced", "Not a directory")]
    try:  # sysfs refuses new files even to root (Linux)
        tempfile.NamedTemporaryFile(dir="/sys").close()
    except PermissionError:
        folders.append(("sysfs", Path("/sys/megara-dark-test"), "Permission denied"))
    except OSError:
        pass
    if os.geteuid() != 0:  # permissions bind only others than root
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        folders.append(("read-only folder", locked / "reduced", "Permission denied"))
    return folders


def test_fault_22_output_folder_not_writable(dark_set, megara_set, tmp_path):
    """Refused before any header is read (nothing computed), exit 3."""
    for label, out, reason in unwritable_folders(tmp_path):
        message = f"{esc(out)}: output folder is not writable: {reason}"
        lines = []
        api_refuses(
            dark_set.frames,
            dark_set.master_bias,
            out,
            OutputError,
            f"^{message}$",
            plant=False,
            echo=lines.append,
        )
        assert not any("validate headers" in line for line in lines), label
        done = cli_refuses(
            ["run", *megara_set.frames, "--bias", megara_set.master_bias, "--out", out],
            cwd=tmp_path,
            inputs=[*megara_set.frames, megara_set.master_bias],
            out=out,
            code=3,
            message=message,
            plant=False,
        )
        assert "validate headers" not in done.stderr, label


# Products flushed before the limit is set, and the product whose write then fails.
DISK_FULL = [(0, "master_dark.fits"), (1, "master_dark.log"), (2, "master_dark.json")]


@pytest.mark.parametrize(("flushed", "product"), DISK_FULL, ids=["fits", "log", "report"])
def test_fault_23_disk_full_while_writing(dark_set, megara_set, tmp_path, flushed, product):
    """RLIMIT_FSIZE lands in the FITS (a limit below its size from the start), the log
    or the report (a limit of 100 bytes once the products before it are flushed): the
    error names the product, the older products are intact, no temp file is left.  A
    failure report is written when it fits under the limit (the FITS case)."""
    limit = {"api": 20_000, "cli": 50_000_000} if flushed == 0 else {"api": 100, "cli": 100}
    reason = "File too large"
    report = rf"^.*/master_dark\.fits: cannot be written: {reason}" if flushed == 0 else None
    out = tmp_path / "api"
    with guarded([*dark_set.frames, dark_set.master_bias], out, failure_report=report):
        got = api_child(
            dark_set.frames,
            dark_set.master_bias,
            out,
            SMALL,
            cwd=tmp_path,
            fault={"fsize": limit["api"], "after_fsyncs": flushed},
        )
    assert got["error"] == "OutputError"
    assert re.fullmatch(f"{esc(out / product)}: cannot be written: {reason}", got["message"])
    out = tmp_path / "cli"
    cli_refuses(
        ["run", *megara_set.frames, "--bias", megara_set.master_bias, "--out", out, "--overwrite"],
        cwd=tmp_path,
        inputs=[*megara_set.frames, megara_set.master_bias],
        out=out,
        code=3,
        message=f"{esc(out / product)}: cannot be written: {reason}",
        failure_report=report,
        env=child_env(tmp_path, {"fsize": limit["cli"], "after_fsyncs": flushed}),
    )
