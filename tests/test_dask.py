"""megara_dark.dask on a local Dask cluster: the same bits as the direct call, campaigns, faults.

One ``distributed.LocalCluster`` (2 worker processes, loopback only, no dashboard)
serves the module.  Every combination is compared byte for byte with
``megara_dark.combine.combine`` on the same inputs; the worker-kill test runs last.
"""

from __future__ import annotations

import json
import os
import re
import signal
import sys
from pathlib import Path

import numpy as np
import pytest

distributed = pytest.importorskip("distributed")

import cloudpickle  # noqa: E402  (a dependency of distributed)
import yaml  # noqa: E402
from astropy.io import fits  # noqa: E402
from conftest import (  # noqa: E402
    RECIPE_GEOMETRY,
    cli,
    error_line,
    esc,
    physical_values,
    run_recipe,
)

from megara_dark import dask as md_dask  # noqa: E402
from megara_dark.combine import METHODS, combine  # noqa: E402
from megara_dark.errors import InputFileError  # noqa: E402
from megara_dark.io import inspect_fits, read_raw  # noqa: E402
from megara_dark.recipe import MODE, DarkRecipe, DarkRecipeInput  # noqa: E402
from megara_dark.simulate import simulate_dark_set  # noqa: E402
from megara_dark.variance import variance_factors  # noqa: E402

SHAPE = (64, 80)
NFRAMES = 7
ROWS_PER_TASK = 9  # 8 tasks, the last one shorter
ROWS = 4112  # trimmed rows of a MEGARA frame
METHOD_KW = {"ccdclip": {"gain": 1.5, "rdnoise": 4.0}, "minmax": {"nlow": 1, "nhigh": 2}}


@pytest.fixture(scope="module")
def client():
    with (
        distributed.LocalCluster(
            n_workers=2,
            threads_per_worker=1,
            processes=True,
            host="127.0.0.1",
            dashboard_address=None,
            # the scheduler's HTTP server (not a dashboard) on a free loopback port, not 8787
            scheduler_kwargs={"dashboard": False, "dashboard_address": "127.0.0.1:0"},
        ) as cluster,
        distributed.Client(cluster) as client,
    ):
        yield client


def _assert_identical(got, expected):
    for name in md_dask.PLANES:
        a, b = getattr(got, name), getattr(expected, name)
        assert (a.dtype, a.shape) == (b.dtype, b.shape), name
        assert a.tobytes() == b.tobytes(), f"{name} differs at {np.argwhere(a != b)[:3]}"


def _frames(rng) -> list[np.ndarray]:
    """float32 darks (level 1000, sigma 5) with NaN, +inf and cosmic rays; one int32 frame."""
    frames = []
    for i in range(NFRAMES):
        f = rng.normal(1000.0, 5.0, SHAPE).astype(np.float32)
        f.flat[rng.choice(f.size, 40, replace=False)] += 5e4  # cosmic rays
        f.flat[rng.choice(f.size, 10, replace=False)] = np.nan if i % 2 else np.inf
        frames.append(f)
    frames[3] = np.rint(np.nan_to_num(frames[3], nan=0.0)).astype(np.int32)  # NaN -> outlier 0
    return frames


def _extras(rng) -> dict:
    """bias, masks (one of them None, one uint8), row offsets."""
    masks = [rng.random(SHAPE) < 0.05 for _ in range(NFRAMES)]
    masks[1] = masks[1].astype(np.uint8)
    masks[2] = None
    return {
        "bias": rng.normal(3.0, 1.0, SHAPE),
        "masks": masks,
        "row_offsets": rng.normal(0.0, 2.0, (NFRAMES, SHAPE[0])),
    }


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """The same darks as arrays and as raw uint16 FITS files (BZERO = 32768, one with BLANK)."""
    rng = np.random.default_rng(20261126)
    arrays = _frames(rng)
    folder = tmp_path_factory.mktemp("fits")
    paths = []
    for i in range(NFRAMES):
        values = np.clip(np.nan_to_num(arrays[i].astype(np.float64), posinf=65535), 0, 65535)
        hdu = fits.PrimaryHDU(np.rint(values).astype(np.uint16))
        if i == 4:
            hdu.header["BLANK"] = -32768  # stored value of physical 0
            hdu.data[10:12, :] = 0
        paths.append(folder / f"dark_{i}.fits")
        hdu.writeto(paths[-1])
    return {"arrays": arrays, "fits": paths, "extras": _extras(rng)}


