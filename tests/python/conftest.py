"""Shared fixtures: the reference data, the Rust binary the wheel must agree with, a class folder."""
import os
import shutil
import subprocess

import pytest

REF = os.environ.get("FRACTALDB_REFERENCE", os.path.join(os.path.dirname(__file__), "../fixtures/reference"))
BIN = os.environ.get("FRACTALDB_BIN", os.path.join(os.path.dirname(__file__), "../../target/release/fractaldb"))


@pytest.fixture(scope="session")
def reference():
    assert os.path.exists(os.path.join(REF, "categories", "00000.csv")), f"reference fixtures not found at {REF}"
    return REF


@pytest.fixture(scope="session")
def binary():
    assert os.path.exists(BIN), f"the fractaldb binary is not at {BIN}"
    return BIN


@pytest.fixture(scope="session")
def classes(tmp_path_factory, reference):
    """Two published classes."""
    d = tmp_path_factory.mktemp("classes")
    for n in ("00000", "00001"):
        shutil.copy(os.path.join(reference, "categories", f"{n}.csv"), d / f"{n}.csv")
    return d


def run(*argv, **kw):
    return subprocess.run(list(argv), check=True, capture_output=True, text=True, **kw)
