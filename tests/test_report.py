"""The JSON report (against the shipped schema) and the processing log of a DarkRecipe run."""

from __future__ import annotations

import copy
import json
import math
import platform
import re
from datetime import datetime

import astropy
import jsonschema
import numpy as np
import pytest
from astropy.io import fits
from conftest import RECIPE_GEOMETRY, file_sha256, run_recipe, write_variant

import megara_dark
from megara_dark.combine import build_info
from megara_dark.errors import MegaraDarkError
from megara_dark.report import ProcessingLog, jsonable, report_schema, write_json

STEPS = [
    "check outputs",
    "validate headers",
    "overscan and frame statistics",
    "combine (median, 5 frames)",
    "quality control",
    "write master dark",
]


def validator() -> jsonschema.Draft202012Validator:
    schema = report_schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(
        schema, format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER
    )


def schema_errors(report: dict) -> list[str]:
    return [f"{e.json_path}: {e.message}" for e in validator().iter_errors(report)]


def read_report(result) -> dict:
    return json.loads(result.report.read_text())


@pytest.fixture
def result(dark_set, tmp_path):
    return run_recipe(dark_set.frames, dark_set.master_bias, tmp_path / "out", nthreads=2)


# ---- the report against its schema -------------------------------------------------------------


def test_report_follows_the_schema(result):
    report = read_report(result)
    assert schema_errors(report) == []
    assert report == jsonable(result.report_data)
    assert report["schema"] == "megara_dark.report/1" and report["status"] == "ok"
    assert datetime.fromisoformat(report["created"]).tzinfo is not None


@pytest.mark.parametrize(
    "options",
    [{"unit": "rate"}, {"method": "sigclip", "method_params": {"low": 3.0, "high": 3.0}}],
    ids=["rate", "sigclip"],
)
def test_other_runs_follow_the_schema(dark_set, tmp_path, options):
    result = run_recipe(dark_set.frames, dark_set.master_bias, tmp_path / "out", **options)
    report = read_report(result)
    assert schema_errors(report) == []
    if "method" in options:
        assert report["method"] == {"name": "sigclip", "params": {"low": 3.0, "high": 3.0}}
        header = fits.getheader(result.master_dark)
        assert (header["HIERARCH MD METHOD"], header["HIERARCH MD PARAM LOW"]) == ("sigclip", 3.0)
        assert "Combination parameters: high=3.0, low=3.0" in header["HISTORY"]


def test_a_run_with_warnings_and_a_left_out_frame_follows_the_schema(dark_set, tmp_path):
    bias = write_variant(
        dark_set.master_bias, tmp_path / "bias.fits", remove=["NUMTYPE", "IMAGETYP", "OBSMODE"]
    )

    def leak(data):
        data[:, RECIPE_GEOMETRY.amplifiers[0].data_cols] += 40.0
        return data.astype(np.uint16)

    frames = [
        *dark_set.frames[:4],
        write_variant(dark_set.frames[4], tmp_path / "leak.fits", data=leak),
    ]
    result = run_recipe(frames, bias, tmp_path / "out")
    report = read_report(result)
    assert schema_errors(report) == []
    assert report["qc"]["flag"] == "PARTIAL"
    assert [entry["used"] for entry in report["inputs"]] == [True] * 4 + [False]
    assert len(report["warnings"]) == 2 and report["errors"] == []
    assert report["warnings"][0].startswith(f"{bias}: no NUMTYPE, IMAGETYP or OBSMODE")
    assert report["warnings"][1].startswith(f"{frames[4]}: left out: median")


@pytest.mark.parametrize(
    ("path", "value"),
    [
        (("inputs", 0, "sha256"), "not-a-digest"),
        (("inputs", 0, "exptime"), 0),
        (("qc", "flag"), "FINE"),
        (("unit",), "e-"),
        (("steps", 0, "seconds"), -1.0),
        (("recipe", "mode"), "MegaraBiasImage"),
    ],
)
def test_the_schema_rejects_a_broken_report(result, path, value):
    report = copy.deepcopy(read_report(result))
    target = report
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    assert schema_errors(report) != []


def test_the_schema_requires_the_main_sections(result):
    for key in ("inputs", "bias", "qc", "outputs", "software", "steps"):
        report = read_report(result)
        del report[key]
        assert schema_errors(report) == [f"$: '{key}' is a required property"]


# ---- the report's content ----------------------------------------------------------------------


def test_checksums_of_inputs_and_outputs(result, dark_set):
    report = read_report(result)
    assert [(e["path"], e["sha256"]) for e in report["inputs"]] == [
        (str(p), file_sha256(p)) for p in dark_set.frames
    ]
    assert (report["bias"]["path"], report["bias"]["sha256"]) == (
        str(dark_set.master_bias),
        file_sha256(dark_set.master_bias),
    )
    assert report["outputs"] == [
        {"path": str(result.master_dark), "sha256": file_sha256(result.master_dark)},
        {"path": str(result.log), "sha256": file_sha256(result.log)},
    ]


def test_inputs_are_described(result, dark_set):
    report = read_report(result)
    for entry, path in zip(report["inputs"], dark_set.frames, strict=True):
        header = fits.getheader(path)
        assert entry["exptime"] == header["EXPTIME"]
        assert entry["date_obs"] == header["DATE-OBS"] and entry["uuid"] == header["UUID"]
        assert entry["shape"] == list(RECIPE_GEOMETRY.raw_shape)
        assert (entry["dtype"], entry["bzero"], entry["bscale"]) == ("int16", 32768.0, 1.0)
        assert entry["used"] is True and entry["qc"]["passed"] is True
        assert sorted(entry["overscan"]) == ["amp1", "amp2"]
        assert entry["overscan"]["amp1"]["knots"][4] == RECIPE_GEOMETRY.amplifiers[0].knot
    bias = report["bias"]
    assert bias["uuid"] == fits.getval(dark_set.master_bias, "UUID")
    assert (bias["shape"], bias["dtype"]) == (list(RECIPE_GEOMETRY.trimmed_shape), "float32")
    assert report["layout"] == "raw" and report["exptime"] == 3600.0 and report["unit"] == "ADU"