def _direct(inputs, source, method, **kwargs):
    """megara_dark.combine.combine on the frames: arrays, or the FITS files memory-mapped
    with BZERO/BLANK read from their headers by astropy."""
    if source == "arrays":
        return combine(inputs["arrays"], method, **kwargs)
    headers = [fits.getheader(p) for p in inputs["fits"]]
    return combine(
        [read_raw(inspect_fits(p)) for p in inputs["fits"]],
        method,
        bzero=[h["BZERO"] for h in headers],
        blank=[h.get("BLANK") for h in headers],
        **kwargs,
    )


# ---- bit-identity --------------------------------------------------------------------


@pytest.mark.parametrize("source", ["arrays", "fits"])
@pytest.mark.parametrize("extras", [False, True], ids=["plain", "bias-masks-offsets"])
@pytest.mark.parametrize("method", METHODS)
def test_bit_identical_to_the_direct_call(client, inputs, source, extras, method):
    kwargs = {**METHOD_KW.get(method, {}), **(inputs["extras"] if extras else {})}
    got = md_dask.combine(
        inputs[source], method, client=client, rows_per_task=ROWS_PER_TASK, **kwargs
    )
    _assert_identical(got, _direct(inputs, source, method, **kwargs))


def test_results_are_right_not_only_identical(client, inputs):
    """The median of the FITS frames against a float64 NumPy median of their physical values."""
    got = md_dask.combine(inputs["fits"], "median", client=client, rows_per_task=9)
    physical = np.array([physical_values(p) for p in inputs["fits"]])  # BLANK as NaN
    assert np.isnan(physical[4, 10:12]).all()
    expected = np.nanmedian(physical, axis=0)
    np.testing.assert_array_equal(got.data, expected.astype(np.float32))
    np.testing.assert_array_equal(got.npix, np.isfinite(physical).sum(axis=0))


def test_mixed_frames_out_and_progress(client, inputs):
    """FITS paths and arrays in one call; planes written into ``out``; progress on the client."""
    mixed = [*inputs["fits"][:4], *[physical_values(p) for p in inputs["fits"][4:]]]
    planes = md_dask.combine(inputs["fits"], "mean", client=client)
    out = md_dask.CombineResult(*(np.full_like(getattr(planes, k), -1) for k in md_dask.PLANES))
    calls = []
    got = md_dask.combine(
        mixed,
        "mean",
        client=client,
        rows_per_task=20,
        out=out,
        progress=lambda done, total: calls.append((done, total)),
    )
    assert got is out
    _assert_identical(out, planes)
    assert len(calls) == 4  # blocks of 20, 20, 20 and 4 rows, in any order
    assert [total for _, total in calls] == [SHAPE[0]] * 4
    done = [d for d, _ in calls]
    assert done == sorted(done) and done[-1] == SHAPE[0]
    assert sorted(np.diff([0, *done])) == [4, 20, 20, 20]


def test_planes_left_none_in_out_are_not_written(client, inputs):
    """As the direct call: ``out`` may leave any plane but ``data`` None."""
    planes = md_dask.combine(inputs["fits"], "median", client=client)
    out = md_dask.CombineResult(np.full_like(planes.data, -1), None, None, None)
    got = md_dask.combine(inputs["fits"], "median", client=client, rows_per_task=20, out=out)
    assert got is out and got.variance is None and got.npix is None and got.nrejected is None
    assert got.data.tobytes() == planes.data.tobytes()


def test_default_rows_per_task(client, inputs):
    """Without rows_per_task: one task per worker thread at least (2 here), same bits."""
    seen = []
    got = md_dask.combine(
        inputs["fits"], "median", client=client, progress=lambda d, t: seen.append(d)
    )
    _assert_identical(got, _direct(inputs, "fits", "median"))
    assert len(seen) == 2


# ---- checks on the client --------------------------------------------------------------


