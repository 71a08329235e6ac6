"""Fixtures shared by the workflow tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import run_snakemake
from tests.workflow.test_workflow import TINY, _write_config


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory) -> Path:
    """The tiny demo run through every stage (``all``), made once per test session and
    shared by every module that needs it (test_workflow, test_variants); tests copy it,
    never modify it."""
    workdir = tmp_path_factory.mktemp("tiny-run")
    cfg = str(_write_config(workdir, TINY))
    out = run_snakemake(workdir, "--configfile", cfg, "--cores", "2", "all")
    assert out.returncode == 0, out.stderr[-4000:]
    return workdir