def test_software_and_threads(result):
    report = read_report(result)
    assert report["software"] == {
        "megara_dark": megara_dark.__version__,
        "numpy": np.__version__,
        "astropy": astropy.__version__,
        "python": platform.python_version(),
        "openmp": build_info()["openmp"],
        "default_threads": build_info()["default_threads"],
    }
    assert report["threads"]["requested"] == 2
    assert report["threads"]["openmp"] == build_info()["openmp"]


def test_qc_in_the_report_is_the_result_qc(result):
    report = read_report(result)
    assert report["qc"] == jsonable(result.qc.as_dict())
    assert report["qc"]["stats"]["median"] == result.qc.stats["median"]


# ---- the log ------------------------------------------------------------------------------------


def test_steps_are_timed_in_the_report_and_the_log(result):
    report = read_report(result)
    assert [s["name"] for s in report["steps"]] == STEPS
    assert all(s["seconds"] >= 0 for s in report["steps"])
    text = result.log.read_text()
    assert text.startswith("megara_dark DarkRecipe log, ")
    for step in report["steps"]:
        name = re.escape(step["name"])
        assert re.search(rf"^ +\d+\.\d{{3}} s  INFO    {name}: start$", text, re.M), step
        timing = re.search(rf"^ +\d+\.\d{{3}} s  INFO    {name}: (\d+\.\d{{3}}) s$", text, re.M)
        assert timing and float(timing[1]) == pytest.approx(step["seconds"], abs=6e-4), step
    assert "5 raw frames, EXPTIME 3600 s" in text and "QC GOOD" in text


def test_warnings_are_in_the_log(dark_set, tmp_path):
    frames = [
        *dark_set.frames[:2],
        write_variant(dark_set.frames[2], tmp_path / "x.fits", header={"EXPTIME": 1800.0}),
    ]
    result = run_recipe(frames, dark_set.master_bias, tmp_path / "out", unit="rate")
    text = result.log.read_text()
    assert re.search(
        r"^ +\d+\.\d{3} s  WARNING exposure times differ, each frame is divided", text, re.M
    )


# ---- units ---------------------------------------------------------------------------------------


def test_jsonable_and_write_json(tmp_path):
    value = {
        "nan": float("nan"),
        "inf": [np.float32(np.inf), -math.inf],
        "numbers": (np.int16(3), np.float64(0.5)),
        "path": tmp_path,
    }
    assert jsonable(value) == {
        "nan": None,
        "inf": [None, None],
        "numbers": [3, 0.5],
        "path": str(tmp_path),
    }
    write_json(tmp_path / "r.json", value)

    def refuse(constant):
        raise AssertionError(f"non-standard JSON {constant}")

    assert json.loads((tmp_path / "r.json").read_text(), parse_constant=refuse) == jsonable(value)


def test_processing_log_times_a_failing_step_and_echoes():
    echoed = []
    log = ProcessingLog(echo=echoed.append)
    with pytest.raises(RuntimeError), log.step("reading"):
        log.warning("something odd")
        raise RuntimeError("stop")
    log.error("it failed")
    assert [s["name"] for s in log.steps] == ["reading"]
    assert log.warnings == ["something odd"] and log.errors == ["it failed"]
    assert echoed == log.lines and len(echoed) == 4
    assert re.fullmatch(r" +\d+\.\d{3} s  ERROR   it failed", echoed[-1])
    assert log.text("title").splitlines() == ["title", *log.lines]


# ---- a failed run ------------------------------------------------------------------------------


def test_a_run_failing_after_validation_leaves_a_failure_report(dark_set, tmp_path, monkeypatch):
    out = tmp_path / "out"
    first = run_recipe(dark_set.frames, dark_set.master_bias, out)
    before = {p.name: file_sha256(p) for p in out.iterdir()}

    def broken(*args, **kwargs):
        raise MemoryError("no memory for the planes")

    monkeypatch.setattr("megara_dark.recipe.combine", broken)
    with pytest.raises(MegaraDarkError, match=r"^not enough memory: no memory for the planes$"):
        run_recipe(dark_set.frames, dark_set.master_bias, out, overwrite=True)
    failure = json.loads((out / "master_dark.failed.json").read_text())
    assert schema_errors(failure) == []
    assert failure["status"] == "failed"
    assert failure["errors"] == ["not enough memory: no memory for the planes"]
    assert [s["name"] for s in failure["steps"]][:2] == ["check outputs", "validate headers"]
    assert any("ERROR" in line and "no memory" in line for line in failure["log"])
    assert [i["path"] for i in failure["inputs"]] == [str(p) for p in dark_set.frames]
    # The older products are intact.
    assert {p.name: file_sha256(p) for p in out.iterdir() if p.name in before} == before
    assert first.master_dark.exists()


def test_a_failure_report_without_errors_breaks_the_schema(dark_set, tmp_path, monkeypatch):
    monkeypatch.setattr("megara_dark.recipe.combine", lambda *a, **k: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        run_recipe(dark_set.frames, dark_set.master_bias, tmp_path / "out")
    failure = json.loads((tmp_path / "out" / "master_dark.failed.json").read_text())
    assert schema_errors(failure) == []
    failure["errors"] = []
    assert schema_errors(failure) == ["$.errors: [] should be non-empty"]