class NoClient:
    """Any use of it fails: proves that an error came before any task."""

    def __getattr__(self, name):
        raise AssertionError(f"client.{name} used before the arguments were checked")


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"method": "mode"}, ValueError, "method 'mode' is not one of"),
        ({"weights": [1.0] * NFRAMES}, ValueError, "weights are not used by the median"),
        ({"bzero": [0.0] * 3}, ValueError, r"bzero has 3 values, expected one per frame \(7\)"),
        ({"bias": np.zeros((64, 79))}, ValueError, r"bias: shape \(64, 79\) differs"),
        ({"row_offsets": np.zeros((7, 63))}, ValueError, r"row_offsets must have shape"),
        ({"masks": [None] * 6}, ValueError, "got 6 masks for 7 frames"),
        ({"method": "ccdclip"}, ValueError, "ccdclip needs gain"),
        ({"colour": "red"}, TypeError, "colour"),
        ({"rows_per_task": 0}, ValueError, "rows_per_task must be an integer >= 1, got 0"),
        ({"rows_per_task": 2.5}, ValueError, "rows_per_task must be an integer >= 1, got 2.5"),
    ],
)
def test_bad_arguments_fail_on_the_client(inputs, kwargs, error, match):
    kwargs = {"method": "median", **kwargs}
    with pytest.raises(error, match=match):
        md_dask.combine(inputs["fits"], client=NoClient(), **kwargs)


def test_bad_frames_named_on_the_client(inputs, tmp_path):
    small = tmp_path / "small.fits"
    fits.PrimaryHDU(np.zeros((64, 70), np.uint16)).writeto(small)
    frames = [*inputs["fits"][:2], small]
    with pytest.raises(ValueError, match=r"frame 2: shape \(64, 70\) differs from frame 0's"):
        md_dask.combine(frames, client=NoClient())
    with pytest.raises(InputFileError, match=esc(tmp_path / "gone.fits") + ": no such file"):
        md_dask.combine([*inputs["fits"], tmp_path / "gone.fits"], client=NoClient())
    with pytest.raises(TypeError, match="got the single path"):
        md_dask.combine(str(small), client=NoClient())


def test_workers_use_the_clients_variance_factors(client, inputs):
    """The calibration is cached per process: workers compute the client's factors, and a
    worker whose factors differ refuses to combine."""
    params = {"low": 3.0, "high": 3.0, "centre": "median", "spread": "mad", "maxiters": 10}
    mine = variance_factors("sigclip", NFRAMES, **params)
    theirs = client.run(variance_factors, "sigclip", NFRAMES, **params)
    assert len(theirs) == 2
    for factors in theirs.values():
        assert factors.tobytes() == mine.tobytes()
    options = {**params, "gain": None, "rdnoise": None, "nlow": 1, "nhigh": 1, "fclip": 0.1}
    wrong = mine.copy()
    wrong[3] *= 1.0 + 1e-12
    future = client.submit(
        md_dask._combine_block, inputs["arrays"], (0, 64), "sigclip", options, wrong, pure=False
    )
    with pytest.raises(RuntimeError, match="variance factors for sigclip with 7 frames differ"):
        future.result()


# ---- clients -------------------------------------------------------------------------------


def test_get_client(client):
    assert md_dask.get_client(None) is distributed.default_client()
    for bad in ("tcp://host", "local:x", "http://host:8786", "localhost:8786"):
        with pytest.raises(ValueError, match="scheduler must be 'tcp://HOST:PORT' or 'local"):
            md_dask.get_client(bad)
    with pytest.raises(ValueError, match="needs at least 1 worker"):
        md_dask.get_client("local:0")
    with pytest.raises(OSError, match=r"cannot reach the Dask scheduler at tcp://127\.0\.0\.1:9"):
        md_dask.get_client("tcp://127.0.0.1:9", timeout=0.5)


def test_get_client_local_cluster(client):
    with md_dask.get_client("local:1") as local:
        assert local.scheduler.address.startswith("tcp://127.0.0.1:")
        assert list(local.nthreads().values()) == [1]
        assert local.dashboard_link.startswith("http://127.0.0.1:")  # health and metrics only
        assert not local.dashboard_link.startswith("http://127.0.0.1:8787/")
        assert all(address.startswith("tcp://127.0.0.1:") for address in local.nthreads())
        assert local.submit(sum, [1, 2]).result() == 3


def test_without_distributed_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "distributed", None)  # import distributed fails
    for call in (lambda: md_dask.get_client("local:1"), lambda: md_dask.combine([])):
        with pytest.raises(ImportError, match=r"pip install 'megara_dark\[dask\]'"):
            call()


# ---- campaigns -----------------------------------------------------------------------------


def _observation_result(folder: Path, ob_id: str, frames, bias) -> Path:
    path = folder / f"{ob_id}.yaml"
    doc = {
        "id": ob_id,
        "instrument": "MEGARA",
        "mode": MODE,
        "frames": [os.path.relpath(f, folder) for f in frames],
        "requirements": {"master_bias": os.path.relpath(bias, folder)},
    }
    path.write_text(yaml.safe_dump(doc))
    return path


