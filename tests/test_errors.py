"""The errors survive pickling whole (a Dask worker sends them back that way)."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest

from megara_dark.errors import InputFileError, MegaraDarkError, OutputError, ValidationError


@pytest.mark.parametrize(
    "error",
    [
        MegaraDarkError("not enough memory"),
        InputFileError("no such file", "/data/dark_001.fits"),
        OutputError("cannot be written: No space left on device", Path("/out/master_dark.fits")),
        ValidationError(["/a.fits: EXPTIME is missing", "/b.fits: INSTRUME is 'EMIR'"]),
    ],
    ids=lambda e: type(e).__name__,
)
def test_an_error_round_trips_through_pickle(error):
    again = pickle.loads(pickle.dumps(error))
    assert type(again) is type(error)
    assert str(again) == str(error)
    assert again.path == error.path
    if isinstance(error, ValidationError):
        assert again.problems == error.problems


def test_the_message_names_the_file_first():
    error = InputFileError("no such file", "/data/dark_001.fits")
    assert str(error) == "/data/dark_001.fits: no such file"
    assert error.problem == "no such file" and error.path == Path("/data/dark_001.fits")