def test_campaign(client, tmp_path):
    """Three observation results and a broken one: each reduced in its own folder, the
    broken one fails alone with its error, products as a direct DarkRecipe run."""
    obs = []
    for k in range(3):
        sim = simulate_dark_set(
            tmp_path / f"night{k}", nframes=3 + k, seed=k, geometry=RECIPE_GEOMETRY, threads=1
        )
        obs.append(_observation_result(tmp_path, f"OB{k}", sim.frames, sim.master_bias))
    missing = tmp_path / "night0" / "dark_099.fits"
    broken = _observation_result(tmp_path, "OB9", [*sim.frames, missing], sim.master_bias)
    arrived = []
    results = md_dask.run_many(
        [obs[0], broken, *obs[1:]],
        outdir=tmp_path / "out",
        client=client,
        on_result=arrived.append,
        geometry=RECIPE_GEOMETRY,
    )
    assert [r.obresult for r in results] == [obs[0], broken, *obs[1:]]
    assert sorted(r.obresult for r in arrived) == sorted(r.obresult for r in results)
    assert [r.ok for r in results] == [True, False, True, True]
    assert [r.ob_id for r in results] == ["OB0", "OB9", "OB1", "OB2"]
    assert [r.nframes for r in results] == [3, 6, 4, 5]
    assert results[1].qc_flag is None and results[1].master_dark is None
    assert results[1].error == f"InputFileError: {missing}: no such file"
    assert not (tmp_path / "out" / "OB9" / "master_dark.fits").exists()
    for r in (results[0], *results[2:]):
        assert r.outdir == tmp_path / "out" / r.ob_id
        assert r.qc_flag == "GOOD"
        names = sorted(p.name for p in r.outdir.iterdir())
        assert names == ["master_dark.fits", "master_dark.json", "master_dark.log"]
        assert r.master_dark == r.outdir / "master_dark.fits"

    direct = DarkRecipe(outdir=tmp_path / "direct", geometry=RECIPE_GEOMETRY).run(
        DarkRecipeInput(obs[2])
    )
    with fits.open(direct.master_dark) as a, fits.open(results[3].master_dark) as b:
        for name in ("PRIMARY", "VARIANCE", "MAP"):
            assert a[name].data.tobytes() == b[name].data.tobytes(), name

    table = md_dask.format_summary(results).splitlines()
    assert table[0].split() == ["OB", "frames", "QC", "product", "or", "error"]
    assert table[1].split() == ["OB0", "3", "GOOD", str(results[0].master_dark)]
    assert table[2].split()[:4] == ["OB9", "6", "FAILED", "InputFileError:"]
    assert table[2].endswith(f"{missing}: no such file")
    assert table[-1] == "3 of 4 reduced (3 GOOD, 0 PARTIAL, 0 BAD), 1 failed"


def test_campaign_refuses_shared_folders_and_bad_options(tmp_path):
    a, b = tmp_path / "n1" / "ob.yaml", tmp_path / "n2" / "ob.yaml"
    with pytest.raises(ValueError, match=f"{esc(a)} and {esc(b)} would share the product folder"):
        md_dask.run_many([a, b], outdir=tmp_path / "out", client=NoClient())
    with pytest.raises(ValueError, match="unit must be 'counts' or 'rate'"):
        md_dask.run_many([a], outdir=tmp_path / "out", client=NoClient(), unit="ADU")
    with pytest.raises(ValueError, match="no observation results to reduce"):
        md_dask.run_many([], outdir=tmp_path / "out", client=NoClient())


def test_summary_of_an_unreadable_observation_result():
    results = [
        md_dask.CampaignResult(
            Path("/data/ob7.yaml"), Path("/out/ob7"), error="ValidationError: invalid input:\n  x"
        )
    ]
    assert md_dask.format_summary(results).splitlines() == [
        "OB        frames  QC      product or error",
        "ob7.yaml  -       FAILED  ValidationError: invalid input: |   x",
        "0 of 1 reduced (0 GOOD, 0 PARTIAL, 0 BAD), 1 failed",
    ]


# ---- the recipe and the command line on a cluster -------------------------------------------

NO_DISTRIBUTED = [
    sys.executable,
    "-c",
    "import sys; sys.modules['distributed'] = None\n"  # import distributed fails
    "from megara_dark.cli import main; sys.exit(main())",
]


def _planes(path) -> dict:
    """dtype, shape and bytes of a master dark's PRIMARY, VARIANCE and MAP data."""
    with fits.open(path) as hdul:
        return {
            name: (hdul[name].data.dtype, hdul[name].data.shape, hdul[name].data.tobytes())
            for name in ("PRIMARY", "VARIANCE", "MAP")
        }


def test_recipe_with_a_client_is_bit_identical(client, dark_set, tmp_path):
    """DarkRecipe(client=...) combines on the cluster, one task per block of rows of each
    amplifier, and writes the same planes as DarkRecipe()."""
    frames, bias = dark_set.frames, dark_set.master_bias
    options = {"method": "sigclip", "method_params": {"low": 2.5}, "unit": "rate"}
    direct = run_recipe(frames, bias, tmp_path / "direct", **options)
    seen = []
    with distributed.get_task_stream(client=client) as tasks:
        on_dask = run_recipe(
            frames,
            bias,
            tmp_path / "dask",
            client=client,
            progress=lambda *args: seen.append(args),
            **options,
        )
    combine_tasks = [t for t in tasks.data if f"{md_dask.TASK_PREFIX}-combine-" in str(t["key"])]
    assert len(combine_tasks) == 4  # 2 amplifiers x 2 worker threads
    assert seen[-1] == ("combine", 64, 64)
    assert _planes(on_dask.master_dark) == _planes(direct.master_dark)
    assert on_dask.qc.flag == direct.qc.flag == "GOOD"


@pytest.fixture(scope="module")
def plain_run(megara_set, tmp_path_factory):
    """``megara-dark run`` of the full-size MEGARA set, no Dask: the reference product."""
    out = tmp_path_factory.mktemp("plain")
    result = cli(
        "run", *megara_set.frames, "--bias", megara_set.master_bias, "--out", out, "--no-png",
        cwd=out,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    return out / "master_dark.fits"


@pytest.mark.parametrize("scheduler", ["given", "local:2"])
def test_run_with_a_scheduler_is_bit_identical(client, megara_set, plain_run, scheduler, tmp_path):
    """``run --scheduler ADDRESS`` (the test's cluster) or ``local:2`` (started and closed by
    the command): the product's planes are the plain run's, byte for byte."""
    address = client.scheduler.address if scheduler == "given" else scheduler
    out = tmp_path / "reduced"
    result = cli(
        "run", *megara_set.frames, "--bias", megara_set.master_bias, "--out", out, "--no-png",
        "--scheduler", address, "--json", cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)  # the whole of stdout: the Dask note is on stderr
    assert summary["master_dark"] == str(out / "master_dark.fits") and summary["qc"] == "GOOD"
    note = re.search(
        r"^Dask scheduler (tcp://127\.0\.0\.1:\d+): 2 workers, 2 threads$", result.stderr, re.M
    )
    assert note, result.stderr
    if scheduler == "given":
        assert note[1] == address
    assert f"combine: {ROWS}/{ROWS} rows" in result.stderr
    assert _planes(out / "master_dark.fits") == _planes(plain_run)


def test_run_many_one_failure_does_not_stop_the_others(client, megara_set, plain_run, tmp_path):
    frames, bias = megara_set.frames, megara_set.master_bias
    missing = tmp_path / "dark_099.fits"
    obs = [
        _observation_result(tmp_path, "OB1", frames, bias),
        _observation_result(tmp_path, "OB9", [frames[0], missing], bias),
        _observation_result(tmp_path, "OB2", frames[1:], bias),
    ]
    out = tmp_path / "reduced"
    address = client.scheduler.address
    result = cli("run-many", *obs, "--out", out, "--scheduler", address, cwd=tmp_path)
    assert result.returncode == 3, result.stderr
    table = result.stdout.splitlines()
    assert table[0].split() == ["OB", "frames", "QC", "product", "or", "error"]
    assert [line.split(maxsplit=3) for line in table[1:-1]] == [
        ["OB1", "3", "GOOD", str(out / "OB1" / "master_dark.fits")],
        ["OB9", "2", "FAILED", f"InputFileError: {missing}: no such file"],
        ["OB2", "2", "PARTIAL", str(out / "OB2" / "master_dark.fits")],
    ]
    assert table[-1] == "2 of 3 reduced (1 GOOD, 1 PARTIAL, 0 BAD), 1 failed"
    for line in ("OB1.yaml: QC GOOD", "OB9.yaml: FAILED", "OB2.yaml: QC PARTIAL"):
        assert re.search(rf"^{line} \([123]/3\)$", result.stderr, re.MULTILINE), result.stderr
    for ob, nframes in (("OB1", 3), ("OB2", 2)):
        names = sorted(p.name for p in (out / ob).iterdir())
        assert names == ["master_dark.fits", "master_dark.json", "master_dark.log"]
        assert fits.getheader(out / ob / "master_dark.fits")["NUM-NCOM"] == nframes
    assert not (out / "OB9" / "master_dark.fits").exists()
    # The same frames and bias as the plain run, on a worker: the same bits.
    assert _planes(out / "OB1" / "master_dark.fits") == _planes(plain_run)


def test_run_many_qc_bad_exits_4_with_json(client, megara_set, tmp_path):
    """--bias replaces the YAML's master bias (here one 500 ADU too low: QC BAD)."""
    low_bias = tmp_path / "low_bias.fits"
    with fits.open(megara_set.master_bias) as hdul:
        fits.PrimaryHDU(hdul[0].data - np.float32(500), header=hdul[0].header).writeto(low_bias)
    ob = _observation_result(tmp_path, "OB1", megara_set.frames[:2], megara_set.master_bias)
    out = tmp_path / "reduced"
    result = cli(
        "run-many", ob, "--bias", low_bias, "--out", out, "--json", "--quiet",
        "--scheduler", client.scheduler.address, cwd=tmp_path,
    )  # fmt: skip
    assert (result.returncode, result.stderr) == (4, ""), result.stderr
    product = out / "OB1" / "master_dark.fits"
    assert json.loads(result.stdout) == {
        "status": "ok",
        "exit_code": 4,
        "results": [
            {
                "obresult": str(ob),
                "outdir": str(out / "OB1"),
                "ob_id": "OB1",
                "nframes": 2,
                "qc_flag": "BAD",
                "master_dark": str(product),
                "error": None,
            }
        ],
    }
    header = fits.getheader(product)
    assert header["QCFLAG"] == "BAD" and header["NUM-BS"] == fits.getheader(low_bias)["UUID"]


@pytest.mark.parametrize(
    "args",
    [
        ["run", "dark.fits", "--bias", "bias.fits", "--out", "o", "--scheduler", "local:2"],
        ["run-many", "OB1.yaml", "--out", "o"],
    ],
    ids=["run --scheduler", "run-many"],
)
def test_without_distributed_the_command_says_how_to_install(args, tmp_path):
    result = cli(*args, "--json", cwd=tmp_path, command=NO_DISTRIBUTED)
    assert result.returncode == 2
    message = (
        "megara_dark's Dask support needs dask.distributed, which is not installed: "
        "pip install 'megara_dark[dask]'"
    )
    assert error_line(result.stderr) == f"megara-dark: error: {message}"
    assert json.loads(result.stdout) == {"status": "error", "exit_code": 2, "error": message}
    assert list(tmp_path.iterdir()) == []


def test_bad_scheduler_is_a_usage_error(tmp_path):
    result = cli("run-many", "OB1.yaml", "--out", "o", "--scheduler", "local:two", cwd=tmp_path)
    assert result.returncode == 2
    assert error_line(result.stderr) == (
        "megara-dark: error: scheduler must be 'tcp://HOST:PORT' or 'local[:N]' "
        "(N worker processes), got 'local:two'"
    )
    assert list(tmp_path.iterdir()) == []


# ---- a worker killed mid-run (last: the cluster restarts a worker) --------------------------


class KillOnce(distributed.WorkerPlugin):
    """Kills its worker process (SIGKILL) when a combine task starts, once per marker file."""

    def __init__(self, marker: Path):
        self.marker = marker

    def setup(self, worker):
        self.address = worker.address

    def transition(self, key, start, finish, **kwargs):
        if finish == "executing" and "-combine-" in str(key) and not self.marker.exists():
            self.marker.write_text(self.address)
            os.kill(os.getpid(), signal.SIGKILL)


def test_worker_killed_mid_run(client, inputs, tmp_path):
    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    marker = tmp_path / "killed"
    client.register_plugin(KillOnce(marker), name="kill-once")
    try:
        kwargs = inputs["extras"]
        got = md_dask.combine(inputs["fits"], "sigclip", client=client, rows_per_task=4, **kwargs)
    finally:
        client.unregister_worker_plugin("kill-once")
        cloudpickle.unregister_pickle_by_value(sys.modules[__name__])
    assert marker.exists()  # a worker died while running one of the tasks...
    client.wait_for_workers(2, timeout=60)
    assert marker.read_text() not in client.nthreads()  # ...and was replaced
    _assert_identical(got, _direct(inputs, "fits", "sigclip", **kwargs))  # all blocks arrived
